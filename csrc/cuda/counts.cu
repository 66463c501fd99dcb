// Count kernels on the GPU: primitive counts and fused extension counts.
//
// Work is cut into chunks of at most kChunkBlocks consecutive blocks of one mask (a formula,
// or a unit for primitive counts); one thread block takes one chunk. Each warp walks blocks of
// the chunk; for a block b it counts the mask's block (and its AND with the unit's block at b)
// against the concept entries stored in b, 4 entries per warp step with 8 lanes per entry (one
// 64-bit word per lane: the warp reads 256 contiguous bytes of entry words), reducing the 8
// popcounts with shuffles. Counts go to a per-chunk accumulator in shared memory, one packed
// word f | g << 32 per concept (a chunk adds at most kChunkBlocks * 512 < 2^32 to each half, so
// the halves never carry into each other), which is added to the global 64-bit counts with
// atomicAdd at the end of the chunk. When K accumulators do not fit in shared memory, the
// counts are added to global memory directly (two 64-bit atomics per non-zero entry).
// All counts are exact integers: results equal the CPU's bit for bit, whatever the order of
// the additions. Extension counts also sum the work walked (ExtensionWork: formula blocks,
// partial and full concept entries of those blocks): lane 0 of each warp counts its blocks and
// adds them to three global counters at the end, so no block ids go back to the host.
#include <algorithm>
#include <stdexcept>
#include <vector>

#include "../checks.h"
#include "cuda_backend.h"
#include "kernels.cuh"

