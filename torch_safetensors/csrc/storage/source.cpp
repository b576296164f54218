#include "storage/io.h"
#include "storage/parallel.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "torch_safetensors/errors.h"

namespace torch::safetensors {
namespace {

std::string os_error(int error) { return std::strerror(error); }

// "safetensors: <path>: <what>: <strerror>", keeping errno for the bindings.
[[noreturn]] void throw_os_error(int error, const std::string& path, const std::string& what) {
  throw OSError(error, path, "safetensors: " + path + ": " + what + ": " + os_error(error));
}

uint64_t fstat_size(int fd, const std::string& path) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) throw_os_error(errno, path, "cannot stat");
  if (S_ISDIR(st.st_mode)) throw_os_error(EISDIR, path, "cannot open");
  TS_CHECK(S_ISREG(st.st_mode), path, "not a regular file");
  return static_cast<uint64_t>(st.st_size);
}

// A file opened read-only, read with pread(2); optionally also mapped privately (copy-on-write).
class FileSource final : public Source {
 public:
  FileSource(std::string path, bool mapped) : path_(std::move(path)) {
    // O_NONBLOCK: opening a FIFO would otherwise block until some writer shows up; it is refused
    // below as not a regular file. The flag means nothing for regular files, but is cleared.
    do {
      fd_ = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    } while (fd_ < 0 && errno == EINTR);
    if (fd_ < 0) throw_os_error(errno, path_, "cannot open");
    try {
      size_ = fstat_size(fd_, path_);
      const int flags = ::fcntl(fd_, F_GETFL);
      TS_CHECK(flags >= 0 && ::fcntl(fd_, F_SETFL, flags & ~O_NONBLOCK) == 0, path_,
               "cannot set file flags: ", os_error(errno));
      if (mapped && size_ > 0) map();
    } catch (...) {
      ::close(fd_);
      throw;
    }
  }
  ~FileSource() override {
    if (data_) ::munmap(data_, size_);
    ::close(fd_);
  }

  const std::string& name() const override { return path_; }
  uint64_t size() const override { return size_; }
  uint8_t* data() const override { return data_; }
  int descriptor() const { return fd_; }

  // pread even when mapped: a file truncated since open then gives an error, not SIGBUS, and
  // gathered slices do not fault in the mapping's pages.
  void read(void* dst, uint64_t length, uint64_t offset) const override {
    auto* out = static_cast<char*>(dst);
    while (length > 0) {
      const size_t chunk = std::min<uint64_t>(length, size_t(1) << 30);
      const ssize_t got = ::pread(fd_, out, chunk, static_cast<off_t>(offset));
      if (got < 0 && errno == EINTR) continue;
      TS_CHECK(got >= 0, path_, "read of ", chunk, " bytes at offset ", offset,
               " failed: ", os_error(errno));
      TS_CHECK(got > 0, path_, "file ended at offset ", offset, " while ", length,
               " more bytes were expected (was it truncated after it was opened?)");
      out += got;
      offset += uint64_t(got);
      length -= uint64_t(got);
    }
  }

  void check_intact() const override {
    const uint64_t now = fstat_size(fd_, path_);
    TS_CHECK(now >= size_, path_, "file shrank from ", size_, " to ", now,
             " bytes since it was opened; its tensors can no longer be read safely");
  }

 private:
  void map() {
    // MAP_NORESERVE: a writable private mapping would otherwise be charged in full against the
    // commit limit, although only pages actually written get private copies.
    void* p = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd_, 0);
    TS_CHECK(p != MAP_FAILED, path_, "cannot map ", size_, " bytes: ", os_error(errno));
    data_ = static_cast<uint8_t*>(p);
  }

  std::string path_;
  int fd_ = -1;
  uint64_t size_ = 0;
  uint8_t* data_ = nullptr;
};

// Bytes in memory: owned (memory_source) or borrowed from the caller (borrowed_memory_source).
class MemorySource final : public Source {
 public:
  MemorySource(std::string owned, std::string_view bytes, std::string name, bool viewable)
      : owned_(std::move(owned)),
        bytes_(owned_.empty() ? bytes : std::string_view(owned_)),
        name_(std::move(name)),
        viewable_(viewable) {}

  const std::string& name() const override { return name_; }
  uint64_t size() const override { return bytes_.size(); }
  uint8_t* data() const override {
    // Owned bytes are this source's own copy, so views may write to them.
    return viewable_ ? reinterpret_cast<uint8_t*>(const_cast<char*>(bytes_.data())) : nullptr;
  }
  void read(void* dst, uint64_t length, uint64_t offset) const override {
    TS_CHECK(offset <= bytes_.size() && length <= bytes_.size() - offset, name_, "read of ", length,
             " bytes at offset ", offset, " is beyond the ", bytes_.size(), " bytes");
    if (length) std::memcpy(dst, bytes_.data() + offset, length);
  }

 private:
  std::string owned_;
  std::string_view bytes_;
  std::string name_;
  bool viewable_;
};

}  // namespace

std::shared_ptr<const Source> file_source(const std::string& path, bool mapped) {
  return std::make_shared<FileSource>(path, mapped);
}

std::shared_ptr<const Source> memory_source(std::string bytes, std::string name) {
  auto source = std::make_shared<MemorySource>(std::move(bytes), std::string_view(),
                                               std::move(name), /*viewable=*/true);
  return source;
}

