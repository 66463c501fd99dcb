// Device-side views and helpers shared by the CUDA kernels (internal to csrc/cuda).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "../block_math.h"
#include "../layout.h"

namespace compexp {
namespace cuda {

// Raw device pointers of the concept index (see ConceptIndexView).
struct IndexPtrs {
  int64_t n_cells;
  int64_t n_blocks;
  int64_t n_concepts;
  const int64_t* block_ptr;
  const int32_t* entry_concept;
  const uint64_t* entry_words;
  const int64_t* full_ptr;
  const int32_t* full_concept;
  const int64_t* concept_ptr;
  const int64_t* concept_block;
  const int64_t* concept_entry;
};

// Raw device pointers of a mask set (see MaskSetView).
struct MaskPtrs {
  int64_t n_masks;
  const int64_t* ptr;
  const int64_t* block;
  const uint64_t* words;
};

// First position in [lo, hi) of the sorted array a whose value is >= key (hi if none).
__device__ __forceinline__ int64_t lower_bound(const int64_t* a, int64_t lo, int64_t hi, int64_t key) {
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (a[mid] < key) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// Last position i in [0, n) with a[i] <= key for a non-decreasing a with a[0] <= key.
__device__ __forceinline__ int64_t upper_index(const int64_t* a, int64_t n, int64_t key) {
  int64_t lo = 0, hi = n;  // invariant: a[lo] <= key, answer in [lo, hi)
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (a[mid] <= key) lo = mid;
    else hi = mid;
  }
  return lo;
}

// Checks the last kernel launch (configuration errors surface here, faults at the next sync).
#define COMPEXP_CUDA_LAUNCHED() COMPEXP_CUDA_CHECK(cudaGetLastError())

}  // namespace cuda
}  // namespace compexp
