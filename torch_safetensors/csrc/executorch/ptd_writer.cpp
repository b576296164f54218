// Writing .ptd files: the layout from flat_tensor.cpp, the bytes streamed from tensor memory (or a
// checkpoint's mapping) to the destination one tensor at a time.
#include <cstring>
#include <unordered_map>

#include "adapters/save_item.h"
#include "api/save_to.h"
#include "executorch/flat_tensor.h"
#include "torch_safetensors/executorch.h"

namespace torch::safetensors {

std::string PtdOptions::key(const std::string& name) const {
  auto it = rename.find(name);
  if (it != rename.end()) return it->second;
  if (!strip_prefix.empty() && name.compare(0, strip_prefix.size(), strip_prefix) == 0) {
    return name.substr(strip_prefix.size());
  }
  return name;
}

namespace {

// One tensor to write: where its planned key came from, and how to get its bytes.
struct Item {
  std::string name;
  ptd::PlannedTensor planned;
  std::function<at::Tensor()> bytes;  // a contiguous CPU tensor of exactly planned.nbytes bytes
};

void write_ptd(const std::vector<Item>& items, const SaveTo& to, const PtdOptions& options) {
  const std::string destination = to.name();
  std::vector<ptd::PlannedTensor> planned;
  planned.reserve(items.size());
  std::unordered_map<std::string, const std::string*> names;  // key → the name it came from
  for (const Item& item : items) {
    auto [it, inserted] = names.emplace(item.planned.key, &item.name);
    PTD_CHECK(inserted, destination, "tensors '", *it->second, "' and '", item.name,
              "' both map to key '", item.planned.key, "'");
    planned.push_back(item.planned);
  }
  const ptd::Plan plan = ptd::plan(planned, options.alignment, destination);
  write_to(to, [&](const ByteSink& sink) {
    sink(plan.head.data(), plan.head.size());
    uint64_t written = plan.head.size();
    const std::string zeros(options.alignment, '\0');
    for (size_t i = 0; i < items.size(); ++i) {
      sink(zeros.data(), plan.offsets[i] - written);
      const uint64_t nbytes = items[i].planned.nbytes;
      if (nbytes > 0) {
        const at::Tensor bytes = items[i].bytes();
        sink(bytes.data_ptr(), nbytes);
      }
      written = plan.offsets[i] + nbytes;
    }
  });
}

}  // namespace

void save_ptd(const NamedTensors& tensors, const SaveTo& to, const PtdOptions& options) {
  const std::string destination = to.name();
  std::vector<Item> items;
  items.reserve(tensors.size());
  for (const auto& [name, tensor] : tensors) {
    PTD_CHECK(tensor.defined() && tensor.layout() == c10::kStrided && !tensor.is_meta(),
              destination, "tensor '", name, "' has no strided data to write");
    const std::optional<Dtype> dtype = from_scalar_type(tensor.scalar_type());
    PTD_CHECK(dtype && ptd::executorch_scalar_type(*dtype), destination, "tensor '", name,
              "' has dtype ", tensor.scalar_type(),
              ", which ExecuTorch cannot express (it has no complex, F8_E8M0, F4 or F6 type)");
    adapters::SaveItem save_item = adapters::to_save_item(name, tensor, destination);
    Item item;
    item.name = name;
    item.planned = {options.key(name), save_item.info.dtype,
                    c10::IntArrayRef(save_item.info.shape).vec(), uint64_t(tensor.nbytes())};
    item.bytes = [save_item = std::move(save_item)] {
      return adapters::contiguous_cpu_bytes(save_item);
    };
    items.push_back(std::move(item));
  }
  write_ptd(items, to, options);
}

void save_ptd(const Checkpoint& checkpoint, const SaveTo& to, const PtdOptions& options) {
  std::vector<Item> items;
  items.reserve(checkpoint.size());
  for (const std::string& name : checkpoint.keys()) {
    const TensorInfo& info = checkpoint.info(name);
    Item item;
    item.name = name;
    item.planned = {options.key(name), info.dtype, c10::IntArrayRef(info.shape).vec(),
                    info.nbytes()};
    item.bytes = [&checkpoint, name] { return checkpoint.raw(name).bytes; };
    items.push_back(std::move(item));
  }
  write_ptd(items, to, options);
}

}  // namespace torch::safetensors
