"""Thresholds and unit masks against the NumPy/Pillow reference."""
import h5py
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import compexp_core.engine.units as units_mod
from compexp_core import compute_thresholds

from compexp_core.engine.units import unit_masks
from reference import reference_thresholds, reference_unit_masks


def engine_masks(acts, grid, quantile=0.005, threshold=None):
    ids = np.arange(acts.shape[1])
    t = None
    if acts.dtype != bool:
        t = compute_thresholds(acts, quantile) if threshold is None else \
            np.broadcast_to(np.asarray(threshold, np.float64), ids.shape).copy()
    m = unit_masks(acts, ids, grid, t)
    return m.to_dense(acts.shape[0] * grid[0] * grid[1])


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 12), u=st.integers(1, 4), hw=st.sampled_from([(7, 7), (1, 1), (3, 5), (4, 4)]),
       grid=st.sampled_from([(14, 14), (7, 7), (1, 1), (5, 9), (2, 3)]),
       q=st.sampled_from([0.005, 0.1, 0.5]), seed=st.integers(0, 2**31 - 1),
       dtype=st.sampled_from([np.float32, np.float64, np.float16]))
def test_float_maps_match_reference(n, u, hw, grid, q, seed, dtype):
    rng = np.random.default_rng(seed)
    acts = rng.standard_normal((n, u, *hw)).astype(dtype)
    acts[:, 0] = np.round(acts[:, 0])              # many ties at the threshold
    np.testing.assert_array_equal(compute_thresholds(acts, q), reference_thresholds(acts, q))
    np.testing.assert_array_equal(engine_masks(acts, grid, q), reference_unit_masks(acts, grid, q))


def test_reference_scale_maps_7_to_112():
    rng = np.random.default_rng(0)
    acts = rng.standard_normal((6, 3, 7, 7)).astype(np.float32)
    np.testing.assert_array_equal(engine_masks(acts, (112, 112), 0.05),
                                  reference_unit_masks(acts, (112, 112), 0.05))


def test_matches_pillow_directly():
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(1)
    m = rng.standard_normal((7, 7)).astype(np.float32)
    up = np.asarray(Image.fromarray(m, "F").resize((112, 112), Image.BILINEAR)).astype(np.float64)
    for t in np.quantile(up, [0.5, 0.9, 0.995]):
        got = engine_masks(m[None, None], (112, 112), threshold=float(t))[0]
        np.testing.assert_array_equal(got, (up > t).ravel())


@pytest.mark.parametrize("shape", [(20, 3), (20, 3, 1, 1)])
def test_sample_level_acts_cover_whole_samples(shape):
    rng = np.random.default_rng(2)
    acts = rng.standard_normal(shape)
    np.testing.assert_array_equal(engine_masks(acts, (3, 4), 0.2),
                                  reference_unit_masks(acts, (3, 4), 0.2))


def test_bool_acts_used_as_given():
    rng = np.random.default_rng(3)
    acts = rng.random((5, 2, 6, 7)) < 0.3
    np.testing.assert_array_equal(engine_masks(acts, (6, 7)), reference_unit_masks(acts, (6, 7)))
    acts2 = rng.random((5, 2)) < 0.5
    np.testing.assert_array_equal(engine_masks(acts2, (2, 2)), reference_unit_masks(acts2, (2, 2)))


def test_explicit_threshold_scalar_and_per_unit():
    rng = np.random.default_rng(4)
    acts = rng.standard_normal((8, 3, 4, 4)).astype(np.float32)
    for t in (0.5, np.array([0.0, 1.0, -1.0])):
        np.testing.assert_array_equal(engine_masks(acts, (8, 8), threshold=t),
                                      reference_unit_masks(acts, (8, 8), threshold=t))


