// File: the lazy handle. The header on open; tensors on request, all through one read path:
// plan the bytes (a whole tensor, or slice_plan), then view them in the source's memory or read
// them with Source::read (read_all: chunked and parallel when large).
#include "torch_safetensors/file.h"

#include <ATen/ops/empty.h>
#include <c10/util/strides.h>

#include "adapters/load_tensor.h"
#include "check.h"
#include "huge_pages.h"
#include "storage/io.h"

namespace torch::safetensors {
namespace {

// Reads and validates the header at the start of `source`.
Header read_header(const Source& source) {
  char prefix[kHeaderLengthSize] = {};
  const uint64_t available = std::min<uint64_t>(source.size(), kHeaderLengthSize);
  source.read(prefix, available, 0);
  const uint64_t n =
      parse_header_length(std::string_view(prefix, available), source.size(), source.name());
  // Not a std::string: that zeroes its bytes first, and large headers get huge pages here.
  const std::shared_ptr<char> json = shared_buffer(n);
  source.read(json.get(), n, kHeaderLengthSize);
  return parse_header(std::string_view(json.get(), n), source.size(), source.name());
}

// The torch view of an index: basic items go to the planner; nullopt for tensor indices, and
// for several ellipses, whose meaning is torch's own (the second covers no dimension).
std::optional<std::vector<IndexItem>> to_index_items(
    at::ArrayRef<at::indexing::TensorIndex> indices) {
  std::vector<IndexItem> items;
  items.reserve(indices.size());
  int ellipses = 0;
  for (const auto& index : indices) {
    if (index.is_ellipsis() && ++ellipses > 1) return std::nullopt;
    if (index.is_integer()) {
      items.emplace_back(index.integer().expect_int());
    } else if (index.is_slice()) {
      // torch fills an open start/stop with 0 / INDEX_MAX, which mean the same to the planner.
      const auto& s = index.slice();
      items.emplace_back(
          IndexRange{s.start().expect_int(), s.stop().expect_int(), s.step().expect_int()});
    } else if (index.is_ellipsis()) {
      items.emplace_back(EllipsisIndex{});
    } else if (index.is_none()) {
      items.emplace_back(NewAxis{});
    } else if (index.is_boolean()) {
      items.emplace_back(index.boolean());
    } else {
      return std::nullopt;
    }
  }
  return items;
}

}  // namespace

struct File::Impl {
  std::shared_ptr<const Source> source;
  Header header;
  LoadOptions options;
  uint8_t* memory = nullptr;  // the source's memory, when tensors view it

  const std::string& name() const { return source->name(); }
  uint64_t absolute(const TensorInfo& info) const { return header.data_offset() + info.begin; }

  at::Tensor to_device(at::Tensor t) const {
    return options.device.is_cpu() ? t : t.to(options.device);
  }

  // A whole tensor on the CPU: a view of the source's memory, or read into owned memory.
  at::Tensor whole(const TensorInfo& info) const {
    const std::vector<int64_t> sizes = adapters::torch_sizes(info, name());
    const c10::ScalarType dtype = to_scalar_type(info.dtype);
    if (memory && info.nbytes() > 0) {
      at::Tensor view = adapters::view_memory(memory + absolute(info), info.nbytes(), dtype, sizes,
                                              c10::contiguous_strides(sizes), source);
      if (view.defined()) return view;
    }
    at::Tensor out = at::empty(sizes, at::TensorOptions().dtype(dtype));
    if (info.nbytes())
      storage::read_all(*source, {{out.data_ptr(), info.nbytes(), absolute(info)}});
    return out;
  }

  // The planned part of a tensor on the CPU: a view when the plan is one and memory allows, else
  // exactly the planned runs read into owned memory.
  at::Tensor planned(const TensorInfo& info, const SlicePlan& plan) const {
    const c10::ScalarType dtype = to_scalar_type(info.dtype);
    if (memory && plan.view && plan.nbytes() > 0) {
      const StridedView& v = *plan.view;
      const int64_t item = int64_t(c10::elementSize(dtype));
      int64_t last = 0;  // the view's last element, relative to its first
      for (size_t d = 0; d < v.sizes.size(); ++d) last += (v.sizes[d] - 1) * v.strides[d];
      at::Tensor view =
          adapters::view_memory(memory + absolute(info) + v.offset * item,
                                uint64_t(last + 1) * item, dtype, v.sizes, v.strides, source);
      if (view.defined()) return view;
    }
    at::Tensor out = at::empty(plan.sizes, at::TensorOptions().dtype(dtype));
    std::vector<storage::ReadJob> jobs;
    jobs.reserve(plan.runs.size());
    auto* dst = static_cast<uint8_t*>(out.data_ptr());
    for (const ByteRun& run : plan.runs) {
      jobs.push_back({dst, run.length, absolute(info) + run.offset});
      dst += run.length;
    }
    storage::read_all(*source, jobs);
    return out;
  }

