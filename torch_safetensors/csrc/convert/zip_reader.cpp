#include "convert/zip_reader.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>

#include "check.h"
#include "convert/limits.h"

// miniz's one-call inflater, exported by LibTorch (whose zip code is miniz): raw deflate into a
// buffer of exactly the declared size; it fails rather than write past `out_size`.
extern "C" size_t tinfl_decompress_mem_to_mem(void* out, size_t out_size, const void* in,
                                              size_t in_size, int flags);

namespace torch::safetensors::convert {
namespace {

constexpr uint32_t kLocalHeader = 0x04034b50;
constexpr uint32_t kCentralHeader = 0x02014b50;
constexpr uint32_t kEndOfCentralDirectory = 0x06054b50;
constexpr uint32_t kZip64EndOfCentralDirectory = 0x06064b50;
constexpr uint32_t kZip64Locator = 0x07064b50;
constexpr uint32_t kDataDescriptor = 0x08074b50;
constexpr uint16_t kZip64ExtraId = 0x0001;
constexpr uint32_t kU32Max = 0xffffffff;
constexpr uint16_t kU16Max = 0xffff;
// The general-purpose flags whose meaning changes how an entry is read: encryption (0), a data
// descriptor after the data (3), strong encryption (6), UTF-8 names (11), a masked local header
// (13). Local header and central directory must agree on each.
constexpr uint16_t kFlagEncrypted = 1 << 0, kFlagDescriptor = 1 << 3,
                   kFlagStrongEncryption = 1 << 6, kFlagUtf8 = 1 << 11, kFlagMaskedHeader = 1 << 13;
constexpr uint16_t kFlagsThatMatter =
    kFlagEncrypted | kFlagDescriptor | kFlagStrongEncryption | kFlagUtf8 | kFlagMaskedHeader;
// Deflate's ceiling: no stream inflates more than 1032 times its length (258-byte matches in
// 2 bits), nor is longer than its data plus 5 bytes per 65535-byte stored block.
constexpr uint64_t kMaxDeflateRatio = 1032;

uint16_t u16(const uint8_t* p) { return uint16_t(p[0] | p[1] << 8); }
uint32_t u32(const uint8_t* p) { return p[0] | p[1] << 8 | p[2] << 16 | uint32_t(p[3]) << 24; }
uint64_t u64(const uint8_t* p) { return u32(p) | uint64_t(u32(p + 4)) << 32; }

// The zip64 extended-information extra field of an entry: the 64-bit values of the fields whose
// 32-bit value is the 0xffffffff marker, in the order of the spec (size, compressed size, local
// header offset). `extra` must be well formed (each field's length inside it).
struct Zip64Fields {
  bool present = false;
  std::vector<uint64_t> values;
};

Zip64Fields zip64_fields(const uint8_t* extra, size_t length, const std::string& path,
                         const std::string& entry) {
  Zip64Fields out;
  size_t at = 0;
  while (at < length) {
    TS_CHECK(length - at >= 4, path, "zip entry '", entry, "': its extra field is truncated");
    const uint16_t id = u16(extra + at), size = u16(extra + at + 2);
    TS_CHECK(size <= length - at - 4, path, "zip entry '", entry,
             "': an extra field runs past the entry's extra data");
    if (id == kZip64ExtraId) {
      TS_CHECK(!out.present, path, "zip entry '", entry, "' has two zip64 extra fields");
      TS_CHECK(size % 8 == 0 || size % 8 == 4, path, "zip entry '", entry,
               "': its zip64 extra field has ", size, " bytes");
      out.present = true;
      for (size_t i = 0; i + 8 <= size; i += 8) out.values.push_back(u64(extra + at + 4 + i));
    }
    at += 4 + size;
  }
  return out;
}

// Replaces each field that holds the zip64 marker with the next zip64 value.
void apply_zip64(const Zip64Fields& zip64, std::initializer_list<uint64_t*> fields,
                 const std::string& path, const std::string& entry, const char* header) {
  size_t next = 0;
  for (uint64_t* field : fields) {
    if (*field != kU32Max) continue;
    TS_CHECK(next < zip64.values.size(), path, "zip entry '", entry, "': its ", header,
             " marks a field as zip64 (0xffffffff) but has no zip64 value for it");
    *field = zip64.values[next++];
  }
}

std::string read_bytes(const Source& file, uint64_t offset, uint64_t length) {
  std::string out(length, '\0');
  file.read(out.data(), length, offset);
  return out;
}

const std::array<uint32_t, 256>& crc_table() {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  return table;
}

}  // namespace

std::string quoted_prefix(std::string_view text) {
  constexpr size_t kQuoted = 32;
  std::string out;
  for (char c : text.substr(0, kQuoted)) out += (c >= 0x20 && c < 0x7f) ? c : '?';
  return "'" + out + (text.size() > kQuoted ? "'..." : "'");
}

uint32_t crc32(const void* data, size_t size, uint32_t crc) {
  const auto& table = crc_table();
  const auto* p = static_cast<const uint8_t*>(data);
  crc = ~crc;
  for (size_t i = 0; i < size; ++i) crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
  return ~crc;
}

ZipReader::ZipReader(std::shared_ptr<const Source> file, std::string path)
    : file_(std::move(file)), path_(std::move(path)) {
  parse_central_directory();
}

void ZipReader::parse_central_directory() {
  const uint64_t file_size = file_->size();
  // The end-of-central-directory record: the last signature whose comment ends the file.
  constexpr uint64_t kEocd = 22;
  TS_CHECK(file_size >= kEocd, path_, "not a zip archive: ", file_size, " bytes");
  const uint64_t tail_size = std::min<uint64_t>(file_size, kEocd + kU16Max);
  const std::string tail = read_bytes(*file_, file_size - tail_size, tail_size);
  const auto* t = reinterpret_cast<const uint8_t*>(tail.data());
  int64_t found = -1;
  for (int64_t at = int64_t(tail_size - kEocd); at >= 0; --at) {
    if (u32(t + at) == kEndOfCentralDirectory &&
        uint64_t(at) + kEocd + u16(t + at + 20) == tail_size) {
      found = at;
      break;
    }
  }
  TS_CHECK(found >= 0, path_, "not a zip archive: no end-of-central-directory record");
  const uint8_t* eocd = t + found;
  const uint64_t eocd_offset = file_size - tail_size + uint64_t(found);
  uint64_t disk = u16(eocd + 4), cd_disk = u16(eocd + 6);
  uint64_t disk_entries = u16(eocd + 8), count = u16(eocd + 10);
  uint64_t cd_size = u32(eocd + 12), cd_offset = u32(eocd + 16);
  uint64_t records_end = eocd_offset;  // where the central directory must end
  const bool markers = disk == kU16Max || cd_disk == kU16Max || disk_entries == kU16Max ||
                       count == kU16Max || cd_size == kU32Max || cd_offset == kU32Max;
  // A zip64 end record (LibTorch's writer always adds one) is found by its locator; its values
  // rule, and every field of the classic record that is not the zip64 marker must agree.
  uint8_t locator[20] = {};
  if (eocd_offset >= 20) file_->read(locator, sizeof(locator), eocd_offset - 20);
  if (eocd_offset >= 20 && u32(locator) == kZip64Locator) {
    const uint64_t record_offset = u64(locator + 8);
    TS_CHECK(u32(locator + 4) == 0 && u32(locator + 16) <= 1, path_,
             "multi-disk zip archives are not supported");
    TS_CHECK(eocd_offset >= 20 + 56 && record_offset <= eocd_offset - 20 - 56, path_,
             "the zip64 locator points past itself (offset ", record_offset, ")");
    uint8_t record[56];
    file_->read(record, sizeof(record), record_offset);
    TS_CHECK(u32(record) == kZip64EndOfCentralDirectory, path_,
             "the zip64 locator points at no zip64 end record (offset ", record_offset, ")");
    auto agree = [&](uint64_t classic, uint64_t marker, uint64_t zip64_value, const char* field) {
      TS_CHECK(classic == marker || classic == zip64_value, path_, "the end record says ", field,
               " ", classic, ", the zip64 end record ", zip64_value);
      return zip64_value;
    };
    disk = agree(disk, kU16Max, u32(record + 16), "disk");
    cd_disk = agree(cd_disk, kU16Max, u32(record + 20), "central directory disk");
    disk_entries = agree(disk_entries, kU16Max, u64(record + 24), "entries on this disk");
    count = agree(count, kU16Max, u64(record + 32), "entries");
    cd_size = agree(cd_size, kU32Max, u64(record + 40), "central directory size");
    cd_offset = agree(cd_offset, kU32Max, u64(record + 48), "central directory offset");
    records_end = record_offset;
  } else {
    TS_CHECK(!markers, path_,
             "the end record marks a zip64 archive, but no zip64 locator precedes it");
  }
  TS_CHECK(disk == 0 && cd_disk == 0 && disk_entries == count, path_,
           "multi-disk zip archives are not supported");
  TS_CHECK(cd_offset <= records_end && cd_size == records_end - cd_offset, path_,
           "the central directory (", cd_size, " bytes at offset ", cd_offset,
           ") does not end where the end record begins (offset ", records_end, ")");
  // Bounded before anything is allocated: 46 bytes per entry at least, and kMaxZipEntries.
  TS_CHECK(count <= cd_size / 46 && count <= kMaxZipEntries && cd_size <= kMaxCentralDirectoryBytes,
           path_, "the archive claims ", count, " entries in a central directory of ", cd_size,
           " bytes (at most ", kMaxZipEntries, " entries and ", kMaxCentralDirectoryBytes,
           " bytes are read)");
  const std::string directory = read_bytes(*file_, cd_offset, cd_size);
  const auto* cd = reinterpret_cast<const uint8_t*>(directory.data());
  entries_.reserve(count);
  uint64_t at = 0;
  for (uint64_t i = 0; i < count; ++i) {
    TS_CHECK(cd_size - at >= 46 && u32(cd + at) == kCentralHeader, path_,
             "central directory entry ", i, " of ", count, " is truncated or has no signature");
    const uint8_t* h = cd + at;
    const size_t name_length = u16(h + 28), extra_length = u16(h + 30),
                 comment_length = u16(h + 32);
    TS_CHECK(cd_size - at - 46 >= name_length + extra_length + comment_length, path_,
             "central directory entry ", i, " runs past the central directory");
    ZipEntry entry;
    entry.name.assign(reinterpret_cast<const char*>(h + 46), name_length);
    entry.flags = u16(h + 8);
    entry.method = u16(h + 10);
    entry.crc32 = u32(h + 16);
    entry.compressed_size = u32(h + 20);
    entry.size = u32(h + 24);
    uint64_t entry_disk = u16(h + 34);
    entry.header_offset = u32(h + 42);
    const std::string& name = entry.name;
    const Zip64Fields zip64_extra = zip64_fields(h + 46 + name_length, extra_length, path_, name);
    apply_zip64(zip64_extra, {&entry.size, &entry.compressed_size, &entry.header_offset}, path_,
                name, "central directory entry");
    if (entry_disk == kU16Max) entry_disk = 0;  // a zip64 disk number: only disk 0 exists
    TS_CHECK(entry_disk == 0, path_, "zip entry '", name, "' is on disk ", entry_disk);
    TS_CHECK(!name.empty() && name.find('\0') == std::string::npos, path_,
             "central directory entry ", i, " has an empty name or one with a NUL byte");
    TS_CHECK((entry.flags & (kFlagEncrypted | kFlagStrongEncryption | kFlagMaskedHeader)) == 0,
             path_, "zip entry '", name, "' is encrypted");
    TS_CHECK(entry.method == 0 || entry.method == 8, path_, "zip entry '", name,
             "' uses compression method ", entry.method,
             " (only stored (0) and deflate (8) are read)");
    TS_CHECK(entry.method != 0 || entry.compressed_size == entry.size, path_, "zip entry '", name,
             "' is stored uncompressed but its compressed size ", entry.compressed_size,
             " differs from its size ", entry.size);
    if (entry.method == 8) {
      const uint64_t c = entry.compressed_size;
      TS_CHECK(entry.size <= kMaxDeflateRatio * c + 1024 &&
                   c <= entry.size + 5 * (entry.size / 65535 + 1) + 1024,
               path_, "zip entry '", name, "' claims ", entry.size, " bytes from ", c,
               " compressed bytes, which no deflate stream does");
    }
    TS_CHECK(by_name_.emplace(name, entries_.size()).second, path_, "zip entry '", name,
             "' is in the central directory twice");
    entries_.push_back(std::move(entry));
    at += 46 + name_length + extra_length + comment_length;
  }
  TS_CHECK(at == cd_size, path_, "the central directory has ", cd_size - at, " bytes after its ",
           count, " entries");

  // Local headers, in file order: each agrees with its central entry, and entries do not overlap
  // one another or the central directory.
  std::vector<ZipEntry*> order;
  for (ZipEntry& entry : entries_) order.push_back(&entry);
  std::stable_sort(order.begin(), order.end(), [](const ZipEntry* a, const ZipEntry* b) {
    return a->header_offset < b->header_offset;
  });
  for (size_t i = 0; i < order.size(); ++i) {
    const uint64_t limit = i + 1 < order.size() ? order[i + 1]->header_offset : cd_offset;
    uint64_t end = 0;
    check_local_header(*order[i], cd_offset, end);
    TS_CHECK(end <= limit, path_, "zip entry '", order[i]->name, "' (offset ",
             order[i]->header_offset, " to ", end, ") overlaps ",
             i + 1 < order.size() ? "zip entry '" + order[i + 1]->name + "'"
                                  : std::string("the central directory"));
  }
}

void ZipReader::check_local_header(ZipEntry& entry, uint64_t data_limit, uint64_t& end) {
  const std::string& name = entry.name;
  TS_CHECK(entry.header_offset <= data_limit && data_limit - entry.header_offset >= 30, path_,
           "zip entry '", name, "': its local header (offset ", entry.header_offset,
           ") lies past the data of the archive");
  uint8_t h[30];
  file_->read(h, sizeof(h), entry.header_offset);
  TS_CHECK(u32(h) == kLocalHeader, path_, "zip entry '", name, "': no local header at offset ",
           entry.header_offset);
  const uint16_t flags = u16(h + 6), method = u16(h + 8);
  const uint32_t crc = u32(h + 14);
  uint64_t compressed = u32(h + 18), size = u32(h + 22);
  const size_t name_length = u16(h + 26), extra_length = u16(h + 28);
  TS_CHECK(method == entry.method, path_, "zip entry '", name,
           "': the local header says compression method ", method, ", the central directory says ",
           entry.method);
  TS_CHECK((flags & kFlagsThatMatter) == (entry.flags & kFlagsThatMatter), path_, "zip entry '",
           name, "': the local header's flags 0x", c10::str(std::hex, flags),
           " disagree with the central directory's 0x", c10::str(std::hex, entry.flags));
  const uint64_t variable = 30 + uint64_t(name_length) + extra_length;
  TS_CHECK(data_limit - entry.header_offset >= variable, path_, "zip entry '", name,
           "': its local header runs past the data of the archive");
  const std::string rest = read_bytes(*file_, entry.header_offset + 30, name_length + extra_length);
  TS_CHECK(std::string_view(rest).substr(0, name_length) == name, path_, "zip entry '", name,
           "': the local header names it ",
           quoted_prefix(std::string_view(rest).substr(0, name_length)));
  const Zip64Fields zip64_extra = zip64_fields(
      reinterpret_cast<const uint8_t*>(rest.data()) + name_length, extra_length, path_, name);
  apply_zip64(zip64_extra, {&size, &compressed}, path_, name, "local header");
  // With a data descriptor the local header may leave CRC and sizes zero; what it does give must
  // still agree.
  const bool descriptor = (flags & kFlagDescriptor) != 0;
  auto agrees = [&](uint64_t local, uint64_t central) {
    return local == central || (descriptor && local == 0);
  };
  TS_CHECK(agrees(crc, entry.crc32) && agrees(compressed, entry.compressed_size) &&
               agrees(size, entry.size),
           path_, "zip entry '", name, "': the local header says CRC ", crc, ", ", compressed,
           " compressed bytes and ", size, " bytes; the central directory says CRC ", entry.crc32,
           ", ", entry.compressed_size, " and ", entry.size);
  entry.data_offset = entry.header_offset + variable;
  TS_CHECK(data_limit - entry.data_offset >= entry.compressed_size, path_, "zip entry '", name,
           "': its ", entry.compressed_size, " bytes of data at offset ", entry.data_offset,
           " run past the data of the archive (which ends at offset ", data_limit, ")");
  end = entry.data_offset + entry.compressed_size;
  if (!descriptor) return;
  // The data descriptor: [signature] CRC, compressed size, size (4 or 8 bytes each).
  uint8_t d[24] = {};
  const uint64_t available = std::min<uint64_t>(sizeof(d), data_limit - end);
  file_->read(d, available, end);
  const size_t signature = available >= 4 && u32(d) == kDataDescriptor ? 4 : 0;
  for (const size_t width : {size_t(4), size_t(8)}) {
    const size_t length = signature + 4 + 2 * width;
    if (length > available) continue;
    const uint8_t* p = d + signature;
    const uint64_t c = width == 4 ? u32(p + 4) : u64(p + 4);
    const uint64_t s = width == 4 ? u32(p + 4 + width) : u64(p + 4 + width);
    if (u32(p) == entry.crc32 && c == entry.compressed_size && s == entry.size) {
      end += length;
      return;
    }
  }
  TS_FAIL(path_, "zip entry '", name, "': its data descriptor (offset ", end,
          ") does not match the central directory's CRC ", entry.crc32, " and sizes ",
          entry.compressed_size, " / ", entry.size);
}

const ZipEntry* ZipReader::find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &entries_[it->second];
}

