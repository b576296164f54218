// `verify PATH`: every check the library makes on open, for every file, and with --data a read of
// every byte. One line per problem on stdout; exit code 1 when there is any.
#include <functional>
#include <iostream>
#include <map>
#include <optional>

#include "common.h"
#include "torch_safetensors/checkpoint.h"
#include "torch_safetensors/file.h"
#include "torch_safetensors/header.h"

namespace torch::safetensors::cli {
namespace {

const char* kHelp =
    "usage: torch-safetensors verify PATH [--data]\n"
    "\n"
    "Validates a safetensors file, an index (*.safetensors.index.json) or a directory holding\n"
    "either: the index, every shard it names (present, inside the folder, holding exactly the\n"
    "tensors the index assigns to it) and every file's header (dtypes, shapes, offsets, sizes).\n"
    "Prints one line per problem and exits 1 if there is any, else prints a summary and exits 0.\n"
    "Stricter than the reference: a tensor name or metadata holding control characters (which\n"
    "loads, but this library refuses to write) is a problem too.\n"
    "\n"
    "options:\n"
    "  --data    also read every tensor's bytes from disk (I/O errors, files changed meanwhile)\n";

// Names and metadata that load (the reference writes them) but that save refuses: one problem
// each, the names escaped.
void report_control_characters(const File& file,
                               const std::function<void(const c10::Error&)>& report) {
  const auto check = [&](std::string_view text, HeaderText kind, std::string_view what) {
    try {
      check_header_text(text, kind, file.path(), what);
    } catch (const c10::Error& e) {
      report(e);
    }
  };
  for (const std::string& name : file.keys()) check(name, HeaderText::kName, "tensor name");
  if (!file.metadata()) return;
  for (const auto& [key, value] : *file.metadata()) {
    check(key, HeaderText::kName, "metadata key");
    check(value, HeaderText::kMetadataValue,
          "metadata value of '" + escape_control_characters(key) + "':");
  }
}

}  // namespace

int verify_command(const std::vector<std::string>& args) {
  auto parsed = parse_args(args, {{"--data", false}}, kHelp, 1, 1);
  if (!parsed) return 0;
  const std::string& path = parsed->positional[0];
  const bool read_data = parsed->flag("--data");
  size_t problems = 0;
  auto report = [&](const c10::Error& e) {
    std::cout << "problem: " << e.what_without_backtrace() << "\n";
    ++problems;
  };

  std::optional<Checkpoint> checkpoint;
  try {
    // pread: every byte is read into memory, so a short read is an error, not a SIGBUS.
    checkpoint.emplace(path,
                       LoadOptions().with_backend(read_data ? Backend::kPread : Backend::kMmap));
  } catch (const c10::Error& e) {
    report(e);
  }
  uint64_t tensors = 0, bytes = 0;
  if (checkpoint) {
    std::map<std::string, std::vector<std::string>> names_by_shard;
    for (const std::string& name : checkpoint->keys()) {
      names_by_shard[checkpoint->shard_file(name)].push_back(name);
    }
    std::vector<const std::vector<std::string>*> readable;
    uint64_t total_bytes = 0;
    for (const std::string& shard : checkpoint->shard_files()) {
      const std::vector<std::string>& names = names_by_shard[shard];
      if (names.empty()) continue;  // a file without tensors was opened by the Checkpoint
      try {
        // Opens and checks the shard against the index.
        report_control_characters(checkpoint->file(names.front()), report);
        readable.push_back(&names);
        for (const std::string& name : names) total_bytes += checkpoint->info(name).nbytes();
      } catch (const c10::Error& e) {
        report(e);
      }
    }
    ProgressBar progress("verify", read_data ? total_bytes : 0);
    for (const auto* names : readable) {
      for (const std::string& name : *names) {
        ++tensors;
        bytes += checkpoint->info(name).nbytes();
        if (!read_data) continue;
        try {
          checkpoint->tensor(name);
        } catch (const c10::Error& e) {
          report(e);
        }
        progress.update(bytes);
      }
    }
    progress.finish();
    if (read_data) {
      try {
        checkpoint->check_intact();
      } catch (const c10::Error& e) {
        report(e);
      }
    }
  }
  if (problems > 0) {
    std::cout << "FAILED: " << path << ": " << problems << " problem(s)\n";
    return 1;
  }
  std::cout << "OK: " << path << ": " << checkpoint->shard_files().size() << " file(s), " << tensors
            << " tensors, " << human_bytes(bytes) << (read_data ? ", every byte read" : "") << "\n";
  return 0;
}

}  // namespace torch::safetensors::cli
