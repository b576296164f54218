// Sources and destinations that are not files: caller memory (copied), std::istream /
// std::ostream, and torch::load's / torch::save's read and write functions.
#include <istream>
#include <iterator>
#include <mutex>
#include <ostream>

#include "check.h"
#include "storage/io.h"

namespace torch::safetensors {
namespace {

// A seekable stream read on demand; every read seeks first, so concurrent reads take turns.
class SeekableStreamSource final : public Source {
 public:
  SeekableStreamSource(std::istream& stream, std::streampos begin, uint64_t size, std::string name)
      : stream_(stream), begin_(begin), size_(size), name_(std::move(name)) {}

  const std::string& name() const override { return name_; }
  uint64_t size() const override { return size_; }
  void read(void* dst, uint64_t length, uint64_t offset) const override {
    TS_CHECK(offset <= size_ && length <= size_ - offset, name_, "a read of ", length,
             " bytes at offset ", offset, " is beyond the stream's ", size_, " bytes");
    std::lock_guard<std::mutex> lock(mutex_);
    stream_.clear();
    stream_.seekg(begin_ + static_cast<std::streamoff>(offset));
    TS_CHECK(stream_.good(), name_, "cannot seek to offset ", offset);
    stream_.read(static_cast<char*>(dst), static_cast<std::streamsize>(length));
    const auto got = static_cast<uint64_t>(stream_.gcount());
    TS_CHECK(got == length, name_, "the stream ended early: expected ", length, " bytes at offset ",
             offset, ", found ", got);
  }

 private:
  std::istream& stream_;
  std::streampos begin_;
  uint64_t size_;
  std::string name_;
  mutable std::mutex mutex_;
};

class FunctionSource final : public Source {
 public:
  FunctionSource(ReadFunction read, uint64_t size, std::string name)
      : read_(std::move(read)), size_(size), name_(std::move(name)) {}

  const std::string& name() const override { return name_; }
  uint64_t size() const override { return size_; }
  void read(void* dst, uint64_t length, uint64_t offset) const override {
    TS_CHECK(offset <= size_ && length <= size_ - offset, name_, "a read of ", length,
             " bytes at offset ", offset, " is beyond the source's ", size_, " bytes");
    size_t got = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      got = read_(offset, dst, static_cast<size_t>(length));
    }
    TS_CHECK(got == length, name_, "the read function returned ", got, " bytes at offset ", offset,
             ", expected ", length);
  }

 private:
  ReadFunction read_;
  uint64_t size_;
  std::string name_;
  mutable std::mutex mutex_;
};

}  // namespace

std::shared_ptr<const Source> copied_memory_source(const char* data, size_t size,
                                                   std::string name) {
  TS_CHECK(data != nullptr || size == 0, name, "null data pointer with size ", size);
  return memory_source(std::string(data ? data : "", size), std::move(name));
}

std::shared_ptr<const Source> stream_source(std::istream& stream, std::string name) {
  TS_CHECK(stream.good(), name, "the stream is not readable");
  const std::streampos begin = stream.tellg();
  if (begin != std::streampos(-1) && stream.seekg(0, std::ios::end)) {
    const std::streampos end = stream.tellg();
    stream.seekg(begin);
    if (end != std::streampos(-1) && stream.good()) {
      return std::make_shared<SeekableStreamSource>(
          stream, begin, static_cast<uint64_t>(end - begin), std::move(name));
    }
  }
  // Cannot seek (a pipe, a socket buffer): its bytes come once, so keep them all.
  stream.clear();
  std::string bytes{std::istreambuf_iterator<char>(stream), std::istreambuf_iterator<char>()};
  TS_CHECK(!stream.bad(), name, "the stream failed after ", bytes.size(), " bytes");
  return memory_source(std::move(bytes), std::move(name));
}

std::shared_ptr<const Source> function_source(ReadFunction read, SizeFunction size,
                                              std::string name) {
  TS_CHECK(read && size, name, "the read and size functions must both be set");
  const uint64_t total = size();
  return std::make_shared<FunctionSource>(std::move(read), total, std::move(name));
}

namespace storage {

void write_to_stream(std::ostream& out, const void* data, uint64_t length, uint64_t offset,
                     const std::string& name) {
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(length));
  TS_CHECK(out.good(), name, "the stream failed writing ", length, " bytes at offset ", offset);
}

void write_to_function(const WriteFunction& write, const void* data, uint64_t length,
                       uint64_t offset, const std::string& name) {
  const size_t written = write(data, static_cast<size_t>(length));
  TS_CHECK(written == length, name, "the write function took ", written, " bytes at offset ",
           offset, ", expected ", length);
}

}  // namespace storage
}  // namespace torch::safetensors
