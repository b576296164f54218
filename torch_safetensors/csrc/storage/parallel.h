// One thread pool pattern for I/O: parallel reads (read_all), the sharded save's files and the
// positional writes of saves from many ranks and consolidations.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace torch::safetensors::storage {

// How many threads an I/O step uses: `requested`, else (0) up to 8 of this machine's cores; never
// more than there are jobs. The one place for the default.
inline unsigned io_threads(unsigned requested, size_t jobs) {
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  const unsigned wanted = requested ? requested : std::min(8u, cores);
  return unsigned(std::max<size_t>(1, std::min<size_t>(wanted, jobs)));
}

// Runs job(i) for every i in [0, count) on `threads` threads, this one included. After the first
// failure the others stop at their next job; it is rethrown once every thread has stopped.
template <typename Job>
void run_parallel(size_t count, unsigned threads, const Job& job) {
  std::atomic<size_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto worker = [&] {
    try {
      for (size_t i; (i = next.fetch_add(1)) < count;) job(i);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
      next = count;
    }
  };
  std::vector<std::thread> pool;
  for (unsigned t = 1; t < threads && t < count; ++t) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace torch::safetensors::storage
