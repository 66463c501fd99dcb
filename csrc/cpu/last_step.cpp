// Children of expanded prefixes: scores, last-step bounds, pruning (see last_step.h).
#include "last_step.h"

#include <algorithm>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <string>

#include "../layout.h"
#include "cpu_backend.h"
#include "parallel.h"

namespace compexp {
namespace cpu {
namespace {

// m(TP, FP) as CompletionBound.metric: the same float64 operations on exact integers.
inline double metric_of(Metric m, double u, int64_t tp_i, int64_t fp_i) {
  const double tp = static_cast<double>(tp_i), fp = static_cast<double>(fp_i);
  const double denom = m == Metric::kIou ? u + fp : (m == Metric::kPrecision ? tp + fp : u);
  return denom > 0 ? tp / denom : 0.0;
}

struct Point {
  int64_t x, y;
};

// The Pareto front of points (x_k, y_k) for a bound non-decreasing in x (x_high; else in -x)
// and in y (y_high; else in -y): the maximum of such a bound over k is reached on it. Built
// point by point (the best y among the points whose x beats the last point's, the best x
// among equal y): the order of a sort by y, without the sort; O(K) per point, and fronts are
// short (a handful of points on Broden-like rows).
template <class X, class Y>
std::vector<Point> pareto_front(int64_t K, X x, Y y, bool x_high, bool y_high,
                                std::vector<int64_t>& scratch) {
  scratch.resize(2 * K);
  int64_t* xs = scratch.data();
  int64_t* ys = xs + K;
  for (int64_t k = 0; k < K; ++k) {
    xs[k] = x_high ? x(k) : -x(k);
    ys[k] = y_high ? y(k) : -y(k);
  }
  std::vector<Point> out;
  int64_t bar = std::numeric_limits<int64_t>::min();
  for (;;) {
    int64_t best = -1, by = 0, bx = 0;
    for (int64_t k = 0; k < K; ++k) {
      if (xs[k] > bar && (best < 0 || ys[k] > by || (ys[k] == by && xs[k] > bx))) {
        best = k;
        by = ys[k];
        bx = xs[k];
      }
    }
    if (best < 0) break;
    out.push_back({x(best), y(best)});
    bar = bx;
  }
  return out;
}

enum FrontKind { kFAnd = 0, kFAndNot, kFAndNotB, kFOrIn, kFOrOut, kNFronts };

// The five point sets (Pareto fronts) of ParentBound for one parent row.
struct ParentFronts {
  std::vector<Point> pts[kNFronts];
  // One point as good as every point of the front in both coordinates (the last point's x,
  // the first one's y): a term whose value there does not keep has no point that keeps.
  Point dom[kNFronts];
};

class Bounder {
 public:
  explicit Bounder(const LastStepInput& in) : in_(in), K_(in.n_concepts), u_(double(in.unit_size)) {
    for (int32_t o : in.ops) {
      has_[o] = true;
    }
    const int64_t* a = in.prim;
    a_max_ = *std::max_element(a, a + K_);
    b_min_ = std::numeric_limits<int64_t>::max();
    int64_t b_max = std::numeric_limits<int64_t>::min();
    for (int64_t k = 0; k < K_; ++k) {
      b_min_ = std::min(b_min_, in.sizes[k] - a[k]);
      b_max = std::max(b_max, in.sizes[k] - a[k]);
    }
    nb_min_ = in.n_cells - in.unit_size - b_max;
    std::vector<int64_t> scratch;
    front_ = pareto_front(
        K_, [&](int64_t k) { return a[k]; }, [&](int64_t k) { return in.sizes[k] - a[k]; }, true,
        false, scratch);
    use_pairs_ = in.leaf_f && in.leaf_g && in.leaf_have && !has_[kOrNot];
  }

  double m(int64_t tp, int64_t fp) const { return metric_of(in_.metric, u_, tp, fp); }

