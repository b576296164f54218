#include "test_util.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <c10/util/Exception.h>

namespace ts_test {

TempDir::TempDir() {
  const char* tmpdir = std::getenv("TMPDIR");
  std::string templ = std::string(tmpdir && *tmpdir ? tmpdir : "/tmp") + "/ts_test_XXXXXX";
  if (::mkdtemp(templ.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  path_ = templ;
}

TempDir::~TempDir() {
  // Depth first, without following links: files before the directories that hold them.
  auto remove_one = [](const char* path, const struct stat*, int, struct FTW*) {
    ::remove(path);  // best effort: keep going
    return 0;
  };
  ::nftw(path_.c_str(), remove_one, 16, FTW_DEPTH | FTW_PHYS);
}

std::vector<std::string> TempDir::entries() const { return list_dir(path_); }

std::vector<std::string> list_dir(const std::string& path) {
  DIR* dir = ::opendir(path.c_str());
  if (dir == nullptr) throw std::runtime_error("cannot list " + path);
  std::vector<std::string> names;
  while (const dirent* entry = ::readdir(dir)) {
    const std::string name = entry->d_name;
    if (name != "." && name != "..") names.push_back(name);
  }
  ::closedir(dir);
  std::sort(names.begin(), names.end());
  return names;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), std::streamsize(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + path);
}

std::string make_safetensors(const std::string& json, const std::string& data) {
  std::string out(8, '\0');
  const uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) out[i] = char((n >> (8 * i)) & 0xFF);
  return out + json + data;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  return "";
}

std::string mapped_file_of(const void* address) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  const auto a = reinterpret_cast<uintptr_t>(address);
  while (std::getline(maps, line)) {
    uintptr_t begin = 0, end = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx", &begin, &end) != 2) continue;
    if (a < begin || a >= end) continue;
    const auto slash = line.find('/');
    return slash == std::string::npos ? "" : line.substr(slash);
  }
  return "";
}

std::string cached_script_output(const std::string& script, const std::string& cache,
                                 const std::string& done, std::string& skip) {
  constexpr int kMissing = 77;
  struct stat info;
  TORCH_CHECK(::stat(script.c_str(), &info) == 0, "no ", script);
  const std::string folder = cache + "-" + std::to_string(int64_t(info.st_mtime));
  const int lock = ::open((cache + ".lock").c_str(), O_CREAT | O_RDWR, 0644);
  TORCH_CHECK(lock >= 0 && ::flock(lock, LOCK_EX) == 0, "cannot lock ", cache);
  struct Unlock {
    int fd;
    ~Unlock() { ::close(fd); }
  } unlock{lock};
  if (::stat((folder + "/" + done).c_str(), &info) == 0) return folder;
  TempDir staging;
  const std::string out = staging.file("out");
  const std::string command = std::string(TS_PYTHON) + " " + script + " " + out + " > " +
                              staging.file("script.log") + " 2>&1";
  const int status = std::system(command.c_str());
  if (WIFEXITED(status) && WEXITSTATUS(status) == kMissing) {
    skip = read_file(staging.file("script.log"));
    return "";
  }
  TORCH_CHECK(status == 0, script, " failed:\n", read_file(staging.file("script.log")));
  TORCH_CHECK(::rename(out.c_str(), folder.c_str()) == 0, "cannot rename ", out, " to ", folder);
  return folder;
}

}  // namespace ts_test
