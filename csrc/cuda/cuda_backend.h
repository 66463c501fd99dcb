// compexp-core CUDA backend: the operations on a concept index, on one GPU. Its twin
// csrc/cpu/cpu_backend.h declares the same counting and materialisation operations on the CPU
// (DeviceIndex's methods here, cpu:: functions there); the layout and types are in ../layout.h.
//
// The concept index is uploaded once into a DeviceIndex and stays on the GPU; mask sets
// (units, formulas) are uploaded as DeviceMaskSet objects, which kernels read in place and
// materialisation returns, so a caller can keep a search's masks on the GPU between steps.
// Results are bit-identical to the CPU kernels (csrc/cpu): the same exact 64-bit counts, the
// same mask-set layout (block order, dropped empty blocks, COPY keeping its source's blocks).
//
// Errors: every CUDA call is checked; a failure throws std::runtime_error carrying the
// CUDA error text (pybind11 turns it into a Python RuntimeError). Bad arguments throw
// std::invalid_argument, as on the CPU.
//
// This header is plain C++17 (no device code): the bindings are compiled by the host compiler.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "../index.h"
#include "../layout.h"

// After the standard headers: the CUDA headers (and cudaemu's stand-ins for them) define
// qualifiers such as __noinline__ as macros, which libstdc++'s <memory> must not see.
#include <cuda_runtime_api.h>

namespace compexp {
namespace cuda {

struct IndexPtrs;  // raw device pointers of the index (kernels.cuh)

// Throws std::runtime_error "CUDA error in <what> (<file>:<line>): <cudaGetErrorString>".
void throw_cuda_error(cudaError_t code, const char* what, const char* file, int line);

#define COMPEXP_CUDA_CHECK(expr)                                                    \
  do {                                                                              \
    const cudaError_t compexp_err_ = (expr);                                        \
    if (compexp_err_ != cudaSuccess)                                                \
      ::compexp::cuda::throw_cuda_error(compexp_err_, #expr, __FILE__, __LINE__);   \
  } while (0)

// Number of usable CUDA devices; 0 (never an exception) when there is no driver, no device,
// or the driver is too old for this build: "no GPU" is a normal state, not an error.
int device_count() noexcept;

// "NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)" for a device index (throws on a bad index).
std::string device_description(int device);

// Owned device memory (cudaMalloc / cudaFree). Movable, not copyable. Zero bytes allocate
// nothing (data() is nullptr).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void* data() const { return ptr_; }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// A typed device array of n elements.
template <class T>
class DeviceArray {
 public:
  DeviceArray() = default;
  explicit DeviceArray(size_t n) : buf_(n * sizeof(T)), n_(n) {}
  T* data() const { return static_cast<T*>(buf_.data()); }
  size_t size() const { return n_; }
  size_t bytes() const { return buf_.bytes(); }

 private:
  DeviceBuffer buf_;
  size_t n_ = 0;
};

// An owned CUDA stream (non-blocking), created by create() on the current device (so that
// its owner can select the device first). Not copyable.
class Stream {
 public:
  Stream() = default;
  ~Stream();
  void create();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return s_; }
  void synchronize() const;

 private:
  cudaStream_t s_ = nullptr;
};

// A block-sparse mask set on the GPU (layout of MaskSetView). ptr is also kept on the host:
// launches are planned from it (work chunks, output sizes) without a device round trip.
struct DeviceMaskSet {
  int64_t n_masks = 0;
  std::vector<int64_t> host_ptr{0};   // [n_masks + 1]
  DeviceArray<int64_t> ptr;           // [n_masks + 1]
  DeviceArray<int64_t> block;         // [nnz]
  DeviceArray<uint64_t> words;        // [nnz * kBlockWords]
  int64_t nnz() const { return host_ptr.back(); }
};

// Activation maps already in device memory (not owned): [n, units, h, w] float32 (dtype_bytes
// 4) or float64 (8) values, element strides (any non-negative; [n, units] values are
// h = w = 1 with zero strides for the last two axes). stream: the producer's stream, which
// is synchronised before the values are read (0: none; 1, 2: the legacy and per-thread default
// streams, as in __cuda_array_interface__ version 3).
struct DeviceMapsView {
  const void* data = nullptr;
  int dtype_bytes = 4;
  int64_t n = 0, units = 0, h = 1, w = 1;
  int64_t stride[4] = {0, 0, 0, 0};
  uintptr_t stream = 0;
};

// Dense concept masks already in device memory (not owned): [n, k, h, w] bytes, each 0 or 1
// (bool or uint8; [n, k] masks are h = w = 1), byte strides (any non-negative). Cell
// s*h*w + y*w + x of concept q is byte (s, q, y, x). stream: the producer's stream, synchronised
// before the bytes are read (as DeviceMapsView's).
struct DeviceDenseMasksView {
  const uint8_t* data = nullptr;
  int64_t n = 0, k = 0, h = 1, w = 1;
  int64_t stride[4] = {0, 0, 0, 0};
  uintptr_t stream = 0;
};

// The block-major arrays of a concept index (layout.h), copied to the host.
struct BlockMajorIndex {
  std::vector<int64_t> block_ptr, full_ptr;
  std::vector<int32_t> entry_concept, full_concept;
  std::vector<uint64_t> entry_words;  // [n_entries * kBlockWords]
};

// The concept index on one GPU, with the operations of cpu_backend.h. Not thread-safe: one
// caller at a time (the Python bindings hold the object; the GIL orders calls on it).
class DeviceIndex {
 public:
  // Uploads a checked index (block-major and concept-major views; an index whose concepts
  // are all empty too) to `device`. The host index may be destroyed afterwards. Throws
  // std::runtime_error when no device is visible, std::invalid_argument for a bad device.
  DeviceIndex(const ConceptIndex& index, int device);
  // Builds the index on `device` from dense masks in device memory (csrc/cuda/builder.cu):
  // the arrays cpu::ConceptIndexBuilder::add_dense + finish and ConceptIndex produce for the
  // same masks, bit for bit; the masks are never copied to the host. sizes (host, masks.k
  // entries) receives |C_j|. Throws std::invalid_argument for bad sizes or strides and for
  // bytes other than 0 and 1; the masks must be on `device`.
  DeviceIndex(const DeviceDenseMasksView& masks, int device, int64_t* sizes);
  ~DeviceIndex();
  DeviceIndex(const DeviceIndex&) = delete;
  DeviceIndex& operator=(const DeviceIndex&) = delete;

