// ExecuTorch packaging: safetensors weights as the FlatTensor `.ptd` files that ExecuTorch programs
// (`.pte`) exported with external constants read their weights from, and back.
//
//   // a fine-tune's weights for a program exported with external constants:
//   save_ptd(Checkpoint("finetune/"), "model.ptd", PtdOptions().with_strip_prefix("model."));
//   PtdFile ptd("model.ptd");                 // what a program ships, verified on open
//   at::Tensor w = ptd.tensor("linear.weight");
//   ptd_to_safetensors("model.ptd", "model.safetensors");
//
// Library torch_safetensors_executorch (LibTorch only: the format is written and read by a
// verifying codec of its own). To serve safetensors to the ExecuTorch runtime directly, without a
// .ptd, see executorch_data_map.h.
#pragma once

#include "torch_safetensors/export.h"

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "torch_safetensors/checkpoint.h"
#include "torch_safetensors/serialize.h"
#include "torch_safetensors/sharded.h"

namespace torch::safetensors {

// How safetensors names become ExecuTorch keys (a program's keys are the fully qualified names of
// the exported module's parameters and buffers: "linear.weight").
struct TS_API PtdOptions {
  // A name listed here becomes its value; any other name loses `strip_prefix` when it starts
  // with it. Two names mapping to one key is an error.
  std::unordered_map<std::string, std::string> rename;
  std::string strip_prefix;
  // Segment alignment (a power of two): ExecuTorch's default, 128, keeps every tensor mappable.
  uint64_t alignment = 128;

  PtdOptions& with_strip_prefix(std::string prefix) {
    strip_prefix = std::move(prefix);
    return *this;
  }
  PtdOptions& with_rename(std::string from, std::string to) {
    rename[std::move(from)] = std::move(to);
    return *this;
  }
  PtdOptions& with_alignment(uint64_t bytes) {
    alignment = bytes;
    return *this;
  }
  // The key `name` gets.
  std::string key(const std::string& name) const;
};

// Writes `tensors` as a .ptd: each under its key, with ExecuTorch's scalar type, its sizes and a
// contiguous dim_order, one segment each, as ExecuTorch's FlatTensorSerializer lays them out.
// Non-contiguous tensors are written in logical order, other devices via the CPU. A dtype
// ExecuTorch cannot express (complex, F8_E8M0, F4, F6) is an error naming the tensor. A path is
// written atomically (temporary file + rename).
TS_API void save_ptd(const NamedTensors& tensors, const SaveTo& to, const PtdOptions& options = {});
// Every tensor of a checkpoint (a file, an index, a directory: checkpoint.h), its stored bytes
// copied straight from the mapping, one tensor at a time (memory stays bounded).
TS_API void save_ptd(const Checkpoint& checkpoint, const SaveTo& to,
                     const PtdOptions& options = {});

// One named blob of a .ptd. Tensors carry their layout; opaque named data (a delegate's blob, no
// TensorLayout) reads as U8 [size].
struct TS_API PtdTensorInfo {
  std::string key;
  Dtype dtype = Dtype::U8;
  int executorch_scalar_type = 0;  // ExecuTorch's code (scalar_type.fbs)
  std::vector<int64_t> sizes;
  std::vector<uint8_t> dim_order;  // 0..rank-1: contiguous; otherwise the memory order
  bool has_layout = false;
  uint32_t segment = 0;
  uint64_t offset = 0;  // of the bytes in the file
  uint64_t nbytes = 0;
};

// A .ptd opened and verified: its header, every offset, vector and string of its flatbuffer, and
// every entry (segment inside the file, known scalar type, bytes within the segment, unique key)
// are checked on open. Errors name the file and the key ("ptd: model.ptd: tensor 'w' ...").
class TS_API PtdFile {
 public:
  // kMmap: tensors are zero-copy views of a private mapping; kPread: owned copies.
  explicit PtdFile(const std::string& path, Backend backend = Backend::kMmap);
  explicit PtdFile(std::shared_ptr<const Source> source);

  const std::string& path() const;
  uint32_t version() const;
  uint32_t num_segments() const;
  std::vector<std::string> keys() const;  // in the file's order
  bool contains(std::string_view key) const;
  size_t size() const;
  const PtdTensorInfo& info(std::string_view key) const;  // throws naming a missing key
  // The tensor under `key`, in its logical dimension order (a non-contiguous dim_order comes back
  // as a strided view). Views of the mapping when the source has memory and the data is aligned
  // for the dtype; otherwise read into owned memory.
  at::Tensor tensor(std::string_view key) const;
  TensorDict tensors() const;

  struct Impl;

 private:
  std::shared_ptr<const Impl> impl_;
};

// The tensors of a .ptd, in its order.
TS_API TensorDict load_ptd(const std::string& path);

// A .ptd as a safetensors file (its keys as the names): for inspecting and editing what a program
// ships. Returns the number of tensors written.
TS_API size_t ptd_to_safetensors(const std::string& ptd_path, const SaveTo& to,
                                 const std::optional<Metadata>& metadata = std::nullopt);

// Whether `path` is a regular file that starts like a .ptd (its flatbuffer identifier is FT01).
TS_API bool is_ptd_file(const std::string& path);

}  // namespace torch::safetensors
