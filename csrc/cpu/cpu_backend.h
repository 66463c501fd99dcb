// compexp-core CPU backend: the operations on a concept index, on the CPU (always built).
// Its twin csrc/cuda/cuda_backend.h declares the same counting and materialisation operations
// on a GPU, with bit-identical results; the layout and types are in ../layout.h.
//
// Every operation takes a ConceptIndexView from a ConceptIndex (../index.h, checked) and mask
// sets checked by check_mask_set (../checks.h); `n_threads` = 0 means default_threads()
// (COMPEXP_NUM_THREADS, else all cores; see parallel.h for the parsing, the cap and what
// happens when threads cannot start). Bad arguments throw std::invalid_argument.
#pragma once

#include <cstdint>
#include <mutex>
#include <vector>

#include "../layout.h"

namespace compexp {

// Which popcount implementation the CPU kernels use. kAuto picks the fastest the CPU supports.
// kScalar: portable __builtin_popcountll (the oracle); kPopcnt: the x86 POPCNT instruction;
// kAvx512: AVX-512 VPOPCNTDQ, one 512-bit block per instruction.
enum class Simd : int { kAuto = 0, kScalar = 1, kPopcnt = 2, kAvx512 = 3 };

namespace cpu {

// The implementation kAuto resolves to on this CPU (probed once, cached).
Simd best_simd();
// Name of an implementation ("auto", "scalar", "popcnt", "avx512").
const char* simd_name(Simd s);
// Whether this CPU can run s (kAuto and kScalar: always).
bool simd_supported(Simd s);

// (a) Primitive counts: out[u * K + j] = |U_u AND C_j| for every mask u of `units` and every
// concept j. `out` has units.n_masks * K entries and is overwritten (an empty unit's row is
// zero). Exact 64-bit counts. Throws if `simd` cannot run on this CPU.
void primitive_counts(const ConceptIndexView& index, const MaskSetView& units, int64_t* out,
                      Simd simd = Simd::kAuto, int n_threads = 0);

// (b) Fused extension counts for pairs (formula F_i, unit U_{unit_of[i]}):
//   f[i * K + j] = |F_i AND C_j|,  g[i * K + j] = |U AND F_i AND C_j|,
// touching only the concept blocks that lie in blocks where F_i is set. Overwrites f and g
// (n_formulas * K each; no formulas: nothing written). Consecutive formulas of the same unit
// (a unit's beam) are walked together, so a concept block they share is read from memory
// once: pass each unit's formulas contiguously. Returns the work walked (ExtensionWork,
// counted per formula block, not per entry). Throws if a unit_of index is out of range.
ExtensionWork extension_counts(const ConceptIndexView& index, const MaskSetView& formulas,
                               const int64_t* unit_of, const MaskSetView& units, int64_t* f,
                               int64_t* g, Simd simd = Simd::kAuto, int n_threads = 0);

// (c) Materialisation: out mask i = op[i](F_{src[i]}, C_{concept[i]}). For op == kLeaf the
// result is C_{concept[i]} alone and src[i] is ignored; for op == kCopy it is F_{src[i]} as
// stored and concept[i] is ignored. Only non-empty blocks are kept (kCopy keeps its source's
// blocks), so an empty result has no blocks. Padding cells (>= P) stay zero, also for kOrNot.
// The arguments are checked by check_materialize_args before any work.
MaskSet materialize(const ConceptIndexView& index, const MaskSetView& formulas, int64_t n_out,
                    const int64_t* src, const int32_t* op, const int32_t* concept, int n_threads = 0);

// Number of set cells of each mask: out[m] = |M_m| (0 for a mask without blocks).
void mask_popcounts(const MaskSetView& masks, int64_t* out, int n_threads = 0);

// Per-concept sizes |C_j| (out has K entries; 0 for an empty concept).
void concept_sizes(const ConceptIndexView& index, int64_t* out);

// Unit masks from float activation maps. acts is [n_samples, n_units, h, w] float32 (C order)
// for samples sample_offset .. sample_offset + n_samples - 1 of a dataset on an H x W grid.
// Each map is resized to H x W with Pillow's bilinear filter (half-pixel centres, no
// antialiasing on upsampling, float32 intermediates; identical arithmetic) and thresholded
// with value > threshold[u]. Maps whose maximum is <= threshold are skipped: a bilinear
// resize never exceeds its input's maximum. Returns one mask per unit (cells of the given
// samples only; block ids are global). Throws unless h, w, H, W > 0.
MaskSet unit_masks_from_maps(const float* acts, int64_t n_samples, int64_t n_units, int64_t h,
                             int64_t w, int64_t sample_offset, int64_t H, int64_t W,
                             const double* threshold, int n_threads = 0);
// The same for float64 maps: the same operations in the same order, with double intermediates
// instead of float32 ones (Pillow has no float64 mode), compared with threshold[u] in double.
MaskSet unit_masks_from_maps(const double* acts, int64_t n_samples, int64_t n_units, int64_t h,
                             int64_t w, int64_t sample_offset, int64_t H, int64_t W,
                             const double* threshold, int n_threads = 0);

// Unit masks from boolean maps already on the grid: masks is [n_samples, n_units, H, W] uint8
// (nonzero = set). Same output convention as unit_masks_from_maps.
MaskSet unit_masks_from_bool(const uint8_t* masks, int64_t n_samples, int64_t n_units, int64_t H,
                             int64_t W, int64_t sample_offset, int n_threads = 0);

// Concatenate mask sets covering consecutive, disjoint sample ranges of the same masks:
// result mask m = union over parts of part[m]. Blocks shared by two parts (a block that
// straddles a sample boundary) are OR-ed. No parts: an empty set. Throws if the parts hold
// different mask counts or are not in sample order.
MaskSet merge_mask_parts(const std::vector<const MaskSet*>& parts);

// Incremental builder of the block-sparse concept index. Feed samples in any order through
// the add_* methods (several calls may cover the same cells: contributions are OR-ed), then
// call finish() once. The arrays it returns pass ConceptIndex's checks.
//
// Thread-safe: add_* and finish() may be called from several threads at once. Each add_*
// packs its bits into a buffer of its own (in parallel, without the lock) and appends it to
// the staged data under a mutex; finish() takes the staged data under the same mutex. The
// result does not depend on the order of the calls (contributions are OR-ed). An add_* or
// finish() after finish() throws std::runtime_error (Python RuntimeError).
class ConceptIndexBuilder {
 public:
  // Throws unless the grid is non-empty and n_concepts > 0.
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

  // Sort, merge and compress into the block-major arrays. Blocks whose 512 cells are all set
  // become full blocks; blocks left empty are dropped. Frees the staged data.
  void finish(std::vector<int64_t>& block_ptr, std::vector<int32_t>& entry_concept,
              std::vector<uint64_t>& entry_words, std::vector<int64_t>& full_ptr,
              std::vector<int32_t>& full_concept);

  // P = n_samples * height * width.
  int64_t n_cells() const { return n_cells_; }

 private:
  struct Staged {
    uint64_t key;                     // block * K + concept
    uint64_t words[kBlockWords];
    bool full;
  };
  void check_samples(int64_t n, int64_t sample_offset) const;
  void stage(std::vector<Staged>& out, int64_t block, int32_t concept, const uint64_t* words);
  void check_open() const;                      // throws once finished (call under mutex_)
  void append(std::vector<std::vector<Staged>>& parts);  // takes mutex_
  mutable std::mutex mutex_;                    // guards staged_ and finished_
  std::vector<Staged> staged_;
  bool finished_ = false;
  int64_t n_samples_, height_, width_, n_cells_, n_blocks_;
  int32_t n_concepts_;
};

}  // namespace cpu
}  // namespace compexp
