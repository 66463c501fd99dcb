// Unit thresholds and unit masks on the GPU, from activation maps already in device memory:
// bit-identical to compexp_core.engine.units (np.quantile) and cpu::unit_masks_from_maps.
//
// Built with -fmad=false (csrc/cuda/CMakeLists.txt): every multiply and add below rounds as
// the CPU code's separate operations do (the CPU side is compiled with -ffp-contract=off).
//
// * Thresholds: one thread block per unit. The two order statistics NumPy's linear quantile
//   needs are found by an 8-pass radix select over order-preserving 64-bit keys of the values
//   as doubles (float32 values widen exactly), then combined exactly as numpy's _lerp does
//   (a + (b - a) * t, or b - (b - a) * (1 - t) when t >= 0.5), plus 0.0: which of -0.0 and
//   +0.0 NumPy's introselect leaves at an index is not reproducible, so a zero threshold is
//   +0.0 on both paths (compute_thresholds adds 0.0 too). Non-finite values are refused.
// * Masks: the Pillow passes (csrc/cpu/unit_masks_cpu.cpp) with the coefficients computed by
//   the same host code (csrc/pillow_coeffs.h) and uploaded. A first kernel stores the first
//   pass (as float32 for float32 maps, double for float64 ones) when two are needed; a second
//   computes the last pass for 64 cells per thread, compares with the unit's threshold in
//   double and writes one dense mask word; then non-empty blocks are flagged, ranked with a
//   CUB scan and written in block order (the CPU's layout: empty blocks dropped).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "../checks.h"
#include "../pillow_coeffs.h"
#include "cuda_backend.h"
#include "kernels.cuh"

#include <cub/device/device_scan.cuh>

namespace compexp {
namespace cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kSelectThreads = 256;

unsigned grid_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(blocks, int64_t{1} << 20)));
}

// Element (s, unit, y, x) of strided maps.
template <class T>
struct Maps {
  const T* p;
  int64_t s0, s1, s2, s3;  // element strides
  __device__ __forceinline__ double at(int64_t s, int64_t u, int64_t y, int64_t x) const {
    return static_cast<double>(p[s * s0 + u * s1 + y * s2 + x * s3]);
  }
};

__device__ __forceinline__ unsigned long long order_key(double v) {
  unsigned long long b;
  memcpy(&b, &v, sizeof b);
  return (b >> 63) ? ~b : (b | (1ull << 63));
}

__device__ __forceinline__ double key_value(unsigned long long k) {
  const unsigned long long b = (k >> 63) ? (k & ~(1ull << 63)) : ~k;
  double v;
  memcpy(&v, &b, sizeof v);
  return v;
}

// The value of rank `rank` (0-based, ascending) among the unit's cnt values; every thread of
// the block calls it and gets the same key.
template <class T>
__device__ unsigned long long select_rank(const Maps<T>& m, int64_t u, int64_t h, int64_t w, int64_t cnt,
                                          unsigned long long rank, unsigned long long* hist,
                                          unsigned long long* shared_state) {
  unsigned long long prefix = 0, mask = 0;
  const int64_t hw = h * w;
  for (int shift = 56; shift >= 0; shift -= 8) {
    for (int d = threadIdx.x; d < 256; d += blockDim.x) hist[d] = 0;
    __syncthreads();
    for (int64_t i = threadIdx.x; i < cnt; i += blockDim.x) {
      const int64_t s = i / hw, r = i - s * hw;
      const unsigned long long k = order_key(m.at(s, u, r / w, r % w));
      if ((k & mask) == prefix) atomicAdd(&hist[(k >> shift) & 255], 1ull);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      unsigned long long cum = 0;
      for (int d = 0; d < 256; ++d) {
        if (cum + hist[d] > rank) {
          prefix |= static_cast<unsigned long long>(d) << shift;
          rank -= cum;
          break;
        }
        cum += hist[d];
      }
      shared_state[0] = prefix;
      shared_state[1] = rank;
    }
    __syncthreads();
    prefix = shared_state[0];
    rank = shared_state[1];
    mask |= 255ull << shift;
    __syncthreads();
  }
  return prefix;
}

