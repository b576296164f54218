// Storage internals beneath the public Source (source.h): bulk reads, borrowed memory, and atomic
// (temp file + rename) writes.
#pragma once

#include "torch_safetensors/export.h"

#include <cstdint>
#include <functional>
#include <iosfwd>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "torch_safetensors/source.h"

namespace torch::safetensors::storage {

// One contiguous read: `length` bytes at source `offset` into `dst`; `source` is set by read_all's
// one-source overload, and by callers reading several sources (the shards of a checkpoint).
struct TS_API ReadJob {
  void* dst;
  uint64_t length;
  uint64_t offset;
  const Source* source = nullptr;
};

// Performs every job, splitting large ones into chunks and spreading the chunks over up to one
// thread per core when there is enough to read; rethrows the first failure after all threads end.
// The bulk path of every load: whole files, many tensors, large slices.
TS_API void read_all(const Source& source, std::vector<ReadJob> jobs);
// The same over jobs that each name their source: one pass for many files.
TS_API void read_all(const std::vector<ReadJob>& jobs);

// Faults in [data, data + size) of a mapping on every core: madvise(MADV_POPULATE_READ) (Linux
// 5.14), or a read per page where the kernel lacks it. LoadOptions::populate.
TS_API void populate(uint8_t* data, uint64_t size);

// `bytes` as a source, without a copy: the caller keeps them alive and unchanged while the source
// is used. data() is not offered (tensors must not outlive or write the caller's bytes).
TS_API std::shared_ptr<const Source> borrowed_memory_source(std::string_view bytes,
                                                            std::string name);

// Calls `each(data, n, at)` for [offset, offset + length) of `source`, read in chunks of at most
// 8 MiB into one buffer (`at` is the chunk's place within the range): the streaming copies and
// comparisons of realign and header repair, in memory bounded by the chunk, not the file.
using ChunkFunction = std::function<void(const char* data, uint64_t n, uint64_t at)>;
TS_API void for_each_chunk(const Source& source, uint64_t offset, uint64_t length,
                           const ChunkFunction& each);

// The non-file destinations of a save. Each write goes to the end of what was written before;
// `offset` (the bytes written so far) only names the place of a failure. A stream that fails or a
// write function that returns less than `length` is a c10::Error naming `name` and the offset.
using WriteFunction = std::function<size_t(const void* data, size_t length)>;
TS_API void write_to_stream(std::ostream& out, const void* data, uint64_t length, uint64_t offset,
                            const std::string& name);
TS_API void write_to_function(const WriteFunction& write, const void* data, uint64_t length,
                              uint64_t offset, const std::string& name);

// Writes `path` atomically: bytes go to a temporary file beside it, renamed over `path` by
// commit(). Destroyed without commit (an error was thrown), it removes the temporary file, so a
// failed save never leaves a partial file in place of a good one.
class TS_API AtomicFileWriter {
 public:
  explicit AtomicFileWriter(std::string path);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  void write(const void* data, uint64_t length);
  // Where the bytes are until commit (to read them back and check them before they replace
  // anything).
  const std::string& temp_path() const { return temp_path_; }
  // Renames the file into place; `durable`: fsyncs it first and its directory after, so that the
  // new file survives a power loss once commit returns.
  void commit(bool durable = false);

 private:
  std::string path_;
  std::string temp_path_;
  int fd_ = -1;
  bool committed_ = false;
};

}  // namespace torch::safetensors::storage

