// Block arithmetic shared by the CPU kernels (csrc/cpu) and the CUDA kernels (csrc/cuda): one
// definition of where real cells end, of a concept item's words, and of an empty block, so the
// two backends cannot drift apart. Under nvcc the functions are __host__ __device__; under the
// host compiler (CPU code, and the cudaemu CUDA emulator) plain inline functions.
#pragma once

#include <cstdint>

#include "layout.h"

#if defined(__CUDACC__)
#define COMPEXP_HD __host__ __device__ __forceinline__
#else
#define COMPEXP_HD inline
#endif

namespace compexp {

constexpr uint64_t kAllOnes = ~uint64_t{0};

// Blocks needed for n_cells cells (the last one padded); 0 for 0 cells.
COMPEXP_HD int64_t blocks_for_cells(int64_t n_cells) { return (n_cells + kBlockCells - 1) / kBlockCells; }

// Bits of word w of block b that fall on real cells (< n_cells): all ones inside the dataset,
// the low bits of the word holding cell n_cells - 1, zero for words past it. Padding cells of
// a mask stay zero by AND-ing with this (OR NOT, which sets every cell outside C).
COMPEXP_HD uint64_t valid_bits(int64_t n_cells, int64_t b, int w) {
  const int64_t first = b * kBlockCells + int64_t{w} * 64;
  const int64_t n = n_cells - first;
  if (n >= 64) return kAllOnes;
  if (n <= 0) return 0;
  return (uint64_t{1} << n) - 1;
}

// The kBlockWords words of item q of the concept-major view into out: the partial entry's
// words, or all ones for a full block (concept_entry[q] == -1; a full block never lies past
// the last real cell, so no padding bit is set).
COMPEXP_HD void item_words(const int64_t* concept_entry, const uint64_t* entry_words, int64_t q,
                           uint64_t* out) {
  const int64_t e = concept_entry[q];
  if (e < 0) {
    for (int i = 0; i < kBlockWords; ++i) out[i] = kAllOnes;
  } else {
    for (int i = 0; i < kBlockWords; ++i) out[i] = entry_words[e * kBlockWords + i];
  }
}

// Whether any of a block's kBlockWords words is non-zero (only non-empty blocks are stored).
COMPEXP_HD bool any_bits(const uint64_t* w) {
  uint64_t a = 0;
  for (int i = 0; i < kBlockWords; ++i) a |= w[i];
  return a != 0;
}

}  // namespace compexp