template <class T>
__global__ void __launch_bounds__(kSelectThreads)
    threshold_kernel(Maps<T> m, const int64_t* ids, int64_t n, int64_t h, int64_t w, double q, double* out,
                     int* bad) {
  __shared__ unsigned long long hist[256];
  __shared__ unsigned long long state[2];
  __shared__ int nonfinite;
  const int64_t u = ids[blockIdx.x];
  const int64_t hw = h * w, cnt = n * hw;
  if (threadIdx.x == 0) nonfinite = 0;
  __syncthreads();
  for (int64_t i = threadIdx.x; i < cnt; i += blockDim.x) {
    const int64_t s = i / hw, r = i - s * hw;
    const double v = m.at(s, u, r / w, r % w);
    if (!(v - v == 0.0)) atomicOr(&nonfinite, 1);  // NaN or infinity
  }
  __syncthreads();
  if (nonfinite) {
    if (threadIdx.x == 0) bad[blockIdx.x] = 1;
    return;  // the whole block leaves together
  }
  // numpy's _quantile, method "linear": virtual index (n - 1) * q, neighbours floor and
  // floor + 1 (both the last one at or past the end, where numpy's index is -1), gamma =
  // virtual index - previous index, then _lerp.
  const double vi = static_cast<double>(cnt - 1) * q;
  int64_t prev, next;
  double prev_index;
  if (vi >= static_cast<double>(cnt - 1)) {
    prev = next = cnt - 1;
    prev_index = -1.0;
  } else {
    prev = static_cast<int64_t>(floor(vi));
    next = prev + 1;
    prev_index = static_cast<double>(prev);
  }
  const double t = vi - prev_index;
  const double a = key_value(select_rank(m, u, h, w, cnt, static_cast<unsigned long long>(prev), hist, state));
  const double b = next == prev ? a
                                : key_value(select_rank(m, u, h, w, cnt, static_cast<unsigned long long>(next), hist, state));
  if (threadIdx.x == 0) {
    const double diff = b - a;
    double r = a + diff * t;
    if (t >= 0.5) r = b - diff * (1.0 - t);
    out[blockIdx.x] = r + 0.0;  // -0.0 becomes +0.0, as in compute_thresholds
    bad[blockIdx.x] = 0;
  }
}

// Pass orders (csrc/cpu/unit_masks_cpu.cpp pil_resize): NONE (same size), X or Y (one pass),
// XY (horizontal into tmp, then vertical), YX (vertical into tmp, then horizontal).
enum Order : int { kNone = 0, kX = 1, kY = 2, kXY = 3, kYX = 4 };

struct Coeffs {
  int ksize;
  const int* first;
  const int* count;
  const double* kk;
};

// The first of two passes: tmp[i][s][rows][cols] (rows x cols = h x W for XY, H x w for YX).
template <class T>
__global__ void __launch_bounds__(kThreads)
    first_pass_kernel(Maps<T> m, const int64_t* ids, int64_t n_ids, int64_t n, int order, int64_t rows,
                      int64_t cols, Coeffs c, T* tmp) {
  const int64_t total = n_ids * n * rows * cols;
  for (int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; e < total;
       e += int64_t{gridDim.x} * blockDim.x) {
    int64_t rest = e;
    const int64_t x = rest % cols;
    rest /= cols;
    const int64_t y = rest % rows;
    rest /= rows;
    const int64_t s = rest % n;
    const int64_t i = rest / n;
    const int64_t u = ids[i];
    double ss = 0.0;
    if (order == kXY) {
      const double* k = c.kk + x * c.ksize;
      const int f = c.first[x], cnt = c.count[x];
      for (int j = 0; j < cnt; ++j) ss += m.at(s, u, y, f + j) * k[j];
    } else {
      const double* k = c.kk + y * c.ksize;
      const int f = c.first[y], cnt = c.count[y];
      for (int j = 0; j < cnt; ++j) ss += m.at(s, u, f + j, x) * k[j];
    }
    tmp[e] = static_cast<T>(ss);
  }
}

