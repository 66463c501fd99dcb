// pybind11 glue for the CUDA backend (module compexp_core._cuda): array conversion, Python-level
// shape checks, GIL release. Same argument and return conventions as the CPU ConceptIndex in
// bindings.cpp; no algorithm and no structural check lives here (see csrc/cuda/, csrc/).
// Device data never comes back to the host implicitly: only download() copies masks back.
//
// CUDA failures are std::runtime_error carrying the CUDA error text (Python RuntimeError);
// bad arguments are ValueError, as on the CPU.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "cuda/cuda_backend.h"
#include "glue.h"
#include "index.h"
#include "layout.h"

namespace py = pybind11;
using namespace compexp;
using namespace compexp::pyglue;

namespace {

// A mask set on the GPU (from DeviceConceptIndex.upload or materialize(on_device=True)): an
// opaque handle with its sizes; DeviceConceptIndex.download copies it back.
struct PyDeviceMasks {
  std::shared_ptr<const cuda::DeviceMaskSet> masks;
  uint64_t index_id = 0;  // the DeviceConceptIndex that made it (its block ids fit that index)
  int device = 0;         // the GPU holding it
};

// Identities of DeviceConceptIndex objects (never reused, unlike addresses).
std::atomic<uint64_t> next_index_id{1};

// The concept index on a GPU: uploaded once at construction, then counts and materialisation.
class PyDeviceIndex {
 public:
  PyDeviceIndex(int64_t n_cells, int32_t n_concepts, Arr<int64_t> block_ptr, Arr<int32_t> entry_concept,
                Arr<uint64_t> entry_words, Arr<int64_t> full_ptr, Arr<int32_t> full_concept, int device) {
    // The index is checked and its concept-major view built on the host (csrc/index.h), then
    // uploaded; the host copy is dropped (with the GIL held) when the constructor returns.
    const ConceptIndex host = concept_index_from_python(n_cells, n_concepts, block_ptr, entry_concept,
                                                        entry_words, full_ptr, full_concept);
    py::gil_scoped_release nogil;
    index_ = std::make_unique<cuda::DeviceIndex>(host, device);
  }

  explicit PyDeviceIndex(std::unique_ptr<cuda::DeviceIndex> index) : index_(std::move(index)) {}

  // Dense bool / uint8 masks in device memory, described by the caller (from
  // __cuda_array_interface__): pointer, dtype "bool" / "uint8", shape [N, K, H, W] or [N, K],
  // strides in bytes (None: C order). Only converted and checked here; the index is built on
  // the GPU (csrc/cuda/builder.cu). Returns (index, sizes |C_j| as int64 [K]).
  static py::tuple from_dense(uintptr_t ptr, const std::string& dtype, const std::vector<int64_t>& shape,
                              const py::object& strides, int device, uintptr_t stream) {
    require(dtype == "bool" || dtype == "uint8",
            "dense masks on the GPU must be bool (or uint8 0/1), got " + dtype);
    require(shape.size() == 4 || shape.size() == 2, "dense masks on the GPU must be [N, K, H, W] or [N, K]");
    for (int64_t d : shape) require(d > 0, "dense masks on the GPU must have no empty axis");
    require(ptr != 0, "dense masks on the GPU have a null data pointer");
    std::vector<int64_t> st(shape.size());
    if (strides.is_none()) {
      int64_t acc = 1;
      for (size_t k = shape.size(); k-- > 0;) {
        st[k] = acc;
        acc *= shape[k];
      }
    } else {
      st = strides.cast<std::vector<int64_t>>();
      require(st.size() == shape.size(), "dense mask strides must have one entry per axis");
    }
    for (int64_t b : st) require(b >= 0, "dense mask strides must be non-negative");
    cuda::DeviceDenseMasksView v;
    v.data = reinterpret_cast<const uint8_t*>(ptr);
    v.n = shape[0];
    v.k = shape[1];
    v.stride[0] = st[0];
    v.stride[1] = st[1];
    if (shape.size() == 4) {
      v.h = shape[2];
      v.w = shape[3];
      v.stride[2] = st[2];
      v.stride[3] = st[3];
    }
    v.stream = stream;
    require(v.k <= 0x7fffffff, "dense masks on the GPU have more than 2**31 - 1 concepts");
    py::array_t<int64_t> sizes(static_cast<py::ssize_t>(v.k));
    int64_t* so = sizes.mutable_data();
    std::unique_ptr<cuda::DeviceIndex> index;
    {
      py::gil_scoped_release nogil;
      index = std::make_unique<cuda::DeviceIndex>(v, device, so);
    }
    return py::make_tuple(PyDeviceIndex(std::move(index)), sizes);
  }

