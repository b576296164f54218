// File I/O beneath the format: read-only file handles with exact pread, the private mapping that
// zero-copy tensors live in, and atomic (temp file + rename) writes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "torch_safetensors/header.h"

namespace torch::safetensors::storage {

// A file opened read-only; closed on destruction.
class ReadOnlyFile {
 public:
  explicit ReadOnlyFile(std::string path);  // throws c10::Error with the OS reason
  ~ReadOnlyFile();
  ReadOnlyFile(const ReadOnlyFile&) = delete;
  ReadOnlyFile& operator=(const ReadOnlyFile&) = delete;

  const std::string& path() const { return path_; }
  int fd() const { return fd_; }
  uint64_t size() const { return size_; }  // at open
  uint64_t current_size() const;           // now (fstat)

  // Reads exactly `length` bytes at `offset` into `dst`; a short read (the file shrank since it
  // was opened) is a c10::Error, never a crash.
  void read_exact(void* dst, uint64_t length, uint64_t offset) const;

  // Reads and validates the header.
  Header read_header() const;

 private:
  std::string path_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

// One contiguous read: `length` bytes at file `offset` into `dst`.
struct ReadJob {
  void* dst;
  uint64_t length;
  uint64_t offset;
};

// Performs every job, splitting large ones into chunks and spreading the chunks over up to one
// thread per core when there is enough to read; rethrows the first failure after all threads end.
void read_all(const ReadOnlyFile& file, const std::vector<ReadJob>& jobs);

// A private (copy-on-write) mapping of a whole file. Writable: tensors over it support in-place
// updates (torch::load's set_ shares storage with the module) without ever touching the file,
// and replacing the file (atomic save) leaves the mapped contents as they were.
class PrivateMapping {
 public:
  explicit PrivateMapping(const ReadOnlyFile& file);
  ~PrivateMapping();
  PrivateMapping(const PrivateMapping&) = delete;
  PrivateMapping& operator=(const PrivateMapping&) = delete;

  uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

// Writes `path` atomically: bytes go to a temporary file beside it, renamed over `path` by
// commit(). Destroyed without commit (an error was thrown), it removes the temporary file, so a
// failed save never leaves a partial file in place of a good one.
class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(std::string path);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  void write(const void* data, uint64_t length);
  void commit();

 private:
  std::string path_;
  std::string temp_path_;
  int fd_ = -1;
  bool committed_ = false;
};

}  // namespace torch::safetensors::storage
