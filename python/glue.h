// Glue shared by the pybind11 modules (_core, _cuda): NumPy arrays without copies, mask sets
// and the concept index from and to Python. Only conversion and Python-level shape checks
// live here; the structural checks are csrc/'s (checks.h, index.h).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "checks.h"
#include "index.h"
#include "layout.h"

namespace compexp::pyglue {

namespace py = pybind11;

template <class T>
using Arr = py::array_t<T, py::array::c_style | py::array::forcecast>;

// The array `obj` as Arr<T>, refusing (TypeError naming `what`) anything that is not a NumPy
// array of exactly T's dtype: for index arrays, where forcecast would silently truncate floats
// or wrap wide integers into valid-looking values. A non-contiguous array is copied.
template <class T>
Arr<T> exact_array(const py::handle& obj, const char* what, const char* dtype_name) {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(std::string(what) + " must be a NumPy " + dtype_name + " array, got " +
                         std::string(py::str(py::type::handle_of(obj).attr("__name__"))));
  if (!py::isinstance<py::array_t<T>>(obj))
    throw py::type_error(std::string(what) + " must be a NumPy " + dtype_name + " array, got dtype " +
                         std::string(py::str(py::reinterpret_borrow<py::array>(obj).dtype())));
  return py::reinterpret_borrow<py::array>(obj).cast<Arr<T>>();
}

// Moves a vector into a NumPy array without copying.
template <class T>
py::array_t<T> to_numpy(std::vector<T>&& v, std::vector<py::ssize_t> shape) {
  auto* heap = new std::vector<T>(std::move(v));
  py::capsule owner(heap, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>(shape, heap->data(), owner);
}

// A mask set as the (ptr, block, words) tuple of NumPy arrays (moved, not copied).
inline py::tuple mask_set_to_python(MaskSet&& m) {
  const py::ssize_t nb = static_cast<py::ssize_t>(m.block.size());
  const py::ssize_t n = static_cast<py::ssize_t>(m.ptr.size());
  return py::make_tuple(to_numpy(std::move(m.ptr), {n}), to_numpy(std::move(m.block), {nb}),
                        to_numpy(std::move(m.words), {nb, kBlockWords}));
}

// Raises ValueError(msg) unless ok.
inline void require(bool ok, const std::string& msg) {
  if (!ok) throw py::value_error(msg);
}

// A Python object kept alive by a C++ owner handle; released with the GIL held, wherever the
// last handle dies.
inline std::shared_ptr<const void> keep_alive(py::object obj) {
  return std::shared_ptr<const void>(new py::object(std::move(obj)), [](const void* p) {
    py::gil_scoped_acquire gil;
    delete static_cast<const py::object*>(p);
  });
}

// A block-sparse mask set passed from Python as (ptr, block, words): shapes checked here,
// structure by check_mask_set against n_blocks, so the kernels can trust `view`.
struct PyMaskSet {
  Arr<int64_t> ptr, block;
  Arr<uint64_t> words;
  MaskSetView view;
  PyMaskSet(const py::tuple& t, int64_t n_blocks, const char* what) {
    require(t.size() == 3, std::string(what) + " must be a (ptr, block, words) tuple");
    ptr = t[0].cast<Arr<int64_t>>();
    block = t[1].cast<Arr<int64_t>>();
    words = t[2].cast<Arr<uint64_t>>();
    require(ptr.ndim() == 1 && ptr.shape(0) >= 1, std::string(what) + ": ptr must be 1-D, non-empty");
    require(block.ndim() == 1, std::string(what) + ": block must be 1-D");
    require(words.ndim() == 2 && words.shape(0) == block.shape(0) && words.shape(1) == kBlockWords,
            std::string(what) + ": words must be [n_blocks_stored, 8]");
    view = MaskSetView{ptr.shape(0) - 1, ptr.data(), block.data(), words.data()};
    check_mask_set(view, block.shape(0), n_blocks, what);
  }
};

// The concept index from the Python block-major arrays: their shapes are checked here, the
// rest (and the concept-major view) by ConceptIndex, with the GIL released. The index holds
// the arrays (no copy) until it is destroyed.
inline ConceptIndex concept_index_from_python(int64_t n_cells, int32_t n_concepts,
                                              Arr<int64_t> block_ptr, Arr<int32_t> entry_concept,
                                              Arr<uint64_t> entry_words, Arr<int64_t> full_ptr,
                                              Arr<int32_t> full_concept) {
  require(block_ptr.ndim() == 1, "block_ptr must be 1-D");
  require(full_ptr.ndim() == 1, "full_ptr must be 1-D");
  const int64_t ne = entry_concept.ndim() == 1 ? entry_concept.shape(0) : -1;
  require(ne >= 0 && entry_words.ndim() == 2 && entry_words.shape(0) == ne &&
              entry_words.shape(1) == kBlockWords,
          "entry_words must be [n_entries, 8] matching entry_concept");
  require(full_concept.ndim() == 1, "full_concept must be 1-D");
  BlockMajorArrays a;
  a.block_ptr = block_ptr.data();
  a.n_block_ptr = block_ptr.shape(0);
  a.entry_concept = entry_concept.data();
  a.entry_words = entry_words.data();
  a.n_entries = ne;
  a.full_ptr = full_ptr.data();
  a.n_full_ptr = full_ptr.shape(0);
  a.full_concept = full_concept.data();
  a.n_full = full_concept.shape(0);
  std::shared_ptr<const void> owner =
      keep_alive(py::make_tuple(block_ptr, entry_concept, entry_words, full_ptr, full_concept));
  py::gil_scoped_release nogil;
  return ConceptIndex(n_cells, n_concepts, a, owner);
}

}  // namespace compexp::pyglue
