// Per-block popcount primitives, one struct per instruction set. Each struct's functions are
// always_inline and carry their target; kernels that use them are stamped out per struct by a
// wrapper with the same target and `flatten` (see counts_cpu.cpp), so no SIMD code leaks into
// functions that run on CPUs without it.
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "../layout.h"

#define COMPEXP_INLINE inline __attribute__((always_inline))
// The Ops functions below are plain `inline`: always_inline would force them into the generic
// template body, whose target lacks the instructions. The per-target wrappers `flatten` them in.
#define COMPEXP_TARGET_POPCNT __attribute__((target("popcnt")))
#define COMPEXP_TARGET_AVX512 __attribute__((target("avx512f,avx512vpopcntdq")))
// For the per-target entry points: GCC may otherwise specialise one into a clone (IPA-CP,
// ".constprop") in which the target's primitives are no longer inlined: HardwarePop::pop became
// a call per word and the POPCNT extension kernel ran 3-4x slower.
#if defined(__GNUC__) && !defined(__clang__)
#define COMPEXP_NOCLONE __attribute__((noinline, noclone))
#else
#define COMPEXP_NOCLONE __attribute__((noinline))
#endif

namespace compexp {
namespace cpu {

// Word-at-a-time popcount kernels, generic in the popcount of one word (`Pop::pop`). Instantiated
// with the portable builtin (the oracle) and with the POPCNT instruction; the per-target wrappers
// in counts_cpu.cpp `flatten` them, so Pop's target attribute reaches the whole loop.
template <class Pop>
struct WordOps {
  static inline int64_t pop(uint64_t x) { return Pop::pop(x); }
  static inline int64_t count(const uint64_t* a) {
    int64_t s = 0;
    for (int w = 0; w < kBlockWords; ++w) s += pop(a[w]);
    return s;
  }
  // out_f[concept[e]] += |a & words_e| for entries e in [e0, e1).
  static inline void and_count_entries(const uint64_t* a, const uint64_t* words, const int32_t* concept,
                                       int64_t e0, int64_t e1, int64_t* out_f) {
    for (int64_t e = e0; e < e1; ++e) {
      const uint64_t* c = words + e * kBlockWords;
      int64_t s = 0;
      for (int w = 0; w < kBlockWords; ++w) s += pop(a[w] & c[w]);
      out_f[concept[e]] += s;
    }
  }
  // acc[concept[e]] += |a & words_e| + (|b & words_e| << 32): f and g packed in one word.
  static inline void and_count2_packed(const uint64_t* a, const uint64_t* b, const uint64_t* words,
                                       const int32_t* concept, int64_t e0, int64_t e1, uint64_t* acc) {
    for (int64_t e = e0; e < e1; ++e) {
      const uint64_t* c = words + e * kBlockWords;
      uint64_t sf = 0, sg = 0;
      for (int w = 0; w < kBlockWords; ++w) {
        sf += static_cast<uint64_t>(pop(a[w] & c[w]));
        sg += static_cast<uint64_t>(pop(b[w] & c[w]));
      }
      acc[concept[e]] += sf | (sg << 32);
    }
  }
  // acc[concept[e]] += |a & words_e| (the g half stays 0).
  static inline void and_count_packed(const uint64_t* a, const uint64_t* words, const int32_t* concept,
                                      int64_t e0, int64_t e1, uint64_t* acc) {
    for (int64_t e = e0; e < e1; ++e) {
      const uint64_t* c = words + e * kBlockWords;
      uint64_t sf = 0;
      for (int w = 0; w < kBlockWords; ++w) sf += static_cast<uint64_t>(pop(a[w] & c[w]));
      acc[concept[e]] += sf;
    }
  }
};

// Portable: __builtin_popcountll compiles to a library call or a bit-trick sequence when the
// target has no POPCNT instruction. This is the oracle the fast versions are tested against.
struct BuiltinPop {
  static inline int64_t pop(uint64_t x) { return __builtin_popcountll(x); }
};
// The POPCNT instruction on 64-bit words (x86-64 CPUs of the last 15 years).
struct HardwarePop {
  static inline COMPEXP_TARGET_POPCNT int64_t pop(uint64_t x) { return static_cast<int64_t>(_mm_popcnt_u64(x)); }
};
using ScalarOps = WordOps<BuiltinPop>;
using PopcntOps = WordOps<HardwarePop>;

// AVX-512 VPOPCNTDQ: one block is one register.
struct Avx512Ops {
  static inline COMPEXP_TARGET_AVX512 int64_t count(const uint64_t* a) {
    return _mm512_reduce_add_epi64(_mm512_popcnt_epi64(_mm512_loadu_si512(a)));
  }
  static inline COMPEXP_TARGET_AVX512 void and_count_entries(
      const uint64_t* a, const uint64_t* words, const int32_t* concept, int64_t e0, int64_t e1,
      int64_t* out_f) {
    const __m512i va = _mm512_loadu_si512(a);
    for (int64_t e = e0; e < e1; ++e) {
      const __m512i c = _mm512_loadu_si512(words + e * kBlockWords);
      out_f[concept[e]] += _mm512_reduce_add_epi64(_mm512_popcnt_epi64(_mm512_and_si512(va, c)));
    }
  }
  static inline COMPEXP_TARGET_AVX512 void and_count2_entries(
      const uint64_t* a, const uint64_t* b, const uint64_t* words, const int32_t* concept,
      int64_t e0, int64_t e1, int64_t* out_f, int64_t* out_g) {
    const __m512i va = _mm512_loadu_si512(a);
    const __m512i vb = _mm512_loadu_si512(b);
    for (int64_t e = e0; e < e1; ++e) {
      const __m512i c = _mm512_loadu_si512(words + e * kBlockWords);
      // Both counts are <= 512, so pack g into the high half of each lane: one reduction.
      const __m512i pf = _mm512_popcnt_epi64(_mm512_and_si512(va, c));
      const __m512i pg = _mm512_popcnt_epi64(_mm512_and_si512(vb, c));
      const uint64_t both =
          static_cast<uint64_t>(_mm512_reduce_add_epi64(_mm512_add_epi64(pf, _mm512_slli_epi64(pg, 32))));
      out_f[concept[e]] += static_cast<int64_t>(both & 0xffffffffu);
      out_g[concept[e]] += static_cast<int64_t>(both >> 32);
    }
  }
  // Sums each of 8 vectors' lanes: lane i of the result is the sum of s[i]'s lanes. A transpose
  // tree (unpack, shuffle, add) costs ~21 instructions for 8 sums instead of ~7 per reduction.
  static inline COMPEXP_TARGET_AVX512 __m512i reduce8(const __m512i* s) {
    __m512i a[4];
    for (int i = 0; i < 4; ++i)
      a[i] = _mm512_add_epi64(_mm512_unpacklo_epi64(s[2 * i], s[2 * i + 1]),
                              _mm512_unpackhi_epi64(s[2 * i], s[2 * i + 1]));
    const __m512i b0 = _mm512_add_epi64(_mm512_shuffle_i64x2(a[0], a[1], 0x88), _mm512_shuffle_i64x2(a[0], a[1], 0xdd));
    const __m512i b1 = _mm512_add_epi64(_mm512_shuffle_i64x2(a[2], a[3], 0x88), _mm512_shuffle_i64x2(a[2], a[3], 0xdd));
    // Chunk j of c holds the totals of (s[2j], s[2j+1]): lane i is the sum of s[i].
    const __m512i c = _mm512_add_epi64(_mm512_shuffle_i64x2(b0, b1, 0x88), _mm512_shuffle_i64x2(b0, b1, 0xdd));
    return c;
  }
  static inline COMPEXP_TARGET_AVX512 void and_count2_packed(const uint64_t* a, const uint64_t* b,
                                                             const uint64_t* words, const int32_t* concept,
                                                             int64_t e0, int64_t e1, uint64_t* acc) {
    const __m512i va = _mm512_loadu_si512(a);
    const __m512i vb = _mm512_loadu_si512(b);
    int64_t e = e0;
    alignas(64) uint64_t out[8];
    for (; e + 8 <= e1; e += 8) {
      __m512i s[8];
      for (int i = 0; i < 8; ++i) {
        const __m512i c = _mm512_loadu_si512(words + (e + i) * kBlockWords);
        s[i] = _mm512_add_epi64(_mm512_popcnt_epi64(_mm512_and_si512(va, c)),
                                _mm512_slli_epi64(_mm512_popcnt_epi64(_mm512_and_si512(vb, c)), 32));
      }
      _mm512_store_si512(out, reduce8(s));
      for (int i = 0; i < 8; ++i) acc[concept[e + i]] += out[i];
    }
    if (e < e1) {
      // The last 1..7 entries go through the same tree, zero-padded: no per-entry reduction
      // and no data-dependent loop.
      const int r = static_cast<int>(e1 - e);
      __m512i s[8];
      for (int i = 0; i < 8; ++i) {
        const __m512i c = i < r ? _mm512_loadu_si512(words + (e + i) * kBlockWords) : _mm512_setzero_si512();
        s[i] = _mm512_add_epi64(_mm512_popcnt_epi64(_mm512_and_si512(va, c)),
                                _mm512_slli_epi64(_mm512_popcnt_epi64(_mm512_and_si512(vb, c)), 32));
      }
      _mm512_store_si512(out, reduce8(s));
      for (int i = 0; i < r; ++i) acc[concept[e + i]] += out[i];
    }
  }
  static inline COMPEXP_TARGET_AVX512 void and_count_packed(const uint64_t* a, const uint64_t* words,
                                                            const int32_t* concept, int64_t e0, int64_t e1,
                                                            uint64_t* acc) {
    const __m512i va = _mm512_loadu_si512(a);
    int64_t e = e0;
    alignas(64) uint64_t out[8];
    for (; e + 8 <= e1; e += 8) {
      __m512i s[8];
      for (int i = 0; i < 8; ++i)
        s[i] = _mm512_popcnt_epi64(_mm512_and_si512(va, _mm512_loadu_si512(words + (e + i) * kBlockWords)));
      _mm512_store_si512(out, reduce8(s));
      for (int i = 0; i < 8; ++i) acc[concept[e + i]] += out[i];
    }
    if (e < e1) {
      const int r = static_cast<int>(e1 - e);
      __m512i s[8];
      for (int i = 0; i < 8; ++i)
        s[i] = i < r ? _mm512_popcnt_epi64(_mm512_and_si512(va, _mm512_loadu_si512(words + (e + i) * kBlockWords)))
                     : _mm512_setzero_si512();
      _mm512_store_si512(out, reduce8(s));
      for (int i = 0; i < r; ++i) acc[concept[e + i]] += out[i];
    }
  }
};

}  // namespace cpu
}  // namespace compexp
