// One torch.save zip archive from any Source (torch_zip.cpp): what load_torch_checkpoint does for
// each file, here for the fuzzer, which reads archives from memory.
#pragma once

#include "torch_safetensors/export.h"

#include <memory>
#include <string>

#include "convert/unpickler.h"
#include "torch_safetensors/serialize.h"
#include "torch_safetensors/source.h"

namespace torch::safetensors::convert {

// The tensors of the archive `file`, named `path` in errors; storages stored uncompressed view
// file->data() when the source has it.
TS_API NamedTensors load_torch_archive(const std::shared_ptr<const Source>& file,
                                       const std::string& path);

// The same with extract_tensors' choices (unpickler.h): torch.save, torch::save and TorchScript
// archives alike (data.pkl's object tree; the code/ records are never read).
TS_API Extracted read_torch_archive(const std::shared_ptr<const Source>& file,
                                    const std::string& path, const std::string& key, bool strict,
                                    bool metadata_scalars);

}  // namespace torch::safetensors::convert