def test_chunked_reads_from_hdf5_equal_in_memory(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    acts = rng.standard_normal((50, 6, 7, 7)).astype(np.float32)
    path = tmp_path / "a.h5"
    with h5py.File(path, "w") as h5:
        h5.create_dataset("acts", data=acts, chunks=(7, 6, 7, 7))
    # A tiny read budget forces many unit batches and sample chunks (and mask merging).
    monkeypatch.setattr(units_mod, "_READ_BYTES", 4096)
    with h5py.File(path, "r") as h5:
        got = engine_masks(h5["acts"], (28, 28), 0.01)
        t = compute_thresholds(h5["acts"], 0.01, units=[5, 1, 1])
    np.testing.assert_array_equal(got, reference_unit_masks(acts, (28, 28), 0.01))
    np.testing.assert_array_equal(t, reference_thresholds(acts, 0.01)[[5, 1, 1]])


def test_nonfinite_acts_name_the_unit():
    acts = np.zeros((4, 3, 2, 2), np.float32)
    acts[1, 2, 0, 0] = np.nan
    with pytest.raises(ValueError, match="unit 2"):
        compute_thresholds(acts)
    with pytest.raises(ValueError, match="unit 2"):
        unit_masks(acts, np.arange(3), (2, 2), np.zeros(3))


# float64 maps are resized and compared in double precision: a float32 image would round
# 1 + 1e-9 to 1 (no unit fires) and 1e300 to inf (a unit fires everywhere).
@pytest.mark.parametrize("scale, offset", [(1e-9, 1.0), (1e300, 0.0)])
def test_float64_maps_keep_double_precision(scale, offset):
    import compexp_core as cx
    from reference import reference_search

    rng = np.random.default_rng(0)
    acts = offset + rng.random((20, 3, 4, 4)) * scale
    grid = (8, 8)
    masks = rng.random((20, 4, *grid)) < 0.3
    t = compute_thresholds(acts, 0.1)
    np.testing.assert_array_equal(t, reference_thresholds(acts, 0.1))
    ref = reference_unit_masks(acts, grid, 0.1)
    np.testing.assert_array_equal(engine_masks(acts, grid, 0.1), ref)
    # Each unit fires on some cells (10% of its raw values exceed the threshold; fewer of the
    # smoother upsampled ones), neither nowhere nor everywhere.
    frac = ref.mean(axis=1)
    assert ((frac > 0.005) & (frac < 0.3)).all(), frac
    res = cx.search_formulas(acts, masks, quantile=0.1, max_length=2)
    want = reference_search(ref, masks.transpose(1, 0, 2, 3).reshape(4, -1),
                            names=[f"c{j}" for j in range(4)], max_length=2)
    for e, w in zip(res, want):
        assert e.formula is not None
        assert str(e.formula) == w["formula"]
        assert e.iou == w["iou"]


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 6), u=st.integers(1, 3), hw=st.sampled_from([(7, 7), (1, 1), (3, 5), (9, 4)]),
       grid=st.sampled_from([(14, 14), (7, 7), (1, 1), (5, 9), (2, 3)]),
       q=st.sampled_from([0.005, 0.1, 0.5]), seed=st.integers(0, 2**31 - 1),
       kind=st.sampled_from(["normal", "tiny", "huge", "ties"]))
def test_float64_maps_match_reference(n, u, hw, grid, q, seed, kind):
    rng = np.random.default_rng(seed)
    acts = rng.standard_normal((n, u, *hw))
    if kind == "tiny":
        acts = 1.0 + acts * 1e-12
    elif kind == "huge":
        acts = acts * 1e300
    elif kind == "ties":
        acts = np.round(acts)
    np.testing.assert_array_equal(compute_thresholds(acts, q), reference_thresholds(acts, q))
    np.testing.assert_array_equal(engine_masks(acts, grid, q), reference_unit_masks(acts, grid, q))


def test_float32_maps_unchanged_by_float64_path():
    # float32 and float16 maps keep Pillow's float32 arithmetic bit for bit.
    rng = np.random.default_rng(3)
    acts = (1 + rng.random((5, 2, 4, 4)) * 1e-3).astype(np.float32)
    grid = (9, 9)
    ref = reference_unit_masks(acts, grid, 0.1)
    np.testing.assert_array_equal(engine_masks(acts, grid, 0.1), ref)
    np.testing.assert_array_equal(engine_masks(acts.astype(np.float16), grid, 0.1),
                                  reference_unit_masks(acts.astype(np.float16), grid, 0.1))


@pytest.mark.parametrize("hw, grid", [((7, 7), (5, 9)), ((3, 3), (7, 7)), ((5, 4), (2, 9))])
def test_float64_constant_maps_resized_in_full(hw, grid):
    # A float64 resize of a constant map may exceed the constant by an ulp (its weights sum to
    # 1 +- an ulp); no shortcut may assume a resize never exceeds the map's maximum.
    for c in (0.75, 0.1, 1 / 3, 7.3):
        acts = np.full((2, 1, *hw), c)
        np.testing.assert_array_equal(engine_masks(acts, grid, threshold=c),
                                      reference_unit_masks(acts, grid, threshold=c))
