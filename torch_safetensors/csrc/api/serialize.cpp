// Whole-file load and save. Every save goes through one layout (plan_layout: order, offsets,
// header) and then streams tensor bytes straight from tensor memory to the destination: no
// whole-file buffer.
#include "torch_safetensors/serialize.h"

#include "torch_safetensors/checkpoint.h"

#include <unordered_set>

#include "adapters/load_tensor.h"
#include "adapters/save_item.h"
#include "api/named_module.h"
#include "api/save_to.h"
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

// "17" → 17; anything else (a sign, a leading zero, letters) → SIZE_MAX.
size_t index_of(const std::string& name) {
  if (name.empty() || name.size() > 18 || (name.size() > 1 && name[0] == '0')) return SIZE_MAX;
  size_t value = 0;
  for (char c : name) {
    if (c < '0' || c > '9') return SIZE_MAX;
    value = value * 10 + static_cast<size_t>(c - '0');
  }
  return value;
}

}  // namespace

TensorDict load(const LoadFrom& from, const LoadOptions& options) {
  return open_checkpoint(from, options).tensors();
}

void write_file(const std::vector<SaveEntry>& entries, const std::optional<Metadata>& metadata,
                storage::AtomicFileWriter& writer, const std::string& name,
                const std::function<void(uint64_t)>& on_written) {
  write(plan(entries, metadata, name), [&](const void* data, uint64_t n) {
    writer.write(data, n);
    if (on_written) on_written(n);
  });
}

void write_to(const SaveTo& to, const std::function<void(const ByteSink& sink)>& body) {
  const std::string name = to.name();
  if (to.path()) {
    storage::AtomicFileWriter writer(*to.path());
    body([&](const void* data, uint64_t n) { writer.write(data, n); });
    writer.commit(to.is_durable());
    return;
  }
  uint64_t offset = 0;
  body([&](const void* data, uint64_t n) {
    if (to.stream()) {
      storage::write_to_stream(*to.stream(), data, n, offset, name);
    } else {
      storage::write_to_function(to.write_function(), data, n, offset, name);
    }
    offset += n;
  });
  if (to.stream()) {
    to.stream()->flush();
    TS_CHECK(to.stream()->good(), name, "the stream failed flushing ", offset, " bytes");
  }
}

void save(const TensorsToSave& tensors, const SaveTo& to, const SaveMetadata& metadata) {
  write_to(to, [&](const ByteSink& sink) {
    write(plan(tensors.entries(), metadata.value(), to.name()), sink);
  });
}

void repair_header_padding(const std::string& path, const SaveTo& to) {
  const std::shared_ptr<const Source> source = file_source(path, /*mapped=*/false);
  const uint64_t file_size = source->size();
  std::string first8(std::min(file_size, kHeaderLengthSize), '\0');
  source->read(first8.data(), first8.size(), 0);
  const uint64_t header_size = parse_header_length(first8, file_size, path);
  std::string header(header_size, '\0');
  source->read(header.data(), header_size, kHeaderLengthSize);
  if (!is_nul_padded(header)) {
    parse_header(header, file_size, path);  // says what else is wrong, if anything
    TS_FAIL(path, "the header is valid and not padded with NUL bytes: there is nothing to repair");
  }
  header = nul_padding_as_spaces(header);
  parse_header(header, file_size, path);  // the repaired file is valid, or nothing is written
  write_to(to, [&](const ByteSink& sink) {
    sink(first8.data(), first8.size());
    sink(header.data(), header.size());
    const uint64_t data_offset = kHeaderLengthSize + header_size;
    storage::for_each_chunk(*source, data_offset, file_size - data_offset,
                            [&](const char* data, uint64_t n, uint64_t) { sink(data, n); });
  });
}

std::string to_bytes(const TensorsToSave& tensors, const SaveMetadata& metadata) {
  const SavePlan layout = plan(tensors.entries(), metadata.value(), kInMemory);
  std::string out;
  out.reserve(layout.layout.header_bytes.size() + layout.layout.header.data_size());
  write(layout,
        [&](const void* data, uint64_t n) { out.append(static_cast<const char*>(data), n); });
  return out;
}

void save(const at::Tensor& tensor, const SaveTo& to) {
  save(std::vector<SaveEntry>{{"0", tensor}}, to);
}

void save(const std::vector<at::Tensor>& tensors, const SaveTo& to) {
  // torch::save takes elements that share memory (`{t, t}`); a file cannot, so an element whose
  // storage an earlier one uses is written from a copy (they load as separate tensors).
  std::vector<SaveEntry> entries;
  entries.reserve(tensors.size());
  std::unordered_set<const void*> storages;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& tensor = tensors[i];
    const bool shared = tensor.defined() && tensor.has_storage() && tensor.storage().nbytes() > 0 &&
                        !storages.insert(tensor.storage().data()).second;
    entries.emplace_back(std::to_string(i), shared ? tensor.clone() : tensor);
  }
  save(std::move(entries), to);
}

void load(at::Tensor& tensor, const LoadFrom& from, std::optional<c10::Device> device) {
  LoadOptions options;
  options.device = device;
  const Checkpoint file = open_checkpoint(from, options);
  TS_CHECK(file.contains("0"), file.path(), "no tensor \"0\": not a file of one tensor (",
           file.size(), " tensors, none named \"0\")");
  adapters::assign_like_torch_load(tensor, file.tensor("0"));
}

void load(std::vector<at::Tensor>& tensors, const LoadFrom& from,
          std::optional<c10::Device> device) {
  LoadOptions options;
  options.device = device;
  const Checkpoint file = open_checkpoint(from, options);
  // Every name must be an index below the count, so a module's or a dict's file is refused whole
  // instead of loading as an empty vector (which is what torch::load would give).
  for (const std::string& name : file.keys()) {
    const size_t index = index_of(name);
    TS_CHECK(index < file.size(), file.path(), "tensor \"", name,
             "\" is not a vector element: expected the names \"0\" .. \"", file.size() - 1, "\"");
  }
  tensors.reserve(tensors.size() + file.size());
  for (size_t i = 0; i < file.size(); ++i) tensors.push_back(file.tensor(std::to_string(i)));
}

TensorDict from_bytes(std::string_view data) {
  const LoadOptions copies = LoadOptions().with_backend(Backend::kPread);
  return File(storage::borrowed_memory_source(data, std::string(kInMemory)), copies).tensors();
}

}  // namespace torch::safetensors
