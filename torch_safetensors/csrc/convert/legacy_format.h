// The legacy (pre-1.6, non-zip) torch.save format, still written by
// torch.save(..., _use_new_zipfile_serialization=False): five pickles one after another — the magic
// number 0x1950a86a20f9469cfc6c, the protocol version 1001, the system info, the object (storages
// as persistent ids, unpickler.h's unpickle_legacy) and the sorted list of storage keys — then,
// for each key in that list's order, an 8-byte little-endian element count and the storage's raw
// bytes (torch/serialization.py: _legacy_save, _legacy_load). Read with the restricted unpickler:
// no code runs, and a storage's location ('cpu', 'cuda:0', ...) is ignored: every storage is
// read as CPU bytes, as torch.load(map_location="cpu") reads it.
#pragma once

#include "torch_safetensors/export.h"

#include <memory>
#include <string>

#include "convert/unpickler.h"
#include "torch_safetensors/source.h"

namespace torch::safetensors::convert {

// Whether `file` starts as a pickle stream does (pickle's PROTO opcode): what torch.save's
// readers take for the legacy format.
TS_API bool is_pickle_stream(const Source& file);

// The object pickled in the legacy file `file` (named `path` in errors). Everything is checked
// against what the file holds before any storage is read: the magic number, protocol version and
// a little-endian system; the key list names exactly the storages the object names, once each;
// each storage's element count agrees with its persistent id and its bytes lie inside the file;
// nothing follows the last storage. Storages are zero-copy views of file->data() where the
// source has it and the storage's offset is a multiple of its element size, else copies.
TS_API PickleTree read_legacy_torch_file(const std::shared_ptr<const Source>& file,
                                         const std::string& path);

}  // namespace torch::safetensors::convert
