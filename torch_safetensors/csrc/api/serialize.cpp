// Whole-file load and save. Every save goes through one layout (sort, offsets, header) and then
// streams tensor bytes straight from tensor memory to the destination: no whole-file buffer.
#include "torch_safetensors/serialize.h"

#include <cstring>
#include <unordered_set>

#include <ATen/ops/empty.h>

#include "adapters/load_tensor.h"
#include "adapters/save_item.h"
#include "check.h"
#include "storage/file_io.h"

namespace torch::safetensors {
namespace {

constexpr std::string_view kInMemory = "<bytes>";

struct Layout {
  std::string header;                     // length prefix + JSON + padding
  std::vector<adapters::SaveItem> items;  // in file order, offsets assigned
  uint64_t data_size = 0;
};

Layout plan(const std::vector<SaveEntry>& entries, const Metadata* metadata,
            std::string_view source) {
  Layout layout;
  layout.items.reserve(entries.size());
  std::unordered_set<std::string_view> names;
  for (const SaveEntry& entry : entries) {
    TS_CHECK(entry.name != "__metadata__", source,
             "a tensor cannot be named '__metadata__' (the key is reserved for metadata)");
    TS_CHECK(names.insert(entry.name).second, source, "tensor '", entry.name, "' is given twice");
    layout.items.push_back(entry.raw ? adapters::to_save_item(entry.name, *entry.raw, source)
                                     : adapters::to_save_item(entry.name, entry.tensor, source));
  }
  adapters::check_no_overlap(layout.items, source);

  std::vector<TensorInfo> infos;
  infos.reserve(layout.items.size());
  for (const auto& item : layout.items) infos.push_back(item.info);
  sort_for_save(infos);
  // Reorder the items to match, and assign consecutive offsets.
  std::unordered_map<std::string_view, size_t> position;
  for (size_t i = 0; i < layout.items.size(); ++i) position.emplace(layout.items[i].info.name, i);
  std::vector<adapters::SaveItem> ordered;
  ordered.reserve(infos.size());
  uint64_t offset = 0;
  for (TensorInfo& info : infos) {
    const uint64_t n = info.nbytes();
    info.begin = offset;
    info.end = offset + n;
    offset += n;
    adapters::SaveItem item = std::move(layout.items[position.at(info.name)]);
    item.info = info;
    ordered.push_back(std::move(item));
  }
  layout.header = serialize_header(infos, metadata, source);
  layout.items = std::move(ordered);
  layout.data_size = offset;
  return layout;
}

template <typename Sink>
void write_layout(const Layout& layout, Sink&& sink) {
  sink(layout.header.data(), layout.header.size());
  for (const auto& item : layout.items) {
    if (item.info.nbytes() == 0) continue;
    const at::Tensor bytes = adapters::contiguous_cpu_bytes(item);
    sink(bytes.data_ptr(), item.info.nbytes());
  }
}

std::vector<SaveEntry> to_entries(const NamedTensors& tensors) {
  std::vector<SaveEntry> entries;
  entries.reserve(tensors.size());
  for (const auto& [name, tensor] : tensors) entries.emplace_back(name, tensor);
  return entries;
}

const Metadata* non_empty(const Metadata& metadata) {
  return metadata.empty() ? nullptr : &metadata;
}

}  // namespace

TensorDict load(const std::string& path, const LoadOptions& options) {
  return File(path, options).tensors();
}

void save_entries(const std::vector<SaveEntry>& entries, const std::string& path,
                  const Metadata* metadata) {
  const Layout layout = plan(entries, metadata, path);
  storage::AtomicFileWriter writer(path);
  write_layout(layout, [&](const void* data, uint64_t n) { writer.write(data, n); });
  writer.commit();
}

std::string entries_to_bytes(const std::vector<SaveEntry>& entries, const Metadata* metadata) {
  const Layout layout = plan(entries, metadata, kInMemory);
  std::string out;
  out.reserve(layout.header.size() + layout.data_size);
  write_layout(
      layout, [&](const void* data, uint64_t n) { out.append(static_cast<const char*>(data), n); });
  return out;
}

void save(const NamedTensors& tensors, const std::string& path, const Metadata& metadata) {
  save_entries(to_entries(tensors), path, non_empty(metadata));
}

void save(const TensorDict& tensors, const std::string& path, const Metadata& metadata) {
  std::vector<SaveEntry> entries;
  entries.reserve(tensors.size());
  for (const auto& item : tensors) entries.emplace_back(item.key(), item.value());
  save_entries(entries, path, non_empty(metadata));
}

void save(const std::unordered_map<std::string, at::Tensor>& tensors, const std::string& path,
          const Metadata& metadata) {
  std::vector<SaveEntry> entries;
  entries.reserve(tensors.size());
  for (const auto& [name, tensor] : tensors) entries.emplace_back(name, tensor);
  save_entries(entries, path, non_empty(metadata));
}

std::string to_bytes(const NamedTensors& tensors, const Metadata& metadata) {
  return entries_to_bytes(to_entries(tensors), non_empty(metadata));
}

TensorDict from_bytes(std::string_view data) {
  const uint64_t n = parse_header_length(data.substr(0, kHeaderLengthSize), data.size(), kInMemory);
  const Header header = parse_header(data.substr(kHeaderLengthSize, n), data.size(), kInMemory);
  TensorDict out;
  out.reserve(header.tensors.size());
  for (const TensorInfo& info : header.tensors) {
    at::Tensor t = adapters::empty_for(info, kInMemory);
    if (info.nbytes())
      std::memcpy(t.data_ptr(), data.data() + header.data_offset() + info.begin, info.nbytes());
    out.insert(std::string(info.name), std::move(t));
  }
  return out;
}

}  // namespace torch::safetensors
