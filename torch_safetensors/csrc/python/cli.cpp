// torch_safetensors._C.cli_main: the torch-safetensors command line (console script and
// `python -m torch_safetensors`), the same C++ as the executable.
#include "python/common.h"

#include <pybind11/stl.h>

#include <string>
#include <vector>

// The command line is a front end beside this one (cli/ at the repository root, an include
// directory of the extension).
#include "cli/cli.h"

namespace torch::safetensors::python {

void bind_cli(py::module_& m) {
  m.def(
      "cli_main",
      [](const std::vector<std::string>& args) {
        py::gil_scoped_release release;
        return ts::cli::run(args);
      },
      py::arg("args"));
}

}  // namespace torch::safetensors::python
