// The lazy handle: one implementation for a single file, an index and a directory. The index is
// checked on open; each shard is opened once, on first use, and checked against it. Every tensor
// comes through the one load engine (file.cpp); a whole-checkpoint pread load plans the reads of
// every shard and runs them in one parallel pass.
#include "torch_safetensors/checkpoint.h"

#include <cerrno>
#include <limits>
#include <mutex>
#include <unordered_map>

#include <ATen/TensorIndexing.h>

#include <c10/util/StringUtil.h>
#include "api/checkpoint_files.h"
#include "api/handle.h"

#include "check.h"
#include "device/staging_ring.h"
#include "format/index.h"
#include "storage/io.h"
#include "torch_safetensors/endpoints.h"
#include "torch_safetensors/errors.h"
#include "torch_safetensors/file.h"

namespace torch::safetensors {
namespace {

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
  std::vector<std::vector<std::string>> listed;  // an index: per shard, its names in index order
  std::unordered_map<std::string_view, size_t> shard_of;  // an index: views of `keys`
  std::vector<std::string> keys;  // an index: its names (a single file: its header's, on demand)
  mutable std::mutex open_mutex;  // guards `files`: each shard is opened once, by one thread
  mutable std::vector<std::shared_ptr<const detail::OpenFile>> files;

  bool single() const { return !index_path; }
  // Messages name the index when there is one, else the file.
  const std::string& name() const { return index_path ? *index_path : path; }

  std::vector<std::string> key_list() const {
    if (!single()) return keys;
    const Header& header = files[0]->header;
    std::vector<std::string> names;
    names.reserve(header.size());
    for (const auto& info : header.tensors()) names.emplace_back(info.name);
    return names;
  }

  // The index of the shard holding `tensor` (an index), or the one missing-name error.
  size_t shard_index(std::string_view tensor) const {
    const auto found = shard_of.find(tensor);
    if (found == shard_of.end()) {
      std::vector<std::string_view> first;
      for (size_t i = 0; i < keys.size() && i < 5; ++i) first.push_back(keys[i]);
      throw_missing_tensor(name(), tensor, keys.size(), first);
    }
    return found->second;
  }

  detail::Located locate(std::string_view tensor) const {
    if (single()) return {files[0].get(), &files[0]->header.at(tensor, name())};
    const detail::OpenFile& file = shard(shard_index(tensor));
    return {&file, file.header.find(tensor)};  // check_shard: the shard holds it
  }

  const detail::OpenFile& shard(size_t i) const {
    std::lock_guard<std::mutex> lock(open_mutex);
    if (!files[i]) {
      const std::string shard_path = storage::join_path(directory, shard_files[i]);
      // An index's shard is checked again, against the descriptor then read: the path may have
      // changed since the index was opened.
      const bool mapped = options.backend == Backend::kMmap;
      auto file = detail::open_file(
          storage::open_contained(containment, shard_path, mapped, *index_path, shard_files[i]),
          options);
      check_shard(*file, i);
      files[i] = std::move(file);
    }
    return *files[i];  // never reassigned, so the reference outlives the lock
  }

  // A shard holds exactly the tensors the index assigns to it.
  void check_shard(const detail::OpenFile& file, size_t i) const {
    const std::string& shard = shard_files[i];
    for (const auto& tensor : listed[i]) {
      TS_CHECK(file.header.find(tensor), name(), "the index lists tensor '", tensor, "' in shard '",
               shard, "', which does not hold it");
    }
    for (const auto& info : file.header.tensors()) {
      const auto found = shard_of.find(info.name);
      TS_CHECK(found != shard_of.end(), name(), "shard '", shard, "' holds tensor '", info.name,
               "', which the index does not list");
      TS_CHECK(found->second == i, name(), "shard '", shard, "' holds tensor '", info.name,
               "', which the index assigns to shard '", shard_files[found->second], "'");
    }
  }

  std::vector<detail::LoadItem> items_of(const std::vector<std::string>& names) const {
    std::vector<detail::LoadItem> items;
    items.reserve(names.size());
    for (const std::string& tensor : names) {
      const detail::Located at = locate(tensor);
      items.push_back({at.file, at.info});
    }
    return items;
  }

  // Every tensor's item, in keys() order (a single file: its header's, without name lookups).
  std::vector<detail::LoadItem> all_items() const {
    if (!single()) return items_of(keys);
    const detail::OpenFile& file = *files[0];
    std::vector<detail::LoadItem> items;
    items.reserve(file.header.size());
    for (const TensorInfo& info : file.header.tensors()) items.push_back({&file, &info});
    return items;
  }

  // The plan step of every load of several tensors: its budget check names the checkpoint.
  void check_budgets(const std::vector<detail::LoadItem>& items) const {
    if (options.device_budget || options.host_budget)
      detail::check_budgets(detail::estimate_memory(items, options), options, name());
  }

