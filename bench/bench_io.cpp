// bench_io: times torch_safetensors' C++ paths, LibTorch's own serialization and this machine's
// I/O limits, and prints one JSON line per measurement. bench/run.py drives it (one process per
// measurement, so that peak RSS is per measurement) and merges its output into one table.
//
//   bench_io <op>[,<op>...] --file F.safetensors [--reps 5] [--warmup 1] [--threads N]
//
// Ops: header lazy lazy_touch eager save (ours); pickle_load torch_save torch_load (LibTorch);
// limits. Companion paths derive from F: F.pt (Python torch.save of the same tensors),
// F.libtorch.pt (written by torch_save, read by torch_load), F.out.safetensors (save target).
//
// Every measurement runs `warmup` untimed repetitions first (page cache warm, allocator primed),
// then `reps` timed ones; each timed repetition also records its peak RSS above the RSS it started
// from (VmHWM after resetting it through /proc/self/clear_refs).
#include <fcntl.h>
#include <malloc.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <ATen/ATen.h>
#include <torch/serialize.h>

#include "torch_safetensors/safetensors.h"

namespace ts = torch::safetensors;

namespace {

using Clock = std::chrono::steady_clock;

struct Args {
  std::string op, file, out, stem;
  int reps = 5;
  int warmup = 1;
  double budget = 20;  // seconds per measurement; slow peers get fewer repetitions
  int threads = int(std::max(1u, std::thread::hardware_concurrency()));
};

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "bench_io: %s\n", what.c_str());
  std::exit(2);
}

// ---- peak RSS ----

uint64_t status_kib(const char* key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const size_t n = std::strlen(key);
  while (std::getline(in, line)) {
    if (line.compare(0, n, key) == 0 && line[n] == ':')
      return std::strtoull(line.c_str() + n + 1, nullptr, 10);
  }
  return 0;
}

void reset_peak_rss() {
  // "5" resets VmHWM to the current RSS (Linux >= 4.0).
  std::ofstream("/proc/self/clear_refs") << "5";
}

// ---- measurement ----

struct Result {
  std::vector<double> times;
  std::vector<uint64_t> peak_extra;  // bytes
};

// `setup` runs untimed before each repetition, `body` is timed, `teardown` runs untimed after.
Result measure(const Args& args, const std::function<void()>& body,
               const std::function<void()>& setup = {},
               const std::function<void()>& teardown = {}) {
  Result r;
  auto once = [&] {
    if (setup) setup();
    reset_peak_rss();
    const uint64_t rss0 = status_kib("VmRSS");
    const auto t0 = Clock::now();
    body();
    const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
    const uint64_t hwm = status_kib("VmHWM");
    if (teardown) teardown();
    // Hand freed memory back to the OS, so that every run starts like a fresh process's first
    // load (a loader reusing the previous run's pages would measure the allocator, not the load).
    ::malloc_trim(0);
    return std::make_pair(dt, hwm > rss0 ? (hwm - rss0) * 1024 : 0);
  };
  // Warm-up (page cache, allocator); a run longer than half the budget counts as the only one.
  int reps = args.reps;
  for (int i = 0; i < args.warmup; ++i) {
    const auto [dt, peak] = once();
    if (dt > args.budget / 2) {
      r.times.push_back(dt);
      r.peak_extra.push_back(peak);
      return r;
    }
    if (dt * reps > args.budget) reps = std::max(1, int(args.budget / dt));
  }
  for (int i = 0; i < reps; ++i) {
    const auto [dt, peak] = once();
    r.times.push_back(dt);
    r.peak_extra.push_back(peak);
  }
  return r;
}

std::string json_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out;
}

void emit(const std::string& impl, const std::string& op, const std::string& file, uint64_t bytes,
          size_t tensors, const Result& r, const std::string& note = "") {
  std::ostringstream out;
  out.precision(9);
  out << "{\"impl\":\"" << impl << "\",\"op\":\"" << op << "\",\"file\":\"" << json_escape(file)
      << "\",\"bytes\":" << bytes << ",\"tensors\":" << tensors << ",\"times_s\":[";
  for (size_t i = 0; i < r.times.size(); ++i) out << (i ? "," : "") << r.times[i];
  out << "],\"peak_extra_bytes\":[";
  for (size_t i = 0; i < r.peak_extra.size(); ++i) out << (i ? "," : "") << r.peak_extra[i];
  out << "],\"note\":\"" << json_escape(note) << "\"}";
  std::cout << out.str() << std::endl;
}

// ---- helpers ----

