// `convert IN OUT`: a torch.save checkpoint to safetensors, without running code from it.
#include <cctype>
#include <iostream>

#include "common.h"
#include "torch_safetensors/convert.h"
#include "torch_safetensors/dtype.h"

namespace torch::safetensors::cli {
namespace {

const char* kHelp =
    "usage: torch-safetensors convert IN OUT [--max-shard-size SIZE] [--dtype DTYPE]\n"
    "\n"
    "Converts a torch.save checkpoint to safetensors. IN is a .pt/.pth/.bin file (torch.save's\n"
    "zip format, torch 1.6 and later), a pytorch_model.bin.index.json, or a directory holding\n"
    "one of those. The pickle is read by a restricted unpickler that knows only tensors, dicts\n"
    "and plain values: it never imports or runs anything, and anything else in the file (an\n"
    "object of another type, a list, the legacy pre-zip format) is an error naming it.\n"
    "\n"
    "Nested dicts flatten to dotted names ({\"model\": {\"w\": ...}} -> model.w). Tensors sharing\n"
    "memory (tied weights) are written once, as safetensors' save_model does: the dropped names\n"
    "are recorded in the metadata as dropped -> kept. The metadata has format=pt.\n"
    "\n"
    "options:\n"
    "  --max-shard-size SIZE   write OUT as a directory of shards of at most SIZE (\"5GB\",\n"
    "                          \"500MB\", or bytes) and a model.safetensors.index.json, as\n"
    "                          huggingface_hub does; without it OUT is one .safetensors file\n"
    "  --dtype DTYPE           cast F64/F32/F16/BF16 tensors to DTYPE (F32, F16 or BF16);\n"
    "                          integer, bool, FP8 and complex tensors keep their dtype\n";

c10::ScalarType parse_cast_dtype(std::string text) {
  for (char& c : text) c = char(std::toupper(static_cast<unsigned char>(c)));
  const std::optional<Dtype> dtype = parse_dtype(text);
  if (!dtype || (*dtype != Dtype::F64 && *dtype != Dtype::F32 && *dtype != Dtype::F16 &&
                 *dtype != Dtype::BF16)) {
    throw UsageError("--dtype must be F64, F32, F16 or BF16, found '" + text + "'");
  }
  return to_scalar_type(*dtype);
}

}  // namespace

int convert_command(const std::vector<std::string>& args) {
  auto parsed = parse_args(args, {{"--max-shard-size", true}, {"--dtype", true}}, kHelp, 2, 2);
  if (!parsed) return 0;
  ConvertOptions options;
  if (auto size = parsed->value("--max-shard-size")) {
    try {
      // A plain number is bytes; otherwise huggingface_hub's units ("5GB").
      const bool plain =
          !size->empty() && size->find_first_not_of("0123456789") == std::string::npos;
      options.max_shard_size = plain ? std::stoull(*size) : parse_size(*size);
    } catch (const c10::Error& e) {
      throw UsageError("--max-shard-size: " + std::string(e.what_without_backtrace()));
    }
  }
  if (auto dtype = parsed->value("--dtype")) options.dtype = parse_cast_dtype(*dtype);
  std::optional<ProgressBar> bar;
  options.on_progress = [&](uint64_t done, uint64_t total) {
    if (!bar) bar.emplace("convert", total);
    bar->update(done);
  };
  const ConvertReport report =
      convert_torch_checkpoint(parsed->positional[0], parsed->positional[1], options);
  if (bar) bar->finish();
  std::cout << "converted " << parsed->positional[0] << " -> " << parsed->positional[1] << ": "
            << report.tensors_written << " tensors";
  if (report.tensors_written != report.tensors_read) {
    std::cout << " (" << report.tensors_read - report.tensors_written
              << " tied duplicates dropped)";
  }
  // Sharded: the shards and their index; else the one file.
  const size_t shards = report.files.size() > 1 ? report.files.size() - 1 : 1;
  std::cout << ", " << human_bytes(report.bytes_written) << " in "
            << (shards > 1 ? std::to_string(shards) + " shards and an index" : "1 file") << "\n";
  return 0;
}

}  // namespace torch::safetensors::cli
