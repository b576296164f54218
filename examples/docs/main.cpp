// Runs the docs' C++ examples (doc_example.h), each in a fresh temporary directory:
//   docs_examples [name-substring]
// Exit status 0 only when every selected example ran without an exception.
#include <stdlib.h>
#include <unistd.h>

#include <cstring>
#include <exception>
#include <iostream>
#include <string>

#include "doc_example.h"

int main(int argc, char** argv) {
  const std::string filter = argc > 1 ? argv[1] : "";
  int passed = 0, failed = 0;
  for (const auto& example : doc_example::registry()) {
    if (example.name.find(filter) == std::string::npos) continue;
    char dir[] = "/tmp/docs_example_XXXXXX";
    if (mkdtemp(dir) == nullptr || chdir(dir) != 0) {
      std::cerr << "cannot make a temporary directory: " << std::strerror(errno) << "\n";
      return 1;
    }
    try {
      example.run();
      ++passed;
      std::cout << "ok     " << example.name << "\n";
    } catch (const std::exception& error) {
      ++failed;
      std::cout << "FAILED " << example.name << ": " << error.what() << "\n";
    }
    const std::string remove = std::string("rm -rf '") + dir + "'";
    if (std::system(remove.c_str()) != 0) std::cerr << "could not remove " << dir << "\n";
  }
  std::cout << "docs examples: " << passed << " passed, " << failed << " failed\n";
  return failed == 0 && passed > 0 ? 0 : 1;
}
