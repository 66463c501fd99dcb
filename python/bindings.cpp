// pybind11 glue for the CPU backend (module compexp_core._core): array conversion, Python-level
// shape checks, GIL release. No algorithm and no structural check lives here; see csrc/.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <vector>

#include "cpu/cpu_backend.h"
#include "cpu/last_step.h"
#include "cpu/parallel.h"
#include "glue.h"
#include "index.h"
#include "layout.h"

namespace py = pybind11;
using namespace compexp;
using namespace compexp::pyglue;

namespace {

Simd parse_simd(const std::string& s) {
  if (s == "auto") return Simd::kAuto;
  if (s == "scalar") return Simd::kScalar;
  if (s == "popcnt") return Simd::kPopcnt;
  if (s == "avx512") return Simd::kAvx512;
  throw py::value_error("simd must be 'auto', 'scalar', 'popcnt' or 'avx512', got '" + s + "'");
}

// The concept index (csrc/index.h) and the CPU operations on it.
class PyConceptIndex {
 public:
  // The arrays must have exactly the layout's dtypes (no silent cast: see exact_array).
  PyConceptIndex(int64_t n_cells, int32_t n_concepts, const py::object& block_ptr,
                 const py::object& entry_concept, const py::object& entry_words,
                 const py::object& full_ptr, const py::object& full_concept)
      : index_(concept_index_from_python(
            n_cells, n_concepts, exact_array<int64_t>(block_ptr, "block_ptr", "int64"),
            exact_array<int32_t>(entry_concept, "entry_concept", "int32"),
            exact_array<uint64_t>(entry_words, "entry_words", "uint64"),
            exact_array<int64_t>(full_ptr, "full_ptr", "int64"),
            exact_array<int32_t>(full_concept, "full_concept", "int32"))),
        view_(index_.view()) {}

  py::array_t<int64_t> primitive_counts(const py::tuple& units, const std::string& simd, int n_threads) {
    PyMaskSet u(units, view_.n_blocks, "units");
    const Simd s = parse_simd(simd);
    // Uninitialised: the kernel writes every entry.
    py::array_t<int64_t> out({u.view.n_masks, static_cast<int64_t>(view_.n_concepts)});
    int64_t* o = out.mutable_data();
    {
      py::gil_scoped_release nogil;
      cpu::primitive_counts(view_, u.view, o, s, n_threads);
    }
    return out;
  }

  py::tuple extension_counts(const py::tuple& formulas, Arr<int64_t> unit_of, const py::tuple& units,
                             const std::string& simd, int n_threads) {
    PyMaskSet fm(formulas, view_.n_blocks, "formulas");
    PyMaskSet u(units, view_.n_blocks, "units");
    require(unit_of.ndim() == 1 && unit_of.shape(0) == fm.view.n_masks, "unit_of must have one entry per formula");
    const Simd s = parse_simd(simd);
    // Uninitialised: the kernel writes every entry.
    const std::vector<py::ssize_t> shape{fm.view.n_masks, view_.n_concepts};
    py::array_t<int64_t> f(shape), g(shape);
    int64_t* fo = f.mutable_data();
    int64_t* go = g.mutable_data();
    ExtensionWork work;
    {
      py::gil_scoped_release nogil;
      work = cpu::extension_counts(view_, fm.view, unit_of.data(), u.view, fo, go, s, n_threads);
    }
    return py::make_tuple(f, g, py::make_tuple(work.formula_blocks, work.partial_entries, work.full_entries));
  }

  py::tuple materialize(const py::tuple& formulas, Arr<int64_t> src, Arr<int32_t> op,
                        Arr<int32_t> concept, int n_threads) {
    PyMaskSet fm(formulas, view_.n_blocks, "formulas");
    require(src.ndim() == 1 && op.ndim() == 1 && concept.ndim() == 1 && src.shape(0) == op.shape(0) &&
                op.shape(0) == concept.shape(0),
            "src, op and concept must be 1-D of equal length");
    MaskSet out;
    {
      py::gil_scoped_release nogil;
      out = cpu::materialize(view_, fm.view, src.shape(0), src.data(), op.data(), concept.data(), n_threads);
    }
    return mask_set_to_python(std::move(out));
  }

