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

#include "check.h"
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

std::string directory_of(const std::string& path) {
  const std::string parent = parent_path(path);
  return parent.empty() ? "." : parent;
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

namespace {

bool starts_with(const std::string& text, const std::string& prefix) {
  return text.compare(0, prefix.size(), prefix) == 0;
}

std::string with_slash(const std::string& folder) {
  return folder.back() == '/' ? folder : folder + "/";
}

// huggingface_hub's repository folder names: "models--org--name", "datasets--...", "spaces--...".
bool is_cache_repository(const std::string& name) {
  for (const char* kind : {"models--", "datasets--", "spaces--"}) {
    const std::string prefix = kind;
    if (name.size() > prefix.size() && starts_with(name, prefix)) return true;
  }
  return false;
}

// Whether `folder`, as the caller spelled it, is reached as itself rather than through a
// symlink of its own: its last component (trailing "/" and "." dropped) is no symlink. ".." is
// never accepted (it resolves from wherever a symlink below it led).
bool reached_as_itself(std::string folder) {
  while (true) {
    while (folder.size() > 1 && folder.back() == '/') folder.pop_back();
    if (folder == "." || folder.empty()) return true;  // the working directory, physical
    if (folder.size() >= 2 && folder.compare(folder.size() - 2, 2, "/.") == 0) {
      folder.resize(folder.size() - 1);
      continue;
    }
    break;
  }
  if (file_name(folder) == "..") return false;
  struct stat st {};
  return ::lstat(folder.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

}  // namespace

Containment containment_of(const std::string& folder, const std::string& what) {
  Containment out;
  const std::string real = real_path(folder, what);
  out.folder = with_slash(real);
  // <cache>/<repository>/snapshots/<revision>: shards may be blobs of that repository.
  const std::string snapshots = parent_path(real);
  const std::string repository = parent_path(snapshots);
  if (real == "/" || file_name(snapshots) != "snapshots" ||
      !is_cache_repository(file_name(repository)) || !reached_as_itself(folder)) {
    return out;
  }
  const std::string blobs = join_path(repository, "blobs");
  char* resolved = ::realpath(blobs.c_str(), nullptr);
  if (!resolved) return out;
  const std::string real_blobs = resolved;
  std::free(resolved);
  // blobs/ itself must be the repository's folder, not a symlink to anywhere.
  if (real_blobs == blobs && is_directory(real_blobs)) out.blobs = with_slash(real_blobs);
  return out;
}

bool is_contained(const Containment& containment, const std::string& real) {
  if (real.size() > containment.folder.size() && starts_with(real, containment.folder)) {
    return true;
  }
  // A blob is a file directly in blobs/: "<hash>", no deeper path.
  return !containment.blobs.empty() && real.size() > containment.blobs.size() &&
         starts_with(real, containment.blobs) &&
         real.find('/', containment.blobs.size()) == std::string::npos;
}

void check_contained(const Containment& containment, const std::string& real,
                     const std::string& where, const std::string& name) {
  TS_CHECK(is_contained(containment, real), where, "shard '", name,
           "' resolves outside the index's folder (to ", real, ")",
           containment.blobs.empty() ? "" : " and the blobs of its huggingface_hub repository",
           "; refusing to read it");
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