  // One names -> tensors path for every accessor that returns several.
  TensorDict load_named(const std::vector<std::string>& names) const {
    const std::vector<detail::LoadItem> items = items_of(names);
    check_budgets(items);
    std::vector<at::Tensor> loaded = detail::load_many(items, options);
    TensorDict out;
    out.reserve(names.size());
    for (size_t i = 0; i < names.size(); ++i) out.insert(names[i], std::move(loaded[i]));
    return out;
  }
};

namespace {

// A single file as a handle: the one shard, opened now.
// `directory`: the folder of a file (storage::directory_of: "." for a bare name), "" for a source.
std::shared_ptr<Checkpoint::Impl> single_file(std::string path, std::string directory,
                                              std::shared_ptr<const detail::OpenFile> file,
                                              const LoadOptions& options) {
  auto impl = std::make_shared<Checkpoint::Impl>();
  impl->path = std::move(path);
  impl->directory = std::move(directory);
  impl->options = options;
  impl->metadata = file->header.metadata();
  impl->shard_files = {storage::file_name(file->name())};
  impl->files = {std::move(file)};
  return impl;
}

std::shared_ptr<const detail::OpenFile> open_path(const std::string& path,
                                                  const LoadOptions& options) {
  return detail::open_file(file_source(path, /*mapped=*/options.backend == Backend::kMmap),
                           options);
}

std::shared_ptr<const Checkpoint::Impl> open_index(const std::string& path,
                                                   const std::string& target,
                                                   const LoadOptions& options) {
  detail::check_load_options(options, target);
  auto impl = std::make_shared<Checkpoint::Impl>();
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
  return impl;
}

std::shared_ptr<const Checkpoint::Impl> open_any(const std::string& path,
                                                 const LoadOptions& options) {
  std::string target = path;
  if (storage::is_directory(path)) target = resolve_directory(path);
  if (ends_with(target, ".json")) return open_index(path, target, options);
  return single_file(path, storage::directory_of(target), open_path(target, options), options);
}

}  // namespace

Checkpoint::Checkpoint(const PathArg& path, const LoadOptions& options)
    : impl_(open_any(path.str(), options)) {}

Checkpoint::Checkpoint(std::shared_ptr<const Source> source, const LoadOptions& options) {
  auto file = detail::open_file(std::move(source), options);
  std::string name = file->name();
  impl_ = single_file(std::move(name), "", std::move(file), options);
}

File::File(const PathArg& path, const LoadOptions& options)
    : Checkpoint(single_file(path.str(), storage::directory_of(path.str()),
                             open_path(path.str(), options), options)) {}

File::File(std::shared_ptr<const Source> source, const LoadOptions& options)
    : Checkpoint(std::move(source), options) {}

const Source& File::source() const { return *impl_->files[0]->source; }
std::shared_ptr<const Source> File::shared_source() const { return impl_->files[0]->source; }
const Header& File::header() const { return impl_->files[0]->header; }

const std::string& Checkpoint::path() const { return impl_->path; }
const std::string& Checkpoint::directory() const { return impl_->directory; }
const std::optional<std::string>& Checkpoint::index_path() const { return impl_->index_path; }
const std::vector<std::string>& Checkpoint::shard_files() const { return impl_->shard_files; }
const LoadOptions& Checkpoint::options() const { return impl_->options; }
const std::optional<Metadata>& Checkpoint::metadata() const { return impl_->metadata; }
std::vector<std::string> Checkpoint::keys() const { return impl_->key_list(); }
size_t Checkpoint::size() const {
  return impl_->single() ? impl_->files[0]->header.size() : impl_->keys.size();
}

bool Checkpoint::contains(std::string_view name) const {
  return impl_->single() ? impl_->files[0]->header.find(name) != nullptr
                         : impl_->shard_of.count(name) != 0;
}

const std::string& Checkpoint::shard_file(std::string_view name) const {
  if (impl_->single()) {
    impl_->locate(name);  // the missing-name error
    return impl_->shard_files[0];
  }
  return impl_->shard_files[impl_->shard_index(name)];
}

File Checkpoint::file(std::string_view name) const {
  const detail::Located at = impl_->locate(name);
  if (impl_->single()) return File(impl_);
  auto shared = std::shared_ptr<const detail::OpenFile>(impl_, at.file);  // kept alive by impl_
  return File(single_file(at.file->name(), storage::directory_of(at.file->name()),
                          std::move(shared), impl_->options));
}

const TensorInfo& Checkpoint::info(std::string_view name) const {
  return *impl_->locate(name).info;
}

at::Tensor Checkpoint::tensor(std::string_view name) const {
  return detail::load_one(impl_->locate(name), impl_->options);
}

at::Tensor Checkpoint::slice(std::string_view name,
                             at::ArrayRef<at::indexing::TensorIndex> indices) const {
  return detail::load_slice(impl_->locate(name), indices, impl_->options);
}

at::Tensor Checkpoint::slice_intervals(std::string_view name, int64_t dim,
                                       std::vector<std::pair<int64_t, int64_t>> ranges) const {
  const detail::Located at = impl_->locate(name);
  const SlicePlan plan = detail::plan_tensor_slice(at, dim_intervals(dim, std::move(ranges)));
  return detail::load_many({{at.file, at.info, {}, &plan}}, impl_->options)[0];
}

RawTensor Checkpoint::raw(std::string_view name) const {
  return detail::load_raw(impl_->locate(name));
}

TensorDict Checkpoint::tensors() const {
  if (!impl_->single()) return impl_->load_named(impl_->keys);
  // One file: its header's order; no name lookups (100,000-tensor files).
  const std::vector<TensorInfo>& infos = impl_->files[0]->header.tensors();
  const std::vector<detail::LoadItem> items = impl_->all_items();
  impl_->check_budgets(items);
  std::vector<at::Tensor> loaded = detail::load_many(items, impl_->options);
  TensorDict out;
  out.reserve(infos.size());
  for (size_t i = 0; i < infos.size(); ++i)
    out.insert(std::string(infos[i].name), std::move(loaded[i]));
  return out;
}

TensorDict Checkpoint::tensors(const std::vector<std::string>& names) const {
  return impl_->load_named(names);
}

MemoryEstimate Checkpoint::estimate_memory(const std::vector<std::string>& names) const {
  return detail::estimate_memory(impl_->items_of(names), impl_->options);
}

MemoryEstimate Checkpoint::estimate_memory() const {
  return detail::estimate_memory(impl_->all_items(), impl_->options);
}

namespace {

// A streaming load's plan: shard by shard, its tensors and their batches (every shard opened, so
// that a tensor that fits no batch fails before anything is read).
struct ShardBatches {
  const detail::OpenFile* shard;
  std::vector<detail::LoadItem> items;
  std::vector<detail::LoadBatch> batches;
};

std::vector<ShardBatches> stream_batches(const Checkpoint& checkpoint) {
  std::vector<ShardBatches> out;
  for (size_t s = 0; s < checkpoint.shard_files().size(); ++s) {
    const detail::OpenFile& shard = detail::shard(checkpoint, s);
    ShardBatches planned{&shard, {}, {}};
    for (const TensorInfo& info : shard.header.tensors()) planned.items.push_back({&shard, &info});
    planned.batches = detail::plan_batches(planned.items, checkpoint.options(), shard.name());
    out.push_back(std::move(planned));
  }
  return out;
}

}  // namespace

std::vector<StreamBatch> Checkpoint::stream_plan() const {
  std::vector<StreamBatch> out;
  for (const ShardBatches& shard : stream_batches(*this)) {
    for (const detail::LoadBatch& batch : shard.batches) {
      StreamBatch planned{{}, batch.memory};
      for (size_t i = batch.begin; i < batch.end; ++i)
        planned.names.emplace_back(shard.items[i].info->name);
      out.push_back(std::move(planned));
    }
  }
  return out;
}

void Checkpoint::for_each(const Consumer& consume) const {
  const LoadOptions& options = impl_->options;
  for (const ShardBatches& shard : stream_batches(*this)) {
    const std::vector<TensorInfo>& infos = shard.shard->header.tensors();
    for (const detail::LoadBatch& batch : shard.batches) {
      // Each batch is one load (read in parallel, or streamed through the ring); views are ready
      // at once, and to a device each tensor is handed over as soon as it landed while the ring
      // goes on with the next ones.
      const std::vector<detail::LoadItem> items(shard.items.begin() + batch.begin,
                                                shard.items.begin() + batch.end);
      if (detail::staged(options) || options.backend == Backend::kMmap) {
        detail::load_many(items, options, [&](size_t i, const at::Tensor& t) {
          consume(std::string(infos[batch.begin + i].name), t);
        });
      } else {
        std::vector<at::Tensor> loaded = detail::load_many(items, options);
        for (size_t i = 0; i < loaded.size(); ++i)
          consume(std::string(infos[batch.begin + i].name), std::move(loaded[i]));
      }
    }
  }
}

void Checkpoint::check_intact() const {
  std::lock_guard<std::mutex> lock(impl_->open_mutex);
  // Only shards opened so far: the others are checked when opened.
  for (const auto& file : impl_->files) {
    if (file) file->source->check_intact();
  }
}

namespace detail {

Located locate(const Checkpoint& checkpoint, std::string_view name) {
  return CheckpointAccess::impl(checkpoint).locate(name);
}

const OpenFile& shard(const Checkpoint& checkpoint, size_t index) {
  const Checkpoint::Impl& impl = CheckpointAccess::impl(checkpoint);
  return impl.single() ? *impl.files[0] : impl.shard(index);
}

}  // namespace detail

Checkpoint open_checkpoint(const LoadFrom& from, const LoadOptions& options) {
  return from.path() ? Checkpoint(*from.path(), options) : Checkpoint(from.source(), options);
}

}  // namespace torch::safetensors