  // |U & C_c & C_k| for every pair of concepts, U = mask `row` of `units` (the optimal search).
  py::array_t<int64_t> unit_pair_counts(const py::tuple& units, int64_t row, int n_threads) {
    PyMaskSet u(units, view_.n_blocks, "units");
    require(row >= 0 && row < u.view.n_masks, "row must index a mask of units");
    const int64_t K = view_.n_concepts;
    py::array_t<int64_t> out({K, K});
    int64_t* o = out.mutable_data();
    {
      py::gil_scoped_release nogil;
      cpu::unit_pair_counts(view_, u.view, row, o, n_threads);
    }
    return out;
  }

  py::array_t<int64_t> concept_sizes() {
    std::vector<int64_t> out(view_.n_concepts);
    cpu::concept_sizes(view_, out.data());
    return to_numpy(std::move(out), {view_.n_concepts});
  }

  int64_t n_cells() const { return view_.n_cells; }
  int64_t n_blocks() const { return view_.n_blocks; }
  int32_t n_concepts() const { return view_.n_concepts; }

 private:
  ConceptIndex index_;
  const ConceptIndexView& view_;
};

class PyBuilder {
 public:
  PyBuilder(int64_t n_samples, int64_t height, int64_t width, int32_t n_concepts)
      : b_(n_samples, height, width, n_concepts), n_samples_(n_samples), height_(height), width_(width) {}

  void add_label_maps(Arr<int32_t> labels, int64_t sample_offset, Arr<int32_t> concept_of_label) {
    require(labels.ndim() == 4 && labels.shape(2) == height_ && labels.shape(3) == width_,
            "labels must be [n, n_layers, H, W] on the concept grid");
    require(concept_of_label.ndim() == 1 && concept_of_label.shape(0) >= 1, "concept_of_label must be 1-D, non-empty");
    py::gil_scoped_release nogil;
    b_.add_label_maps(labels.data(), labels.shape(0), labels.shape(1), sample_offset, concept_of_label.data(),
                      concept_of_label.shape(0));
  }
  void add_dense(Arr<uint8_t> masks, int64_t sample_offset, Arr<int32_t> concepts) {
    require(masks.ndim() == 4 && masks.shape(2) == height_ && masks.shape(3) == width_,
            "masks must be [n, k, H, W] on the concept grid");
    require(concepts.ndim() == 1 && concepts.shape(0) == masks.shape(1), "concepts must name one concept per mask plane");
    py::gil_scoped_release nogil;
    b_.add_dense(masks.data(), masks.shape(0), masks.shape(1), sample_offset, concepts.data());
  }
  void add_sample_labels(Arr<uint8_t> present, int64_t sample_offset, Arr<int32_t> concepts) {
    require(present.ndim() == 2, "present must be [n, k]");
    require(concepts.ndim() == 1 && concepts.shape(0) == present.shape(1), "concepts must name one concept per column");
    py::gil_scoped_release nogil;
    b_.add_sample_labels(present.data(), present.shape(0), present.shape(1), sample_offset, concepts.data());
  }
  py::tuple finish() {
    std::vector<int64_t> bp, fp;
    std::vector<int32_t> ec, fc;
    std::vector<uint64_t> ew;
    {
      py::gil_scoped_release nogil;
      b_.finish(bp, ec, ew, fp, fc);
    }
    const py::ssize_t nb = static_cast<py::ssize_t>(bp.size()), ne = static_cast<py::ssize_t>(ec.size()),
                      nf = static_cast<py::ssize_t>(fc.size());
    return py::make_tuple(to_numpy(std::move(bp), {nb}), to_numpy(std::move(ec), {ne}),
                          to_numpy(std::move(ew), {ne, kBlockWords}), to_numpy(std::move(fp), {nb}),
                          to_numpy(std::move(fc), {nf}));
  }

