// Reading torch.save checkpoints: our zip reader (zip_reader.h) for the archive, our restricted
// unpickler (unpickler.h) for data.pkl, and the library's mapped file for the storages.
#include <cstring>
#include <memory>
#include <string>
#include <unordered_map>
#include <unordered_set>

#include <c10/core/CPUAllocator.h>
#include <caffe2/serialize/versions.h>

#include "check.h"
#include "convert/legacy_format.h"
#include "convert/limits.h"
#include "convert/torch_zip.h"
#include "convert/unpickler.h"
#include "convert/zip_reader.h"
#include "format/index.h"
#include "storage/io.h"
#include "torch_safetensors/convert.h"
#include "torch_safetensors/source.h"

namespace torch::safetensors {
namespace {

uint32_t read_u32(const uint8_t* p) { return p[0] | p[1] << 8 | p[2] << 16 | uint32_t(p[3]) << 24; }

bool ends_with(const std::string& text, std::string_view suffix) {
  return text.size() >= suffix.size() &&
         text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The storage deleter's context: the mapping stays alive while any tensor views it.
void release_source(void* context) { delete static_cast<std::shared_ptr<const Source>*>(context); }

// Refuses what is not a zip archive before the zip reader sees it, with the reason (a pickle
// stream, the legacy format, is read before this: legacy_format.h).
void check_zip_archive(const Source& file, const std::string& path) {
  const uint64_t size = file.size();
  uint8_t head[512] = {};
  file.read(head, std::min<uint64_t>(size, sizeof(head)), 0);
  if (size >= 4 && read_u32(head) == 0x04034b50) return;
  TS_CHECK(!(size >= 262 && std::memcmp(head + 257, "ustar", 5) == 0), path,
           "this is the legacy tar torch.save format (torch before 0.4); re-save it with a "
           "current torch and convert that");
  TS_FAIL(path, "not a torch.save checkpoint: expected a zip archive (starting 'PK\\x03\\x04')");
}

}  // namespace

NamedTensors convert::load_torch_archive(const std::shared_ptr<const Source>& file,
                                         const std::string& path) {
  return read_torch_archive(file, path, "", /*strict=*/true, /*metadata_scalars=*/false).tensors;
}

convert::Extracted convert::read_torch_archive(const std::shared_ptr<const Source>& file,
                                               const std::string& path, const std::string& key,
                                               bool strict, bool metadata_scalars) {
  if (convert::is_pickle_stream(*file)) {
    const convert::PickleTree tree = convert::read_legacy_torch_file(file, path);
    return convert::extract_tensors(tree.root(), key, strict, metadata_scalars, path);
  }
  check_zip_archive(*file, path);
  const convert::ZipReader archive(file, path);
  TS_CHECK(!archive.entries().empty(), path,
           "the zip archive is empty: not a torch.save checkpoint");
  // torch.save, torch::save and torch.jit.save put every record under one folder (archive/, or
  // the file's stem: "model/data.pkl"): the first entry's, as LibTorch's reader finds it.
  const std::string& first = archive.entries().front().name;
  const size_t slash = first.find('/');
  TS_CHECK(slash != std::string::npos, path, "zip entry '", first,
           "' is not inside a folder: not a torch.save checkpoint");
  const std::string folder = first.substr(0, slash + 1);
  auto entry = [&](const std::string& name) { return archive.find(folder + name); };
  const convert::ZipEntry* pickle_entry = entry("data.pkl");
  TS_CHECK(pickle_entry != nullptr, path,
           "the archive has no data.pkl: not a torch.save, torch::save or TorchScript "
           "checkpoint");
  if (const convert::ZipEntry* byteorder = entry("byteorder")) {
    const std::string order =
        archive.read(*byteorder, convert::kMaxSmallRecordBytes, "a byteorder record may have");
    TS_CHECK(order == "little", path, "the checkpoint was written in ",
             convert::quoted_prefix(order), " byte order, expected 'little'");
  }
  for (const char* name : {"version", ".data/version"}) {
    const convert::ZipEntry* version_entry = entry(name);
    if (version_entry == nullptr) continue;
    std::string text =
        archive.read(*version_entry, convert::kMaxSmallRecordBytes, "a version record may have");
    if (!text.empty() && text.back() == '\n') text.pop_back();
    const bool number = !text.empty() && text.size() <= 4 &&
                        text.find_first_not_of("0123456789") == std::string::npos;
    const uint64_t version = number ? std::stoull(text) : 0;
    TS_CHECK(number && version >= caffe2::serialize::kMinSupportedFileFormatVersion &&
                 version <= caffe2::serialize::kMaxSupportedFileFormatVersion,
             path, "the archive's ", name, " record says ", convert::quoted_prefix(text),
             ", expected a format version from ", caffe2::serialize::kMinSupportedFileFormatVersion,
             " to ", caffe2::serialize::kMaxSupportedFileFormatVersion);
  }
  uint8_t* mapped = file->data();

  auto load_storage = [&](const std::string& key, uint64_t nbytes) -> c10::Storage {
    const std::string name = "data/" + key;
    const convert::ZipEntry* record = entry(name);
    TS_CHECK(record != nullptr, path, "storage '", key,
             "' is named by the pickle but the archive has no record '", name, "'");
    TS_CHECK(record->size == nbytes, path, "storage '", key, "' needs ", nbytes,
             " bytes, its record has ", record->size);
    // A record stored uncompressed (what torch.save writes) is viewed in the mapping; a deflated
    // one is inflated into owned memory (its size is at most deflate's ratio of what the file
    // holds: zip_reader.cpp).
    if (mapped != nullptr && record->method == 0) {
      auto* context = new std::shared_ptr<const Source>(file);
      return c10::Storage(c10::Storage::use_byte_size_t(), nbytes,
                          c10::DataPtr(mapped + record->data_offset, context, &release_source,
                                       c10::Device(c10::kCPU)),
                          nullptr, /*resizable=*/false);
    }
    c10::DataPtr data = c10::GetDefaultCPUAllocator()->allocate(nbytes);
    archive.read_into(*record, data.get());
    return c10::Storage(c10::Storage::use_byte_size_t(), nbytes, std::move(data), nullptr, false);
  };
  const std::string pickle =
      archive.read(*pickle_entry, convert::kMaxPickleBytes, "data.pkl may have");
  // A TorchScript archive's object tree is data.pkl (its modules' attributes); code/ is never
  // read, and constants.pkl holds only the constants of that code, not parameters or buffers
  // (torch/csrc/jit/serialization/export_module.cpp writes them apart).
  convert::PickleTree tree = convert::unpickle(pickle, load_storage, path);
  return convert::extract_tensors(tree.root(), key, strict, metadata_scalars, path);
}

namespace {

TorchCheckpoint read_torch_file(const std::string& path, const ExtractOptions& options) {
  convert::Extracted extracted =
      convert::read_torch_archive(file_source(path, /*mapped=*/true), path, options.key,
                                  options.strict, options.metadata_scalars);
  TorchCheckpoint result;
  result.tensors = std::move(extracted.tensors);
  for (auto& [value_path, type] : extracted.skipped) {
    result.skipped.push_back({std::move(value_path), std::move(type)});
  }
  for (auto& [name, value] : extracted.scalars) result.scalars[name] = std::move(value);
  return result;
}

TorchCheckpoint read_torch_index(const std::string& index_path, const ExtractOptions& options) {
  const std::string directory = storage::parent_path(index_path);
  std::string text;
  {
    std::shared_ptr<const Source> file = file_source(index_path, /*mapped=*/false);
    TS_CHECK(file->size() <= format::kMaxIndexSize, index_path, "index is ", file->size(),
             " bytes, more than the ", format::kMaxIndexSize, " bytes an index may have");
    text.resize(file->size());
    file->read(text.data(), text.size(), 0);
  }
  const format::CheckpointIndex index = format::parse_index(text, index_path, ".bin");
  // Shards in sorted order, each holding exactly the names the index gives it.
  std::map<std::string, std::unordered_set<std::string>> expected;
  for (const auto& [name, shard] : index.weight_map) expected[shard].insert(name);
  const std::string root =
      storage::real_path(directory.empty() ? "." : directory, "cannot resolve the index's folder");
  TorchCheckpoint result;
  NamedTensors& tensors = result.tensors;
  for (auto& [shard, names] : expected) {
    const std::string shard_path = storage::join_path(directory, shard);
    const std::string real = storage::real_path(shard_path, "cannot open shard '" + shard + "'");
    TS_CHECK(real.compare(0, root.size() + 1, root + "/") == 0 || root == "/", index_path,
             "shard '", shard, "' resolves to '", real, "', outside the index's folder");
    TorchCheckpoint shard_contents = read_torch_file(shard_path, options);
    NamedTensors& part = shard_contents.tensors;
    for (const auto& entry : part) {
      TS_CHECK(names.erase(entry.first) == 1, shard_path, "holds tensor '", entry.first,
               "', which the index ", storage::file_name(index_path),
               " does not assign to this shard");
    }
    TS_CHECK(names.empty(), shard_path, "lacks tensor '", *names.begin(), "' (and ",
             names.size() - 1, " more) that the index assigns to it");
    for (auto& entry : part) tensors.push_back(std::move(entry));
    for (auto& skipped : shard_contents.skipped) result.skipped.push_back(std::move(skipped));
    result.scalars.merge(shard_contents.scalars);  // the same scalar in every shard: once
  }
  return result;
}

// A directory's checkpoint: transformers' index name, else the one index, else the one file.
std::string resolve_directory(const std::string& directory) {
  const std::string standard = storage::join_path(directory, "pytorch_model.bin.index.json");
  if (storage::is_regular_file(standard)) return standard;
  std::vector<std::string> indexes, files;
  for (const std::string& name : storage::list_files(directory)) {
    if (ends_with(name, ".bin.index.json")) indexes.push_back(name);
    if (ends_with(name, ".bin") || ends_with(name, ".pt") || ends_with(name, ".pth")) {
      files.push_back(name);
    }
  }
  const std::vector<std::string>& candidates = indexes.empty() ? files : indexes;
  TS_CHECK(candidates.size() == 1, directory,
           "expected one '*.bin.index.json' or one "
           "'.bin'/'.pt'/'.pth' checkpoint in the folder, found ",
           candidates.empty() ? std::string("none")
                              : std::to_string(candidates.size()) + " ('" + candidates[0] + "', '" +
                                    candidates[1] + "'...)");
  return storage::join_path(directory, candidates[0]);
}

}  // namespace

TorchCheckpoint read_torch_checkpoint(const std::string& path, const ExtractOptions& options) {
  const std::string resolved = storage::is_directory(path) ? resolve_directory(path) : path;
  if (ends_with(resolved, ".json")) return read_torch_index(resolved, options);
  return read_torch_file(resolved, options);
}

NamedTensors load_torch_checkpoint(const std::string& path) {
  ExtractOptions strict;
  strict.strict = true;
  return read_torch_checkpoint(path, strict).tensors;
}

}  // namespace torch::safetensors
