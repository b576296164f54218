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
#include "torch_safetensors/export.h"

namespace torch::safetensors {

// Free-form string→string metadata (`__metadata__`). Sorted, so that saved files are deterministic.
using Metadata = std::map<std::string, std::string>;

inline constexpr uint64_t kHeaderLengthSize = 8;         // the u64 prefix
inline constexpr uint64_t kMaxHeaderSize = 100'000'000;  // same bound as the reference
// The reference pads its header to a multiple of 8 bytes, so its data section starts on one.
inline constexpr uint64_t kReferenceAlignment = 8;
// The largest `alignment` plan_layout takes (a header padded to it stays small).
inline constexpr uint64_t kMaxAlignment = uint64_t(1) << 20;

// One tensor's entry. `name` views bytes owned by the Header that holds the entry (valid as long
// as that Header or a copy of it lives).
struct TS_API TensorInfo {
  std::string_view name;
  Dtype dtype = Dtype::U8;
  c10::DimVector shape;  // logical shape, as in the header (F4: values, not bytes); inline up to 5
                         // dims, like at::Tensor sizes, so parsing allocates nothing per tensor
  uint64_t begin = 0;    // byte range [begin, end) within the data section
  uint64_t end = 0;

  uint64_t nbytes() const { return end - begin; }
  int64_t numel() const;
  // The torch dtype this tensor loads as (to_scalar_type in dtype.h).
  c10::ScalarType scalar_type() const { return to_scalar_type(dtype); }
};

class Header;
struct Layout;
TS_API Header parse_header(std::string_view json, uint64_t file_size, std::string_view source);
TS_API Layout plan_layout(c10::ArrayRef<TensorInfo> tensors,
                          const std::optional<Metadata>& metadata, std::string_view source,
                          uint64_t alignment);

// A validated header: the only kind there is. It is built by parse_header (bytes of a file) or
// plan_layout (what save will write), both of which check every rule of the format, and cannot
// be changed afterwards. Tensors are in data-offset order (the order of their bytes in the file).
// Copies are cheap and share the name bytes and the name lookup.
class TS_API Header {
 public:
  Header() = default;  // no tensors, no metadata

  const std::optional<Metadata>& metadata() const { return metadata_; }  // nullopt: none
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  size_t size() const { return tensors_.size(); }
  uint64_t header_size() const { return header_size_; }  // N: JSON bytes, padding included

  uint64_t data_offset() const { return kHeaderLengthSize + header_size_; }
  uint64_t data_size() const { return tensors_.empty() ? 0 : tensors_.back().end; }

  // nullptr if there is no tensor of that name.
  const TensorInfo* find(std::string_view name) const;
  // Throws c10::Error naming the file and listing a few available names.
  const TensorInfo& at(std::string_view name, std::string_view source) const;

 private:
  friend Header parse_header(std::string_view, uint64_t, std::string_view);
  friend Layout plan_layout(c10::ArrayRef<TensorInfo>, const std::optional<Metadata>&,
                            std::string_view, uint64_t);
  // Builds the name lookup. False if some name appears twice.
  bool index();

