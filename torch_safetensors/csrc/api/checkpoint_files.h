// The files of a checkpoint directory, as huggingface_hub names them: what a directory holds for
// Checkpoint, shard and index names, writing the index and removing files of an earlier save.
// One place for these rules, used by Checkpoint, save_sharded and the Python DCP writer
// (torch_safetensors.distributed.StorageWriter).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "format/index.h"
#include "torch_safetensors/export.h"

namespace torch::safetensors {

// The checkpoint files in `directory`: its `*.safetensors.index.json` and `*.safetensors` files
// (regular files, symlinks followed), each sorted. Throws OSError.
struct TS_API CheckpointFiles {
  std::vector<std::string> indexes;
  std::vector<std::string> files;
};
TS_API CheckpointFiles list_checkpoint_files(const std::string& directory);

// The file a directory stands for: `model.safetensors.index.json`, else its one index, else its one
// safetensors file. A c10::Error naming the directory when it holds none, or several and no
// default.
TS_API std::string resolve_directory(const std::string& directory);

// Python's `pattern.format(suffix=suffix)` for the one field patterns have ("{{" and "}}" escape a
// brace); c10::ValueError for any other brace.
TS_API std::string format_pattern(const std::string& pattern, std::string_view suffix);

// Shard `index` (from 0) of `count` under `pattern`: "model{suffix}.safetensors" gives
// "model-00001-of-00004.safetensors" for index 0 of 4.
TS_API std::string shard_file_name(const std::string& pattern, size_t index, size_t count);

// The index's name under `pattern`: the single file's name plus ".index.json".
TS_API std::string index_file_name(const std::string& pattern);

// Writes `index` (format::index_json: huggingface_hub's bytes) to
// directory/index_file_name(pattern) atomically, fsync'ed with its directory when `durable`;
// returns the file's name.
TS_API std::string write_index(const std::string& directory, const std::string& pattern,
                               const format::CheckpointIndex& index, bool durable = false);

// Removes the files of an earlier save with `pattern` (its single file, shards and index:
// huggingface_hub's existing_files_regex) that are not in `written`; best effort, as the hub's.
// `durable`: the directory is fsync'ed after a removal. Returns whether a file was removed.
TS_API bool remove_stale_files(const std::string& directory, const std::string& pattern,
                               const std::vector<std::string>& written, bool durable = false);

}  // namespace torch::safetensors
