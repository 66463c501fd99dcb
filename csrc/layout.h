// compexp-core: the block-sparse layout and the types shared by every backend (csrc/cpu,
// csrc/cuda) and the bindings. Operations are declared in the twin backend headers
// csrc/cpu/cpu_backend.h and csrc/cuda/cuda_backend.h; block arithmetic in block_math.h;
// the owned, checked concept index in index.h; shared argument checks in checks.h.
//
// Cells. A dataset of N samples on an H x W grid has P = N*H*W cells, numbered
// sample-major (cell = n*H*W + y*W + x). Masks over cells are packed 64 cells
// to a little-endian word (cell c is bit c%64 of word c/64) and words are
// grouped into blocks of kBlockWords words (kBlockCells cells). Bits at cells
// >= P (the padding of the last block) are always zero.
//
// Block-sparse masks. Only non-empty blocks are stored. Two layouts exist:
//  * MaskSetView: a set of masks (unit masks, formula masks), each a sorted list
//    of (block id, kBlockWords words), all blocks stored explicitly.
//  * ConceptIndexView: all K concept masks, block-major (for each block, the
//    concepts present in it) so that kernels walking the blocks of one formula
//    read each concept block they need exactly once, in memory order. Blocks in
//    which a concept covers every cell are "full": they store no words, only
//    the concept id (sample-level concepts such as scenes are mostly full).
//    A concept-major view (for each concept, its blocks) serves materialisation.
//
// No Python in here: the bindings in python/ convert arrays and call csrc/.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace compexp {

constexpr int kBlockWords = 8;                  // 512 bits: one cache line, one AVX-512 register
constexpr int64_t kBlockCells = 64 * kBlockWords;

// Throws std::invalid_argument carrying the failed condition (pybind11 maps it to ValueError).
// Host code only.
#define COMPEXP_CHECK(cond, msg)                                                     \
  do {                                                                               \
    if (!(cond))                                                                     \
      throw std::invalid_argument(std::string(msg) + " (failed: " #cond ")");        \
  } while (0)

// All concept masks, block-major, plus the concept-major view. Non-owning: a checked one
// comes from ConceptIndex::view() (index.h), whose arrays it points into.
struct ConceptIndexView {
  int64_t n_cells = 0;      // P
  int64_t n_blocks = 0;     // blocks_for_cells(P)
  int32_t n_concepts = 0;   // K
  // Partial blocks: entries block_ptr[b] .. block_ptr[b+1]-1 belong to block b, sorted by concept.
  const int64_t* block_ptr = nullptr;       // [n_blocks + 1]
  const int32_t* entry_concept = nullptr;   // [n_entries]
  const uint64_t* entry_words = nullptr;    // [n_entries * kBlockWords]
  // Full blocks: full_ptr[b] .. full_ptr[b+1]-1 list the concepts covering block b entirely,
  // sorted; a concept is never both partial and full in one block.
  const int64_t* full_ptr = nullptr;        // [n_blocks + 1]
  const int32_t* full_concept = nullptr;    // [n_full]
  // Concept-major view: concept j owns items concept_ptr[j] .. concept_ptr[j+1]-1, sorted by
  // block; concept_entry is the index of the partial entry, or -1 for a full block. With no
  // stored block at all (every concept empty) concept_block and concept_entry may be null.
  const int64_t* concept_ptr = nullptr;     // [n_concepts + 1]
  const int64_t* concept_block = nullptr;   // [n_items = n_entries + n_full]
  const int64_t* concept_entry = nullptr;   // [n_items]
};

// A set of block-sparse masks over the same cells. Non-owning.
// Mask m owns blocks ptr[m] .. ptr[m+1]-1 (block ids strictly increasing); a mask without
// blocks is empty. checks.h's check_mask_set validates one.
struct MaskSetView {
  int64_t n_masks = 0;
  const int64_t* ptr = nullptr;         // [n_masks + 1]
  const int64_t* block = nullptr;       // [nnz]
  const uint64_t* words = nullptr;      // [nnz * kBlockWords]
};

// An owned block-sparse mask set (what builders and materialisation return). An empty set
// has ptr == {0}.
struct MaskSet {
  std::vector<int64_t> ptr{0};
  std::vector<int64_t> block;
  std::vector<uint64_t> words;
  MaskSetView view() const {
    return MaskSetView{static_cast<int64_t>(ptr.size()) - 1, ptr.data(), block.data(), words.data()};
  }
};

// Formula operators. Codes are shared with the Python driver. kCopy is no operator: its
// result is F itself, so one materialisation call can also carry surviving masks over.
enum Op : int32_t { kLeaf = 0, kOr = 1, kAnd = 2, kAndNot = 3, kOrNot = 4, kCopy = 5 };

// What one extension_counts call walked, summed over its formulas: for each stored block b of
// each formula, formula_blocks += 1, partial_entries += the partial concept entries stored in
// b (read against the formula), full_entries += the full concept blocks of b (counted without
// reading words). Identical on every backend; all zero without formulas or formula blocks.
struct ExtensionWork {
  int64_t formula_blocks = 0;
  int64_t partial_entries = 0;
  int64_t full_entries = 0;
};

}  // namespace compexp
