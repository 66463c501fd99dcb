"""Tests for compexp_core.io: activation and concept files (docs/FORMAT.md).

* round trips: save_concepts -> load_concepts; write_concept_sources with each kind of source
  (and a mix) -> load_concepts equals the ConceptSet built directly from the same arrays, with
  small chunk sizes so chunk boundaries fall inside blocks; activations in every dtype and rank;
* describe() output;
* one test per error case (missing file, non-HDF5 and truncated files, wrong format, missing
  datasets and attributes, inconsistent shapes, label values outside the mapping, ...);
* the hand-written h5py examples of docs/FORMAT.md run and load;
* the docstring examples of the module run (doctest).
"""

import doctest
import gc
import os
import re
import subprocess
import sys
import tempfile

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import compexp_core.io as cio
from compexp_core.engine.concepts import ConceptSet, ConceptSetBuilder
from compexp_core.io import _h5
from compexp_core.io import (
    describe,
    load_activations,
    load_concepts,
    open_activations,
    read_activations_metadata,
    save_activations,
    save_concepts,
    write_concept_sources,
)

FORMAT_MD = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "FORMAT.md")


# ----------------------------------------------------------------------------- helpers

def assert_same_concepts(a: ConceptSet, b: ConceptSet) -> None:
    assert a.n_samples == b.n_samples
    assert a.grid == b.grid
    assert a.names == b.names
    assert a.categories == b.categories
    for field in ("block_ptr", "entry_concept", "entry_words", "full_ptr", "full_concept"):
        x, y = getattr(a.arrays, field), getattr(b.arrays, field)
        assert x.dtype == y.dtype, field
        np.testing.assert_array_equal(x, y, err_msg=field)
    np.testing.assert_array_equal(a.sizes, b.sizes)


def random_label_maps(rng, n, layers, h, w, n_labels, density=0.6):
    maps = rng.integers(1, n_labels, size=(n, layers, h, w))
    maps[rng.random(maps.shape) > density] = 0
    return maps


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def acts_file(tmp_path, rng):
    p = tmp_path / "acts.h5"
    save_activations(p, rng.standard_normal((6, 3, 2, 2)).astype(np.float32))
    return p


@pytest.fixture
def concepts_file(tmp_path, rng):
    """A sources file: label maps of one category, sample labels; 5 concepts."""
    p = tmp_path / "concepts.h5"
    maps = random_label_maps(rng, 7, 2, 4, 5, 4).astype(np.uint16)
    write_concept_sources(p, n_samples=7, grid=(4, 5), names=["a", "b", "c", "d", "e"],
                          label_maps={"object": (maps, [-1, 0, 1, 2])},
                          sample_labels=(rng.random((7, 2)) < 0.5, [3, 4]))
    return p


@pytest.fixture
def index_file(tmp_path, rng):
    """A file written by save_concepts (index only)."""
    p = tmp_path / "index.h5"
    cs = ConceptSet.from_dense(rng.random((6, 3, 8, 8)) < 0.3, names=["x", "y", "z"])
    save_concepts(p, cs)
    return p


def edit(path, fn):
    with h5py.File(path, "r+") as f:
        fn(f)


# ========================================================================= concepts: round trips

@pytest.mark.parametrize("grid", [(8, 8), (3, 5), (1, 1), (23, 29)])
def test_save_load_concepts_roundtrip(tmp_path, rng, grid):
    n = 9
    masks = rng.random((n, 4) + grid) < 0.4
    masks[:, 3] = rng.random(n)[:, None, None] < 0.5          # sample-level -> full blocks
    cs = ConceptSet.from_dense(masks, names=["sky", "living room", "héllo ✓", ""],
                               categories=["object", "scene", "", "color"])
    p = tmp_path / "c.h5"
    save_concepts(p, cs)
    back = load_concepts(p)
    assert_same_concepts(cs, back)
    np.testing.assert_array_equal(back.to_dense(), cs.to_dense())
    with h5py.File(p, "r") as f:
        assert f.attrs["format"] == b"compexp-concepts"   # fixed-length UTF-8
        assert f.attrs["version"] == 1
        assert (f.attrs["n_samples"], f.attrs["height"], f.attrs["width"]) == (n,) + grid
        assert f["index"].attrs["block_words"] == 8
        assert f["index/entry_words"].dtype == np.uint64
        assert f["index/entry_words"].shape[1] == 8
        assert f["index/block_ptr"].dtype == np.int64
        assert f["index/full_concept"].dtype == np.int32
        assert h5py.check_string_dtype(f["concept_names"].dtype).encoding == "utf-8"
        assert "label_maps" not in f and "sample_labels" not in f and "dense" not in f


def test_save_concepts_replaces_existing_file_and_leaves_no_temp(tmp_path, rng):
    p = tmp_path / "c.h5"
    p.write_text("old contents")
    cs = ConceptSet.from_dense(rng.random((3, 2, 4, 4)) < 0.5)
    save_concepts(p, cs)
    assert_same_concepts(load_concepts(p), cs)
    assert sorted(os.listdir(tmp_path)) == ["c.h5"]


def test_save_concepts_rejects_non_conceptset(tmp_path):
    with pytest.raises(TypeError, match="ConceptSet"):
        save_concepts(tmp_path / "c.h5", np.zeros((2, 2), bool))


@pytest.mark.parametrize("chunk_samples", [None, 1, 3, 100])
def test_label_maps_source_matches_direct_build(tmp_path, rng, chunk_samples):
    n, h, w = 11, 5, 7                     # 35 cells per sample: blocks span samples
    maps = random_label_maps(rng, n, 3, h, w, 6).astype(np.uint16)
    col = np.array([-1, 0, 2, -1, 1, 3])
    names = ["a", "b", "c", "d"]
    p = tmp_path / "c.h5"
    write_concept_sources(p, n_samples=n, grid=(h, w), names=names,
                          label_maps={"part": (maps, col)}, chunk_samples=chunk_samples)
    expected = ConceptSet.from_label_maps(maps, col, names, categories=["part"] * 4)
    got = load_concepts(p, chunk_samples=chunk_samples)
    assert_same_concepts(got, expected)
    with h5py.File(p, "r") as f:
        assert f["label_maps/part/maps"].dtype == np.uint16
        assert f["label_maps/part/maps"].shape == (n, 3, h, w)
        assert f["label_maps/part/concept_of_label"].dtype == np.int32
        if chunk_samples is not None:
            assert f["label_maps/part/maps"].chunks == (min(n, chunk_samples), 3, h, w)
        assert "index" not in f