  // CompletionBound.bound(tp, fp, length, 1, precise).
  double completion(int64_t tp, int64_t fp, bool precise) const {
    double out = 0.0;
    if (has_[kAndNot]) {
      out = std::max(out, m(tp, 0));
    } else if (has_[kAnd]) {
      out = std::max(out, m(std::min(tp, a_max_), 0));
    }
    if (has_[kOr]) {
      if (precise) {
        for (const Point& p : front_)
          out = std::max(out, m(std::min(in_.unit_size, tp + p.x), std::max(fp, p.y)));
      } else {
        out = std::max(out, m(std::min(in_.unit_size, tp + a_max_), std::max(fp, b_min_)));
      }
    }
    if (has_[kOrNot]) out = std::max(out, m(in_.unit_size, std::max(fp, nb_min_)));
    return out * in_.bound_factor;
  }

  // The fronts of one parent row.
  void parent_points(int64_t p, ParentFronts& out, std::vector<int64_t>& scratch) const {
    const int64_t* f = in_.f + p * K_;
    const int64_t* g = in_.g + p * K_;
    const int64_t* a = in_.prim;
    const int64_t* s = in_.sizes;
    auto gk = [&](int64_t k) { return g[k]; };
    auto fpk = [&](int64_t k) { return f[k] - g[k]; };
    auto bk = [&](int64_t k) { return s[k] - a[k]; };
    auto ak = [&](int64_t k) { return a[k]; };
    auto rest = [&](int64_t k) { return (s[k] - a[k]) - (f[k] - g[k]); };
    auto a_new = [&](int64_t k) { return a[k] - g[k]; };
    auto make = [&](FrontKind kind, auto x, auto y, bool xh, bool yh) {
      out.pts[kind] = pareto_front(K_, x, y, xh, yh, scratch);
      out.dom[kind] = {out.pts[kind].back().x, out.pts[kind].front().y};
    };
    if (has_[kAnd]) make(kFAnd, gk, fpk, true, false);
    if (has_[kAndNot]) {
      make(kFAndNot, gk, fpk, false, true);
      make(kFAndNotB, gk, bk, false, true);
    }
    if (has_[kOr]) {
      make(kFOrIn, ak, rest, true, false);
      make(kFOrOut, a_new, rest, true, false);
    }
  }

  // min over k of (fp_k - b_k), for the OR NOT bound.
  int64_t or_not_offset(int64_t p) const {
    const int64_t* f = in_.f + p * K_;
    const int64_t* g = in_.g + p * K_;
    int64_t c = std::numeric_limits<int64_t>::max();
    for (int64_t k = 0; k < K_; ++k) c = std::min(c, (f[k] - g[k]) - (in_.sizes[k] - in_.prim[k]));
    return c + (in_.n_cells - in_.unit_size);
  }

