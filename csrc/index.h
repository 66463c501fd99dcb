// The concept index as an owned, checked object: the block-major arrays (see layout.h) are
// validated once here, and the concept-major view is built here, so the kernels of both
// backends can trust every ConceptIndexView this type hands out.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "layout.h"

namespace compexp {

// The block-major arrays of a concept index with their lengths, as a caller holds them.
struct BlockMajorArrays {
  const int64_t* block_ptr = nullptr;      // [n_block_ptr]: n_blocks + 1 expected
  int64_t n_block_ptr = 0;
  const int32_t* entry_concept = nullptr;  // [n_entries]
  const uint64_t* entry_words = nullptr;   // [n_entries * kBlockWords]
  int64_t n_entries = 0;
  const int64_t* full_ptr = nullptr;       // [n_full_ptr]: n_blocks + 1 expected
  int64_t n_full_ptr = 0;
  const int32_t* full_concept = nullptr;   // [n_full]
  int64_t n_full = 0;
};

// All K concept masks over P cells: the block-major arrays, checked, and their concept-major
// view, built once. Owns everything its view points to: the concept-major arrays directly,
// the block-major arrays through `owner` (anything that keeps their storage alive and
// unchanged, e.g. the Python arrays; it is released when the index is destroyed). Immutable;
// movable (the view stays valid), not copyable.
class ConceptIndex {
 public:
  // Checks, in this order (std::invalid_argument naming the failure): n_cells > 0,
  // n_concepts > 0; both pointer arrays have n_blocks + 1 entries, start at 0, end at the
  // entry / full counts and never decrease; every concept id is in [0, K); within a block the
  // partial and the full concepts are each strictly increasing and no concept is both; no bit
  // is set past the last cell (no full block and no padding bit in a padded last block).
  // O(n_blocks + n_entries + n_full) time; the concept-major view takes 16 bytes per item.
  ConceptIndex(int64_t n_cells, int32_t n_concepts, const BlockMajorArrays& arrays,
               std::shared_ptr<const void> owner);

  ConceptIndex(ConceptIndex&&) = default;
  ConceptIndex& operator=(ConceptIndex&&) = default;
  ConceptIndex(const ConceptIndex&) = delete;
  ConceptIndex& operator=(const ConceptIndex&) = delete;

  // Both views, valid for the life of this object (concept_block / concept_entry may be null
  // when no concept has any stored block).
  const ConceptIndexView& view() const { return view_; }
  int64_t n_cells() const { return view_.n_cells; }
  int64_t n_blocks() const { return view_.n_blocks; }
  int32_t n_concepts() const { return view_.n_concepts; }
  int64_t n_entries() const { return view_.block_ptr[view_.n_blocks]; }  // partial blocks stored
  int64_t n_full() const { return view_.full_ptr[view_.n_blocks]; }      // full blocks stored

 private:
  std::shared_ptr<const void> owner_;
  std::vector<int64_t> concept_ptr_, concept_block_, concept_entry_;
  ConceptIndexView view_;
};

}  // namespace compexp