def test_label_maps_3d_and_names_in_mapping(tmp_path, rng):
    maps = rng.integers(0, 3, size=(4, 6, 6)).astype(np.int32)   # [N, H, W]
    p = tmp_path / "c.h5"
    write_concept_sources(p, n_samples=4, grid=(6, 6), names=["u", "v"],
                          label_maps={"color": (maps, [None, "v", "u"])}, chunk_samples=3)
    with h5py.File(p, "r") as f:
        assert f["label_maps/color/maps"].shape == (4, 1, 6, 6)
        np.testing.assert_array_equal(f["label_maps/color/concept_of_label"][()], [-1, 1, 0])
    got = load_concepts(p).to_dense()
    np.testing.assert_array_equal(got[:, 0], maps == 2)
    np.testing.assert_array_equal(got[:, 1], maps == 1)


@pytest.mark.parametrize("grid", [(1, 1), (3, 3), (16, 32)])
def test_sample_labels_source_matches_direct_build(tmp_path, rng, grid):
    n = 40
    present = rng.random((n, 3)) < 0.5
    present[10:30, 0] = True            # long runs -> full blocks split across chunks
    p = tmp_path / "c.h5"
    write_concept_sources(p, n_samples=n, grid=grid, names=["p", "q", "r"],
                          sample_labels=(present, [2, 0, 1]), chunk_samples=7)
    expected = ConceptSet.from_sample_labels(present[:, [1, 2, 0]], grid=grid,
                                             names=["p", "q", "r"])
    for chunk in (None, 1, 7, 13):
        assert_same_concepts(load_concepts(p, chunk_samples=chunk), expected)
    with h5py.File(p, "r") as f:
        assert f["sample_labels/present"].dtype == bool
        assert f["sample_labels/concepts"].dtype == np.int32


def test_dense_source_matches_direct_build(tmp_path, rng):
    masks = rng.random((10, 3, 9, 11)) < 0.2
    p = tmp_path / "c.h5"
    write_concept_sources(p, n_samples=10, grid=(9, 11), names=["a", "b", "c", "d"],
                          categories=["x", "x", "y", "y"],
                          dense=(masks.astype(np.uint8), ["d", "a", "c"]), chunk_samples=4)
    full = np.zeros((10, 4, 9, 11), bool)
    full[:, [3, 0, 2]] = masks
    expected = ConceptSet.from_dense(full, names=["a", "b", "c", "d"],
                                     categories=["x", "x", "y", "y"])
    for chunk in (None, 3):
        got = load_concepts(p, chunk_samples=chunk)
        assert_same_concepts(got, expected)
    np.testing.assert_array_equal(got.to_dense(), full)


def test_dense_source_2d_on_unit_grid(tmp_path, rng):
    masks = rng.random((20, 2)) < 0.5
    p = tmp_path / "c.h5"
    write_concept_sources(p, n_samples=20, grid=(1, 1), names=["a", "b"], dense=(masks, [0, 1]))
    np.testing.assert_array_equal(load_concepts(p).to_dense(), masks)


def mixed_inputs(rng, n=13, h=6, w=10):
    names = [f"k{j}" for j in range(9)]
    obj = random_label_maps(rng, n, 1, h, w, 5).astype(np.uint8)
    obj_col = np.array([-1, 0, 1, 2, -1])
    part = random_label_maps(rng, n, 2, h, w, 4, density=0.3).astype(np.int64)
    part_col = np.array([-1, 3, 4, 1])          # concept 1 comes from both categories: OR-ed
    present = rng.random((n, 3)) < 0.4
    present_col = np.array([5, 6, 7])
    dense = rng.random((n, 2, h, w)) < 0.1
    dense_col = np.array([8, 0])
    return names, obj, obj_col, part, part_col, present, present_col, dense, dense_col


def mixed_expected(names, categories, n, grid, obj, obj_col, part, part_col, present, present_col,
                   dense=None, dense_col=None):
    b = ConceptSetBuilder(n, grid, names, categories)
    b.add_label_maps(obj, obj_col)
    b.add_label_maps(part, part_col)
    b.add_sample_labels(present, present_col)
    if dense is not None:
        b.add_dense(dense, dense_col)
    return b.build()


@pytest.mark.parametrize("chunk_samples", [None, 2, 5])
def test_mixed_sources_match_builder(tmp_path, rng, chunk_samples):
    names, obj, obj_col, part, part_col, present, present_col, dense, dense_col = mixed_inputs(rng)
    n, h, w = 13, 6, 10
    p = tmp_path / "mixed.h5"
    write_concept_sources(p, n_samples=n, grid=(h, w), names=names,
                          label_maps={"object": (obj, obj_col), "part": (part, part_col)},
                          sample_labels=(present, present_col), dense=(dense, dense_col),
                          chunk_samples=chunk_samples)
    # default categories: from the label-map groups, the first one wins, others ""
    cats = ["object", "object", "object", "part", "part", "", "", "", ""]
    expected = mixed_expected(names, cats, n, (h, w), obj, obj_col, part, part_col, present,
                              present_col, dense, dense_col)
    got = load_concepts(p, chunk_samples=chunk_samples)
    assert_same_concepts(got, expected)
    # and against plain NumPy
    dense_ref = np.zeros((n, 9, h, w), bool)
    for maps, col in ((obj, obj_col), (part, part_col)):
        for v, c in enumerate(col):
            if v and c >= 0:
                dense_ref[:, c] |= (maps == v).any(axis=1)
    dense_ref[:, present_col] |= present[:, :, None, None]
    dense_ref[:, dense_col] |= dense
    np.testing.assert_array_equal(got.to_dense(), dense_ref)
    with h5py.File(p, "r") as f:
        assert sorted(f["label_maps"]) == ["object", "part"]
        assert f["label_maps/part/maps"].dtype == np.int64


