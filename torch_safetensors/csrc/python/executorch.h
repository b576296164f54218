// The ExecuTorch (.ptd) part of torch_safetensors._C, registered by bindings.cpp.
#pragma once

#include <pybind11/pybind11.h>

namespace torch::safetensors::python {

void bind_executorch(pybind11::module_& m);

}  // namespace torch::safetensors::python
