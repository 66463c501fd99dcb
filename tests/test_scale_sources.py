"""Activations computed when read (ComputedActivations, SAEFeatures) and the sample-level unit
masks built from one boolean copy per chunk: the same search results as the materialised
array, only the requested units computed, bad input named."""
import numpy as np
import pytest

import compexp_core as cx
from compexp_core.engine.units import ComputedActivations, SAEFeatures, unit_masks


def _same(a, b):
    """Two search results agree in everything the search decides."""
    a, b = list(a), list(b)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert (x.unit, str(x.formula), x.iou, x.score, x.threshold) == \
               (y.unit, str(y.formula), y.iou, y.score, y.threshold)
        assert [(str(f), i) for f, i in x.by_length] == [(str(f), i) for f, i in y.by_length]
        assert [(str(f), s) for f, s in x.beam] == [(str(f), s) for f, s in y.beam]


@pytest.fixture(scope="module")
def token_workload():
    """1,500 tokens over 12 'token' concepts, a residual stream D=8 and an SAE of 150 features,
    all small integers (so every float32 sum is exact, whatever the BLAS's order)."""
    rng = np.random.default_rng(7)
    n, k, d, f = 1500, 12, 8, 150
    tok = rng.integers(0, k, n)
    embed = rng.integers(-2, 3, (k, d)).astype(np.float32)
    resid = embed[tok] + rng.integers(-1, 2, (n, d)).astype(np.float32)
    W_enc = rng.integers(-2, 3, (d, f)).astype(np.float32)
    b_enc = rng.integers(-6, 1, f).astype(np.float32)
    b_dec = rng.integers(-1, 2, d).astype(np.float32)
    masks = np.zeros((n, k + 2), bool)
    masks[np.arange(n), tok] = True
    masks[:, k] = rng.random(n) < 0.3
    masks[1:, k + 1] = tok[:-1] == 0                  # "previous token is 0"
    return resid, W_enc, b_enc, b_dec, masks


def _materialised(resid, W_enc, b_enc, b_dec):
    return np.maximum((resid - b_dec) @ W_enc + b_enc, 0).astype(np.float32)


@pytest.mark.parametrize("threshold", [0.0, "per_unit", None])
def test_sae_source_equals_materialised_search(token_workload, threshold):
    resid, W_enc, b_enc, b_dec, masks = token_workload
    sae = SAEFeatures(resid, W_enc, b_enc, b_dec=b_dec, rows_per_step=256)
    dense = _materialised(resid, W_enc, b_enc, b_dec)
    assert np.array_equal(np.asarray(sae), dense)
    if threshold == "per_unit":
        threshold = np.linspace(-0.5, 2.5, W_enc.shape[1])
    kwargs = dict(max_length=3, beam_size=5, device="cpu", unit_batch_size=16,
                  threshold=threshold, quantile=0.02)
    got = cx.search_formulas(sae, masks, **kwargs)
    want = cx.search_formulas(dense, masks, **kwargs)
    _same(got, want)
    assert sum(e.formula is not None for e in list(got)) > 50


def test_computed_source_reads_only_requested_units(token_workload):
    resid, W_enc, b_enc, b_dec, masks = token_workload
    dense = _materialised(resid, W_enc, b_enc, b_dec)
    asked = []

    def compute(rows, ids):
        asked.append((rows.start, rows.stop, tuple(ids.tolist())))
        return dense[rows, ids]

    src = ComputedActivations(dense.shape, compute)
    units = [140, 3, 70]
    got = cx.search_formulas(src, masks, units=units, threshold=0.0, device="cpu",
                             max_length=2, beam_size=3)
    assert {u for a in asked for u in a[2]} == {3, 70, 140}
    assert src.values_read == dense.shape[0] * 3          # one pass: explicit thresholds
    _same(got, cx.search_formulas(dense, masks, units=units, threshold=0.0,
                                               device="cpu", max_length=2,
                                               beam_size=3))
    asked.clear()
    src2 = ComputedActivations(dense.shape, compute)
    cx.search_formulas(src2, masks, units=units, quantile=0.05, device="cpu", max_length=2)
    assert src2.values_read == 2 * dense.shape[0] * 3     # quantiles read each column once more


def test_sae_reads_only_the_batch_columns(token_workload):
    resid, W_enc, b_enc, b_dec, _ = token_workload
    sae = SAEFeatures(resid, W_enc, b_enc)
    vals = sae[10:20, [5, 1, 5]]
    assert sae.values_read == 10 * 2                    # units 1 and 5, once each
    ref = np.maximum(resid[10:20] @ W_enc + b_enc, 0)[:, [5, 1, 5]]
    assert np.array_equal(vals, ref)
    assert sae[3, 7] == ref.dtype.type(max(0.0, float(resid[3] @ W_enc[:, 7] + b_enc[7])))


