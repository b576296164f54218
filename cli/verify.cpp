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
    "usage: torch-safetensors verify PATH [--data] [--alignment [BOUNDARY]]\n"
    "\n"
    "Validates a safetensors file, an index (*.safetensors.index.json) or a directory holding\n"
    "either: the index, every shard it names (present, inside the folder, holding exactly the\n"
    "tensors the index assigns to it) and every file's header (dtypes, shapes, offsets, sizes).\n"
    "Prints one line per problem and exits 1 if there is any, else prints a summary and exits 0.\n"
    "Stricter than the reference: a tensor name or metadata holding control characters (which\n"
    "loads, but this library refuses to write) is a problem too.\n"
    "\n"
    "options:\n"
    "  --data    also read every tensor's bytes from disk (I/O errors, files changed meanwhile)\n"
    "  --alignment [BOUNDARY]\n"
    "            also report, per file, where the data section starts, the tensors whose offset\n"
    "            in the file is not a multiple of their element size (a zero-copy load copies\n"
    "            them) and those not on a multiple of BOUNDARY (a power of two; default 64).\n"
    "            Misalignment is legal in the format: it does not change the exit code\n"
    "            (torch-safetensors realign fixes it)\n";

// "--alignment" alone or followed by a path means the default boundary; "--alignment N" and
// "--alignment=N" choose N. Rewritten to "--alignment=N" for parse_args.
std::vector<std::string> with_boundary_value(std::vector<std::string> args) {
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--") break;
    if (args[i] != "--alignment") continue;
    const bool next_is_number = i + 1 < args.size() && !args[i + 1].empty() &&
                                args[i + 1].find_first_not_of("0123456789") == std::string::npos;
    args[i] = "--alignment=" + (next_is_number ? args[i + 1] : std::string("64"));
    if (next_is_number) args.erase(args.begin() + std::ptrdiff_t(i) + 1);
  }
  return args;
}

void report_alignment(const Checkpoint& checkpoint, const std::vector<std::string>& names,
                      uint64_t boundary) {
  const File file = checkpoint.file(names.front());
  const Alignment a = alignment_of(file, names, boundary);
  std::cout << "alignment: " << checkpoint.shard_file(names.front()) << ": data section at byte "
            << a.data_offset << ", " << names.size() << " tensors\n";
  std::cout << "  not aligned to their element size (copied by a zero-copy load): "
            << a.copied_on_load.size();
  if (!a.copied_on_load.empty()) {
    std::cout << " (" << human_bytes(a.copied_bytes) << "): " << first_names(a.copied_on_load);
  }
  std::cout << "\n  not aligned to " << boundary << " bytes: " << a.off_boundary.size();
  if (!a.off_boundary.empty()) std::cout << ": " << first_names(a.off_boundary);
  std::cout << "\n";
}

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
  auto parsed = parse_args(with_boundary_value(args), {{"--data", false}, {"--alignment", true}},
                           kHelp, 1, 1);
  if (!parsed) return 0;
  std::optional<uint64_t> boundary;
  if (auto text = parsed->value("--alignment")) boundary = parse_boundary("--alignment", *text);
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
    if (boundary) {
      for (const auto* names : readable) report_alignment(*checkpoint, *names, *boundary);
    }
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
