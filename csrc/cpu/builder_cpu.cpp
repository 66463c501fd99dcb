// Building the block-sparse concept index from label maps, dense masks and sample labels.
#include <algorithm>
#include <cstring>
#include <numeric>
#include <stdexcept>

#include "../block_math.h"
#include "cpu_backend.h"
#include "parallel.h"

namespace compexp {
namespace cpu {

namespace {

// Collects the words of one block for several concepts while cells are visited in order.
class BlockAccumulator {
 public:
  explicit BlockAccumulator(int32_t n_concepts) : slot_of_(n_concepts, -1) {}
  // Sets cell (global index) for concept c; flushes the previous block when the block changes.
  template <class Emit>
  inline void set(int64_t cell, int32_t c, Emit&& emit) {
    const int64_t b = cell / kBlockCells;
    if (b != block_) {
      flush(emit);
      block_ = b;
    }
    int32_t s = slot_of_[c];
    if (s < 0) {
      s = static_cast<int32_t>(concepts_.size());
      slot_of_[c] = s;
      concepts_.push_back(c);
      words_.resize(words_.size() + kBlockWords, 0);
    }
    const int64_t in_block = cell - b * kBlockCells;
    words_[s * kBlockWords + in_block / 64] |= uint64_t{1} << (in_block % 64);
  }
  template <class Emit>
  void flush(Emit&& emit) {
    for (size_t s = 0; s < concepts_.size(); ++s) {
      emit(block_, concepts_[s], words_.data() + s * kBlockWords);
      slot_of_[concepts_[s]] = -1;
    }
    concepts_.clear();
    words_.clear();
  }

 private:
  std::vector<int32_t> slot_of_;
  std::vector<int32_t> concepts_;
  std::vector<uint64_t> words_;
  int64_t block_ = -1;
};

}  // namespace

ConceptIndexBuilder::ConceptIndexBuilder(int64_t n_samples, int64_t height, int64_t width,
                                         int32_t n_concepts)
    : n_samples_(n_samples), height_(height), width_(width), n_concepts_(n_concepts) {
  COMPEXP_CHECK(n_samples > 0 && height > 0 && width > 0, "the grid must be non-empty");
  COMPEXP_CHECK(n_concepts > 0, "there must be at least one concept");
  n_cells_ = n_samples * height * width;
  n_blocks_ = blocks_for_cells(n_cells_);
}

void ConceptIndexBuilder::check_samples(int64_t n, int64_t sample_offset) const {
  COMPEXP_CHECK(n >= 0 && sample_offset >= 0 && sample_offset + n <= n_samples_,
                "sample range outside the dataset");
}

void ConceptIndexBuilder::check_open() const {
  if (finished_)
    throw std::runtime_error("this concept index builder has already finished: it takes no more "
                             "data and cannot finish again");
}

void ConceptIndexBuilder::append(std::vector<std::vector<Staged>>& parts) {
  std::lock_guard<std::mutex> lock(mutex_);
  check_open();
  for (auto& p : parts) staged_.insert(staged_.end(), p.begin(), p.end());
}

void ConceptIndexBuilder::stage(std::vector<Staged>& out, int64_t block, int32_t concept,
                                const uint64_t* words) {
  Staged s;
  s.key = static_cast<uint64_t>(block) * static_cast<uint64_t>(n_concepts_) + concept;
  std::memcpy(s.words, words, sizeof(s.words));
  s.full = false;
  out.push_back(s);
}


void ConceptIndexBuilder::add_label_maps(const int32_t* labels, int64_t n, int64_t n_layers,
                                         int64_t sample_offset, const int32_t* concept_of_label,
                                         int64_t n_labels) {
  check_samples(n, sample_offset);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    check_open();  // fail early; append() checks again
  }
  const int64_t hw = height_ * width_;
  const int64_t total = n * n_layers * hw;
  for (int64_t i = 0; i < total; ++i) {
    if (labels[i] < 0 || labels[i] >= n_labels)
      throw std::invalid_argument("label value " + std::to_string(labels[i]) +
                                  " is outside the label->concept mapping (0.." +
                                  std::to_string(n_labels - 1) + ")");
  }
  for (int64_t v = 0; v < n_labels; ++v)
    COMPEXP_CHECK(concept_of_label[v] >= -1 && concept_of_label[v] < n_concepts_,
                  "label->concept mapping names a concept out of range");
  const int64_t grain = 16;
  const int64_t n_chunks = (n + grain - 1) / grain;
  std::vector<std::vector<Staged>> chunks(n_chunks);
  parallel_for(n_chunks, 0, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      BlockAccumulator acc(n_concepts_);
      auto emit = [&](int64_t b, int32_t concept, const uint64_t* w) { stage(chunks[c], b, concept, w); };
      for (int64_t s = c * grain; s < std::min(n, (c + 1) * grain); ++s) {
        const int64_t base = (sample_offset + s) * hw;
        for (int64_t l = 0; l < n_layers; ++l) {
          const int32_t* lab = labels + (s * n_layers + l) * hw;
          for (int64_t i = 0; i < hw; ++i) {
            const int32_t v = lab[i];
            if (v == 0) continue;
            const int32_t concept = concept_of_label[v];
            if (concept >= 0) acc.set(base + i, concept, emit);
          }
          acc.flush(emit);  // layers revisit the sample's blocks: flush between them
        }
      }
    }
  });
  append(chunks);
}

