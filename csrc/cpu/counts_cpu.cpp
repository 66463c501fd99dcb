// Count-only kernels: primitive counts and fused extension counts (CPU).
// GCC 12 warns falsely inside its own AVX-512 reduction intrinsics (_mm256_undefined_si256).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstring>
#include <vector>

#include "../checks.h"
#include "block_ops.h"
#include "cpu_backend.h"
#include "parallel.h"

namespace compexp {
namespace cpu {

namespace {

// |U_u & C_j| for units [begin, end).
template <class Ops>
COMPEXP_INLINE void primitive_range(const ConceptIndexView& ix, const MaskSetView& units,
                                    int64_t* out, int64_t begin, int64_t end) {
  const int64_t K = ix.n_concepts;
  for (int64_t u = begin; u < end; ++u) {
    int64_t* row = out + u * K;
    std::memset(row, 0, sizeof(int64_t) * K);
    for (int64_t p = units.ptr[u]; p < units.ptr[u + 1]; ++p) {
      const int64_t b = units.block[p];
      const uint64_t* uw = units.words + p * kBlockWords;
      Ops::and_count_entries(uw, ix.entry_words, ix.entry_concept, ix.block_ptr[b],
                             ix.block_ptr[b + 1], row);
      const int64_t f0 = ix.full_ptr[b], f1 = ix.full_ptr[b + 1];
      if (f0 != f1) {
        const int64_t cu = Ops::count(uw);
        for (int64_t q = f0; q < f1; ++q) row[ix.full_concept[q]] += cu;
      }
    }
  }
}

// Blocks of a formula processed between flushes of the packed accumulators: each block adds at
// most kBlockCells to a 32-bit half, so 2^22 blocks stay below 2^31.
constexpr int64_t kFlushBlocks = int64_t{1} << 22;
// How many formula blocks ahead the concept entries are prefetched.
constexpr int64_t kPrefetchAhead = 16;

// Two-level prefetch along a formula's blocks: the block pointers kPrefetchAhead * 2 blocks
// ahead (so that reading them below does not stall), the entries kPrefetchAhead blocks ahead.
inline void prefetch_block(const ConceptIndexView& ix, const int64_t* blocks, int64_t p, int64_t end) {
  if (p + kPrefetchAhead < end) {
    if (p + 2 * kPrefetchAhead < end) {
      __builtin_prefetch(ix.block_ptr + blocks[p + 2 * kPrefetchAhead]);
      __builtin_prefetch(ix.full_ptr + blocks[p + 2 * kPrefetchAhead]);
    }
    const int64_t b = blocks[p + kPrefetchAhead];
    const int64_t e0 = ix.block_ptr[b], n = std::min<int64_t>(ix.block_ptr[b + 1] - e0, 12);
    const char* words = reinterpret_cast<const char*>(ix.entry_words + e0 * kBlockWords);
    for (int64_t i = 0; i < n; ++i) __builtin_prefetch(words + 64 * i);
    __builtin_prefetch(ix.entry_concept + e0);
  }
}

inline void flush_packed(uint64_t* acc, int64_t* fi, int64_t* gi, int64_t K) {
  for (int64_t j = 0; j < K; ++j) {
    fi[j] += static_cast<int64_t>(acc[j] & 0xffffffffu);
    gi[j] += static_cast<int64_t>(acc[j] >> 32);
    acc[j] = 0;
  }
}

// f = |F_i & C_j| and g = |U & F_i & C_j| for the formulas of groups [begin, end). A group is a
// run of consecutive formulas of the same unit (a unit's beam): the union of their blocks is
// walked once in block order, and each block's concept entries, read from memory once, are
// counted against every formula of the group that has that block (they stay in L1 meanwhile).
// f and g of each (formula, concept) are accumulated packed in one word (f | g << 32).
// Adds the work walked (per formula block, see ExtensionWork) to *work.
template <class Ops>
COMPEXP_INLINE void extension_range(const ConceptIndexView& ix, const MaskSetView& formulas,
                                    const int64_t* unit_of, const MaskSetView& units,
                                    const int64_t* group_ptr, int64_t* f, int64_t* g,
                                    int64_t begin, int64_t end, ExtensionWork* work) {
  const int64_t K = ix.n_concepts;
  // Scratch reused across calls on this thread: no allocation (and no page faults on fresh
  // memory) per group, which serialised the threads.
  static thread_local std::vector<uint64_t> acc_buf, uf_buf;
  static thread_local std::vector<int64_t> cursor, since_flush, active;
  int64_t walked_blocks = 0, walked_partial = 0, walked_full = 0;
  for (int64_t grp = begin; grp < end; ++grp) {
    const int64_t i0 = group_ptr[grp], n = group_ptr[grp + 1] - i0;
    acc_buf.assign(static_cast<size_t>(n) * K, 0);
    cursor.assign(n, 0);
    since_flush.assign(n, 0);
    uf_buf.resize(static_cast<size_t>(n) * kBlockWords);
    for (int64_t a = 0; a < n; ++a) {
      cursor[a] = formulas.ptr[i0 + a];
      std::memset(f + (i0 + a) * K, 0, sizeof(int64_t) * K);
      std::memset(g + (i0 + a) * K, 0, sizeof(int64_t) * K);
    }
    const int64_t u = unit_of[i0];
    int64_t up = units.ptr[u];
    const int64_t uend = units.ptr[u + 1];
    for (;;) {
      // Next block of the union, and the formulas that have it.
      int64_t b = INT64_MAX;
      for (int64_t a = 0; a < n; ++a)
        if (cursor[a] < formulas.ptr[i0 + a + 1]) b = std::min(b, formulas.block[cursor[a]]);
      if (b == INT64_MAX) break;
      active.clear();
      for (int64_t a = 0; a < n; ++a)
        if (cursor[a] < formulas.ptr[i0 + a + 1] && formulas.block[cursor[a]] == b) active.push_back(a);
      // Prefetch along the first active formula (the others mostly share its blocks).
      prefetch_block(ix, formulas.block, cursor[active[0]], formulas.ptr[i0 + active[0] + 1]);
      while (up < uend && units.block[up] < b) ++up;
      const uint64_t* uw = (up < uend && units.block[up] == b) ? units.words + up * kBlockWords : nullptr;
      const int64_t e0 = ix.block_ptr[b], e1 = ix.block_ptr[b + 1];
      const int64_t f0 = ix.full_ptr[b], f1 = ix.full_ptr[b + 1];
      const int64_t n_active = static_cast<int64_t>(active.size());
      walked_blocks += n_active;
      walked_partial += n_active * (e1 - e0);
      walked_full += n_active * (f1 - f0);
      for (int64_t a : active) {
        const uint64_t* fw = formulas.words + cursor[a] * kBlockWords;
        uint64_t* uf = uf_buf.data() + a * kBlockWords;
        uint64_t* acc = acc_buf.data() + a * K;
        uint64_t any = 0;
        if (uw) {
          for (int w = 0; w < kBlockWords; ++w) {
            uf[w] = fw[w] & uw[w];
            any |= uf[w];
          }
        }
        if (any)
          Ops::and_count2_packed(fw, uf, ix.entry_words, ix.entry_concept, e0, e1, acc);
        else
          Ops::and_count_packed(fw, ix.entry_words, ix.entry_concept, e0, e1, acc);
        if (f0 != f1) {
          const uint64_t cf = static_cast<uint64_t>(Ops::count(fw));
          const uint64_t cg = any ? static_cast<uint64_t>(Ops::count(uf)) : 0;
          for (int64_t q = f0; q < f1; ++q) acc[ix.full_concept[q]] += cf | (cg << 32);
        }
        ++cursor[a];
        if (++since_flush[a] == kFlushBlocks) {
          flush_packed(acc, f + (i0 + a) * K, g + (i0 + a) * K, K);
          since_flush[a] = 0;
        }
      }
    }
    for (int64_t a = 0; a < n; ++a)
      flush_packed(acc_buf.data() + a * K, f + (i0 + a) * K, g + (i0 + a) * K, K);
  }
  work->formula_blocks += walked_blocks;
  work->partial_entries += walked_partial;
  work->full_entries += walked_full;
}

// One entry point per instruction set; `flatten` inlines the template body and the block
// primitives into a function compiled for that target (never cloned: see COMPEXP_NOCLONE).
#define COMPEXP_STAMP(SUFFIX, OPS, TARGET)                                                      \
  TARGET COMPEXP_NOCLONE __attribute__((flatten)) void primitive_##SUFFIX(                      \
      const ConceptIndexView& ix, const MaskSetView& units, int64_t* out, int64_t b,            \
      int64_t e) {                                                                              \
    primitive_range<OPS>(ix, units, out, b, e);                                                 \
  }                                                                                             \
  TARGET COMPEXP_NOCLONE __attribute__((flatten)) void extension_##SUFFIX(                      \
      const ConceptIndexView& ix, const MaskSetView& formulas, const int64_t* unit_of,          \
      const MaskSetView& units, const int64_t* group_ptr, int64_t* f, int64_t* g, int64_t b,    \
      int64_t e, ExtensionWork* work) {                                                         \
    extension_range<OPS>(ix, formulas, unit_of, units, group_ptr, f, g, b, e, work);            \
  }

COMPEXP_STAMP(scalar, ScalarOps, )
COMPEXP_STAMP(popcnt, PopcntOps, COMPEXP_TARGET_POPCNT)
COMPEXP_STAMP(avx512, Avx512Ops, COMPEXP_TARGET_AVX512)
#undef COMPEXP_STAMP

Simd resolve(Simd s) {
  if (s == Simd::kAuto) return best_simd();
  if (!simd_supported(s))
    throw std::invalid_argument(std::string("this CPU cannot run the '") + simd_name(s) +
                                "' kernels");
  return s;
}

}  // namespace

