// A minimal dynamic parallel-for over std::thread (no OpenMP dependency).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace compexp {
namespace cpu {

// Threads to use when the caller passes 0: COMPEXP_NUM_THREADS if set, else all cores.
inline int default_threads() {
  if (const char* env = std::getenv("COMPEXP_NUM_THREADS")) {
    int n = std::atoi(env);
    if (n > 0) return n;
  }
  unsigned hc = std::thread::hardware_concurrency();
  return hc ? static_cast<int>(hc) : 1;
}

// Calls fn(begin, end) on disjoint chunks of [0, n) of at most `grain` items, from up to
// n_threads threads. Exceptions thrown by fn are rethrown in the caller (the first one).
template <class Fn>
void parallel_for(int64_t n, int n_threads, int64_t grain, Fn&& fn) {
  if (n <= 0) return;
  if (n_threads <= 0) n_threads = default_threads();
  grain = std::max<int64_t>(1, grain);
  const int64_t n_chunks = (n + grain - 1) / grain;
  n_threads = static_cast<int>(std::min<int64_t>(n_threads, n_chunks));
  if (n_threads <= 1) {
    fn(int64_t{0}, n);
    return;
  }
  std::atomic<int64_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto worker = [&]() {
    try {
      for (;;) {
        int64_t c = next.fetch_add(1);
        if (c >= n_chunks) break;
        int64_t begin = c * grain;
        fn(begin, std::min(n, begin + grain));
      }
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
      next.store(n_chunks);  // stop handing out work
    }
  };
  std::vector<std::thread> threads;
  threads.reserve(n_threads - 1);
  for (int t = 1; t < n_threads; ++t) threads.emplace_back(worker);
  worker();
  for (auto& t : threads) t.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace cpu
}  // namespace compexp