namespace compexp {
namespace cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kChunkBlocks = 256;
static_assert(kChunkBlocks * kBlockCells < (int64_t{1} << 32), "packed per-chunk counts must fit 32 bits");
static_assert(kBlockWords == 8, "the kernels map one block to 8 lanes");

// Blocks p0 .. p1-1 of mask `row`; u0 .. u1-1 are the stored blocks of its unit (g only).
struct Chunk {
  int64_t row, p0, p1, u0, u1;
};

using u64 = unsigned long long;

template <bool kWithG, bool kShared>
__device__ __forceinline__ void add_counts(u64* acc, u64* frow, u64* grow, int64_t j, unsigned pf, unsigned pg) {
  if (kShared) {
    atomicAdd(acc + j, static_cast<u64>(pf) | (static_cast<u64>(pg) << 32));
  } else {
    atomicAdd(frow + j, static_cast<u64>(pf));
    if (kWithG && pg) atomicAdd(grow + j, static_cast<u64>(pg));
  }
}

template <bool kWithG, bool kShared>
__global__ void __launch_bounds__(kThreads)
counts_kernel(IndexPtrs ix, MaskPtrs fm, MaskPtrs um, const Chunk* __restrict__ chunks, u64* f, u64* g,
              u64* work) {
  extern __shared__ u64 acc[];  // [K] when kShared
  const Chunk c = chunks[blockIdx.x];
  const int64_t K = ix.n_concepts;
  u64* frow = f + c.row * K;
  u64* grow = kWithG ? g + c.row * K : nullptr;
  if (kShared) {
    for (int64_t j = threadIdx.x; j < K; j += kThreads) acc[j] = 0;
    __syncthreads();
  }
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int word = lane & 7;  // the word of a block this lane holds
  const int sub = lane >> 3;  // which of the 4 entries of a step this lane counts
  u64 walked_blocks = 0, walked_partial = 0, walked_full = 0;  // this warp's work
  // All loop bounds below are warp-uniform, so full-mask shuffles are safe.
  for (int64_t p = c.p0 + warp; p < c.p1; p += kWarps) {
    const int64_t b = fm.block[p];
    const uint64_t fw = fm.words[p * kBlockWords + word];
    walked_blocks += 1;
    walked_partial += static_cast<u64>(ix.block_ptr[b + 1] - ix.block_ptr[b]);
    walked_full += static_cast<u64>(ix.full_ptr[b + 1] - ix.full_ptr[b]);
    uint64_t uf = 0;
    if (kWithG) {
      const int64_t q = lower_bound(um.block, c.u0, c.u1, b);
      if (q < c.u1 && um.block[q] == b) uf = fw & um.words[q * kBlockWords + word];
    }
    const int64_t e0 = ix.block_ptr[b], e1 = ix.block_ptr[b + 1];
    for (int64_t base = e0; base < e1; base += 4) {
      const int64_t e = base + sub;
      const bool valid = e < e1;
      const uint64_t cw = valid ? ix.entry_words[e * kBlockWords + word] : 0;
      unsigned pf = __popcll(fw & cw);
      unsigned pg = kWithG ? __popcll(uf & cw) : 0u;
#pragma unroll
      for (int m = 1; m < 8; m <<= 1) {
        pf += __shfl_xor_sync(0xffffffffu, pf, m);
        if (kWithG) pg += __shfl_xor_sync(0xffffffffu, pg, m);
      }
      // pg <= pf (uf is a subset of fw): nothing to add when pf is 0.
      if (valid && word == 0 && pf != 0)
        add_counts<kWithG, kShared>(acc, frow, grow, ix.entry_concept[e], pf, pg);
    }
    const int64_t f0 = ix.full_ptr[b], f1 = ix.full_ptr[b + 1];
    if (f0 != f1) {
      // Full concept blocks: |F & C| = |F| and |U & F & C| = |U & F| in this block.
      unsigned cf = __popcll(fw), cg = kWithG ? __popcll(uf) : 0u;
#pragma unroll
      for (int m = 1; m < 8; m <<= 1) {
        cf += __shfl_xor_sync(0xffffffffu, cf, m);
        if (kWithG) cg += __shfl_xor_sync(0xffffffffu, cg, m);
      }
      if (cf != 0)
        for (int64_t q = f0 + lane; q < f1; q += 32)
          add_counts<kWithG, kShared>(acc, frow, grow, ix.full_concept[q], cf, cg);
    }
  }
  if (work && lane == 0 && walked_blocks) {
    atomicAdd(work + 0, walked_blocks);
    atomicAdd(work + 1, walked_partial);
    atomicAdd(work + 2, walked_full);
  }
  if (kShared) {
    __syncthreads();
    for (int64_t j = threadIdx.x; j < K; j += kThreads) {
      const u64 v = acc[j];
      const u64 lo = v & 0xffffffffull, hi = v >> 32;
      if (lo) atomicAdd(frow + j, lo);
      if (kWithG && hi) atomicAdd(grow + j, hi);
    }
  }
}

MaskPtrs ptrs(const DeviceMaskSet& m) {
  return MaskPtrs{m.n_masks, m.ptr.data(), m.block.data(), m.words.data()};
}

template <bool kWithG, bool kShared>
void launch(const IndexPtrs& ix, const MaskPtrs& fm, const MaskPtrs& um, const Chunk* chunks,
            int64_t n_chunks, u64* f, u64* g, u64* work, size_t shared, cudaStream_t s) {
  auto kernel = counts_kernel<kWithG, kShared>;
  if (kShared && shared > 48 * 1024)
    COMPEXP_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(shared)));
  // gridDim.x is limited to 2^31 - 1: launch in slices.
  constexpr int64_t kMaxGrid = int64_t{1} << 30;
  for (int64_t c0 = 0; c0 < n_chunks; c0 += kMaxGrid) {
    const int64_t nc = std::min(kMaxGrid, n_chunks - c0);
    kernel<<<static_cast<unsigned>(nc), kThreads, kShared ? shared : 0, s>>>(ix, fm, um, chunks + c0, f, g, work);
    COMPEXP_CUDA_LAUNCHED();
  }
}

}  // namespace

