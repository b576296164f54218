// `inspect PATH`: what a checkpoint holds, as a table or as JSON.
#include <algorithm>
#include <cstdio>
#include <iostream>
#include <map>

#include "common.h"
#include "format/json_writer.h"
#include "torch_safetensors/checkpoint.h"
#include "torch_safetensors/quant.h"

namespace torch::safetensors::cli {
namespace {

const char* kHelp =
    "usage: torch-safetensors inspect PATH [--json] [--filter PATTERN]\n"
    "\n"
    "Lists the tensors of a safetensors file, an index (*.safetensors.index.json) or a directory\n"
    "holding either: name, dtype, shape, bytes, offset (in the file's data section) and shard;\n"
    "then the metadata, the totals, a summary per dtype and how many tensors a zero-copy load\n"
    "would copy (offset in the file not a multiple of their element size; see verify\n"
    "--alignment and realign). A quantized checkpoint (fp8, GPTQ, AWQ, compressed-tensors,\n"
    "MXFP4/6/8, NVFP4, DeepSeek-V4) also gets a `quantization` column: each stored tensor's\n"
    "scheme, its role in its weight (packed, scale, zero_point, ...) and the dense weight's\n"
    "name. Only headers (and config.json beside them) are read.\n"
    "\n"
    "options:\n"
    "  --json              one JSON document on stdout instead of the table\n"
    "  --filter PATTERN    only tensors whose name matches the shell-style glob PATTERN\n"
    "                      (a PATTERN without *, ? or [ matches names containing it)\n";

struct Row {
  std::string name, dtype, shape, shard;
  const TensorInfo* info;
};

// A stored tensor's part in a quantized weight.
struct QuantPart {
  std::string scheme, role, weight;
};

// Every quantized weight's stored tensors (quant::find_quantized over the headers and the
// checkpoint's config), by stored name; `error` says why none could be described.
struct Quantization {
  std::vector<quant::QuantizedWeight> weights;
  std::map<std::string, QuantPart> parts;
  std::string error;
};

Quantization quantization_of(const Checkpoint& checkpoint) {
  Quantization q;
  try {
    q.weights = quant::find_quantized(checkpoint, quant::read_config(checkpoint));
  } catch (const c10::Error& e) {
    q.error = e.what_without_backtrace();
    return q;
  }
  for (const quant::QuantizedWeight& w : q.weights) {
    for (const auto& [role, stored] : w.tensors)
      q.parts[stored] = {std::string(quant::scheme_name(w.scheme)), role, w.name};
  }
  return q;
}

std::string part_text(const Quantization& q, const std::string& name) {
  const auto found = q.parts.find(name);
  if (found == q.parts.end()) return "-";
  return found->second.scheme + " " + found->second.role + " of " + found->second.weight;
}

struct Totals {
  uint64_t tensors = 0, parameters = 0, bytes = 0;
  void add(const TensorInfo& info) {
    tensors += 1;
    parameters += uint64_t(info.numel());
    bytes += info.nbytes();
  }
};

void append_totals(std::string& out, const Totals& totals) {
  out += "{\"tensors\": ";
  format::append_uint(out, totals.tensors);
  out += ", \"parameters\": ";
  format::append_uint(out, totals.parameters);
  out += ", \"bytes\": ";
  format::append_uint(out, totals.bytes);
  out += "}";
}

// The listed tensors that a zero-copy load copies (alignment_of, per file).
struct Copied {
  uint64_t tensors = 0, bytes = 0;
};

Copied copied_on_load(const Checkpoint& checkpoint, const std::vector<Row>& rows) {
  std::map<std::string, std::vector<std::string>> names_by_shard;
  for (const Row& row : rows) names_by_shard[row.shard].push_back(row.name);
  Copied copied;
  for (const auto& [shard, names] : names_by_shard) {
    const Alignment a = alignment_of(checkpoint.file(names.front()), names, 1);
    copied.tensors += a.copied_on_load.size();
    copied.bytes += a.copied_bytes;
  }
  return copied;
}

std::string json_document(const Checkpoint& checkpoint, const std::vector<Row>& rows,
                          const Totals& totals, const std::map<std::string, Totals>& by_dtype,
                          const Copied& copied, const Quantization& q) {
  std::string out = "{\"path\": ";
  format::append_json_string(out, checkpoint.path());
  out += ", \"index\": ";
  if (checkpoint.index_path()) {
    format::append_json_string(out, *checkpoint.index_path());
  } else {
    out += "null";
  }
  out += ", \"files\": [";
  for (size_t i = 0; i < checkpoint.shard_files().size(); ++i) {
    if (i > 0) out += ", ";
    format::append_json_string(out, checkpoint.shard_files()[i]);
  }
  out += "], \"metadata\": ";
  if (checkpoint.metadata()) {
    out += "{";
    bool first = true;
    for (const auto& [key, value] : *checkpoint.metadata()) {
      if (!first) out += ", ";
      first = false;
      format::append_json_string(out, key);
      out += ": ";
      format::append_json_string(out, value);
    }
    out += "}";
  } else {
    out += "null";
  }
  out += ",\n \"tensors\": [";
  for (size_t i = 0; i < rows.size(); ++i) {
    const Row& row = rows[i];
    out += i > 0 ? ",\n  " : "\n  ";
    out += "{\"name\": ";
    format::append_json_string(out, row.name);
    out += ", \"dtype\": ";
    format::append_json_string(out, row.dtype);
    out += ", \"shape\": " + row.shape + ", \"bytes\": ";
    format::append_uint(out, row.info->nbytes());
    out += ", \"offsets\": [";
    format::append_uint(out, row.info->begin);
    out += ", ";
    format::append_uint(out, row.info->end);
    out += "], \"shard\": ";
    format::append_json_string(out, row.shard);
    if (!q.weights.empty()) {
      out += ", \"quantization\": ";
      const auto found = q.parts.find(row.name);
      if (found == q.parts.end()) {
        out += "null";
      } else {
        out += "{\"scheme\": ";
        format::append_json_string(out, found->second.scheme);
        out += ", \"role\": ";
        format::append_json_string(out, found->second.role);
        out += ", \"weight\": ";
        format::append_json_string(out, found->second.weight);
        out += "}";
      }
    }
    out += "}";
  }
  out += "],\n \"total\": ";
  append_totals(out, totals);
  out += ",\n \"dtypes\": {";
  bool first = true;
  for (const auto& [dtype, dtype_totals] : by_dtype) {
    if (!first) out += ", ";
    first = false;
    format::append_json_string(out, dtype);
    out += ": ";
    append_totals(out, dtype_totals);
  }
  out += "},\n \"copied_on_load\": {\"tensors\": ";
  format::append_uint(out, copied.tensors);
  out += ", \"bytes\": ";
  format::append_uint(out, copied.bytes);
  out += "}";
  if (!q.weights.empty() || !q.error.empty()) {
    out += ",\n \"quantized_weights\": [";
    for (size_t i = 0; i < q.weights.size(); ++i) {
      const quant::QuantizedWeight& w = q.weights[i];
      out += i > 0 ? ",\n  " : "\n  ";
      out += "{\"name\": ";
      format::append_json_string(out, w.name);
      out += ", \"scheme\": ";
      format::append_json_string(out, quant::scheme_name(w.scheme));
      out += ", \"bits\": " + std::to_string(w.bits) +
             ", \"group_size\": " + std::to_string(w.group_size) +
             ", \"shape\": " + shape_text(w.shape) + "}";
    }
    out += "]";
    if (!q.error.empty()) {
      out += ", \"quantization_error\": ";
      format::append_json_string(out, q.error);
    }
  }
  out += "}\n";
  return out;
}

void print_table(const std::vector<std::vector<std::string>>& table, std::ostream& out) {
  std::vector<size_t> widths;
  for (const auto& row : table) {
    widths.resize(std::max(widths.size(), row.size()));
    for (size_t c = 0; c < row.size(); ++c) widths[c] = std::max(widths[c], row[c].size());
  }
  for (const auto& row : table) {
    std::string line;
    for (size_t c = 0; c < row.size(); ++c) {
      std::string cell = row[c];
      // Numbers are right-aligned, text left-aligned.
      const bool numeric =
          !cell.empty() && cell.find_first_not_of("0123456789") == std::string::npos;
      const std::string pad(widths[c] - cell.size(), ' ');
      line += numeric ? pad + cell : cell + (c + 1 < row.size() ? pad : "");
      if (c + 1 < row.size()) line += "  ";
    }
    out << line << "\n";
  }
}

}  // namespace

int inspect_command(const std::vector<std::string>& args) {
  auto parsed = parse_args(args, {{"--json", false}, {"--filter", true}}, kHelp, 1, 1);
  if (!parsed) return 0;
  const Checkpoint checkpoint(parsed->positional[0]);
  const std::optional<std::string> filter = parsed->value("--filter");

  std::vector<Row> rows;
  Totals totals;
  std::map<std::string, Totals> by_dtype;
  for (const std::string& name : checkpoint.keys()) {
    if (filter && !matches_filter(name, *filter)) continue;
    const TensorInfo& info = checkpoint.info(name);
    Row row{name, std::string(dtype_name(info.dtype)), shape_text(info.shape),
            checkpoint.shard_file(name), &info};
    totals.add(info);
    by_dtype[row.dtype].add(info);
    rows.push_back(std::move(row));
  }

  const Copied copied = copied_on_load(checkpoint, rows);
  const Quantization q = quantization_of(checkpoint);
  if (parsed->flag("--json")) {
    std::cout << json_document(checkpoint, rows, totals, by_dtype, copied, q);
    return 0;
  }
  std::vector<std::vector<std::string>> table{
      {"name", "dtype", "shape", "bytes", "offset", "shard"}};
  if (!q.weights.empty()) table[0].push_back("quantization");
  for (const Row& row : rows) {
    table.push_back({row.name, row.dtype, row.shape, std::to_string(row.info->nbytes()),
                     std::to_string(row.info->begin), row.shard});
    if (!q.weights.empty()) table.back().push_back(part_text(q, row.name));
  }
  print_table(table, std::cout);
  if (!q.weights.empty()) {
    std::map<std::string, size_t> per_scheme;
    for (const auto& w : q.weights) ++per_scheme[std::string(quant::scheme_name(w.scheme))];
    std::cout << "\nquantized weights:";
    for (const auto& [scheme, count] : per_scheme) std::cout << " " << count << " " << scheme;
    std::cout << "\n";
  }
  if (!q.error.empty()) std::cout << "\nquantization: not described: " << q.error << "\n";

  std::cout << "\nmetadata:";
  if (!checkpoint.metadata() || checkpoint.metadata()->empty()) {
    std::cout << " none\n";
  } else {
    std::cout << "\n";
    for (const auto& [key, value] : *checkpoint.metadata()) {
      std::cout << "  " << key << ": " << value << "\n";
    }
  }

  std::cout << "\n";
  std::vector<std::vector<std::string>> summary{
      {"dtype", "tensors", "parameters", "bytes", "size"}};
  for (const auto& [dtype, t] : by_dtype) {
    summary.push_back({dtype, std::to_string(t.tensors), std::to_string(t.parameters),
                       std::to_string(t.bytes), human_bytes(t.bytes)});
  }
  summary.push_back({"total", std::to_string(totals.tensors), std::to_string(totals.parameters),
                     std::to_string(totals.bytes), human_bytes(totals.bytes)});
  print_table(summary, std::cout);
  std::cout << "\nzero-copy load: " << copied.tensors
            << " tensor(s) not aligned to their element size would be copied";
  if (copied.tensors > 0) std::cout << " (" << human_bytes(copied.bytes) << ")";
  std::cout << "\n"
            << checkpoint.shard_files().size() << " file(s)"
            << (checkpoint.index_path() ? ", index " + *checkpoint.index_path() : std::string())
            << "\n";
  return 0;
}

}  // namespace torch::safetensors::cli
