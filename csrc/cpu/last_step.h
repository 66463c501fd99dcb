// The optimal search's compiled parts (src/compexp_core/engine/optimal.py, docs/OPTIMAL.md).
//
// unit_pair_counts: |U & C_c & C_k| for every pair of concepts, for one unit, in one walk of
// the unit's blocks (the g rows of every one-leaf prefix, which the pair bounds need).
//
// last_step_children, the hot loop: the
// children op(F, C_j) of a batch of expanded prefixes F, scored by the counting identity from
// the parents' count rows, and, when one step is left after them, bounded and pruned, so that
// only the children that may still win leave this function (not every child of every parent).
//
// Scores and bounds use the float64 operations of metric_values / CompletionBound.metric
// (tp / denominator, 0 where the denominator is not > 0; all counts exact integers), so a
// score here equals the NumPy one bit for bit. The bounds are the NumPy ones (CompletionBound,
// ParentBound, pair_bound): each child's bound is their minimum, exactly; only the order in
// which they are tried (cheapest first, stopping when a child is pruned) is this file's.
#pragma once

#include <cstdint>
#include <vector>

#include "../layout.h"

namespace compexp {
namespace cpu {

enum class Metric : int { kIou = 0, kPrecision = 1, kRecall = 2 };

struct LastStepInput {
  int64_t n_parents = 0;
  int64_t n_concepts = 0;                   // K
  const int64_t* f = nullptr;               // [n_parents * K]: |F & C_k|
  const int64_t* g = nullptr;               // [n_parents * K]: |U & F & C_k|
  const int64_t* parent_tp = nullptr;       // [n_parents]: |U & F|
  const int64_t* parent_size = nullptr;     // [n_parents]: |F|
  int64_t parent_len = 1;                   // leaves of every parent
  const int32_t* parent_concepts = nullptr; // [n_parents * parent_len]
  const int32_t* parent_ops = nullptr;      // [n_parents * (parent_len - 1)]
  const int64_t* prim = nullptr;            // [K]: a_k = |U & C_k|
  const int64_t* sizes = nullptr;           // [K]: |C_k|
  int64_t unit_size = 0;                    // u
  int64_t n_cells = 0;                      // P
  Metric metric = Metric::kIou;
  std::vector<int32_t> ops;                 // operator codes (layout.h Op), distinct
  bool allow_repeats = false;
  double child_factor = 1.0;                // penalty factor of a child's length
  double bound_factor = 1.0;                // ... of a child's child (the last step)
  bool bound_children = true;               // false: the children are the last level
  // Count rows of single concepts, [K * K] each, and which rows are filled (nullptr: none):
  // the pair bounds (used only without OR NOT).
  const int64_t* leaf_f = nullptr;
  const int64_t* leaf_g = nullptr;
  const uint8_t* leaf_have = nullptr;
  double incumbent = 0.0;                   // the best score so far
  bool keep_ties = false;                   // keep children whose bound equals it
};

struct LastStepOutput {
  int64_t n_children = 0;                   // children formed (valid, in the search's order)
  // The best child: the highest score, first in canonical order among equal ones (parent -1
  // when there is no child).
  double best_score = 0.0;
  int64_t best_parent = -1;
  int32_t best_op = 0, best_concept = -1;
  int64_t best_tp = 0, best_size = 0;
  // The children that may still win (bound above the incumbent, or equal to it with
  // keep_ties; the caller prunes them again against the best child), by parent, then
  // concept, then the position of the operator in `ops`.
  std::vector<int64_t> parent, tp, size;
  std::vector<int32_t> op, concept;
  std::vector<double> bound;
};

// out[c * K + k] = |U & C_c & C_k| for U = mask `row` of `units` (K * K entries, overwritten).
// Concepts sharing no cell of U with any other contribute nothing; cost: the sum over U's
// blocks of (concepts meeting U there) squared. Throws unless `row` is a mask of `units`.
void unit_pair_counts(const ConceptIndexView& index, const MaskSetView& units, int64_t row,
                      int64_t* out, int n_threads = 0);

// Throws std::invalid_argument for inconsistent arguments (sizes, codes, indices).
LastStepOutput last_step_children(const LastStepInput& in, int n_threads = 0);

}  // namespace cpu
}  // namespace compexp
