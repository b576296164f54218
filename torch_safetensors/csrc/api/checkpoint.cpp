// Checkpoint: File's interface over a single file or a sharded checkpoint (index + shards). The
// index is checked on open; each shard is opened once, on first use, and checked against it.
// Every tensor still comes through File's one read path; a whole-checkpoint pread load plans the
// reads of every shard and runs them in one parallel pass.
#include "torch_safetensors/checkpoint.h"

#include <cerrno>
#include <mutex>
#include <unordered_map>

#include "api/bulk_load.h"
#include "check.h"
#include "format/index.h"
#include "storage/io.h"
#include "torch_safetensors/errors.h"

namespace torch::safetensors {
namespace {

constexpr std::string_view kDefaultIndex = "model.safetensors.index.json";

bool ends_with(std::string_view text, std::string_view end) {
  return text.size() >= end.size() && text.substr(text.size() - end.size()) == end;
}

// Reads an index, refusing one over format::kMaxIndexSize before reading it.
std::string read_index(const std::string& path) {
  const auto source = file_source(path, /*mapped=*/false);
  TS_CHECK(source->size() <= format::kMaxIndexSize, path, "index is ", source->size(),
           " bytes, more than the ", format::kMaxIndexSize, " bytes an index may have");
  std::string text(source->size(), '\0');
  source->read(text.data(), text.size(), 0);
  return text;
}

// The file a directory stands for: its index (the default name first), else its one
// safetensors file.
std::string resolve_directory(const std::string& directory) {
  const std::string default_index = storage::join_path(directory, std::string(kDefaultIndex));
  if (storage::is_regular_file(default_index)) return default_index;
  std::vector<std::string> indexes, files;
  for (const std::string& name : storage::list_files(directory)) {
    if (ends_with(name, ".safetensors.index.json")) indexes.push_back(name);
    if (ends_with(name, ".safetensors")) files.push_back(name);
  }
  auto list = [](const std::vector<std::string>& names) {
    std::string out;
    for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
    return out;
  };
  TS_CHECK(indexes.size() <= 1, directory, "several indexes and none named '", kDefaultIndex,
           "': ", list(indexes), "; open the one you mean");
  if (indexes.size() == 1) return storage::join_path(directory, indexes[0]);
  TS_CHECK(
      !files.empty(), directory,
      "no checkpoint here: expected an index (*.safetensors.index.json) or a .safetensors file");
  TS_CHECK(files.size() == 1, directory, "several .safetensors files and no index: ", list(files),
           "; open the one you mean");
  return storage::join_path(directory, files[0]);
}

}  // namespace

struct Checkpoint::Impl {
  std::string path;       // as given
  std::string directory;  // holding the shards
  std::optional<std::string> index_path;
  // Where an index's shards may resolve (storage::Containment).
  storage::Containment containment;
  LoadOptions options;
  std::optional<Metadata> metadata;
  std::vector<std::string> shard_files;          // sorted
  std::vector<std::vector<std::string>> listed;  // per shard: the index's names, in its order
  std::vector<std::string> keys;
  std::unordered_map<std::string_view, size_t> shard_of;  // views of `keys`
  mutable std::mutex open_mutex;  // guards `files`: each shard is opened once, by one thread
  mutable std::vector<std::optional<File>> files;

  // Messages name the index when there is one, else the file.
  const std::string& name() const { return index_path ? *index_path : path; }

  size_t shard_index(std::string_view tensor) const {
    const auto found = shard_of.find(tensor);
    if (found == shard_of.end()) {
      // File::info's error for a missing name (the same words for one file and many).
      TORCH_CHECK_INDEX(false, "safetensors: ", name(), ": no tensor named '", tensor, "' (",
                        keys.size(), " tensors in the checkpoint)");
    }
    return found->second;
  }

  const File& shard(size_t i) const {
    std::lock_guard<std::mutex> lock(open_mutex);
    if (!files[i]) {
      const std::string shard_path = storage::join_path(directory, shard_files[i]);
      // An index's shard is checked again, against the descriptor then read: the path may have
      // changed since the index was opened.
      const bool mapped = options.backend == Backend::kMmap;
      File file = index_path ? File(storage::open_contained(containment, shard_path, mapped,
                                                            *index_path, shard_files[i]),
                                    options)
                             : File(shard_path, options);
      check_shard(file, i);
      files[i] = std::move(file);
    }
    return *files[i];  // never reassigned, so the reference outlives the lock
  }

