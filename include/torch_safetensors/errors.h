// Error types. Every error is a c10::Error (or one of c10's typed subclasses: IndexError,
// ValueError, ...) whose message starts "safetensors: <source>: ". Failures of the operating
// system (a missing file, no permission, a directory) are an OSError that keeps errno, so that
// bindings can raise their language's own error for it (Python: FileNotFoundError & co).
#pragma once

#include <string>

#include <c10/util/Exception.h>

#include "torch_safetensors/export.h"

namespace torch::safetensors {

class TS_API OSError : public c10::Error {
 public:
  // `context`: what was being done, when the path alone does not say it (a shard of a checkpoint
  // index); bindings put it before strerror.
  OSError(int error_number, std::string path, const std::string& message, std::string context = {})
      : c10::Error(message, /*backtrace=*/nullptr),
        error_number_(error_number),
        path_(std::move(path)),
        context_(std::move(context)) {}

  int error_number() const { return error_number_; }  // errno of the failed call
  const std::string& path() const { return path_; }
  const std::string& context() const { return context_; }

 private:
  int error_number_;
  std::string path_;
  std::string context_;
};

}  // namespace torch::safetensors
