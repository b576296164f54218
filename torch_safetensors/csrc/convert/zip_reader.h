// The zip archive of a torch.save checkpoint, read with code of ours rather than LibTorch's reader
// (which trusts local headers where they disagree with the central directory, and reads records
// whole without a bound). The central directory is the one truth: every entry's local header,
// zip64 extra fields and data descriptor must agree with it, entries must not overlap, and no
// entry's data may run past the file; any disagreement is an error naming the archive and the
// entry, raised when the archive is opened, before any record is read.
#pragma once

#include "torch_safetensors/export.h"

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "torch_safetensors/source.h"

namespace torch::safetensors::convert {

struct TS_API ZipEntry {
  std::string name;
  uint16_t method = 0;  // 0: stored, 8: deflated (the only two accepted)
  uint16_t flags = 0;
  uint32_t crc32 = 0;
  uint64_t compressed_size = 0;
  uint64_t size = 0;           // inflated
  uint64_t header_offset = 0;  // of the local header
  uint64_t data_offset = 0;    // of the (compressed) data, after the local header
};

class TS_API ZipReader {
 public:
  // Parses and checks the whole archive (see above). `path` names it in errors.
  ZipReader(std::shared_ptr<const Source> file, std::string path);

  const ZipEntry* find(const std::string& name) const;
  const std::vector<ZipEntry>& entries() const { return entries_; }

  // A record read whole into memory: refused before anything is allocated when its inflated size
  // is above `limit` (`what` says which limit), inflated to exactly its size, CRC checked.
  std::string read(const ZipEntry& entry, uint64_t limit, const char* what) const;
  // The same into `out` (entry.size bytes), for storages.
  void read_into(const ZipEntry& entry, void* out) const;

 private:
  void parse_central_directory();
  void check_local_header(ZipEntry& entry, uint64_t data_limit, uint64_t& end);

  std::shared_ptr<const Source> file_;
  std::string path_;
  std::vector<ZipEntry> entries_;
  std::unordered_map<std::string, size_t> by_name_;
};

// At most the first 32 bytes of `text`, quoted, non-printable bytes as '?': how errors show a
// record's content.
TS_API std::string quoted_prefix(std::string_view text);

// CRC-32 (zip's polynomial), continuing from `crc`.
TS_API uint32_t crc32(const void* data, size_t size, uint32_t crc = 0);

}  // namespace torch::safetensors::convert
