// TS_API marks what the shared libraries export. Everything else is hidden (the libraries are
// built with -fvisibility=hidden by CMake and setup.py alike), so the ABI is exactly what the
// headers declare with it, and internal symbols cannot clash with an application's.
#pragma once

#if defined(_WIN32)
#if defined(TORCH_SAFETENSORS_BUILDING)
#define TS_API __declspec(dllexport)
#else
#define TS_API __declspec(dllimport)
#endif
#else
#define TS_API __attribute__((visibility("default")))
#endif
