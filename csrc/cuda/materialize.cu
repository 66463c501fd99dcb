// Materialisation of op(F, C_j) on the GPU, with exactly cpu::materialize's output: for each
// output mask its non-empty blocks in increasing block order (COPY keeps every block of its
// source as is, like the CPU's plain copy).
//
// Each output gets candidate "slots", one per block that can appear in it:
//   LEAF:         section C, one slot per item of C_j;
//   COPY:         section F, one slot per block of F;
//   AND, AND NOT: section F (a block of the result is a block of F);
//   OR:           section F, then section C holding the items of C_j whose block F lacks
//                 (slots of C_j's other items are never kept);
//   OR NOT:       section A, one slot per block of the dataset (F | ~C touches them all).
// Pass 1 evaluates every slot (one thread each) and flags the kept ones; an exclusive scan of
// the flags gives each kept slot its rank among the kept slots before it. Pass 2 evaluates the
// slots again and writes each kept one at
//   out_ptr[i] + (its rank within its section) + (kept slots of the other section with a
//   smaller block: only OR has two sections, each sorted by block, so this is the scan
//   difference up to the insertion point of its block in the other section),
// which is its position in block order. Recomputing beats storing every candidate's words.
#include <algorithm>
#include <stdexcept>
#include <vector>

#include "../checks.h"
#include "cuda_backend.h"
#include "kernels.cuh"

#include <cub/device/device_scan.cuh>