 private:
  cpu::ConceptIndexBuilder b_;
  int64_t n_samples_, height_, width_;
};

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "compexp-core CPU kernels (private; use the compexp_core package).";
  m.attr("BLOCK_WORDS") = kBlockWords;
  m.attr("BLOCK_CELLS") = kBlockCells;
  m.attr("OP_LEAF") = static_cast<int>(kLeaf);
  m.attr("OP_OR") = static_cast<int>(kOr);
  m.attr("OP_AND") = static_cast<int>(kAnd);
  m.attr("OP_AND_NOT") = static_cast<int>(kAndNot);
  m.attr("OP_OR_NOT") = static_cast<int>(kOrNot);
  m.attr("OP_COPY") = static_cast<int>(kCopy);

  m.def("best_simd", [] { return std::string(cpu::simd_name(cpu::best_simd())); },
        "Fastest popcount implementation this CPU supports.");
  m.def("simd_supported", [](const std::string& s) { return cpu::simd_supported(parse_simd(s)); });
  m.def("default_threads", [] { return cpu::default_threads(); },
        "Threads the kernels use by default: COMPEXP_NUM_THREADS when it is a whole number >= 1 "
        "(capped at max_threads()), else all hardware threads.");
  m.def("max_threads", [] { return cpu::max_threads(); },
        "The most threads a kernel uses: 4 x the hardware threads, at most 1024.");
  m.def(
      "thread_setting",
      [] {
        const cpu::ThreadSetting s = cpu::thread_setting();
        py::dict d;
        d["threads"] = s.threads;
        d["hardware"] = s.hardware;
        d["cap"] = s.cap;
        d["env"] = s.env_set ? py::object(py::str(s.env)) : py::object(py::none());
        d["source"] = s.source;
        d["note"] = s.note;
        return d;
      },
      "How default_threads() was resolved: {'threads', 'hardware', 'cap', 'env' (the raw "
      "COMPEXP_NUM_THREADS or None), 'source', 'note' (why the variable was ignored or capped)}.");

  py::class_<PyConceptIndex>(m, "ConceptIndex")
      .def(py::init<int64_t, int32_t, const py::object&, const py::object&, const py::object&,
                    const py::object&, const py::object&>(),
           py::arg("n_cells"), py::arg("n_concepts"), py::arg("block_ptr"), py::arg("entry_concept"),
           py::arg("entry_words"), py::arg("full_ptr"), py::arg("full_concept"))
      .def("primitive_counts", &PyConceptIndex::primitive_counts, py::arg("units"), py::arg("simd") = "auto",
           py::arg("n_threads") = 0)
      .def("extension_counts", &PyConceptIndex::extension_counts, py::arg("formulas"), py::arg("unit_of"),
           py::arg("units"), py::arg("simd") = "auto", py::arg("n_threads") = 0)
      .def("materialize", &PyConceptIndex::materialize, py::arg("formulas"), py::arg("src"), py::arg("op"),
           py::arg("concept"), py::arg("n_threads") = 0)
      .def("unit_pair_counts", &PyConceptIndex::unit_pair_counts, py::arg("units"), py::arg("row"),
           py::arg("n_threads") = 0)
      .def("concept_sizes", &PyConceptIndex::concept_sizes)
      .def_property_readonly("n_cells", &PyConceptIndex::n_cells)
      .def_property_readonly("n_blocks", &PyConceptIndex::n_blocks)
      .def_property_readonly("n_concepts", &PyConceptIndex::n_concepts);

  py::class_<PyBuilder>(m, "ConceptIndexBuilder")
      .def(py::init<int64_t, int64_t, int64_t, int32_t>(), py::arg("n_samples"), py::arg("height"),
           py::arg("width"), py::arg("n_concepts"))
      .def("add_label_maps", &PyBuilder::add_label_maps, py::arg("labels"), py::arg("sample_offset"),
           py::arg("concept_of_label"))
      .def("add_dense", &PyBuilder::add_dense, py::arg("masks"), py::arg("sample_offset"), py::arg("concepts"))
      .def("add_sample_labels", &PyBuilder::add_sample_labels, py::arg("present"), py::arg("sample_offset"),
           py::arg("concepts"))
      .def("finish", &PyBuilder::finish);