  at::Tensor slice(const TensorInfo& info, c10::ArrayRef<IndexItem> index) const {
    const std::vector<int64_t> sizes = adapters::torch_sizes(info, name());
    const int64_t item = int64_t(c10::elementSize(to_scalar_type(info.dtype)));
    return to_device(planned(info, plan_slice(sizes, item, index, name(), info.name)));
  }
};

File::File(const std::string& path, const LoadOptions& options)
    : File(file_source(path, /*mapped=*/options.backend == Backend::kMmap), options) {}

File::File(std::shared_ptr<const Source> source, const LoadOptions& options) {
  TORCH_CHECK(source != nullptr, "safetensors: File needs a source, got nullptr");
  auto impl = std::make_shared<Impl>();
  impl->header = read_header(*source);
  impl->options = options;
  if (options.backend == Backend::kMmap) impl->memory = source->data();
  impl->source = std::move(source);
  impl_ = std::move(impl);
}

const std::string& File::path() const { return impl_->name(); }
const Source& File::source() const { return *impl_->source; }
const LoadOptions& File::options() const { return impl_->options; }
const Header& File::header() const { return impl_->header; }

std::vector<std::string> File::keys() const {
  std::vector<std::string> names;
  names.reserve(header().size());
  for (const auto& info : header().tensors()) names.emplace_back(info.name);
  return names;
}

const TensorInfo& File::info(std::string_view name) const { return header().at(name, path()); }

at::Tensor File::tensor(std::string_view name) const {
  return impl_->to_device(impl_->whole(info(name)));
}

at::Tensor File::slice(std::string_view name,
                       at::ArrayRef<at::indexing::TensorIndex> indices) const {
  const TensorInfo& tensor_info = info(name);
  if (indices.empty()) return tensor(name);
  if (auto items = to_index_items(indices)) return impl_->slice(tensor_info, *items);
  return impl_->to_device(impl_->whole(tensor_info).index(indices));
}

at::Tensor File::slice_intervals(std::string_view name, int64_t dim,
                                 std::vector<std::pair<int64_t, int64_t>> ranges) const {
  return impl_->slice(info(name), dim_intervals(dim, std::move(ranges)));
}

RawTensor File::raw(std::string_view name) const {
  const TensorInfo& tensor_info = info(name);
  TensorInfo bytes_info = tensor_info;  // the same bytes, typed as U8
  bytes_info.dtype = Dtype::U8;
  bytes_info.shape = {int64_t(tensor_info.nbytes())};
  return RawTensor{tensor_info.dtype, c10::IntArrayRef(tensor_info.shape).vec(),
                   impl_->whole(bytes_info)};
}

TensorDict File::tensors() const {
  const std::vector<TensorInfo>& infos = header().tensors();
  TensorDict out;
  out.reserve(infos.size());
  if (impl_->memory) {
    for (const auto& info : infos) {
      out.insert(std::string(info.name), impl_->to_device(impl_->whole(info)));
    }
    return out;
  }
  // Reads: allocate everything, then read it all in large chunks on a few threads.
  std::vector<at::Tensor> owned = adapters::empty_for_read(infos, path());
  std::vector<storage::ReadJob> jobs;
  jobs.reserve(owned.size());
  for (size_t i = 0; i < owned.size(); ++i) {
    const TensorInfo& info = infos[i];
    if (info.nbytes()) jobs.push_back({owned[i].data_ptr(), info.nbytes(), impl_->absolute(info)});
  }
  storage::read_all(*impl_->source, jobs);
  for (size_t i = 0; i < owned.size(); ++i)
    out.insert(std::string(infos[i].name), impl_->to_device(std::move(owned[i])));
  return out;
}

void File::check_intact() const { impl_->source->check_intact(); }

}  // namespace torch::safetensors