uint64_t file_size(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) die("cannot stat " + path);
  return uint64_t(st.st_size);
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) die("cannot open " + path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<char> read_file_vec(const std::string& path) {
  const uint64_t n = file_size(path);
  std::vector<char> out(n);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) die("cannot open " + path);
  uint64_t done = 0;
  while (done < n) {
    const ssize_t got = ::pread(fd, out.data() + done, n - done, off_t(done));
    if (got <= 0) die("short read on " + path);
    done += uint64_t(got);
  }
  ::close(fd);
  return out;
}

// Reads every byte of a tensor, on one thread: a plain word loop, like run.py's Python touch
// (an int64 sum with one intra-op thread). Parallel reductions interleave their chunks, and
// concurrent faults on neighbouring pages of one file mapping are pathological on some kernels
// and VMs (measured here: 9 s instead of 0.25 s for 1 GB), which would measure the touch, not
// the load.
int64_t touch(const at::Tensor& t) {
  const auto* p = static_cast<const uint8_t*>(t.data_ptr());
  const size_t n = t.nbytes();
  uint64_t acc = 0;
  size_t i = 0;
  for (; i < n && reinterpret_cast<uintptr_t>(p + i) % 8; ++i) acc += p[i];
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    acc += w;
  }
  for (; i < n; ++i) acc += p[i];
  return int64_t(acc);
}

int64_t touch_all(const ts::TensorDict& tensors) {
  int64_t acc = 0;
  for (const auto& item : tensors) acc += touch(item.value());
  return acc;
}

uint64_t total_bytes(const ts::TensorDict& tensors) {
  uint64_t n = 0;
  for (const auto& item : tensors) n += item.value().nbytes();
  return n;
}

volatile int64_t g_sink = 0;  // keeps touch results alive

// Splits [0, n) into `parts` contiguous ranges and runs fn(begin, end) on one thread each.
void parallel_ranges(uint64_t n, int parts, const std::function<void(uint64_t, uint64_t)>& fn) {
  std::vector<std::thread> pool;
  const uint64_t step = (n + uint64_t(parts) - 1) / uint64_t(parts);
  for (int p = 0; p < parts; ++p) {
    const uint64_t b = std::min(n, step * uint64_t(p)), e = std::min(n, b + step);
    if (b < e) pool.emplace_back(fn, b, e);
  }
  for (auto& t : pool) t.join();
}

// Anonymous memory, faulted in before any timing.
struct Buffer {
  uint8_t* data = nullptr;
  uint64_t size = 0;
  explicit Buffer(uint64_t n) : size(n) {
    void* p = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE,
                     -1, 0);
    if (p == MAP_FAILED) die("mmap of scratch buffer failed");
    data = static_cast<uint8_t*>(p);
    for (uint64_t i = 0; i < n; i += 4096) data[i] = uint8_t(i);
  }
  ~Buffer() { ::munmap(data, size); }
};

constexpr uint64_t kChunk = 64ull << 20;

void pread_range(int fd, uint8_t* dst, uint64_t offset, uint64_t n) {
  while (n > 0) {
    const ssize_t got = ::pread(fd, dst, std::min(n, kChunk), off_t(offset));
    if (got <= 0) die("pread failed");
    dst += got;
    offset += uint64_t(got);
    n -= uint64_t(got);
  }
}

void pwrite_range(int fd, const uint8_t* src, uint64_t offset, uint64_t n) {
  while (n > 0) {
    const ssize_t put = ::pwrite(fd, src, std::min(n, kChunk), off_t(offset));
    if (put <= 0) die("pwrite failed");
    src += put;
    offset += uint64_t(put);
    n -= uint64_t(put);
  }
}

// ---- ops ----

void op_header(const Args& a) {
  const uint64_t size = file_size(a.file);
  const std::string prefix = read_file(a.file).substr(0, 8);
  const uint64_t n = ts::parse_header_length(prefix, size, a.file);
  std::string json(n, '\0');
  {
    const int fd = ::open(a.file.c_str(), O_RDONLY | O_CLOEXEC);
    pread_range(fd, reinterpret_cast<uint8_t*>(json.data()), 8, n);
    ::close(fd);
  }
  size_t count = 0;
  auto r = measure(a, [&] { count = ts::parse_header(json, size, a.file).tensors().size(); });
  emit("ours", "header_parse", a.file, n, count, r, "parse_header on the JSON already in memory");
  r = measure(a, [&] { count = ts::File(a.file).size(); });
  emit("ours", "header_open", a.file, n, count, r, "File(path): open + read + parse + map");
}

void op_lazy(const Args& a, bool do_touch) {
  ts::TensorDict tensors;
  uint64_t bytes = 0;
  size_t count = 0;
  auto r = measure(
      a,
      [&] {
        tensors = ts::load(a.file);
        if (do_touch) g_sink = g_sink + touch_all(tensors);
      },
      {},
      [&] {
        bytes = total_bytes(tensors);
        count = tensors.size();
        tensors = ts::TensorDict();
      });
  emit("ours", do_touch ? "lazy_touch" : "lazy", a.file, bytes, count, r,
       "torch::safetensors::load (Backend::kMmap)");
}

