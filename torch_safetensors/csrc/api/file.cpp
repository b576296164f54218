// File: the lazy handle. The header on open; tensors on request, all through one read path:
// plan the bytes (a whole tensor, or slice_plan), then view them in the source's memory, read
// them with Source::read (read_all: chunked and parallel when large), or, for another device,
// stream them into device memory through the staging ring (device/staging_ring.h).
#include "torch_safetensors/file.h"

#include <ATen/ops/empty.h>
#include <c10/util/strides.h>

#include "adapters/load_tensor.h"
#include "api/bulk_load.h"
#include "check.h"
#include "device/staging_ring.h"
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

bool staged(const LoadOptions& options) { return !options.device.is_cpu() || options.always_stage; }

at::Tensor cast(at::Tensor t, const LoadOptions& options) {
  return options.dtype && t.scalar_type() != *options.dtype ? t.to(*options.dtype) : t;
}

// Uninitialised destination memory on the device for a staged load: `bytes` (1-D uint8, what the
// ring fills) and the same memory as the tensor. Out of memory names the tensor.
struct Staged {
  at::Tensor bytes;
  at::Tensor tensor;
};
Staged staged_empty(uint64_t nbytes, c10::ScalarType dtype, c10::IntArrayRef sizes,
                    const LoadOptions& options, std::string_view source, std::string_view name) {
  try {
    const auto on_device = at::TensorOptions().device(options.device);
    at::Tensor bytes = at::empty({int64_t(nbytes)}, on_device.dtype(at::kByte));
    at::Tensor tensor =
        nbytes ? bytes.view(dtype).view(sizes) : at::empty(sizes, on_device.dtype(dtype));
    return {std::move(bytes), std::move(tensor)};
  } catch (const c10::Error& e) {  // OutOfMemoryError from devices; a plain c10::Error from the CPU
    TS_FAIL(source, "cannot allocate ", nbytes, " bytes on ", options.device, " for tensor '", name,
            "' (out of memory?); the tensors of this load allocated so far are freed: ",
            e.what_without_backtrace());
  }
}

device::RingOptions ring_options(const LoadOptions& options) {
  device::RingOptions ring;
  ring.total_bytes = std::max<uint64_t>(options.staging_bytes, uint64_t(2) << 20);
  return ring;
}

}  // namespace

std::vector<at::Tensor> load_many(const std::vector<LoadItem>& items, const LoadOptions& options,
                                  const std::function<void(size_t, const at::Tensor&)>& on_loaded) {
  std::vector<at::Tensor> out(items.size());
  auto done = [&](size_t i) {
    out[i] = cast(std::move(out[i]), options);
    if (on_loaded) on_loaded(i, out[i]);
  };
  // A planned item's bytes: its runs, relative to the tensor's first byte.
  auto runs_of = [](const LoadItem& item) {
    return item.plan ? item.plan->runs : std::vector<ByteRun>{{0, item.info->nbytes()}};
  };
  auto sizes_of = [](const LoadItem& item) {
    return item.plan ? item.plan->sizes : adapters::torch_sizes(*item.info, item.file->path());
  };
  auto absolute = [](const LoadItem& item, const ByteRun& run) {
    return item.file->header().data_offset() + item.info->begin + run.offset;
  };
  if (staged(options)) {
    std::vector<device::DeviceRun> runs;
    runs.reserve(items.size());
    for (size_t i = 0; i < items.size(); ++i) {
      const LoadItem& item = items[i];
      const uint64_t nbytes = item.plan ? item.plan->nbytes() : item.info->nbytes();
      Staged dst = item.into.defined()
                       ? Staged{item.into.reshape({-1}).view(at::kByte), item.into}
                       : staged_empty(nbytes, to_scalar_type(item.info->dtype), sizes_of(item),
                                      options, item.file->path(), item.info->name);
      uint64_t at = 0;
      for (const ByteRun& run : runs_of(item)) {
        runs.push_back({&item.file->source(), absolute(item, run), run.length, dst.bytes, at, i});
        at += run.length;
      }
      out[i] = std::move(dst.tensor);
    }
    device::copy_through_ring(runs, options.device, ring_options(options), done);
    return out;
  }
  std::vector<TensorInfo> to_read;  // whole tensors into fresh arenas
  std::vector<size_t> read_index;
  std::vector<storage::ReadJob> jobs;
  auto read_into = [&](const LoadItem& item, uint8_t* dst) {
    for (const ByteRun& run : runs_of(item)) {
      if (run.length) jobs.push_back({dst, run.length, absolute(item, run), &item.file->source()});
      dst += run.length;
    }
  };
  for (size_t i = 0; i < items.size(); ++i) {
    const LoadItem& item = items[i];
    const c10::ScalarType dtype = to_scalar_type(item.info->dtype);
    if (item.into.defined()) {  // read straight into the caller's memory
      out[i] = item.into;
      read_into(item, static_cast<uint8_t*>(out[i].data_ptr()));
      continue;
    }
    uint8_t* memory = options.backend == Backend::kMmap ? item.file->source().data() : nullptr;
    uint8_t* first =
        memory ? memory + item.file->header().data_offset() + item.info->begin : nullptr;
    if (memory && !item.plan && item.info->nbytes() > 0) {
      const std::vector<int64_t> sizes = sizes_of(item);
      out[i] = adapters::view_memory(first, item.info->nbytes(), dtype, sizes,
                                     c10::contiguous_strides(sizes), item.file->shared_source());
      if (out[i].defined()) continue;
    }
    if (memory && item.plan && item.plan->view && item.plan->nbytes() > 0) {
      const StridedView& v = *item.plan->view;
      const int64_t element = int64_t(c10::elementSize(dtype));
      int64_t last = 0;  // the view's last element, relative to its first
      for (size_t d = 0; d < v.sizes.size(); ++d) last += (v.sizes[d] - 1) * v.strides[d];
      out[i] = adapters::view_memory(first + v.offset * element, uint64_t(last + 1) * element,
                                     dtype, v.sizes, v.strides, item.file->shared_source());
      if (out[i].defined()) continue;
    }
    if (item.plan) {
      out[i] = at::empty(item.plan->sizes, at::TensorOptions().dtype(dtype));
      read_into(item, static_cast<uint8_t*>(out[i].data_ptr()));
      continue;
    }
    to_read.push_back(*item.info);
    read_index.push_back(i);
  }
  if (!to_read.empty()) {
    // Whole tensors: allocate everything, then read it all in large chunks on a few threads.
    std::vector<at::Tensor> owned = adapters::empty_for_read(to_read, items.front().file->path());
    for (size_t k = 0; k < owned.size(); ++k) {
      read_into(items[read_index[k]], static_cast<uint8_t*>(owned[k].data_ptr()));
      out[read_index[k]] = std::move(owned[k]);
    }
  }
  storage::read_all(jobs);
  for (size_t i = 0; i < items.size(); ++i) done(i);
  return out;
}

