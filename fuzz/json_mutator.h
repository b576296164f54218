// A structure-aware libFuzzer mutator for safetensors files.
//
// Byte-level mutations almost never keep the u64 length prefix consistent with the JSON header,
// or the offsets consistent with the data section, so they mostly exercise the first two checks.
// This mutator splits the input into prefix / JSON / data, mutates the JSON with token-level
// edits (numbers → boundary values, dtype names, duplicated/removed/swapped members), then
// rewrites the prefix and often resizes the data to what the offsets ask for, so that inputs
// reach the layout rules and the tensor code behind them. A share of mutations stays purely
// byte-level (libFuzzer's own), so malformed prefixes and JSON keep being explored too.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

extern "C" size_t LLVMFuzzerMutate(uint8_t* data, size_t size, size_t max_size);

namespace ts_fuzz {

struct Parts {
  std::string json;
  std::string data;
};

inline bool split(const uint8_t* bytes, size_t size, Parts& parts) {
  if (size < 8) return false;
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];
  if (n > size - 8) return false;
  parts.json.assign(reinterpret_cast<const char*>(bytes) + 8, n);
  parts.data.assign(reinterpret_cast<const char*>(bytes) + 8 + n, size - 8 - n);
  return true;
}

inline std::string join(const Parts& parts, uint64_t length) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = char((length >> (8 * i)) & 0xFF);
  return out + parts.json + parts.data;
}

// Spans [begin, end) of JSON tokens of one kind, found by a scan that skips string contents.
struct Scan {
  std::vector<std::pair<size_t, size_t>> numbers;
  std::vector<std::pair<size_t, size_t>> strings;  // including the quotes
  // Members of objects at depth 1 and 2 ("key":value), without the separating comma.
  std::vector<std::pair<size_t, size_t>> members;
};

inline Scan scan(const std::string& j) {
  Scan s;
  std::vector<size_t> member_start;  // per open container: where its current member began
  std::vector<char> kinds;
  for (size_t i = 0; i < j.size();) {
    const char c = j[i];
    if (c == '"') {
      size_t k = i + 1;
      while (k < j.size() && j[k] != '"') k += (j[k] == '\\') ? 2 : 1;
      const size_t end = std::min(k + 1, j.size());
      s.strings.emplace_back(i, end);
      i = end;
      continue;
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
      size_t k = i;
      while (k < j.size() && std::strchr("-+.eE0123456789", j[k]) != nullptr) ++k;
      s.numbers.emplace_back(i, k);
      i = k;
      continue;
    }
    if (c == '{' || c == '[') {
      kinds.push_back(c);
      member_start.push_back(i + 1);
    } else if (c == ',' || c == '}' || c == ']') {
      if (!kinds.empty()) {
        if (kinds.back() == '{' && kinds.size() <= 2 && i > member_start.back()) {
          s.members.emplace_back(member_start.back(), i);
        }
        member_start.back() = i + 1;
        if (c != ',') {
          kinds.pop_back();
          member_start.pop_back();
        }
      }
    }
    ++i;
  }
  return s;
}

inline const char* kInterestingNumbers[] = {"0",
                                            "1",
                                            "2",
                                            "3",
                                            "4",
                                            "7",
                                            "8",
                                            "16",
                                            "255",
                                            "256",
                                            "-1",
                                            "-0",
                                            "1.0",
                                            "1e3",
                                            "65535",
                                            "65536",
                                            "2147483647",
                                            "2147483648",
                                            "4294967295",
                                            "4294967296",
                                            "4294967297",
                                            "9223372036854775807",
                                            "9223372036854775808",
                                            "18446744073709551615",
                                            "18446744073709551616",
                                            "4611686018427387904",
                                            "2305843009213693952",
                                            "100000000",
                                            "99999999",
                                            "100000001"};

inline const char* kDtypes[] = {
    "BOOL",    "F4",          "F6_E2M3",     "F6_E3M2", "U8",  "I8",  "F8_E5M2", "F8_E4M3",
    "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "I16",     "U16", "F16", "BF16",    "I32",
    "U32",     "F32",         "C64",         "F64",     "I64", "U64", "f32",     "F8",
    "",        "F32 "};

// The largest `end` among the data_offsets it can read, if any.
inline bool max_end_offset(const std::string& j, uint64_t& out) {
  bool found = false;
  out = 0;
  for (size_t at = j.find("\"data_offsets\""); at != std::string::npos;
       at = j.find("\"data_offsets\"", at + 1)) {
    const size_t comma = j.find(',', at + 15);
    if (comma == std::string::npos) break;
    uint64_t v = 0;
    size_t k = comma + 1;
    bool digits = false;
    while (k < j.size() && j[k] >= '0' && j[k] <= '9' && v < (uint64_t(1) << 40)) {
      v = v * 10 + uint64_t(j[k++] - '0');
      digits = true;
    }
    if (digits && v > out) out = v;
    found |= digits;
  }
  return found;
}

