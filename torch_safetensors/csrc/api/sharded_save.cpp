// Sharded saving, as huggingface_hub's save_torch_state_dict does it (serialization/_torch.py and
// _base.py of huggingface_hub 2.4): the same tie handling, split, file names and index, with the
// files written through the one save pipeline (byte-identical to the reference's save_file).
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <map>
#include <mutex>
#include <tuple>

#include "api/checkpoint_files.h"
#include "api/named_module.h"
#include "check.h"
#include "format/index.h"
#include "storage/io.h"
#include "storage/parallel.h"
#include "torch_safetensors/errors.h"
#include "torch_safetensors/module.h"
#include "torch_safetensors/sharded.h"

namespace torch::safetensors {
namespace {

// The tensors of a sharded save: torch tensors (storage sizes and ties decide the split).
NamedTensors named_tensors(const TensorsToSave& tensors, const std::string& directory) {
  NamedTensors out;
  out.reserve(tensors.entries().size());
  for (const SaveEntry& entry : tensors.entries()) {
    TS_CHECK(!entry.raw, directory, "tensor '", entry.name,
             "': save_sharded takes torch tensors, not raw bytes (save a RawTensor with save())");
    out.emplace_back(entry.name, entry.tensor);
  }
  return out;
}

}  // namespace

uint64_t parse_size(std::string_view size) {
  auto trim = [](std::string_view s) {
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
    return s;
  };
  const std::string shown(size);
  const std::string_view text = trim(size);
  static const std::map<std::string, double> kUnits = {
      {"TB", 1e12}, {"GB", 1e9}, {"MB", 1e6}, {"KB", 1e3}};
  std::string unit(text.substr(text.size() >= 2 ? text.size() - 2 : 0));
  for (char& c : unit) c = char(std::toupper(static_cast<unsigned char>(c)));
  const auto found = kUnits.find(unit);
  TORCH_CHECK_VALUE(found != kUnits.end(), "safetensors: unit '", unit,
                    "' not supported. Supported units are TB, GB, MB, KB. Got '", shown, "'.");
  const std::string number(trim(text.substr(0, text.size() - 2)));
  char* end = nullptr;
  errno = 0;
  const double value = number.empty() ? 0.0 : std::strtod(number.c_str(), &end);
  TORCH_CHECK_VALUE(!number.empty() && end == number.c_str() + number.size() && errno == 0 &&
                        value >= 0 && value * found->second < 1.8e19,
                    "safetensors: could not parse the size value from '", shown,
                    "': expected a non-negative number before the unit");
  return uint64_t(value * found->second);
}

ShardSplit plan_shards(const std::vector<ShardSize>& sizes, const ShardOptions& options) {
  const uint64_t max_size = options.max_shard_size;
  std::vector<std::vector<size_t>> followers(sizes.size());  // tensors on one storage
  std::vector<std::vector<size_t>> shards;
  std::vector<size_t> current;
  uint64_t current_size = 0;
  ShardSplit split;
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (sizes[i].follows >= 0) {
      TORCH_CHECK_VALUE(size_t(sizes[i].follows) < i, "safetensors: tensor '", sizes[i].name,
                        "' follows a tensor that does not come before it");
      followers[sizes[i].follows].push_back(i);
      continue;
    }
    const uint64_t size = sizes[i].size;
    if (size > max_size) {  // a shard of its own, larger than the limit
      split.total_size += size;
      shards.push_back({i});
      continue;
    }
    if (current_size + size > max_size) {
      shards.push_back(std::move(current));
      current.clear();
      current_size = 0;
    }
    current.push_back(i);
    current_size += size;
    split.total_size += size;
  }
  if (!current.empty() || shards.empty()) shards.push_back(std::move(current));
  // The other tensors of a storage follow the first into its shard.
  for (auto& shard : shards) {
    const size_t leaders = shard.size();
    for (size_t k = 0; k < leaders; ++k)
      shard.insert(shard.end(), followers[shard[k]].begin(), followers[shard[k]].end());
  }
  for (size_t s = 0; s < shards.size(); ++s) {
    std::vector<std::string> names;
    for (size_t i : shards[s]) names.push_back(sizes[i].name);
    split.files.emplace_back(shards.size() == 1
                                 ? format_pattern(options.filename_pattern, "")
                                 : shard_file_name(options.filename_pattern, s, shards.size()),
                             std::move(names));
  }
  TORCH_CHECK_VALUE(
      !split.is_sharded() || options.filename_pattern.find("{suffix}") != std::string::npos,
      "safetensors: filename pattern '", options.filename_pattern, "' has no '{suffix}', so ",
      split.files.size(), " shards would all get the same name");
  return split;
}

