// Whole-file load and save. Every save goes through one layout (plan_layout: order, offsets,
// header) and then streams tensor bytes straight from tensor memory to the destination: no
// whole-file buffer.
#include "torch_safetensors/serialize.h"

#include "adapters/save_item.h"
#include "check.h"
#include "storage/io.h"

namespace torch::safetensors {
namespace {

constexpr std::string_view kInMemory = "<bytes>";

// What save writes: the layout, and the items it orders (in the caller's order).
struct SavePlan {
  Layout layout;
  std::vector<adapters::SaveItem> items;
};

SavePlan plan(const std::vector<SaveEntry>& entries, const std::optional<Metadata>& metadata,
              std::string_view source) {
  SavePlan plan;
  plan.items.reserve(entries.size());
  for (const SaveEntry& entry : entries) {
    plan.items.push_back(entry.raw ? adapters::to_save_item(entry.name, *entry.raw, source)
                                   : adapters::to_save_item(entry.name, entry.tensor, source));
  }
  adapters::check_save(plan.items, adapters::SaveRules{}, source);
  std::vector<TensorInfo> infos;
  infos.reserve(plan.items.size());
  for (const auto& item : plan.items) infos.push_back(item.info);
  plan.layout = plan_layout(infos, metadata, source);
  return plan;
}

template <typename Sink>
void write(const SavePlan& plan, Sink&& sink) {
  sink(plan.layout.header_bytes.data(), plan.layout.header_bytes.size());
  for (size_t i : plan.layout.order) {
    const adapters::SaveItem& item = plan.items[i];
    if (item.info.nbytes() == 0) continue;
    const at::Tensor bytes = adapters::contiguous_cpu_bytes(item);
    sink(bytes.data_ptr(), item.info.nbytes());
  }
}

template <typename Tensors>
std::vector<SaveEntry> to_entries(const Tensors& tensors) {
  std::vector<SaveEntry> entries;
  entries.reserve(tensors.size());
  for (const auto& [name, tensor] : tensors) entries.emplace_back(name, tensor);
  return entries;
}

std::vector<SaveEntry> to_entries(const TensorDict& tensors) {
  std::vector<SaveEntry> entries;
  entries.reserve(tensors.size());
  for (const auto& item : tensors) entries.emplace_back(item.key(), item.value());
  return entries;
}

}  // namespace

TensorDict load(const std::string& path, const LoadOptions& options) {
  return File(path, options).tensors();
}

void save(const std::vector<SaveEntry>& entries, const std::string& path,
          const std::optional<Metadata>& metadata) {
  const SavePlan layout = plan(entries, metadata, path);
  storage::AtomicFileWriter writer(path);
  write(layout, [&](const void* data, uint64_t n) { writer.write(data, n); });
  writer.commit();
}

std::string to_bytes(const std::vector<SaveEntry>& entries,
                     const std::optional<Metadata>& metadata) {
  const SavePlan layout = plan(entries, metadata, kInMemory);
  std::string out;
  out.reserve(layout.layout.header_bytes.size() + layout.layout.header.data_size());
  write(layout,
        [&](const void* data, uint64_t n) { out.append(static_cast<const char*>(data), n); });
  return out;
}

void save(const NamedTensors& tensors, const std::string& path,
          const std::optional<Metadata>& metadata) {
  save(to_entries(tensors), path, metadata);
}
void save(const TensorDict& tensors, const std::string& path,
          const std::optional<Metadata>& metadata) {
  save(to_entries(tensors), path, metadata);
}
void save(const std::unordered_map<std::string, at::Tensor>& tensors, const std::string& path,
          const std::optional<Metadata>& metadata) {
  save(to_entries(tensors), path, metadata);
}

std::string to_bytes(const NamedTensors& tensors, const std::optional<Metadata>& metadata) {
  return to_bytes(to_entries(tensors), metadata);
}
std::string to_bytes(const TensorDict& tensors, const std::optional<Metadata>& metadata) {
  return to_bytes(to_entries(tensors), metadata);
}
std::string to_bytes(const std::unordered_map<std::string, at::Tensor>& tensors,
                     const std::optional<Metadata>& metadata) {
  return to_bytes(to_entries(tensors), metadata);
}

TensorDict from_bytes(std::string_view data) {
  const LoadOptions copies = LoadOptions().with_backend(Backend::kPread);
  return File(storage::borrowed_memory_source(data, std::string(kInMemory)), copies).tensors();
}

}  // namespace torch::safetensors