inline size_t mutate(uint8_t* bytes, size_t size, size_t max_size, unsigned seed) {
  std::minstd_rand rng(seed);
  auto pick = [&](size_t n) { return size_t(rng() % n); };
  Parts parts;
  const unsigned choice = unsigned(pick(100));
  if (choice < 20 || !split(bytes, size, parts)) {
    return LLVMFuzzerMutate(bytes, size, max_size);  // plain byte-level mutation
  }
  std::string& j = parts.json;
  const Scan s = scan(j);
  if (choice < 45) {
    // libFuzzer's mutations on the JSON alone; the prefix is fixed up below.
    const size_t cap = max_size > 8 + parts.data.size() ? max_size - 8 - parts.data.size() : 0;
    const size_t original = j.size();
    if (cap == 0 || original == 0 || original > cap) {
      return LLVMFuzzerMutate(bytes, size, max_size);
    }
    j.resize(cap);
    j.resize(LLVMFuzzerMutate(reinterpret_cast<uint8_t*>(&j[0]), original, cap));
  } else if (choice < 62 && !s.numbers.empty()) {
    const auto [b, e] = s.numbers[pick(s.numbers.size())];
    j.replace(b, e - b, kInterestingNumbers[pick(std::size(kInterestingNumbers))]);
  } else if (choice < 72 && !s.strings.empty()) {
    // Prefer the string after a "dtype" key; otherwise any string.
    size_t which = pick(s.strings.size());
    for (size_t tries = 0; tries < 8; ++tries) {
      const size_t k = pick(s.strings.size());
      if (k > 0 && j.compare(s.strings[k - 1].first, 7, "\"dtype\"") == 0) {
        which = k;
        break;
      }
    }
    const auto [b, e] = s.strings[which];
    j.replace(b, e - b, std::string("\"") + kDtypes[pick(std::size(kDtypes))] + "\"");
  } else if (choice < 84 && !s.members.empty()) {
    const auto [b, e] = s.members[pick(s.members.size())];
    const std::string member = j.substr(b, e - b);
    switch (pick(3)) {
      case 0:  // duplicate
        j.insert(e, "," + member);
        break;
      case 1: {  // remove, with one adjacent comma
        size_t from = b, to = e;
        if (to < j.size() && j[to] == ',') {
          ++to;
        } else if (from > 0 && j[from - 1] == ',') {
          --from;
        }
        j.erase(from, to - from);
        break;
      }
      default: {  // swap with another member (at a later position, so offsets stay valid)
        const auto [b2, e2] = s.members[pick(s.members.size())];
        if (b2 >= e) {
          const std::string other = j.substr(b2, e2 - b2);
          j.replace(b2, e2 - b2, member);
          j.replace(b, e - b, other);
        }
      }
    }
  } else if (choice < 94) {
    // Data section: make it as long as the offsets say, or nudge it.
    uint64_t end = 0;
    if (max_end_offset(j, end) && end + j.size() + 8 <= max_size && pick(4) != 0) {
      parts.data.resize(end, char(pick(256)));
    } else if (!parts.data.empty() && pick(2) == 0) {
      parts.data.pop_back();
    } else {
      parts.data.push_back(char(pick(256)));
    }
  } else {
    // Padding: spaces (valid) or something else after the JSON.
    const char pads[] = {' ', ' ', '\t', '\n', '\0', 'x'};
    j.append(1 + pick(8), pads[pick(sizeof(pads))]);
  }
  std::string out = join(parts, j.size());
  if (pick(50) == 0) {  // rarely, an inconsistent prefix
    const uint64_t lies[] = {0, j.size() + 1, j.size() - (j.empty() ? 0 : 1), 100000001ull, ~0ull};
    const uint64_t lie = lies[pick(std::size(lies))];
    for (int i = 0; i < 8; ++i) out[i] = char((lie >> (8 * i)) & 0xFF);
  }
  if (out.size() > max_size) return LLVMFuzzerMutate(bytes, size, max_size);
  std::memcpy(bytes, out.data(), out.size());
  return out.size();
}

}  // namespace ts_fuzz

extern "C" size_t LLVMFuzzerCustomMutator(uint8_t* data, size_t size, size_t max_size,
                                          unsigned int seed) {
  return ts_fuzz::mutate(data, size, max_size, seed);
}
