#include "cli.h"

#include <cstdio>
#include <iostream>

#include <c10/util/Exception.h>

#include "common.h"
#include "torch_safetensors/version.h"

namespace torch::safetensors::cli {
namespace {

struct Command {
  const char* name;
  const char* summary;
  int (*run)(const std::vector<std::string>&);
};

constexpr Command kCommands[] = {
    {"inspect", "list the tensors, metadata and totals of a file, an index or a directory",
     &inspect_command},
    {"verify", "validate every file and index (--data: read every byte); exit 1 on a problem",
     &verify_command},
    {"convert",
     "convert a torch.save checkpoint (.pt/.pth/.bin, sharded .bin) to safetensors; "
     "safetensors to and from ExecuTorch .ptd",
     &convert_command},
    {"diff", "compare two checkpoints tensor by tensor; exit 1 when they differ", &diff_command},
    {"realign", "rewrite a file with every tensor aligned (default 64 bytes), in place or to OUT",
     &realign_command},
};

std::string help() {
  std::string text = std::string("usage: ") + kProgram + " COMMAND [OPTIONS] ...\n\n" +
                     "Inspect, verify, convert and compare safetensors checkpoints.\n\n" +
                     "commands:\n";
  for (const Command& command : kCommands) {
    char line[160];
    std::snprintf(line, sizeof(line), "  %-9s %s\n", command.name, command.summary);
    text += line;
  }
  text += std::string("\n") + kProgram + " COMMAND --help shows a command's options.\n";
  return text;
}

}  // namespace

int run(const std::vector<std::string>& args) {
  int code = 2;
  std::string name;
  try {
    if (args.empty()) {
      std::cerr << help();
    } else if (args[0] == "-h" || args[0] == "--help") {
      std::cout << help();
      code = 0;
    } else if (args[0] == "--version") {
      std::cout << kProgram << " " << TORCH_SAFETENSORS_VERSION << "\n";
      code = 0;
    } else {
      name = args[0];
      const Command* command = nullptr;
      for (const Command& candidate : kCommands) {
        if (name == candidate.name) command = &candidate;
      }
      if (command == nullptr) {
        std::cerr << kProgram << ": error: unknown command '" << name << "'\n\n" << help();
      } else {
        code = command->run(std::vector<std::string>(args.begin() + 1, args.end()));
      }
    }
  } catch (const UsageError& e) {
    std::cout.flush();
    std::cerr << kProgram << " " << name << ": error: " << e.what() << "\n(" << kProgram << " "
              << name << " --help shows the usage)\n";
    code = 2;
  } catch (const c10::Error& e) {
    std::cout.flush();
    std::cerr << kProgram << " " << name << ": error: " << e.what_without_backtrace() << "\n";
    code = 1;
  } catch (const std::exception& e) {
    std::cout.flush();
    std::cerr << kProgram << " " << name << ": error: " << e.what() << "\n";
    code = 1;
  }
  std::cout.flush();
  std::cerr.flush();
  return code;
}

}  // namespace torch::safetensors::cli
