// Reading the legacy torch.save format (legacy_format.h) in two passes over its pickles: the
// first learns where the object pickle ends and which storages it names (with no storage data),
// so that the key list and every storage record are checked against the file before the second
// builds the object on the storages' real bytes.
#include "convert/legacy_format.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <c10/core/CPUAllocator.h>

#include "check.h"
#include "convert/limits.h"

namespace torch::safetensors::convert {
namespace {

// The magic number 0x1950a86a20f9469cfc6c as pickle writes it: LONG1 of 10 little-endian bytes,
// then STOP. torch's MAGIC_NUMBER and PROTOCOL_VERSION (serialization.py).
constexpr uint8_t kPickledMagic[] = {0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9,
                                     0x20, 0x6a, 0xa8, 0x50, 0x19, '.'};
constexpr int64_t kLegacyProtocolVersion = 1001;
constexpr uint64_t kElementCountBytes = 8;

std::string hex_prefix(std::string_view bytes) {
  std::string out;
  for (size_t i = 0; i < std::min<size_t>(bytes.size(), 16); ++i) {
    char byte[4];
    std::snprintf(byte, sizeof(byte), "%02x", static_cast<unsigned char>(bytes[i]));
    out += (i ? " " : "") + std::string(byte);
  }
  return out + (bytes.size() > 16 ? " ..." : "");
}

// The first pickle: PROTO 2-5, a FRAME (protocol 4 and later), the magic number, STOP. Returns
// the offset just past it.
size_t read_magic(std::string_view head, const std::string& path) {
  size_t at = 2;
  bool magic =
      head.size() >= 2 && static_cast<uint8_t>(head[0]) == 0x80 && head[1] >= 2 && head[1] <= 5;
  if (magic && head.size() > at && static_cast<uint8_t>(head[at]) == 0x95) at += 9;
  magic = magic && head.size() >= at + sizeof(kPickledMagic) &&
          std::memcmp(head.data() + at, kPickledMagic, sizeof(kPickledMagic)) == 0;
  TS_CHECK(magic, path,
           "a pickle stream, but not a torch.save file: the legacy format starts with its magic "
           "number 0x1950a86a20f9469cfc6c, pickled (80 02 8a 0a 6c fc 9c 46 ...), found ",
           hex_prefix(head));
  return at + sizeof(kPickledMagic);
}

// A pickle that names no storage (the version, the system info, the key list).
[[noreturn]] c10::Storage no_storage(const std::string& path, const char* what) {
  TS_FAIL(path, "the legacy format's ", what, " names a storage");
}

// What the first pass learns of a root storage.
struct NamedStorage {
  uint64_t nbytes;
  c10::ScalarType dtype;
};

void release_source(void* context) { delete static_cast<std::shared_ptr<const Source>*>(context); }

}  // namespace

bool is_pickle_stream(const Source& file) {
  uint8_t first = 0;
  if (file.size() < 2) return false;
  file.read(&first, 1, 0);
  return first == 0x80;
}

PickleTree read_legacy_torch_file(const std::shared_ptr<const Source>& file,
                                  const std::string& path) {
  const uint64_t size = file->size();
  // The pickles come first, within kMaxPickleBytes (data.pkl's limit); the storages follow.
  const uint64_t window_size = std::min<uint64_t>(size, kMaxPickleBytes);
  uint8_t* mapped = file->data();
  std::string copied;
  if (mapped == nullptr) {
    copied.resize(window_size);
    file->read(copied.data(), window_size, 0);
  }
  const std::string_view window =
      mapped ? std::string_view(reinterpret_cast<const char*>(mapped), window_size) : copied;
  // One pickle at `at`, advancing it; a pickle cut by the window says why.
  auto next_pickle = [&](size_t& at, const LegacyStorageLoader& load) {
    size_t end = 0;
    try {
      PickleTree tree = unpickle_legacy(window.substr(at), load, path, end);
      at += end;
      return tree;
    } catch (const c10::Error& e) {
      const std::string message = e.what_without_backtrace();
      if (window_size == size || message.find("pickle truncated") == std::string::npos) throw;
      TS_FAIL(path, "the legacy format's pickles take more than the first ", kMaxPickleBytes,
              " bytes of the file, the most a checkpoint's pickle may have (", message, ")");
    }
  };

  size_t at = read_magic(window, path);
  {
    const PickleTree version =
        next_pickle(at, [&](auto&&...) { return no_storage(path, "protocol version"); });
    TS_CHECK(version.root().kind == PickleValue::Kind::kInt &&
                 version.root().integer == kLegacyProtocolVersion,
             path, "the legacy format's protocol version is ", describe(version.root()),
             ", expected the int ", kLegacyProtocolVersion);
  }
  {
    const PickleTree sys_info =
        next_pickle(at, [&](auto&&...) { return no_storage(path, "system info"); });
    const PickleValue& info = sys_info.root();
    const PickleValue* little_endian = nullptr;
    if (info.kind == PickleValue::Kind::kDict) {
      for (const auto& [key, value] : info.entries) {
        if (key->kind == PickleValue::Kind::kString && key->text == "little_endian") {
          little_endian = value;
        }
      }
    }
    TS_CHECK(little_endian != nullptr && little_endian->kind == PickleValue::Kind::kBool &&
                 little_endian->boolean,
             path, "the legacy format's system info ",
             info.kind != PickleValue::Kind::kDict ? "is " + describe(info) + ", expected a dict"
             : little_endian == nullptr
                 ? std::string("has no 'little_endian' entry")
                 : "says little_endian is " + describe(*little_endian) +
                       ": the storages are in a big-endian machine's byte order (expected True)");
  }

  // Pass 1: the object with data-less storages, to find where it ends and what it names.
  const size_t object_begin = at;
  std::unordered_map<std::string, NamedStorage> named;
  {
    auto note = [&](const std::string& key, uint64_t nbytes, c10::ScalarType dtype) {
      TS_CHECK(nbytes <= size, path, "storage '", key, "' claims ", nbytes, " bytes (",
               nbytes / c10::elementSize(dtype), " ", c10::toString(dtype),
               " elements), more than the file's ", size, " bytes");
      named.emplace(key, NamedStorage{nbytes, dtype});
      return c10::Storage(c10::Storage::use_byte_size_t(), nbytes,
                          c10::DataPtr(nullptr, c10::Device(c10::kCPU)), nullptr, false);
    };
    next_pickle(at, note);
  }
  const size_t object_end = at;

  std::vector<std::string> keys;
  {
    const PickleTree key_list =
        next_pickle(at, [&](auto&&...) { return no_storage(path, "storage key list"); });
    const PickleValue& list = key_list.root();
    bool strings = list.kind == PickleValue::Kind::kList;
    for (const PickleValue* item : list.items) {
      strings = strings && item->kind == PickleValue::Kind::kString;
    }
    TS_CHECK(strings, path, "the legacy format's storage key list is ", describe(list),
             strings                                 ? ""
             : list.kind == PickleValue::Kind::kList ? " holding a non-string"
                                                     : "",
             ", expected a list of strings");
    for (const PickleValue* item : list.items) keys.push_back(item->text);
  }

  // The key list names exactly the storages the object names, once each.
  std::unordered_set<std::string> listed;
  for (const std::string& key : keys) {
    TS_CHECK(named.count(key) != 0, path, "the storage key list names storage '", key,
             "', which the pickled object does not name");
    TS_CHECK(listed.insert(key).second, path, "the storage key list names storage '", key,
             "' twice");
  }
  for (const auto& [key, storage] : named) {
    TS_CHECK(listed.count(key) != 0, path, "storage '", key,
             "' is named by the pickled object but missing from the storage key list (",
             keys.size(), " keys): the file has no data for it");
  }

  // Each record: its element count, then its bytes, all inside the file, and nothing after.
  std::unordered_map<std::string, uint64_t> data_offset;
  uint64_t offset = at;
  for (const std::string& key : keys) {
    const NamedStorage& storage = named.at(key);
    TS_CHECK(size - offset >= kElementCountBytes, path, "truncated: storage '", key,
             "''s element count at offset ", offset, " needs ", kElementCountBytes,
             " bytes, the file has ", size - offset);
    uint8_t count_bytes[kElementCountBytes];
    file->read(count_bytes, kElementCountBytes, offset);
    uint64_t count = 0;
    for (int i = int(kElementCountBytes) - 1; i >= 0; --i) count = count << 8 | count_bytes[i];
    const uint64_t elements = storage.nbytes / c10::elementSize(storage.dtype);
    TS_CHECK(count == elements, path, "storage '", key, "': the file counts ", int64_t(count),
             " elements at offset ", offset, ", its persistent id says ", elements, " ",
             c10::toString(storage.dtype), " elements");
    offset += kElementCountBytes;
    TS_CHECK(storage.nbytes <= size - offset, path, "truncated: storage '", key, "' needs ",
             storage.nbytes, " bytes at offset ", offset, ", the file has ", size - offset);
    data_offset.emplace(key, offset);
    offset += storage.nbytes;
  }
  TS_CHECK(offset == size, path, size - offset, " bytes follow the last storage (at offset ",
           offset, "), which the legacy format does not have");

  // Pass 2: the object on the storages' bytes, each checked above.
  auto load = [&](const std::string& key, uint64_t nbytes, c10::ScalarType dtype) {
    auto it = data_offset.find(key);
    TS_CHECK(it != data_offset.end() && named.at(key).nbytes == nbytes, path, "storage '", key,
             "' is not the one the first pass read");
    if (mapped != nullptr && it->second % c10::elementSize(dtype) == 0) {
      auto* context = new std::shared_ptr<const Source>(file);
      return c10::Storage(
          c10::Storage::use_byte_size_t(), nbytes,
          c10::DataPtr(mapped + it->second, context, &release_source, c10::Device(c10::kCPU)),
          nullptr, /*resizable=*/false);
    }
    c10::DataPtr data = c10::GetDefaultCPUAllocator()->allocate(nbytes);
    if (nbytes != 0) file->read(data.get(), nbytes, it->second);
    return c10::Storage(c10::Storage::use_byte_size_t(), nbytes, std::move(data), nullptr, false);
  };
  size_t object_at = object_begin;
  PickleTree object = next_pickle(object_at, load);
  TS_CHECK(object_at == object_end, path, "the object pickle ends at offset ", object_at,
           " on its second reading, ", object_end, " on its first");
  return object;
}

}  // namespace torch::safetensors::convert
