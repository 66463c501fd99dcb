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
    // All of ptr first: a pointer past the end followed by a smaller one must not send the
    // block loop below past the end of the arrays.
    for (int64_t m = 0; m < n; ++m)
      require(p[m] <= p[m + 1], std::string(what) + ": ptr is not non-decreasing");
    for (int64_t m = 0; m < n; ++m) {
      for (int64_t q = p[m]; q < p[m + 1]; ++q) {
        require(b[q] >= 0 && b[q] < n_blocks, std::string(what) + ": block id out of range");
        require(q == p[m] || b[q - 1] < b[q], std::string(what) + ": block ids not increasing");
      }
    }
    view = MaskSetView{n, p, b, words.data()};
  }
};

// The concept index's block-major arrays from Python, checked once (the kernels trust them),
// with the concept-major view built by the CPU code. Owns (references to) every array `view`
// points into, so it is neither copied nor moved.
struct PyIndexArrays {
  Arr<int64_t> block_ptr;
  Arr<int32_t> entry_concept;
  Arr<uint64_t> entry_words;
  Arr<int64_t> full_ptr;
  Arr<int32_t> full_concept;
  std::vector<int64_t> concept_ptr, concept_block, concept_entry;
  ConceptIndexView view;

  PyIndexArrays(const PyIndexArrays&) = delete;
  PyIndexArrays& operator=(const PyIndexArrays&) = delete;

  PyIndexArrays(int64_t n_cells, int32_t n_concepts, Arr<int64_t> block_ptr_in,
                Arr<int32_t> entry_concept_in, Arr<uint64_t> entry_words_in,
                Arr<int64_t> full_ptr_in, Arr<int32_t> full_concept_in)
      : block_ptr(block_ptr_in), entry_concept(entry_concept_in), entry_words(entry_words_in),
        full_ptr(full_ptr_in), full_concept(full_concept_in) {
    require(n_cells > 0, "n_cells must be positive");
    require(n_concepts > 0, "n_concepts must be positive");
    const int64_t nb = blocks_for_cells(n_cells);
    require(block_ptr.ndim() == 1 && block_ptr.shape(0) == nb + 1, "block_ptr must have n_blocks + 1 entries");
    require(full_ptr.ndim() == 1 && full_ptr.shape(0) == nb + 1, "full_ptr must have n_blocks + 1 entries");
    const int64_t ne = entry_concept.ndim() == 1 ? entry_concept.shape(0) : -1;
    require(ne >= 0 && entry_words.ndim() == 2 && entry_words.shape(0) == ne &&
                entry_words.shape(1) == kBlockWords,
            "entry_words must be [n_entries, 8] matching entry_concept");
    require(full_concept.ndim() == 1, "full_concept must be 1-D");
    const int64_t* bp = block_ptr.data();
    const int64_t* fp = full_ptr.data();
    require(bp[0] == 0 && bp[nb] == ne, "block_ptr does not span the entries");
    require(fp[0] == 0 && fp[nb] == full_concept.shape(0), "full_ptr does not span full_concept");
    for (int64_t b = 0; b < nb; ++b)
      require(bp[b] <= bp[b + 1] && fp[b] <= fp[b + 1], "block pointers must be non-decreasing");
    for (int64_t e = 0; e < ne; ++e)
      require(entry_concept.data()[e] >= 0 && entry_concept.data()[e] < n_concepts, "entry concept out of range");
    for (int64_t q = 0; q < full_concept.shape(0); ++q)
      require(full_concept.data()[q] >= 0 && full_concept.data()[q] < n_concepts, "full concept out of range");
    view.n_cells = n_cells;
    view.n_blocks = nb;
    view.n_concepts = n_concepts;
    view.block_ptr = bp;
    view.entry_concept = entry_concept.data();
    view.entry_words = entry_words.data();
    view.full_ptr = fp;
    view.full_concept = full_concept.data();
    const int64_t n_items = ne + full_concept.shape(0);
    concept_ptr.resize(static_cast<size_t>(n_concepts) + 1);
    concept_block.resize(n_items);
    concept_entry.resize(n_items);
    cpu::build_concept_major(view, concept_ptr.data(), concept_block.data(), concept_entry.data());
    view.concept_ptr = concept_ptr.data();
    view.concept_block = concept_block.data();
    view.concept_entry = concept_entry.data();
  }
};

}  // namespace compexp::pyglue
