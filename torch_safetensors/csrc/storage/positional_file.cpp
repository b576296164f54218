// Positional writes (io.h's PositionalFile): pre-sized files that several processes fill at
// their own offsets, and the rename that publishes them.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "storage/io.h"
#include "torch_safetensors/errors.h"

namespace torch::safetensors::storage {
namespace {

[[noreturn]] void fail(int error, const std::string& path, const std::string& what) {
  throw OSError(error, path, "safetensors: " + path + ": " + what + ": " + std::strerror(error),
                what);
}

}  // namespace

PositionalFile PositionalFile::create(const std::string& path, uint64_t size) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (fd < 0) fail(errno, path, "cannot create the file");
  PositionalFile file(path, fd);
  if (::ftruncate(fd, off_t(size)) != 0)
    fail(errno, path, "cannot size the file to " + std::to_string(size) + " bytes");
  return file;
}

PositionalFile PositionalFile::open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) fail(errno, path, "cannot open the file for writing");
  return PositionalFile(path, fd);
}

PositionalFile::PositionalFile(PositionalFile&& other) noexcept
    : path_(std::move(other.path_)), fd_(other.fd_) {
  other.fd_ = -1;
}

PositionalFile& PositionalFile::operator=(PositionalFile&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    path_ = std::move(other.path_);
    fd_ = other.fd_;
    other.fd_ = -1;
  }
  return *this;
}

PositionalFile::~PositionalFile() {
  if (fd_ >= 0) ::close(fd_);
}

void PositionalFile::write_at(const void* data, uint64_t length, uint64_t offset) {
  const char* bytes = static_cast<const char*>(data);
  uint64_t done = 0;
  while (done < length) {
    const size_t chunk = size_t(std::min<uint64_t>(length - done, uint64_t(1) << 30));
    const ssize_t n = ::pwrite(fd_, bytes + done, chunk, off_t(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      fail(n < 0 ? errno : EIO, path_,
           "cannot write " + std::to_string(length - done) + " bytes at offset " +
               std::to_string(offset + done));
    }
    done += uint64_t(n);
  }
}

void PositionalFile::sync() {
  if (::fsync(fd_) != 0) fail(errno, path_, "fsync failed");
}

void PositionalFile::close() {
  if (fd_ < 0) return;
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) fail(errno, path_, "close failed");
}

void rename_file(const std::string& from, const std::string& to) {
  if (::rename(from.c_str(), to.c_str()) != 0)
    fail(errno, to, "cannot move '" + from + "' into place");
}

}  // namespace torch::safetensors::storage
