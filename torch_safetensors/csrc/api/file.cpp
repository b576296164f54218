// File: the lazy handle. Header on open; tensors on request, as views of the mapping (mmap) or
// freshly read (pread).
#include "torch_safetensors/file.h"

#include <ATen/ops/empty.h>

#include "adapters/load_tensor.h"
#include "check.h"
#include "storage/file_io.h"

namespace torch::safetensors {

struct File::Impl {
  LoadOptions options;
  std::unique_ptr<storage::ReadOnlyFile> file;  // pread backend reads through it
  Header header;
  std::shared_ptr<storage::PrivateMapping> mapping;  // mmap backend; tensors share ownership

  const std::string& path() const { return file->path(); }
  uint64_t absolute(const TensorInfo& info) const { return header.data_offset() + info.begin; }

  // The tensor on the CPU: a view of the mapping, or owned memory read from the file.
  at::Tensor read(const TensorInfo& info) const {
    if (mapping) {
      return adapters::view_bytes(info, mapping->data() + absolute(info), mapping, path());
    }
    at::Tensor out = adapters::empty_for(info, path());
    file->read_exact(out.data_ptr(), info.nbytes(), absolute(info));
    return out;
  }

  // Rows [begin, end) of the outermost dimension (of the torch sizes).
  at::Tensor read_rows(const TensorInfo& info, int64_t begin, int64_t end) const {
    std::vector<int64_t> sizes = adapters::torch_sizes(info);
    adapters::check_torch_sizes(info, sizes, path());
    const uint64_t row_bytes = sizes[0] == 0 ? 0 : info.nbytes() / uint64_t(sizes[0]);
    sizes[0] = end - begin;
    at::Tensor out =
        at::empty(sizes, at::TensorOptions().dtype(adapters::torch_dtype(info, path())));
    file->read_exact(out.data_ptr(), row_bytes * uint64_t(end - begin),
                     absolute(info) + row_bytes * uint64_t(begin));
    return out;
  }

  at::Tensor to_device(at::Tensor t) const {
    return options.device.is_cpu() ? t : t.to(options.device);
  }
};

File::File(const std::string& path, const LoadOptions& options) {
  auto impl = std::make_shared<Impl>();
  impl->options = options;
  impl->file = std::make_unique<storage::ReadOnlyFile>(path);
  impl->header = impl->file->read_header();
  if (options.backend == Backend::kMmap) {
    impl->mapping = std::make_shared<storage::PrivateMapping>(*impl->file);
  }
  impl_ = std::move(impl);
}

const std::string& File::path() const { return impl_->path(); }
const LoadOptions& File::options() const { return impl_->options; }
const Header& File::header() const { return impl_->header; }

std::vector<std::string> File::keys() const {
  std::vector<std::string> names;
  names.reserve(header().tensors.size());
  for (const auto& info : header().tensors) names.emplace_back(info.name);
  return names;
}

const TensorInfo& File::info(std::string_view name) const { return header().at(name, path()); }

at::Tensor File::tensor(std::string_view name) const {
  return impl_->to_device(impl_->read(info(name)));
}

at::Tensor File::slice(std::string_view name,
                       at::ArrayRef<at::indexing::TensorIndex> indices) const {
  const TensorInfo& tensor_info = info(name);
  const std::vector<int64_t> sizes = adapters::torch_sizes(tensor_info);
  const bool outer_selected =
      !indices.empty() && (indices[0].is_integer() || indices[0].is_slice());
  if (indices.empty()) return tensor(name);
  if (impl_->mapping || sizes.empty() || !outer_selected) {
    // A mapping only faults in the pages the view touches; nothing to narrow by hand.
    return impl_->to_device(impl_->read(tensor_info).index(indices));
  }
  // pread backend: read only the rows of dimension 0 that the first index selects.
  const int64_t rows = sizes[0];
  std::vector<at::indexing::TensorIndex> rest(indices.begin(), indices.end());
  int64_t begin = 0, end = 0;
  if (indices[0].is_integer()) {
    int64_t i = indices[0].integer().expect_int();
    TORCH_CHECK_INDEX(i >= -rows && i < rows, "safetensors: ", path(), ": index ", i,
                      " is out of bounds for dimension 0 of tensor '", name, "' with size ", rows);
    begin = i < 0 ? i + rows : i;
    end = begin + 1;
    rest[0] = at::indexing::TensorIndex(0);
  } else {
    const auto& s = indices[0].slice();
    const int64_t step = s.step().expect_int();
    TORCH_CHECK_VALUE(step > 0, "safetensors: ", path(), ": slice step must be positive");
    auto clamp = [rows](int64_t v) { return std::clamp<int64_t>(v < 0 ? v + rows : v, 0, rows); };
    begin = clamp(s.start().expect_int());
    end = std::max(begin, clamp(s.stop().expect_int()));
    rest[0] = at::indexing::Slice(0, end - begin, step);
  }
  return impl_->to_device(impl_->read_rows(tensor_info, begin, end).index(rest));
}

RawTensor File::raw(std::string_view name) const {
  const TensorInfo& tensor_info = info(name);
  TensorInfo bytes_info = tensor_info;  // the same bytes, typed as U8
  bytes_info.dtype = Dtype::U8;
  bytes_info.shape = {int64_t(tensor_info.nbytes())};
  return RawTensor{tensor_info.dtype, c10::IntArrayRef(tensor_info.shape).vec(),
                   impl_->read(bytes_info)};
}

TensorDict File::tensors() const {
  TensorDict out;
  out.reserve(header().tensors.size());
  if (impl_->mapping) {
    for (const auto& info : header().tensors)
      out.insert(std::string(info.name), impl_->to_device(impl_->read(info)));
    return out;
  }
  // pread: allocate everything, then read it all in large chunks on a few threads.
  std::vector<at::Tensor> owned = adapters::empty_for_read(header().tensors, path());
  std::vector<storage::ReadJob> jobs;
  jobs.reserve(owned.size());
  for (size_t i = 0; i < owned.size(); ++i) {
    const TensorInfo& info = header().tensors[i];
    if (info.nbytes()) jobs.push_back({owned[i].data_ptr(), info.nbytes(), impl_->absolute(info)});
  }
  storage::read_all(*impl_->file, jobs);
  for (size_t i = 0; i < owned.size(); ++i)
    out.insert(std::string(header().tensors[i].name), impl_->to_device(std::move(owned[i])));
  return out;
}

void File::check_intact() const {
  const uint64_t now = impl_->file->current_size();
  TS_CHECK(now >= impl_->file->size(), path(), "file shrank from ", impl_->file->size(), " to ",
           now, " bytes since it was opened; its tensors can no longer be read safely");
}

}  // namespace torch::safetensors
