// The error helpers: every error of the library names its source (a file, a checkpoint's index,
// an archive, a stream) first, then what was expected vs found.
//   TS_CHECK(n <= max, path, "header length ", n, " exceeds ", max);
//   -> c10::Error "safetensors: model.safetensors: header length ... exceeds ..."
// The typed variants keep c10's kinds (bindings raise IndexError, ValueError, TypeError for them).
#pragma once

#include <cstdint>
#include <string_view>

#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include "torch_safetensors/export.h"

#define TS_CHECK(cond, source, ...) \
  TORCH_CHECK((cond), "safetensors: ", (source), ": ", __VA_ARGS__)
#define TS_FAIL(source, ...) TS_CHECK(false, source, __VA_ARGS__)
#define TS_CHECK_INDEX(cond, source, ...) \
  TORCH_CHECK_INDEX((cond), "safetensors: ", (source), ": ", __VA_ARGS__)
#define TS_CHECK_VALUE(cond, source, ...) \
  TORCH_CHECK_VALUE((cond), "safetensors: ", (source), ": ", __VA_ARGS__)
#define TS_CHECK_TYPE(cond, source, ...) \
  TORCH_CHECK_TYPE((cond), "safetensors: ", (source), ": ", __VA_ARGS__)

namespace torch::safetensors {

// The one missing-name error, for every handle and every kind of checkpoint: "no tensor named
// '<name>' (<count> tensors: '<a>', '<b>', ...)", listing the first few names.
[[noreturn]] TS_API void throw_missing_tensor(std::string_view source, std::string_view name,
                                              size_t count,
                                              c10::ArrayRef<std::string_view> first_names);

// The one over-budget error (a BudgetError, errors.h): "<what> needs <needed> bytes of <memory>
// memory (<staging> of them staging buffers), <shortfall> more than the <memory> budget of
// <budget> bytes; its largest tensor is '<largest>' (<largest_bytes> bytes)".
[[noreturn]] TS_API void throw_over_budget(std::string_view source, std::string_view what,
                                           std::string_view memory, uint64_t needed,
                                           uint64_t budget, uint64_t staging,
                                           std::string_view largest, uint64_t largest_bytes);

}  // namespace torch::safetensors
