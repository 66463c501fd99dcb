// compexp-core: the interface every backend (csrc/cpu, csrc/cuda) implements.
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
// No Python in here: the bindings in python/ check arguments and convert arrays.
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
#define COMPEXP_CHECK(cond, msg)                                                     \
  do {                                                                               \
    if (!(cond))                                                                     \
      throw std::invalid_argument(std::string(msg) + " (failed: " #cond ")");        \
  } while (0)

inline int64_t blocks_for_cells(int64_t n_cells) { return (n_cells + kBlockCells - 1) / kBlockCells; }

// All concept masks, block-major. Non-owning.
struct ConceptIndexView {
  int64_t n_cells = 0;      // P
  int64_t n_blocks = 0;     // blocks_for_cells(P)
  int32_t n_concepts = 0;   // K
  // Partial blocks: entries block_ptr[b] .. block_ptr[b+1]-1 belong to block b, sorted by concept.
  const int64_t* block_ptr = nullptr;       // [n_blocks + 1]
  const int32_t* entry_concept = nullptr;   // [n_entries]
  const uint64_t* entry_words = nullptr;    // [n_entries * kBlockWords]
  // Full blocks: full_ptr[b] .. full_ptr[b+1]-1 list the concepts covering block b entirely.
  const int64_t* full_ptr = nullptr;        // [n_blocks + 1]
  const int32_t* full_concept = nullptr;    // [n_full]
  // Concept-major view: concept j owns items concept_ptr[j] .. concept_ptr[j+1]-1, sorted by
  // block; concept_entry is the index of the partial entry, or -1 for a full block.
  const int64_t* concept_ptr = nullptr;     // [n_concepts + 1]
  const int64_t* concept_block = nullptr;   // [n_items]
  const int64_t* concept_entry = nullptr;   // [n_items]
};

// A set of block-sparse masks over the same cells. Non-owning.
// Mask m owns blocks ptr[m] .. ptr[m+1]-1 (block ids strictly increasing).
struct MaskSetView {
  int64_t n_masks = 0;
  const int64_t* ptr = nullptr;         // [n_masks + 1]
  const int64_t* block = nullptr;       // [nnz]
  const uint64_t* words = nullptr;      // [nnz * kBlockWords]
};

// An owned block-sparse mask set (what builders and materialisation return).
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

// Which popcount implementation the CPU kernels use. kAuto picks the fastest the CPU supports.
// kScalar: portable __builtin_popcountll (the oracle); kPopcnt: the x86 POPCNT instruction;
// kAvx512: AVX-512 VPOPCNTDQ, one 512-bit block per instruction.
enum class Simd : int { kAuto = 0, kScalar = 1, kPopcnt = 2, kAvx512 = 3 };

namespace cpu {

// The implementation kAuto resolves to on this CPU (probed once, cached).
Simd best_simd();
// Name of an implementation ("scalar", "popcnt", "avx512").
const char* simd_name(Simd s);
// Whether this CPU can run s.
bool simd_supported(Simd s);

// (a) Primitive counts: out[u * K + j] = |U_u AND C_j| for every mask u of `units` and every
// concept j. `out` has units.n_masks * K entries and is overwritten. Exact 64-bit counts.
void primitive_counts(const ConceptIndexView& index, const MaskSetView& units, int64_t* out,
                      Simd simd = Simd::kAuto, int n_threads = 0);

// (b) Fused extension counts for pairs (formula F_i, unit U_{unit_of[i]}):
//   f[i * K + j] = |F_i AND C_j|,  g[i * K + j] = |U AND F_i AND C_j|,
// touching only the concept blocks that lie in blocks where F_i is set. Overwrites f and g.
// Consecutive formulas of the same unit (a unit's beam) are walked together, so a concept
// block they share is read from memory once: pass each unit's formulas contiguously.
void extension_counts(const ConceptIndexView& index, const MaskSetView& formulas,
                      const int64_t* unit_of, const MaskSetView& units, int64_t* f, int64_t* g,
                      Simd simd = Simd::kAuto, int n_threads = 0);

// (c) Materialisation: out mask i = op[i](F_{src[i]}, C_{concept[i]}). For op == kLeaf the
// result is C_{concept[i]} alone and src[i] is ignored; for op == kCopy it is F_{src[i]} and
// concept[i] is ignored. Only non-empty blocks are kept, so an
// empty result has no blocks. Padding cells (>= P) stay zero, also for kOrNot.
MaskSet materialize(const ConceptIndexView& index, const MaskSetView& formulas, int64_t n_out,
                    const int64_t* src, const int32_t* op, const int32_t* concept, int n_threads = 0);

// Number of set cells of each mask: out[m] = |M_m|.
void mask_popcounts(const MaskSetView& masks, int64_t* out, int n_threads = 0);

// Concept-major view of a block-major index: fills concept_ptr [K+1], and concept_block /
// concept_entry [n_entries + n_full] (see ConceptIndexView). index's concept-major pointers
// are not read.
void build_concept_major(const ConceptIndexView& index, int64_t* concept_ptr,
                         int64_t* concept_block, int64_t* concept_entry);

// Per-concept sizes |C_j| (out has K entries).
void concept_sizes(const ConceptIndexView& index, int64_t* out);

// Unit masks from float activation maps. acts is [n_samples, n_units, h, w] float32 (C order)
// for samples sample_offset .. sample_offset + n_samples - 1 of a dataset on an H x W grid.
// Each map is resized to H x W with Pillow's bilinear filter (half-pixel centres, no
// antialiasing on upsampling, float32 intermediates; identical arithmetic) and thresholded
// with value > threshold[u]. Maps whose maximum is <= threshold are skipped: a bilinear
// resize never exceeds its input's maximum. Returns one mask per unit (cells of the given
// samples only; block ids are global).
MaskSet unit_masks_from_maps(const float* acts, int64_t n_samples, int64_t n_units, int64_t h,
                             int64_t w, int64_t sample_offset, int64_t H, int64_t W,
                             const double* threshold, int n_threads = 0);

// Unit masks from boolean maps already on the grid: masks is [n_samples, n_units, H, W] uint8
// (nonzero = set). Same output convention as unit_masks_from_maps.
MaskSet unit_masks_from_bool(const uint8_t* masks, int64_t n_samples, int64_t n_units, int64_t H,
                             int64_t W, int64_t sample_offset, int n_threads = 0);

// Concatenate mask sets covering consecutive, disjoint sample ranges of the same masks:
// result mask m = union over parts of part[m]. Blocks shared by two parts (a block that
// straddles a sample boundary) are OR-ed.
MaskSet merge_mask_parts(const std::vector<const MaskSet*>& parts);

// Incremental builder of the block-sparse concept index. Feed samples in any order through
// the add_* methods (several calls may cover the same cells: contributions are OR-ed), then
// call finish() once.
class ConceptIndexBuilder {
 public:
  ConceptIndexBuilder(int64_t n_samples, int64_t height, int64_t width, int32_t n_concepts);

  // Integer label maps: labels is [n, n_layers, H, W] int32 for samples sample_offset ..
  // sample_offset+n-1. A label v > 0 sets concept concept_of_label[v] at its cell unless that
  // is -1; label 0 means "no label". A label < 0 or >= n_labels is an error naming the value.
  void add_label_maps(const int32_t* labels, int64_t n, int64_t n_layers, int64_t sample_offset,
                      const int32_t* concept_of_label, int64_t n_labels);

  // Dense masks: masks is [n, k, H, W] uint8 (nonzero = set); plane q is concept concepts[q].
  void add_dense(const uint8_t* masks, int64_t n, int64_t k, int64_t sample_offset,
                 const int32_t* concepts);

  // Sample-level labels: present is [n, k] uint8; plane q is concept concepts[q]; a set label
  // covers every cell of its sample.
  void add_sample_labels(const uint8_t* present, int64_t n, int64_t k, int64_t sample_offset,
                         const int32_t* concepts);

  // Sort, merge and compress. Blocks whose 512 cells are all set become full blocks.
  void finish(std::vector<int64_t>& block_ptr, std::vector<int32_t>& entry_concept,
              std::vector<uint64_t>& entry_words, std::vector<int64_t>& full_ptr,
              std::vector<int32_t>& full_concept);

  int64_t n_cells() const { return n_cells_; }

 private:
  struct Staged {
    uint64_t key;                     // block * K + concept
    uint64_t words[kBlockWords];
    bool full;
  };
  void check_samples(int64_t n, int64_t sample_offset) const;
  void stage(std::vector<Staged>& out, int64_t block, int32_t concept, const uint64_t* words);
  std::vector<Staged> staged_;
  int64_t n_samples_, height_, width_, n_cells_, n_blocks_;
  int32_t n_concepts_;
};

}  // namespace cpu
}  // namespace compexp
