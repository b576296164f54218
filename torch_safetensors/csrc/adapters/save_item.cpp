#include "adapters/save_item.h"

#include <sstream>

#include "adapters/shared_memory.h"
#include "check.h"

namespace torch::safetensors::adapters {
namespace {

// Whether the tensor's elements hold several values each (F4): a 0-d one has no header shape.
bool packs_values(const at::Tensor& t) {
  const auto dtype = from_scalar_type(t.scalar_type());
  return dtype && values_per_group(*dtype) > 1;
}

std::string quoted_list(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "'" : ", '") + n + "'";
  return out;
}

const at::Tensor& tensor_named(const NamedTensors& tensors, const std::string& name) {
  for (const auto& [n, t] : tensors) {
    if (n == name) return t;
  }
  TORCH_INTERNAL_ASSERT(false, "no save item named ", name);
}

}  // namespace

SaveItem to_save_item(const std::string& name, const at::Tensor& tensor, std::string_view source) {
  TS_CHECK(tensor.defined(), source, "tensor '", name, "' is undefined");
  SaveItem item;
  item.info.name = name;
  item.source = tensor;
  item.info.shape.assign(tensor.sizes().begin(), tensor.sizes().end());
  item.info.end = uint64_t(tensor.numel()) * tensor.element_size();
  const auto dtype = from_scalar_type(tensor.scalar_type());
  if (!dtype) return item;  // kUnsupportedDtype
  item.info.dtype = *dtype;
  if (tensor.dim() == 0) return item;  // a 0-d packed tensor is kFloat4Scalar
  // The header records logical values: a packed dtype (F4) holds several per torch element.
  // Only a tensor with no elements can have a last dimension too large for that, but its header
  // would then hold a dimension of 2^63 or more, which no reader (this one included) accepts.
  const auto shape = logical_shape(*dtype, tensor.sizes());
  TS_CHECK(shape.has_value(), source, "tensor '", name, "': last dimension ", tensor.sizes().back(),
           " of ", tensor.scalar_type(), " holds more than 2^63 - 1 values");
  item.info.shape.assign(shape->begin(), shape->end());
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

std::optional<SaveProblem> find_save_problem(const NamedTensors& tensors, const SaveRules& rules) {
  const auto one = [](SaveProblemKind kind, const std::string& name) {
    return SaveProblem{kind, {{name}}};
  };
  std::vector<std::string> sparse;
  for (const auto& [name, t] : tensors) {
    if (t.layout() != c10::kStrided) sparse.push_back(name);
  }
  if (!sparse.empty()) return SaveProblem{SaveProblemKind::kSparse, {sparse}};

  const auto groups = overlapping_groups(tensors);
  if (!groups.empty()) {
    SaveProblem problem{SaveProblemKind::kSharedMemory, {}};
    for (const auto& group : groups) {
      problem.names.emplace_back();
      for (size_t i : group) problem.names.back().push_back(tensors[i].first);
    }
    return problem;
  }

  for (const auto& [name, t] : tensors) {
    if (!rules.allow_non_contiguous && !t.is_contiguous()) {
      return one(SaveProblemKind::kNonContiguous, name);
    }
    if (t.is_meta()) return one(SaveProblemKind::kMeta, name);
    if (!from_scalar_type(t.scalar_type())) return one(SaveProblemKind::kUnsupportedDtype, name);
  }
  for (const auto& [name, t] : tensors) {
    if (t.dim() == 0 && packs_values(t)) return one(SaveProblemKind::kFloat4Scalar, name);
  }
  return std::nullopt;
}

void throw_save_problem(const SaveProblem& problem, const NamedTensors& tensors,
                        std::string_view source) {
  const std::string& first = problem.names.at(0).at(0);
  switch (problem.kind) {
    case SaveProblemKind::kSparse:
      TORCH_CHECK_VALUE(
          false, "safetensors: ", source, ": tensors ", quoted_list(problem.names[0]),
          " are sparse; only dense (strided) tensors can be saved (call .to_dense())");
    case SaveProblemKind::kSharedMemory: {
      std::ostringstream groups;
      for (const auto& group : problem.names) groups << " [" << quoted_list(group) << "]";
      TS_FAIL(source, "tensors share memory:", groups.str(),
              "; saving them would duplicate it and loading would untie them. Save one of each "
              "group, clone the others, or save the module (which drops tied duplicates like the "
              "reference's save_model)");
    }
    case SaveProblemKind::kNonContiguous:
      TORCH_CHECK_VALUE(false, "safetensors: ", source, ": tensor '", first,
                        "' is not contiguous (call .contiguous())");
    case SaveProblemKind::kMeta:
      // NotImplementedError in Python, like the reference (which fails copying the meta tensor).
      TORCH_CHECK_NOT_IMPLEMENTED(false, "safetensors: ", source, ": tensor '", first,
                                  "' is a meta tensor and has no data");
    case SaveProblemKind::kUnsupportedDtype:
      TS_FAIL(source, "tensor '", first, "' has dtype ", tensor_named(tensors, first).scalar_type(),
              ", which the safetensors format cannot store");
    case SaveProblemKind::kFloat4Scalar:
      TS_FAIL(source, "tensor '", first,
              "': a 0-d float4_e2m1fn_x2 tensor cannot be saved (its header shape would need a "
              "last dimension holding the two packed values); reshape it to [1]");
  }
  TORCH_INTERNAL_ASSERT(false, "unknown save problem");
}

void check_save(const std::vector<SaveItem>& items, const SaveRules& rules,
                std::string_view source) {
  NamedTensors tensors;
  tensors.reserve(items.size());
  for (const auto& item : items) tensors.emplace_back(std::string(item.info.name), item.source);
  if (auto problem = find_save_problem(tensors, rules)) {
    throw_save_problem(*problem, tensors, source);
  }
}

}  // namespace torch::safetensors::adapters
