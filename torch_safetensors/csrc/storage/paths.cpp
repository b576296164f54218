// Paths and directories (io.h), with POSIX calls.
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "storage/io.h"
#include "torch_safetensors/errors.h"

namespace torch::safetensors::storage {
namespace {

[[noreturn]] void fail(int error, const std::string& path, const std::string& what) {
  throw OSError(error, path, "safetensors: " + path + ": " + what + ": " + std::strerror(error),
                what);
}

bool stat_mode(const std::string& path, mode_t& mode) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return false;
  mode = st.st_mode;
  return true;
}

}  // namespace

std::string join_path(const std::string& directory, const std::string& name) {
  if (directory.empty()) return name;
  return directory.back() == '/' ? directory + name : directory + "/" + name;
}

std::string parent_path(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return "";
  return slash == 0 ? "/" : path.substr(0, slash);
}

std::string file_name(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

bool is_directory(const std::string& path) {
  mode_t mode = 0;
  return stat_mode(path, mode) && S_ISDIR(mode);
}

bool is_regular_file(const std::string& path) {
  mode_t mode = 0;
  return stat_mode(path, mode) && S_ISREG(mode);
}

std::vector<std::string> list_files(const std::string& directory) {
  DIR* dir = ::opendir(directory.c_str());
  if (!dir) fail(errno, directory, "cannot list the directory");
  std::vector<std::string> names;
  while (const dirent* entry = ::readdir(dir)) {
    const std::string name = entry->d_name;
    if (name != "." && name != ".." && is_regular_file(join_path(directory, name)))
      names.push_back(name);
  }
  ::closedir(dir);
  std::sort(names.begin(), names.end());
  return names;
}

std::string real_path(const std::string& path, const std::string& what) {
  char* resolved = ::realpath(path.c_str(), nullptr);
  if (!resolved) fail(errno, path, what);
  std::string out = resolved;
  std::free(resolved);
  return out;
}

void make_directories(const std::string& path) {
  if (path.empty() || is_directory(path)) return;
  make_directories(parent_path(path));
  if (::mkdir(path.c_str(), 0777) != 0 && errno != EEXIST)
    fail(errno, path, "cannot create the directory");
  if (!is_directory(path)) fail(ENOTDIR, path, "cannot create the directory");
}

bool remove_file(const std::string& path) { return ::unlink(path.c_str()) == 0; }

void sync_directory(const std::string& directory) {
  const int fd = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) fail(errno, directory, "cannot open the directory to fsync it");
  const int result = ::fsync(fd);
  const int error = errno;
  ::close(fd);
  if (result != 0) fail(error, directory, "fsync of the directory failed");
}

}  // namespace torch::safetensors::storage