  m.def(
      "unit_masks_from_maps",
      [](py::array acts_in, int64_t sample_offset, int64_t H, int64_t W, Arr<double> threshold, int n_threads) {
        // float64 maps keep double precision (resized in double); every other dtype is resized
        // as float32, Pillow's mode "F".
        const bool f64 = acts_in.dtype().is(py::dtype::of<double>());
        Arr<float> a32;
        Arr<double> a64;
        py::array acts;
        if (f64) {
          a64 = acts_in.cast<Arr<double>>();
          acts = a64;
        } else {
          a32 = acts_in.cast<Arr<float>>();
          acts = a32;
        }
        require(acts.ndim() == 4, "acts must be [n, units, h, w]");
        require(threshold.ndim() == 1 && threshold.shape(0) == acts.shape(1), "threshold must have one value per unit");
        MaskSet out;
        {
          py::gil_scoped_release nogil;
          if (f64)
            out = cpu::unit_masks_from_maps(a64.data(), acts.shape(0), acts.shape(1), acts.shape(2), acts.shape(3),
                                            sample_offset, H, W, threshold.data(), n_threads);
          else
            out = cpu::unit_masks_from_maps(a32.data(), acts.shape(0), acts.shape(1), acts.shape(2), acts.shape(3),
                                            sample_offset, H, W, threshold.data(), n_threads);
        }
        return mask_set_to_python(std::move(out));
      },
      py::arg("acts"), py::arg("sample_offset"), py::arg("height"), py::arg("width"), py::arg("threshold"),
      py::arg("n_threads") = 0);
  m.def(
      "unit_masks_from_bool",
      [](Arr<uint8_t> masks, int64_t sample_offset, int n_threads) {
        require(masks.ndim() == 4, "masks must be [n, units, H, W]");
        MaskSet out;
        {
          py::gil_scoped_release nogil;
          out = cpu::unit_masks_from_bool(masks.data(), masks.shape(0), masks.shape(1), masks.shape(2),
                                          masks.shape(3), sample_offset, n_threads);
        }
        return mask_set_to_python(std::move(out));
      },
      py::arg("masks"), py::arg("sample_offset"), py::arg("n_threads") = 0);
  m.def(
      "merge_mask_parts",
      [](const std::vector<py::tuple>& parts) {
        // Copy into owned sets (parts are small relative to the kernels' work).
        std::vector<MaskSet> owned(parts.size());
        std::vector<const MaskSet*> ptrs;
        for (size_t i = 0; i < parts.size(); ++i) {
          PyMaskSet p(parts[i], INT64_MAX, "part");
          owned[i].ptr.assign(p.ptr.data(), p.ptr.data() + p.ptr.shape(0));
          owned[i].block.assign(p.block.data(), p.block.data() + p.block.shape(0));
          owned[i].words.assign(p.words.data(), p.words.data() + p.words.size());
          ptrs.push_back(&owned[i]);
        }
        MaskSet out;
        {
          py::gil_scoped_release nogil;
          out = cpu::merge_mask_parts(ptrs);
        }
        return mask_set_to_python(std::move(out));
      },
      py::arg("parts"));
  m.def(
      "mask_popcounts",
      [](const py::tuple& masks, int n_threads) {
        PyMaskSet p(masks, INT64_MAX, "masks");
        std::vector<int64_t> out(p.view.n_masks);
        {
          py::gil_scoped_release nogil;
          cpu::mask_popcounts(p.view, out.data(), n_threads);
        }
        return to_numpy(std::move(out), {p.view.n_masks});
      },
      py::arg("masks"), py::arg("n_threads") = 0);

