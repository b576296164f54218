// The `*.safetensors.index.json` of a sharded checkpoint, as plain data: parse + validate
// (untrusted text in) and serialize (out, exactly as huggingface_hub's `save_torch_state_dict`
// writes it: Python's `json.dump(index, f, indent=2)`). No I/O: opening the shards, and the
// symlink check that needs the file system, are api/checkpoint.cpp's.
//
//   {"metadata": {"total_size": 1234, ...}, "weight_map": {"tensor name": "shard file", ...}}
#pragma once

#include "torch_safetensors/export.h"

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "torch_safetensors/header.h"

namespace torch::safetensors::format {

// huggingface_hub's MAX_INDEX_FILE_SIZE: a larger index is refused before it is read.
inline constexpr uint64_t kMaxIndexSize = uint64_t(10) << 20;

struct TS_API CheckpointIndex {
  // "metadata"."total_size" when it is a non-negative integer (as writers store it).
  std::optional<uint64_t> total_size;
  // The other "metadata" entries: strings as they are, any other JSON value as its compact text.
  Metadata metadata;
  // "weight_map": tensor name → shard file name (relative to the index's folder), in index order.
  // Names are unique; file names pass check_shard_file_name.
  std::vector<std::pair<std::string, std::string>> weight_map;
};

// Parses and validates an index. Throws c10::Error naming `index_name`: not UTF-8 or not JSON,
// not an object, no "weight_map" object, a name listed twice, a value that is not a string, a shard
// file name check_shard_file_name refuses; "metadata", when present, must be an object.
// `extension` is what shard names must end in: ".bin" reads a `pytorch_model.bin.index.json`
// (the same layout over torch.save shards, for conversion).
TS_API CheckpointIndex parse_index(std::string_view json, const std::string& index_name,
                                   std::string_view extension = ".safetensors");

// A shard file name must stay inside the index's folder and name a safetensors file: not empty,
// relative (no leading '/', no drive such as "C:"), no ".." component, no backslash, no NUL, and
// ending in `extension`. Symlinks are checked where the file system is (api/checkpoint.cpp).
TS_API void check_shard_file_name(std::string_view file, const std::string& index_name,
                                  std::string_view extension = ".safetensors");

// The index as huggingface_hub writes it: {"metadata": {"total_size": N, <metadata>...},
// "weight_map": {...}}, indented by 2, non-ASCII escaped, no final newline. A "total_size" key in
// `metadata` replaces the number (Python's dict merge). Entries of `metadata` come sorted.
TS_API std::string index_json(const CheckpointIndex& index);

}  // namespace torch::safetensors::format
