// `convert IN OUT`: a torch.save checkpoint to safetensors, without running code from it;
// safetensors to ExecuTorch's .ptd (--to ptd) and a .ptd back; a quantized safetensors checkpoint
// to a dense one (--dequantize).
#include <sys/stat.h>

#include <cctype>
#include <iostream>

#include "common.h"
#include "torch_safetensors/convert.h"
#include "torch_safetensors/dtype.h"
#include "torch_safetensors/executorch.h"
#include "torch_safetensors/header.h"
#include "torch_safetensors/quant.h"
#include "torch_safetensors/serialize.h"
#include "torch_safetensors/sharded.h"
#include "torch_safetensors/source.h"

namespace torch::safetensors::cli {
namespace {

const char* kHelp =
    "usage: torch-safetensors convert IN OUT [--max-shard-size SIZE] [--dtype DTYPE]\n"
    "                                 [--key PATH] [--strict] [--metadata-scalars]\n"
    "       torch-safetensors convert IN OUT --dequantize [--dtype DTYPE] [--max-shard-size SIZE]\n"
    "       torch-safetensors convert IN OUT --to ptd [--strip-prefix PREFIX] [--alignment N]\n"
    "\n"
    "Converts a torch.save checkpoint to safetensors. IN is a .pt/.pth/.bin file (torch.save's\n"
    "zip format, torch 1.6 and later; LibTorch's torch::save and TorchScript's torch.jit.save\n"
    "archives too), a pytorch_model.bin.index.json, or a directory holding one of those. The\n"
    "pickle is read by a restricted unpickler that never imports or runs anything: an object of\n"
    "any other class is an inert placeholder, looked into only for the tensors it holds.\n"
    "\n"
    "Nested dicts flatten to dotted names ({\"model\": {\"w\": ...}} -> model.w), list and tuple\n"
    "elements by index (optimizer_states.0.state.0.exp_avg), objects' attributes by name (a\n"
    "TorchScript module's fc.weight). What holds no tensor is skipped and listed on stderr\n"
    "(its path and type). Tensors sharing\n"
    "memory (tied weights) are written once, as safetensors' save_model does: the dropped names\n"
    "are recorded in the metadata as dropped -> kept. The metadata has format=pt.\n"
    "\n"
    "options:\n"
    "  --max-shard-size SIZE   write OUT as a directory of shards of at most SIZE (\"5GB\",\n"
    "                          \"500MB\", or bytes) and a model.safetensors.index.json, as\n"
    "                          huggingface_hub does; without it OUT is one .safetensors file\n"
    "  --dtype DTYPE           cast F64/F32/F16/BF16 tensors to DTYPE (F32, F16 or BF16);\n"
    "                          integer, bool, FP8 and complex tensors keep their dtype\n"
    "  --durable               fsync every file written and its folder before exiting\n"
    "  --key PATH              convert only the tensors under PATH, a dotted path into the\n"
    "                          object (state_dict, model_state, model), named relative to it\n"
    "  --strict                refuse anything but (nested) dicts of tensors, naming its path\n"
    "                          (and the global, for an object), instead of skipping it\n"
    "  --metadata-scalars      keep ints, floats, bools and strings of plain dicts (in PATH or\n"
    "                          beside the way to it: step, epoch) as metadata entries, dotted\n"
    "                          path -> the value as Python's str() writes it\n"
    "\n"
    "Dequantizing (--dequantize): IN is a quantized safetensors file, index or directory (fp8,\n"
    "GPTQ, AWQ, compressed-tensors, MX, NVFP4, DeepSeek-V4: what `inspect` recognises); OUT gets\n"
    "every quantized weight dense under its dense name, in DTYPE (default BF16), its scales and\n"
    "other companions dropped, and every other tensor as stored (cast by --dtype when given).\n"
    "Weights are made and written one at a time per file being written, so memory holds a few\n"
    "weights, never the model. OUT is one file, or with --max-shard-size a directory of shards\n"
    "and an index. The metadata is format=pt.\n"
    "\n"
    "ExecuTorch (.ptd, the FlatTensor file of a program's external weights):\n"
    "  --to ptd                IN is a safetensors file, index or directory: write OUT as a\n"
    "                          .ptd, each tensor under its name (ExecuTorch's keys are the\n"
    "                          exported module's fully qualified names)\n"
    "  --strip-prefix PREFIX   with --to ptd: drop PREFIX from the names that start with it\n"
    "  --alignment BYTES       with --to ptd: segment alignment, a power of two (default 128)\n"
    "  IN a .ptd file          (recognised by its FT01 identifier) is written to OUT as\n"
    "                          safetensors, its keys as the names\n"
    "\n"
    "Repair: IN a safetensors file whose header is padded with NUL bytes instead of spaces\n"
    "(which no reader accepts) is written to OUT with space padding, every other byte kept.\n";

c10::ScalarType parse_cast_dtype(std::string text) {
  for (char& c : text) c = char(std::toupper(static_cast<unsigned char>(c)));
  const std::optional<Dtype> dtype = parse_dtype(text);
  if (!dtype || (*dtype != Dtype::F64 && *dtype != Dtype::F32 && *dtype != Dtype::F16 &&
                 *dtype != Dtype::BF16)) {
    throw UsageError("--dtype must be F64, F32, F16 or BF16, found '" + text + "'");
  }
  return to_scalar_type(*dtype);
}

// --key, --strict and --metadata-scalars choose what to take from a torch checkpoint.
void refuse_extract_options(const ParsedArgs& parsed, const char* input) {
  if (parsed.value("--key") || parsed.flag("--strict") || parsed.flag("--metadata-scalars")) {
    throw UsageError(std::string("--key, --strict and --metadata-scalars do not apply to ") +
                     input);
  }
}

// --to ptd, or a .ptd input: nullopt when neither applies.
std::optional<int> convert_executorch(const ParsedArgs& parsed) {
  const std::string to = parsed.value("--to").value_or("safetensors");
  if (to != "ptd" && to != "safetensors") {
    throw UsageError("--to must be safetensors or ptd, found '" + to + "'");
  }
  const std::string& in = parsed.positional[0];
  const std::string& out = parsed.positional[1];
  const bool ptd_options = parsed.value("--strip-prefix") || parsed.value("--alignment");
  if (to == "safetensors") {
    if (ptd_options) throw UsageError("--strip-prefix and --alignment go with --to ptd");
    if (!is_ptd_file(in)) return std::nullopt;
    refuse_extract_options(parsed, "a .ptd input");
    if (parsed.value("--max-shard-size") || parsed.value("--dtype")) {
      throw UsageError("--max-shard-size and --dtype do not apply to a .ptd input");
    }
    const size_t n = ptd_to_safetensors(in, SaveTo(out).durable(parsed.flag("--durable")));
    std::cout << "converted " << in << " -> " << out << ": " << n << " tensors (.ptd to "
              << "safetensors)\n";
    return 0;
  }
  if (parsed.value("--max-shard-size") || parsed.value("--dtype")) {
    throw UsageError("--max-shard-size and --dtype do not apply with --to ptd");
  }
  refuse_extract_options(parsed, "--to ptd");
  PtdOptions options;
  if (auto prefix = parsed.value("--strip-prefix")) options.strip_prefix = *prefix;
  if (auto alignment = parsed.value("--alignment")) {
    options.alignment =
        parse_unsigned_option("--alignment", *alignment, "a number of bytes, a power of two");
  }
  const Checkpoint checkpoint(in);
  save_ptd(checkpoint, SaveTo(out).durable(parsed.flag("--durable")), options);
  std::cout << "converted " << in << " -> " << out << ": " << checkpoint.size()
            << " tensors (.ptd for ExecuTorch)\n";
  return 0;
}

// A safetensors file (its 8-byte length fits the file and the JSON opens with '{'): the one
// conversion of such a file is repairing a NUL-padded header. nullopt for any other input.
std::optional<int> repair_safetensors(const ParsedArgs& parsed) {
  const std::string& in = parsed.positional[0];
  struct stat status;
  if (::stat(in.c_str(), &status) != 0 || !S_ISREG(status.st_mode)) return std::nullopt;
  const std::shared_ptr<const Source> source = file_source(in, /*mapped=*/false);
  if (source->size() < kHeaderLengthSize + 1) return std::nullopt;
  unsigned char first9[kHeaderLengthSize + 1];
  source->read(first9, sizeof(first9), 0);
  uint64_t length = 0;
  for (int i = 7; i >= 0; --i) length = (length << 8) | first9[i];
  if (first9[8] != '{' || length > source->size() - kHeaderLengthSize) return std::nullopt;
  if (parsed.value("--to").value_or("safetensors") != "safetensors") return std::nullopt;
  if (parsed.value("--max-shard-size") || parsed.value("--dtype")) {
    throw UsageError(
        "a safetensors input is only repaired (a NUL-padded header): "
        "--max-shard-size and --dtype do not apply to it");
  }
  refuse_extract_options(parsed, "a safetensors input (only repaired)");
  const std::string& out = parsed.positional[1];
  repair_header_padding(in, SaveTo(out).durable(parsed.flag("--durable")));
  std::cout << "repaired " << in << " -> " << out
            << ": the header's NUL padding is now spaces; every other byte is unchanged\n";
  return 0;
}

uint64_t parse_shard_size(const std::string& size) {
  // A plain number is bytes; otherwise huggingface_hub's units ("5GB").
  const char* kExpected =
      "a number of bytes (at most 18446744073709551615) or a size with a unit "
      "(KB, MB, GB, TB: \"5GB\")";
  if (!size.empty() && size.find_first_not_of("0123456789") == std::string::npos) {
    return parse_unsigned_option("--max-shard-size", size, kExpected);
  }
  try {
    return parse_size(size);
  } catch (const c10::Error&) {
    return parse_unsigned_option("--max-shard-size", size, kExpected);  // throws the UsageError
  }
}

// --dequantize: the dense checkpoint of a quantized one, streamed (save_sharded of
// StreamedTensors, each weight dequantized when its bytes are written).
int convert_dequantized(const ParsedArgs& parsed) {
  if (parsed.value("--to") || parsed.value("--strip-prefix") || parsed.value("--alignment")) {
    throw UsageError(
        "--dequantize writes safetensors: --to, --strip-prefix and --alignment "
        "do not apply");
  }
  refuse_extract_options(parsed, "--dequantize (a safetensors input)");
  const std::string& in = parsed.positional[0];
  const std::string& out = parsed.positional[1];
  const std::optional<std::string> cast = parsed.value("--dtype");
  const c10::ScalarType dtype = cast ? parse_cast_dtype(*cast) : c10::kBFloat16;
  const quant::DenseView dense(Checkpoint(in), dtype);
  std::vector<StreamedTensor> tensors;
  size_t quantized = 0;
  for (const std::string& name : dense.keys()) {
    const auto found = dense.quantized().find(name);
    if (found != dense.quantized().end()) {
      ++quantized;
      tensors.push_back(
          {name, dtype, found->second.shape, [&dense, name] { return dense.tensor(name); }});
      continue;
    }
    // A view of the mapping (no byte read) gives torch's dtype and sizes (F4: pairs of values).
    const at::Tensor stored = dense.checkpoint().tensor(name);
    const c10::ScalarType type = stored.scalar_type();
    const bool recast = cast && (type == c10::kDouble || type == c10::kFloat ||
                                 type == c10::kHalf || type == c10::kBFloat16);
    const c10::ScalarType written = recast ? dtype : type;
    tensors.push_back({name, written, stored.sizes().vec(), [&dense, name, written] {
                         return dense.checkpoint().tensor(name).to(written);
                       }});
  }
  ShardOptions options;
  options.durable = parsed.flag("--durable");
  std::string directory = out;
  if (auto size = parsed.value("--max-shard-size")) {
    options.max_shard_size = parse_shard_size(*size);
  } else {  // one file OUT: the pattern is its name, and nothing else in its folder is touched
    const size_t slash = out.find_last_of('/');
    directory = slash == std::string::npos ? "." : out.substr(0, slash + 1);
    options.filename_pattern = out.substr(slash == std::string::npos ? 0 : slash + 1);
    options.max_shard_size = UINT64_MAX;
    options.remove_stale = false;
  }
  const SaveReport report = save_sharded(tensors, directory, options);
  const size_t shards = report.files.size() > 1 ? report.files.size() - 1 : 1;
  std::cout << "dequantized " << in << " -> " << out << ": " << quantized
            << " quantized weights to " << dtype_name(*from_scalar_type(dtype)) << ", "
            << tensors.size() << " tensors, " << human_bytes(report.bytes_written()) << " in "
            << (shards > 1 ? std::to_string(shards) + " shards and an index" : "1 file") << "\n";
  return 0;
}

}  // namespace

int convert_command(const std::vector<std::string>& args) {
  auto parsed = parse_args(args,
                           {{"--max-shard-size", true},
                            {"--dtype", true},
                            {"--to", true},
                            {"--strip-prefix", true},
                            {"--alignment", true},
                            {"--durable", false},
                            {"--key", true},
                            {"--strict", false},
                            {"--metadata-scalars", false},
                            {"--dequantize", false}},
                           kHelp, 2, 2);
  if (!parsed) return 0;
  if (parsed->flag("--dequantize")) return convert_dequantized(*parsed);
  if (auto code = repair_safetensors(*parsed)) return *code;
  if (auto code = convert_executorch(*parsed)) return *code;
  ConvertOptions options;
  if (auto size = parsed->value("--max-shard-size"))
    options.max_shard_size = parse_shard_size(*size);
  if (auto dtype = parsed->value("--dtype")) options.dtype = parse_cast_dtype(*dtype);
  options.durable = parsed->flag("--durable");
  if (auto key = parsed->value("--key")) {
    if (key->empty()) throw UsageError("--key must be a dotted path, found ''");
    options.key = *key;
  }
  options.strict = parsed->flag("--strict");
  options.metadata_scalars = parsed->flag("--metadata-scalars");
  std::optional<ProgressBar> bar;
  options.on_progress = [&](uint64_t done, uint64_t total) {
    if (!bar) bar.emplace("convert", total);
    bar->update(done);
  };
  const ConvertReport report =
      convert_torch_checkpoint(parsed->positional[0], parsed->positional[1], options);
  if (bar) bar->finish();
  // What was not converted, one line each (stderr: stdout stays the one summary line).
  for (const SkippedValue& skipped : report.skipped) {
    std::cerr << "skipped " << (skipped.path.empty() ? "(the top)" : skipped.path) << " ("
              << skipped.type << ")\n";
  }
  std::cout << "converted " << parsed->positional[0] << " -> " << parsed->positional[1] << ": "
            << report.tensors_written << " tensors";
  if (report.tensors_written != report.tensors_read) {
    std::cout << " (" << report.tensors_read - report.tensors_written
              << " tied duplicates dropped)";
  }
  // Sharded: the shards and their index; else the one file.
  const size_t shards = report.files.size() > 1 ? report.files.size() - 1 : 1;
  std::cout << ", " << human_bytes(report.bytes_written) << " in "
            << (shards > 1 ? std::to_string(shards) + " shards and an index" : "1 file");
  if (report.metadata_scalars > 0) {
    std::cout << ", " << report.metadata_scalars << " scalars as metadata";
  }
  if (!report.skipped.empty()) {
    std::cout << "; " << report.skipped.size() << " parts without tensors skipped (on stderr)";
  }
  std::cout << "\n";
  return 0;
}

}  // namespace torch::safetensors::cli
