// The owned, checked concept index (see index.h).
#include "index.h"

#include <string>
#include <utility>

#include "block_math.h"

namespace compexp {

namespace {

// Checks the block-major arrays against n_cells and K (see ConceptIndex's constructor).
void check_block_major(int64_t n_cells, int32_t K, const BlockMajorArrays& a) {
  COMPEXP_CHECK(n_cells > 0, "n_cells must be positive");
  COMPEXP_CHECK(K > 0, "n_concepts must be positive");
  const int64_t nb = blocks_for_cells(n_cells);
  COMPEXP_CHECK(a.n_block_ptr == nb + 1, "block_ptr must have n_blocks + 1 entries");
  COMPEXP_CHECK(a.n_full_ptr == nb + 1, "full_ptr must have n_blocks + 1 entries");
  COMPEXP_CHECK(a.n_entries >= 0 && a.n_full >= 0, "negative entry counts");
  const int64_t* bp = a.block_ptr;
  const int64_t* fp = a.full_ptr;
  COMPEXP_CHECK(bp[0] == 0 && bp[nb] == a.n_entries,
                "block_ptr does not span the entries (block_ptr[0] = " + std::to_string(bp[0]) +
                    " must be 0 and block_ptr[-1] = " + std::to_string(bp[nb]) + " must be " +
                    std::to_string(a.n_entries) + ", the number of entries)");
  COMPEXP_CHECK(fp[0] == 0 && fp[nb] == a.n_full,
                "full_ptr does not span full_concept (full_ptr[0] = " + std::to_string(fp[0]) +
                    " must be 0 and full_ptr[-1] = " + std::to_string(fp[nb]) + " must be " +
                    std::to_string(a.n_full) + ", the number of full blocks)");
  // Non-decreasing, so every pointer lies in [0, count] (a block never holds a negative
  // number of items): the loops below stay inside the arrays.
  for (int64_t b = 0; b < nb; ++b) {
    COMPEXP_CHECK(bp[b] <= bp[b + 1],
                  "block pointers must be non-decreasing: block_ptr[" + std::to_string(b) + "] = " +
                      std::to_string(bp[b]) + " > block_ptr[" + std::to_string(b + 1) + "] = " +
                      std::to_string(bp[b + 1]) + " (a negative entry count for block " +
                      std::to_string(b) + ")");
    COMPEXP_CHECK(fp[b] <= fp[b + 1],
                  "block pointers must be non-decreasing: full_ptr[" + std::to_string(b) + "] = " +
                      std::to_string(fp[b]) + " > full_ptr[" + std::to_string(b + 1) + "] = " +
                      std::to_string(fp[b + 1]) + " (a negative full-block count for block " +
                      std::to_string(b) + ")");
  }
  for (int64_t e = 0; e < a.n_entries; ++e)
    COMPEXP_CHECK(a.entry_concept[e] >= 0 && a.entry_concept[e] < K,
                  "entry concept out of range: entry_concept[" + std::to_string(e) + "] = " +
                      std::to_string(a.entry_concept[e]) + ", expected 0.." + std::to_string(K - 1));
  for (int64_t q = 0; q < a.n_full; ++q)
    COMPEXP_CHECK(a.full_concept[q] >= 0 && a.full_concept[q] < K,
                  "full concept out of range: full_concept[" + std::to_string(q) + "] = " +
                      std::to_string(a.full_concept[q]) + ", expected 0.." + std::to_string(K - 1));
  // Sorted, duplicate-free blocks: the concept-major view (and so materialisation) needs each
  // concept at most once per block.
  for (int64_t b = 0; b < nb; ++b) {
    int64_t e = bp[b], q = fp[b];
    const int64_t e1 = bp[b + 1], q1 = fp[b + 1];
    for (int64_t i = e + 1; i < e1; ++i)
      COMPEXP_CHECK(a.entry_concept[i - 1] < a.entry_concept[i],
                    "the partial concepts of a block must be strictly increasing");
    for (int64_t i = q + 1; i < q1; ++i)
      COMPEXP_CHECK(a.full_concept[i - 1] < a.full_concept[i],
                    "the full concepts of a block must be strictly increasing");
    while (e < e1 && q < q1) {  // merge: no concept both partial and full
      COMPEXP_CHECK(a.entry_concept[e] != a.full_concept[q],
                    "a concept is both partial and full in one block");
      if (a.entry_concept[e] < a.full_concept[q]) ++e;
      else ++q;
    }
  }
  // Padding cells stay zero: a padded last block holds no full concept and no bit past P.
  const int64_t last = nb - 1;
  if (n_cells % kBlockCells != 0) {
    COMPEXP_CHECK(fp[last] == fp[last + 1], "a full concept block lies past the last cell");
    for (int64_t e = bp[last]; e < bp[last + 1]; ++e)
      for (int w = 0; w < kBlockWords; ++w)
        COMPEXP_CHECK((a.entry_words[e * kBlockWords + w] & ~valid_bits(n_cells, last, w)) == 0,
                      "a concept sets bits past the last cell");
  }
}

}  // namespace

ConceptIndex::ConceptIndex(int64_t n_cells, int32_t n_concepts, const BlockMajorArrays& a,
                           std::shared_ptr<const void> owner)
    : owner_(std::move(owner)) {
  check_block_major(n_cells, n_concepts, a);
  const int64_t nb = blocks_for_cells(n_cells), K = n_concepts;
  view_.n_cells = n_cells;
  view_.n_blocks = nb;
  view_.n_concepts = n_concepts;
  view_.block_ptr = a.block_ptr;
  view_.entry_concept = a.entry_concept;
  view_.entry_words = a.entry_words;
  view_.full_ptr = a.full_ptr;
  view_.full_concept = a.full_concept;
  // Concept-major view by a counting sort on the concept; blocks are visited in increasing
  // order, so each concept's items come out sorted by block (one item per block: checked).
  const int64_t n_items = a.n_entries + a.n_full;
  concept_ptr_.assign(static_cast<size_t>(K) + 1, 0);
  concept_block_.resize(static_cast<size_t>(n_items));
  concept_entry_.resize(static_cast<size_t>(n_items));
  for (int64_t e = 0; e < a.n_entries; ++e) concept_ptr_[a.entry_concept[e] + 1]++;
  for (int64_t q = 0; q < a.n_full; ++q) concept_ptr_[a.full_concept[q] + 1]++;
  for (int64_t j = 0; j < K; ++j) concept_ptr_[j + 1] += concept_ptr_[j];
  std::vector<int64_t> fill(concept_ptr_.begin(), concept_ptr_.end() - 1);
  for (int64_t b = 0; b < nb; ++b) {
    for (int64_t e = a.block_ptr[b]; e < a.block_ptr[b + 1]; ++e) {
      const int64_t pos = fill[a.entry_concept[e]]++;
      concept_block_[pos] = b;
      concept_entry_[pos] = e;
    }
    for (int64_t q = a.full_ptr[b]; q < a.full_ptr[b + 1]; ++q) {
      const int64_t pos = fill[a.full_concept[q]]++;
      concept_block_[pos] = b;
      concept_entry_[pos] = -1;
    }
  }
  view_.concept_ptr = concept_ptr_.data();
  view_.concept_block = concept_block_.data();
  view_.concept_entry = concept_entry_.data();
}

}  // namespace compexp