  std::optional<Metadata> metadata_;
  std::vector<TensorInfo> tensors_;
  uint64_t header_size_ = 0;
  std::shared_ptr<const void> names_;  // the bytes that the tensors' names view
  // The name lookup, shared by copies: open addressing, each slot the name's hash bits and
  // 1 + an index into `tensors_` (0: empty).
  std::shared_ptr<const uint64_t> slots_;
  size_t slot_count_ = 0;
};

// Reads the u64 header length from the first 8 bytes and checks it against the bound and the
// file size. Returns N. `source` names the file in errors.
TS_API uint64_t parse_header_length(std::string_view first8, uint64_t file_size,
                                    std::string_view source);

// Whether the N bytes of a header end in padding that holds NUL bytes (the bytes after the JSON
// are NUL or whitespace, at least one NUL), as some writers pad. parse_header refuses such a
// header naming this cause; repair_header_padding (serialize.h) rewrites the file with spaces.
TS_API bool is_nul_padded(std::string_view json);
// `json` with the NUL bytes of its padding replaced by spaces; the JSON itself is unchanged.
TS_API std::string nul_padding_as_spaces(std::string_view json);

// Parses and validates the JSON header (exactly N bytes, padding included) of a file of
// `file_size` bytes. Every rule of the format is checked here, once, before any tensor byte is
// trusted; failures throw c10::Error naming `source`, the tensor and what was expected vs found.
TS_API Header parse_header(std::string_view json, uint64_t file_size, std::string_view source);

// What a save writes, planned before any byte is: the one layout planner behind every save.
struct Layout {
  Header header;              // tensors in file order with their offsets; names owned
  std::string header_bytes;   // u64 length + JSON + padding, exactly as the reference writes it
  std::vector<size_t> order;  // order[i]: the index in the input of the file's i-th tensor
};

// Lays out `tensors` (name, dtype and logical shape are read; offsets are assigned) the way the
// reference's save does: dtype descending in the reference's enum order, then name; consecutive
// offsets; compact JSON with `__metadata__` first (when given, even empty), padded with spaces to
// a multiple of 8 bytes. Checks what a valid file needs (unique names, none `__metadata__`, UTF-8
// names and metadata, byte counts that fit, a header within the size limit) and throws
// c10::Error naming `source` otherwise (c10::ValueError for a name or metadata that
// check_header_text refuses, or a tensor named `__metadata__`).
//
// The alignment this guarantees (docs/dtypes-and-validation.md, "Alignment of written files"): the
// data section starts at a multiple of 8, and every tensor's offset in the file is a multiple of
// its element size (all sizes are powers of two up to 8, largest first), so nothing written here
// is copied on a zero-copy load. With `alignment` A above 8 (a power of two, at most
// kMaxAlignment) the header is padded with spaces until the data section starts at a multiple of
// A, and the tensors whose byte count is a multiple of A come first (in the same order among
// themselves), so each of those starts on a multiple of A too; the rest follow, still aligned to
// their element size. No more is possible: the format allows no gaps between tensors.
TS_API Layout plan_layout(c10::ArrayRef<TensorInfo> tensors,
                          const std::optional<Metadata>& metadata, std::string_view source,
                          uint64_t alignment = kReferenceAlignment);

// Stricter than the reference (docs/dtypes-and-validation.md): the text a file this library
// writes may hold. A name (tensor name, metadata key) holds no control character: U+0000-U+001F,
// U+007F and U+0080-U+009F. A metadata value may also hold tab, newline and carriage return, the
// whitespace of text (JSON documents, licences). Files holding others still load.
enum class HeaderText { kName, kMetadataValue };

// The byte offset in `text` of the first control character a `kind` may not hold, or npos.
TS_API size_t find_control_character(std::string_view text, HeaderText kind);

// `text` for an error message: control characters as \uXXXX ("a\u0000b").
TS_API std::string escape_control_characters(std::string_view text);

// Throws c10::ValueError "<source>: <what> '<escaped text>' holds the control character U+XXXX
// at byte N; ..." unless `text` may be written as a `kind`. `what`: "tensor name", ...
TS_API void check_header_text(std::string_view text, HeaderText kind, std::string_view source,
                              std::string_view what);

// The header's bytes as a file holds them (u64 length + JSON + padding), as the reference writes
// them. For a parsed header this is the canonical form of what was read. The padding (spaces)
// makes the data section start at a multiple of `alignment` (a power of two, at least 8).
TS_API std::string serialize_header(const Header& header, std::string_view source,
                                    uint64_t alignment = kReferenceAlignment);

// Number of bytes a tensor of this dtype and shape occupies; throws on a negative dimension,
// overflow or a fractional byte count, naming `source` and the tensor `name`.
TS_API uint64_t tensor_nbytes(Dtype dtype, c10::IntArrayRef shape, std::string_view source,
                              std::string_view name);

}  // namespace torch::safetensors
