// The staging ring (staging_ring.h). Threads: worker threads read chunk i into buffer i % N once
// the copy of chunk i - N out of that buffer has finished; the calling thread submits the copies
// in order on the device stream and records each buffer's event, so a buffer is never refilled
// while the device still reads it, and host memory stays at N buffers whatever the model's size.
#include "device/staging_ring.h"

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <mutex>
#include <optional>
#include <thread>

#include <ATen/DeviceAccelerator.h>
#include <ATen/ops/empty.h>
#include <c10/core/Event.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include "check.h"

namespace torch::safetensors::device {
namespace {

struct Chunk {
  const DeviceRun* run;
  uint64_t done;  // bytes of the run before this chunk
  uint64_t length;
};

}  // namespace

void check_device(c10::Device device, std::string_view source) {
  if (device.is_cpu()) return;
  TS_CHECK(c10::impl::hasDeviceGuardImpl(device.type()), source, "cannot load to ", device,
           ": this LibTorch has no ", c10::DeviceTypeName(device.type()),
           " support (a CPU-only build?)");
  const c10::DeviceIndex count = c10::impl::getDeviceGuardImpl(device.type())->deviceCount();
  TS_CHECK(count > 0, source, "cannot load to ", device, ": no ",
           c10::DeviceTypeName(device.type()), " device is available");
  TS_CHECK(!device.has_index() || device.index() < count, source, "cannot load to ", device,
           ": this machine has ", int(count), " ", c10::DeviceTypeName(device.type()),
           " device(s), numbered from 0");
}

bool can_pin(c10::Device device) {
  if (device.is_cpu()) return false;
  const auto accelerator = at::getAccelerator(/*checked=*/false);
  return accelerator && *accelerator == device.type();
}

namespace {
uint64_t ring_buffer_bytes(const RingOptions& options) {
  return std::max<uint64_t>(1 << 20, std::min(options.buffer_bytes, options.total_bytes / 2));
}
size_t ring_buffer_count(size_t chunks, uint64_t buffer_bytes, const RingOptions& options) {
  const size_t count = size_t(
      std::clamp<uint64_t>(options.total_bytes / buffer_bytes, 2, std::max<size_t>(2, chunks)));
  return std::min(count, std::max<size_t>(chunks, 1));
}
}  // namespace

size_t ring_chunks(uint64_t run_length, const RingOptions& options) {
  // An empty run still takes a chunk (its turn), as copy_through_ring splits them.
  const uint64_t buffer_bytes = ring_buffer_bytes(options);
  return run_length == 0 ? 1 : size_t((run_length + buffer_bytes - 1) / buffer_bytes);
}

uint64_t ring_host_bytes_for_chunks(size_t chunks, const RingOptions& options) {
  const uint64_t buffer_bytes = ring_buffer_bytes(options);
  return buffer_bytes * ring_buffer_count(chunks, buffer_bytes, options);
}

uint64_t ring_host_bytes(const std::vector<uint64_t>& run_lengths, const RingOptions& options) {
  size_t chunks = 0;
  for (uint64_t length : run_lengths) chunks += ring_chunks(length, options);
  return ring_host_bytes_for_chunks(chunks, options);
}

void copy_through_ring(const std::vector<DeviceRun>& runs, c10::Device device,
                       const RingOptions& options,
                       const std::function<void(size_t)>& on_group_done) {
  const uint64_t buffer_bytes = ring_buffer_bytes(options);
  std::vector<Chunk> chunks;
  for (const DeviceRun& run : runs) {
    // An empty run still takes its turn, so that its group is delivered in order.
    if (run.length == 0) chunks.push_back({&run, 0, 0});
    for (uint64_t done = 0; done < run.length; done += buffer_bytes)
      chunks.push_back({&run, done, std::min(buffer_bytes, run.length - done)});
  }
  const size_t buffer_count = ring_buffer_count(chunks.size(), buffer_bytes, options);
  const bool on_cpu = device.is_cpu();
  const bool pinned = can_pin(device);
  std::vector<at::Tensor> buffers;
  for (size_t i = 0; i < buffer_count; ++i) {
    buffers.push_back(at::empty({int64_t(buffer_bytes)},
                                at::TensorOptions().dtype(at::kByte).pinned_memory(pinned)));
  }
  const size_t n = buffers.size();

  std::optional<c10::impl::VirtualGuardImpl> guard_impl;
  std::optional<c10::Stream> stream;
  std::vector<std::optional<c10::Event>> buffer_events(n);
  if (!on_cpu) {
    guard_impl.emplace(device.type());
    const c10::Device target = device.has_index() ? device : guard_impl->getDevice();
    stream = guard_impl->getStreamFromGlobalPool(target, /*isHighPriority=*/false);
  }

  // State shared with the readers, under `mutex`.
  std::mutex mutex;
  std::condition_variable changed;
  std::vector<char> filled(chunks.size(), 0);
  size_t submitted = 0;  // chunks whose copies were issued (their buffer's event set)
  std::exception_ptr error;
  std::atomic<size_t> next{0};
  auto fail = [&](std::exception_ptr e) {
    std::lock_guard<std::mutex> lock(mutex);
    if (!error) error = e;
    changed.notify_all();
  };

  auto reader = [&] {
    try {
      for (size_t i; (i = next.fetch_add(1)) < chunks.size();) {
        {
          // Buffer i % n is free once chunk i - n was submitted and its copy finished.
          std::unique_lock<std::mutex> lock(mutex);
          changed.wait(lock, [&] { return error || i < n || submitted > i - n; });
          if (error) return;
        }
        if (i >= n && buffer_events[i % n]) buffer_events[i % n]->synchronize();
        const Chunk& c = chunks[i];
        if (c.length)
          c.run->source->read(buffers[i % n].data_ptr(), c.length, c.run->offset + c.done);
        std::lock_guard<std::mutex> lock(mutex);
        filled[i] = 1;
        changed.notify_all();
      }
    } catch (...) {
      fail(std::current_exception());
    }
  };
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  const size_t reader_count = std::min<size_t>({cores, n, 16, std::max<size_t>(chunks.size(), 1)});
  std::vector<std::thread> readers;
  for (size_t t = 0; t < reader_count; ++t) readers.emplace_back(reader);

  // Groups whose last chunk was submitted, waiting for their copies to land.
  std::deque<std::pair<size_t, std::optional<c10::Event>>> landing;
  auto deliver = [&](bool wait) {
    while (!landing.empty()) {
      auto& [group, event] = landing.front();
      if (event) {
        if (!wait && !event->query()) return;
        event->synchronize();
      }
      const size_t done = group;
      landing.pop_front();
      if (on_group_done) on_group_done(done);
    }
  };

  std::exception_ptr submit_error;
  try {
    std::optional<c10::StreamGuard> stream_guard;
    if (stream) stream_guard.emplace(*stream);
    for (size_t i = 0; i < chunks.size(); ++i) {
      {
        std::unique_lock<std::mutex> lock(mutex);
        changed.wait(lock, [&] { return error || filled[i]; });
        if (error) break;
      }
      const Chunk& c = chunks[i];
      const at::Tensor host = buffers[i % n].narrow(0, 0, int64_t(c.length));
      at::Tensor dst = c.run->dst.narrow(0, int64_t(c.run->dst_offset + c.done), int64_t(c.length));
      std::optional<c10::Event> event;
      if (c.length == 0) {
        // nothing to copy
      } else if (on_cpu) {
        std::memcpy(dst.data_ptr(), host.data_ptr(), c.length);
      } else {
        dst.copy_(host, /*non_blocking=*/pinned);
        event.emplace(device.type());
        event->record(*stream);
      }
      const bool last_of_group = i + 1 == chunks.size() || chunks[i + 1].run->group != c.run->group;
      if (last_of_group) {
        std::optional<c10::Event> group_event;
        if (!on_cpu) {
          group_event.emplace(device.type());
          group_event->record(*stream);
        }
        landing.emplace_back(c.run->group, std::move(group_event));
      }
      {
        std::lock_guard<std::mutex> lock(mutex);
        buffer_events[i % n] = std::move(event);
        submitted = i + 1;
        changed.notify_all();
      }
      deliver(/*wait=*/false);
    }
  } catch (...) {
    submit_error = std::current_exception();
    fail(submit_error);
  }
  for (auto& t : readers) t.join();
  // Nothing may still read the buffers when they are freed, whatever happened.
  if (stream) stream->synchronize();
  if (error) std::rethrow_exception(error);
  deliver(/*wait=*/true);
}

}  // namespace torch::safetensors::device
