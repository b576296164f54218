// ExecuTorch's FlatTensor (.ptd) format, pure: no I/O. A hand-written codec for the four tables of
// flat_tensor.fbs (executorch 1.5.1, extension/flat_tensor/serialize/flat_tensor.fbs; file
// identifier FT01), its extended header (FH01, flat_tensor_header.h) and scalar_type.fbs.
//
// A .ptd file:
//   [0, 4)    uoffset of the root table (FlatTensor)  -- the flatbuffer, with the extended header
//   [4, 8)    "FT01"                                      inserted after its identifier:
//   [8, 56)   extended header (40 bytes, zero-padded)     [0, E), E = 48 + flatbuffer_size
//   [56, E)   the tables, vectors and strings
//   [E, B)    zero padding to segment_base_offset B (a multiple of the segment alignment)
//   [B, ...)  the segments, each at B + offset (aligned), in the order of `segments`
#pragma once

#include "torch_safetensors/export.h"

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <c10/util/Exception.h>

#include "torch_safetensors/dtype.h"

// TORCH_CHECK with the .ptd prefix: "ptd: model.ptd: ...".
#define PTD_CHECK(cond, source, ...) TORCH_CHECK((cond), "ptd: ", (source), ": ", __VA_ARGS__)

namespace torch::safetensors::ptd {

// ---- scalar types: ExecuTorch's numbering (scalar_type.fbs), one table ----

// ExecuTorch's code for `dtype`; nullopt for the dtypes it cannot express (F4, F6_*, F8_E8M0,
// C64).
TS_API std::optional<int8_t> executorch_scalar_type(Dtype dtype);
// The safetensors dtype of ExecuTorch's `code`; nullopt for codes without one (quantized types,
// BITS16) and unknown codes.
TS_API std::optional<Dtype> dtype_of_executorch(int code);
// "FLOAT", "QINT8", ...; "unknown" for a code scalar_type.fbs does not define.
TS_API std::string_view executorch_scalar_type_name(int code);

// ---- the header ----

inline constexpr char kIdentifier[] = "FT01";   // at [4, 8)
inline constexpr char kHeaderMagic[] = "FH01";  // at [8, 12)
inline constexpr uint64_t kHeaderOffset = 8;
inline constexpr uint64_t kHeaderLength = 40;        // magic, length, 4 x uint64
inline constexpr uint64_t kPaddedHeaderLength = 48;  // aligned to 16: the flatbuffer's alignment
inline constexpr uint64_t kHeadBytes = kHeaderOffset + kHeaderLength;  // enough to find everything
inline constexpr uint32_t kVersion = 0;  // FlatTensor.version this codec writes and reads
inline constexpr uint64_t kDefaultAlignment = 128;  // FlatTensorConfig.segment_alignment
inline constexpr size_t kMaxRank = 16;              // ExecuTorch's kTensorDimensionLimit

struct TS_API Header {
  uint64_t flatbuffer_offset = 0;  // always 48 as ExecuTorch writes it (the inserted header)
  uint64_t flatbuffer_size = 0;    // the flatbuffer without the inserted header
  uint64_t segment_base_offset = 0;
  uint64_t segment_data_size = 0;
  // Where the flatbuffer (header included) ends: flatbuffer_offset + flatbuffer_size.
  uint64_t flatbuffer_end() const { return flatbuffer_offset + flatbuffer_size; }
};

// Parses and checks the first kHeadBytes of a file of `file_size` bytes: the identifier, the magic,
// and that the flatbuffer and the segment data lie inside the file. `source` names the file.
TS_API Header parse_header(std::string_view head, uint64_t file_size, std::string_view source);

// ---- reading ----

struct TS_API Entry {
  std::string key;
  uint32_t segment = 0;
  uint64_t offset = 0;  // of the data in the file (segment base + segment offset)
  uint64_t segment_size = 0;
  // From the TensorLayout; an entry without one (opaque named data) reads as U8 [segment_size].
  bool has_layout = false;
  int scalar_type = 0;  // ExecuTorch's code
  Dtype dtype = Dtype::U8;
  std::vector<int64_t> sizes;
  std::vector<uint8_t> dim_order;  // a permutation of 0..rank-1; identity = contiguous
  uint64_t nbytes = 0;             // what the layout holds (<= segment_size); segment_size without
};

struct TS_API Index {
  Header header;
  uint32_t version = 0;
  uint32_t num_segments = 0;
  std::vector<Entry> entries;  // in the order of FlatTensor.named_data
};

// Verifies and decodes the flatbuffer: `flatbuffer` holds bytes [0, header.flatbuffer_end()) of
// the file. Every offset, vector and string is bounds-checked before it is read (no alignment is
// assumed: reads are memcpy); every entry is checked: its segment exists and lies inside the
// segment data, its scalar type has a safetensors dtype, its sizes are non-negative, its dim_order
// is a permutation, its bytes fit its segment, its key is unique. Errors name `source` and the key.
TS_API Index parse_index(std::string_view flatbuffer, const Header& header,
                         std::string_view source);

// ---- writing ----

struct TS_API PlannedTensor {
  std::string key;
  Dtype dtype = Dtype::U8;
  std::vector<int64_t> shape;  // logical, contiguous (dim_order is the identity)
  uint64_t nbytes = 0;
};

struct TS_API Plan {
  std::string head;               // [0, segment_base_offset): header, flatbuffer, padding
  std::vector<uint64_t> offsets;  // of each tensor's bytes in the file, in the order given
  uint64_t file_size = 0;         // the last segment ends the file (as ExecuTorch writes it)
};

// Lays out a .ptd of `tensors` (one segment each) with `alignment` (a power of two) between
// segments, as ExecuTorch's FlatTensorSerializer does. A dtype ExecuTorch cannot express, a rank
// above 16, a dimension above INT32_MAX or a repeated key is an error naming the tensor.
TS_API Plan plan(const std::vector<PlannedTensor>& tensors, uint64_t alignment,
                 std::string_view source);

}  // namespace torch::safetensors::ptd
