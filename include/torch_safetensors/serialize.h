// Loading and saving whole state dicts: files and in-memory bytes. One verb per operation; every
// container of tensors that `save` takes, `to_bytes` takes too.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "torch_safetensors/endpoints.h"
#include "torch_safetensors/file.h"

namespace torch::safetensors {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// One entry to write: a torch tensor, or raw bytes with their spec dtype (see RawTensor).
struct SaveEntry {
  std::string name;
  at::Tensor tensor;             // used when `raw` is empty
  std::optional<RawTensor> raw;  // written as is, after checking its size against dtype and shape

  SaveEntry(std::string n, at::Tensor t) : name(std::move(n)), tensor(std::move(t)) {}
  SaveEntry(std::string n, RawTensor r) : name(std::move(n)), raw(std::move(r)) {}
};

// Loads every tensor of a file, in file order. Default: zero-copy views of the mapped file (of
// the owned copy for bytes in memory; streams and functions are read into owned memory).
TensorDict load(const LoadFrom& from, const LoadOptions& options = {});

// Writes tensors to a path, a stream or a write function (SaveTo). A path is written atomically: a
// temporary file beside `path` is filled and renamed into place, so a failed save leaves any
// previous file untouched and no temporary file behind. Saving over a file that loaded tensors
// still map is safe (the mapping keeps the old contents).
//
// Non-contiguous tensors are written in logical (row-major) order; tensors on other devices are
// copied to the CPU one at a time. Tensors whose memory overlaps are refused, as in the reference's
// `save_file` (use the Module overload to drop tied duplicates). `metadata` is written as
// `__metadata__` when given (an empty map writes `{}`, as the reference does for `metadata={}`);
// std::nullopt writes none. The file is byte-identical to the reference's for the same input.
//
// Metadata literals need their type: save(tensors, path, Metadata{{"format", "pt"}}).
void save(const NamedTensors& tensors, const SaveTo& to,
          const std::optional<Metadata>& metadata = std::nullopt);
void save(const TensorDict& tensors, const SaveTo& to,
          const std::optional<Metadata>& metadata = std::nullopt);
void save(const std::unordered_map<std::string, at::Tensor>& tensors, const SaveTo& to,
          const std::optional<Metadata>& metadata = std::nullopt);
void save(const std::vector<SaveEntry>& entries, const SaveTo& to,
          const std::optional<Metadata>& metadata = std::nullopt);

// The same file as bytes in memory.
std::string to_bytes(const NamedTensors& tensors,
                     const std::optional<Metadata>& metadata = std::nullopt);
std::string to_bytes(const TensorDict& tensors,
                     const std::optional<Metadata>& metadata = std::nullopt);
std::string to_bytes(const std::unordered_map<std::string, at::Tensor>& tensors,
                     const std::optional<Metadata>& metadata = std::nullopt);
std::string to_bytes(const std::vector<SaveEntry>& entries,
                     const std::optional<Metadata>& metadata = std::nullopt);

// Every tensor of a file held in memory, as owned copies: nothing refers to `data` afterwards.
// For lazy access to bytes in memory (views, slices), open File(memory_source(bytes)).
TensorDict from_bytes(std::string_view data);

// torch::save / torch::load of one tensor (key "0") and of a vector of tensors (keys "0", "1",
// ...), with torch's semantics: loading into a defined tensor replaces its data under NoGradGuard
// (`set_` on the same device, `set_data` across devices), an undefined one is assigned; a vector
// is appended to, like torch::load does (torch::load(v, ...) push_backs every tensor it reads).
// With `device`, tensors are loaded there; without, they are on the CPU. A file that is not such a
// value (no "0"; a vector file whose names are not exactly "0".."n-1") is a c10::Error naming the
// source and the key.
void save(const at::Tensor& tensor, const SaveTo& to);
void save(const std::vector<at::Tensor>& tensors, const SaveTo& to);
void load(at::Tensor& tensor, const LoadFrom& from,
          std::optional<c10::Device> device = std::nullopt);
void load(std::vector<at::Tensor>& tensors, const LoadFrom& from,
          std::optional<c10::Device> device = std::nullopt);

// torch::load's two-argument sources, for every value `load` takes (tensors, vectors, modules,
// optimizers), with whatever follows (a device, options): `(data, size)` is copied first (nothing
// refers to it after the call); `(read, size)` reads only the header and the bytes asked for.
template <typename Value, typename... Rest>
decltype(auto) load(Value& value, const char* data, size_t size, Rest&&... rest) {
  return load(value, LoadFrom(copied_memory_source(data, size)), std::forward<Rest>(rest)...);
}
template <typename Value, typename... Rest>
decltype(auto) load(Value& value, const ReadFunction& read, const SizeFunction& size,
                    Rest&&... rest) {
  return load(value, LoadFrom(function_source(read, size)), std::forward<Rest>(rest)...);
}

}  // namespace torch::safetensors
