// Error types. Every error is a c10::Error (or one of c10's typed subclasses: IndexError,
// ValueError, ...) whose message starts "safetensors: <source>: ". Failures of the operating
// system (a missing file, no permission, a directory) are an OSError that keeps errno, so that
// bindings can raise their language's own error for it (Python: FileNotFoundError & co).
#pragma once

#include <cstdint>
#include <string>
#include <utility>

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

// A load that does not fit its memory budget (LoadOptions::device_budget, host_budget), raised
// when it is planned, before anything is allocated or read (throw_over_budget in csrc/check.h
// words it). Python: torch_safetensors.MemoryBudgetError (a SafetensorError and a MemoryError,
// with these fields as attributes).
class TS_API BudgetError : public c10::Error {
 public:
  BudgetError(std::string memory, uint64_t needed, uint64_t budget, std::string largest,
              uint64_t largest_bytes, const std::string& message)
      : c10::Error(message, /*backtrace=*/nullptr),
        memory_(std::move(memory)),
        needed_(needed),
        budget_(budget),
        largest_(std::move(largest)),
        largest_bytes_(largest_bytes) {}

  const std::string& memory() const { return memory_; }  // "device" or "host"
  uint64_t needed() const { return needed_; }
  uint64_t budget() const { return budget_; }
  uint64_t shortfall() const { return needed_ - budget_; }
  const std::string& largest() const { return largest_; }  // the tensor needing the most
  uint64_t largest_bytes() const { return largest_bytes_; }

 private:
  std::string memory_;
  uint64_t needed_, budget_;
  std::string largest_;
  uint64_t largest_bytes_;
};

}  // namespace torch::safetensors