def test_with_index_stores_the_built_index(tmp_path, rng):
    names, obj, obj_col, part, part_col, present, present_col, _, _ = mixed_inputs(rng)
    p = tmp_path / "mixed.h5"
    cats = ["c"] * 9
    write_concept_sources(p, n_samples=13, grid=(6, 10), names=names, categories=cats,
                          label_maps={"object": (obj, obj_col), "part": (part, part_col)},
                          sample_labels=(present, present_col), with_index=True)
    expected = mixed_expected(names, cats, 13, (6, 10), obj, obj_col, part, part_col, present,
                              present_col)
    assert_same_concepts(load_concepts(p), expected)
    # the index is what is read: removing the sources changes nothing
    edit(p, lambda f: [f.__delitem__(g) for g in ("label_maps", "sample_labels")])
    assert_same_concepts(load_concepts(p), expected)


def test_index_is_preferred_over_sources(tmp_path, rng):
    masks = rng.random((4, 2, 4, 4)) < 0.5
    cs = ConceptSet.from_dense(masks)
    p = tmp_path / "c.h5"
    save_concepts(p, cs)

    def add_sources(f):
        g = f.create_group("dense")
        g["masks"] = ~masks
        g["concepts"] = np.array([0, 1], np.int32)
    edit(p, add_sources)
    assert_same_concepts(load_concepts(p), cs)


def test_sources_from_h5py_datasets_and_memmaps(tmp_path, rng):
    """Sources may be h5py datasets or memmaps; they are sliced, never read whole."""
    maps = random_label_maps(rng, 8, 1, 4, 4, 3).astype(np.uint16)
    src = tmp_path / "src.h5"
    with h5py.File(src, "w") as f:
        f["maps"] = maps
    mm = np.lib.format.open_memmap(tmp_path / "present.npy", mode="w+", dtype=bool, shape=(8, 1))
    mm[::2] = True
    mm.flush()
    p = tmp_path / "c.h5"
    with h5py.File(src, "r") as f:
        write_concept_sources(p, n_samples=8, grid=(4, 4), names=["a", "b", "c"],
                              label_maps={"object": (f["maps"], [-1, 0, 1])},
                              sample_labels=(mm, [2]), chunk_samples=3)
    del mm
    b = ConceptSetBuilder(8, (4, 4), ["a", "b", "c"], ["object", "object", ""])
    b.add_label_maps(maps, [-1, 0, 1])
    b.add_sample_labels(np.arange(8)[:, None] % 2 == 0, [2])
    assert_same_concepts(load_concepts(p), b.build())


def test_concepts_without_any_source_are_empty(tmp_path):
    p = tmp_path / "c.h5"
    write_concept_sources(p, n_samples=3, grid=(2, 2), names=["a"])
    cs = load_concepts(p)
    assert cs.sizes.tolist() == [0]
    assert "sources: none" in describe(p)


def test_load_without_concept_categories_gives_empty_categories(index_file):
    edit(index_file, lambda f: f.__delitem__("concept_categories"))
    assert load_concepts(index_file).categories == ("", "", "")


def test_load_accepts_fixed_length_and_3d_maps_written_by_hand(tmp_path):
    """Readers are lenient about what other tools write: fixed-length ASCII names, uint8 0/1
    sample labels, 3-D label maps."""
    p = tmp_path / "c.h5"
    with h5py.File(p, "w") as f:
        f.attrs.update(format=np.bytes_(b"compexp-concepts"), version=1, n_samples=3, height=2,
                       width=2)
        f["concept_names"] = np.array([b"a", b"b"])
        f["label_maps/obj/maps"] = np.array([[[1, 0], [0, 0]]] * 3, np.uint8)
        f["label_maps/obj/concept_of_label"] = np.array([-1, 0], np.int64)
        f["sample_labels/present"] = np.array([[1], [0], [1]], np.uint8)
        f["sample_labels/concepts"] = np.array([1], np.int16)
    cs = load_concepts(p)
    assert cs.names == ("a", "b")
    assert cs.sizes.tolist() == [3, 8]


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 12), h=st.integers(1, 9), w=st.integers(1, 9),
       chunk=st.integers(1, 13), layers=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
def test_random_sources_roundtrip(n, h, w, chunk, layers, seed):
    rng = np.random.default_rng(seed)
    k = 5
    names = [f"c{j}" for j in range(k)]
    maps = rng.integers(0, 4, size=(n, layers, h, w)).astype(np.uint16)
    col = rng.integers(-1, k, size=4)
    present = rng.random((n, 2)) < 0.5
    pcol = rng.integers(0, k, size=2)
    dense = rng.random((n, 1, h, w)) < 0.3
    dcol = rng.integers(0, k, size=1)
    b = ConceptSetBuilder(n, (h, w), names, [""] * k)
    b.add_label_maps(maps, col)
    b.add_sample_labels(present, pcol)
    b.add_dense(dense, dcol)
    expected = b.build()
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "c.h5")
        write_concept_sources(p, n_samples=n, grid=(h, w), names=names, categories=[""] * k,
                              label_maps={"m": (maps, col)}, sample_labels=(present, pcol),
                              dense=(dense, dcol), chunk_samples=chunk)
        assert_same_concepts(load_concepts(p, chunk_samples=chunk), expected)
        assert_same_concepts(load_concepts(p), expected)
        p2 = os.path.join(d, "c2.h5")
        save_concepts(p2, expected)
        assert_same_concepts(load_concepts(p2), expected)


