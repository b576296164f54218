// The safetensors header as plain data: parse + validate (untrusted bytes in), serialize (out).
//
// File layout: [u64 little-endian N][N bytes of JSON header][data section]. Tensor data offsets
// are relative to the start of the data section. Nothing here touches torch tensors.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <c10/util/ArrayRef.h>
#include <c10/util/DimVector.h>

#include "torch_safetensors/dtype.h"

namespace torch::safetensors {

// Free-form string→string metadata (`__metadata__`). Sorted, so that saved files are deterministic.
using Metadata = std::map<std::string, std::string>;

inline constexpr uint64_t kHeaderLengthSize = 8;         // the u64 prefix
inline constexpr uint64_t kMaxHeaderSize = 100'000'000;  // same bound as the reference

// One tensor's entry. `name` views bytes owned elsewhere: by the Header that parsed it (valid as
// long as that Header or a copy of it lives), or by whoever built the info.
struct TensorInfo {
  std::string_view name;
  Dtype dtype = Dtype::U8;
  c10::DimVector shape;  // logical shape, as in the header (F4: values, not bytes); inline up to 5
                         // dims, like at::Tensor sizes, so parsing allocates nothing per tensor
  uint64_t begin = 0;    // byte range [begin, end) within the data section
  uint64_t end = 0;

  uint64_t nbytes() const { return end - begin; }
  int64_t numel() const;
};

// A validated header. Tensors are in data-offset order (the order of their bytes in the file).
// Copies are cheap to make and share the name bytes.
struct Header {
  std::optional<Metadata> metadata;  // nullopt when the file has no `__metadata__`
  std::vector<TensorInfo> tensors;
  uint64_t header_size = 0;  // N: JSON bytes, padding included

  uint64_t data_offset() const { return kHeaderLengthSize + header_size; }
  uint64_t data_size() const { return tensors.empty() ? 0 : tensors.back().end; }

  // nullptr if there is no tensor of that name.
  const TensorInfo* find(std::string_view name) const;
  // Throws c10::Error naming the file and listing a few available names.
  const TensorInfo& at(std::string_view name, std::string_view source) const;

  // Builds the name→index lookup; parse_header calls it. False if some name appears twice.
  bool index();

 private:
  friend Header parse_header(std::string_view, uint64_t, std::string_view);
  std::shared_ptr<const void> names_;  // the bytes that parsed tensors' names view
  // The name lookup, shared by copies: open addressing, each slot the name's hash bits and
  // 1 + an index into `tensors` (0: empty).
  std::shared_ptr<const uint64_t> slots_;
  size_t slot_count_ = 0;
};

// Reads the u64 header length from the first 8 bytes and checks it against the bound and the
// file size. Returns N. `source` names the file in errors.
uint64_t parse_header_length(std::string_view first8, uint64_t file_size, std::string_view source);

// Parses and validates the JSON header (exactly N bytes, padding included) of a file of
// `file_size` bytes. Every rule of the format is checked here, once, before any tensor byte is
// trusted; failures throw c10::Error naming `source`, the tensor and what was expected vs found.
Header parse_header(std::string_view json, uint64_t file_size, std::string_view source);

// Serializes a header exactly as the reference implementation does (compact JSON, `__metadata__`
// first, tensors in the given order, spaces to a multiple of 8 bytes), prefixed by its u64 length.
// Offsets are taken from the infos. `metadata` nullptr omits `__metadata__`.
// Names and metadata must be valid UTF-8 (JSON strings); `source` names the target in errors.
std::string serialize_header(const std::vector<TensorInfo>& tensors, const Metadata* metadata,
                             std::string_view source);

// The order in which `save` lays tensors out: dtype descending (reference enum order), then name.
void sort_for_save(std::vector<TensorInfo>& tensors);

// Number of bytes a tensor of this dtype and shape occupies; throws on a negative dimension,
// overflow or a fractional byte count, naming `source` and the tensor `name`.
uint64_t tensor_nbytes(Dtype dtype, c10::IntArrayRef shape, std::string_view source,
                       std::string_view name);

}  // namespace torch::safetensors
