// Materialisation of op(F, C_j) as block-sparse masks, and mask-set merging (CPU).
#include <algorithm>
#include <cstring>

#include "../block_math.h"
#include "../checks.h"
#include "cpu_backend.h"
#include "parallel.h"

namespace compexp {
namespace cpu {

namespace {

// Words of concept item q (a partial entry or a full block) into out.
inline void item_words(const ConceptIndexView& ix, int64_t q, uint64_t* out) {
  compexp::item_words(ix.concept_entry, ix.entry_words, q, out);
}

struct Builder {
  std::vector<int64_t> block;
  std::vector<uint64_t> words;
  // Appends the block unless it is empty.
  void push(int64_t b, const uint64_t* w) {
    if (!any_bits(w)) return;
    block.push_back(b);
    words.insert(words.end(), w, w + kBlockWords);
  }
};

void materialize_one(const ConceptIndexView& ix, const MaskSetView& F, int64_t src, int32_t op,
                     int32_t j, Builder& out) {
  uint64_t w[kBlockWords], c[kBlockWords];
  const int64_t q0 = op == kCopy ? 0 : ix.concept_ptr[j], q1 = op == kCopy ? 0 : ix.concept_ptr[j + 1];
  if (op == kLeaf) {
    for (int64_t q = q0; q < q1; ++q) {
      item_words(ix, q, w);
      out.push(ix.concept_block[q], w);
    }
    return;
  }
  const int64_t p0 = F.ptr[src], p1 = F.ptr[src + 1];
  if (op == kCopy) {
    out.block.insert(out.block.end(), F.block + p0, F.block + p1);
    out.words.insert(out.words.end(), F.words + p0 * kBlockWords, F.words + p1 * kBlockWords);
    return;
  }
  int64_t p = p0, q = q0;
  if (op == kOrNot) {
    // F | ~C touches every block of the dataset.
    for (int64_t b = 0; b < ix.n_blocks; ++b) {
      while (p < p1 && F.block[p] < b) ++p;
      while (q < q1 && ix.concept_block[q] < b) ++q;
      const bool hf = p < p1 && F.block[p] == b;
      const bool hc = q < q1 && ix.concept_block[q] == b;
      if (hc) item_words(ix, q, c); else std::fill(c, c + kBlockWords, 0);
      for (int i = 0; i < kBlockWords; ++i)
        w[i] = ((hf ? F.words[p * kBlockWords + i] : 0) | ~c[i]) & valid_bits(ix.n_cells, b, i);
      out.push(b, w);
    }
    return;
  }
  // Merge the two sorted block lists.
  while (p < p1 || q < q1) {
    const int64_t bf = p < p1 ? F.block[p] : INT64_MAX;
    const int64_t bc = q < q1 ? ix.concept_block[q] : INT64_MAX;
    const int64_t b = std::min(bf, bc);
    const uint64_t* fw = bf == b ? F.words + p * kBlockWords : nullptr;
    if (bc == b) item_words(ix, q, c); else std::fill(c, c + kBlockWords, 0);
    if (op == kAnd) {
      if (!fw || bc != b) { p += bf == b; q += bc == b; continue; }
      for (int i = 0; i < kBlockWords; ++i) w[i] = fw[i] & c[i];
    } else if (op == kAndNot) {
      if (!fw) { ++q; continue; }
      for (int i = 0; i < kBlockWords; ++i) w[i] = fw[i] & ~c[i];
    } else {  // kOr
      for (int i = 0; i < kBlockWords; ++i) w[i] = (fw ? fw[i] : 0) | c[i];
    }
    out.push(b, w);
    p += bf == b;
    q += bc == b;
  }
}

MaskSet concat(std::vector<Builder>& parts) {
  MaskSet out;
  size_t nb = 0;
  for (auto& b : parts) nb += b.block.size();
  out.ptr.reserve(parts.size() + 1);
  out.block.reserve(nb);
  out.words.reserve(nb * kBlockWords);
  for (auto& b : parts) {
    out.block.insert(out.block.end(), b.block.begin(), b.block.end());
    out.words.insert(out.words.end(), b.words.begin(), b.words.end());
    out.ptr.push_back(static_cast<int64_t>(out.block.size()));
    std::vector<int64_t>().swap(b.block);
    std::vector<uint64_t>().swap(b.words);
  }
  return out;
}

}  // namespace

MaskSet materialize(const ConceptIndexView& ix, const MaskSetView& F, int64_t n_out,
                    const int64_t* src, const int32_t* op, const int32_t* concept, int n_threads) {
  check_materialize_args(n_out, src, op, concept, ix.n_concepts, F.n_masks);
  std::vector<Builder> parts(n_out);
  parallel_for(n_out, n_threads, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) materialize_one(ix, F, src[i], op[i], concept[i], parts[i]);
  });
  return concat(parts);
}

MaskSet merge_mask_parts(const std::vector<const MaskSet*>& parts) {
  MaskSet out;
  if (parts.empty()) return out;
  const size_t n_masks = parts[0]->ptr.size() - 1;
  for (auto* part : parts)
    COMPEXP_CHECK(part->ptr.size() - 1 == n_masks, "mask-set parts hold different mask counts");
  for (size_t m = 0; m < n_masks; ++m) {
    for (auto* part : parts) {
      for (int64_t p = part->ptr[m]; p < part->ptr[m + 1]; ++p) {
        const int64_t b = part->block[p];
        const uint64_t* w = part->words.data() + p * kBlockWords;
        const bool same = out.block.size() > static_cast<size_t>(out.ptr.back()) && out.block.back() == b;
        if (same) {
          uint64_t* last = out.words.data() + out.words.size() - kBlockWords;
          for (int i = 0; i < kBlockWords; ++i) last[i] |= w[i];
        } else {
          COMPEXP_CHECK(out.block.size() == static_cast<size_t>(out.ptr.back()) || out.block.back() < b,
                        "mask-set parts are not in sample order");
          out.block.push_back(b);
          out.words.insert(out.words.end(), w, w + kBlockWords);
        }
      }
    }
    out.ptr.push_back(static_cast<int64_t>(out.block.size()));
  }
  return out;
}

}  // namespace cpu
}  // namespace compexp