  // Copies a host mask set to the GPU. Precondition: check_mask_set passed against this
  // index's n_blocks (the kernels trust block ids and pointers).
  DeviceMaskSet upload(const MaskSetView& masks);
  // Copies a device mask set back to the host: the only device-to-host copy of masks.
  MaskSet download(const DeviceMaskSet& masks);

  // out[u * K + j] = |U_u AND C_j| (host array of units.n_masks * K entries, overwritten).
  void primitive_counts(const DeviceMaskSet& units, int64_t* out);

  // f[i * K + j] = |F_i AND C_j|, g[i * K + j] = |U_{unit_of[i]} AND F_i AND C_j| (host
  // arrays, overwritten), as cpu::extension_counts, and the same ExtensionWork (counted on the
  // device in the same kernel; no block ids come back). unit_of is a host array of
  // formulas.n_masks unit indices, checked here.
  ExtensionWork extension_counts(const DeviceMaskSet& formulas, const int64_t* unit_of,
                                 const DeviceMaskSet& units, int64_t* f, int64_t* g);

  // out mask i = op[i](F_{src[i]}, C_{concept[i]}), as cpu::materialize (host arguments,
  // checked here by check_materialize_args; the result stays on the GPU).
  DeviceMaskSet materialize(const DeviceMaskSet& formulas, int64_t n_out, const int64_t* src,
                            const int32_t* op, const int32_t* concept);

  // Thresholds on the GPU (csrc/cuda/unit_masks.cu): out[i] = np.quantile(values of unit
  // ids[i] as float64, q) with NumPy's default linear method, bit for bit. ids: host array of
  // n_ids units. Returns -1, or the position in ids of the first unit holding a NaN or an
  // infinity (out is then unspecified). maps must be on this index's device.
  int64_t unit_thresholds(const DeviceMapsView& maps, const int64_t* ids, int64_t n_ids, double q, double* out);
  // Unit masks on the GPU for all maps.n samples on an H x W grid (maps.n * H * W must equal
  // n_cells()): cpu::unit_masks_from_maps bit for bit (float32 maps: Pillow's float32 passes;
  // float64 maps: the same passes in double), mask i for unit ids[i] with threshold[i] (host
  // arrays). popcounts[i] = |mask i| (host, n_ids entries). The masks stay on the GPU.
  DeviceMaskSet unit_masks(const DeviceMapsView& maps, const int64_t* ids, int64_t n_ids, int64_t H, int64_t W,
                           const double* threshold, int64_t* popcounts);

  // Benchmark hooks. Milliseconds of each of `repeats` runs of the extension kernel alone
  // (CUDA events around the launches; inputs already on the GPU, outputs not copied back).
  std::vector<float> time_extension_counts(const DeviceMaskSet& formulas, const int64_t* unit_of,
                                           const DeviceMaskSet& units, int repeats);
  // Device-to-device copy bandwidth, bytes read + written per second, median of `repeats`
  // cudaMemcpy of `bytes` bytes timed with CUDA events.
  double copy_bandwidth(size_t bytes, int repeats);

  // A host copy of the block-major arrays (what a host ConceptSet stores).
  BlockMajorIndex download_block_major();

  int device() const { return device_; }
  int64_t n_cells() const { return n_cells_; }
  int64_t n_entries() const { return n_entries_; }  // partial blocks stored
  int64_t n_full() const { return n_full_; }        // full blocks stored
  int64_t n_blocks() const { return n_blocks_; }
  int32_t n_concepts() const { return n_concepts_; }
  // Device memory held by the index arrays.
  size_t nbytes() const;

 private:
  // Counts of `masks` (as formulas) against all concepts into device f (and g and the work
  // when with_g); the shared launch of primitive and extension counts.
  ExtensionWork launch_counts(const DeviceMaskSet& masks, const int64_t* unit_of_host,
                              const DeviceMaskSet* units, bool with_g, int64_t* f_host,
                              int64_t* g_host, int timing_repeats = 0,
                              std::vector<float>* times = nullptr);
  void activate() const;  // cudaSetDevice(device_)
  // Checks that device_ exists, makes it current, creates the stream, reads the shared-memory
  // opt-in limit: the start of both constructors.
  void open_device();
  IndexPtrs device_ptrs() const;

  int device_ = 0;
  int64_t n_cells_ = 0, n_blocks_ = 0, n_entries_ = 0, n_full_ = 0;
  int32_t n_concepts_ = 0;
  size_t shared_optin_ = 0;                 // max dynamic shared memory per thread block
  std::vector<int64_t> host_concept_ptr_;   // plans materialisation output sizes
  Stream stream_;
  DeviceArray<int64_t> block_ptr_, full_ptr_, concept_ptr_, concept_block_, concept_entry_;
  DeviceArray<int32_t> entry_concept_, full_concept_;
  DeviceArray<uint64_t> entry_words_;
};

}  // namespace cuda
}  // namespace compexp
