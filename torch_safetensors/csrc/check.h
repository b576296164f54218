// TS_CHECK: TORCH_CHECK with the project's message prefix, so every error names its file.
//   TS_CHECK(n <= max, path, "header length ", n, " exceeds ", max);
//   -> c10::Error "safetensors: model.safetensors: header length ... exceeds ..."
#pragma once

#include <c10/util/Exception.h>

#define TS_CHECK(cond, source, ...) \
  TORCH_CHECK((cond), "safetensors: ", (source), ": ", __VA_ARGS__)
#define TS_FAIL(source, ...) TS_CHECK(false, source, __VA_ARGS__)