// One dense mask word per thread: word wi of mask i (cells wi*64 .. wi*64+63 of the dataset).
template <class T>
__global__ void __launch_bounds__(kThreads)
    mask_word_kernel(Maps<T> m, const int64_t* ids, int64_t n_ids, int64_t n, int64_t h, int64_t w,
                     int64_t H, int64_t W, int order, Coeffs cx, Coeffs cy, const T* tmp,
                     const double* threshold, int64_t n_cells, int64_t words_per_mask, uint64_t* dense,
                     unsigned long long* popcount) {
  const int64_t total = n_ids * words_per_mask;
  const int64_t HW = H * W;
  for (int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; e < total;
       e += int64_t{gridDim.x} * blockDim.x) {
    const int64_t i = e / words_per_mask, wi = e - i * words_per_mask;
    const int64_t u = ids[i];
    const double t = threshold[i];
    uint64_t word = 0;
    for (int bit = 0; bit < 64; ++bit) {
      const int64_t cell = wi * 64 + bit;
      if (cell >= n_cells) break;
      const int64_t s = cell / HW, r = cell - s * HW;
      const int64_t yy = r / W, xx = r - yy * W;
      double v;
      if (order == kNone) {
        v = m.at(s, u, yy, xx);
      } else {
        double ss = 0.0;
        if (order == kX || order == kYX) {
          const double* k = cx.kk + xx * cx.ksize;
          const int f = cx.first[xx], cnt = cx.count[xx];
          if (order == kX) {
            for (int j = 0; j < cnt; ++j) ss += m.at(s, u, yy, f + j) * k[j];
          } else {  // tmp [i][s][H][w]
            const T* row = tmp + ((i * n + s) * H + yy) * w;
            for (int j = 0; j < cnt; ++j) ss += static_cast<double>(row[f + j]) * k[j];
          }
        } else {
          const double* k = cy.kk + yy * cy.ksize;
          const int f = cy.first[yy], cnt = cy.count[yy];
          if (order == kY) {
            for (int j = 0; j < cnt; ++j) ss += m.at(s, u, f + j, xx) * k[j];
          } else {  // kXY: tmp [i][s][h][W]
            const T* col = tmp + (i * n + s) * h * W + xx;
            for (int j = 0; j < cnt; ++j) ss += static_cast<double>(col[(f + j) * W]) * k[j];
          }
        }
        v = static_cast<double>(static_cast<T>(ss));
      }
      if (v > t) word |= uint64_t{1} << bit;
    }
    dense[e] = word;
    if (word) atomicAdd(&popcount[i], static_cast<unsigned long long>(__popcll(word)));
  }
}

// keep[i * nb + b] = 1 when block b of mask i has a set bit.
__global__ void __launch_bounds__(kThreads)
    block_flag_kernel(const uint64_t* dense, int64_t n_slots, int64_t* keep) {
  for (int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; e < n_slots;
       e += int64_t{gridDim.x} * blockDim.x) {
    uint64_t any = 0;
    for (int k = 0; k < kBlockWords; ++k) any |= dense[e * kBlockWords + k];
    keep[e] = any != 0;
  }
}

__global__ void __launch_bounds__(kThreads)
    block_ptr_kernel(const int64_t* pos, int64_t n_ids, int64_t nb, int64_t* ptr) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i <= n_ids;
       i += int64_t{gridDim.x} * blockDim.x)
    ptr[i] = pos[i * nb];
}

__global__ void __launch_bounds__(kThreads)
    block_write_kernel(const uint64_t* dense, const int64_t* keep, const int64_t* pos, int64_t n_slots,
                       int64_t nb, int64_t* block, uint64_t* words) {
  for (int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; e < n_slots;
       e += int64_t{gridDim.x} * blockDim.x) {
    if (!keep[e]) continue;
    const int64_t p = pos[e];
    block[p] = e % nb;
    for (int k = 0; k < kBlockWords; ++k) words[p * kBlockWords + k] = dense[e * kBlockWords + k];
  }
}

template <class T>
DeviceArray<T> upload_vec(const std::vector<T>& v, cudaStream_t s) {
  DeviceArray<T> d(v.size());
  if (!v.empty())
    COMPEXP_CUDA_CHECK(cudaMemcpyAsync(d.data(), v.data(), d.bytes(), cudaMemcpyHostToDevice, s));
  return d;
}

void check_maps(const DeviceMapsView& v, const int64_t* ids, int64_t n_ids) {
  COMPEXP_CHECK(v.dtype_bytes == 4 || v.dtype_bytes == 8, "device maps must be float32 or float64");
  COMPEXP_CHECK(v.n > 0 && v.units > 0 && v.h > 0 && v.w > 0, "device maps must have positive sizes");
  COMPEXP_CHECK(v.data != nullptr, "device maps have a null data pointer");
  for (int k = 0; k < 4; ++k) COMPEXP_CHECK(v.stride[k] >= 0, "device maps must have non-negative strides");
  COMPEXP_CHECK(n_ids > 0, "at least one unit is needed");
  for (int64_t i = 0; i < n_ids; ++i)
    COMPEXP_CHECK(ids[i] >= 0 && ids[i] < v.units, "unit ids must lie in [0, units)");
}

