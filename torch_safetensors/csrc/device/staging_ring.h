// Loading to a device other than the CPU at the speed of the bus, with bounded host memory: file
// bytes are read (pread, on worker threads) into a small ring of host buffers — pinned where an
// accelerator exists — and copied to the device asynchronously on a dedicated stream; an event per
// buffer says when it may be refilled. Only ATen's device-generic APIs (c10::Stream, c10::Event,
// the device guard), so one binary serves CPU-only, CUDA and ROCm builds of LibTorch.
#pragma once

#include "torch_safetensors/export.h"

#include <cstdint>
#include <functional>
#include <string_view>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include "torch_safetensors/source.h"

namespace torch::safetensors::device {

// One contiguous run of bytes: `length` bytes at `offset` of `source` into the 1-D uint8 tensor
// `dst` (on the destination device) at byte `dst_offset`. `group` numbers the tensor the run
// belongs to; runs come grouped, groups in increasing order.
struct TS_API DeviceRun {
  const Source* source;
  uint64_t offset;
  uint64_t length;
  at::Tensor dst;
  uint64_t dst_offset;
  size_t group;
};

struct TS_API RingOptions {
  uint64_t total_bytes = uint64_t(256) << 20;  // all buffers together; never grows with the model
  uint64_t buffer_bytes = uint64_t(16) << 20;  // one read and one copy
};

// Copies every run through the ring. `on_group_done(g)` is called on the calling thread once every
// run of group g has landed on the device, groups in order (streaming consumers take tensors
// then). On error, waits for copies in flight, then rethrows the first failure. With a CPU
// destination (the test path: pageable buffers, synchronous copies) it does the same work without
// streams.
TS_API void copy_through_ring(const std::vector<DeviceRun>& runs, c10::Device device,
                              const RingOptions& options,
                              const std::function<void(size_t)>& on_group_done = {});

// The host memory copy_through_ring allocates for runs of these lengths: its buffers, by the one
// rule it allocates them with (memory budgets check it before anything is allocated). The same in
// two steps, for a batch grown run by run: the chunks of one run, and the buffers for `chunks`.
TS_API uint64_t ring_host_bytes(const std::vector<uint64_t>& run_lengths,
                                const RingOptions& options);
TS_API size_t ring_chunks(uint64_t run_length, const RingOptions& options);
TS_API uint64_t ring_host_bytes_for_chunks(size_t chunks, const RingOptions& options);

// A c10::Error naming `source` unless this LibTorch can reach `device` (a CUDA device from a
// CPU-only build, cuda:7 on a one-GPU machine).
TS_API void check_device(c10::Device device, std::string_view source);

// Whether buffers for copies to `device` can be pinned (an accelerator of that type is present).
TS_API bool can_pin(c10::Device device);

}  // namespace torch::safetensors::device
