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

  int device() const { return index_->device(); }
  int64_t n_cells() const { return index_->n_cells(); }
  int64_t n_blocks() const { return index_->n_blocks(); }
  int32_t n_concepts() const { return index_->n_concepts(); }
  size_t nbytes() const { return index_->nbytes(); }

 private:
  std::unique_ptr<cuda::DeviceIndex> index_;
  const uint64_t id_ = next_index_id++;
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
      .def("copy_bandwidth", &PyDeviceIndex::copy_bandwidth, py::arg("bytes") = int64_t{1} << 30,
           py::arg("repeats") = 20,
           "Benchmark: device-to-device copy bandwidth in bytes (read + written) per second.")
      .def_property_readonly("device", &PyDeviceIndex::device)
      .def_property_readonly("n_cells", &PyDeviceIndex::n_cells)
      .def_property_readonly("n_blocks", &PyDeviceIndex::n_blocks)
      .def_property_readonly("n_concepts", &PyDeviceIndex::n_concepts)
      .def_property_readonly("nbytes", &PyDeviceIndex::nbytes);
}