namespace storage {

std::shared_ptr<const Source> open_contained(const Containment& containment,
                                             const std::string& path, bool mapped,
                                             const std::string& where, const std::string& name) {
  auto source = std::make_shared<const FileSource>(path, mapped);
  // What the descriptor is: the path resolved now, and the same file (device and inode) as the
  // one opened. A swap between the open and the resolution shows as a different file.
  const std::string real = real_path(path, where + ": shard '" + name + "' cannot be resolved");
  struct stat opened {
  }, resolved{};
  if (::fstat(source->descriptor(), &opened) != 0) throw_os_error(errno, path, "cannot stat");
  TS_CHECK(::stat(real.c_str(), &resolved) == 0 && opened.st_dev == resolved.st_dev &&
               opened.st_ino == resolved.st_ino,
           where, "shard '", name, "' was replaced while it was being opened; refusing to read it");
  check_contained(containment, real, where, name);
  return source;
}

std::shared_ptr<const Source> borrowed_memory_source(std::string_view bytes, std::string name) {
  return std::make_shared<MemorySource>(std::string(), bytes, std::move(name),
                                        /*viewable=*/false);
}

void read_all(const Source& source, std::vector<ReadJob> jobs) {
  for (ReadJob& job : jobs) job.source = &source;
  read_all(jobs);
}

void read_all(const std::vector<ReadJob>& jobs) {
  // Chunks large enough that each read amortises its syscall, small enough to balance threads.
  constexpr uint64_t kChunk = uint64_t(16) << 20;
  // Below this, threads cost more than they save.
  constexpr uint64_t kParallelMin = uint64_t(64) << 20;
  std::vector<ReadJob> chunks;
  uint64_t total = 0;
  for (const ReadJob& job : jobs) {
    total += job.length;
    for (uint64_t done = 0; done < job.length; done += kChunk) {
      chunks.push_back({static_cast<char*>(job.dst) + done, std::min(kChunk, job.length - done),
                        job.offset + done, job.source});
    }
  }
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  const unsigned threads = total < kParallelMin ? 1u : std::min<unsigned>(cores, 16);
  if (threads <= 1 || chunks.size() <= 1) {
    for (const ReadJob& c : chunks) c.source->read(c.dst, c.length, c.offset);
    return;
  }
  run_parallel(chunks.size(), threads, [&](size_t i) {
    chunks[i].source->read(chunks[i].dst, chunks[i].length, chunks[i].offset);
  });
}

void for_each_chunk(const Source& source, uint64_t offset, uint64_t length,
                    const ChunkFunction& each) {
  constexpr uint64_t kChunk = uint64_t(8) << 20;
  std::unique_ptr<char[]> buffer(new char[std::min(kChunk, length) + 1]);
  for (uint64_t at = 0; at < length;) {
    const uint64_t n = std::min(kChunk, length - at);
    source.read(buffer.get(), n, offset + at);
    each(buffer.get(), n, at);
    at += n;
  }
}

void populate(uint8_t* data, uint64_t size) {
#ifndef MADV_POPULATE_READ
  constexpr int MADV_POPULATE_READ = 22;
#endif
  constexpr uint64_t kChunk = uint64_t(64) << 20;
  const uint64_t page = uint64_t(::sysconf(_SC_PAGESIZE));
  std::atomic<uint64_t> next{0};
  auto worker = [&] {
    for (uint64_t begin; (begin = next.fetch_add(kChunk)) < size;) {
      const uint64_t length = std::min(kChunk, size - begin);
      if (::madvise(data + begin, length, MADV_POPULATE_READ) == 0) continue;
      volatile uint8_t sink = 0;
      for (uint64_t at = 0; at < length; at += page) sink = sink + data[begin + at];
    }
  };
  const unsigned threads = std::min<unsigned>(std::max(1u, std::thread::hardware_concurrency()),
                                              unsigned(size / kChunk) + 1);
  std::vector<std::thread> pool;
  for (unsigned t = 1; t < threads; ++t) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
}

AtomicFileWriter::AtomicFileWriter(std::string path) : path_(std::move(path)) {
  static std::atomic<uint64_t> counter{0};
  temp_path_ = path_ + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++);
  do {
    fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  } while (fd_ < 0 && errno == EINTR);
  TS_CHECK(fd_ >= 0, path_, "cannot create temporary file '", temp_path_, "': ", os_error(errno));
  // Replacing a file keeps its permission bits: a 0600 file must not come back world-readable.
  struct stat old {};
  if (::stat(path_.c_str(), &old) == 0 && S_ISREG(old.st_mode)) {
    (void)::fchmod(fd_, old.st_mode & 0777);
  }
}

AtomicFileWriter::~AtomicFileWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(temp_path_.c_str());
}

void AtomicFileWriter::write(const void* data, uint64_t length) {
  const auto* in = static_cast<const char*>(data);
  while (length > 0) {
    const size_t chunk = std::min<uint64_t>(length, size_t(1) << 30);
    const ssize_t put = ::write(fd_, in, chunk);
    if (put < 0 && errno == EINTR) continue;
    TS_CHECK(put > 0, path_, "write failed: ", os_error(put < 0 ? errno : EIO),
             "; the previous file, if any, is left untouched");
    in += put;
    length -= uint64_t(put);
  }
}

void AtomicFileWriter::commit(bool durable) {
  const int fd = fd_;
  fd_ = -1;
  if (durable && ::fsync(fd) != 0) {
    const int error = errno;
    ::close(fd);
    TS_FAIL(path_, "fsync failed: ", os_error(error),
            "; the previous file, if any, is left untouched");
  }
  TS_CHECK(::close(fd) == 0, path_, "write failed on close: ", os_error(errno),
           "; the previous file, if any, is left untouched");
  TS_CHECK(::rename(temp_path_.c_str(), path_.c_str()) == 0, path_,
           "cannot move the temporary file into place: ", os_error(errno));
  committed_ = true;
  if (durable) {
    const std::string directory = parent_path(path_);
    sync_directory(directory.empty() ? "." : directory);
  }
}

}  // namespace storage
}  // namespace torch::safetensors