namespace {

// Owned CUDA event (benchmark timing).
class Event {
 public:
  Event() { COMPEXP_CUDA_CHECK(cudaEventCreate(&e_)); }
  ~Event() { (void)cudaEventDestroy(e_); }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  cudaEvent_t get() const { return e_; }

 private:
  cudaEvent_t e_ = nullptr;
};

}  // namespace

// With timing_repeats > 0: runs the kernels that many more times after the first, timing each
// run with events into *times, and copies nothing back (f_host, g_host unused; no work).
ExtensionWork DeviceIndex::launch_counts(const DeviceMaskSet& fm, const int64_t* unit_of,
                                         const DeviceMaskSet* units, bool with_g, int64_t* f_host,
                                         int64_t* g_host, int timing_repeats, std::vector<float>* times) {
  activate();
  const int64_t n = fm.n_masks, K = n_concepts_;
  if (n == 0) return ExtensionWork{};
  if (with_g) check_unit_of(unit_of, n, units->n_masks);
  std::vector<Chunk> chunks;
  chunks.reserve(static_cast<size_t>(n + fm.nnz() / kChunkBlocks + 1));
  for (int64_t i = 0; i < n; ++i) {
    const int64_t p0 = fm.host_ptr[i], p1 = fm.host_ptr[i + 1];
    int64_t u0 = 0, u1 = 0;
    if (with_g) {
      u0 = units->host_ptr[unit_of[i]];
      u1 = units->host_ptr[unit_of[i] + 1];
    }
    for (int64_t p = p0; p < p1; p += kChunkBlocks) chunks.push_back(Chunk{i, p, std::min(p + kChunkBlocks, p1), u0, u1});
  }
  const size_t n_out = static_cast<size_t>(n) * static_cast<size_t>(K);
  cudaStream_t s = stream_.get();
  // work: the three ExtensionWork counters (extension counts only).
  DeviceArray<u64> f(n_out), g(with_g ? n_out : 0), work(with_g ? 3 : 0);
  auto zero = [&] {
    COMPEXP_CUDA_CHECK(cudaMemsetAsync(f.data(), 0, f.bytes(), s));
    if (with_g) COMPEXP_CUDA_CHECK(cudaMemsetAsync(g.data(), 0, g.bytes(), s));
    if (with_g) COMPEXP_CUDA_CHECK(cudaMemsetAsync(work.data(), 0, work.bytes(), s));
  };
  zero();
  DeviceArray<Chunk> dchunks(chunks.size());
  const int64_t n_chunks = static_cast<int64_t>(chunks.size());
  if (n_chunks) {
    COMPEXP_CUDA_CHECK(cudaMemcpyAsync(dchunks.data(), chunks.data(), chunks.size() * sizeof(Chunk),
                                       cudaMemcpyHostToDevice, s));
    const IndexPtrs ix = device_ptrs();
    const MaskPtrs fp = ptrs(fm);
    const MaskPtrs up = with_g ? ptrs(*units) : MaskPtrs{0, nullptr, nullptr, nullptr};
    const size_t shared = static_cast<size_t>(K) * sizeof(u64);
    const bool use_shared = shared <= shared_optin_;
    auto run = [&] {
      if (with_g) {
        if (use_shared) launch<true, true>(ix, fp, up, dchunks.data(), n_chunks, f.data(), g.data(), work.data(), shared, s);
        else launch<true, false>(ix, fp, up, dchunks.data(), n_chunks, f.data(), g.data(), work.data(), shared, s);
      } else {
        if (use_shared) launch<false, true>(ix, fp, up, dchunks.data(), n_chunks, f.data(), nullptr, nullptr, shared, s);
        else launch<false, false>(ix, fp, up, dchunks.data(), n_chunks, f.data(), nullptr, nullptr, shared, s);
      }
    };
    run();  // also the warm-up of a timed run
    if (timing_repeats > 0) {
      Event start, stop;
      for (int r = 0; r < timing_repeats; ++r) {
        // The counts accumulate: zero them as a real call does (outside the timed span).
        zero();
        COMPEXP_CUDA_CHECK(cudaEventRecord(start.get(), s));
        run();
        COMPEXP_CUDA_CHECK(cudaEventRecord(stop.get(), s));
        COMPEXP_CUDA_CHECK(cudaEventSynchronize(stop.get()));
        float ms = 0;
        COMPEXP_CUDA_CHECK(cudaEventElapsedTime(&ms, start.get(), stop.get()));
        times->push_back(ms);
      }
    }
  }
  if (timing_repeats > 0) {
    stream_.synchronize();
    return ExtensionWork{};
  }
  // Counts are < 2^63: the unsigned words are the int64 values.
  u64 walked[3] = {0, 0, 0};
  COMPEXP_CUDA_CHECK(cudaMemcpyAsync(f_host, f.data(), f.bytes(), cudaMemcpyDeviceToHost, s));
  if (with_g) {
    COMPEXP_CUDA_CHECK(cudaMemcpyAsync(g_host, g.data(), g.bytes(), cudaMemcpyDeviceToHost, s));
    COMPEXP_CUDA_CHECK(cudaMemcpyAsync(walked, work.data(), work.bytes(), cudaMemcpyDeviceToHost, s));
  }
  // Also keeps the chunk list and the host pointers alive until the copies are done.
  stream_.synchronize();
  return ExtensionWork{static_cast<int64_t>(walked[0]), static_cast<int64_t>(walked[1]),
                       static_cast<int64_t>(walked[2])};
}

