# ExecuTorch's C++ runtime, from the installed `executorch` Python package (its wheel ships the
# headers, libexecutorch.so and a CMake package under lib/cmake/executorch), or from
# -DEXECUTORCH_DIR=<the package folder>. Sets TS_EXECUTORCH_FOUND; when found, the imported targets
# executorch::runtime (and, in wheels that ship them, executorch::kernels_optimized: the operator
# kernels a program needs to run) exist. Absent, the NamedDataMap target is skipped with a message.
set(TS_EXECUTORCH_FOUND OFF)
if(NOT EXECUTORCH_DIR)
  find_package(Python3 COMPONENTS Interpreter QUIET)
  if(Python3_Interpreter_FOUND)
    # A namespace package: no __file__, one entry in __path__.
    execute_process(
      COMMAND ${Python3_EXECUTABLE} -c "import executorch; print(list(executorch.__path__)[0])"
      OUTPUT_VARIABLE EXECUTORCH_DIR OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  endif()
endif()
if(EXECUTORCH_DIR AND EXISTS "${EXECUTORCH_DIR}/lib/cmake/executorch/executorch-config.cmake")
  find_package(executorch CONFIG QUIET PATHS "${EXECUTORCH_DIR}/lib/cmake/executorch"
    NO_DEFAULT_PATH)
  if(executorch_FOUND AND TARGET executorch::runtime)
    set(TS_EXECUTORCH_FOUND ON)
    message(STATUS "ExecuTorch ${EXECUTORCH_BUILD_VERSION} at ${EXECUTORCH_DIR}: building the "
                   "NamedDataMap over safetensors")
  endif()
endif()
if(NOT TS_EXECUTORCH_FOUND)
  message(STATUS "ExecuTorch's runtime not found (pip install executorch, see scripts/setup.sh, "
                 "or -DEXECUTORCH_DIR=...): the NamedDataMap over safetensors is not built")
endif()