  // The block-major arrays copied to the host: (block_ptr, entry_concept, entry_words [n, 8],
  // full_ptr, full_concept), as a host ConceptSet stores them.
  py::tuple download_block_major() {
    cuda::BlockMajorIndex a;
    {
      py::gil_scoped_release nogil;
      a = index_->download_block_major();
    }
    const py::ssize_t ne = static_cast<py::ssize_t>(a.entry_concept.size());
    const py::ssize_t nb1 = static_cast<py::ssize_t>(a.block_ptr.size());
    const py::ssize_t nf = static_cast<py::ssize_t>(a.full_concept.size());
    return py::make_tuple(to_numpy(std::move(a.block_ptr), {nb1}), to_numpy(std::move(a.entry_concept), {ne}),
                          to_numpy(std::move(a.entry_words), {ne, kBlockWords}),
                          to_numpy(std::move(a.full_ptr), {nb1}), to_numpy(std::move(a.full_concept), {nf}));
  }

  bool owns(const PyDeviceMasks& h) const { return h.index_id == id_ && h.device == index_->device(); }

  // A mask-set argument: a DeviceMasks handle made by this index (used in place), or a
  // (ptr, block, words) tuple, checked and uploaded now.
  std::shared_ptr<const cuda::DeviceMaskSet> device_masks(const py::object& obj, const char* what) {
    if (py::isinstance<PyDeviceMasks>(obj)) {
      const PyDeviceMasks& h = obj.cast<const PyDeviceMasks&>();
      require(owns(h), std::string(what) + ": device masks of another concept index or GPU");
      return h.masks;
    }
    require(py::isinstance<py::tuple>(obj), std::string(what) + " must be a (ptr, block, words) tuple or DeviceMasks");
    PyMaskSet host(obj.cast<py::tuple>(), index_->n_blocks(), what);
    py::gil_scoped_release nogil;
    return std::make_shared<const cuda::DeviceMaskSet>(index_->upload(host.view));
  }

  static void check_unit_of_shape(const Arr<int64_t>& unit_of, int64_t n_formulas) {
    require(unit_of.ndim() == 1 && unit_of.shape(0) == n_formulas, "unit_of must have one entry per formula");
  }

  PyDeviceMasks handle(std::shared_ptr<const cuda::DeviceMaskSet> m) const {
    return PyDeviceMasks{std::move(m), id_, index_->device()};
  }

  PyDeviceMasks upload(const py::tuple& masks) { return handle(device_masks(masks, "masks")); }

  py::tuple download(const PyDeviceMasks& masks) {
    require(owns(masks), "masks: device masks of another concept index or GPU");
    MaskSet out;
    {
      py::gil_scoped_release nogil;
      out = index_->download(*masks.masks);
    }
    return mask_set_to_python(std::move(out));
  }

  py::array_t<int64_t> primitive_counts(const py::object& units) {
    auto du = device_masks(units, "units");
    py::array_t<int64_t> out({du->n_masks, static_cast<int64_t>(index_->n_concepts())});
    int64_t* o = out.mutable_data();
    {
      py::gil_scoped_release nogil;
      index_->primitive_counts(*du, o);
    }
    return out;
  }

  py::tuple extension_counts(const py::object& formulas, Arr<int64_t> unit_of, const py::object& units) {
    auto df = device_masks(formulas, "formulas");
    auto du = device_masks(units, "units");
    check_unit_of_shape(unit_of, df->n_masks);
    const std::vector<py::ssize_t> shape{df->n_masks, index_->n_concepts()};
    py::array_t<int64_t> f(shape), g(shape);
    int64_t* fo = f.mutable_data();
    int64_t* go = g.mutable_data();
    ExtensionWork work;
    {
      py::gil_scoped_release nogil;
      work = index_->extension_counts(*df, unit_of.data(), *du, fo, go);
    }
    return py::make_tuple(f, g, py::make_tuple(work.formula_blocks, work.partial_entries, work.full_entries));
  }

