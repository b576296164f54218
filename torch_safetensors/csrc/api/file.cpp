// The read path of the lazy handle: open a file (the header), then every tensor through one
// engine, load_many: plan the bytes (a whole tensor, or slice_plan), then view them in the
// source's memory, read them with Source::read (read_all: chunked and parallel when large), or,
// for another device, stream them into device memory through the staging ring
// (device/staging_ring.h). The handle itself (names, shards, accessors) is checkpoint.cpp.
#include <limits>
#include <optional>
#include <utility>

#include <ATen/TensorIndexing.h>
#include <ATen/ops/empty.h>
#include <c10/util/strides.h>

#include "adapters/load_tensor.h"
#include "api/handle.h"
#include "check.h"
#include "device/staging_ring.h"
#include "huge_pages.h"
#include "storage/io.h"
#include "torch_safetensors/errors.h"

namespace torch::safetensors::detail {
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

// Uninitialised destination memory on the device for a staged load: `bytes` (1-D uint8, what the
// ring fills) and the same memory as the tensor. Out of memory names the tensor.
struct Staged {
  at::Tensor bytes;
  at::Tensor tensor;
};
Staged staged_empty(uint64_t nbytes, c10::ScalarType dtype, c10::IntArrayRef sizes,
                    const LoadOptions& options, std::string_view source, std::string_view name) {
  try {
    const auto on_device = at::TensorOptions().device(options.target_device());
    at::Tensor bytes = at::empty({int64_t(nbytes)}, on_device.dtype(at::kByte));
    at::Tensor tensor =
        nbytes ? bytes.view(dtype).view(sizes) : at::empty(sizes, on_device.dtype(dtype));
    return {std::move(bytes), std::move(tensor)};
  } catch (const c10::Error& e) {  // OutOfMemoryError from devices; a plain c10::Error from the CPU
    TS_FAIL(source, "cannot allocate ", nbytes, " bytes on ", options.target_device(),
            " for tensor '", name,
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

c10::ScalarType loaded_dtype(c10::ScalarType stored, const LoadOptions& options) {
  return options.dtype && cast_applies(stored, options.cast_fp8) ? *options.dtype : stored;
}

at::Tensor cast_on_load(at::Tensor tensor, const LoadOptions& options) {
  const c10::ScalarType to = loaded_dtype(tensor.scalar_type(), options);
  return to == tensor.scalar_type() ? tensor : tensor.to(to);
}

namespace {

// What one item of a load allocates, the staging ring aside (`bytes`: on the load's device, the
// host for the CPU), and the ring chunks its runs take when the load is staged.
struct ItemCost {
  uint64_t bytes = 0;
  size_t chunks = 0;
};

ItemCost item_cost(const LoadItem& item, const LoadOptions& options) {
  ItemCost out;
  const c10::ScalarType stored = to_scalar_type(item.info->dtype);
  const uint64_t nbytes = item.plan ? item.plan->nbytes() : item.info->nbytes();
  // Owned memory for the stored bytes, unless they are filled in place or viewed (load_many's
  // branches, in its order).
  bool owned = !item.into.defined();
  if (staged(options)) {
    if (item.plan) {
      for (const ByteRun& run : item.plan->runs)
        out.chunks += device::ring_chunks(run.length, ring_options(options));
    } else {
      out.chunks = device::ring_chunks(item.info->nbytes(), ring_options(options));
    }
  } else if (owned && options.backend == Backend::kMmap && item.file->memory && nbytes > 0) {
    const uint8_t* first = item.file->memory + item.file->absolute(*item.info);
    const bool viewable = !item.plan || item.plan->view;
    const int64_t offset = item.plan && item.plan->view
                               ? item.plan->view->offset * int64_t(c10::elementSize(stored))
                               : 0;
    owned = !(viewable && can_view_at(reinterpret_cast<uintptr_t>(first + offset), stored));
  }
  out.bytes = owned ? nbytes : 0;
  // A cast allocates its copy while the stored bytes are still held.
  const c10::ScalarType loaded = loaded_dtype(stored, options);
  if (loaded != stored && c10::elementSize(stored) > 0)
    out.bytes += nbytes / c10::elementSize(stored) * c10::elementSize(loaded);
  return out;
}

// Adds an item's cost to `estimate` (staging aside): its bytes go to the device or the host.
void add_cost(MemoryEstimate& estimate, const LoadItem& item, const ItemCost& cost,
              const LoadOptions& options) {
  (options.target_device().is_cpu() ? estimate.host_bytes : estimate.device_bytes) += cost.bytes;
  ++estimate.tensors;
  if (cost.bytes > estimate.largest_bytes || estimate.largest.empty()) {
    estimate.largest = item.info->name;
    estimate.largest_bytes = cost.bytes;
  }
}

void add_staging(MemoryEstimate& estimate, size_t chunks, const LoadOptions& options) {
  if (!staged(options) || estimate.tensors == 0) return;
  estimate.staging_bytes = device::ring_host_bytes_for_chunks(chunks, ring_options(options));
  estimate.host_bytes += estimate.staging_bytes;
}

}  // namespace

void check_load_options(const LoadOptions& options, std::string_view source) {
  if (options.device) device::check_device(*options.device, source);
  for (const auto& [memory, budget] :
       {std::pair{"device", options.device_budget}, std::pair{"host", options.host_budget}}) {
    TS_CHECK_VALUE(!budget || *budget > 0, source, "a ", memory,
                   " budget of 0 bytes fits nothing: expected a positive number of bytes, or no ",
                   memory, " budget for no limit");
  }
  if (options.dtype) {
    TS_CHECK_VALUE(is_cast_target(*options.dtype), source,
                   "dtype on load must be a floating dtype (Float64, Float32, Float16 or "
                   "BFloat16), found ",
                   *options.dtype);
  }
}

MemoryEstimate estimate_memory(const std::vector<LoadItem>& items, const LoadOptions& options) {
  MemoryEstimate out;
  size_t chunks = 0;
  for (const LoadItem& item : items) {
    const ItemCost cost = item_cost(item, options);
    add_cost(out, item, cost, options);
    chunks += cost.chunks;
  }
  add_staging(out, chunks, options);
  return out;
}

void check_budgets(const MemoryEstimate& estimate, const LoadOptions& options,
                   std::string_view source, std::string_view what) {
  auto check = [&](const char* memory, uint64_t needed, const std::optional<uint64_t>& budget) {
    if (budget && needed > *budget) {
      throw_over_budget(source, what, memory, needed, *budget,
                        std::string_view(memory) == "host" ? estimate.staging_bytes : 0,
                        estimate.largest, estimate.largest_bytes);
    }
  };
  check("device", estimate.device_bytes, options.device_budget);
  check("host", estimate.host_bytes, options.host_budget);
}

std::vector<LoadBatch> plan_batches(const std::vector<LoadItem>& items, const LoadOptions& options,
                                    std::string_view source) {
  constexpr uint64_t kNoLimit = std::numeric_limits<uint64_t>::max();
  const bool is_staged = staged(options);
  const bool on_cpu = options.target_device().is_cpu();
  // Reads into owned memory go in batches of about staging_bytes without a host budget.
  const bool pread = options.backend == Backend::kPread && !is_staged;
  const uint64_t device_limit = options.device_budget.value_or(kNoLimit);
  const uint64_t host_limit =
      options.host_budget.value_or(pread ? options.staging_bytes : kNoLimit);
  std::vector<ItemCost> costs;
  costs.reserve(items.size());
  for (const LoadItem& item : items) costs.push_back(item_cost(item, options));
  // Plan time: a tensor that fits no batch (alone, with its ring) fails before anything is read;
  // the error names the one that misses by most.
  if (options.device_budget || options.host_budget) {
    std::optional<MemoryEstimate> worst;
    uint64_t worst_shortfall = 0;
    for (size_t i = 0; i < items.size(); ++i) {
      MemoryEstimate alone;
      add_cost(alone, items[i], costs[i], options);
      add_staging(alone, costs[i].chunks, options);
      uint64_t shortfall = 0;
      if (options.device_budget && alone.device_bytes > *options.device_budget)
        shortfall = alone.device_bytes - *options.device_budget;
      if (options.host_budget && alone.host_bytes > *options.host_budget)
        shortfall = std::max(shortfall, alone.host_bytes - *options.host_budget);
      if (shortfall > worst_shortfall) worst = alone, worst_shortfall = shortfall;
    }
    if (worst)
      check_budgets(*worst, options, source, "a streaming load's smallest batch (one tensor)");
  }
  std::vector<LoadBatch> out;
  for (size_t begin = 0; begin < items.size();) {
    LoadBatch batch{begin, begin, {}};
    uint64_t device = 0, host = 0;
    size_t chunks = 0;
    for (; batch.end < items.size(); ++batch.end) {
      const ItemCost& cost = costs[batch.end];
      const uint64_t d = device + (on_cpu ? 0 : cost.bytes);
      const uint64_t h = host + (on_cpu ? cost.bytes : 0);
      const uint64_t ring = is_staged ? device::ring_host_bytes_for_chunks(chunks + cost.chunks,
                                                                           ring_options(options))
                                      : 0;
      if (batch.end != begin && (d > device_limit || h + ring > host_limit)) break;
      device = d, host = h, chunks += cost.chunks;
      add_cost(batch.memory, items[batch.end], cost, options);
    }
    add_staging(batch.memory, chunks, options);
    begin = batch.end;
    out.push_back(std::move(batch));
  }
  return out;
}

std::vector<at::Tensor> load_many(const std::vector<LoadItem>& items, const LoadOptions& options,
                                  const std::function<void(size_t, const at::Tensor&)>& on_loaded) {
  if (items.empty()) return {};
  // Plan time: nothing is allocated unless all of it fits the budgets (callers that know the
  // checkpoint's name check first, naming it).
  if (options.device_budget || options.host_budget)
    check_budgets(estimate_memory(items, options), options, items.front().file->name());
  std::vector<at::Tensor> out(items.size());
  auto done = [&](size_t i) {
    out[i] = cast_on_load(std::move(out[i]), options);
    if (on_loaded) on_loaded(i, out[i]);
  };
  // A planned item's bytes: its runs, relative to the tensor's first byte.
  auto runs_of = [](const LoadItem& item) {
    return item.plan ? item.plan->runs : std::vector<ByteRun>{{0, item.info->nbytes()}};
  };
  auto sizes_of = [](const LoadItem& item) {
    return item.plan ? item.plan->sizes : adapters::torch_sizes(*item.info, item.file->name());
  };
  auto absolute = [](const LoadItem& item, const ByteRun& run) {
    return item.file->absolute(*item.info) + run.offset;
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
                                      options, item.file->name(), item.info->name);
      uint64_t at = 0;
      for (const ByteRun& run : runs_of(item)) {
        runs.push_back(
            {item.file->source.get(), absolute(item, run), run.length, dst.bytes, at, i});
        at += run.length;
      }
      out[i] = std::move(dst.tensor);
    }
    device::copy_through_ring(runs, options.target_device(), ring_options(options), done);
    return out;
  }
  std::vector<TensorInfo> to_read;  // whole tensors into fresh arenas
  std::vector<size_t> read_index;
  std::vector<storage::ReadJob> jobs;
  auto read_into = [&](const LoadItem& item, uint8_t* dst) {
    for (const ByteRun& run : runs_of(item)) {
      if (run.length)
        jobs.push_back({dst, run.length, absolute(item, run), item.file->source.get()});
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
    uint8_t* memory = options.backend == Backend::kMmap ? item.file->memory : nullptr;
    uint8_t* first = memory ? memory + item.file->absolute(*item.info) : nullptr;
    if (memory && !item.plan && item.info->nbytes() > 0) {
      const std::vector<int64_t> sizes = sizes_of(item);
      out[i] = adapters::view_memory(first, item.info->nbytes(), dtype, sizes,
                                     c10::contiguous_strides(sizes), item.file->source);
      if (out[i].defined()) continue;
    }
    if (memory && item.plan && item.plan->view && item.plan->nbytes() > 0) {
      const StridedView& v = *item.plan->view;
      const int64_t element = int64_t(c10::elementSize(dtype));
      int64_t last = 0;  // the view's last element, relative to its first
      for (size_t d = 0; d < v.sizes.size(); ++d) last += (v.sizes[d] - 1) * v.strides[d];
      out[i] = adapters::view_memory(first + v.offset * element, uint64_t(last + 1) * element,
                                     dtype, v.sizes, v.strides, item.file->source);
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
    std::vector<at::Tensor> owned = adapters::empty_for_read(to_read, items.front().file->name());
    for (size_t k = 0; k < owned.size(); ++k) {
      read_into(items[read_index[k]], static_cast<uint8_t*>(owned[k].data_ptr()));
      out[read_index[k]] = std::move(owned[k]);
    }
  }
  storage::read_all(jobs);
  for (size_t i = 0; i < items.size(); ++i) done(i);
  return out;
}

SlicePlan plan_tensor_slice(const Located& tensor, c10::ArrayRef<IndexItem> index) {
  const std::string& source = tensor.file->name();
  const std::vector<int64_t> sizes = adapters::torch_sizes(*tensor.info, source);
  const int64_t item = int64_t(c10::elementSize(tensor.info->scalar_type()));
  return plan_slice(sizes, item, index, source, tensor.info->name);
}

std::shared_ptr<const OpenFile> open_file(std::shared_ptr<const Source> source,
                                          const LoadOptions& options) {
  TORCH_CHECK(source != nullptr, "safetensors: a checkpoint needs a source, got nullptr");
  check_load_options(options, source->name());
  auto file = std::make_shared<OpenFile>();
  file->header = read_header(*source);
  if (options.backend == Backend::kMmap) file->memory = source->data();
  if (file->memory && options.populate) storage::populate(file->memory, source->size());
  file->source = std::move(source);
  return file;
}

// One tensor: a view or a read on the CPU without the bulk machinery (the common
// `tensor(name)` call), else load_many.
at::Tensor load_one(const Located& tensor, const LoadOptions& options) {
  const OpenFile& file = *tensor.file;
  const TensorInfo& info = *tensor.info;
  if (staged(options) || options.device_budget || options.host_budget)
    return load_many({{&file, &info}}, options)[0];
  const std::vector<int64_t> sizes = adapters::torch_sizes(info, file.name());
  const c10::ScalarType dtype = info.scalar_type();
  if (file.memory && info.nbytes() > 0) {
    at::Tensor view = adapters::view_memory(file.memory + file.absolute(info), info.nbytes(), dtype,
                                            sizes, c10::contiguous_strides(sizes), file.source);
    if (view.defined()) return cast_on_load(std::move(view), options);
  }
  at::Tensor out = at::empty(sizes, at::TensorOptions().dtype(dtype));
  if (info.nbytes())
    storage::read_all(*file.source, {{out.data_ptr(), info.nbytes(), file.absolute(info)}});
  return cast_on_load(std::move(out), options);
}

at::Tensor load_slice(const Located& tensor, at::ArrayRef<at::indexing::TensorIndex> indices,
                      const LoadOptions& options) {
  if (indices.empty()) return load_one(tensor, options);
  if (auto items = to_index_items(indices)) {
    const SlicePlan plan = plan_tensor_slice(tensor, *items);
    return load_many({{tensor.file, tensor.info, {}, &plan}}, options)[0];
  }
  return load_one(tensor, options).index(indices);
}

RawTensor load_raw(const Located& tensor) {
  const TensorInfo& info = *tensor.info;
  TensorInfo bytes_info = info;  // the same bytes, typed as U8, on the CPU, never cast
  bytes_info.dtype = Dtype::U8;
  bytes_info.shape = {int64_t(info.nbytes())};
  return RawTensor{
      info.dtype, c10::IntArrayRef(info.shape).vec(),
      load_one({tensor.file, &bytes_info}, LoadOptions().with_backend(Backend::kMmap))};
}

}  // namespace torch::safetensors::detail

namespace torch::safetensors {

void throw_over_budget(std::string_view source, std::string_view what, std::string_view memory,
                       uint64_t needed, uint64_t budget, uint64_t staging, std::string_view largest,
                       uint64_t largest_bytes) {
  std::string message = c10::str("safetensors: ", source, ": ", what, " needs ", needed,
                                 " bytes of ", memory, " memory");
  if (staging) message += c10::str(" (", staging, " of them staging buffers)");
  message += c10::str(", ", needed - budget, " more than the ", memory, " budget of ", budget,
                      " bytes; its largest tensor is '", largest, "' (", largest_bytes, " bytes)");
  throw BudgetError(std::string(memory), needed, budget, std::string(largest), largest_bytes,
                    message);
}

}  // namespace torch::safetensors