void ZipReader::read_into(const ZipEntry& entry, void* out) const {
  if (entry.method == 0) {
    file_->read(out, entry.size, entry.data_offset);
  } else {
    std::string compressed;
    const uint8_t* in = file_->data();
    if (in != nullptr) {
      in += entry.data_offset;
    } else {
      compressed = read_bytes(*file_, entry.data_offset, entry.compressed_size);
      in = reinterpret_cast<const uint8_t*>(compressed.data());
    }
    uint8_t none = 0;
    const size_t inflated = tinfl_decompress_mem_to_mem(
        entry.size == 0 ? &none : out, size_t(entry.size), in, size_t(entry.compressed_size), 0);
    TS_CHECK(inflated == entry.size, path_, "zip entry '", entry.name,
             "': its deflate stream does not inflate to the ", entry.size,
             " bytes the central directory declares");
  }
  TS_CHECK(crc32(out, size_t(entry.size)) == entry.crc32, path_, "zip entry '", entry.name,
           "': CRC mismatch (the data is corrupt)");
}

std::string ZipReader::read(const ZipEntry& entry, uint64_t limit, const char* what) const {
  TS_CHECK(entry.size <= limit, path_, "zip entry '", entry.name, "' is ", entry.size,
           " bytes once inflated, more than the ", limit, " bytes ", what);
  TS_CHECK(entry.method == 0 || entry.size <= kMaxRecordInflation * entry.compressed_size + 1024,
           path_, "zip entry '", entry.name, "' inflates ", entry.compressed_size, " bytes to ",
           entry.size, ", more than the ", kMaxRecordInflation,
           " times a record read whole may (a compression bomb, not a checkpoint)");
  std::string out(entry.size, '\0');
  read_into(entry, out.data());
  return out;
}

}  // namespace torch::safetensors::convert
