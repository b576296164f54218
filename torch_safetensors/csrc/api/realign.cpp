// realign: a file re-laid out by the one layout planner, its tensor bytes streamed from the old
// file in bounded chunks, checked against it byte for byte before it replaces anything.
#include <algorithm>
#include <cstring>
#include <memory>

#include "check.h"
#include "storage/io.h"
#include "torch_safetensors/file.h"
#include "torch_safetensors/serialize.h"
#include "torch_safetensors/source.h"

namespace torch::safetensors {
namespace {

constexpr uint64_t kChunk = uint64_t(8) << 20;

// Calls `each(offset, length)` for the chunks of [0, n).
template <typename Each>
void for_chunks(uint64_t n, Each&& each) {
  for (uint64_t done = 0; done < n; done += std::min(kChunk, n - done)) {
    each(done, std::min(kChunk, n - done));
  }
}

// The written file against the source: the same metadata and tensors (name, dtype, shape, bytes),
// and the layout plan_layout promised.
void check_copy(const Header& from, const Source& source, const Header& written, const Source& copy,
                const Layout& layout, const std::string& name) {
  TS_CHECK(written.metadata() == from.metadata(), name, "realign: the metadata changed");
  TS_CHECK(written.size() == from.size(), name, "realign: ", written.size(), " tensors written, ",
           from.size(), " read");
  TS_CHECK(written.data_offset() == layout.header.data_offset(), name,
           "realign: the data section moved");
  std::unique_ptr<char[]> a(new char[kChunk]), b(new char[kChunk]);
  for (const TensorInfo& info : from.tensors()) {
    const TensorInfo* out = written.find(info.name);
    TS_CHECK(out != nullptr, name, "realign: tensor '", info.name, "' is missing");
    TS_CHECK(out->dtype == info.dtype && out->shape == info.shape, name, "realign: tensor '",
             info.name, "' changed dtype or shape");
    const TensorInfo* planned = layout.header.find(info.name);
    TS_CHECK(planned && planned->begin == out->begin && planned->end == out->end, name,
             "realign: tensor '", info.name, "' is not where the layout put it");
    for_chunks(info.nbytes(), [&](uint64_t at, uint64_t n) {
      source.read(a.get(), n, from.data_offset() + info.begin + at);
      copy.read(b.get(), n, written.data_offset() + out->begin + at);
      TS_CHECK(std::memcmp(a.get(), b.get(), n) == 0, name, "realign: tensor '", info.name,
               "' differs from the source at byte ", at);
    });
  }
}

}  // namespace

RealignReport realign(const std::string& in, const SaveTo& to, uint64_t alignment) {
  TS_CHECK_VALUE(to.path().has_value(), to.name(), "realign writes to a path");
  const std::string& out_path = *to.path();
  // pread, not a mapping: bytes pass through one bounded buffer, and the source stays readable
  // (its inode open) when the new file is renamed over it.
  const std::shared_ptr<const Source> source = file_source(in, /*mapped=*/false);
  const File file(source, LoadOptions().with_backend(Backend::kPread));
  const Header& header = file.header();
  const Layout layout = plan_layout(header.tensors(), header.metadata(), in, alignment);

  storage::AtomicFileWriter writer(out_path);
  writer.write(layout.header_bytes.data(), layout.header_bytes.size());
  std::unique_ptr<char[]> buffer(new char[kChunk]);
  RealignReport report;
  for (size_t i : layout.order) {
    const TensorInfo& info = header.tensors()[i];
    for_chunks(info.nbytes(), [&](uint64_t at, uint64_t n) {
      source->read(buffer.get(), n, header.data_offset() + info.begin + at);
      writer.write(buffer.get(), n);
    });
    report.bytes += info.nbytes();
  }
  source->check_intact();
  {
    const std::shared_ptr<const Source> copy = file_source(writer.temp_path(), /*mapped=*/false);
    const File written(copy, LoadOptions().with_backend(Backend::kPread));
    check_copy(header, *source, written.header(), *copy, layout, out_path);
  }
  writer.commit(to.is_durable());

  report.tensors = header.size();
  report.data_offset = layout.header.data_offset();
  for (const TensorInfo& info : layout.header.tensors()) {
    report.off_boundary += (report.data_offset + info.begin) % alignment != 0;
  }
  return report;
}

}  // namespace torch::safetensors
