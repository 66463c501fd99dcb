"""search_formulas against the NumPy reference of DESIGN.md's semantics, result for result."""
import h5py
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import compexp_core as cx
from compexp_core.synthetic import make_planted_dataset
from conftest import DEVICES
from reference import reference_search, reference_unit_masks


def flat(dense):
    n, k, h, w = dense.shape
    return dense.transpose(1, 0, 2, 3).reshape(k, n * h * w)


def assert_same(result, expected):
    assert len(result) == len(expected)
    for e, r in zip(result, expected):
        assert e.unit == r["unit"]
        assert (None if e.formula is None else str(e.formula)) == r["formula"]
        assert e.iou == r["iou"] and e.score == r["score"]
        assert (None if e.primitive is None else str(e.primitive)) == r["primitive"]
        assert e.primitive_iou == r["primitive_iou"]
        assert [(str(f), s) for f, s in e.beam] == [(t, s) for t, s in r["beam"]]


def coarse_masks(rng, n, k, h, w):
    """Masks made of 2x2 patches so that equal scores (ties) are common."""
    small = rng.random((n, k, (h + 1) // 2, (w + 1) // 2)) < rng.random(k)[None, :, None, None] * 0.6
    dense = small.repeat(2, axis=2).repeat(2, axis=3)[:, :, :h, :w]
    if k > 2:
        dense[:, 1] = True              # a full concept
        dense[:, 2] = False             # an empty concept
        dense[:, -1] = dense[:, 0]      # a duplicate concept: exact ties
    return dense


search_params = st.fixed_dictionaries({
    "max_length": st.integers(1, 4),
    "beam_size": st.integers(1, 6),
    "ops": st.sampled_from([("or", "and", "and_not"), ("and_not", "or"), ("or", "and", "and_not", "or_not"),
                            ("or_not",), ("and",)]),
    "metric": st.sampled_from(["iou", "precision", "recall"]),
    "allow_repeats": st.booleans(),
    "candidate_limit": st.sampled_from([None, None, 1, 3]),
    "complexity_penalty": st.sampled_from([1.0, 1.0, 0.95, 0.5]),
})


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=120, deadline=None)
@given(n=st.integers(1, 12), k=st.integers(1, 8), hw=st.sampled_from([(1, 1), (3, 5), (8, 8), (9, 7)]),
       u=st.integers(1, 4), params=search_params, seed=st.integers(0, 2**31 - 1))
def test_engine_equals_reference(n, k, hw, u, params, seed, device):
    rng = np.random.default_rng(seed)
    dense = coarse_masks(rng, n, k, *hw)
    acts = coarse_masks(rng, n, u, *hw)
    acts[:, 0] = False                   # a unit that never fires
    if u > 1 and k > 0:
        acts[:, 1] = dense[:, 0] | dense[:, k // 2]   # a unit that fires on a formula
    names = [f"c{j}" for j in range(k)]
    result = cx.search_formulas(acts, dense, names=names, device=device, **params)
    expected = reference_search(flat(acts), flat(dense), names, **params)
    assert_same(result, expected)


@pytest.mark.parametrize("allow_repeats", [False, True])
def test_float_acts_end_to_end(allow_repeats, device):
    rng = np.random.default_rng(7)
    data = make_planted_dataset(n_samples=60, grid=(12, 12), n_objects=8, n_colors=4, n_scenes=3,
                                n_units=5, map_size=(4, 4), seed=3)
    dense = data.concepts.to_dense()
    names = list(data.concepts.names)
    result = cx.search_formulas(data.acts, data.concepts, max_length=3, beam_size=5, quantile=0.05,
                                allow_repeats=allow_repeats, device=device)
    umasks = reference_unit_masks(data.acts, (12, 12), 0.05)
    expected = reference_search(umasks, flat(dense), names, max_length=3, beam_size=5,
                                allow_repeats=allow_repeats)
    assert_same(result, expected)
    del rng


def test_planted_formulas_are_recovered(device):
    # Half the samples on "cuda": CI runs it on the CPU emulator (and under the sanitizers).
    data = make_planted_dataset(n_samples=400 if device == "cpu" else 200, grid=(20, 20), n_units=12,
                                noise_units=1, seed=1)
    result = cx.search_formulas(data.acts, data.concepts, threshold=0.5, max_length=3, beam_size=5,
                                device=device)
    for e, planted in zip(result, data.planted):
        if planted is None:
            assert e.iou < 0.2
        else:
            # Recovered = the same mask on this data (OR/AND commute: order may differ).
            same = np.array_equal(e.formula.evaluate(data.concepts), planted.evaluate(data.concepts))
            assert same, (e.unit, str(e.formula), str(planted))
            assert e.iou > 0.9 and e.iou > e.primitive_iou


def test_units_subset_order_and_duplicates(device):
    rng = np.random.default_rng(8)
    dense = rng.random((30, 5, 4, 4)) < 0.3
    acts = rng.standard_normal((30, 6, 2, 2)).astype(np.float32)
    full = cx.search_formulas(acts, dense, max_length=2, beam_size=3, device=device)
    sub = cx.search_formulas(acts, dense, max_length=2, beam_size=3, units=[4, 1, 4], unit_batch_size=1,
                             device=device)
    assert [e.unit for e in sub] == [4, 1, 4]
    for e in sub:
        assert e == full[e.unit]
    assert sub.by_unit(1) == full[1]


def test_thresholds_are_per_unit_over_all_samples_even_in_batches(device):
    # Batching units must not change thresholds: compare batch sizes 1 and 64.
    rng = np.random.default_rng(9)
    dense = rng.random((40, 6, 8, 8)) < 0.2
    acts = rng.standard_normal((40, 5, 3, 3)).astype(np.float32)
    a = cx.search_formulas(acts, dense, unit_batch_size=1, device=device)
    b = cx.search_formulas(acts, dense, unit_batch_size=64, device=device)
    assert list(a) == list(b)


def test_inputs_from_hdf5_and_torch(tmp_path):
    rng = np.random.default_rng(10)
    dense = rng.random((25, 4, 5, 5)) < 0.3
    acts = rng.standard_normal((25, 3, 5, 5)).astype(np.float32)
    expected = cx.search_formulas(acts, dense, max_length=2)
    with h5py.File(tmp_path / "a.h5", "w") as h5:
        h5["acts"] = acts
    with h5py.File(tmp_path / "a.h5", "r") as h5:
        assert list(cx.search_formulas(h5["acts"], dense, max_length=2)) == list(expected)
    torch = pytest.importorskip("torch")
    assert list(cx.search_formulas(torch.from_numpy(acts), torch.from_numpy(dense), max_length=2)) \
        == list(expected)


def test_single_cell_grid_language_style(device):
    # NLI-style data: one cell per sample, concepts are words present in the sample.
    rng = np.random.default_rng(11)
    words = rng.random((500, 12)) < 0.2
    unit = (words[:, 0] & ~words[:, 1]) | (rng.random(500) < 0.01)
    acts = np.where(unit, 1.0, 0.0)[:, None] + rng.normal(0, 0.01, (500, 1))
    result = cx.search_formulas(acts, words, threshold=0.5, max_length=2, device=device)
    expected = reference_search(reference_unit_masks(acts, (1, 1), threshold=0.5), words.T,
                                [f"c{j}" for j in range(12)], max_length=2)
    assert_same(result, expected)
    assert str(result[0].formula) == "(c0 AND NOT c1)"


def test_snli_words_real_data(shared_data, device):
    """Words of the real SNLI dev premises as sample-level concepts; a unit planted on words."""
    lines = (shared_data / "snli" / "snli_1.0_dev.tok").read_text().splitlines()[0:4000:2]
    vocab = {}
    for line in lines:
        for w in set(line.lower().split()):
            vocab[w] = vocab.get(w, 0) + 1
    words = sorted(w for w, c in vocab.items() if c >= 20)
    index = {w: j for j, w in enumerate(words)}
    present = np.zeros((len(lines), len(words)), bool)
    for i, line in enumerate(lines):
        for w in set(line.lower().split()):
            if w in index:
                present[i, index[w]] = True
    unit = (present[:, index["man"]] | present[:, index["woman"]]) & ~present[:, index["playing"]]
    result = cx.search_formulas(unit[:, None], present, names=words, max_length=3, beam_size=5,
                                device=device)
    assert str(result[0].formula) == "((man OR woman) AND NOT playing)"
    assert result[0].iou == 1.0
    expected = reference_search(unit[None, :], present.T, words, max_length=3, beam_size=5)
    assert_same(result, expected)


def test_progress_bar_reports_units(capsys):
    rng = np.random.default_rng(12)
    dense = rng.random((30, 4, 4, 4)) < 0.3
    acts = rng.standard_normal((30, 3, 2, 2)).astype(np.float32)
    cx.search_formulas(acts, dense, max_length=2, progress=True)
    err = capsys.readouterr().err
    # Thresholds and search each advance the bar by one step per unit: 2 x 3 units.
    assert "compexp" in err and "6/6" in err
    cx.search_formulas(acts, dense, max_length=2, progress=False)
    assert capsys.readouterr().err == ""


def _same(a, b):
    assert [(e.unit, str(e.formula), e.iou, e.score, [(str(f), s) for f, s in e.beam],
             [(str(f), v) for f, v in e.by_length]) for e in a] == \
           [(e.unit, str(e.formula), e.iou, e.score, [(str(f), s) for f, s in e.beam],
             [(str(f), v) for f, v in e.by_length]) for e in b]


def test_search_stops_once_every_beam_stops_changing():
    # 3 concepts and no repeats: no formula is longer than 3, so the 4th step changes nothing
    # and a search asking for a million steps ends there, with the same answer.
    rng = np.random.default_rng(11)
    masks = rng.random((300, 3)) < 0.4
    acts = rng.random((300, 4)).astype(np.float32)
    huge = cx.search_formulas(acts, masks, max_length=10**6, beam_size=5, quantile=0.2)
    short = cx.search_formulas(acts, masks, max_length=4, beam_size=5, quantile=0.2)
    _same(huge, short)
    assert huge.stats["steps"] == 4 and huge.stats["converged_units"] == 4
    assert short.stats["converged_units"] == 0
    assert all(len(e.by_length) == 4 and e.at_length(10**6) == e.by_length[-1] for e in huge)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), beam=st.integers(1, 3), repeats=st.booleans())
def test_early_stop_is_exact(seed, beam, repeats, device):
    # Stopping a unit when its beam stops changing gives what every longer search gives.
    rng = np.random.default_rng(seed)
    masks = rng.random((60, 4)) < rng.random(4)
    acts = rng.random((60, 3)).astype(np.float32)
    kw = dict(beam_size=beam, quantile=0.3, allow_repeats=repeats, device=device)
    results = {L: cx.search_formulas(acts, masks, max_length=L, **kw) for L in (7, 9)}
    for L, result in results.items():
        for e in result:
            assert len(e.by_length) <= L
            assert (e.formula, e.iou) == e.at_length(L)
    for e7, e9 in zip(results[7], results[9]):
        if len(e7.by_length) < 7:           # stopped early at 7: identical at 9
            assert (str(e7.formula), e7.iou, e7.by_length) == (str(e9.formula), e9.iou, e9.by_length)
