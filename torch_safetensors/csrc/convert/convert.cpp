// torch.save checkpoint → safetensors: read (torch_zip.cpp), cast, then the library's own save
// paths with the tie policy of save(module) (api/named_module.h).
#include <map>
#include <utility>

#include <ATen/ops/empty.h>

#include "api/named_module.h"
#include "check.h"
#include "storage/io.h"
#include "torch_safetensors/convert.h"

namespace torch::safetensors {
namespace {

// Casts storage by storage, so that tensors sharing one (tied weights, views) share the cast one
// too and the tie policy still sees them as one.
void cast_tensors(NamedTensors& tensors, c10::ScalarType dtype) {
  std::map<std::pair<const c10::StorageImpl*, c10::ScalarType>, c10::Storage> cast_storages;
  for (auto& [name, tensor] : tensors) {
    const c10::ScalarType from = tensor.scalar_type();
    if (!cast_applies(from) || from == dtype) continue;  // the dtype-on-load rule (dtype.h)
    const c10::Storage& source = tensor.storage();
    auto key = std::make_pair(source.unsafeGetStorageImpl(), from);
    auto it = cast_storages.find(key);
    if (it == cast_storages.end()) {
      const int64_t elements = int64_t(source.nbytes() / c10::elementSize(from));
      at::Tensor whole = at::empty({0}, c10::TensorOptions().dtype(from));
      whole.set_(source, 0, {elements}, {1});
      it = cast_storages.emplace(key, whole.to(dtype).storage()).first;
    }
    at::Tensor cast = at::empty({0}, c10::TensorOptions().dtype(dtype));
    cast.set_(it->second, tensor.storage_offset(), tensor.sizes(), tensor.strides());
    tensor = std::move(cast);
  }
}

}  // namespace

ConvertReport convert_torch_checkpoint(const std::string& from, const std::string& to,
                                       const ConvertOptions& options) {
  TorchCheckpoint contents = read_torch_checkpoint(from, options);
  NamedTensors& tensors = contents.tensors;
  std::optional<Metadata> base_metadata = options.metadata;
  if (!contents.scalars.empty()) {
    if (!base_metadata) base_metadata.emplace();
    for (auto& [name, value] : contents.scalars) {
      TS_CHECK(base_metadata->count(name) == 0, from, "the scalar '", name,
               "' would be the metadata entry of that name, which is already '",
               base_metadata->at(name),
               "'; select with a key, or convert without metadata "
               "scalars");
      base_metadata->emplace(name, std::move(value));
    }
  }
  if (options.dtype) {
    TS_CHECK(is_cast_target(*options.dtype), to, "--dtype must be F64, F32, F16 or BF16, found ",
             c10::toString(*options.dtype));
    cast_tensors(tensors, *options.dtype);
  }
  ConvertReport report;
  report.tensors_read = tensors.size();
  report.skipped = std::move(contents.skipped);
  report.metadata_scalars = contents.scalars.size();

  if (options.max_shard_size) {
    ShardOptions shard_options;
    shard_options.max_shard_size = *options.max_shard_size;
    shard_options.metadata = base_metadata;
    shard_options.on_progress = options.on_progress;
    shard_options.durable = options.durable;
    save_sharded(tensors, to, shard_options);
    const Checkpoint written(to);
    report.files = written.shard_files();
    if (written.index_path()) report.files.push_back(storage::file_name(*written.index_path()));
    report.tensors_written = written.size();
    for (const std::string& name : written.keys())
      report.bytes_written += written.info(name).nbytes();
    return report;
  }

  // One file, atomic as save(path), reporting progress as it goes.
  Metadata metadata = base_metadata.value_or(Metadata());
  const std::vector<SaveEntry> entries = drop_tied_duplicates(tensors, metadata, {}, to);
  const bool any_metadata = base_metadata.has_value() || !metadata.empty();
  uint64_t total = 0;
  for (const SaveEntry& entry : entries) total += entry.tensor.nbytes();
  storage::AtomicFileWriter writer(to);
  uint64_t written = 0;
  // Errors name `to`, the path the caller gave.
  write_file(entries, any_metadata ? std::optional<Metadata>(metadata) : std::nullopt, writer, to,
             [&](uint64_t length) {
               written += length;
               if (options.on_progress) options.on_progress(std::min(written, total), total);
             });
  writer.commit(options.durable);
  report.tensors_written = entries.size();
  report.bytes_written = total;
  report.files.push_back(to);
  return report;
}

}  // namespace torch::safetensors