// Paths and directories, with POSIX calls: not std::filesystem, whose symbols CUDA builds of
// libtorch.so export in copies of their own that win symbol resolution and crash (test_util.h).
namespace torch::safetensors::storage {

TS_API std::string join_path(const std::string& directory,
                             const std::string& name);    // "a" + "b" → "a/b"
TS_API std::string parent_path(const std::string& path);  // "a/b" → "a"; "b" → ""; "/b" → "/"
// The folder holding the file `path`, as a path to join sibling names to (config.json beside a
// checkpoint): "a/b" → "a"; "b" → "."; "/b" → "/"; "../d/b" → "../d". The one place a file's
// folder is derived, so that a bare file name finds its siblings in the working directory.
TS_API std::string directory_of(const std::string& path);
TS_API std::string file_name(const std::string& path);  // "a/b" → "b"
TS_API bool is_directory(const std::string& path);      // following symlinks; false if absent
TS_API bool is_regular_file(const std::string& path);   // following symlinks; false if absent
// The regular files (symlinks followed) in `directory`, sorted. Throws OSError.
TS_API std::vector<std::string> list_files(const std::string& directory);
// realpath(3): absolute, no symlinks, no "." or "..". Throws OSError naming `what`.
TS_API std::string real_path(const std::string& path, const std::string& what);
// Where the files a checkpoint names (its shards) may resolve, symlinks followed: inside its
// folder, and -- when the folder is a huggingface_hub snapshot, `<cache>/<kind>s--<id>/snapshots/
// <revision>/` reached as itself, not through a symlink of the snapshot folder -- the blob files
// of that same cache repository, `<cache>/<kind>s--<id>/blobs/<hash>` (docs/dev/hardening.md,
// "Paths and the huggingface_hub cache"). Resolved once, when a checkpoint is opened.
struct TS_API Containment {
  std::string folder;  // realpath of the folder, ending in '/'
  std::string blobs;   // realpath of the repository's blobs/ folder, ending in '/'; "" if none
};
// Throws OSError naming `what` if `folder` cannot be resolved.
TS_API Containment containment_of(const std::string& folder, const std::string& what);
// Whether a resolved path (realpath) lies where `containment` allows.
TS_API bool is_contained(const Containment& containment, const std::string& real);
// Throws, naming `where` (the index) and `name` (the shard), unless `real` is contained.
TS_API void check_contained(const Containment& containment, const std::string& real,
                            const std::string& where, const std::string& name);
// Opens `path` (a file the checkpoint names, `name` in messages) for reading and checks that the
// file actually opened -- the descriptor that is then read, not the path looked up earlier --
// lies where `containment` allows: a file swapped for a symlink to an outside file after the
// checkpoint was opened is refused when it is opened. `where` prefixes the errors (the index).
TS_API std::shared_ptr<const Source> open_contained(const Containment& containment,
                                                    const std::string& path, bool mapped,
                                                    const std::string& where,
                                                    const std::string& name);

// mkdir -p. Throws OSError.
TS_API void make_directories(const std::string& path);
// fsync(2) of a directory, making renames and removals in it durable. Throws OSError.
TS_API void sync_directory(const std::string& directory);
// unlink(2); false when it fails.
TS_API bool remove_file(const std::string& path);

// A file written at given offsets (pwrite), by several processes at once: the sharded save from
// many ranks, where the publishing rank creates each file at its final size and every rank
// writes its own bytes where they go. Errors are OSError naming the path and the offset.
class TS_API PositionalFile {
 public:
  // Creates (or truncates) `path` and sizes it to `size` bytes (a sparse file until written).
  static PositionalFile create(const std::string& path, uint64_t size);
  // Opens an existing file for writing.
  static PositionalFile open(const std::string& path);
  PositionalFile(PositionalFile&& other) noexcept;
  PositionalFile& operator=(PositionalFile&& other) noexcept;
  PositionalFile(const PositionalFile&) = delete;
  PositionalFile& operator=(const PositionalFile&) = delete;
  ~PositionalFile();

  void write_at(const void* data, uint64_t length, uint64_t offset);
  void sync();   // fsync(2)
  void close();  // reports a failing close(2)
  const std::string& path() const { return path_; }

 private:
  PositionalFile(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  std::string path_;
  int fd_ = -1;
};

// rename(2) of `from` over `to`. Throws OSError.
TS_API void rename_file(const std::string& from, const std::string& to);

}  // namespace torch::safetensors::storage