  // The terms of ParentBound for child op1(F, C_j) with counts (tp, fp) of a parent with
  // counts (tp_f, fp_f): one(kind, fn) for a maximum of fn over a point set, two(kind_a, fn_a,
  // kind_b, fn_b) for the minimum of two such maxima, value(v) for a single value. The bound
  // is penalty factor x the largest term.
  template <class One, class Two, class Value>
  void parent_terms(int32_t op1, int64_t tp, int64_t fp, int64_t tp_f, int64_t fp_f, int64_t or_not_c,
                    One&& one, Two&& two, Value&& value) const {
    const bool inside = op1 == kAnd || op1 == kAndNot;
    const int64_t u = in_.unit_size;
    if (has_[kAnd]) {
      if (inside) {
        if (op1 != kAndNot)  // the search never forms AND right after AND NOT
          one(kFAnd, [&](int64_t g, int64_t fpk) {
            return m(std::min(tp, g), std::max<int64_t>(fp - fp_f + fpk, 0));
          });
      } else {
        one(kFAnd, [&](int64_t g, int64_t fpk) { return m(std::min(tp, g + (tp - tp_f)), fpk); });
      }
    }
    if (has_[kAndNot]) {
      if (inside) {
        one(kFAndNot, [&](int64_t g, int64_t fpk) {
          return m(std::min(tp, tp_f - g), std::max<int64_t>(fp - fpk, 0));
        });
      } else {
        // FP >= max(FP_F - fp_k, FP_H - b_k): each maximised over k, then the minimum.
        two(kFAndNot, [&](int64_t g, int64_t fpk) { return m(tp - g, fp_f - fpk); },
            kFAndNotB, [&](int64_t g, int64_t b) { return m(tp - g, std::max<int64_t>(fp - b, 0)); });
      }
    }
    if (has_[kOr]) {
      if (inside) {
        // Two bounds on TP, each maximised over k: their minimum is a bound.
        two(kFOrOut, [&](int64_t a, int64_t r) { return m(std::min(u, tp_f + a), fp + r); },
            kFOrIn, [&](int64_t a, int64_t r) { return m(std::min(u, tp + a), fp + r); });
      } else if (op1 != kOrNot) {  // ... nor OR right after OR NOT
        one(kFOrOut, [&](int64_t a, int64_t r) { return m(std::min(u, tp + a), std::max(fp, fp_f + r)); });
      }
    }
    if (has_[kOrNot])
      value(m(u, inside ? std::max<int64_t>(fp - fp_f + or_not_c, 0) : std::max(fp, or_not_c)));
  }

  // ParentBound.bound (exact fronts in F).
  double parent(const ParentFronts& F, int32_t op1, int64_t tp, int64_t fp, int64_t tp_f, int64_t fp_f,
                int64_t or_not_c) const {
    auto over = [&](FrontKind kind, auto& fn) {
      double best = 0.0;
      for (const Point& q : F.pts[kind]) best = std::max(best, fn(q.x, q.y));
      return best;
    };
    double out = 0.0;
    parent_terms(
        op1, tp, fp, tp_f, fp_f, or_not_c, [&](FrontKind k, auto&& fn) { out = std::max(out, over(k, fn)); },
        [&](FrontKind ka, auto&& fa, FrontKind kb, auto&& fb) {
          out = std::max(out, std::min(over(ka, fa), over(kb, fb)));
        },
        [&](double v) { out = std::max(out, v); });
    return out * in_.bound_factor;
  }

  // keeps(parent(...)), found term by term: true at the first term that keeps (the factor
  // rounds monotonically, so factor x max = max of factor x term). Most children are pruned
  // here; the few kept get the exact value afterwards.
  template <class Keeps>
  bool parent_keeps(const ParentFronts& F, int32_t op1, int64_t tp, int64_t fp, int64_t tp_f, int64_t fp_f,
                    int64_t or_not_c, Keeps&& keeps) const {
    const double factor = in_.bound_factor;
    if (keeps(0.0)) return true;
    auto any = [&](FrontKind kind, auto& fn) {
      if (!keeps(fn(F.dom[kind].x, F.dom[kind].y) * factor)) return false;
      for (const Point& q : F.pts[kind])
        if (keeps(fn(q.x, q.y) * factor)) return true;
      return false;
    };
    bool kept = false;
    parent_terms(
        op1, tp, fp, tp_f, fp_f, or_not_c, [&](FrontKind k, auto&& fn) { kept = kept || any(k, fn); },
        [&](FrontKind ka, auto&& fa, FrontKind kb, auto&& fb) { kept = kept || (any(ka, fa) && any(kb, fb)); },
        [&](double v) { kept = kept || keeps(v * factor); });
    return kept;
  }

  bool use_pairs() const { return use_pairs_; }

