// pybind11 glue for the CUDA backend (module compexp_core._cuda): argument checks, array
// conversion, GIL release. Same argument and return conventions as the CPU ConceptIndex in
// bindings.cpp; no algorithm lives here (see csrc/cuda/).
//
// CUDA failures are std::runtime_error carrying the CUDA error text (Python RuntimeError);
// bad arguments are ValueError, as on the CPU.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <vector>

#include "compexp.h"
#include "glue.h"
#include "cuda/cuda_backend.h"

namespace py = pybind11;
using namespace compexp;
using namespace compexp::pyglue;

namespace {

// A mask set on the GPU (from DeviceConceptIndex.upload or materialize(on_device=True)).
// Reads like the (ptr, block, words) tuple: ptr is kept on the host, block and words are
// downloaded when asked for.
struct PyDeviceMasks {
  std::shared_ptr<const cuda::DeviceMaskSet> masks;
  int64_t n_blocks = 0;  // of the index that made it: its block ids are below this
  int device = 0;        // the GPU holding it
};

// The concept index on a GPU: uploaded once at construction, then counts and materialisation.
class PyDeviceIndex {
 public:
  PyDeviceIndex(int64_t n_cells, int32_t n_concepts, Arr<int64_t> block_ptr, Arr<int32_t> entry_concept,
                Arr<uint64_t> entry_words, Arr<int64_t> full_ptr, Arr<int32_t> full_concept, int device) {
    // The concept-major view is built on the host by the CPU code (the same arrays the CPU
    // materialisation walks) and uploaded with the rest.
    const PyIndexArrays arrays(n_cells, n_concepts, block_ptr, entry_concept, entry_words,
                               full_ptr, full_concept);
    const ConceptIndexView& v = arrays.view;
    py::gil_scoped_release nogil;
    index_ = std::make_unique<cuda::DeviceIndex>(v, device);
  }

  // A mask-set argument: a DeviceMasks handle made by this index (used in place), or a
  // (ptr, block, words) tuple, checked and uploaded now.
  std::shared_ptr<const cuda::DeviceMaskSet> device_masks(const py::object& obj, const char* what) {
    if (py::isinstance<PyDeviceMasks>(obj)) {
      const PyDeviceMasks& h = obj.cast<const PyDeviceMasks&>();
      require(h.n_blocks == index_->n_blocks() && h.device == index_->device(),
              std::string(what) + ": device masks of another concept index or GPU");
      return h.masks;
    }
    require(py::isinstance<py::tuple>(obj), std::string(what) + " must be a (ptr, block, words) tuple or DeviceMasks");
    PyMaskSet host(obj.cast<py::tuple>(), index_->n_blocks(), what);
    py::gil_scoped_release nogil;
    return std::make_shared<const cuda::DeviceMaskSet>(index_->upload(host.view));
  }

  void check_unit_of(const Arr<int64_t>& unit_of, int64_t n_formulas, int64_t n_units) {
    require(unit_of.ndim() == 1 && unit_of.shape(0) == n_formulas, "unit_of must have one entry per formula");
    for (int64_t i = 0; i < n_formulas; ++i)
      require(unit_of.data()[i] >= 0 && unit_of.data()[i] < n_units, "unit_of index out of range");
  }

  PyDeviceMasks handle(std::shared_ptr<const cuda::DeviceMaskSet> m) const {
    return PyDeviceMasks{std::move(m), index_->n_blocks(), index_->device()};
  }

  PyDeviceMasks upload(const py::tuple& masks) { return handle(device_masks(masks, "masks")); }

  py::tuple download(const PyDeviceMasks& masks) {
    require(masks.n_blocks == index_->n_blocks() && masks.device == index_->device(),
            "masks: device masks of another concept index or GPU");
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
    check_unit_of(unit_of, df->n_masks, du->n_masks);
    const std::vector<py::ssize_t> shape{df->n_masks, index_->n_concepts()};
    py::array_t<int64_t> f(shape), g(shape);
    int64_t* fo = f.mutable_data();
    int64_t* go = g.mutable_data();
    {
      py::gil_scoped_release nogil;
      index_->extension_counts(*df, unit_of.data(), *du, fo, go);
    }
    return py::make_tuple(f, g);
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
    check_unit_of(unit_of, df->n_masks, du->n_masks);
    py::gil_scoped_release nogil;
    return index_->time_extension_counts(*df, unit_of.data(), *du, repeats);
  }