bool simd_supported(Simd s) {
  switch (s) {
    case Simd::kAuto:
    case Simd::kScalar:
      return true;
    case Simd::kPopcnt:
      return __builtin_cpu_supports("popcnt");
    case Simd::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vpopcntdq");
  }
  return false;
}

Simd best_simd() {
  static const Simd best = [] {
    if (simd_supported(Simd::kAvx512)) return Simd::kAvx512;
    if (simd_supported(Simd::kPopcnt)) return Simd::kPopcnt;
    return Simd::kScalar;
  }();
  return best;
}

const char* simd_name(Simd s) {
  switch (s) {
    case Simd::kAuto: return "auto";
    case Simd::kScalar: return "scalar";
    case Simd::kPopcnt: return "popcnt";
    case Simd::kAvx512: return "avx512";
  }
  return "unknown";
}

void primitive_counts(const ConceptIndexView& ix, const MaskSetView& units, int64_t* out,
                      Simd simd, int n_threads) {
  const Simd s = resolve(simd);
  parallel_for(units.n_masks, n_threads, 1, [&](int64_t b, int64_t e) {
    if (s == Simd::kAvx512) primitive_avx512(ix, units, out, b, e);
    else if (s == Simd::kPopcnt) primitive_popcnt(ix, units, out, b, e);
    else primitive_scalar(ix, units, out, b, e);
  });
}