namespace compexp {
namespace cuda {

namespace {

constexpr int kThreads = 256;

struct OutPlan {
  int64_t slot0;      // first slot of this output
  int64_t nF, nC, nA; // section sizes (F, then C, then A)
  int64_t p0, p1;     // blocks of F_src in the formula set (empty for LEAF)
  int64_t q0, q1;     // items of C_j in the concept-major view (empty for COPY)
  int32_t op;
};

// Words of concept item q (a partial entry, or all ones for a full block).
__device__ __forceinline__ void item_words(const IndexPtrs& ix, int64_t q, uint64_t* out) {
  compexp::item_words(ix.concept_entry, ix.entry_words, q, out);
}

// Evaluates slot `local` of output o. Returns whether it is kept; sets its block b, its words
// w, the first slot of its section, and (OR only, else other_start = -1) the first slot of the
// other section with other_k, the number of that section's slots whose block is < b.
__device__ bool eval_slot(const IndexPtrs& ix, const MaskPtrs& F, const OutPlan& o, int64_t local,
                          int64_t& b, uint64_t* w, int64_t& section_start, int64_t& other_start,
                          int64_t& other_k) {
  other_start = -1;
  other_k = 0;
  uint64_t c[kBlockWords];
  if (local < o.nF) {
    section_start = o.slot0;
    const int64_t p = o.p0 + local;
    b = F.block[p];
    const uint64_t* fw = F.words + p * kBlockWords;
    if (o.op == kCopy) {
#pragma unroll
      for (int i = 0; i < kBlockWords; ++i) w[i] = fw[i];
      return true;  // the CPU copies F's blocks as they are, empty or not
    }
    const int64_t q = lower_bound(ix.concept_block, o.q0, o.q1, b);
    const bool hc = q < o.q1 && ix.concept_block[q] == b;
    if (hc) item_words(ix, q, c);
    else {
#pragma unroll
      for (int i = 0; i < kBlockWords; ++i) c[i] = 0;
    }
    if (o.op == kAnd) {
      if (!hc) return false;
#pragma unroll
      for (int i = 0; i < kBlockWords; ++i) w[i] = fw[i] & c[i];
    } else if (o.op == kAndNot) {
#pragma unroll
      for (int i = 0; i < kBlockWords; ++i) w[i] = fw[i] & ~c[i];
    } else {  // kOr
#pragma unroll
      for (int i = 0; i < kBlockWords; ++i) w[i] = fw[i] | c[i];
      other_start = o.slot0 + o.nF;
      other_k = q - o.q0;
    }
    return any_bits(w);
  }
  if (local < o.nF + o.nC) {
    section_start = o.slot0 + o.nF;
    const int64_t q = o.q0 + (local - o.nF);
    b = ix.concept_block[q];
    if (o.op == kOr) {
      const int64_t p = lower_bound(F.block, o.p0, o.p1, b);
      other_start = o.slot0;
      other_k = p - o.p0;
      if (p < o.p1 && F.block[p] == b) return false;  // counted in section F
    }
    item_words(ix, q, w);
    return any_bits(w);
  }
  // kOrNot: block b = local - nF - nC (nF = nC = 0) of the dataset.
  section_start = o.slot0 + o.nF + o.nC;
  b = local - o.nF - o.nC;
  const int64_t p = lower_bound(F.block, o.p0, o.p1, b);
  const bool hf = p < o.p1 && F.block[p] == b;
  const int64_t q = lower_bound(ix.concept_block, o.q0, o.q1, b);
  if (q < o.q1 && ix.concept_block[q] == b) item_words(ix, q, c);
  else {
#pragma unroll
    for (int i = 0; i < kBlockWords; ++i) c[i] = 0;
  }
#pragma unroll
  for (int i = 0; i < kBlockWords; ++i)
    w[i] = ((hf ? F.words[p * kBlockWords + i] : 0) | ~c[i]) & valid_bits(ix.n_cells, b, i);
  return any_bits(w);
}

// Pass 1: keep[s] = 1 if slot s is kept, else 0.
__global__ void __launch_bounds__(kThreads)
flag_kernel(IndexPtrs ix, MaskPtrs F, const OutPlan* __restrict__ plans, const int64_t* __restrict__ slot_ptr,
            int64_t n_out, int64_t n_slots, int64_t* keep) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t s = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; s < n_slots; s += stride) {
    const int64_t i = upper_index(slot_ptr, n_out + 1, s);
    const OutPlan o = plans[i];
    int64_t b, start, other, k;
    uint64_t w[kBlockWords];
    keep[s] = eval_slot(ix, F, o, s - o.slot0, b, w, start, other, k) ? 1 : 0;
  }
}

// Pass 2: writes the kept slots at their positions. pos is the exclusive scan of keep
// ([n_slots + 1]).
__global__ void __launch_bounds__(kThreads)
write_kernel(IndexPtrs ix, MaskPtrs F, const OutPlan* __restrict__ plans, const int64_t* __restrict__ slot_ptr,
             int64_t n_out, int64_t n_slots, const int64_t* __restrict__ pos, int64_t* out_block,
             uint64_t* out_words) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t s = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; s < n_slots; s += stride) {
    if (pos[s + 1] == pos[s]) continue;  // not kept
    const int64_t i = upper_index(slot_ptr, n_out + 1, s);
    const OutPlan o = plans[i];
    int64_t b, start, other, k;
    uint64_t w[kBlockWords];
    eval_slot(ix, F, o, s - o.slot0, b, w, start, other, k);  // kept, as in pass 1
    int64_t dst = pos[o.slot0] + (pos[s] - pos[start]);
    if (other >= 0) dst += pos[other + k] - pos[other];
    out_block[dst] = b;
#pragma unroll
    for (int j = 0; j < kBlockWords; ++j) out_words[dst * kBlockWords + j] = w[j];
  }
}

// out_ptr[i] = pos[slot_ptr[i]], i = 0 .. n_out.
__global__ void out_ptr_kernel(const int64_t* slot_ptr, const int64_t* pos, int64_t n, int64_t* out_ptr) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out_ptr[i] = pos[slot_ptr[i]];
}

unsigned grid_for(int64_t n) {
  // Grid-stride loops: a bounded grid is enough.
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(blocks, int64_t{1} << 20)));
}

}  // namespace