void DeviceIndex::primitive_counts(const DeviceMaskSet& units, int64_t* out) {
  launch_counts(units, nullptr, nullptr, false, out, nullptr);
}

ExtensionWork DeviceIndex::extension_counts(const DeviceMaskSet& formulas, const int64_t* unit_of,
                                            const DeviceMaskSet& units, int64_t* f, int64_t* g) {
  return launch_counts(formulas, unit_of, &units, true, f, g);
}

std::vector<float> DeviceIndex::time_extension_counts(const DeviceMaskSet& formulas, const int64_t* unit_of,
                                                      const DeviceMaskSet& units, int repeats) {
  COMPEXP_CHECK(repeats >= 1, "repeats must be >= 1");
  std::vector<float> times;
  launch_counts(formulas, unit_of, &units, true, nullptr, nullptr, repeats, &times);
  return times;
}

double DeviceIndex::copy_bandwidth(size_t bytes, int repeats) {
  COMPEXP_CHECK(bytes >= 1 && repeats >= 1, "bytes and repeats must be >= 1");
  activate();
  cudaStream_t s = stream_.get();
  DeviceBuffer a(bytes), b(bytes);
  COMPEXP_CUDA_CHECK(cudaMemsetAsync(a.data(), 1, bytes, s));
  COMPEXP_CUDA_CHECK(cudaMemcpyAsync(b.data(), a.data(), bytes, cudaMemcpyDeviceToDevice, s));  // warm-up
  Event start, stop;
  std::vector<float> ms(static_cast<size_t>(repeats));
  for (int r = 0; r < repeats; ++r) {
    COMPEXP_CUDA_CHECK(cudaEventRecord(start.get(), s));
    COMPEXP_CUDA_CHECK(cudaMemcpyAsync(b.data(), a.data(), bytes, cudaMemcpyDeviceToDevice, s));
    COMPEXP_CUDA_CHECK(cudaEventRecord(stop.get(), s));
    COMPEXP_CUDA_CHECK(cudaEventSynchronize(stop.get()));
    COMPEXP_CUDA_CHECK(cudaEventElapsedTime(&ms[r], start.get(), stop.get()));
  }
  std::sort(ms.begin(), ms.end());
  const double median_s = ms[ms.size() / 2] * 1e-3;
  return 2.0 * static_cast<double>(bytes) / median_s;
}

}  // namespace cuda
}  // namespace compexp
