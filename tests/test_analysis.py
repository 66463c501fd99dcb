"""The paper's analyses (IoU against formula length, IoU against accuracy) and the per-image
mask views used by reports, checked against the NumPy reference and plain computations."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import compexp_core as cx
from compexp_core.analysis import (firing_samples, formula_mask_images, iou_accuracy_correlation,
                                   mean_iou_by_length, top_activating_samples, unit_mask_images)
from conftest import DEVICES
from reference import reference_thresholds, reference_unit_masks


def _data(seed, n=30, k=6, grid=(6, 5), units=4, h=3):
    rng = np.random.default_rng(seed)
    masks = rng.random((n, k) + grid) < 0.3
    acts = rng.normal(size=(n, units, h, h)).astype(np.float32)
    return masks, acts


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), beam=st.integers(1, 4))
def test_by_length_equals_separate_searches(seed, beam, device):
    masks, acts = _data(seed)
    long = cx.search_formulas(acts, masks, max_length=5, beam_size=beam, quantile=0.2, device=device)
    for length in range(1, 6):
        short = cx.search_formulas(acts, masks, max_length=length, beam_size=beam, quantile=0.2,
                                   device=device)
        for e_long, e_short in zip(long, short):
            formula, iou = e_long.at_length(length)
            assert formula == e_short.formula and iou == e_short.iou
    curve = mean_iou_by_length(long)
    assert curve.shape == (5,) and np.all(np.diff(curve) >= 0)
    assert curve[-1] == pytest.approx(np.mean([e.iou for e in long]))


def test_by_length_pads_and_leaves_out_units_without_formula():
    # Unit 0 is concept 0 exactly: with a beam of one, its search stops after two steps
    # (by_length has two entries), and every longer maximum length answers the same. Unit 1
    # fires nowhere: no formula, one by_length entry, left out of the means.
    masks = np.eye(4, dtype=bool)[np.arange(40) % 4]
    acts = np.stack([masks[:, 0], np.zeros(40, bool)], axis=1)
    result = cx.search_formulas(acts, masks, max_length=4, beam_size=1)
    assert len(result[0].by_length) == 2 and result[0].at_length(4)[1] == 1.0
    assert result[1].by_length == ((None, 0.0),) and result[1].at_length(4) == (None, 0.0)
    assert mean_iou_by_length(result).tolist() == [1.0] * 4
    with pytest.raises(ValueError, match="none of the result's 1 units has a formula"):
        mean_iou_by_length(result[1:])


def test_mean_iou_by_length_errors():
    with pytest.raises(ValueError, match="no explanations"):
        mean_iou_by_length(cx.SearchResult([]))
    old = cx.SearchResult([cx.Explanation(0, cx.Formula.parse("a"), 0.5, 0.5, None, 0.0)])
    with pytest.raises(ValueError, match="by_length"):
        mean_iou_by_length(old)


def test_threshold_is_recorded():
    masks, acts = _data(1)
    result = cx.search_formulas(acts, masks, quantile=0.1)
    assert [e.threshold for e in result] == pytest.approx(reference_thresholds(acts, 0.1).tolist())
    explicit = cx.search_formulas(acts, masks, threshold=[0.1, 0.2, 0.3, 0.4])
    assert [e.threshold for e in explicit] == [0.1, 0.2, 0.3, 0.4]
    assert cx.search_formulas(masks[:, :2], masks)[0].threshold is None


def test_unit_and_formula_mask_images_match_reference():
    masks, acts = _data(2)
    cs = cx.ConceptSet.from_dense(masks)
    result = cx.search_formulas(acts, cs, quantile=0.1, max_length=3)
    ref = reference_unit_masks(acts, (6, 5), quantile=0.1).reshape(4, 30, 6, 5)
    samples = [29, 0, 7, 7]
    for e in result:
        got = unit_mask_images(acts, e.unit, samples, (6, 5), e.threshold)
        assert np.array_equal(got, ref[e.unit][samples])
        dense = e.formula.evaluate(masks)
        assert np.array_equal(formula_mask_images(cs, e.formula, samples), dense[samples])
    assert unit_mask_images(acts, 0, [], (6, 5), 0.0).shape == (0, 6, 5)


def test_firing_samples_and_top_activating():
    masks, acts = _data(3)
    result = cx.search_formulas(acts, masks, quantile=0.05)
    fires = firing_samples(acts, result, (6, 5))
    ref = reference_unit_masks(acts, (6, 5), quantile=0.05).reshape(4, 30, -1).any(axis=2).T
    assert np.array_equal(fires, ref)
    assert np.array_equal(firing_samples(acts, result, (6, 5), units=[2, 0]), ref[:, [2, 0]])
    top = top_activating_samples(acts, 1, 5)
    peak = acts[:, 1].reshape(30, -1).max(axis=1)
    assert np.array_equal(top, np.argsort(-peak, kind="stable")[:5])
    many, peaks = top_activating_samples(acts, [3, 1], 5, return_peaks=True)
    assert np.array_equal(many[1], top) and np.array_equal(many[0], top_activating_samples(acts, 3, 5))
    assert np.array_equal(peaks[1], peak[top])
    with pytest.raises(ValueError, match="out of range"):
        top_activating_samples(acts, 4)


def test_iou_accuracy_correlation_by_hand():
    masks, acts = _data(4, units=6)
    result = cx.search_formulas(acts, masks, quantile=0.05, max_length=2)
    rng = np.random.default_rng(0)
    correct = rng.random(30) < 0.6
    stats = iou_accuracy_correlation(result, acts, correct, (6, 5), permutations=500)
    fires = reference_unit_masks(acts, (6, 5), quantile=0.05).reshape(6, 30, -1).any(axis=2)
    acc = np.array([correct[f].mean() for f in fires])
    iou = np.array([e.iou for e in result])
    assert np.allclose(stats.accuracy, acc) and np.array_equal(stats.iou, iou)
    assert stats.pearson == pytest.approx(np.corrcoef(iou, acc)[0, 1])
    assert 0 < stats.p_value <= 1
    # Spearman = Pearson of ranks (no ties here).
    r = lambda x: np.argsort(np.argsort(x))
    assert stats.spearman == pytest.approx(np.corrcoef(r(iou), r(acc))[0, 1])


def test_iou_accuracy_correlation_errors():
    masks, acts = _data(5)
    result = cx.search_formulas(acts, masks)
    with pytest.raises(ValueError, match="one entry per input"):
        iou_accuracy_correlation(result, acts, np.ones(29, bool), (6, 5))
    with pytest.raises(TypeError, match="bool"):
        iou_accuracy_correlation(result, acts, np.full(30, 0.5), (6, 5))
    with pytest.raises(ValueError, match="min_firing"):
        iou_accuracy_correlation(result, acts, np.ones(30, bool), (6, 5), min_firing=0)