  // pair_bound for child op1(F, C_j) (op1 != OR NOT, leaf row j filled); stops early once the
  // running maximum reaches `cap` (the bound so far), where it can no longer tighten it.
  double pair(int64_t p, int32_t op1, int64_t j, int64_t tp, int64_t fp, int64_t tp_f, int64_t fp_f,
              double cap) const {
    const int64_t* f = in_.f + p * K_;
    const int64_t* g = in_.g + p * K_;
    const int64_t* lf = in_.leaf_f + j * K_;
    const int64_t* lg = in_.leaf_g + j * K_;
    const int64_t* a = in_.prim;
    const int64_t* s = in_.sizes;
    const int64_t u = in_.unit_size;
    const int64_t a_j = a[j], b_j = s[j] - a[j];
    const bool is_and = op1 == kAnd, is_not = op1 == kAndNot;
    double out = 0.0;
    for (int64_t k = 0; k < K_; ++k) {
      const int64_t g_f = g[k], fp_fk = f[k] - g[k], g_j = lg[k], fp_jk = lf[k] - lg[k];
      const int64_t a_k = a[k], b_k = s[k] - a[k];
      const bool later = k >= j;
      if (has_[kAnd] && (is_and ? later : !is_not)) {
        double c;
        if (is_and)
          c = m(std::min(std::min(tp, g_f), g_j),
                std::max({int64_t{0}, fp - (fp_f - fp_fk), fp - (b_j - fp_jk)}));
        else if (is_not)
          c = m(std::min(std::min(tp, g_f), a_k - g_j), std::max<int64_t>(fp - (fp_f - fp_fk), 0));
        else
          c = m(std::min(std::min(tp, g_f + g_j), a_k), std::max(fp_fk, fp_jk));
        out = std::max(out, c);
      }
      if (has_[kAndNot] && (is_not ? later : true)) {
        double c;
        if (is_and)
          c = m(std::min(std::min(tp, tp_f - g_f), a_j - g_j),
                std::max({fp - fp_fk, fp - fp_jk, int64_t{0}}));
        else if (is_not)
          c = m(std::min(tp, tp_f - g_f), std::max<int64_t>(fp - fp_fk, 0));
        else
          c = m(tp - std::max(g_f, g_j),
                std::max({fp_f - fp_fk, b_j - fp_jk, std::max<int64_t>(fp - b_k, 0)}));
        out = std::max(out, c);
      }
      if (has_[kOr] && (op1 == kOr ? later : true)) {
        const int64_t shared_in = std::max<int64_t>(g_f - (tp_f - tp), 0);
        double c;
        if (is_and)
          c = m(std::min(u, tp + a_k - std::max(shared_in, g_j - (a_j - tp))),
                fp + b_k - std::min(fp_fk, fp_jk));
        else if (is_not)
          c = m(std::min(u, tp + a_k - std::max(shared_in, g_f - g_j)), fp + std::max(b_k - fp_fk, fp_jk));
        else
          c = m(std::min(u, tp + a_k - std::max(g_f, g_j)), fp + std::max<int64_t>(b_k - fp_fk - fp_jk, 0));
        out = std::max(out, c);
      }
      if (out * in_.bound_factor >= cap) return cap;  // min(cap, final) == cap
    }
    return out * in_.bound_factor;
  }

