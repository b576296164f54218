// Where a safetensors file's bytes come from. File reads every header, tensor, slice and bulk load
// through this one interface; a new kind of source (a stream, a remote object, a device staging
// buffer) is a new subclass, not a new reader.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <iosfwd>
#include <memory>
#include <string>

#include "torch_safetensors/export.h"

namespace torch::safetensors {

class TS_API Source {
 public:
  virtual ~Source() = default;

  // Names the source in error messages: a path, "<bytes>", ...
  virtual const std::string& name() const = 0;
  // Size in bytes, fixed when the source was opened.
  virtual uint64_t size() const = 0;
  // Reads exactly `length` bytes at `offset` into `dst`, or throws c10::Error (never a short
  // read). Called from several threads at once by bulk loads.
  virtual void read(void* dst, uint64_t length, uint64_t offset) const = 0;
  // The whole content at a stable address for as long as the source lives, or nullptr when the
  // bytes can only be read. Tensors may view it (zero-copy), keeping the source alive, and may
  // write to it: such memory is private to the source (a copy-on-write mapping, an owned copy).
  virtual uint8_t* data() const { return nullptr; }
  // Throws if the bytes can no longer be read as they were at open (a file truncated since).
  virtual void check_intact() const {}
};

// The sources of this library. Files: `mapped` gives a private copy-on-write mapping (data() is
// set; pages are read when first touched), otherwise reads use pread(2) and nothing stays mapped.
// Errors of the OS (missing file, no permission) are OSError with errno (errors.h).
TS_API std::shared_ptr<const Source> file_source(const std::string& path, bool mapped);
// Owns `bytes`; data() views them.
TS_API std::shared_ptr<const Source> memory_source(std::string bytes, std::string name = "<bytes>");

// Copies `size` bytes at `data`: tensors loaded from it never refer to the caller's memory (as
// torch::load(value, data, size) copies). data() views the copy.
TS_API std::shared_ptr<const Source> copied_memory_source(const char* data, size_t size,
                                                          std::string name = "<bytes>");

// A std::istream, from its current position to its end. A seekable stream is read on demand (the
// header, then only the bytes asked for; seekg + read under a mutex) and must stay alive and
// unchanged while the source is used; a stream that cannot seek is read whole into memory at once.
// A stream that ends before the bytes asked for is a c10::Error naming the offset.
TS_API std::shared_ptr<const Source> stream_source(std::istream& stream,
                                                   std::string name = "<stream>");

// torch::load's function pair: `read(pos, buf, n)` fills `buf` with the `n` bytes at `pos` and
// returns how many it read; `size()` gives the total once, at open. Calls are serialized (a mutex),
// so the functions need not be thread-safe. Returning fewer than `n` is a c10::Error naming the
// offset.
using ReadFunction = std::function<size_t(uint64_t pos, void* buf, size_t n)>;
using SizeFunction = std::function<size_t()>;
TS_API std::shared_ptr<const Source> function_source(ReadFunction read, SizeFunction size,
                                                     std::string name = "<read function>");

// Counts what is read through `inner` (not what is viewed in place): the byte accounting of
// slices and of rank-local loads.
class TS_API CountingSource : public Source {
 public:
  explicit CountingSource(std::shared_ptr<const Source> inner, bool allow_views = false)
      : inner_(std::move(inner)), allow_views_(allow_views) {}

  const std::string& name() const override { return inner_->name(); }
  uint64_t size() const override { return inner_->size(); }
  void read(void* dst, uint64_t length, uint64_t offset) const override {
    bytes_read_ += length;
    reads_ += 1;
    inner_->read(dst, length, offset);
  }
  // Views bypass read(): hidden unless asked for, so that every byte is counted.
  uint8_t* data() const override { return allow_views_ ? inner_->data() : nullptr; }
  void check_intact() const override { inner_->check_intact(); }

  uint64_t bytes_read() const { return bytes_read_; }
  uint64_t reads() const { return reads_; }
  void reset() const { bytes_read_ = 0, reads_ = 0; }

 private:
  std::shared_ptr<const Source> inner_;
  bool allow_views_;
  mutable std::atomic<uint64_t> bytes_read_{0};
  mutable std::atomic<uint64_t> reads_{0};
};

}  // namespace torch::safetensors