  // Host arrays like the CPU's, or (on_device) a DeviceMasks handle that stays on the GPU.
  py::object materialize(const py::object& formulas, Arr<int64_t> src, Arr<int32_t> op, Arr<int32_t> concept,
                         bool on_device) {
    auto df = device_masks(formulas, "formulas");
    require(src.ndim() == 1 && op.ndim() == 1 && concept.ndim() == 1 && src.shape(0) == op.shape(0) &&
                op.shape(0) == concept.shape(0),
            "src, op and concept must be 1-D of equal length");
    std::shared_ptr<cuda::DeviceMaskSet> dout;
    MaskSet out;
    {
      py::gil_scoped_release nogil;
      dout = std::make_shared<cuda::DeviceMaskSet>(
          index_->materialize(*df, src.shape(0), src.data(), op.data(), concept.data()));
      if (!on_device) out = index_->download(*dout);
    }
    if (on_device) return py::cast(handle(dout));
    return mask_set_to_python(std::move(out));
  }

  std::vector<float> time_extension_counts(const py::object& formulas, Arr<int64_t> unit_of, const py::object& units,
                                           int repeats) {
    auto df = device_masks(formulas, "formulas");
    auto du = device_masks(units, "units");
    check_unit_of_shape(unit_of, df->n_masks);
    py::gil_scoped_release nogil;
    return index_->time_extension_counts(*df, unit_of.data(), *du, repeats);
  }

  double copy_bandwidth(int64_t bytes, int repeats) {
    require(bytes > 0 && repeats > 0, "bytes and repeats must be positive");
    py::gil_scoped_release nogil;
    return index_->copy_bandwidth(static_cast<size_t>(bytes), repeats);
  }

  // Activation maps in device memory, described by the caller (from __cuda_array_interface__
  // or DLPack): pointer, dtype "float32" / "float64", shape [n, U, h, w] or [n, U], strides in
  // bytes (None: C order). Only converted and checked here.
  static cuda::DeviceMapsView maps_view(uintptr_t ptr, const std::string& dtype, const std::vector<int64_t>& shape,
                                        const py::object& strides, uintptr_t stream) {
    cuda::DeviceMapsView v;
    v.stream = stream;
    require(dtype == "float32" || dtype == "float64",
            "acts on the GPU must be float32 or float64, got " + dtype + " (convert it on the GPU first)");
    v.dtype_bytes = dtype == "float32" ? 4 : 8;
    require(shape.size() == 4 || shape.size() == 2, "acts on the GPU must be [N, U, h, w] or [N, U]");
    for (int64_t d : shape) require(d > 0, "acts on the GPU must have no empty axis");
    require(ptr != 0, "acts on the GPU have a null data pointer");
    std::vector<int64_t> st(shape.size());
    if (strides.is_none()) {
      int64_t acc = v.dtype_bytes;
      for (size_t k = shape.size(); k-- > 0;) {
        st[k] = acc;
        acc *= shape[k];
      }
    } else {
      st = strides.cast<std::vector<int64_t>>();
      require(st.size() == shape.size(), "acts strides must have one entry per axis");
    }
    for (int64_t b : st)
      require(b >= 0 && b % v.dtype_bytes == 0, "acts strides must be non-negative multiples of the item size");
    v.data = reinterpret_cast<const void*>(ptr);
    v.n = shape[0];
    v.units = shape[1];
    v.stride[0] = st[0] / v.dtype_bytes;
    v.stride[1] = st[1] / v.dtype_bytes;
    if (shape.size() == 4) {
      v.h = shape[2];
      v.w = shape[3];
      v.stride[2] = st[2] / v.dtype_bytes;
      v.stride[3] = st[3] / v.dtype_bytes;
    }
    return v;
  }

  py::array_t<double> unit_thresholds(uintptr_t ptr, const std::string& dtype, const std::vector<int64_t>& shape,
                                      const py::object& strides, Arr<int64_t> ids, double q, uintptr_t stream) {
    const cuda::DeviceMapsView v = maps_view(ptr, dtype, shape, strides, stream);
    require(ids.ndim() == 1 && ids.shape(0) > 0, "ids must be a non-empty 1-D array");
    require(q >= 0.0 && q <= 1.0, "q must lie in [0, 1]");
    py::array_t<double> out(ids.shape(0));
    double* o = out.mutable_data();
    int64_t bad;
    {
      py::gil_scoped_release nogil;
      bad = index_->unit_thresholds(v, ids.data(), ids.shape(0), q, o);
    }
    require(bad < 0, "acts of unit " + std::to_string(bad < 0 ? 0 : ids.data()[bad]) +
                         " contain NaN or infinite values");
    return out;
  }