struct File::Impl {
  std::shared_ptr<const Source> source;
  Header header;
  LoadOptions options;
  uint8_t* memory = nullptr;  // the source's memory, when tensors view it

  const std::string& name() const { return source->name(); }
  uint64_t absolute(const TensorInfo& info) const { return header.data_offset() + info.begin; }

  // A whole tensor on the CPU: a view of the source's memory, or read into owned memory.
  at::Tensor whole_on_cpu(const TensorInfo& info) const {
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

  SlicePlan plan(const TensorInfo& info, c10::ArrayRef<IndexItem> index) const {
    const std::vector<int64_t> sizes = adapters::torch_sizes(info, name());
    const int64_t item = int64_t(c10::elementSize(to_scalar_type(info.dtype)));
    return plan_slice(sizes, item, index, name(), info.name);
  }
};

File::File(const std::string& path, const LoadOptions& options)
    : File(file_source(path, /*mapped=*/options.backend == Backend::kMmap), options) {}

File::File(std::shared_ptr<const Source> source, const LoadOptions& options) {
  TORCH_CHECK(source != nullptr, "safetensors: File needs a source, got nullptr");
  device::check_device(options.device, source->name());
  auto impl = std::make_shared<Impl>();
  impl->header = read_header(*source);
  impl->options = options;
  if (options.backend == Backend::kMmap) impl->memory = source->data();
  if (impl->memory && options.populate) storage::populate(impl->memory, source->size());
  impl->source = std::move(source);
  impl_ = std::move(impl);
}

const std::string& File::path() const { return impl_->name(); }
const Source& File::source() const { return *impl_->source; }
std::shared_ptr<const Source> File::shared_source() const { return impl_->source; }
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
  const TensorInfo& tensor_info = info(name);
  if (staged(options())) return load_many({{this, &tensor_info}}, options())[0];
  return cast(impl_->whole_on_cpu(tensor_info), options());
}

at::Tensor File::slice(std::string_view name,
                       at::ArrayRef<at::indexing::TensorIndex> indices) const {
  const TensorInfo& tensor_info = info(name);
  if (indices.empty()) return tensor(name);
  if (auto items = to_index_items(indices)) {
    const SlicePlan plan = impl_->plan(tensor_info, *items);
    return load_many({{this, &tensor_info, {}, &plan}}, options())[0];
  }
  return tensor(name).index(indices);
}

at::Tensor File::slice_intervals(std::string_view name, int64_t dim,
                                 std::vector<std::pair<int64_t, int64_t>> ranges) const {
  const TensorInfo& tensor_info = info(name);
  const SlicePlan plan = impl_->plan(tensor_info, dim_intervals(dim, std::move(ranges)));
  return load_many({{this, &tensor_info, {}, &plan}}, options())[0];
}

RawTensor File::raw(std::string_view name) const {
  const TensorInfo& tensor_info = info(name);
  TensorInfo bytes_info = tensor_info;  // the same bytes, typed as U8, on the CPU
  bytes_info.dtype = Dtype::U8;
  bytes_info.shape = {int64_t(tensor_info.nbytes())};
  return RawTensor{tensor_info.dtype, c10::IntArrayRef(tensor_info.shape).vec(),
                   impl_->whole_on_cpu(bytes_info)};
}

TensorDict File::tensors() const {
  const std::vector<TensorInfo>& infos = header().tensors();
  std::vector<LoadItem> items;
  items.reserve(infos.size());
  for (const TensorInfo& info : infos) items.push_back({this, &info});
  std::vector<at::Tensor> loaded = load_many(items, options());
  TensorDict out;
  out.reserve(infos.size());
  for (size_t i = 0; i < infos.size(); ++i)
    out.insert(std::string(infos[i].name), std::move(loaded[i]));
  return out;
}

TensorDict File::tensors(const std::vector<std::string>& names) const {
  std::vector<LoadItem> items;
  items.reserve(names.size());
  for (const std::string& name : names) items.push_back({this, &info(name)});
  std::vector<at::Tensor> loaded = load_many(items, options());
  TensorDict out;
  out.reserve(names.size());
  for (size_t i = 0; i < names.size(); ++i) out.insert(names[i], std::move(loaded[i]));
  return out;
}

void File::check_intact() const { impl_->source->check_intact(); }

}  // namespace torch::safetensors