void op_eager(const Args& a) {
  ts::TensorDict tensors;
  uint64_t bytes = 0;
  size_t count = 0;
  auto r = measure(
      a, [&] { tensors = ts::load(a.file, ts::LoadOptions().with_backend(ts::Backend::kPread)); },
      {},
      [&] {
        bytes = total_bytes(tensors);
        count = tensors.size();
        tensors = ts::TensorDict();
      });
  emit("ours", "eager", a.file, bytes, count, r, "torch::safetensors::load (Backend::kPread)");
}

void op_save(const Args& a) {
  const ts::TensorDict tensors =
      ts::load(a.file, ts::LoadOptions().with_backend(ts::Backend::kPread));
  const uint64_t bytes = total_bytes(tensors);
  const std::string out = a.stem + ".out.safetensors";
  auto r = measure(
      a, [&] { ts::save(tensors, out); }, {}, [&] { ::unlink(out.c_str()); });
  emit("ours", "save", a.file, bytes, tensors.size(), r, "torch::safetensors::save (TensorDict)");
}

// LibTorch's own formats. torch::save(std::vector<Tensor>) writes a TorchScript archive;
// torch::load reads it back. pickle_load reads what Python's torch.save wrote.
void op_torch_save(const Args& a) {
  const ts::TensorDict dict = ts::load(a.file, ts::LoadOptions().with_backend(ts::Backend::kPread));
  std::vector<at::Tensor> tensors;
  for (const auto& item : dict) tensors.push_back(item.value());
  const uint64_t bytes = total_bytes(dict);
  const std::string out = a.stem + ".libtorch.pt";
  auto r = measure(
      a, [&] { torch::save(tensors, out + ".tmp"); }, {},
      [&] { ::rename((out + ".tmp").c_str(), out.c_str()); });
  emit("libtorch", "save", a.file, bytes, tensors.size(), r,
       "torch::save(std::vector<Tensor>) (keeps the last file for torch::load)");
}

void op_torch_load(const Args& a) {
  std::vector<at::Tensor> tensors;
  uint64_t bytes = 0;
  size_t count = 0;
  const std::string path = a.stem + ".libtorch.pt";
  auto r = measure(
      a, [&] { torch::load(tensors, path); }, {},
      [&] {
        bytes = 0;
        for (const auto& t : tensors) bytes += t.nbytes();
        count = tensors.size();
        tensors.clear();
      });
  emit("libtorch", "eager", a.file, bytes, count, r, "torch::load(std::vector<Tensor>&, path)");
}

void op_pickle_load(const Args& a) {
  c10::IValue value;
  uint64_t bytes = 0;
  size_t count = 0;
  auto r = measure(
      a, [&] { value = torch::pickle_load(read_file_vec(a.stem + ".pt")); }, {},
      [&] {
        bytes = 0;
        count = 0;
        for (const auto& entry : value.toGenericDict()) {
          bytes += entry.value().toTensor().nbytes();
          ++count;
        }
        value = c10::IValue();
      });
  emit("libtorch_pickle", "eager", a.file, bytes, count, r,
       "torch::pickle_load(bytes of a Python torch.save file), read included");
}

