#include "common.h"

#include <fnmatch.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>

namespace torch::safetensors::cli {

std::optional<ParsedArgs> parse_args(const std::vector<std::string>& args,
                                     const std::vector<OptionSpec>& options,
                                     const std::string& help, size_t min_positional,
                                     size_t max_positional) {
  ParsedArgs parsed;
  bool options_ended = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (options_ended || arg.size() < 2 || arg[0] != '-') {
      parsed.positional.push_back(arg);
      continue;
    }
    if (arg == "--") {
      options_ended = true;
      continue;
    }
    if (arg == "-h" || arg == "--help") {
      std::cout << help;
      return std::nullopt;
    }
    const size_t equals = arg.find('=');
    const std::string name = arg.substr(0, equals);
    const OptionSpec* spec = nullptr;
    for (const OptionSpec& option : options) {
      if (option.name == name) spec = &option;
    }
    if (spec == nullptr) throw UsageError("unknown option '" + name + "'");
    if (!spec->takes_value) {
      if (equals != std::string::npos) throw UsageError("option " + name + " takes no value");
      parsed.flags[name] = true;
    } else if (equals != std::string::npos) {
      parsed.values[name] = arg.substr(equals + 1);
    } else {
      if (i + 1 >= args.size()) throw UsageError("option " + name + " needs a value");
      parsed.values[name] = args[++i];
    }
  }
  if (parsed.positional.size() < min_positional || parsed.positional.size() > max_positional) {
    throw UsageError(min_positional == max_positional
                         ? "expected " + std::to_string(min_positional) + " path(s), found " +
                               std::to_string(parsed.positional.size())
                         : "wrong number of arguments");
  }
  return parsed;
}

namespace {

[[noreturn]] void bad_option(const std::string& option, const std::string& text,
                             const std::string& expected) {
  throw UsageError(option + " must be " + expected + ", found '" + text.substr(0, 64) +
                   (text.size() > 64 ? "...'" : "'"));
}

}  // namespace

uint64_t parse_unsigned_option(const std::string& option, const std::string& text,
                               const std::string& expected) {
  uint64_t value = 0;
  const char* end = text.data() + text.size();
  const bool digits = !text.empty() && text.find_first_not_of("0123456789") == std::string::npos;
  const auto [stop, error] = std::from_chars(text.data(), end, value);
  if (!digits || error != std::errc() || stop != end) bad_option(option, text, expected);
  return value;
}

double parse_non_negative_option(const std::string& option, const std::string& text,
                                 const std::string& expected) {
  char* end = nullptr;
  errno = 0;
  const double value = std::strtod(text.c_str(), &end);
  if (text.empty() || end != text.c_str() + text.size() || errno != 0 || !std::isfinite(value) ||
      !(value >= 0)) {
    bad_option(option, text, expected);
  }
  return value;
}

std::string human_bytes(uint64_t bytes) {
  static const char* kUnits[] = {"B", "KB", "MB", "GB", "TB", "PB"};
  double value = double(bytes);
  int unit = 0;
  while (value >= 1000 && unit < 5) {
    value /= 1000;
    ++unit;
  }
  char text[32];
  if (unit == 0) {
    std::snprintf(text, sizeof(text), "%llu B", static_cast<unsigned long long>(bytes));
  } else {
    std::snprintf(text, sizeof(text), "%.2f %s", value, kUnits[unit]);
  }
  return text;
}

std::string shape_text(c10::ArrayRef<int64_t> shape) { return c10::str(shape); }

bool matches_filter(const std::string& name, const std::string& pattern) {
  if (pattern.find_first_of("*?[") == std::string::npos) {
    return name.find(pattern) != std::string::npos;
  }
  return ::fnmatch(pattern.c_str(), name.c_str(), 0) == 0;
}

Alignment alignment_of(const File& file, const std::vector<std::string>& names, uint64_t boundary) {
  Alignment out;
  out.data_offset = file.header().data_offset();
  for (const std::string& name : names) {
    const TensorInfo& info = file.info(name);
    const uint64_t offset = out.data_offset + info.begin;
    if (info.nbytes() > 0 && !can_view_at(offset, info.scalar_type())) {
      out.copied_on_load.push_back(name);
      out.copied_bytes += info.nbytes();
    }
    if (offset % boundary != 0) out.off_boundary.push_back(name);
  }
  return out;
}

uint64_t parse_boundary(const std::string& option, const std::string& text) {
  const std::string expected =
      "a power of two of at most " + std::to_string(kMaxAlignment) + " (64, 4096)";
  const uint64_t value = parse_unsigned_option(option, text, expected);
  if (value == 0 || (value & (value - 1)) != 0 || value > kMaxAlignment) {
    bad_option(option, text, expected);
  }
  return value;
}

std::string first_names(const std::vector<std::string>& names, size_t shown) {
  std::string out;
  for (size_t i = 0; i < names.size() && i < shown; ++i) out += (i ? ", " : "") + names[i];
  if (names.size() > shown) out += " and " + std::to_string(names.size() - shown) + " more";
  return out;
}

ProgressBar::ProgressBar(std::string label, uint64_t total)
    : label_(std::move(label)), total_(total), enabled_(::isatty(STDERR_FILENO) == 1) {}

void ProgressBar::update(uint64_t done) {
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  if (drawn_ && done < total_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
  last_draw_ = now;
  draw(done);
}

void ProgressBar::draw(uint64_t done) {
  constexpr int kWidth = 30;
  const double fraction = total_ == 0 ? 1.0 : std::min(1.0, double(done) / double(total_));
  const int filled = int(fraction * kWidth);
  std::string bar(size_t(filled), '#');
  bar.append(size_t(kWidth - filled), '.');
  std::fprintf(stderr, "\r%s [%s] %3d%% %s / %s", label_.c_str(), bar.c_str(), int(fraction * 100),
               human_bytes(done).c_str(), human_bytes(total_).c_str());
  std::fflush(stderr);
  drawn_ = true;
}

void ProgressBar::finish() {
  if (!drawn_) return;
  std::fprintf(stderr, "\r\033[K");  // the bar goes; the command's own output stays
  std::fflush(stderr);
  drawn_ = false;
}

}  // namespace torch::safetensors::cli