  py::tuple unit_masks(uintptr_t ptr, const std::string& dtype, const std::vector<int64_t>& shape,
                       const py::object& strides, Arr<int64_t> ids, int64_t H, int64_t W, Arr<double> threshold,
                       uintptr_t stream) {
    const cuda::DeviceMapsView v = maps_view(ptr, dtype, shape, strides, stream);
    require(ids.ndim() == 1 && ids.shape(0) > 0, "ids must be a non-empty 1-D array");
    require(threshold.ndim() == 1 && threshold.shape(0) == ids.shape(0), "threshold must have one value per id");
    py::array_t<int64_t> pop(ids.shape(0));
    int64_t* po = pop.mutable_data();
    std::shared_ptr<cuda::DeviceMaskSet> dm;
    {
      py::gil_scoped_release nogil;
      dm = std::make_shared<cuda::DeviceMaskSet>(
          index_->unit_masks(v, ids.data(), ids.shape(0), H, W, threshold.data(), po));
    }
    return py::make_tuple(handle(dm), pop);
  }

  int device() const { return index_->device(); }
  int64_t n_cells() const { return index_->n_cells(); }
  int64_t n_blocks() const { return index_->n_blocks(); }
  int32_t n_concepts() const { return index_->n_concepts(); }
  int64_t n_entries() const { return index_->n_entries(); }
  int64_t n_full() const { return index_->n_full(); }
  size_t nbytes() const { return index_->nbytes(); }

 private:
  std::unique_ptr<cuda::DeviceIndex> index_;
  const uint64_t id_ = next_index_id++;
};

// Test helper: a copy of a host array in device memory (cudaMalloc through this module), so that
// tests can hand the search a __cuda_array_interface__ without torch or CuPy.
class PyTestDeviceBuffer {
 public:
  PyTestDeviceBuffer(py::array host, int device) : device_(device) {
    require(py::detail::check_flags(host.ptr(), py::array::c_style), "array must be C-contiguous");
    COMPEXP_CUDA_CHECK(cudaSetDevice(device));
    buf_ = cuda::DeviceBuffer(static_cast<size_t>(host.nbytes()));
    if (host.nbytes())
      COMPEXP_CUDA_CHECK(cudaMemcpy(buf_.data(), host.data(), static_cast<size_t>(host.nbytes()), cudaMemcpyHostToDevice));
  }
  uintptr_t ptr() const { return reinterpret_cast<uintptr_t>(buf_.data()); }
  size_t nbytes() const { return buf_.bytes(); }
  int device() const { return device_; }
  py::bytes read() const {
    std::string out(buf_.bytes(), '\0');
    if (!out.empty()) COMPEXP_CUDA_CHECK(cudaMemcpy(&out[0], buf_.data(), out.size(), cudaMemcpyDeviceToHost));
    return py::bytes(out);
  }

 private:
  cuda::DeviceBuffer buf_;
  int device_;
};

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "compexp-core CUDA kernels (private; use the compexp_core package with device='cuda').";
  // std::invalid_argument (COMPEXP_CHECK in the kernels' host code) is a ValueError, as in _core;
  // std::runtime_error (CUDA errors) is pybind11's default RuntimeError.

  m.def("device_count", [] { return cuda::device_count(); },
        "Number of usable CUDA devices (0 without a driver or a device; never raises).");
  m.def("device_description", [](int device) { return cuda::device_description(device); },
        py::arg("device") = 0, "Name, compute capability and memory of a CUDA device.");

  py::class_<PyDeviceMasks>(m, "DeviceMasks",
                            "A mask set held on the GPU (not a tuple: DeviceConceptIndex.download "
                            "copies it back).")
      .def_property_readonly("n_masks", [](const PyDeviceMasks& h) { return h.masks->n_masks; },
                             "Number of masks.")
      .def_property_readonly("nnz", [](const PyDeviceMasks& h) { return h.masks->nnz(); },
                             "Stored blocks over all masks.")
      .def_property_readonly("nbytes", [](const PyDeviceMasks& h) {
        return h.masks->ptr.bytes() + h.masks->block.bytes() + h.masks->words.bytes();
      }, "Device memory held, in bytes.")
      .def_property_readonly("device", [](const PyDeviceMasks& h) { return h.device; },
                             "The CUDA device holding the masks.");

