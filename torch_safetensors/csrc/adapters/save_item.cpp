#include "adapters/save_item.h"

#include "adapters/shared_memory.h"
#include "check.h"

namespace torch::safetensors::adapters {

SaveItem to_save_item(const std::string& name, const at::Tensor& tensor, std::string_view source) {
  TS_CHECK(tensor.defined(), source, "tensor '", name, "' is undefined");
  TS_CHECK(tensor.layout() == c10::kStrided, source, "tensor '", name, "' has layout ",
           tensor.layout(), "; only dense (strided) tensors can be saved (call .to_dense())");
  // NotImplementedError in Python, like the reference (which fails copying the meta tensor).
  TORCH_CHECK_NOT_IMPLEMENTED(!tensor.is_meta(), "safetensors: ", source, ": tensor '", name,
                              "' is a meta tensor and has no data");
  auto dtype = from_scalar_type(tensor.scalar_type());
  TS_CHECK(dtype.has_value(), source, "tensor '", name, "' has dtype ", tensor.scalar_type(),
           ", which the safetensors format cannot store");
  SaveItem item;
  item.info.name = name;
  item.info.dtype = *dtype;
  // The header records logical values: a packed dtype (F4) holds several per torch element.
  const auto shape = logical_shape(*dtype, tensor.sizes());
  // A 0-d packed tensor has no last dimension to hold its values; the reference refuses it too.
  TS_CHECK(tensor.dim() > 0 || shape.has_value(), source, "tensor '", name, "': a 0-d ",
           tensor.scalar_type(),
           " tensor cannot be saved (its header shape would need a last "
           "dimension holding the packed values); reshape it to [1]");
  // Only a tensor with no elements can have a last dimension this large, but its header would
  // then hold a dimension of 2^63 or more, which no reader (this one included) accepts.
  TS_CHECK(shape.has_value(), source, "tensor '", name, "': last dimension ", tensor.sizes().back(),
           " of ", tensor.scalar_type(), " holds more than 2^63 - 1 values");
  item.info.shape.assign(shape->begin(), shape->end());
  item.info.end = uint64_t(tensor.numel()) * tensor.element_size();
  item.source = tensor;
  return item;
}

SaveItem to_save_item(const std::string& name, const RawTensor& raw, std::string_view source) {
  TS_CHECK(raw.bytes.defined() && raw.bytes.scalar_type() == c10::kByte && raw.bytes.dim() == 1,
           source, "raw tensor '", name, "' must hold its bytes in a 1-D uint8 tensor");
  SaveItem item;
  item.info.name = name;
  item.info.dtype = raw.dtype;
  item.info.shape.assign(raw.shape.begin(), raw.shape.end());
  const uint64_t needed = tensor_nbytes(raw.dtype, raw.shape, source, name);
  TS_CHECK(needed == uint64_t(raw.bytes.numel()), source, "raw tensor '", name, "': dtype ",
           dtype_name(raw.dtype), " and its shape need ", needed, " bytes, but ", raw.bytes.numel(),
           " were given");
  item.info.end = needed;
  item.source = raw.bytes;
  return item;
}

at::Tensor contiguous_cpu_bytes(const SaveItem& item) {
  at::Tensor t = item.source.resolve_conj().resolve_neg();
  if (!t.device().is_cpu()) t = t.cpu();
  return t.contiguous();
}

void check_no_overlap(const std::vector<SaveItem>& items, std::string_view source) {
  std::vector<at::Tensor> tensors;
  tensors.reserve(items.size());
  for (const auto& item : items) tensors.push_back(item.source);
  for (const auto& group : overlapping_groups(tensors)) {
    TS_FAIL(source, "tensors '", items[group[0]].info.name, "' and '", items[group[1]].info.name,
            "' share memory; saving both would duplicate it and loading would untie them. "
            "Save one of them, clone the other, or save the module (which drops tied "
            "duplicates like the reference's save_model)");
  }
}

}  // namespace torch::safetensors::adapters
