// Argument checks shared by both backends (see checks.h).
#include "checks.h"

#include <string>

namespace compexp {

void check_mask_set(const MaskSetView& m, int64_t nnz, int64_t n_blocks, const char* what) {
  const std::string w(what);
  COMPEXP_CHECK(m.n_masks >= 0, w + ": negative mask count");
  const int64_t* p = m.ptr;
  const int64_t* b = m.block;
  COMPEXP_CHECK(p[0] == 0 && p[m.n_masks] == nnz, w + ": ptr does not span block");
  // All of ptr first: a pointer past nnz followed by a smaller one must not send the block
  // loop below past the end of the arrays.
  for (int64_t i = 0; i < m.n_masks; ++i)
    COMPEXP_CHECK(p[i] <= p[i + 1], w + ": ptr is not non-decreasing");
  for (int64_t i = 0; i < m.n_masks; ++i) {
    for (int64_t q = p[i]; q < p[i + 1]; ++q) {
      COMPEXP_CHECK(b[q] >= 0 && b[q] < n_blocks, w + ": block id out of range");
      COMPEXP_CHECK(q == p[i] || b[q - 1] < b[q], w + ": block ids not increasing");
    }
  }
}

void check_unit_of(const int64_t* unit_of, int64_t n_formulas, int64_t n_units) {
  for (int64_t i = 0; i < n_formulas; ++i)
    COMPEXP_CHECK(unit_of[i] >= 0 && unit_of[i] < n_units, "unit_of index out of range");
}

void check_materialize_args(int64_t n_out, const int64_t* src, const int32_t* op,
                            const int32_t* concept, int32_t n_concepts, int64_t n_formulas) {
  for (int64_t i = 0; i < n_out; ++i) {
    COMPEXP_CHECK(op[i] >= kLeaf && op[i] <= kCopy, "unknown operator code");
    COMPEXP_CHECK(op[i] == kCopy || (concept[i] >= 0 && concept[i] < n_concepts),
                  "concept index out of range");
    COMPEXP_CHECK(op[i] == kLeaf || (src[i] >= 0 && src[i] < n_formulas),
                  "source formula index out of range");
  }
}

}  // namespace compexp
