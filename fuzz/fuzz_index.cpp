// libFuzzer target over sharded checkpoint indexes: each input is the text of an index, written
// beside fixed shards (a {x, y}, b {z}, sub/c {w}, bx {x, z}: the adversarial index corpus's) and
// a symlink that points outside the folder, then opened as a Checkpoint with both backends and
// loaded whole and tensor by tensor. Also: parse_index → index_json → parse_index must give the
// same index back. c10::Error is the expected outcome for bad input; a crash, a sanitizer report,
// another exception, a read outside the folder or a broken invariant is a finding.
//
//   fuzz_index -max_len=4096 corpus_dir fuzz/index_seeds   (from the repository root)
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <unordered_set>

#include <c10/util/Exception.h>

#include "format/index.h"
#include "torch_safetensors/safetensors.h"

namespace ts = torch::safetensors;

namespace {

[[noreturn]] void finding(const char* what, const std::string& detail = {}) {
  std::fprintf(stderr, "FUZZ FINDING: %s %s\n", what, detail.c_str());
  std::abort();
}

std::string g_dir, g_index;

void copy_file(const std::string& from, const std::string& to) {
  std::ifstream in(from, std::ios::binary);
  std::ofstream out(to, std::ios::binary);
  out << in.rdbuf();
  if (!in || !out) finding("cannot set up", from);
}

void set_up() {
  char pattern[] = "/tmp/fuzz_index_XXXXXX";
  if (!::mkdtemp(pattern)) finding("mkdtemp failed");
  const std::string corpus = "test/data/adversarial_index";
  g_dir = std::string(pattern) + "/ckpt";
  ::mkdir(g_dir.c_str(), 0700);
  ::mkdir((g_dir + "/sub").c_str(), 0700);
  for (const char* shard : {"a.safetensors", "b.safetensors", "bx.safetensors",
                            "sub/c.safetensors"}) {
    copy_file(corpus + "/" + shard, g_dir + "/" + shard);
  }
  // Outside the folder: reachable by "../outside.safetensors" (refused by name) and by a symlink
  // (refused once resolved).
  copy_file(corpus + "/b.safetensors", std::string(pattern) + "/outside.safetensors");
  if (::symlink("../outside.safetensors", (g_dir + "/link.safetensors").c_str()) != 0)
    finding("symlink failed");
  g_index = g_dir + "/model.safetensors.index.json";
}

void exercise(const ts::Checkpoint& ckpt) {
  std::unordered_set<std::string> names;
  for (const auto& name : ckpt.keys()) {
    if (!names.insert(name).second) finding("a key twice", name);
    const std::string& shard = ckpt.shard_file(name);
    if (shard == "link.safetensors") finding("read through a symlink leaving the folder");
    try {
      const at::Tensor t = ckpt.tensor(name);
      if (!t.equal(ckpt.file(name).tensor(name))) finding("tensor differs from its shard's", name);
    } catch (const c10::Error&) {
    }
  }
  try {
    const ts::TensorDict all = ckpt.tensors();
    if (all.size() != ckpt.size()) finding("tensors() lost names");
  } catch (const c10::Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (g_dir.empty()) set_up();
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const auto index = ts::format::parse_index(text, "fuzz");
    const std::string again = ts::format::index_json(index);
    const auto back = ts::format::parse_index(again, "fuzz round trip");
    if (back.weight_map != index.weight_map || back.metadata.size() + (back.total_size ? 1 : 0) <
                                                  index.metadata.size())
      finding("index_json round trip changed the index", again);
  } catch (const c10::Error&) {
  }
  {
    std::ofstream out(g_index, std::ios::binary | std::ios::trunc);
    out << text;
  }
  for (const ts::Backend backend : {ts::Backend::kMmap, ts::Backend::kPread}) {
    try {
      exercise(ts::Checkpoint(g_dir, ts::LoadOptions().with_backend(backend)));
    } catch (const c10::Error& e) {
      const std::string what = e.what_without_backtrace();
      if (what.rfind("safetensors: ", 0) != 0) finding("an error without our prefix", what);
    }
  }
  return 0;
}