// Waits for the producer's stream (its writes of the maps) before our stream reads them.
void wait_for_producer(const DeviceMapsView& v) {
  if (v.stream) COMPEXP_CUDA_CHECK(cudaStreamSynchronize(reinterpret_cast<cudaStream_t>(v.stream)));
}

template <class T>
Maps<T> maps_of(const DeviceMapsView& v) {
  return Maps<T>{static_cast<const T*>(v.data), v.stride[0], v.stride[1], v.stride[2], v.stride[3]};
}

}  // namespace

int64_t DeviceIndex::unit_thresholds(const DeviceMapsView& maps, const int64_t* ids, int64_t n_ids, double q,
                                     double* out) {
  check_maps(maps, ids, n_ids);
  activate();
  wait_for_producer(maps);
  cudaStream_t s = stream_.get();
  std::vector<int64_t> host_ids(ids, ids + n_ids);
  DeviceArray<int64_t> d_ids = upload_vec(host_ids, s);
  DeviceArray<double> d_out(n_ids);
  DeviceArray<int> d_bad(n_ids);
  COMPEXP_CHECK(n_ids <= 0x7fffffff, "too many units for one launch");
  if (maps.dtype_bytes == 4)
    threshold_kernel<float><<<static_cast<unsigned>(n_ids), kSelectThreads, 0, s>>>(
        maps_of<float>(maps), d_ids.data(), maps.n, maps.h, maps.w, q, d_out.data(), d_bad.data());
  else
    threshold_kernel<double><<<static_cast<unsigned>(n_ids), kSelectThreads, 0, s>>>(
        maps_of<double>(maps), d_ids.data(), maps.n, maps.h, maps.w, q, d_out.data(), d_bad.data());
  COMPEXP_CUDA_LAUNCHED();
  std::vector<int> bad(n_ids);
  COMPEXP_CUDA_CHECK(cudaMemcpyAsync(out, d_out.data(), d_out.bytes(), cudaMemcpyDeviceToHost, s));
  COMPEXP_CUDA_CHECK(cudaMemcpyAsync(bad.data(), d_bad.data(), d_bad.bytes(), cudaMemcpyDeviceToHost, s));
  stream_.synchronize();
  for (int64_t i = 0; i < n_ids; ++i)
    if (bad[i]) return i;
  return -1;
}