def test_sae_float_values_and_batch_independence():
    rng = np.random.default_rng(1)
    resid = rng.standard_normal((700, 32), dtype=np.float32)
    W_enc = rng.standard_normal((32, 90), dtype=np.float32)
    b_enc = rng.standard_normal(90).astype(np.float32)
    b_dec = rng.standard_normal(32).astype(np.float32)
    sae = SAEFeatures(resid, W_enc, b_enc, b_dec=b_dec, rows_per_step=100)
    full = np.asarray(sae)
    ref = np.maximum((resid.astype(np.float64) - b_dec) @ W_enc + b_enc, 0)
    np.testing.assert_allclose(full, ref, rtol=1e-5, atol=1e-5)
    # A feature read alone or with others: the same values (the BLAS sums over D in order).
    for ids in ([0], [3, 4, 5], list(range(0, 90, 7))):
        np.testing.assert_array_equal(sae[:, ids], full[:, ids])
    masks = np.random.default_rng(2).random((700, 10)) < 0.2
    for threshold in (0.0, None):
        kwargs = dict(threshold=threshold, quantile=0.05, device="cpu", unit_batch_size=8,
                      max_length=2, beam_size=3)
        _same(cx.search_formulas(sae, masks, **kwargs), cx.search_formulas(full, masks, **kwargs))
    jump = SAEFeatures(resid, W_enc, b_enc, activation="jumprelu",
                       jump_threshold=np.full(90, 0.5, np.float32))
    pre = resid @ W_enc + b_enc
    np.testing.assert_allclose(np.asarray(jump), np.where(pre > 0.5, pre, 0), rtol=1e-5, atol=1e-5)
    ident = SAEFeatures(resid.astype(np.float64), W_enc.astype(np.float64), b_enc)
    assert ident.dtype == np.float64


def test_sae_over_an_h5py_dataset(tmp_path, token_workload):
    h5py = pytest.importorskip("h5py")
    resid, W_enc, b_enc, b_dec, _ = token_workload
    with h5py.File(tmp_path / "resid.h5", "w") as f:
        f["resid"] = resid
    with h5py.File(tmp_path / "resid.h5", "r") as f:
        sae = SAEFeatures(f["resid"], W_enc, b_enc, b_dec=b_dec, rows_per_step=300)
        np.testing.assert_array_equal(np.asarray(sae), _materialised(resid, W_enc, b_enc, b_dec))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("grid", [(1, 1), (2, 3)])
def test_sample_level_unit_masks_compare_in_float64(dtype, grid):
    rng = np.random.default_rng(3)
    acts = (rng.standard_normal((40_000, 5)) * 3).astype(dtype)
    acts[:5] = np.array([1.0, 0.1, 3.0, -2.0, 0.5], dtype)          # values at the thresholds
    # Thresholds between float32 values, equal to a value, beyond float32's range.
    t = np.array([1.0, np.float64(np.float32(0.1)) + 1e-12, 3.0 - 1e-13, -1e300, 1e300])
    got = unit_masks(acts, np.arange(5), grid, t)
    fired = acts.astype(np.float64) > t
    H, W = grid
    for u in range(5):
        cells = np.nonzero(np.repeat(fired[:, u], H * W))[0]
        assert np.array_equal(got.cells(u), cells)
    assert got.popcounts().tolist() == (fired.sum(0) * H * W).tolist()


def test_nan_in_computed_values_names_the_unit():
    vals = np.ones((100, 4), np.float32)
    vals[50, 2] = np.nan
    src = ComputedActivations(vals.shape, lambda rows, ids: vals[rows, ids])
    with pytest.raises(ValueError, match="unit 2 contain NaN"):
        cx.search_formulas(src, np.eye(100, 3, dtype=bool), threshold=0.0, device="cpu")


def test_bad_sae_input_is_named(token_workload):
    resid, W_enc, b_enc, b_dec, masks = token_workload
    with pytest.raises(ValueError, match=r"input width 7 differs from resid's width D = 8"):
        SAEFeatures(resid, W_enc[:7], b_enc)
    with pytest.raises(ValueError, match="b_enc must have one value per feature"):
        SAEFeatures(resid, W_enc, b_enc[:-1])
    with pytest.raises(ValueError, match="b_dec must have one value per input dimension"):
        SAEFeatures(resid, W_enc, b_enc, b_dec=b_dec[:3])
    with pytest.raises(ValueError, match="TopK"):
        SAEFeatures(resid, W_enc, b_enc, activation="topk")
    with pytest.raises(ValueError, match="jump_threshold"):
        SAEFeatures(resid, W_enc, b_enc, activation="jumprelu")
    with pytest.raises(TypeError, match="resid must hold floats"):
        SAEFeatures(resid.astype(np.int32), W_enc, b_enc)
    bad_w = W_enc.copy()
    bad_w[0, 0] = np.inf
    with pytest.raises(ValueError, match="W_enc contains NaN"):
        SAEFeatures(resid, bad_w, b_enc)
    nan_resid = resid.copy()
    nan_resid[1234, 5] = np.nan
    sae = SAEFeatures(nan_resid, W_enc, b_enc, rows_per_step=500)
    with pytest.raises(ValueError, match=r"resid contains NaN or infinite values \(token row 1234\)"):
        cx.search_formulas(sae, masks, threshold=0.0, device="cpu", max_length=1)


def test_bad_computed_source_is_named():
    with pytest.raises(ValueError, match=r"shape must be \(N, U\)"):
        ComputedActivations((10,), lambda r, i: None)
    with pytest.raises(TypeError, match="compute must be callable"):
        ComputedActivations((10, 2), "values")
    with pytest.raises(TypeError, match="float16, float32 or float64"):
        ComputedActivations((10, 2), lambda r, i: None, dtype=np.int32)
    wrong = ComputedActivations((10, 2), lambda rows, ids: np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"compute returned shape \(3, 3\)"):
        wrong[:, :]
    ints = ComputedActivations((10, 2), lambda rows, ids: np.zeros((rows.stop - rows.start, ids.size), int))
    with pytest.raises(TypeError, match="must return floats"):
        ints[:5]
    huge = ComputedActivations((1 << 20, 1 << 12), lambda rows, ids: None)
    with pytest.raises(ValueError, match="GiB as an array"):
        np.asarray(huge)
    with pytest.raises(TypeError, match="step 1"):
        huge[::2, 0]
