// The concept index built on the GPU from dense concept masks already in device memory: the
// same arrays, bit for bit, as cpu::ConceptIndexBuilder::add_dense + finish (../cpu/
// builder_cpu.cpp) followed by ConceptIndex's concept-major view (../index.cpp), so the masks
// never travel through host memory.
//
// A "slot" is one (concept k, block b) pair. The passes:
//  1. dense_words_kernel: one thread per mask word (64 cells of one concept) packs the bytes
//     into dense words, concept-major (slot k * nb + b), counts |C_k| and flags bytes that are
//     neither 0 nor 1. Cells past the last one stay zero (padding).
//  2. slot_flags_kernel: one thread per slot classifies it (empty / partial / full: all 512
//     bits set, which a padded last block never is) and writes three 0/1 flags: partial and full
//     in block-major order (slot b * K + k, the order of the block-major arrays), stored in
//     concept-major order (the concept-major view).
//  3. Three exclusive scans (CUB) turn the flags into output positions; their totals and the
//     sizes come back to the host (a few numbers), which sizes the output arrays.
//  4. The pointer arrays are every K-th / nb-th scan value; slot_write_kernel writes each
//     stored slot's entries of the block-major and the concept-major arrays.
// Temporary device memory: 64 bytes of words and 48 bytes of flags and positions per slot
// (about a fifth of the input's bytes), freed before the constructor returns.
#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda_backend.h"
#include "kernels.cuh"

#include <cub/device/device_scan.cuh>

namespace compexp {
namespace cuda {

namespace {

constexpr int kThreads = 256;

unsigned grid_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(blocks, int64_t{1} << 20)));
}

// The masks as the kernels read them: byte (s, k, y, x) at s*s0 + k*s1 + y*s2 + x*s3.
struct DenseBytes {
  const uint8_t* p;
  int64_t s0, s1, s2, s3;
  int64_t h, w;
};

__global__ void __launch_bounds__(kThreads)
    dense_words_kernel(DenseBytes m, int64_t n_concepts, int64_t n_cells, int64_t words_per_concept,
                       uint64_t* dense, unsigned long long* sizes, int* bad) {
  const int64_t total = n_concepts * words_per_concept;
  const int64_t hw = m.h * m.w;
  for (int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; e < total;
       e += int64_t{gridDim.x} * blockDim.x) {
    const int64_t k = e / words_per_concept, wi = e - k * words_per_concept;
    uint64_t word = 0;
    unsigned invalid = 0;
    for (int bit = 0; bit < 64; ++bit) {
      const int64_t cell = wi * 64 + bit;
      if (cell >= n_cells) break;
      const int64_t s = cell / hw, r = cell - s * hw;
      const int64_t y = r / m.w, x = r - y * m.w;
      const uint8_t v = m.p[s * m.s0 + k * m.s1 + y * m.s2 + x * m.s3];
      invalid |= v > 1;
      if (v) word |= uint64_t{1} << bit;
    }
    dense[e] = word;
    if (word) atomicAdd(&sizes[k], static_cast<unsigned long long>(__popcll(word)));
    if (invalid) atomicOr(bad, 1);
  }
}

// Slot (k, b), concept-major at k * nb + b: partial / full flags block-major at b * K + k, the
// stored flag concept-major. The flag arrays have one more (zero) entry for the scans' totals.
__global__ void __launch_bounds__(kThreads)
    slot_flags_kernel(const uint64_t* dense, int64_t n_concepts, int64_t nb, int64_t* partial, int64_t* full,
                      int64_t* stored) {
  const int64_t n_slots = n_concepts * nb;
  for (int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; e < n_slots;
       e += int64_t{gridDim.x} * blockDim.x) {
    const int64_t k = e / nb, b = e - k * nb;
    uint64_t any = 0, all = kAllOnes;
    for (int i = 0; i < kBlockWords; ++i) {
      any |= dense[e * kBlockWords + i];
      all &= dense[e * kBlockWords + i];
    }
    const bool is_full = all == kAllOnes, is_stored = any != 0;
    partial[b * n_concepts + k] = is_stored && !is_full;
    full[b * n_concepts + k] = is_full;
    stored[e] = is_stored;
  }
}

// out[i] = pos[i * stride] for i in [0, n]: the pointer arrays from the exclusive scans.
__global__ void __launch_bounds__(kThreads)
    strided_gather_kernel(const int64_t* pos, int64_t n, int64_t stride, int64_t* out) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i <= n;
       i += int64_t{gridDim.x} * blockDim.x)
    out[i] = pos[i * stride];
}

