// Loading and saving whole state dicts: files and in-memory bytes. One verb per operation; every
// collection of tensors that `save` takes, `to_bytes` takes too.
//
//   st::save({{"weight", w}, {"bias", b}}, "linear.safetensors");
//   st::save(std::map<std::string, at::Tensor>{...}, path, {{"format", "pt"}});
//   st::TensorDict tensors = st::load("linear.safetensors");
#pragma once

#include <initializer_list>
#include <iterator>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "torch_safetensors/endpoints.h"
#include "torch_safetensors/export.h"
#include "torch_safetensors/file.h"
#include "torch_safetensors/types.h"

namespace torch::safetensors {

namespace detail {
// Whether `Range` is a range of (name, tensor) pairs: std::map, std::unordered_map,
// std::vector<std::pair<...>>, ... (anything whose elements have .first and .second).
template <typename Range, typename = void>
struct is_named_tensor_range : std::false_type {};
template <typename Range>
struct is_named_tensor_range<
    Range, std::void_t<decltype(std::string(std::begin(std::declval<const Range&>())->first)),
                       decltype(at::Tensor(std::begin(std::declval<const Range&>())->second)),
                       decltype(std::end(std::declval<const Range&>()))>> : std::true_type {};
}  // namespace detail

// The tensors of one save, in any of the spellings users have them in: a braced list of
// {name, tensor} pairs, any range of pairs (std::map, std::unordered_map, NamedTensors, ...), a
// TensorDict, or SaveEntry values (raw bytes included). Holds references to the tensors only.
class TensorsToSave {
 public:
  TensorsToSave(std::initializer_list<std::pair<std::string, at::Tensor>> tensors) {  // NOLINT
    entries_.reserve(tensors.size());
    for (const auto& [name, tensor] : tensors) entries_.emplace_back(name, tensor);
  }
  template <typename Range, std::enable_if_t<detail::is_named_tensor_range<Range>::value, int> = 0>
  TensorsToSave(const Range& tensors) {  // NOLINT: implicit
    for (const auto& item : tensors) entries_.emplace_back(std::string(item.first), item.second);
  }
  TensorsToSave(const TensorDict& tensors) {  // NOLINT
    entries_.reserve(tensors.size());
    for (const auto& item : tensors) entries_.emplace_back(item.key(), item.value());
  }
  TensorsToSave(std::vector<SaveEntry> entries) : entries_(std::move(entries)) {}  // NOLINT

  const std::vector<SaveEntry>& entries() const { return entries_; }

 private:
  std::vector<SaveEntry> entries_;
};

// The metadata of a save, or none: `Metadata{...}`, an untyped literal `{{"format", "pt"}}`, an
// optional, or std::nullopt. An empty `{}` means none; `Metadata{}` writes an empty
// `__metadata__` (as the reference does for `metadata={}`).
class SaveMetadata {
 public:
  SaveMetadata() = default;
  SaveMetadata(std::nullopt_t) {}                                   // NOLINT: implicit
  SaveMetadata(Metadata metadata) : value_(std::move(metadata)) {}  // NOLINT
  SaveMetadata(std::optional<Metadata> metadata) : value_(std::move(metadata)) {}         // NOLINT
  SaveMetadata(std::initializer_list<std::pair<const std::string, std::string>> entries)  // NOLINT
      : value_(Metadata(entries)) {}

  const std::optional<Metadata>& value() const { return value_; }

 private:
  std::optional<Metadata> value_;
};

// Loads every tensor of a file, an index or a directory (open_checkpoint), in keys() order.
// Default: zero-copy views of the mapped file (of the owned copy for bytes in memory; streams and
// functions are read into owned memory).
TS_API TensorDict load(const LoadFrom& from, const LoadOptions& options = {});

// Writes tensors to a path, a stream or a write function (SaveTo). A path is written atomically: a
// temporary file beside `path` is filled and renamed into place, so a failed save leaves any
// previous file untouched and no temporary file behind (SaveTo::durable() also fsyncs the file and
// its directory first). Saving over a file that loaded tensors still map is safe (the mapping
// keeps the old contents).
//
// Non-contiguous tensors are written in logical (row-major) order; tensors on other devices are
// copied to the CPU one at a time. Tensors whose memory overlaps are refused, as in the reference's
// `save_file` (use the Module overload to drop tied duplicates). `metadata` is written as
// `__metadata__` when given. The file is byte-identical to the reference's for the same input.
TS_API void save(const TensorsToSave& tensors, const SaveTo& to, const SaveMetadata& metadata = {});

// The same file as bytes in memory.
TS_API std::string to_bytes(const TensorsToSave& tensors, const SaveMetadata& metadata = {});

// Every tensor of a file held in memory, as owned copies: nothing refers to `data` afterwards.
// For lazy access to bytes in memory (views, slices), open File(memory_source(bytes)).
TS_API TensorDict from_bytes(std::string_view data);

// torch::save / torch::load of one tensor (key "0") and of a vector of tensors (keys "0", "1",
// ...), with torch's semantics: loading into a defined tensor replaces its data under NoGradGuard
// (`set_` on the same device, `set_data` across devices), an undefined one is assigned; a vector
// is appended to, like torch::load does (torch::load(v, ...) push_backs every tensor it reads).
// With `device`, tensors are loaded there; without, they are on the CPU. A file that is not such a
// value (no "0"; a vector file whose names are not exactly "0".."n-1") is a c10::Error naming the
// source and the key.
TS_API void save(const at::Tensor& tensor, const SaveTo& to);
TS_API void save(const std::vector<at::Tensor>& tensors, const SaveTo& to);
TS_API void load(at::Tensor& tensor, const LoadFrom& from,
                 std::optional<c10::Device> device = std::nullopt);
TS_API void load(std::vector<at::Tensor>& tensors, const LoadFrom& from,
                 std::optional<c10::Device> device = std::nullopt);

// Rewrites the safetensors file `path` to `to` with its header's NUL padding replaced by spaces:
// some writers pad with NUL, which the format (and parse_header) does not allow. Every other byte
// is kept, so each tensor keeps its offset. The repaired header is validated (every rule of the
// format) before a byte is written; the rest is copied 8 MiB at a time; a path is written
// atomically. Throws c10::Error naming `path` when its header is not NUL-padded or is invalid.
// `torch-safetensors convert IN.safetensors OUT.safetensors` runs it.
TS_API void repair_header_padding(const std::string& path, const SaveTo& to);

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

// What realign did.
struct RealignReport {
  uint64_t tensors = 0;
  uint64_t bytes = 0;        // tensor bytes copied
  uint64_t data_offset = 0;  // where the new file's data section starts (a multiple of alignment)
  // Tensors of the new file not on a multiple of `alignment`: those whose byte count is not a
  // multiple of it (the format allows no gaps); every tensor is aligned to its element size.
  uint64_t off_boundary = 0;
};

// Rewrites the safetensors file `in` to `to` (a path; `in` itself is allowed) with the data
// section and every tensor laid out by plan_layout(..., alignment): same names, dtypes, shapes,
// metadata and bytes. Streams: tensor bytes are copied in chunks of at most 8 MiB through one
// buffer, never the whole file. The new file is written beside `to`, read back and compared byte
// for byte with `in` (header fields and every tensor's bytes), and only then renamed over `to`
// (fsynced first with to.durable()); on any failure `to` is left as it was. `alignment`: a power
// of two, at most kMaxAlignment.
TS_API RealignReport realign(const std::string& in, const SaveTo& to, uint64_t alignment = 64);

}  // namespace torch::safetensors
