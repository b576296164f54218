// The `torch-safetensors` command line: one entry point, used by the executable (main.cpp) and by
// the Python package (`python -m torch_safetensors`, the console script) through the extension.
#pragma once

#include <string>
#include <vector>

namespace torch::safetensors::cli {

// Runs the command line `args` (without the program name). Output goes to stdout, errors and the
// progress bar to stderr. Returns the exit code: 0 success, 1 failure (a problem found, files
// that differ, an error), 2 a usage error.
int run(const std::vector<std::string>& args);

}  // namespace torch::safetensors::cli