ExtensionWork extension_counts(const ConceptIndexView& ix, const MaskSetView& formulas,
                               const int64_t* unit_of, const MaskSetView& units, int64_t* f,
                               int64_t* g, Simd simd, int n_threads) {
  const Simd s = resolve(simd);
  check_unit_of(unit_of, formulas.n_masks, units.n_masks);
  // Groups: runs of consecutive formulas of the same unit, at most kMaxGroup long (bounds the
  // accumulators a thread holds to kMaxGroup * K words).
  constexpr int64_t kMaxGroup = 16;
  std::vector<int64_t> group_ptr{0};
  for (int64_t i = 1; i < formulas.n_masks; ++i)
    if (unit_of[i] != unit_of[i - 1] || i - group_ptr.back() == kMaxGroup) group_ptr.push_back(i);
  if (formulas.n_masks > 0) group_ptr.push_back(formulas.n_masks);
  const int64_t n_groups = static_cast<int64_t>(group_ptr.size()) - 1;
  const int64_t* gp = group_ptr.data();
  // Work is summed per chunk of groups in a local, then added here once per chunk.
  std::atomic<int64_t> blocks{0}, partial{0}, full{0};
  parallel_for(n_groups, n_threads, 1, [&](int64_t b, int64_t e) {
    ExtensionWork w;
    if (s == Simd::kAvx512) extension_avx512(ix, formulas, unit_of, units, gp, f, g, b, e, &w);
    else if (s == Simd::kPopcnt) extension_popcnt(ix, formulas, unit_of, units, gp, f, g, b, e, &w);
    else extension_scalar(ix, formulas, unit_of, units, gp, f, g, b, e, &w);
    blocks += w.formula_blocks;
    partial += w.partial_entries;
    full += w.full_entries;
  });
  return ExtensionWork{blocks.load(), partial.load(), full.load()};
}

void mask_popcounts(const MaskSetView& masks, int64_t* out, int n_threads) {
  parallel_for(masks.n_masks, n_threads, 64, [&](int64_t b, int64_t e) {
    for (int64_t m = b; m < e; ++m) {
      int64_t s = 0;
      for (int64_t p = masks.ptr[m] * kBlockWords; p < masks.ptr[m + 1] * kBlockWords; ++p)
        s += __builtin_popcountll(masks.words[p]);
      out[m] = s;
    }
  });
}

void concept_sizes(const ConceptIndexView& ix, int64_t* out) {
  std::memset(out, 0, sizeof(int64_t) * ix.n_concepts);
  for (int64_t b = 0; b < ix.n_blocks; ++b) {
    for (int64_t e = ix.block_ptr[b]; e < ix.block_ptr[b + 1]; ++e) {
      int64_t s = 0;
      for (int w = 0; w < kBlockWords; ++w) s += __builtin_popcountll(ix.entry_words[e * kBlockWords + w]);
      out[ix.entry_concept[e]] += s;
    }
    for (int64_t q = ix.full_ptr[b]; q < ix.full_ptr[b + 1]; ++q) out[ix.full_concept[q]] += kBlockCells;
  }
}

}  // namespace cpu
}  // namespace compexp
