// What ranks send each other about their layouts (rank loads, saves from many ranks), as bytes:
// little-endian int64s and length-prefixed strings. The reader checks every length against what
// arrived, so a truncated or corrupt message is a c10::Error, never a read past its end.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <c10/util/Exception.h>

namespace torch::safetensors::distributed {

class WireWriter {
 public:
  void i64(int64_t v) { bytes_.append(reinterpret_cast<const char*>(&v), sizeof v); }
  void str(const std::string& s) { i64(int64_t(s.size())), bytes_ += s; }
  void sizes(const std::vector<int64_t>& v) {
    i64(int64_t(v.size()));
    for (int64_t x : v) i64(x);
  }
  std::string take() { return std::move(bytes_); }

 private:
  std::string bytes_;
};

class WireReader {
 public:
  explicit WireReader(const std::string& bytes) : bytes_(bytes) {}
  int64_t i64() {
    TORCH_CHECK(at_ + 8 <= bytes_.size(), "safetensors: a rank sent a truncated layout");
    int64_t v;
    std::memcpy(&v, bytes_.data() + at_, 8);
    at_ += 8;
    return v;
  }
  std::string str() {
    const int64_t n = i64();
    TORCH_CHECK(n >= 0 && uint64_t(n) <= bytes_.size() - at_,
                "safetensors: a rank sent a truncated layout");
    std::string s = bytes_.substr(at_, n);
    at_ += n;
    return s;
  }
  std::vector<int64_t> sizes() {
    const int64_t n = i64();
    TORCH_CHECK(n >= 0 && uint64_t(n) <= (bytes_.size() - at_) / 8,
                "safetensors: a rank sent a truncated layout");
    std::vector<int64_t> v(n);
    for (auto& x : v) x = i64();
    return v;
  }
  bool done() const { return at_ == bytes_.size(); }

 private:
  const std::string& bytes_;
  size_t at_ = 0;
};

}  // namespace torch::safetensors::distributed