// This machine's limits, over the data section of `file` (page cache warm).
void op_limits(const Args& a) {
  const uint64_t size = file_size(a.file);
  const std::string prefix = read_file(a.file).substr(0, 8);
  const uint64_t offset = 8 + ts::parse_header_length(prefix, size, a.file);
  const uint64_t n = size - offset;
  const int fd = ::open(a.file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) die("cannot open " + a.file);
  Buffer dst(n);

  {
    // memcpy from the page cache itself: a shared mapping of the cached file, populated up front.
    void* p = ::mmap(nullptr, size, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (p == MAP_FAILED) die("mmap failed");
    const uint8_t* src = static_cast<const uint8_t*>(p) + offset;
    for (int threads : {1, a.threads}) {
      auto r = measure(a, [&] {
        parallel_ranges(n, threads,
                        [&](uint64_t b, uint64_t e) { std::memcpy(dst.data + b, src + b, e - b); });
      });
      emit("limit", "memcpy_" + std::to_string(threads) + "t", a.file, n, 0, r,
           "memcpy from a populated shared mapping of the cached file into pre-faulted memory");
    }
    ::munmap(p, size);
  }
  for (int threads : {1, a.threads}) {
    auto r = measure(a, [&] {
      parallel_ranges(n, threads, [&](uint64_t b, uint64_t e) {
        pread_range(fd, dst.data + b, offset + b, e - b);
      });
    });
    emit("limit", "pread_" + std::to_string(threads) + "t", a.file, n, 0, r,
         "pread in 64 MiB chunks into pre-faulted memory");
  }
  for (bool huge : {false, true}) {
    // The same into fresh (not yet faulted) memory: what any loader that allocates pays. With
    // transparent huge pages (madvise) one fault maps 2 MiB instead of 4 KiB.
    uint8_t* fresh = nullptr;
    auto r = measure(
        a,
        [&] {
          void* p = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
          if (p == MAP_FAILED) die("mmap failed");
          if (huge) ::madvise(p, n, MADV_HUGEPAGE);
          fresh = static_cast<uint8_t*>(p);
          parallel_ranges(n, a.threads, [&](uint64_t b, uint64_t e) {
            pread_range(fd, fresh + b, offset + b, e - b);
          });
        },
        {}, [&] { ::munmap(fresh, n); });
    emit("limit", "pread_" + std::to_string(a.threads) + (huge ? "t_fresh_thp" : "t_fresh"), a.file,
         n, 0, r,
         huge ? "pread into fresh memory with MADV_HUGEPAGE (faults included)"
              : "pread into freshly mapped memory (page faults included)");
  }
  ::close(fd);

  // Write bandwidth to the page cache: a new file in the output directory, no fsync.
  const std::string out = a.stem + ".limit_write";
  {
    auto r = measure(
        a,
        [&] {
          const int wfd = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
          if (wfd < 0) die("cannot create " + out);
          pwrite_range(wfd, dst.data, 0, n);
          ::close(wfd);
        },
        {}, [&] { ::unlink(out.c_str()); });
    emit("limit", "write_1t", a.file, n, 0, r, "write() in 64 MiB chunks to a new file, no fsync");
  }
  {
    auto r = measure(
        a,
        [&] {
          const int wfd = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
          if (wfd < 0) die("cannot create " + out);
          if (::ftruncate(wfd, off_t(n)) != 0) die("ftruncate failed");
          parallel_ranges(n, a.threads, [&](uint64_t b, uint64_t e) {
            pwrite_range(wfd, dst.data + b, b, e - b);
          });
          ::close(wfd);
        },
        {}, [&] { ::unlink(out.c_str()); });
    emit("limit", "write_" + std::to_string(a.threads) + "t", a.file, n, 0, r,
         "pwrite from N threads into a pre-sized new file, no fsync");
  }
}

Args parse_args(int argc, char** argv) {
  if (argc < 2)
    die("usage: bench_io <op> --file F [--out O] [--reps N] [--warmup N] [--threads N]");
  Args a;
  a.op = argv[1];
  for (int i = 2; i < argc; ++i) {
    const std::string k = argv[i];
    if (i + 1 >= argc) die("missing value for " + k);
    const std::string v = argv[++i];
    if (k == "--file")
      a.file = v;
    else if (k == "--reps")
      a.reps = std::stoi(v);
    else if (k == "--warmup")
      a.warmup = std::stoi(v);
    else if (k == "--threads")
      a.threads = std::stoi(v);
    else if (k == "--budget")
      a.budget = std::stod(v);
    else
      die("unknown flag " + k);
  }
  if (a.file.empty()) die("--file is required");
  const std::string ext = ".safetensors";
  a.stem = a.file.size() > ext.size() && a.file.substr(a.file.size() - ext.size()) == ext
               ? a.file.substr(0, a.file.size() - ext.size())
               : a.file;
  return a;
}

void run_op(const Args& a) {
  try {
    if (a.op == "header")
      op_header(a);
    else if (a.op == "lazy")
      op_lazy(a, false);
    else if (a.op == "lazy_touch")
      op_lazy(a, true);
    else if (a.op == "eager")
      op_eager(a);
    else if (a.op == "save")
      op_save(a);
    else if (a.op == "torch_save")
      op_torch_save(a);
    else if (a.op == "torch_load")
      op_torch_load(a);
    else if (a.op == "pickle_load")
      op_pickle_load(a);
    else if (a.op == "limits")
      op_limits(a);
    else
      die("unknown op " + a.op);
  } catch (const std::exception& e) {
    // One failing op (a peer that cannot read a file) must not hide the others.
    std::string what = e.what();
    what = what.substr(0, what.find('\n'));  // c10::Error appends a backtrace
    std::fprintf(stderr, "bench_io: %s failed: %s\n", a.op.c_str(), what.c_str());
  }
}

}  // namespace

int main(int argc, char** argv) {
  Args a = parse_args(argc, argv);
  std::vector<std::string> ops;
  for (std::stringstream in(a.op); std::getline(in, a.op, ',');) ops.push_back(a.op);
  for (const std::string& op : ops) {
    a.op = op;
    run_op(a);
  }
  return 0;
}