// Every stored slot writes its entries: the partial entry (concept id and words) or the full
// concept id in block-major order, and its item (block, entry or -1) in concept-major order.
// The flags are recovered from the exclusive scans: pos[i + 1] - pos[i].
__global__ void __launch_bounds__(kThreads)
    slot_write_kernel(const uint64_t* dense, int64_t n_concepts, int64_t nb, const int64_t* partial_pos,
                      const int64_t* full_pos, const int64_t* stored_pos, int32_t* entry_concept,
                      uint64_t* entry_words, int32_t* full_concept, int64_t* concept_block,
                      int64_t* concept_entry) {
  const int64_t n_slots = n_concepts * nb;
  for (int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; e < n_slots;
       e += int64_t{gridDim.x} * blockDim.x) {
    if (stored_pos[e + 1] == stored_pos[e]) continue;  // empty slot
    const int64_t k = e / nb, b = e - k * nb, bm = b * n_concepts + k;
    int64_t entry = -1;
    if (partial_pos[bm + 1] != partial_pos[bm]) {
      entry = partial_pos[bm];
      entry_concept[entry] = static_cast<int32_t>(k);
      for (int i = 0; i < kBlockWords; ++i) entry_words[entry * kBlockWords + i] = dense[e * kBlockWords + i];
    } else {
      full_concept[full_pos[bm]] = static_cast<int32_t>(k);
    }
    concept_block[stored_pos[e]] = b;
    concept_entry[stored_pos[e]] = entry;
  }
}

void check_dense(const DeviceDenseMasksView& v) {
  COMPEXP_CHECK(v.n > 0 && v.k > 0 && v.h > 0 && v.w > 0, "dense masks must have no empty axis");
  COMPEXP_CHECK(v.data != nullptr, "dense masks have a null data pointer");
  for (int i = 0; i < 4; ++i) COMPEXP_CHECK(v.stride[i] >= 0, "dense masks must have non-negative strides");
  COMPEXP_CHECK(v.k <= 0x7fffffff, "at most 2**31 - 1 concepts (concept ids are int32)");
  // Cells and (concept, block) slots must be countable in int64 without overflow.
  const int64_t kMax = int64_t{1} << 62;
  COMPEXP_CHECK(v.n <= kMax / v.h && v.n * v.h <= kMax / v.w, "dense masks have too many cells");
  const int64_t nb = blocks_for_cells(v.n * v.h * v.w);
  COMPEXP_CHECK(nb <= (kMax / kBlockCells) / v.k, "dense masks are too large (concepts x blocks)");
}

// Exclusive sums of n int64 values on stream s, with one temporary buffer (sized by CUB's
// query, the same for every scan of n values) that outlives the scans.
class ExclusiveSums {
 public:
  ExclusiveSums(int64_t n, cudaStream_t s) : n_(n), s_(s) {
    COMPEXP_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, bytes_, static_cast<const int64_t*>(nullptr),
                                                     static_cast<int64_t*>(nullptr), n_, s_));
    temp_ = DeviceBuffer(bytes_);
  }
  void operator()(const int64_t* in, int64_t* out) {
    size_t bytes = bytes_;
    COMPEXP_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(temp_.data(), bytes, in, out, n_, s_));
  }

 private:
  int64_t n_;
  cudaStream_t s_;
  size_t bytes_ = 0;
  DeviceBuffer temp_;
};

}  // namespace

