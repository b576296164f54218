// The files of a checkpoint directory (checkpoint_files.h).
#include "api/checkpoint_files.h"

#include <algorithm>
#include <cstdio>
#include <string_view>

#include <c10/util/StringUtil.h>

#include "check.h"
#include "storage/io.h"

namespace torch::safetensors {
namespace {

constexpr std::string_view kDefaultIndex = "model.safetensors.index.json";
constexpr std::string_view kIndexExtension = ".index.json";

bool ends_with(std::string_view text, std::string_view end) {
  return text.size() >= end.size() && text.substr(text.size() - end.size()) == end;
}

// Whether `name` is a file an earlier save with `pattern` wrote: prefix, optionally
// "-NNNNN-of-NNNNN", suffix, optionally ".index.json" (huggingface_hub's existing_files_regex).
bool written_by_pattern(const std::string& name, const std::string& pattern) {
  const size_t field = pattern.find("{suffix}");
  if (field == std::string::npos) return false;
  const std::string_view prefix(pattern.data(), field);
  const std::string_view suffix = std::string_view(pattern).substr(field + 8);
  std::string_view rest(name);
  if (rest.substr(0, prefix.size()) != prefix) return false;
  rest.remove_prefix(prefix.size());
  if (ends_with(rest, kIndexExtension)) rest.remove_suffix(kIndexExtension.size());
  if (!ends_with(rest, suffix)) return false;
  rest.remove_suffix(suffix.size());
  if (rest.empty()) return true;
  auto digits = [](std::string_view d) {
    return d.size() == 5 &&
           std::all_of(d.begin(), d.end(), [](char c) { return c >= '0' && c <= '9'; });
  };
  return rest.size() == 15 && rest[0] == '-' && digits(rest.substr(1, 5)) &&
         rest.substr(6, 4) == "-of-" && digits(rest.substr(10, 5));
}

}  // namespace

CheckpointFiles list_checkpoint_files(const std::string& directory) {
  CheckpointFiles out;
  for (const std::string& name : storage::list_files(directory)) {
    if (ends_with(name, ".safetensors.index.json")) out.indexes.push_back(name);
    if (ends_with(name, ".safetensors")) out.files.push_back(name);
  }
  return out;
}

std::string resolve_directory(const std::string& directory) {
  const std::string default_index = storage::join_path(directory, std::string(kDefaultIndex));
  if (storage::is_regular_file(default_index)) return default_index;
  const CheckpointFiles found = list_checkpoint_files(directory);
  TS_CHECK(found.indexes.size() <= 1, directory, "several indexes and none named '", kDefaultIndex,
           "': ", c10::Join(", ", found.indexes), "; open the one you mean");
  if (found.indexes.size() == 1) return storage::join_path(directory, found.indexes[0]);
  TS_CHECK(
      !found.files.empty(), directory,
      "no checkpoint here: expected an index (*.safetensors.index.json) or a .safetensors file");
  TS_CHECK(found.files.size() == 1, directory,
           "several .safetensors files and no index: ", c10::Join(", ", found.files),
           "; open the one you mean");
  return storage::join_path(directory, found.files[0]);
}

std::string format_pattern(const std::string& pattern, std::string_view suffix) {
  std::string out;
  for (size_t i = 0; i < pattern.size(); ++i) {
    if (pattern.compare(i, 8, "{suffix}") == 0) {
      out += suffix;
      i += 7;
    } else if ((pattern[i] == '{' || pattern[i] == '}') && i + 1 < pattern.size() &&
               pattern[i + 1] == pattern[i]) {
      out += pattern[i++];
    } else {
      TORCH_CHECK_VALUE(pattern[i] != '{' && pattern[i] != '}', "safetensors: filename pattern '",
                        pattern, "' has a brace that is not part of '{suffix}'");
      out += pattern[i];
    }
  }
  return out;
}

std::string shard_file_name(const std::string& pattern, size_t index, size_t count) {
  TORCH_CHECK_VALUE(index < count, "safetensors: shard ", index, " of ", count,
                    " does not exist (shards count from 0)");
  char suffix[32];
  std::snprintf(suffix, sizeof(suffix), "-%05zu-of-%05zu", index + 1, count);
  return format_pattern(pattern, suffix);
}

std::string index_file_name(const std::string& pattern) {
  return format_pattern(pattern, "") + std::string(kIndexExtension);
}

std::string write_index(const std::string& directory, const std::string& pattern,
                        const format::CheckpointIndex& index, bool durable) {
  const std::string name = index_file_name(pattern);
  const std::string json = format::index_json(index);
  storage::AtomicFileWriter writer(storage::join_path(directory, name));
  writer.write(json.data(), json.size());
  writer.commit(durable);
  return name;
}

bool remove_stale_files(const std::string& directory, const std::string& pattern,
                        const std::vector<std::string>& written, bool durable) {
  bool removed = false;
  for (const std::string& name : storage::list_files(directory)) {
    if (std::find(written.begin(), written.end(), name) != written.end()) continue;
    if (written_by_pattern(name, pattern))
      removed = storage::remove_file(storage::join_path(directory, name)) || removed;
  }
  if (removed && durable) storage::sync_directory(directory);
  return removed;
}

}  // namespace torch::safetensors
