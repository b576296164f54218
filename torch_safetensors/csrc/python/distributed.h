// The tensor-parallel part of torch_safetensors._C (shard plans, load_for_rank, the c10d
// collectives), registered by bindings.cpp.
#pragma once

#include <pybind11/pybind11.h>

namespace torch::safetensors::python {

void bind_distributed(pybind11::module_& m);
// DCP chunk coverage (python/coverage.cpp).
void bind_coverage(pybind11::module_& m);

}  // namespace torch::safetensors::python
