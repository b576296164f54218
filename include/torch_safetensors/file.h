// A lazy handle on one safetensors file: the C++ analogue of the reference's `safe_open`. It is
// a Checkpoint (checkpoint.h) of one file, so it has every accessor of one, plus the file's
// header and source.
#pragma once

#include <memory>

#include "torch_safetensors/checkpoint.h"
#include "torch_safetensors/export.h"

namespace torch::safetensors {

class TS_API File : public Checkpoint {
 public:
  // Opens `path`, a safetensors file (a directory or an index is a Checkpoint), and validates its
  // header. Throws c10::Error (OSError for a missing file, ...).
  explicit File(const PathArg& path, const LoadOptions& options = {});
  // Reads the header from `source` and validates it.
  explicit File(std::shared_ptr<const Source> source, const LoadOptions& options = {});

  const Source& source() const;
  std::shared_ptr<const Source> shared_source() const;  // what tensor views keep alive
  const Header& header() const;

 private:
  friend class Checkpoint;
  explicit File(std::shared_ptr<const Impl> impl) : Checkpoint(std::move(impl)) {}
};

// Same as File(path, options).
inline File open(const PathArg& path, const LoadOptions& options = {}) {
  return File(path, options);
}

}  // namespace torch::safetensors
