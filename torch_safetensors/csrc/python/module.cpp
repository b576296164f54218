// torch_safetensors._C: the Python binding of the C++ core. It only adapts types (str/dict/tuple
// <-> std::string/Metadata/SaveEntry) and errors (c10::Error -> SafetensorError & co, OSError ->
// Python's OSError); every byte of the format is read, validated and written by the core, and the
// rules for saving, shared memory, ties and module loading are the core's. The public API is the
// Python package torch_safetensors, which adds only the reference's argument handling, exception
// types and message texts. Each feature's binding is in the file of its name (common.h).
#include "python/common.h"

PYBIND11_MODULE(_C, m) {
  namespace python = torch::safetensors::python;
  m.doc() = "torch_safetensors C++ core binding (private; use the torch_safetensors package)";
  m.attr("__version__") = TORCH_SAFETENSORS_VERSION;
  python::bind_errors(m);
  python::bind_file(m);
  python::bind_save(m);
  python::bind_model(m);
  python::bind_cli(m);
  python::bind_quant(m);
  python::bind_distributed(m);
  python::bind_coverage(m);
  python::bind_executorch(m);
  python::bind_aoti(m);
  python::bind_convert(m);
}