 private:
  const LastStepInput& in_;
  int64_t K_;
  double u_;
  bool has_[8] = {false, false, false, false, false, false, false, false};
  int64_t a_max_, b_min_, nb_min_;
  std::vector<Point> front_;
  bool use_pairs_ = false;
};

// The counting identity: a child's (TP, |G|) from its parent's counts and the row entries.
inline void child_counts(int32_t op, int64_t tp_f, int64_t size_f, int64_t f, int64_t g, int64_t a,
                         int64_t c, int64_t u, int64_t P, int64_t& tp, int64_t& size) {
  switch (op) {
    case kAnd: tp = g; size = f; break;
    case kAndNot: tp = tp_f - g; size = size_f - f; break;
    case kOr: tp = tp_f + a - g; size = size_f + c - f; break;
    default: tp = u - a + g; size = P - c + f; break;  // kOrNot
  }
}

inline int family(int32_t op) { return (op == kAnd || op == kAndNot) ? 0 : 1; }

// Whether the search forms op(F, C_j) (optimal.py _ordered_steps and the no-repeat rule).
inline bool formed(const LastStepInput& in, int64_t p, int32_t op, int64_t j) {
  const int32_t* conc = in.parent_concepts + p * in.parent_len;
  if (!in.allow_repeats) {
    for (int64_t s = 0; s < in.parent_len; ++s)
      if (conc[s] == j) return false;
  }
  const int64_t c1 = conc[in.parent_len - 1];
  if (in.parent_len == 1) return !((op == kAnd || op == kOr) && j < c1);
  const int32_t o1 = in.parent_ops[p * (in.parent_len - 1) + in.parent_len - 2];
  const bool earlier = op < o1 || (op == o1 && j < c1);
  return !(family(op) == family(o1) && earlier);
}

// Canonical order of two children of the same length (optimal.py _canonical).
bool canonical_less(const LastStepInput& in, int64_t p, int32_t op, int32_t j, int64_t q, int32_t op_q,
                    int32_t j_q) {
  const int64_t L = in.parent_len;
  const int32_t* cp = in.parent_concepts + p * L;
  const int32_t* cq = in.parent_concepts + q * L;
  if (cp[0] != cq[0]) return cp[0] < cq[0];
  for (int64_t s = 1; s < L; ++s) {
    const int32_t op_a = in.parent_ops[p * (L - 1) + s - 1], op_b = in.parent_ops[q * (L - 1) + s - 1];
    if (op_a != op_b) return op_a < op_b;
    if (cp[s] != cq[s]) return cp[s] < cq[s];
  }
  if (op != op_q) return op < op_q;
  return j < j_q;
}

void check(bool ok, const std::string& msg) {
  if (!ok) throw std::invalid_argument("last_step_children: " + msg);
}

// One unit's pair counts over the blocks of `units` mask `row`, for the rows c of the output
// with c % n_parts == part (each part writes its own rows: no two threads share an entry).
template <class Pop>
void pair_counts_part(const ConceptIndexView& ix, const MaskSetView& units, int64_t row, int64_t* out,
                      int64_t part, int64_t n_parts, Pop pop) {
  const int64_t K = ix.n_concepts;
  std::vector<int32_t> conc;
  std::vector<uint64_t> words;
  for (int64_t s = units.ptr[row]; s < units.ptr[row + 1]; ++s) {
    const int64_t b = units.block[s];
    const uint64_t* uw = units.words + s * kBlockWords;
    conc.clear();
    words.clear();
    auto add = [&](int32_t c, const uint64_t* cw) {
      uint64_t w[kBlockWords];
      uint64_t any = 0;
      for (int q = 0; q < kBlockWords; ++q) any |= (w[q] = uw[q] & (cw ? cw[q] : ~uint64_t{0}));
      if (!any) return;
      conc.push_back(c);
      words.insert(words.end(), w, w + kBlockWords);
    };
    for (int64_t e = ix.block_ptr[b]; e < ix.block_ptr[b + 1]; ++e)
      add(ix.entry_concept[e], ix.entry_words + e * kBlockWords);
    for (int64_t e = ix.full_ptr[b]; e < ix.full_ptr[b + 1]; ++e) add(ix.full_concept[e], nullptr);
    const int64_t n = static_cast<int64_t>(conc.size());
    for (int64_t i = 0; i < n; ++i) {
      if (conc[i] % n_parts != part) continue;
      const uint64_t* wi = words.data() + i * kBlockWords;
      int64_t* o = out + static_cast<int64_t>(conc[i]) * K;
      for (int64_t k = 0; k < n; ++k) {
        const uint64_t* wk = words.data() + k * kBlockWords;
        int64_t cnt = 0;
        for (int q = 0; q < kBlockWords; ++q) cnt += pop(wi[q] & wk[q]);
        o[conc[k]] += cnt;
      }
    }
  }
}

// The same loop with the POPCNT instruction (chosen at run time, as the counting kernels do).
__attribute__((target("popcnt"))) void pair_counts_popcnt(const ConceptIndexView& ix, const MaskSetView& units,
                                                          int64_t row, int64_t* out, int64_t part,
                                                          int64_t n_parts) {
  pair_counts_part(ix, units, row, out, part, n_parts, [](uint64_t x) { return int64_t(__builtin_popcountll(x)); });
}

}  // namespace

void unit_pair_counts(const ConceptIndexView& index, const MaskSetView& units, int64_t row, int64_t* out,
                      int n_threads) {
  if (row < 0 || row >= units.n_masks)
    throw std::invalid_argument("unit_pair_counts: row " + std::to_string(row) + " is not a mask of units (" +
                                std::to_string(units.n_masks) + " masks)");
  const int64_t K = index.n_concepts;
  std::fill(out, out + K * K, int64_t{0});
  const bool hw = simd_supported(Simd::kPopcnt);
  const int64_t parts = std::max(1, n_threads > 0 ? n_threads : default_threads());
  parallel_for(parts, static_cast<int>(parts), 1, [&](int64_t begin, int64_t end) {
    for (int64_t part = begin; part < end; ++part) {
      if (hw)
        pair_counts_popcnt(index, units, row, out, part, parts);
      else
        pair_counts_part(index, units, row, out, part, parts, [](uint64_t x) { return int64_t(__builtin_popcountll(x)); });
    }
  });
}

LastStepOutput last_step_children(const LastStepInput& in, int n_threads) {
  const int64_t K = in.n_concepts, n = in.n_parents;
  check(K >= 1, "n_concepts must be >= 1");
  check(n >= 0, "n_parents must be >= 0");
  check(in.parent_len >= 1, "parents need at least one leaf");
  check(!in.ops.empty(), "no operators");
  std::vector<bool> seen(8, false);
  for (int32_t o : in.ops) {
    check(o >= kOr && o <= kOrNot, "operator code " + std::to_string(o) + " is not 1..4");
    check(!seen[o], "operator code " + std::to_string(o) + " repeated");
    seen[o] = true;
  }
  check(in.metric == Metric::kIou || in.metric == Metric::kPrecision || in.metric == Metric::kRecall,
        "metric must be 0 (iou), 1 (precision) or 2 (recall)");
  for (int64_t i = 0; i < n * in.parent_len; ++i)
    check(in.parent_concepts[i] >= 0 && in.parent_concepts[i] < K, "parent concept out of range");
  for (int64_t i = 0; i < n * (in.parent_len - 1); ++i)
    check(in.parent_ops[i] >= kOr && in.parent_ops[i] <= kOrNot, "parent operator is not 1..4");
  check(in.bound_factor > 0 && in.child_factor > 0, "penalty factors must be > 0");

  LastStepOutput out;
  if (n == 0) return out;
  const Bounder bounder(in);
  const double u = static_cast<double>(in.unit_size);
  const int64_t n_ops = static_cast<int64_t>(in.ops.size());

  // One pass over the children of each parent: the score (the best child per parent), then,
  // with bound_children, the bounds, cheapest first; a child leaves at the first that prunes
  // it. Pruning is against the incumbent as it was: the caller prunes the survivors again
  // once it has taken the best child (a few more survivors, not a second pass).
  auto keeps = [&](double bound) { return bound > in.incumbent || (in.keep_ties && bound == in.incumbent); };
  struct Kept {
    double score = -1.0;  // the parent's best child
    int32_t op = 0, j = -1;
    int64_t best_tp = 0, best_size = 0, n_children = 0;
    std::vector<int64_t> tp, size;
    std::vector<int32_t> op_kept, concept;
    std::vector<double> bound;
  };
  std::vector<Kept> kept(n);
  parallel_for(n, n_threads, 4, [&](int64_t begin, int64_t end) {
    ParentFronts exact;
    std::vector<int64_t> scratch;
    for (int64_t p = begin; p < end; ++p) {
      const int64_t* f = in.f + p * K;
      const int64_t* g = in.g + p * K;
      const int64_t tp_f = in.parent_tp[p], size_f = in.parent_size[p], fp_f = size_f - tp_f;
      bool have_exact = false;
      int64_t or_not_c = 0;
      Kept& k_out = kept[p];
      for (int64_t j = 0; j < K; ++j) {
        for (int64_t o = 0; o < n_ops; ++o) {
          const int32_t op = in.ops[o];
          if (!formed(in, p, op, j)) continue;
          int64_t tp, size;
          child_counts(op, tp_f, size_f, f[j], g[j], in.prim[j], in.sizes[j], in.unit_size, in.n_cells, tp, size);
          ++k_out.n_children;
          const double score = metric_of(in.metric, u, tp, size - tp) * in.child_factor;
          // Within a parent (one parent key) canonical order is (op, j).
          if (score > k_out.score || (score == k_out.score && (op < k_out.op || (op == k_out.op && j < k_out.j)))) {
            k_out.score = score; k_out.op = op; k_out.j = static_cast<int32_t>(j);
            k_out.best_tp = tp; k_out.best_size = size;
          }
          if (!in.bound_children) continue;
          const int64_t fp = size - tp;
          double bound = bounder.completion(tp, fp, false);
          if (!keeps(bound)) continue;
          // (ParentBound's dominating-point prefilter is never tighter than its fronts, so
          // the minimum does not need it.)
          if (!have_exact) {
            bounder.parent_points(p, exact, scratch);
            or_not_c = bounder.or_not_offset(p);
            have_exact = true;
          }
          if (!bounder.parent_keeps(exact, op, tp, fp, tp_f, fp_f, or_not_c, keeps)) continue;
          bound = std::min(bound, bounder.parent(exact, op, tp, fp, tp_f, fp_f, or_not_c));
          if (!keeps(bound)) continue;
          bound = std::min(bound, bounder.completion(tp, fp, true));
          if (!keeps(bound)) continue;
          if (bounder.use_pairs() && op != kOrNot && in.leaf_have[j]) {
            bound = std::min(bound, bounder.pair(p, op, j, tp, fp, tp_f, fp_f, bound));
            if (!keeps(bound)) continue;
          }
          k_out.tp.push_back(tp);
          k_out.size.push_back(size);
          k_out.op_kept.push_back(op);
          k_out.concept.push_back(static_cast<int32_t>(j));
          k_out.bound.push_back(bound);
        }
      }
    }
  });
  for (int64_t p = 0; p < n; ++p) {
    const Kept& b = kept[p];
    out.n_children += b.n_children;
    if (b.j < 0) continue;
    if (out.best_parent < 0 || b.score > out.best_score ||
        (b.score == out.best_score &&
         canonical_less(in, p, b.op, b.j, out.best_parent, out.best_op, out.best_concept))) {
      out.best_score = b.score; out.best_parent = p; out.best_op = b.op; out.best_concept = b.j;
      out.best_tp = b.best_tp; out.best_size = b.best_size;
    }
  }
  if (out.best_parent < 0) out.best_score = 0.0;
  for (int64_t p = 0; p < n; ++p) {
    Kept& k = kept[p];
    out.parent.insert(out.parent.end(), k.tp.size(), p);
    out.tp.insert(out.tp.end(), k.tp.begin(), k.tp.end());
    out.size.insert(out.size.end(), k.size.begin(), k.size.end());
    out.op.insert(out.op.end(), k.op_kept.begin(), k.op_kept.end());
    out.concept.insert(out.concept.end(), k.concept.begin(), k.concept.end());
    out.bound.insert(out.bound.end(), k.bound.begin(), k.bound.end());
  }
  return out;
}

}  // namespace cpu
}  // namespace compexp