  py::class_<PyDeviceIndex>(m, "DeviceConceptIndex")
      .def(py::init<int64_t, int32_t, Arr<int64_t>, Arr<int32_t>, Arr<uint64_t>, Arr<int64_t>, Arr<int32_t>, int>(),
           py::arg("n_cells"), py::arg("n_concepts"), py::arg("block_ptr"), py::arg("entry_concept"),
           py::arg("entry_words"), py::arg("full_ptr"), py::arg("full_concept"), py::arg("device") = 0)
      .def_static("from_dense", &PyDeviceIndex::from_dense, py::arg("ptr"), py::arg("dtype"), py::arg("shape"),
                  py::arg("strides"), py::arg("device") = 0, py::arg("stream") = 0,
                  "(DeviceConceptIndex, sizes): the index built on the GPU from dense bool masks in "
                  "device memory (never copied to the host), and |C_j| (int64 [K]).")
      .def("download_block_major", &PyDeviceIndex::download_block_major,
           "The block-major arrays (block_ptr, entry_concept, entry_words, full_ptr, full_concept) "
           "copied to the host.")
      .def("upload", &PyDeviceIndex::upload, py::arg("masks"),
           "Copy a (ptr, block, words) mask set to the GPU once; the kernels accept the handle.")
      .def("download", &PyDeviceIndex::download, py::arg("masks"),
           "Copy a DeviceMasks handle back to the host as a (ptr, block, words) tuple.")
      .def("primitive_counts", &PyDeviceIndex::primitive_counts, py::arg("units"))
      .def("extension_counts", &PyDeviceIndex::extension_counts, py::arg("formulas"), py::arg("unit_of"),
           py::arg("units"))
      .def("materialize", &PyDeviceIndex::materialize, py::arg("formulas"), py::arg("src"), py::arg("op"),
           py::arg("concept"), py::arg("on_device") = false)
      .def("time_extension_counts", &PyDeviceIndex::time_extension_counts, py::arg("formulas"), py::arg("unit_of"),
           py::arg("units"), py::arg("repeats") = 20,
           "Benchmark: milliseconds of each run of the extension kernel alone (CUDA events).")
      .def("unit_thresholds", &PyDeviceIndex::unit_thresholds, py::arg("ptr"), py::arg("dtype"), py::arg("shape"),
           py::arg("strides"), py::arg("ids"), py::arg("q"), py::arg("stream") = 0,
           "np.quantile(values of each unit in ids, q) of device maps, computed on the GPU")
      .def("unit_masks", &PyDeviceIndex::unit_masks, py::arg("ptr"), py::arg("dtype"), py::arg("shape"),
           py::arg("strides"), py::arg("ids"), py::arg("height"), py::arg("width"), py::arg("threshold"),
           py::arg("stream") = 0, "(DeviceMasks, popcounts): unit masks of device maps, computed on the GPU")
      .def("copy_bandwidth", &PyDeviceIndex::copy_bandwidth, py::arg("bytes") = int64_t{1} << 30,
           py::arg("repeats") = 20,
           "Benchmark: device-to-device copy bandwidth in bytes (read + written) per second.")
      .def_property_readonly("device", &PyDeviceIndex::device)
      .def_property_readonly("n_cells", &PyDeviceIndex::n_cells)
      .def_property_readonly("n_blocks", &PyDeviceIndex::n_blocks)
      .def_property_readonly("n_concepts", &PyDeviceIndex::n_concepts)
      .def_property_readonly("n_entries", &PyDeviceIndex::n_entries)
      .def_property_readonly("n_full", &PyDeviceIndex::n_full)
      .def_property_readonly("nbytes", &PyDeviceIndex::nbytes);

  py::class_<PyTestDeviceBuffer>(m, "_TestDeviceBuffer",
                                 "Tests only: a device copy of a C-contiguous host array.")
      .def(py::init<py::array, int>(), py::arg("array"), py::arg("device") = 0)
      .def_property_readonly("ptr", &PyTestDeviceBuffer::ptr)
      .def_property_readonly("nbytes", &PyTestDeviceBuffer::nbytes)
      .def_property_readonly("device", &PyTestDeviceBuffer::device)
      .def("read", &PyTestDeviceBuffer::read, "The buffer's bytes, copied back to the host.");
}
