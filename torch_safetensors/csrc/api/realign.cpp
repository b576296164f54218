// realign: a file re-laid out by the one layout planner, its tensor bytes streamed from the old
// file in bounded chunks, checked against it byte for byte before it replaces anything.
#include <cstring>
#include <memory>
#include <string>

#include "check.h"
#include "storage/io.h"
#include "torch_safetensors/file.h"
#include "torch_safetensors/serialize.h"
#include "torch_safetensors/source.h"

namespace torch::safetensors {
namespace {

// The written file against the source: the same metadata and tensors (name, dtype, shape, bytes),
// and the layout plan_layout promised.
void check_copy(const Header& from, const Source& source, const Header& written, const Source& copy,
                const Layout& layout, const std::string& name) {
  TS_CHECK(written.metadata() == from.metadata(), name, "realign: the metadata changed");
  TS_CHECK(written.size() == from.size(), name, "realign: ", written.size(), " tensors written, ",
           from.size(), " read");
  TS_CHECK(written.data_offset() == layout.header.data_offset(), name,
           "realign: the data section moved");
  std::string other;
  for (const TensorInfo& info : from.tensors()) {
    const TensorInfo* out = written.find(info.name);
    TS_CHECK(out != nullptr, name, "realign: tensor '", info.name, "' is missing");
    TS_CHECK(out->dtype == info.dtype && out->shape == info.shape, name, "realign: tensor '",
             info.name, "' changed dtype or shape");
    const TensorInfo* planned = layout.header.find(info.name);
    TS_CHECK(planned && planned->begin == out->begin && planned->end == out->end, name,
             "realign: tensor '", info.name, "' is not where the layout put it");
    storage::for_each_chunk(source, from.data_offset() + info.begin, info.nbytes(),
                            [&](const char* data, uint64_t n, uint64_t at) {
                              other.resize(n);
                              copy.read(other.data(), n, written.data_offset() + out->begin + at);
                              TS_CHECK(std::memcmp(data, other.data(), n) == 0, name,
                                       "realign: tensor '", info.name,
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
  RealignReport report;
  for (size_t i : layout.order) {
    const TensorInfo& info = header.tensors()[i];
    storage::for_each_chunk(*source, header.data_offset() + info.begin, info.nbytes(),
                            [&](const char* data, uint64_t n, uint64_t) { writer.write(data, n); });
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
