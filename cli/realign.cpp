// `realign IN [OUT]`: a safetensors file rewritten with its tensors on a chosen boundary (realign
// in serialize.h), for loads that view the mapping instead of copying misaligned tensors.
#include <iostream>

#include "common.h"
#include "torch_safetensors/serialize.h"

namespace torch::safetensors::cli {
namespace {

const char* kHelp =
    "usage: torch-safetensors realign IN [OUT] [--alignment BOUNDARY] [--durable]\n"
    "\n"
    "Rewrites the safetensors file IN to OUT (default: IN itself, replaced safely) so that its\n"
    "data section starts on a multiple of BOUNDARY and every tensor's offset in the file is a\n"
    "multiple of its element size (nothing is copied on a zero-copy load) and, for every tensor\n"
    "whose size is a multiple of BOUNDARY, of BOUNDARY. The format allows no gaps between\n"
    "tensors, so the others (small ones of odd sizes) go last; their count is printed.\n"
    "Names, dtypes, shapes, metadata and bytes are unchanged. Tensor bytes are copied in chunks\n"
    "(memory stays bounded), the new file is compared byte for byte with IN, and only then\n"
    "renamed over OUT: on any error OUT is left as it was.\n"
    "\n"
    "options:\n"
    "  --alignment BOUNDARY   a power of two (default 64; 4096 for page alignment)\n"
    "  --durable              fsync the new file and its folder before exiting\n";

}  // namespace

int realign_command(const std::vector<std::string>& args) {
  auto parsed = parse_args(args, {{"--alignment", true}, {"--durable", false}}, kHelp, 1, 2);
  if (!parsed) return 0;
  const std::string& in = parsed->positional[0];
  const std::string& out = parsed->positional.size() > 1 ? parsed->positional[1] : in;
  uint64_t boundary = 64;
  if (auto text = parsed->value("--alignment")) boundary = parse_boundary("--alignment", *text);
  const RealignReport report =
      realign(in, SaveTo(out).durable(parsed->flag("--durable")), boundary);
  std::cout << "realigned " << in << " -> " << out << ": " << report.tensors << " tensors, "
            << human_bytes(report.bytes) << ", data section at byte " << report.data_offset << ", "
            << report.off_boundary << " tensor(s) not on " << boundary
            << " bytes (sizes not a multiple of it), all aligned to their element size\n";
  return 0;
}

}  // namespace torch::safetensors::cli
