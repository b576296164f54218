#include <string>
#include <vector>

#include "cli.h"

int main(int argc, char** argv) {
  return torch::safetensors::cli::run(std::vector<std::string>(argv + 1, argv + argc));
}
