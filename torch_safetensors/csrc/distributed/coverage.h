// Where the stored chunks of a DCP-sharded checkpoint sit in their tensors, and the check that
// they cover each tensor exactly once. torch's HuggingFaceStorageWriter(save_distributed=True)
// records a chunk's place as `__metadata__["DCP_SHARDING_INFO"]`, JSON of
// {"<tensor>": {"saved_offsets": [o0, o1, ...]}} (torch/distributed/checkpoint/_hf_utils.py);
// the chunk's sizes are its stored shape. The reader (torch_safetensors/distributed/_dcp.py) calls these
// before it plans any read, so a gap, an overlap or a bad offset is an error naming the file and
// the tensor, never a destination left with its old values.
#pragma once

#include "torch_safetensors/export.h"

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace torch::safetensors::distributed {

// The key of the sharding entry, and the field holding a chunk's offsets.
inline constexpr std::string_view kShardingInfoKey = "DCP_SHARDING_INFO";
inline constexpr std::string_view kSavedOffsetsKey = "saved_offsets";

// The most dimensions a chunk may have (as many as a safetensors header allows in practice).
inline constexpr size_t kMaxChunkDims = 64;

// tensor -> offsets, from the JSON value of kShardingInfoKey in `file`'s metadata. Every offset
// is a non-negative integer (a whole number: 3.9 and -4 and 2^70 are refused, never rounded or
// wrapped). Throws c10::Error "safetensors: <file>: ..." naming the tensor.
TS_API std::map<std::string, std::vector<int64_t>> parse_sharding_info(std::string_view json,
                                                                std::string_view file);

struct TS_API StoredChunk {
  std::string file;              // where it is stored (for messages)
  std::vector<int64_t> offsets;  // where it starts in the tensor
  std::vector<int64_t> sizes;    // its stored shape
};

// The tensor's global shape (per dimension, the largest offset + size), after checking that
// `chunks` tile it exactly: at least one chunk; every chunk has as many offsets as dimensions,
// the same number as the others; offsets and sizes are non-negative and their sum fits int64; no
// two chunks overlap (DCP writes each element once; an overlap would be resolved by read
// order); and the chunks' element counts add up to the shape's, so that, without overlaps, no
// element is left uncovered. Throws c10::Error naming the tensor and the file(s) at fault.
TS_API std::vector<int64_t> check_coverage(std::string_view tensor,
                                    const std::vector<StoredChunk>& chunks);

}  // namespace torch::safetensors::distributed
