// What the commands share: argument parsing, number formatting, the progress bar.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <c10/util/ArrayRef.h>

#include "torch_safetensors/file.h"

namespace torch::safetensors::cli {

inline constexpr const char* kProgram = "torch-safetensors";

// A command line that does not parse: reported with the command's usage, exit code 2.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct OptionSpec {
  std::string name;  // "--json"
  bool takes_value = false;
};

struct ParsedArgs {
  std::vector<std::string> positional;
  std::map<std::string, std::string> values;  // options with a value, by name
  std::map<std::string, bool> flags;          // options without one that were given

  bool flag(const std::string& name) const { return flags.count(name) != 0; }
  std::optional<std::string> value(const std::string& name) const {
    auto it = values.find(name);
    if (it == values.end()) return std::nullopt;
    return it->second;
  }
};

// Parses `args` against `options` ("--name value" or "--name=value"); "-h"/"--help" prints
// `help` to stdout and returns nullopt. Throws UsageError for an unknown option, a missing value,
// or a positional count outside [min_positional, max_positional].
std::optional<ParsedArgs> parse_args(const std::vector<std::string>& args,
                                     const std::vector<OptionSpec>& options,
                                     const std::string& help, size_t min_positional,
                                     size_t max_positional);

// Numeric option values: `text` as a non-negative integer (decimal digits, at most 2^64 - 1) or
// as a finite non-negative number; anything else is a UsageError "OPTION must be EXPECTED, found
// 'TEXT'" (exit 2), never an exception of the C++ library.
uint64_t parse_unsigned_option(const std::string& option, const std::string& text,
                               const std::string& expected);
double parse_non_negative_option(const std::string& option, const std::string& text,
                                 const std::string& expected);

// "1.50 GB" (powers of 10, as huggingface_hub's size strings), "512 B".
std::string human_bytes(uint64_t bytes);
// "[2, 3]".
std::string shape_text(c10::ArrayRef<int64_t> shape);
// The name matches a shell-style glob (fnmatch); a pattern without '*', '?' or '[' matches names
// that contain it.
bool matches_filter(const std::string& name, const std::string& pattern);

// Where one file's tensors sit (offsets absolute in the file), by the loader's rule (can_view_at).
struct Alignment {
  uint64_t data_offset = 0;                 // where the data section starts
  std::vector<std::string> copied_on_load;  // not on a multiple of their element size
  uint64_t copied_bytes = 0;                // their bytes
  std::vector<std::string> off_boundary;    // not on a multiple of the boundary
};
// `names`: the file's tensors to check (in the order to report them).
Alignment alignment_of(const File& file, const std::vector<std::string>& names, uint64_t boundary);
// A --alignment value: a power of two from 1 to kMaxAlignment (UsageError otherwise).
uint64_t parse_boundary(const std::string& option, const std::string& text);
// "a, b, c and 4 more".
std::string first_names(const std::vector<std::string>& names, size_t shown = 5);

// A one-line progress bar on stderr, drawn only when stderr is a terminal (never in pipes, logs or
// captured output), at most ten times a second; finish() clears it.
class ProgressBar {
 public:
  ProgressBar(std::string label, uint64_t total);
  ~ProgressBar() { finish(); }
  void update(uint64_t done);
  void finish();

 private:
  void draw(uint64_t done);
  std::string label_;
  uint64_t total_;
  bool enabled_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point last_draw_;
};

// The commands; each returns its exit code and throws UsageError or c10::Error.
int inspect_command(const std::vector<std::string>& args);
int verify_command(const std::vector<std::string>& args);
int convert_command(const std::vector<std::string>& args);
int diff_command(const std::vector<std::string>& args);
int realign_command(const std::vector<std::string>& args);

}  // namespace torch::safetensors::cli