DeviceMaskSet DeviceIndex::materialize(const DeviceMaskSet& F, int64_t n_out, const int64_t* src,
                                       const int32_t* op, const int32_t* concept) {
  check_materialize_args(n_out, src, op, concept, n_concepts_, F.n_masks);  // as the CPU
  activate();
  std::vector<OutPlan> plans(static_cast<size_t>(n_out));
  std::vector<int64_t> slot_ptr(static_cast<size_t>(n_out) + 1, 0);
  int64_t n_slots = 0;
  for (int64_t i = 0; i < n_out; ++i) {
    OutPlan& o = plans[i];
    o = OutPlan{n_slots, 0, 0, 0, 0, 0, 0, 0, op[i]};
    if (op[i] != kLeaf) {
      o.p0 = F.host_ptr[src[i]];
      o.p1 = F.host_ptr[src[i] + 1];
    }
    if (op[i] != kCopy) {
      o.q0 = host_concept_ptr_[concept[i]];
      o.q1 = host_concept_ptr_[concept[i] + 1];
    }
    switch (op[i]) {
      case kLeaf: o.nC = o.q1 - o.q0; break;
      case kCopy:
      case kAnd:
      case kAndNot: o.nF = o.p1 - o.p0; break;
      case kOr: o.nF = o.p1 - o.p0; o.nC = o.q1 - o.q0; break;
      default: o.nA = n_blocks_; break;  // kOrNot
    }
    n_slots += o.nF + o.nC + o.nA;
    slot_ptr[i + 1] = n_slots;
  }

  DeviceMaskSet out;
  out.n_masks = n_out;
  out.host_ptr.assign(static_cast<size_t>(n_out) + 1, 0);
  out.ptr = DeviceArray<int64_t>(static_cast<size_t>(n_out) + 1);
  cudaStream_t s = stream_.get();
  if (n_slots == 0) {
    COMPEXP_CUDA_CHECK(cudaMemsetAsync(out.ptr.data(), 0, out.ptr.bytes(), s));
    stream_.synchronize();
    return out;
  }
  DeviceArray<OutPlan> d_plans(plans.size());
  DeviceArray<int64_t> d_slot_ptr(slot_ptr.size()), keep(n_slots + 1), pos(n_slots + 1);
  COMPEXP_CUDA_CHECK(cudaMemcpyAsync(d_plans.data(), plans.data(), d_plans.bytes(), cudaMemcpyHostToDevice, s));
  COMPEXP_CUDA_CHECK(cudaMemcpyAsync(d_slot_ptr.data(), slot_ptr.data(), d_slot_ptr.bytes(), cudaMemcpyHostToDevice, s));
  COMPEXP_CUDA_CHECK(cudaMemsetAsync(keep.data() + n_slots, 0, sizeof(int64_t), s));
  const IndexPtrs ix = device_ptrs();
  const MaskPtrs fp{F.n_masks, F.ptr.data(), F.block.data(), F.words.data()};
  flag_kernel<<<grid_for(n_slots), kThreads, 0, s>>>(ix, fp, d_plans.data(), d_slot_ptr.data(), n_out,
                                                     n_slots, keep.data());
  COMPEXP_CUDA_LAUNCHED();
  size_t temp_bytes = 0;
  COMPEXP_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, temp_bytes, keep.data(), pos.data(), n_slots + 1, s));
  DeviceBuffer temp(temp_bytes);
  COMPEXP_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(temp.data(), temp_bytes, keep.data(), pos.data(), n_slots + 1, s));
  out_ptr_kernel<<<static_cast<unsigned>((n_out + 1 + kThreads - 1) / kThreads), kThreads, 0, s>>>(
      d_slot_ptr.data(), pos.data(), n_out + 1, out.ptr.data());
  COMPEXP_CUDA_LAUNCHED();
  COMPEXP_CUDA_CHECK(cudaMemcpyAsync(out.host_ptr.data(), out.ptr.data(), out.ptr.bytes(), cudaMemcpyDeviceToHost, s));
  stream_.synchronize();
  const int64_t nnz = out.host_ptr.back();
  out.block = DeviceArray<int64_t>(nnz);
  out.words = DeviceArray<uint64_t>(static_cast<size_t>(nnz) * kBlockWords);
  if (nnz) {
    write_kernel<<<grid_for(n_slots), kThreads, 0, s>>>(ix, fp, d_plans.data(), d_slot_ptr.data(), n_out, n_slots,
                                                        pos.data(), out.block.data(), out.words.data());
    COMPEXP_CUDA_LAUNCHED();
  }
  stream_.synchronize();
  return out;
}

}  // namespace cuda
}  // namespace compexp
