// Helpers shared by the C++ tests: temporary directories and hand-crafted files.
//
// No std::filesystem in the tests: the CUDA builds of libtorch.so export their own copies of its
// functions, which win symbol resolution and crash (remove_all jumps to address 0 with torch
// 2.11+cu130). POSIX calls have no such clash.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace ts_test {

// A fresh directory, removed with everything in it at the end of the test.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }
  // Names in the directory now, sorted (to spot leftover temporary files).
  std::vector<std::string> entries() const;

 private:
  std::string path_;
};

// The names in directory `path` (without "." and ".."), sorted.
std::vector<std::string> list_dir(const std::string& path);

std::string read_file(const std::string& path);
void write_file(const std::string& path, const std::string& bytes);

// u64 little-endian length + header + data: a file whose header is exactly `json`.
std::string make_safetensors(const std::string& json, const std::string& data);

// The message (without backtrace) of the c10::Error that `f` throws; "" if it throws none.
std::string error_of(const std::function<void()>& f);

// The file that the mapping holding `address` maps, from /proc/self/maps; "" if none.
std::string mapped_file_of(const void* address);

// Runs `python3 <script> <folder>` once per `cache` and script version (ctest runs each case in a
// process of its own: the others wait on a lock), into a temporary folder renamed into place when
// `done` (a file the script writes last) exists. Returns the folder, or "" when the script exits
// with 77 (something it needs is not installed), with its output in `skip`. Any other failure is
// a c10::Error with the script's output.
std::string cached_script_output(const std::string& script, const std::string& cache,
                                 const std::string& done, std::string& skip);

}  // namespace ts_test