ShardSplit plan_shards(const TensorsToSave& to_save, const ShardOptions& options) {
  const NamedTensors tensors = named_tensors(to_save, "plan_shards");
  // Storage identity as huggingface_hub's get_torch_storage_id: device, address, size.
  using StorageId = std::tuple<int, int, uintptr_t, uint64_t>;
  std::map<StorageId, size_t> first_of;
  std::vector<ShardSize> sizes;
  sizes.reserve(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i].second;
    TORCH_CHECK_VALUE(t.defined(), "safetensors: tensor '", tensors[i].first, "' is undefined");
    const uint64_t size = t.has_storage() ? t.storage().nbytes() : t.nbytes();
    int64_t follows = -1;
    if (!t.is_meta()) {
      const auto* address = t.has_storage() ? t.storage().data() : nullptr;
      const StorageId id{int(t.device().type()), int(t.device().index()),
                         reinterpret_cast<uintptr_t>(address), size};
      const auto [found, added] = first_of.emplace(id, i);
      if (!added) follows = int64_t(found->second);
    }
    sizes.push_back({tensors[i].first, size, follows});
  }
  return plan_shards(sizes, options);
}

SaveReport save_sharded(const TensorsToSave& to_save, const PathArg& directory_arg,
                        const ShardOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  const std::string& directory = directory_arg.str();
  const NamedTensors tensors = named_tensors(to_save, directory);
  Metadata metadata = options.metadata.value_or(Metadata());
  // huggingface_hub's _clean_state_dict_for_safetensors: ties stored once, then contiguous.
  NamedTensors kept;
  for (auto& entry : drop_tied_duplicates(tensors, metadata, options.discard, directory,
                                          /*refuse_partial_views=*/true))
    kept.emplace_back(entry.name, entry.tensor.contiguous());
  const ShardSplit split = plan_shards(kept, options);

  storage::make_directories(directory);
  Metadata file_metadata{{"format", "pt"}};
  if (!split.is_sharded()) {
    for (const auto& [key, value] : metadata) file_metadata[key] = value;
  }
  std::map<std::string_view, const at::Tensor*> by_name;
  for (const auto& [name, tensor] : kept) by_name.emplace(name, &tensor);

  // Everything goes to temporary files first, several files at once; nothing replaces an old
  // file until all are written (a failed file's writer, destroyed, removes its temporary file).
  uint64_t done = 0, total = 0;
  for (const auto& [name, tensor] : kept) total += tensor.nbytes();
  const auto& files = split.files;
  std::vector<std::unique_ptr<storage::AtomicFileWriter>> writers(files.size());
  std::vector<std::string> written;
  for (const auto& [file, names] : files) written.push_back(file);
  std::mutex progress;
  std::atomic<uint64_t> file_bytes{0};  // headers included
  storage::run_parallel(
      files.size(), storage::io_threads(options.threads, files.size()), [&](size_t f) {
        std::vector<SaveEntry> entries;
        uint64_t bytes = 0;
        for (const auto& name : files[f].second) {
          entries.emplace_back(name, *by_name.at(name));
          bytes += entries.back().tensor.nbytes();
        }
        const std::string path = storage::join_path(directory, files[f].first);
        writers[f] = std::make_unique<storage::AtomicFileWriter>(path);
        write_file(entries, file_metadata, *writers[f], path, [&](uint64_t n) { file_bytes += n; });
        std::lock_guard<std::mutex> lock(progress);
        done += bytes;
        if (options.on_progress) options.on_progress(done, total);
      });
  SaveReport report;
  report.tensor_bytes = total;
  report.header_bytes = file_bytes - total;
  if (split.is_sharded()) {
    format::CheckpointIndex index;
    index.total_size = split.total_size;
    index.metadata = metadata;
    for (const auto& [file, names] : split.files) {
      for (const auto& name : names) index.weight_map.emplace_back(name, file);
    }
    const std::string json = format::index_json(index);
    const std::string name = index_file_name(options.filename_pattern);
    writers.push_back(
        std::make_unique<storage::AtomicFileWriter>(storage::join_path(directory, name)));
    writers.back()->write(json.data(), json.size());
    report.header_bytes += json.size();
    written.push_back(name);
  }
  for (auto& writer : writers) writer->commit(options.durable);

  if (options.remove_stale)
    remove_stale_files(directory, options.filename_pattern, written, options.durable);
  report.files = std::move(written);
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

SaveReport save_sharded(const torch::nn::Module& module, const PathArg& directory,
                        const ShardOptions& options) {
  return save_sharded(module_tensors(module), directory, options);
}

}  // namespace torch::safetensors