DeviceMaskSet DeviceIndex::unit_masks(const DeviceMapsView& maps, const int64_t* ids, int64_t n_ids, int64_t H,
                                      int64_t W, const double* threshold, int64_t* popcounts) {
  check_maps(maps, ids, n_ids);
  COMPEXP_CHECK(H > 0 && W > 0, "the grid must have positive sizes");
  COMPEXP_CHECK(maps.n * H * W == n_cells_, "maps.n * H * W must equal the index's number of cells");
  activate();
  wait_for_producer(maps);
  cudaStream_t s = stream_.get();
  const int64_t n = maps.n, h = maps.h, w = maps.w;
  const bool horizontal = w != W, vertical = h != H;
  int order = kNone;
  if (horizontal && vertical)
    order = (H < h && (h - H) > 2 * (w - W)) ? kYX : kXY;
  else if (horizontal)
    order = kX;
  else if (vertical)
    order = kY;
  const AxisCoeffs ax(static_cast<int>(w), static_cast<int>(W)), ay(static_cast<int>(h), static_cast<int>(H));
  std::vector<int64_t> host_ids(ids, ids + n_ids);
  std::vector<double> host_t(threshold, threshold + n_ids);
  DeviceArray<int64_t> d_ids = upload_vec(host_ids, s);
  DeviceArray<double> d_t = upload_vec(host_t, s);
  DeviceArray<int> fx = upload_vec(ax.first, s), nx = upload_vec(ax.count, s);
  DeviceArray<int> fy = upload_vec(ay.first, s), ny = upload_vec(ay.count, s);
  DeviceArray<double> kx = upload_vec(ax.kk, s), ky = upload_vec(ay.kk, s);
  const Coeffs cx{ax.ksize, fx.data(), nx.data(), kx.data()};
  const Coeffs cy{ay.ksize, fy.data(), ny.data(), ky.data()};
  const int64_t rows = order == kXY ? h : H, cols = order == kXY ? W : w;
  const int64_t tmp_n = (order == kXY || order == kYX) ? n_ids * n * rows * cols : 0;
  const int64_t nb = blocks_for_cells(n_cells_), words_per_mask = nb * kBlockWords;
  DeviceBuffer tmp(static_cast<size_t>(tmp_n) * maps.dtype_bytes);
  DeviceArray<uint64_t> dense(static_cast<size_t>(n_ids * words_per_mask));
  DeviceArray<unsigned long long> pop(n_ids);
  COMPEXP_CUDA_CHECK(cudaMemsetAsync(pop.data(), 0, pop.bytes(), s));
  auto run = [&](auto zero) {
    using T = decltype(zero);
    const Maps<T> m = maps_of<T>(maps);
    T* t = static_cast<T*>(tmp.data());
    if (tmp_n) {
      first_pass_kernel<T><<<grid_for(tmp_n), kThreads, 0, s>>>(m, d_ids.data(), n_ids, n, order, rows, cols,
                                                                 order == kXY ? cx : cy, t);
      COMPEXP_CUDA_LAUNCHED();
    }
    mask_word_kernel<T><<<grid_for(n_ids * words_per_mask), kThreads, 0, s>>>(
        m, d_ids.data(), n_ids, n, h, w, H, W, order, cx, cy, t, d_t.data(), n_cells_, words_per_mask,
        dense.data(), pop.data());
    COMPEXP_CUDA_LAUNCHED();
  };
  if (maps.dtype_bytes == 4)
    run(0.0f);
  else
    run(0.0);
  // Compaction: non-empty blocks in block order, mask by mask.
  const int64_t n_slots = n_ids * nb;
  DeviceArray<int64_t> keep(n_slots + 1), pos(n_slots + 1);
  COMPEXP_CUDA_CHECK(cudaMemsetAsync(keep.data() + n_slots, 0, sizeof(int64_t), s));
  if (n_slots) {
    block_flag_kernel<<<grid_for(n_slots), kThreads, 0, s>>>(dense.data(), n_slots, keep.data());
    COMPEXP_CUDA_LAUNCHED();
  }
  size_t temp_bytes = 0;
  COMPEXP_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, temp_bytes, keep.data(), pos.data(), n_slots + 1, s));
  DeviceBuffer temp(temp_bytes);
  COMPEXP_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(temp.data(), temp_bytes, keep.data(), pos.data(), n_slots + 1, s));
  DeviceMaskSet out;
  out.n_masks = n_ids;
  out.host_ptr.assign(static_cast<size_t>(n_ids) + 1, 0);
  out.ptr = DeviceArray<int64_t>(static_cast<size_t>(n_ids) + 1);
  block_ptr_kernel<<<grid_for(n_ids + 1), kThreads, 0, s>>>(pos.data(), n_ids, nb, out.ptr.data());
  COMPEXP_CUDA_LAUNCHED();
  std::vector<unsigned long long> host_pop(n_ids);
  COMPEXP_CUDA_CHECK(cudaMemcpyAsync(out.host_ptr.data(), out.ptr.data(), out.ptr.bytes(), cudaMemcpyDeviceToHost, s));
  COMPEXP_CUDA_CHECK(cudaMemcpyAsync(host_pop.data(), pop.data(), pop.bytes(), cudaMemcpyDeviceToHost, s));
  stream_.synchronize();
  for (int64_t i = 0; i < n_ids; ++i) popcounts[i] = static_cast<int64_t>(host_pop[i]);
  const int64_t nnz = out.host_ptr.back();
  out.block = DeviceArray<int64_t>(nnz);
  out.words = DeviceArray<uint64_t>(static_cast<size_t>(nnz) * kBlockWords);
  if (nnz) {
    block_write_kernel<<<grid_for(n_slots), kThreads, 0, s>>>(dense.data(), keep.data(), pos.data(), n_slots, nb,
                                                              out.block.data(), out.words.data());
    COMPEXP_CUDA_LAUNCHED();
  }
  stream_.synchronize();
  return out;
}

}  // namespace cuda
}  // namespace compexp
