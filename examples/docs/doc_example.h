// The C++ code blocks of docs/*.md are excerpts of the files in this folder (test/python/
// test_docs.py checks that each block appears in one of them, line for line); docs_examples runs
// every example registered here, each in a fresh temporary directory (scripts/test.sh).
//
//   DOC_EXAMPLE(load_a_file) {
//     ... the code the page shows, which throws (or fails a TS_DOC_CHECK) when it is wrong ...
//   }
#pragma once

#include <functional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace doc_example {

struct Example {
  std::string name;
  std::function<void()> run;
};

inline std::vector<Example>& registry() {
  static std::vector<Example> examples;
  return examples;
}

struct Register {
  Register(std::string name, std::function<void()> run) {
    registry().push_back({std::move(name), std::move(run)});
  }
};

// What an example asserts about its results: a failed check fails docs_examples.
inline void check(bool ok, const char* what, const char* file, int line) {
  if (!ok) {
    throw std::runtime_error(std::string(file) + ":" + std::to_string(line) + ": " + what);
  }
}

}  // namespace doc_example

#define DOC_EXAMPLE(name)                                                                      \
  static void doc_example_##name();                                                            \
  static const ::doc_example::Register doc_example_register_##name(#name, doc_example_##name); \
  static void doc_example_##name()

#define DOC_CHECK(condition) ::doc_example::check((condition), #condition, __FILE__, __LINE__)