void ConceptIndexBuilder::add_dense(const uint8_t* masks, int64_t n, int64_t k,
                                    int64_t sample_offset, const int32_t* concepts) {
  check_samples(n, sample_offset);
  for (int64_t q = 0; q < k; ++q)
    COMPEXP_CHECK(concepts[q] >= 0 && concepts[q] < n_concepts_, "concept index out of range");
  {
    std::lock_guard<std::mutex> lock(mutex_);
    check_open();
  }
  const int64_t hw = height_ * width_;
  std::vector<std::vector<Staged>> per_plane(n * k);
  parallel_for(n * k, 0, 16, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t s = p / k, q = p % k;
      const uint8_t* m = masks + p * hw;
      const int64_t base = (sample_offset + s) * hw;
      uint64_t w[kBlockWords];
      int64_t i = 0;
      while (i < hw) {
        const int64_t cell = base + i;
        const int64_t b = cell / kBlockCells;
        const int64_t end = std::min(hw, (b + 1) * kBlockCells - base);
        std::fill(w, w + kBlockWords, 0);
        uint64_t any = 0;
        for (; i < end; ++i) {
          if (m[i]) {
            const int64_t in_block = base + i - b * kBlockCells;
            w[in_block / 64] |= uint64_t{1} << (in_block % 64);
            any = 1;
          }
        }
        if (any) stage(per_plane[p], b, concepts[q], w);
      }
    }
  });
  append(per_plane);
}

void ConceptIndexBuilder::add_sample_labels(const uint8_t* present, int64_t n, int64_t k,
                                            int64_t sample_offset, const int32_t* concepts) {
  check_samples(n, sample_offset);
  for (int64_t q = 0; q < k; ++q)
    COMPEXP_CHECK(concepts[q] >= 0 && concepts[q] < n_concepts_, "concept index out of range");
  {
    std::lock_guard<std::mutex> lock(mutex_);
    check_open();
  }
  const int64_t hw = height_ * width_;
  std::vector<std::vector<Staged>> local(1);
  std::vector<Staged>& out = local[0];
  for (int64_t q = 0; q < k; ++q) {
    // Runs of consecutive samples carrying the label become one cell range.
    int64_t s = 0;
    while (s < n) {
      if (!present[s * k + q]) { ++s; continue; }
      int64_t e = s;
      while (e < n && present[e * k + q]) ++e;
      const int64_t c0 = (sample_offset + s) * hw, c1 = (sample_offset + e) * hw;
      for (int64_t b = c0 / kBlockCells; b * kBlockCells < c1; ++b) {
        const int64_t lo = std::max(c0, b * kBlockCells) - b * kBlockCells;
        const int64_t hi = std::min(c1, (b + 1) * kBlockCells) - b * kBlockCells;
        Staged st;
        st.key = static_cast<uint64_t>(b) * static_cast<uint64_t>(n_concepts_) + concepts[q];
        st.full = lo == 0 && hi == kBlockCells;
        std::fill(st.words, st.words + kBlockWords, 0);
        if (st.full) {
          std::fill(st.words, st.words + kBlockWords, kAllOnes);
        } else {
          for (int64_t c = lo; c < hi; ++c) st.words[c / 64] |= uint64_t{1} << (c % 64);
        }
        out.push_back(st);
      }
      s = e;
    }
  }
  append(local);
}

void ConceptIndexBuilder::finish(std::vector<int64_t>& block_ptr,
                                 std::vector<int32_t>& entry_concept,
                                 std::vector<uint64_t>& entry_words,
                                 std::vector<int64_t>& full_ptr,
                                 std::vector<int32_t>& full_concept) {
  // Take the staged data under the lock; the sort and merge below run without it.
  std::vector<Staged> staged;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    check_open();
    finished_ = true;
    staged.swap(staged_);
  }
  // Sort (key, position) pairs rather than the 80-byte records.
  std::vector<std::pair<uint64_t, int64_t>> order(staged.size());
  for (size_t i = 0; i < staged.size(); ++i) order[i] = {staged[i].key, static_cast<int64_t>(i)};
  std::sort(order.begin(), order.end());
  block_ptr.assign(n_blocks_ + 1, 0);
  full_ptr.assign(n_blocks_ + 1, 0);
  entry_concept.clear();
  entry_words.clear();
  full_concept.clear();
  const uint64_t K = static_cast<uint64_t>(n_concepts_);
  size_t i = 0;
  while (i < order.size()) {
    const uint64_t key = order[i].first;
    uint64_t w[kBlockWords];
    std::memcpy(w, staged[order[i].second].words, sizeof(w));
    bool full = staged[order[i].second].full;
    size_t j = i + 1;
    for (; j < order.size() && order[j].first == key; ++j) {
      const Staged& s = staged[order[j].second];
      full = full || s.full;
      for (int q = 0; q < kBlockWords; ++q) w[q] |= s.words[q];
    }
    i = j;
    uint64_t all = kAllOnes, any = 0;
    for (int q = 0; q < kBlockWords; ++q) { all &= w[q]; any |= w[q]; }
    if (!any) continue;
    const int64_t b = static_cast<int64_t>(key / K);
    const int32_t c = static_cast<int32_t>(key % K);
    if (full || all == kAllOnes) {
      full_concept.push_back(c);
      full_ptr[b + 1]++;
    } else {
      entry_concept.push_back(c);
      entry_words.insert(entry_words.end(), w, w + kBlockWords);
      block_ptr[b + 1]++;
    }
  }
  for (int64_t b = 0; b < n_blocks_; ++b) {
    block_ptr[b + 1] += block_ptr[b];
    full_ptr[b + 1] += full_ptr[b];
  }
}

}  // namespace cpu
}  // namespace compexp
