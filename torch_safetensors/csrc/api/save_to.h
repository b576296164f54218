// The destinations of a save (SaveTo, endpoints.h) as one byte sink: a path is written atomically
// (committed when `body` returns, removed when it throws), a stream is flushed and checked, a
// write function is called until it has taken every byte. Every writer of a file format uses it.
#pragma once

#include "torch_safetensors/export.h"

#include <cstdint>
#include <functional>

#include "torch_safetensors/endpoints.h"

namespace torch::safetensors {

// Takes the next `n` bytes of the output.
using ByteSink = std::function<void(const void* data, uint64_t n)>;

TS_API void write_to(const SaveTo& to, const std::function<void(const ByteSink& sink)>& body);

}  // namespace torch::safetensors
