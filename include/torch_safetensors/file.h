// A lazy handle on one safetensors file: the C++ analogue of the reference's `safe_open`.
//
// Opening reads and validates only the header. Tensors are produced on request, every one of them
// through one read path over a Source (source.h): a file, bytes in memory, or any source of your
// own. With Backend::kMmap and a source that has addressable memory (a mapped file, owned bytes)
// tensors are zero-copy views of it, each with its own storage; otherwise they are owned memory
// filled with Source::read, and only the bytes asked for are read.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <ATen/TensorIndexing.h>
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <torch/ordered_dict.h>

#include "torch_safetensors/header.h"
#include "torch_safetensors/slice.h"
#include "torch_safetensors/source.h"

namespace torch::safetensors {

// Name → tensor, in the order of the tensors' bytes in the file.
using TensorDict = torch::OrderedDict<std::string, at::Tensor>;

enum class Backend {
  kMmap,   // zero-copy views of a private, writable copy-on-write mapping; pages fault lazily
  kPread,  // owned memory filled with pread(2); no mapping outlives the call
};

struct LoadOptions {
  // kMmap: views of the source's memory where it has any (a file is mapped privately, copy on
  // write; pages are read when first touched). kPread: owned memory, read with pread(2) from
  // files (which may then change or vanish) or copied from memory.
  Backend backend = Backend::kMmap;
  // Where tensors end up. CPU (the default) keeps views zero-copy. Any other device gets each
  // tensor allocated there and filled straight from the file through a ring of host buffers
  // (pinned where an accelerator exists; `staging_bytes` in all) with asynchronous copies on a
  // dedicated stream: host memory stays bounded whatever the model's size. A device this LibTorch
  // cannot reach is an error at open.
  c10::Device device = c10::kCPU;
  uint64_t staging_bytes = uint64_t(256) << 20;
  // Cast every tensor to this dtype on load, on the destination device after the raw copy (BF16 to
  // F16, FP8 to BF16, ...): a device load never converts on the host.
  std::optional<c10::ScalarType> dtype;
  // kMmap: fault the whole mapping in at open, on all cores (madvise(MADV_POPULATE_READ), or a read
  // per page where the kernel lacks it), so that tensors are resident at once instead of paging in
  // on first touch. Costs the file's read up front; pays off when every byte will be used.
  bool populate = false;
  // Route CPU loads through the staging ring too (pageable buffers): the device path, testable
  // without a device. Slower than kPread; for tests.
  bool always_stage = false;

  LoadOptions& with_backend(Backend b) {
    backend = b;
    return *this;
  }
  LoadOptions& with_device(c10::Device d) {
    device = d;
    return *this;
  }
  LoadOptions& with_dtype(c10::ScalarType t) {
    dtype = t;
    return *this;
  }
  LoadOptions& with_staging_bytes(uint64_t bytes) {
    staging_bytes = bytes;
    return *this;
  }
  LoadOptions& with_populate(bool p = true) {
    populate = p;
    return *this;
  }
};

// A tensor's bytes exactly as stored, with its spec dtype and logical shape. The way to read and
// write dtypes torch cannot express (F6_E2M3, F6_E3M2) and to copy tensors without touching them.
struct RawTensor {
  Dtype dtype = Dtype::U8;
  std::vector<int64_t> shape;  // logical shape, as in the header
  at::Tensor bytes;            // 1-D uint8, exactly the stored bytes
};

class File {
 public:
  // Opens `path` and validates its header. Throws c10::Error (OSError for a missing file, ...).
  explicit File(const std::string& path, const LoadOptions& options = {});
  // Reads the header from `source` and validates it.
  explicit File(std::shared_ptr<const Source> source, const LoadOptions& options = {});

  const std::string& path() const;  // the source's name
  const Source& source() const;
  std::shared_ptr<const Source> shared_source() const;  // what tensor views keep alive
  const LoadOptions& options() const;
  const Header& header() const;
  const std::optional<Metadata>& metadata() const { return header().metadata(); }

  // Tensor names in data-offset order (`offset_keys` in the reference).
  std::vector<std::string> keys() const;
  bool contains(std::string_view name) const { return header().find(name) != nullptr; }
  const TensorInfo& info(std::string_view name) const;
  size_t size() const { return header().size(); }

  // One whole tensor. Packed dtypes (F4 as Float4_e2m1fn_x2, F6 as uint8 bytes) keep the logical
  // shape with the last dimension counted in torch elements (stored_sizes in dtype.h); when it
  // does not hold whole groups the tensor comes back 1-D, one element per stored byte.
  at::Tensor tensor(std::string_view name) const;

  // `tensor(name).index(indices)`, reading only the bytes the result holds: integers, slices with
  // any positive step, `...`, None and booleans, on any dimension (see slice.h). A view when the
  // backend views memory, else exactly the selected bytes read into owned memory. Tensor indices
  // (advanced indexing) apply to the whole tensor.
  at::Tensor slice(std::string_view name, at::ArrayRef<at::indexing::TensorIndex> indices) const;
  // Several [begin, end) ranges of dimension `dim`, concatenated in order: a rank's share of a
  // fused weight (the q, k and v blocks of a qkv projection). Reads exactly those bytes.
  at::Tensor slice_intervals(std::string_view name, int64_t dim,
                             std::vector<std::pair<int64_t, int64_t>> ranges) const;

  RawTensor raw(std::string_view name) const;

  // Every tensor, in file order.
  TensorDict tensors() const;
  // The named tensors, in the order given, in one pass (one parallel read, one staging ring).
  TensorDict tensors(const std::vector<std::string>& names) const;

  // Throws if the file is now shorter than when it was opened. With the mmap backend, touching a
  // tensor whose pages lie past the new end raises SIGBUS (the OS's rule for mappings), so a
  // program that lets other processes rewrite files in place should call this first, or use the
  // pread backend, which turns a short read into a c10::Error. Files replaced by rename (as our
  // save and the reference's do) are safe: the mapping keeps the old contents.
  void check_intact() const;

  struct Impl;

 private:
  std::shared_ptr<const Impl> impl_;
};

// Same as File(path, options).
inline File open(const std::string& path, const LoadOptions& options = {}) {
  return File(path, options);
}

}  // namespace torch::safetensors
