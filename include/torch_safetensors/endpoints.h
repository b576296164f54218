// Where a load reads from and where a save writes to: every source and destination torch::load
// and torch::save take, as one argument each, so that every value has one `load` and one `save`.
//   LoadFrom: a path, a std::istream&, or any Source (source.h); `(data, size)` and
//             `(read, size)` pairs are forwarded to it by load (serialize.h).
//   SaveTo:   a path (written atomically), a std::ostream&, or a write function
//             `size_t(const void* data, size_t n)` returning how many bytes it took.
#pragma once

#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "torch_safetensors/export.h"
#include "torch_safetensors/file.h"
#include "torch_safetensors/source.h"

namespace torch::safetensors {

class LoadFrom {
 public:
  // Every spelling of a path: implicit, like torch::load's.
  LoadFrom(const std::string& path) : path_(path) {}                              // NOLINT
  LoadFrom(const char* path) : path_(std::string(path)) {}                        // NOLINT
  LoadFrom(std::string_view path) : path_(std::string(path)) {}                   // NOLINT
  LoadFrom(const std::filesystem::path& path) : path_(path.string()) {}           // NOLINT
  LoadFrom(std::istream& stream) : source_(stream_source(stream)) {}              // NOLINT
  LoadFrom(std::shared_ptr<const Source> source) : source_(std::move(source)) {}  // NOLINT

  // A path opens as a file (mapped or read per options.backend); anything else reads its Source.
  // (open_checkpoint in checkpoint.h also takes directories and indexes.)
  File open(const LoadOptions& options = {}) const {
    return path_ ? File(*path_, options) : File(source_, options);
  }
  const std::optional<std::string>& path() const { return path_; }
  const std::shared_ptr<const Source>& source() const { return source_; }

 private:
  std::optional<std::string> path_;
  std::shared_ptr<const Source> source_;
};

using WriteFunction = std::function<size_t(const void* data, size_t n)>;

class SaveTo {
 public:
  // Every spelling of a path: implicit, like torch::save's.
  SaveTo(const std::string& path) : path_(path) {}                     // NOLINT
  SaveTo(const char* path) : path_(std::string(path)) {}               // NOLINT
  SaveTo(std::string_view path) : path_(std::string(path)) {}          // NOLINT
  SaveTo(const std::filesystem::path& path) : path_(path.string()) {}  // NOLINT
  SaveTo(std::ostream& stream) : stream_(&stream) {}                   // NOLINT
  template <typename Write,
            std::enable_if_t<std::is_invocable_r_v<size_t, Write&, const void*, size_t>, int> = 0>
  SaveTo(Write&& write) : write_(std::forward<Write>(write)) {}  // NOLINT

  // Durability for a path: the file and then its directory are fsync'ed before the save reports
  // success, so that a power loss after it cannot lose or tear the file. Off by default, as in
  // torch.save and the reference's save_file (it costs a flush of the file to the disk: see
  // bench/README.md); streams and write functions are the caller's to flush.
  SaveTo& durable(bool on = true) {
    durable_ = on;
    return *this;
  }

  const std::optional<std::string>& path() const { return path_; }
  std::ostream* stream() const { return stream_; }
  const WriteFunction& write_function() const { return write_; }
  bool is_durable() const { return durable_; }
  // Names the destination in error messages.
  std::string name() const { return path_ ? *path_ : stream_ ? "<stream>" : "<write function>"; }

 private:
  std::optional<std::string> path_;
  std::ostream* stream_ = nullptr;
  WriteFunction write_;
  bool durable_ = false;
};

}  // namespace torch::safetensors