DeviceIndex::DeviceIndex(const DeviceDenseMasksView& masks, int device, int64_t* sizes) : device_(device) {
  check_dense(masks);
  open_device();
  const int64_t K = masks.k, P = masks.n * masks.h * masks.w, nb = blocks_for_cells(P);
  n_cells_ = P;
  n_blocks_ = nb;
  n_concepts_ = static_cast<int32_t>(K);
  if (masks.stream) COMPEXP_CUDA_CHECK(cudaStreamSynchronize(reinterpret_cast<cudaStream_t>(masks.stream)));
  cudaStream_t s = stream_.get();
  const int64_t words_per_concept = nb * kBlockWords, n_slots = K * nb;
  // 1. Dense words, sizes, invalid bytes.
  DeviceArray<uint64_t> dense(static_cast<size_t>(n_slots) * kBlockWords);
  DeviceArray<unsigned long long> d_sizes(static_cast<size_t>(K));
  DeviceArray<int> d_bad(1);
  COMPEXP_CUDA_CHECK(cudaMemsetAsync(d_sizes.data(), 0, d_sizes.bytes(), s));
  COMPEXP_CUDA_CHECK(cudaMemsetAsync(d_bad.data(), 0, d_bad.bytes(), s));
  const DenseBytes m{masks.data, masks.stride[0], masks.stride[1], masks.stride[2], masks.stride[3], masks.h, masks.w};
  dense_words_kernel<<<grid_for(K * words_per_concept), kThreads, 0, s>>>(m, K, P, words_per_concept, dense.data(),
                                                                          d_sizes.data(), d_bad.data());
  COMPEXP_CUDA_LAUNCHED();
  // 2. Slot flags (the extra last entry of each array is 0, so the scans end with the totals).
  DeviceArray<int64_t> partial(n_slots + 1), full(n_slots + 1), stored(n_slots + 1);
  for (const DeviceArray<int64_t>* a : {&partial, &full, &stored})
    COMPEXP_CUDA_CHECK(cudaMemsetAsync(a->data() + n_slots, 0, sizeof(int64_t), s));
  slot_flags_kernel<<<grid_for(n_slots), kThreads, 0, s>>>(dense.data(), K, nb, partial.data(), full.data(),
                                                           stored.data());
  COMPEXP_CUDA_LAUNCHED();
  // 3. Positions, then the totals and sizes to the host.
  DeviceArray<int64_t> partial_pos(n_slots + 1), full_pos(n_slots + 1), stored_pos(n_slots + 1);
  ExclusiveSums scan(n_slots + 1, s);
  scan(partial.data(), partial_pos.data());
  scan(full.data(), full_pos.data());
  scan(stored.data(), stored_pos.data());
  std::vector<unsigned long long> host_sizes(static_cast<size_t>(K));
  int bad = 0;
  COMPEXP_CUDA_CHECK(cudaMemcpyAsync(&n_entries_, partial_pos.data() + n_slots, sizeof(int64_t),
                                     cudaMemcpyDeviceToHost, s));
  COMPEXP_CUDA_CHECK(cudaMemcpyAsync(&n_full_, full_pos.data() + n_slots, sizeof(int64_t), cudaMemcpyDeviceToHost, s));
  COMPEXP_CUDA_CHECK(cudaMemcpyAsync(host_sizes.data(), d_sizes.data(), d_sizes.bytes(), cudaMemcpyDeviceToHost, s));
  COMPEXP_CUDA_CHECK(cudaMemcpyAsync(&bad, d_bad.data(), sizeof(int), cudaMemcpyDeviceToHost, s));
  stream_.synchronize();
  COMPEXP_CHECK(bad == 0, "dense masks hold values other than 0 and 1 (False and True)");
  for (int64_t k = 0; k < K; ++k) sizes[k] = static_cast<int64_t>(host_sizes[k]);
  // 4. The index arrays.
  const int64_t ne = n_entries_, nf = n_full_, n_items = ne + nf;
  block_ptr_ = DeviceArray<int64_t>(static_cast<size_t>(nb) + 1);
  full_ptr_ = DeviceArray<int64_t>(static_cast<size_t>(nb) + 1);
  concept_ptr_ = DeviceArray<int64_t>(static_cast<size_t>(K) + 1);
  entry_concept_ = DeviceArray<int32_t>(static_cast<size_t>(ne));
  entry_words_ = DeviceArray<uint64_t>(static_cast<size_t>(ne) * kBlockWords);
  full_concept_ = DeviceArray<int32_t>(static_cast<size_t>(nf));
  concept_block_ = DeviceArray<int64_t>(static_cast<size_t>(n_items));
  concept_entry_ = DeviceArray<int64_t>(static_cast<size_t>(n_items));
  strided_gather_kernel<<<grid_for(nb + 1), kThreads, 0, s>>>(partial_pos.data(), nb, K, block_ptr_.data());
  COMPEXP_CUDA_LAUNCHED();
  strided_gather_kernel<<<grid_for(nb + 1), kThreads, 0, s>>>(full_pos.data(), nb, K, full_ptr_.data());
  COMPEXP_CUDA_LAUNCHED();
  strided_gather_kernel<<<grid_for(K + 1), kThreads, 0, s>>>(stored_pos.data(), K, nb, concept_ptr_.data());
  COMPEXP_CUDA_LAUNCHED();
  if (n_items) {
    slot_write_kernel<<<grid_for(n_slots), kThreads, 0, s>>>(
        dense.data(), K, nb, partial_pos.data(), full_pos.data(), stored_pos.data(), entry_concept_.data(),
        entry_words_.data(), full_concept_.data(), concept_block_.data(), concept_entry_.data());
    COMPEXP_CUDA_LAUNCHED();
  }
  // Materialisation plans its output sizes from the concept pointers, on the host.
  host_concept_ptr_.resize(static_cast<size_t>(K) + 1);
  COMPEXP_CUDA_CHECK(cudaMemcpyAsync(host_concept_ptr_.data(), concept_ptr_.data(), concept_ptr_.bytes(),
                                     cudaMemcpyDeviceToHost, s));
  stream_.synchronize();
}

BlockMajorIndex DeviceIndex::download_block_major() {
  activate();
  BlockMajorIndex out;
  out.block_ptr.resize(block_ptr_.size());
  out.full_ptr.resize(full_ptr_.size());
  out.entry_concept.resize(entry_concept_.size());
  out.entry_words.resize(entry_words_.size());
  out.full_concept.resize(full_concept_.size());
  cudaStream_t s = stream_.get();
  auto get = [&](auto& host, const auto& dev) {
    if (dev.size())
      COMPEXP_CUDA_CHECK(cudaMemcpyAsync(host.data(), dev.data(), dev.bytes(), cudaMemcpyDeviceToHost, s));
  };
  get(out.block_ptr, block_ptr_);
  get(out.full_ptr, full_ptr_);
  get(out.entry_concept, entry_concept_);
  get(out.entry_words, entry_words_);
  get(out.full_concept, full_concept_);
  stream_.synchronize();
  return out;
}

}  // namespace cuda
}  // namespace compexp