  double copy_bandwidth(int64_t bytes, int repeats) {
    require(bytes > 0 && repeats > 0, "bytes and repeats must be positive");
    py::gil_scoped_release nogil;
    return index_->copy_bandwidth(static_cast<size_t>(bytes), repeats);
  }

  int device() const { return index_->device(); }
  int64_t n_cells() const { return index_->n_cells(); }
  int64_t n_blocks() const { return index_->n_blocks(); }
  int32_t n_concepts() const { return index_->n_concepts(); }
  size_t nbytes() const { return index_->nbytes(); }

 private:
  std::unique_ptr<cuda::DeviceIndex> index_;
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

  py::class_<PyDeviceMasks>(m, "DeviceMasks")
      .def_property_readonly("n_masks", [](const PyDeviceMasks& h) { return h.masks->n_masks; })
      .def_property_readonly("nbytes", [](const PyDeviceMasks& h) {
        return h.masks->ptr.bytes() + h.masks->block.bytes() + h.masks->words.bytes();
      })
      .def("__len__", [](const PyDeviceMasks&) { return 3; })
      .def("__getitem__", [](const PyDeviceMasks& h, int i) -> py::object {
        // As the tuple: 0 ptr, 1 block, 2 words (block and words are copied from the GPU).
        if (i < 0) i += 3;
        if (i == 0) {
          std::vector<int64_t> ptr = h.masks->host_ptr;
          const py::ssize_t n = static_cast<py::ssize_t>(ptr.size());
          return to_numpy(std::move(ptr), {n});
        }
        if (i != 1 && i != 2) throw py::index_error("DeviceMasks has 3 items: ptr, block, words");
        const int64_t nnz = h.masks->nnz();
        const size_t count = static_cast<size_t>(nnz) * (i == 1 ? 1 : kBlockWords);
        std::vector<uint64_t> buf(count);
        {
          py::gil_scoped_release nogil;
          const void* src = i == 1 ? static_cast<const void*>(h.masks->block.data())
                                   : static_cast<const void*>(h.masks->words.data());
          if (count) COMPEXP_CUDA_CHECK(cudaMemcpy(buf.data(), src, count * sizeof(uint64_t), cudaMemcpyDeviceToHost));
        }
        if (i == 2) return to_numpy(std::move(buf), {static_cast<py::ssize_t>(nnz), kBlockWords});
        std::vector<int64_t> block(buf.begin(), buf.end());
        return to_numpy(std::move(block), {static_cast<py::ssize_t>(nnz)});
      });

  py::class_<PyDeviceIndex>(m, "DeviceConceptIndex")
      .def(py::init<int64_t, int32_t, Arr<int64_t>, Arr<int32_t>, Arr<uint64_t>, Arr<int64_t>, Arr<int32_t>, int>(),
           py::arg("n_cells"), py::arg("n_concepts"), py::arg("block_ptr"), py::arg("entry_concept"),
           py::arg("entry_words"), py::arg("full_ptr"), py::arg("full_concept"), py::arg("device") = 0)
      .def("upload", &PyDeviceIndex::upload, py::arg("masks"),
           "Copy a (ptr, block, words) mask set to the GPU once; the kernels accept the handle.")
      .def("download", &PyDeviceIndex::download, py::arg("masks"))
      .def("primitive_counts", &PyDeviceIndex::primitive_counts, py::arg("units"))
      .def("extension_counts", &PyDeviceIndex::extension_counts, py::arg("formulas"), py::arg("unit_of"),
           py::arg("units"))
      .def("materialize", &PyDeviceIndex::materialize, py::arg("formulas"), py::arg("src"), py::arg("op"),
           py::arg("concept"), py::arg("on_device") = false)
      .def("time_extension_counts", &PyDeviceIndex::time_extension_counts, py::arg("formulas"), py::arg("unit_of"),
           py::arg("units"), py::arg("repeats") = 20,
           "Benchmark: milliseconds of each run of the extension kernel alone (CUDA events).")
      .def("copy_bandwidth", &PyDeviceIndex::copy_bandwidth, py::arg("bytes") = int64_t{1} << 30,
           py::arg("repeats") = 20,
           "Benchmark: device-to-device copy bandwidth in bytes (read + written) per second.")
      .def_property_readonly("device", &PyDeviceIndex::device)
      .def_property_readonly("n_cells", &PyDeviceIndex::n_cells)
      .def_property_readonly("n_blocks", &PyDeviceIndex::n_blocks)
      .def_property_readonly("n_concepts", &PyDeviceIndex::n_concepts)
      .def_property_readonly("nbytes", &PyDeviceIndex::nbytes);
}
