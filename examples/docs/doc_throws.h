// What an example shows about an error: that a call throws a c10::Error saying something.
#pragma once

#include <string>

#include <c10/util/Exception.h>

namespace doc_example {

// Whether `run` throws a c10::Error whose message (backtrace aside) contains `expected`.
template <typename Run>
bool throws(Run&& run, const std::string& expected) {
  try {
    run();
  } catch (const c10::Error& error) {
    return std::string(error.what_without_backtrace()).find(expected) != std::string::npos;
  }
  return false;
}

}  // namespace doc_example