  m.def(
      "last_step_children",
      [](Arr<int64_t> f, Arr<int64_t> g, Arr<int64_t> parent_tp, Arr<int64_t> parent_size,
         Arr<int32_t> parent_concepts, Arr<int32_t> parent_ops, Arr<int64_t> prim, Arr<int64_t> sizes,
         int64_t unit_size, int64_t n_cells, int metric, std::vector<int32_t> ops, bool allow_repeats,
         double child_factor, double bound_factor, bool bound_children, Arr<int64_t> leaf_f,
         Arr<int64_t> leaf_g, Arr<uint8_t> leaf_have, double incumbent, bool keep_ties, int n_threads) {
        require(f.ndim() == 2 && g.ndim() == 2 && f.shape(0) == g.shape(0) && f.shape(1) == g.shape(1),
                "f and g must be [n_parents, K] of one shape");
        const int64_t n = f.shape(0), K = f.shape(1);
        require(prim.ndim() == 1 && prim.shape(0) == K && sizes.ndim() == 1 && sizes.shape(0) == K,
                "prim and sizes must be [K] with K = f.shape[1]");
        require(parent_tp.ndim() == 1 && parent_tp.shape(0) == n && parent_size.ndim() == 1 &&
                    parent_size.shape(0) == n, "parent_tp and parent_size must be [n_parents]");
        require(parent_concepts.ndim() == 2 && parent_concepts.shape(0) == n && parent_concepts.shape(1) >= 1,
                "parent_concepts must be [n_parents, l] with l >= 1");
        const int64_t len = parent_concepts.shape(1);
        require(parent_ops.ndim() == 2 && parent_ops.shape(0) == n && parent_ops.shape(1) == len - 1,
                "parent_ops must be [n_parents, l - 1]");
        const bool leaves = leaf_have.size() > 0;
        require(!leaves || (leaf_have.ndim() == 1 && leaf_have.shape(0) == K && leaf_f.ndim() == 2 &&
                            leaf_f.shape(0) == K && leaf_f.shape(1) == K && leaf_g.ndim() == 2 &&
                            leaf_g.shape(0) == K && leaf_g.shape(1) == K),
                "leaf_f and leaf_g must be [K, K] and leaf_have [K] (or leaf_have empty: no pair bounds)");
        cpu::LastStepInput in;
        in.n_parents = n; in.n_concepts = K; in.f = f.data(); in.g = g.data();
        in.parent_tp = parent_tp.data(); in.parent_size = parent_size.data(); in.parent_len = len;
        in.parent_concepts = parent_concepts.data(); in.parent_ops = parent_ops.data();
        in.prim = prim.data(); in.sizes = sizes.data(); in.unit_size = unit_size; in.n_cells = n_cells;
        in.metric = static_cast<cpu::Metric>(metric); in.ops = std::move(ops); in.allow_repeats = allow_repeats;
        in.child_factor = child_factor; in.bound_factor = bound_factor; in.bound_children = bound_children;
        if (leaves) { in.leaf_f = leaf_f.data(); in.leaf_g = leaf_g.data(); in.leaf_have = leaf_have.data(); }
        in.incumbent = incumbent; in.keep_ties = keep_ties;
        cpu::LastStepOutput r;
        {
          py::gil_scoped_release nogil;
          r = cpu::last_step_children(in, n_threads);
        }
        const py::ssize_t s = static_cast<py::ssize_t>(r.tp.size());
        py::dict d;
        d["n_children"] = r.n_children;
        d["best"] = py::make_tuple(r.best_score, r.best_parent, r.best_op, r.best_concept, r.best_tp, r.best_size);
        d["parent"] = to_numpy(std::move(r.parent), {s});
        d["op"] = to_numpy(std::move(r.op), {s});
        d["concept"] = to_numpy(std::move(r.concept), {s});
        d["tp"] = to_numpy(std::move(r.tp), {s});
        d["size"] = to_numpy(std::move(r.size), {s});
        d["bound"] = to_numpy(std::move(r.bound), {s});
        return d;
      },
      py::arg("f"), py::arg("g"), py::arg("parent_tp"), py::arg("parent_size"), py::arg("parent_concepts"),
      py::arg("parent_ops"), py::arg("prim"), py::arg("sizes"), py::arg("unit_size"), py::arg("n_cells"),
      py::arg("metric"), py::arg("ops"), py::arg("allow_repeats"), py::arg("child_factor"),
      py::arg("bound_factor"), py::arg("bound_children"), py::arg("leaf_f"), py::arg("leaf_g"),
      py::arg("leaf_have"), py::arg("incumbent"), py::arg("keep_ties"), py::arg("n_threads") = 0);
}
