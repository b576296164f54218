// What saving any module is, once its tensors are named: shared by nn::Module and TorchScript.
#pragma once

#include "torch_safetensors/export.h"

#include <optional>
#include <string>
#include <unordered_set>
#include <vector>

#include <torch/nn/module.h>

#include "storage/io.h"
#include "torch_safetensors/serialize.h"

namespace torch::safetensors {

// A module's parameters and (defined) buffers, with dotted names.
TS_API NamedTensors module_tensors(const torch::nn::Module& module);

// The tie policy applied for saving: the entries to write, each group of tensors sharing memory
// by the one name it keeps (preferring names not in `discard`), each dropped name added to
// `metadata` as dropped → kept unless the key is there already. A group of two or more names none
// of which covers its storage is refused, naming `destination`; with `refuse_partial_views`, so is
// a lone tensor that does not cover its storage (huggingface_hub's save_torch_state_dict refuses
// those too, as it stores storage sizes).
TS_API std::vector<SaveEntry> drop_tied_duplicates(const NamedTensors& tensors, Metadata& metadata,
                                                   const std::unordered_set<std::string>& discard,
                                                   const std::string& destination,
                                                   bool refuse_partial_views = false);

// save() into a file writer that the caller commits: for saves of several files that must all
// be written before any replaces an old one. `on_written`, if set, is told each chunk's length.
TS_API void write_file(const std::vector<SaveEntry>& entries, const std::optional<Metadata>& metadata,
                storage::AtomicFileWriter& writer, const std::string& name,
                const std::function<void(uint64_t)>& on_written = nullptr);

// Writes `tensors` with tied ones once: of each group sharing memory the name the tie policy
// keeps is written and each dropped name recorded in the metadata as dropped → kept (the
// reference's save_model); a group none of whose names covers its storage is refused.
TS_API void save_named_module(const NamedTensors& tensors, const SaveTo& to,
                              const std::optional<Metadata>& metadata);

}  // namespace torch::safetensors
