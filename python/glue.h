// Glue shared by the pybind11 modules (_core, _cuda): NumPy arrays without copies, mask sets
// from and to Python with their argument checks. No algorithm lives here.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "compexp.h"

namespace compexp::pyglue {

namespace py = pybind11;

template <class T>
using Arr = py::array_t<T, py::array::c_style | py::array::forcecast>;

// Moves a vector into a NumPy array without copying.
template <class T>
py::array_t<T> to_numpy(std::vector<T>&& v, std::vector<py::ssize_t> shape) {
  auto* heap = new std::vector<T>(std::move(v));
  py::capsule owner(heap, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>(shape, heap->data(), owner);
}

inline py::tuple mask_set_to_python(MaskSet&& m) {
  const py::ssize_t nb = static_cast<py::ssize_t>(m.block.size());
  const py::ssize_t n = static_cast<py::ssize_t>(m.ptr.size());
  return py::make_tuple(to_numpy(std::move(m.ptr), {n}), to_numpy(std::move(m.block), {nb}),
                        to_numpy(std::move(m.words), {nb, kBlockWords}));
}

inline void require(bool ok, const std::string& msg) {
  if (!ok) throw py::value_error(msg);
}

// A block-sparse mask set passed from Python as (ptr, block, words); checked once here so
// the kernels can trust it.
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
    const int64_t* p = ptr.data();
    const int64_t* b = block.data();
    const int64_t n = ptr.shape(0) - 1;
    require(p[0] == 0 && p[n] == block.shape(0), std::string(what) + ": ptr does not span block");
    for (int64_t m = 0; m < n; ++m) {
      require(p[m] <= p[m + 1], std::string(what) + ": ptr is not non-decreasing");
      for (int64_t q = p[m]; q < p[m + 1]; ++q) {
        require(b[q] >= 0 && b[q] < n_blocks, std::string(what) + ": block id out of range");
        require(q == p[m] || b[q - 1] < b[q], std::string(what) + ": block ids not increasing");
      }
    }
    view = MaskSetView{n, p, b, words.data()};
  }
};

}  // namespace compexp::pyglue
