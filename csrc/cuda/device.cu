// Device management for the CUDA backend: errors, RAII memory and streams, the index upload,
// mask-set upload and download.
#include <algorithm>
#include <cstdio>
#include <stdexcept>
#include <string>

#include "cuda_backend.h"
#include "kernels.cuh"

namespace compexp {
namespace cuda {

void throw_cuda_error(cudaError_t code, const char* what, const char* file, int line) {
  // Clear a sticky-free error so that the next call does not report it again.
  (void)cudaGetLastError();
  throw std::runtime_error(std::string("CUDA error in ") + what + " (" + file + ":" +
                           std::to_string(line) + "): " + cudaGetErrorName(code) + ": " +
                           cudaGetErrorString(code));
}

int device_count() noexcept {
  int n = 0;
  // No driver (cudaErrorInsufficientDriver), no device (cudaErrorNoDevice), a driver older
  // than the runtime...: all mean "no usable GPU" here.
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

std::string device_description(int device) {
  const int n = device_count();
  if (device < 0 || device >= n)
    throw std::invalid_argument("CUDA device " + std::to_string(device) + " does not exist (" +
                                std::to_string(n) + " visible)");
  cudaDeviceProp prop;
  COMPEXP_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  char buf[512];
  std::snprintf(buf, sizeof(buf), "%s (sm_%d%d, %.1f GiB)", prop.name, prop.major, prop.minor,
                static_cast<double>(prop.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0));
  return buf;
}

DeviceBuffer::DeviceBuffer(size_t bytes) {
  if (bytes == 0) return;
  COMPEXP_CUDA_CHECK(cudaMalloc(&ptr_, bytes));
  bytes_ = bytes;
}

DeviceBuffer::~DeviceBuffer() {
  // Never throws: a failure here (the context is already gone at exit) cannot be reported.
  if (ptr_) (void)cudaFree(ptr_);
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept : ptr_(other.ptr_), bytes_(other.bytes_) {
  other.ptr_ = nullptr;
  other.bytes_ = 0;
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    if (ptr_) (void)cudaFree(ptr_);
    ptr_ = other.ptr_;
    bytes_ = other.bytes_;
    other.ptr_ = nullptr;
    other.bytes_ = 0;
  }
  return *this;
}

void Stream::create() {
  if (!s_) COMPEXP_CUDA_CHECK(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking));
}

Stream::~Stream() {
  if (s_) (void)cudaStreamDestroy(s_);
}

void Stream::synchronize() const { COMPEXP_CUDA_CHECK(cudaStreamSynchronize(s_)); }

namespace {

template <class T>
DeviceArray<T> upload_array(const T* host, size_t n, cudaStream_t s) {
  DeviceArray<T> d(n);
  if (n) COMPEXP_CUDA_CHECK(cudaMemcpyAsync(d.data(), host, n * sizeof(T), cudaMemcpyHostToDevice, s));
  return d;
}

}  // namespace

void DeviceIndex::open_device() {
  const int n = device_count();
  if (n == 0) throw std::runtime_error("no CUDA device is visible (check the driver and CUDA_VISIBLE_DEVICES)");
  if (device_ < 0 || device_ >= n)
    throw std::invalid_argument("CUDA device " + std::to_string(device_) + " does not exist (" +
                                std::to_string(n) + " visible)");
  activate();
  stream_.create();
  int optin = 0;
  COMPEXP_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device_));
  shared_optin_ = static_cast<size_t>(optin);
}

DeviceIndex::DeviceIndex(const ConceptIndex& index, int device)
    : device_(device), n_cells_(index.n_cells()), n_blocks_(index.n_blocks()), n_entries_(index.n_entries()),
      n_full_(index.n_full()), n_concepts_(index.n_concepts()) {
  const ConceptIndexView& ix = index.view();
  open_device();
  const int64_t nb = n_blocks_, ne = index.n_entries(), nf = index.n_full();
  const int64_t K = n_concepts_, n_items = ne + nf;
  host_concept_ptr_.assign(ix.concept_ptr, ix.concept_ptr + K + 1);
  cudaStream_t s = stream_.get();
  block_ptr_ = upload_array(ix.block_ptr, nb + 1, s);
  full_ptr_ = upload_array(ix.full_ptr, nb + 1, s);
  entry_concept_ = upload_array(ix.entry_concept, ne, s);
  entry_words_ = upload_array(ix.entry_words, static_cast<size_t>(ne) * kBlockWords, s);
  full_concept_ = upload_array(ix.full_concept, nf, s);
  concept_ptr_ = upload_array(ix.concept_ptr, K + 1, s);
  concept_block_ = upload_array(ix.concept_block, n_items, s);
  concept_entry_ = upload_array(ix.concept_entry, n_items, s);
  // The host arrays may be freed once the constructor returns.
  stream_.synchronize();
}

DeviceIndex::~DeviceIndex() {
  // Members are freed after this body: make their device current (cudaFree needs no
  // particular device under unified addressing, but the stream's destruction does).
  (void)cudaSetDevice(device_);
}

IndexPtrs DeviceIndex::device_ptrs() const {
  return IndexPtrs{n_cells_, n_blocks_, n_concepts_, block_ptr_.data(), entry_concept_.data(),
                   entry_words_.data(), full_ptr_.data(), full_concept_.data(), concept_ptr_.data(),
                   concept_block_.data(), concept_entry_.data()};
}

void DeviceIndex::activate() const { COMPEXP_CUDA_CHECK(cudaSetDevice(device_)); }

size_t DeviceIndex::nbytes() const {
  return block_ptr_.bytes() + full_ptr_.bytes() + entry_concept_.bytes() + entry_words_.bytes() +
         full_concept_.bytes() + concept_ptr_.bytes() + concept_block_.bytes() + concept_entry_.bytes();
}

DeviceMaskSet DeviceIndex::upload(const MaskSetView& m) {
  activate();
  DeviceMaskSet d;
  d.n_masks = m.n_masks;
  d.host_ptr.assign(m.ptr, m.ptr + m.n_masks + 1);
  const int64_t nnz = d.host_ptr.back();
  cudaStream_t s = stream_.get();
  d.ptr = upload_array(m.ptr, m.n_masks + 1, s);
  d.block = upload_array(m.block, nnz, s);
  d.words = upload_array(m.words, static_cast<size_t>(nnz) * kBlockWords, s);
  stream_.synchronize();  // pageable sources: keep them alive until copied
  return d;
}

MaskSet DeviceIndex::download(const DeviceMaskSet& d) {
  activate();
  MaskSet out;
  out.ptr = d.host_ptr;
  const int64_t nnz = d.nnz();
  out.block.resize(nnz);
  out.words.resize(static_cast<size_t>(nnz) * kBlockWords);
  cudaStream_t s = stream_.get();
  if (nnz) {
    COMPEXP_CUDA_CHECK(cudaMemcpyAsync(out.block.data(), d.block.data(), nnz * sizeof(int64_t),
                                       cudaMemcpyDeviceToHost, s));
    COMPEXP_CUDA_CHECK(cudaMemcpyAsync(out.words.data(), d.words.data(),
                                       static_cast<size_t>(nnz) * kBlockWords * sizeof(uint64_t),
                                       cudaMemcpyDeviceToHost, s));
  }
  stream_.synchronize();
  return out;
}

}  // namespace cuda
}  // namespace compexp