  // A shard holds exactly the tensors the index assigns to it.
  void check_shard(const File& file, size_t i) const {
    const std::string& shard = shard_files[i];
    for (const auto& tensor : listed[i]) {
      TS_CHECK(file.contains(tensor), name(), "the index lists tensor '", tensor, "' in shard '",
               shard, "', which does not hold it");
    }
    for (const auto& info : file.header().tensors()) {
      const auto found = shard_of.find(info.name);
      TS_CHECK(found != shard_of.end(), name(), "shard '", shard, "' holds tensor '", info.name,
               "', which the index does not list");
      TS_CHECK(found->second == i, name(), "shard '", shard, "' holds tensor '", info.name,
               "', which the index assigns to shard '", shard_files[found->second], "'");
    }
  }
};

Checkpoint::Checkpoint(File file) {
  auto impl = std::make_shared<Impl>();
  impl->path = file.path();
  impl->directory = storage::parent_path(file.path());
  impl->options = file.options();
  impl->metadata = file.metadata();
  impl->shard_files = {storage::file_name(file.path())};
  impl->keys = file.keys();
  impl->listed = {impl->keys};
  for (const auto& key : impl->keys) impl->shard_of.emplace(key, 0);
  impl->files.emplace_back(std::move(file));  // opened already
  impl_ = std::move(impl);
}

Checkpoint::Checkpoint(const std::string& path, const LoadOptions& options) {
  std::string target = path;
  if (storage::is_directory(path)) target = resolve_directory(path);
  if (!ends_with(target, ".json")) {
    Checkpoint single{File(target, options)};
    auto impl = std::const_pointer_cast<Impl>(single.impl_);
    impl->path = path;
    impl->directory = storage::directory_of(target);  // "." for a bare file name
    impl_ = std::move(impl);
    return;
  }
  auto impl = std::make_shared<Impl>();
  impl->path = path;
  impl->index_path = target;
  impl->options = options;
  impl->directory = storage::directory_of(target);
  format::CheckpointIndex index = format::parse_index(read_index(target), target);

  Metadata metadata = std::move(index.metadata);
  if (index.total_size) metadata["total_size"] = std::to_string(*index.total_size);
  impl->metadata = std::move(metadata);

  std::map<std::string, std::vector<std::string>> by_file;
  for (auto& [tensor, file] : index.weight_map) by_file[file].push_back(std::move(tensor));
  // Every shard exists, is a regular file, and resolves (symlinks followed) inside the folder or
  // its huggingface_hub blobs (storage::Containment); checked again when each shard is opened.
  impl->containment = storage::containment_of(impl->directory, "cannot resolve the folder");
  for (auto& [file, tensors] : by_file) {
    const std::string shard_path = storage::join_path(impl->directory, file);
    const std::string real =
        storage::real_path(shard_path, target + ": shard '" + file + "' of tensor '" +
                                           tensors.front() + "' cannot be opened");
    storage::check_contained(impl->containment, real, target, file);
    impl->shard_files.push_back(file);
    impl->listed.push_back(std::move(tensors));
  }
  for (const auto& names : impl->listed) {
    for (const auto& name : names) impl->keys.push_back(name);
  }
  // shard_of views the names in `keys`, which no longer grows.
  size_t k = 0;
  for (size_t i = 0; i < impl->listed.size(); ++i) {
    for (size_t j = 0; j < impl->listed[i].size(); ++j) impl->shard_of.emplace(impl->keys[k++], i);
  }
  impl->files.resize(impl->shard_files.size());
  impl_ = std::move(impl);
}

const std::string& Checkpoint::path() const { return impl_->path; }
const std::string& Checkpoint::directory() const { return impl_->directory; }
const std::optional<std::string>& Checkpoint::index_path() const { return impl_->index_path; }
const std::vector<std::string>& Checkpoint::shard_files() const { return impl_->shard_files; }
const LoadOptions& Checkpoint::options() const { return impl_->options; }
const std::optional<Metadata>& Checkpoint::metadata() const { return impl_->metadata; }
const std::vector<std::string>& Checkpoint::keys() const { return impl_->keys; }

bool Checkpoint::contains(std::string_view name) const { return impl_->shard_of.count(name); }

const std::string& Checkpoint::shard_file(std::string_view name) const {
  return impl_->shard_files[impl_->shard_index(name)];
}

const File& Checkpoint::file(std::string_view name) const {
  return impl_->shard(impl_->shard_index(name));
}

const TensorInfo& Checkpoint::info(std::string_view name) const { return file(name).info(name); }
at::Tensor Checkpoint::tensor(std::string_view name) const { return file(name).tensor(name); }
at::Tensor Checkpoint::slice(std::string_view name,
                             at::ArrayRef<at::indexing::TensorIndex> indices) const {
  return file(name).slice(name, indices);
}
at::Tensor Checkpoint::slice_intervals(std::string_view name, int64_t dim,
                                       std::vector<std::pair<int64_t, int64_t>> ranges) const {
  return file(name).slice_intervals(name, dim, std::move(ranges));
}
RawTensor Checkpoint::raw(std::string_view name) const { return file(name).raw(name); }

TensorDict Checkpoint::tensors() const {
  // One file: its keys are its header's order; skip the name lookups (100,000-tensor files).
  if (impl_->shard_files.size() == 1) return impl_->shard(0).tensors();
  return tensors(impl_->keys);
}

TensorDict Checkpoint::tensors(const std::vector<std::string>& names) const {
  // One pass over every shard: one parallel read (kPread), or one staging ring to a device, so
  // that many shards load as fast as one file of their total size.
  std::vector<LoadItem> items;
  items.reserve(names.size());
  for (const std::string& name : names) {
    const File& shard = file(name);
    items.push_back({&shard, &shard.info(name)});
  }
  std::vector<at::Tensor> loaded = load_many(items, impl_->options);
  TensorDict out;
  out.reserve(names.size());
  for (size_t i = 0; i < names.size(); ++i) out.insert(names[i], std::move(loaded[i]));
  return out;
}

void Checkpoint::for_each(const Consumer& consume) const {
  const Impl& impl = *impl_;
  for (size_t s = 0; s < impl.shard_files.size(); ++s) {
    const File& shard = impl.shard(s);
    const std::vector<TensorInfo>& infos = shard.header().tensors();
    std::vector<LoadItem> items;
    for (const TensorInfo& info : infos) items.push_back({&shard, &info});
    const bool batched = impl.options.backend == Backend::kPread && impl.options.device.is_cpu() &&
                         !impl.options.always_stage;
    if (!batched) {
      // Views are ready at once; to a device, each tensor is handed over as soon as it landed
      // while the ring goes on with the next ones.
      load_many(items, impl.options,
                [&](size_t i, const at::Tensor& t) { consume(std::string(infos[i].name), t); });
      continue;
    }
    // Reads into owned memory: in batches of about staging_bytes, so that memory stays bounded
    // while each batch still reads in parallel.
    for (size_t begin = 0; begin < items.size();) {
      size_t end = begin;
      uint64_t bytes = 0;
      while (end < items.size() &&
             (end == begin || bytes + items[end].info->nbytes() <= impl.options.staging_bytes)) {
        bytes += items[end++].info->nbytes();
      }
      std::vector<LoadItem> batch(items.begin() + begin, items.begin() + end);
      std::vector<at::Tensor> loaded = load_many(batch, impl.options);
      for (size_t i = 0; i < loaded.size(); ++i)
        consume(std::string(infos[begin + i].name), std::move(loaded[i]));
      begin = end;
    }
  }
}

void Checkpoint::check_intact() const {
  std::lock_guard<std::mutex> lock(impl_->open_mutex);
  // Only shards opened so far: the others are checked when opened.
  for (const auto& file : impl_->files) {
    if (file) file->check_intact();
  }
}

Checkpoint open_checkpoint(const LoadFrom& from, const LoadOptions& options) {
  return from.path() ? Checkpoint(*from.path(), options) : Checkpoint(File(from.source(), options));
}

}  // namespace torch::safetensors
