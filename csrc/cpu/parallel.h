// A minimal dynamic parallel-for over std::thread (no OpenMP dependency).
//
// Thread count. A kernel's `n_threads` = 0 means default_threads():
//   * COMPEXP_NUM_THREADS, when it is a whole decimal number >= 1 (surrounding blanks allowed),
//     capped at max_threads();
//   * otherwise (unset, empty, not a number, trailing junk, < 1, or out of range of long long)
//     the variable is ignored and all hardware threads are used (1 when unknown);
//   thread_setting() reports what was read and why (Python: _core.thread_setting()).
// max_threads() is 4 x the hardware threads, at most 1024 (1024 when the hardware count is
// unknown): more threads than that never speeds up these memory-bound kernels. An explicit
// n_threads above it is capped too.
//
// Failure to start threads. parallel_for starts its threads one by one; when the system
// refuses one (std::system_error: RLIMIT_NPROC, RLIMIT_AS too small for the thread stacks,
// ...), it stops starting more and the threads already running plus the calling thread do
// all the remaining work (workers take chunks from a shared counter, so no work is lost).
// The calling thread can always work, so a refusal never aborts and never raises.
#pragma once

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace compexp {
namespace cpu {

// What default_threads() resolved to, and from what.
struct ThreadSetting {
  int threads = 1;       // the default thread count
  int hardware = 0;      // std::thread::hardware_concurrency() (0: unknown)
  int cap = 1024;        // max_threads()
  bool env_set = false;  // COMPEXP_NUM_THREADS is set
  std::string env;       // its raw value
  std::string source;    // "COMPEXP_NUM_THREADS", "COMPEXP_NUM_THREADS (capped)" or "hardware"
  std::string note;      // why the variable was ignored or capped ("" when used as is / unset)
};

inline int hardware_threads() {
  const unsigned hc = std::thread::hardware_concurrency();
  return static_cast<int>(std::min<unsigned>(hc, 1u << 20));
}

// The most threads a kernel uses: 4 x the hardware threads, at most 1024.
inline int max_threads() {
  const int hw = hardware_threads();
  return hw > 0 ? std::min(1024, 4 * hw) : 1024;
}

// Parses COMPEXP_NUM_THREADS with full range checks (see the header comment). Reads the
// environment on every call (cheap; the kernels call it once per operation).
inline ThreadSetting thread_setting() {
  ThreadSetting s;
  s.hardware = hardware_threads();
  s.cap = max_threads();
  const int fallback = s.hardware > 0 ? s.hardware : 1;
  s.threads = fallback;
  s.source = "hardware";
  const char* env = std::getenv("COMPEXP_NUM_THREADS");
  if (!env) return s;
  s.env_set = true;
  s.env = env;
  const char* p = env;
  while (*p && std::isspace(static_cast<unsigned char>(*p))) ++p;
  const char* digits = (*p == '+' || *p == '-') ? p + 1 : p;
  if (!std::isdigit(static_cast<unsigned char>(*digits))) {
    s.note = "COMPEXP_NUM_THREADS='" + s.env + "' is not a whole number: ignored";
    return s;
  }
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(p, &end, 10);
  const bool overflow = errno == ERANGE;
  while (*end && std::isspace(static_cast<unsigned char>(*end))) ++end;
  if (*end) {
    s.note = "COMPEXP_NUM_THREADS='" + s.env + "' is not a whole number: ignored";
    return s;
  }
  if (overflow && *p != '-') {
    s.threads = s.cap;
    s.source = "COMPEXP_NUM_THREADS (capped)";
    s.note = "COMPEXP_NUM_THREADS='" + s.env + "' is out of range: capped at " + std::to_string(s.cap);
    return s;
  }
  if (overflow || v < 1) {
    s.note = "COMPEXP_NUM_THREADS='" + s.env + "' is below 1: ignored";
    return s;
  }
  if (v > s.cap) {
    s.threads = s.cap;
    s.source = "COMPEXP_NUM_THREADS (capped)";
    s.note = "COMPEXP_NUM_THREADS=" + std::to_string(v) + " is above the cap: capped at " +
             std::to_string(s.cap);
    return s;
  }
  s.threads = static_cast<int>(v);
  s.source = "COMPEXP_NUM_THREADS";
  return s;
}

// Threads to use when the caller passes 0 (see the header comment).
inline int default_threads() { return thread_setting().threads; }

// Calls fn(begin, end) on disjoint chunks of [0, n) of at most `grain` items, from up to
// n_threads threads (0: default_threads(); capped at max_threads()). Exceptions thrown by fn
// are rethrown in the caller (the first one). Threads the system refuses to start are done
// without (see the header comment): every chunk still runs exactly once.
template <class Fn>
void parallel_for(int64_t n, int n_threads, int64_t grain, Fn&& fn) {
  if (n <= 0) return;
  if (n_threads <= 0) n_threads = default_threads();
  n_threads = std::min(n_threads, max_threads());
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
  try {
    threads.reserve(n_threads - 1);
    for (int t = 1; t < n_threads; ++t) threads.emplace_back(worker);
  } catch (...) {
    // std::system_error (the system refused a thread) or std::bad_alloc: carry on with the
    // threads that started; the calling thread below works until every chunk is taken.
  }
  worker();
  for (auto& t : threads) t.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace cpu
}  // namespace compexp