def test_chunked_reading_reads_in_chunks(tmp_path, rng, monkeypatch):
    """load_concepts feeds the builder chunk_samples samples at a time."""
    maps = random_label_maps(rng, 10, 1, 3, 3, 3).astype(np.uint16)
    p = tmp_path / "c.h5"
    write_concept_sources(p, n_samples=10, grid=(3, 3), names=["a", "b"],
                          label_maps={"o": (maps, [-1, 0, 1])})
    calls = []
    original = ConceptSetBuilder.add_label_maps

    def spy(self, label_maps, concept_of_label, sample_offset=0):
        calls.append((sample_offset, np.asarray(label_maps).shape[0]))
        return original(self, label_maps, concept_of_label, sample_offset)
    monkeypatch.setattr(ConceptSetBuilder, "add_label_maps", spy)
    load_concepts(p, chunk_samples=4)
    assert calls == [(0, 4), (4, 4), (8, 2)]
    calls.clear()
    load_concepts(p)
    assert calls == [(0, 10)]


def test_default_io_rows_are_bounded_and_chunk_aligned():
    assert _h5.chunk_rows(10**6, 4 * 112 * 112 * 3) == (2 << 20) // (4 * 112 * 112 * 3)
    assert _h5.chunk_rows(5, 10) == 5
    assert _h5.chunk_rows(10**6, 10**9) == 1
    rows = _h5.io_rows(10**6, 4 * 112 * 112 * 3, 13)
    assert rows % 13 == 0 and rows * 4 * 112 * 112 * 3 <= 64 << 20
    assert _h5.io_rows(10**6, 10**9, 1) == 1


# ========================================================================= activations

@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, bool])
@pytest.mark.parametrize("shape", [(7, 3, 4, 5), (9, 4), (1, 1, 1, 1), (1, 1)])
def test_activations_roundtrip(tmp_path, rng, dtype, shape):
    acts = rng.standard_normal(shape)
    acts = (acts > 0) if dtype is bool else acts.astype(dtype)
    p = tmp_path / "a.h5"
    save_activations(p, acts, chunk_samples=2)
    back = load_activations(p)
    assert back.dtype == np.dtype(dtype) and back.shape == shape
    np.testing.assert_array_equal(back, acts)
    ds = open_activations(p)
    try:
        assert ds.shape == shape and ds.dtype == np.dtype(dtype)
        assert ds.chunks == (min(2, shape[0]),) + shape[1:]
        assert ds.compression is None
        np.testing.assert_array_equal(ds[1:3], acts[1:3])
        assert ds.file.attrs["format"] == b"compexp-activations"
        assert ds.file.attrs["version"] == 1
    finally:
        ds.file.close()


def test_activations_provenance_unit_names_and_compression(tmp_path, rng):
    acts = rng.standard_normal((12, 3, 2, 2)).astype(np.float32)
    p = tmp_path / "a.h5"
    save_activations(p, acts, model="resnet18", layer="layer4", dataset="broden",
                     unit_names=["u0", "ü1", "unit 2"], compression="gzip")
    meta = read_activations_metadata(p)
    assert meta == {"shape": (12, 3, 2, 2), "dtype": np.dtype(np.float32), "model": "resnet18",
                    "layer": "layer4", "dataset": "broden", "unit_names": ["u0", "ü1", "unit 2"]}
    with h5py.File(p, "r") as f:
        assert f["acts"].compression == "gzip"
        assert h5py.check_string_dtype(f["unit_names"].dtype).encoding == "utf-8"
    np.testing.assert_array_equal(load_activations(p), acts)
    assert re.search(r"compression gzip, 0\.00 MB \(0\.00 MB stored\)", describe(p))
    p2 = tmp_path / "b.h5"
    save_activations(p2, acts)
    assert read_activations_metadata(p2)["model"] is None
    assert read_activations_metadata(p2)["unit_names"] is None


def test_activations_default_chunks_are_a_few_mb(tmp_path):
    acts = np.zeros((300, 64, 16, 16), np.float32)           # 64 KiB per sample
    p = tmp_path / "a.h5"
    save_activations(p, acts)
    ds = open_activations(p)
    try:
        c = ds.chunks
        assert c[1:] == (64, 16, 16)
        assert 1 << 20 <= c[0] * 64 * 16 * 16 * 4 <= 4 << 20
    finally:
        ds.file.close()


