// Loading and saving whole state dicts: files and in-memory bytes. One verb per operation; every
// container of tensors that `save` takes, `to_bytes` takes too.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

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

// Loads every tensor of a file, in file order. Default: zero-copy views of the mapped file.
TensorDict load(const std::string& path, const LoadOptions& options = {});

// Writes tensors atomically: a temporary file beside `path` is filled and renamed into place, so a
// failed save leaves any previous file untouched and no temporary file behind. Saving over a file
// that loaded tensors still map is safe (the mapping keeps the old contents).
//
// Non-contiguous tensors are written in logical (row-major) order; tensors on other devices are
// copied to the CPU one at a time. Tensors whose memory overlaps are refused, as in the reference's
// `save_file` (use the Module overload to drop tied duplicates). `metadata` is written as
// `__metadata__` when given (an empty map writes `{}`, as the reference does for `metadata={}`);
// std::nullopt writes none. The file is byte-identical to the reference's for the same input.
//
// Metadata literals need their type: save(tensors, path, Metadata{{"format", "pt"}}).
void save(const NamedTensors& tensors, const std::string& path,
          const std::optional<Metadata>& metadata = std::nullopt);
void save(const TensorDict& tensors, const std::string& path,
          const std::optional<Metadata>& metadata = std::nullopt);
void save(const std::unordered_map<std::string, at::Tensor>& tensors, const std::string& path,
          const std::optional<Metadata>& metadata = std::nullopt);
void save(const std::vector<SaveEntry>& entries, const std::string& path,
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

}  // namespace torch::safetensors