def test_save_activations_accepts_lists_and_h5py_datasets(tmp_path):
    p = tmp_path / "a.h5"
    save_activations(p, [[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(load_activations(p), [[1, 2], [3, 4]])
    ds = open_activations(p)
    try:
        save_activations(tmp_path / "b.h5", ds, chunk_samples=1)
    finally:
        ds.file.close()
    np.testing.assert_array_equal(load_activations(tmp_path / "b.h5"), [[1, 2], [3, 4]])


def test_open_activations_keeps_file_alive(acts_file):
    expected = load_activations(acts_file)
    ds = open_activations(acts_file)
    gc.collect()
    assert ds.file.id.valid
    np.testing.assert_array_equal(ds[()], expected)
    ds.file.close()


def test_open_activations_accepts_file_without_format_attribute(tmp_path, rng):
    p = tmp_path / "a.h5"
    acts = rng.standard_normal((4, 2)).astype(np.float32)
    with h5py.File(p, "w") as f:
        f["acts"] = acts
    np.testing.assert_array_equal(load_activations(p), acts)
    assert "no format attribute" in describe(p)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_save_activations_rejects_non_finite(tmp_path, bad):
    acts = np.zeros((5, 2, 2, 2), np.float16)
    acts[3, 1, 0, 1] = bad
    p = tmp_path / "a.h5"
    with pytest.raises(ValueError, match=r"acts holds non-finite.*\(3, 1, 0, 1\)"):
        save_activations(p, acts, chunk_samples=2)
    assert os.listdir(tmp_path) == []          # nothing half-written is left behind


@pytest.mark.parametrize("acts, exc, msg", [
    (np.zeros((2, 3, 4), np.float32), ValueError, r"acts must be \[N, U, h, w\] or \[N, U\]"),
    (np.zeros(5, np.float32), ValueError, "acts must be"),
    (np.zeros((0, 3), np.float32), ValueError, "N >= 1"),
    (np.zeros((3, 0), np.float32), ValueError, "U >= 1"),
    (np.zeros((3, 2, 0, 2), np.float32), ValueError, "non-empty maps"),
    (np.zeros((3, 2), np.int32), TypeError, "float16, float32, float64 or bool"),
    (np.zeros((3, 2), np.complex64), TypeError, "dtype complex64"),
])
def test_save_activations_validates(tmp_path, acts, exc, msg):
    with pytest.raises(exc, match=msg):
        save_activations(tmp_path / "a.h5", acts)


def test_save_activations_validates_metadata(tmp_path):
    acts = np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError, match="unit_names has 3 entries, expected 2"):
        save_activations(tmp_path / "a.h5", acts, unit_names=["a", "b", "c"])
    with pytest.raises(TypeError, match="model must be a string"):
        save_activations(tmp_path / "a.h5", acts, model=3)
    with pytest.raises(ValueError, match="chunk_samples must be >= 1"):
        save_activations(tmp_path / "a.h5", acts, chunk_samples=0)


@pytest.mark.parametrize("make, msg", [
    (lambda f: f.__delitem__("acts"), r"no dataset 'acts'"),
    (lambda f: (f.__delitem__("acts"), f.create_dataset("acts", data=np.zeros((2, 2, 2)))),
     r"'acts' must be \[N, U, h, w\] or \[N, U\], found shape \(2, 2, 2\)"),
    (lambda f: (f.__delitem__("acts"), f.create_dataset("acts", data=np.zeros((2, 2), np.int8))),
     "found dtype int8"),
    (lambda f: (f.__delitem__("acts"), f.create_group("acts")), "'acts' must be an HDF5 dataset"),
    (lambda f: f.attrs.__setitem__("version", 2), "version 2 is not supported"),
    (lambda f: f.create_dataset("unit_names", data=np.array([b"a"])),
     r"'unit_names' has shape \(1,\) but 'acts' has U = 3"),
])
def test_open_activations_invalid_contents(acts_file, make, msg):
    edit(acts_file, make)
    with pytest.raises(ValueError, match=msg) as e:
        open_activations(acts_file)
    assert str(acts_file) in str(e.value)


def test_open_activations_without_format_or_acts(tmp_path):
    p = tmp_path / "x.h5"
    with h5py.File(p, "w") as f:
        f["other"] = np.zeros(3)
    with pytest.raises(ValueError, match="found no format attribute and no 'acts' dataset"):
        open_activations(p)


# ========================================================================= describe

def test_describe_activations(tmp_path):
    p = tmp_path / "a.h5"
    save_activations(p, np.zeros((10, 4, 3, 3), np.float16), model="resnet18", layer="layer4",
                     dataset="broden", unit_names=["a", "b", "c", "d"])
    text = describe(p)
    assert text.startswith(str(p))
    for fact in ("kind: activations", "10 samples x 4 units x 3x3 maps", "float16",
                 "(10, 4, 3, 3)", "model: resnet18", "layer: layer4", "dataset: broden",
                 "unit_names: 'a', 'b', 'c', 'd'"):
        assert fact in text, fact


def test_describe_concepts(tmp_path, rng):
    names, obj, obj_col, part, part_col, present, present_col, dense, dense_col = mixed_inputs(rng)
    p = tmp_path / "c.h5"
    write_concept_sources(p, n_samples=13, grid=(6, 10), names=names,
                          label_maps={"object": (obj, obj_col), "part": (part, part_col)},
                          sample_labels=(present, present_col), dense=(dense, dense_col))
    text = describe(p)
    for fact in ("kind: concepts", "N = 13", "grid 6x10", "780 cells", "K = 9", "object: 3",
                 "part: 2", "(no category): 4", "label_maps/object/maps", "shape (13, 1, 6, 10)",
                 "dtype uint8", "5 label values", "label_maps/part/maps", "dtype int64",
                 "sample_labels/present", "shape (13, 3)", "dense/masks", "index: none",
                 "'k0', 'k1'"):
        assert fact in text, fact
    # with an index
    save_concepts(p, load_concepts(p))
    text = describe(p)
    assert re.search(r"index: \d+\.\d\d MB, 2 blocks of 512 cells, \d+ partial \+ \d+ full", text)
    assert "sources: none" in text


def test_describe_results_file_generically(tmp_path):
    p = tmp_path / "r.h5"
    with h5py.File(p, "w") as f:
        f.attrs["format"] = "compexp-results"
        f.attrs["version"] = 1
        f.attrs["config"] = '{"beam": 5}'
        f["iou"] = np.zeros((512, 3))
        f["formulas/text"] = np.array([b"a", b"b"])
        f["formulas/text"].attrs["note"] = "best first"
    text = describe(p)
    for fact in ("kind: results (compexp-results)", "@config: {\"beam\": 5}", "iou: shape (512, 3)",
                 "float64", "formulas/", "formulas/text: shape (2,)", "@note: best first"):
        assert fact in text, fact


def test_describe_unknown_hdf5_file(tmp_path):
    p = tmp_path / "x.h5"
    with h5py.File(p, "w") as f:
        f.attrs["format"] = "something-else"
        f["data"] = np.zeros(4, np.int16)
    text = describe(p)
    assert "unknown HDF5 file (format = 'something-else')" in text
    assert "data: shape (4,), dtype int16" in text


def test_describe_reports_errors_of_required_parts(index_file):
    edit(index_file, lambda f: f.__delitem__("concept_names"))
    with pytest.raises(ValueError, match="no dataset 'concept_names'"):
        describe(index_file)


# ========================================================================= errors: opening

READERS = [load_concepts, open_activations, load_activations, describe, read_activations_metadata]


@pytest.mark.parametrize("reader", READERS)
def test_missing_file(tmp_path, reader):
    p = tmp_path / "nope.h5"
    with pytest.raises(FileNotFoundError) as e:
        reader(p)
    assert str(p) in str(e.value)
    assert e.value.filename == str(p)


@pytest.mark.parametrize("reader", READERS)
def test_text_file_is_not_hdf5(tmp_path, reader):
    p = tmp_path / "notes.h5"
    p.write_text("this is not an HDF5 file\n")
    with pytest.raises(ValueError, match="not a readable HDF5 file") as e:
        reader(p)
    assert str(p) in str(e.value)


@pytest.mark.parametrize("reader", READERS)
def test_empty_file_is_not_hdf5(tmp_path, reader):
    p = tmp_path / "empty.h5"
    p.write_bytes(b"")
    with pytest.raises(ValueError, match=f"'{re.escape(str(p))}' is not a readable HDF5 file"):
        reader(p)


@pytest.mark.parametrize("which", ["acts", "concepts"])
@pytest.mark.parametrize("fraction", [0.5, 0.95])
def test_truncated_file(tmp_path, rng, which, fraction):
    p = tmp_path / "t.h5"
    if which == "acts":
        save_activations(p, rng.standard_normal((64, 8, 8, 8)).astype(np.float32))
        readers = [open_activations, load_activations, describe]
    else:
        save_concepts(p, ConceptSet.from_dense(rng.random((32, 4, 16, 16)) < 0.5))
        readers = [load_concepts, describe]
    data = p.read_bytes()
    p.write_bytes(data[:int(len(data) * fraction)])
    for reader in readers:
        with pytest.raises(ValueError, match="not a readable HDF5 file") as e:
            reader(p)
        assert str(p) in str(e.value)


_FUZZ_SCRIPT = r"""
import sys
import numpy as np
import compexp_core.io as cio

src, which, out = sys.argv[1], sys.argv[2], sys.argv[3]
readers = ([cio.load_activations, cio.read_activations_metadata, cio.describe]
           if which == "acts" else [cio.load_concepts, cio.describe])
rng = np.random.default_rng(7)
data = open(src, "rb").read()
failures = 0
for _ in range(60):
    b = bytearray(data)
    for i in rng.integers(0, len(b), size=rng.integers(1, 5)):
        b[i] = rng.integers(0, 256)
    with open(out, "wb") as fh:
        fh.write(bytes(b))
    for reader in readers:
        try:
            reader(out)
        except ValueError as e:
            assert out in str(e), str(e)
            failures += 1
print("value errors:", failures)
"""


@pytest.mark.parametrize("which", ["acts", "concepts"])
def test_corrupted_bytes_give_value_error_or_load(tmp_path, rng, which):
    """Random byte flips anywhere in a file: a reader either succeeds (the flip hit data) or
    raises ValueError naming the file; h5py's OSError/RuntimeError/KeyError/TypeError never
    leak out and the interpreter never crashes. Run in a subprocess: HDF5 itself can loop
    forever on some corrupted metadata, which only a timeout can stop (then the test skips)."""
    p = tmp_path / "f.h5"
    if which == "acts":
        save_activations(p, rng.standard_normal((20, 3, 4, 4)).astype(np.float32),
                         chunk_samples=3, unit_names=list("xyz"), model="m")
    else:
        write_concept_sources(p, n_samples=20, grid=(8, 8), names=list("abcd"),
                              label_maps={"o": (rng.integers(0, 4, (20, 2, 8, 8)), [-1, 0, 1, 2])},
                              sample_labels=(rng.random((20, 1)) < 0.5, [3]), chunk_samples=3,
                              with_index=True)
    try:
        r = subprocess.run([sys.executable, "-c", _FUZZ_SCRIPT, str(p), which,
                            str(tmp_path / "t.h5")], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.skip("the HDF5 library hung on a corrupted file (a known HDF5 limitation)")
    assert r.returncode == 0, f"exit status {r.returncode}\n{r.stdout}\n{r.stderr[-3000:]}"
    assert int(r.stdout.split("value errors:")[1]) > 0


def test_directory_is_not_a_file(tmp_path):
    with pytest.raises(IsADirectoryError):
        load_concepts(tmp_path)


# ========================================================================= errors: format

def test_load_concepts_on_activations_file(acts_file):
    with pytest.raises(ValueError, match="expected root attribute format = 'compexp-concepts', "
                                         "found format = 'compexp-activations'") as e:
        load_concepts(acts_file)
    assert str(acts_file) in str(e.value)


def test_open_activations_on_concepts_file(index_file):
    with pytest.raises(ValueError, match="expected root attribute format = 'compexp-activations', "
                                         "found format = 'compexp-concepts'"):
        open_activations(index_file)


def test_load_concepts_without_format_attribute(index_file):
    edit(index_file, lambda f: f.attrs.__delitem__("format"))
    with pytest.raises(ValueError, match="found no format attribute"):
        load_concepts(index_file)


def test_load_concepts_newer_version(index_file):
    edit(index_file, lambda f: f.attrs.__setitem__("version", 7))
    with pytest.raises(ValueError, match="compexp-concepts version 7 is not supported"):
        load_concepts(index_file)


# ========================================================================= errors: missing parts

@pytest.mark.parametrize("which, make, msg", [
    ("index", lambda f: f.__delitem__("concept_names"), "has no dataset 'concept_names'"),
    ("index", lambda f: f.attrs.__delitem__("n_samples"), "has no root attribute 'n_samples'"),
    ("index", lambda f: f.attrs.__delitem__("width"), "has no root attribute 'width'"),
    ("index", lambda f: f.__delitem__("index/entry_words"), "has no dataset 'index/entry_words'"),
    ("index", lambda f: f.__delitem__("index/full_ptr"), "has no dataset 'index/full_ptr'"),
    ("index", lambda f: f["index"].attrs.__delitem__("block_words"),
     "group 'index' has no attribute 'block_words'"),
    ("sources", lambda f: f.__delitem__("label_maps/object/maps"),
     "has no dataset 'label_maps/object/maps'"),
    ("sources", lambda f: f.__delitem__("label_maps/object/concept_of_label"),
     "has no dataset 'label_maps/object/concept_of_label'"),
    ("sources", lambda f: f.__delitem__("sample_labels/concepts"),
     "has no dataset 'sample_labels/concepts'"),
    ("sources", lambda f: f.__delitem__("sample_labels/present"),
     "has no dataset 'sample_labels/present'"),
    ("sources", lambda f: f.create_group("dense"), "has no dataset 'dense/masks'"),
])
def test_missing_datasets_and_attributes(index_file, concepts_file, which, make, msg):
    p = index_file if which == "index" else concepts_file
    edit(p, make)
    with pytest.raises(ValueError, match=msg) as e:
        load_concepts(p)
    assert str(p) in str(e.value)


# ========================================================================= errors: shapes

def _replace(name, data):
    def fn(f):
        del f[name]
        f[name] = data
    return fn


@pytest.mark.parametrize("which, make, msg", [
    ("sources", _replace("label_maps/object/maps", np.zeros((6, 2, 4, 5), np.uint16)),
     r"'label_maps/object/maps' has shape \(6, 2, 4, 5\), expected \[N=7, L, H=4, W=5\]"),
    ("sources", _replace("label_maps/object/maps", np.zeros((7, 2, 5, 4), np.uint16)),
     r"'label_maps/object/maps' has shape \(7, 2, 5, 4\), expected \[N=7, L, H=4, W=5\]"),
    ("sources", _replace("label_maps/object/maps", np.zeros((7, 2, 4, 5), np.float32)),
     "'label_maps/object/maps' must hold integers"),
    ("sources", _replace("sample_labels/present", np.zeros((8, 2), bool)),
     r"'sample_labels/present' has shape \(8, 2\), expected \[N=7, k\]"),
    ("sources", _replace("sample_labels/concepts", np.array([3], np.int32)),
     r"'sample_labels/concepts' has shape \(1,\) but 'sample_labels/present' has 2 columns"),
    ("sources", _replace("sample_labels/concepts", np.array([3, 5], np.int32)),
     r"'sample_labels/concepts' holds concept index 5 .* outside 0..4 \(K = 5"),
    ("sources", _replace("label_maps/object/concept_of_label", np.array([-1, 0, 9, 2], np.int32)),
     r"'label_maps/object/concept_of_label' holds concept index 9 at position 2"),
    ("sources", _replace("concept_categories", np.array([b"a", b"b"])),
     r"'concept_categories' has shape \(2,\) but 'concept_names' has shape \(5,\)"),
    ("sources", _replace("concept_names", np.array([b"a", b"b", b"c", b"d", b"a"])),
     "concept_names must be unique"),
    ("sources", _replace("concept_names", np.arange(5)), "'concept_names' must hold strings"),
    ("sources", lambda f: f.attrs.__setitem__("height", 0), "'height' must be >= 1"),
    ("sources", lambda f: f.attrs.__setitem__("n_samples", 2.5), "'n_samples' must be an integer"),
    ("index", _replace("index/block_ptr", np.zeros(3, np.int64)),
     r"'index/block_ptr' has shape \(3,\), expected \(2,\)"),
    ("index", _replace("index/entry_words", np.zeros((2, 4), np.uint64)),
     r"'index/entry_words' has shape \(2, 4\), expected \(\d+, 8\)"),
    ("index", _replace("index/entry_concept", np.zeros(3, np.float32)),
     "'index/entry_concept' must be a 1-D integer array"),
    ("index", lambda f: f.attrs.__setitem__("n_samples", 100),
     r"'index/block_ptr' has shape \(2,\), expected \(14,\)"),
])
def test_inconsistent_shapes(index_file, concepts_file, which, make, msg):
    p = index_file if which == "index" else concepts_file
    edit(p, make)
    with pytest.raises(ValueError, match=msg) as e:
        load_concepts(p)
    assert str(p) in str(e.value)


def test_corrupt_index_contents(index_file):
    def fn(f):
        ec = f["index/entry_concept"][()]
        ec[0] = 50
        f["index/entry_concept"][...] = ec
    edit(index_file, fn)
    # the dataset's checksum finds it first
    with pytest.raises(ValueError, match="dataset 'index/entry_concept' is corrupt: its "
                                         "contents do not match their CRC-32") as e:
        load_concepts(index_file)
    assert str(index_file) in str(e.value)
    # without a checksum (a file written by another tool), the index checks find it
    edit(index_file, lambda f: f["index/entry_concept"].attrs.__delitem__("crc32"))
    with pytest.raises(ValueError, match="the concept index in group 'index' is invalid: "
                                         "entry concept out of range") as e:
        load_concepts(index_file)
    assert str(index_file) in str(e.value)


def test_index_ids_that_would_wrap_are_refused(index_file):
    # Another tool wrote the ids as int64 (no checksum): in-range values load as before; a
    # value that would wrap when cast to the stored int32 (4294967296 + j -> j, a valid id:
    # wrong counts) is refused, naming the file and the dataset.
    good = load_concepts(index_file)

    def widen(name, dtype, delta=0):
        def fn(f):
            x = f[name][()].astype(dtype)
            x[x.size - 1] += delta
            del f[name]
            f[name] = x
        return fn

    edit(index_file, widen("index/entry_concept", np.int64))
    edit(index_file, widen("index/block_ptr", np.uint64))
    np.testing.assert_array_equal(load_concepts(index_file).sizes, good.sizes)
    edit(index_file, widen("index/entry_concept", np.int64, 2**32))
    with pytest.raises(ValueError, match=r"dataset 'index/entry_concept' \(int64\): entry_concept"
                                         r"\[\d+\] = \d+ does not fit in int32") as e:
        load_concepts(index_file)
    assert str(index_file) in str(e.value)
    edit(index_file, widen("index/entry_concept", np.int64, -2**32))
    edit(index_file, widen("index/block_ptr", np.uint64, 2**64 - 1 - int(good.arrays.block_ptr[-1])))
    with pytest.raises(ValueError, match=r"dataset 'index/block_ptr' \(uint64\): block_ptr"
                                         r"\[\d+\] = 18446744073709551615 does not fit in int64"):
        load_concepts(index_file)


def test_label_value_outside_mapping(concepts_file):
    def fn(f):
        maps = f["label_maps/object/maps"][()]
        maps[5, 1, 2, 3] = 4                  # concept_of_label has 4 entries: 0..3
        f["label_maps/object/maps"][...] = maps
    edit(concepts_file, fn)
    for chunk in (None, 2):
        with pytest.raises(ValueError, match=r"'label_maps/object/maps' holds label value 4 \(at "
                                             r"sample 5\) outside 'label_maps/object/"
                                             r"concept_of_label'.*0..3") as e:
            load_concepts(concepts_file, chunk_samples=chunk)
        assert str(concepts_file) in str(e.value)


def test_non_boolean_sample_labels(concepts_file):
    edit(concepts_file, _replace("sample_labels/present", np.full((7, 2), 2, np.uint8)))
    with pytest.raises(ValueError, match="'sample_labels/present' must be boolean"):
        load_concepts(concepts_file)


def test_load_concepts_rejects_bad_chunk_samples(concepts_file):
    with pytest.raises(ValueError, match="chunk_samples must be >= 1"):
        load_concepts(concepts_file, chunk_samples=0)
    with pytest.raises(TypeError, match="chunk_samples"):
        load_concepts(concepts_file, chunk_samples=2.0)


# ========================================================================= errors: writing

def _write(tmp_path, **kw):
    args = dict(n_samples=4, grid=(3, 3), names=["a", "b", "c"])
    args.update(kw)
    write_concept_sources(tmp_path / "c.h5", **args)


@pytest.mark.parametrize("kw, exc, msg", [
    (dict(label_maps={"o": (np.zeros((5, 3, 3), np.uint8), [-1, 0])}), ValueError,
     r"label_maps\['o'\] maps has shape \(5, 3, 3\), expected \[N=4, L, H=3, W=3\]"),
    (dict(label_maps={"o": (np.zeros((4, 1, 3, 2), np.uint8), [-1, 0])}), ValueError,
     r"has shape \(4, 1, 3, 2\)"),
    (dict(label_maps={"o": (np.zeros((4, 3, 3), np.float32), [-1, 0])}), TypeError,
     "must hold integers"),
    (dict(label_maps={"o": (np.zeros((4, 3, 3), np.uint8), [-1, 3])}), ValueError,
     r"concept_of_label\[1\] = 3 is out of range.*K = 3"),
    (dict(label_maps={"o": (np.zeros((4, 3, 3), np.uint8), [-1, "zz"])}), ValueError,
     "unknown concept 'zz'"),
    (dict(label_maps={"o": (np.zeros((4, 3, 3), np.uint8), [])}), ValueError, "is empty"),
    (dict(label_maps={"a/b": (np.zeros((4, 3, 3), np.uint8), [-1])}), ValueError,
     "not a valid HDF5 group name"),
    (dict(label_maps={"o": np.zeros((4, 3, 3), np.uint8)}), TypeError, "pair"),
    (dict(label_maps={"o": (np.full((4, 3, 3), 2, np.uint8), [-1, 0])}), ValueError,
     r"label_maps\['o'\] maps holds label value 2 \(at sample 0\) outside its concept_of_label"),
    (dict(label_maps={"o": (np.full((4, 3, 3), -1, np.int8), [-1, 0])}), ValueError,
     "holds label value -1"),
    (dict(sample_labels=(np.zeros((3, 2), bool), [0, 1])), ValueError,
     r"sample_labels present has shape \(3, 2\), expected \[N=4, k\]"),
    (dict(sample_labels=(np.zeros((4, 2), bool), [0])), ValueError,
     "sample_labels concepts has 1 entries but present has 2 columns"),
    (dict(sample_labels=(np.zeros((4, 1), bool), [-1])), ValueError,
     r"sample_labels concepts\[0\] = -1 is out of range"),
    (dict(sample_labels=(np.full((4, 1), 3, np.uint8), [0])), ValueError,
     "sample_labels present must be boolean"),
    (dict(sample_labels=(np.zeros((4, 1), np.float32), [0])), TypeError, "must be boolean"),
    (dict(dense=(np.zeros((4, 1, 3, 4), bool), [0])), ValueError,
     r"dense masks has shape \(4, 1, 3, 4\), expected \[N=4, k, H=3, W=3\]"),
    (dict(dense=(np.zeros((4, 2, 3, 3), bool), [0, 7])), ValueError,
     r"dense concepts\[1\] = 7 is out of range"),
    (dict(names=["a", "a"]), ValueError, "names must be unique"),
    (dict(names=[]), ValueError, "names is empty"),
    (dict(categories=["x"]), ValueError, "categories has 1 entries, expected 3"),
    (dict(n_samples=0), ValueError, "n_samples must be >= 1"),
    (dict(grid=(0, 3)), ValueError, "grid must be"),
])
def test_write_concept_sources_validates(tmp_path, kw, exc, msg):
    with pytest.raises(exc, match=msg):
        _write(tmp_path, **kw)
    assert os.listdir(tmp_path) == []          # nothing half-written is left behind


def test_failed_write_keeps_previous_file(tmp_path, concepts_file):
    before = load_concepts(concepts_file)
    maps = np.zeros((7, 4, 5), np.uint16)
    maps[6, 0, 0] = 9                          # found only in the last chunk, while writing
    with pytest.raises(ValueError, match="label value 9"):
        write_concept_sources(concepts_file, n_samples=7, grid=(4, 5), names=["a"],
                              label_maps={"o": (maps, [-1])}, chunk_samples=1)
    assert_same_concepts(load_concepts(concepts_file), before)
    assert sorted(os.listdir(concepts_file.parent)) == ["concepts.h5"]


# ========================================================================= docs and doctests

def _format_md_examples():
    with open(FORMAT_MD, encoding="utf-8") as fh:
        text = fh.read()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_format_md_examples_run(tmp_path, monkeypatch):
    """The hand-written h5py examples of docs/FORMAT.md produce files the readers accept."""
    examples = _format_md_examples()
    assert len(examples) >= 3
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for code in examples:
        exec(compile(code, FORMAT_MD, "exec"), namespace)


@pytest.mark.parametrize("module", ["", "._h5", ".activations", ".concepts", ".images",
                                    ".info", ".results"])
def test_module_doctests(module):
    import importlib

    result = doctest.testmod(importlib.import_module("compexp_core.io" + module),
                             optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
