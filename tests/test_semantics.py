"""``semantics="reference-vision"`` / ``"reference-nli"``: the reference code's searches, bit for
bit. Each rule has a hand-made case whose answer was worked out by hand; random problems are
compared with the emulation in ``reference_original.py`` (final beam, formulas and scores)."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import compexp_core as cx
from compexp_core.engine.formula import formula_key

from reference_original import reference_nli_search, reference_vision_search


def _cells(P, *members):
    m = np.zeros(P, bool)
    m[list(members)] = True
    return m


def _search(unit, concepts, **kw):
    """Search one unit (bool [P]) over concepts (bool [K, P]); returns its Explanation and its
    final beam as [(key, score)]."""
    names = [f"c{j}" for j in range(len(concepts))]
    r = cx.search_formulas(unit[:, None], concepts.T.copy(), names=names, device="cpu", **kw)
    e = r[0]
    return e, [(formula_key(f, names.index), s) for f, s in e.beam]


# ---------------------------------------------------------------------------- hand-made rules

def test_vision_epsilon_breaks_equal_ious_by_the_larger_union():
    unit = _cells(6, 0, 1)
    a = _cells(6, 0)              # I = 1, union 2: IoU 1/2
    b = _cells(6, 0, 1, 2, 3)     # I = 2, union 4: IoU 2/4
    concepts = np.stack([a, b])
    e, beam = _search(unit, concepts, max_length=1, beam_size=2)
    assert [k for k, _ in beam] == [(0,), (1,)] and e.iou == 0.5          # a tie: index order
    e, beam = _search(unit, concepts, max_length=1, beam_size=2, semantics="reference-vision")
    assert [k for k, _ in beam] == [(1,), (0,)]                           # larger union first
    assert e.iou == 2 / (4 + 1e-10) and beam[1][1] == 1 / (2 + 1e-10)


def test_nli_epsilon_keeps_equal_ious_tied():
    unit = _cells(6, 0, 1)
    concepts = np.stack([_cells(6, 0), _cells(6, 0, 1, 2, 3)])
    e, beam = _search(unit, concepts, max_length=1, beam_size=2, semantics="reference-nli")
    assert [k for k, _ in beam] == [(0,), (1,)]
    assert beam[0][1] == beam[1][1] == 0.5


def test_reference_keeps_regenerated_copies_and_counts_not_in_the_length():
    # unit {0,1}; A = {0,1,2,3} (IoU 1/2), B = {2,3} (IoU 0); penalty 0.9, beam 2, length 3.
    # Reference: (A AND NOT B) has length 3 (A, NOT, B): score 0.81 x IoU 1. At step 3, A
    # regenerates it as a separate copy, which ties with it and beats every longer child:
    # the final beam is the same formula twice.
    unit = _cells(8, 0, 1)
    concepts = np.stack([_cells(8, 0, 1, 2, 3), _cells(8, 2, 3)])
    e, beam = _search(unit, concepts, max_length=3, beam_size=2, complexity_penalty=0.9,
                      semantics="reference-vision")
    iou = 2 / (2 + 1e-10)
    assert [k for k, _ in beam] == [(0, (3, 1)), (0, (3, 1))]
    assert beam[0][1] == beam[1][1] == 0.9 ** 2 * iou
    assert e.iou == iou and e.score == 0.9 ** 2 * iou
    # Default: (A AND NOT B) has length 2 (score 0.9); the regenerated copy is skipped, and
    # with repeats not allowed nothing else can enter: the beam is [it, A].
    e, beam = _search(unit, concepts, max_length=3, beam_size=2, complexity_penalty=0.9)
    assert [k for k, _ in beam] == [(0, (3, 1)), (0,)]
    assert e.score == 0.9


def test_reference_vision_never_extends_with_an_empty_concept():
    # E = {} is concept 0; A = {0,1,2} over unit {0,1}: IoU 2/3. With repeats allowed, the
    # default extends A with E first ((A OR E) and (A AND NOT E) equal A); the reference's
    # mask catalog has no E, so its next candidates are (A OR A) and (A AND A).
    unit = _cells(6, 0, 1)
    concepts = np.stack([_cells(6), _cells(6, 0, 1, 2)])
    _, beam = _search(unit, concepts, max_length=2, beam_size=3, allow_repeats=True)
    assert [k for k, _ in beam] == [(1,), (1, (1, 0)), (1, (3, 0))]
    _, beam = _search(unit, concepts, max_length=2, beam_size=3, semantics="reference-vision")
    assert [k for k, _ in beam] == [(1,), (1, (1, 1)), (1, (2, 1))]


def test_reference_nli_first_beam_ranks_every_concept_and_extends_only_positive_ones():
    # unit {0,1}; c0 = {5} (IoU 0), c1 = {1} (IoU 1/2), c2 = {4} (IoU 0).
    unit = _cells(6, 0, 1)
    concepts = np.stack([_cells(6, 5), _cells(6, 1), _cells(6, 4)])
    e, beam = _search(unit, concepts, max_length=1, beam_size=3, semantics="reference-nli")
    assert [k for k, _ in beam] == [(1,), (0,), (2,)]         # IoU 0 included, index order
    assert [s for _, s in beam] == [0.5, 0.0, 0.0]
    _, beam = _search(unit, concepts, max_length=1, beam_size=3)
    assert [k for k, _ in beam] == [(1,)]                      # default: IoU > 0 only
    # Extension only by c1 (the one concept with IoU > 0): c0's children are c0 OP c1.
    _, beam = _search(unit, concepts, max_length=2, beam_size=10, semantics="reference-nli")
    keys = [k for k, _ in beam]
    assert all(k[-1][1] == 1 for k in keys if len(k) == 2)
    assert (0, (1, 1)) in keys and (0, (1, 2)) not in keys


def test_reference_nli_without_any_positive_concept_reports_the_first_concept():
    unit = _cells(6, 0, 1)
    concepts = np.stack([_cells(6, 3), _cells(6, 4)])
    e, beam = _search(unit, concepts, max_length=3, beam_size=2, semantics="reference-nli")
    assert str(e.formula) == "c0" and e.iou == 0.0 and e.skipped is None
    assert [k for k, _ in beam] == [(0,), (1,)]


@pytest.mark.parametrize("semantics", ["default", "reference-vision", "reference-nli"])
def test_min_firing_skips_units_and_says_why(semantics):
    unit = _cells(6, 0, 1, 2)
    concepts = np.stack([_cells(6, 0, 1, 2)])
    e, beam = _search(unit, concepts, semantics=semantics, min_firing=4)
    assert e.formula is None and e.primitive is None and beam == [] and e.iou == 0.0
    assert e.skipped == "fires on 3 cells, fewer than min_firing=4"
    assert "skipped" in str(e)
    e, _ = _search(unit, concepts, semantics=semantics, min_firing=3)
    assert str(e.formula) == "c0" and e.skipped is None


def test_skipped_reason_survives_save_and_load(tmp_path):
    acts = np.zeros((6, 2), bool)
    acts[:3, 0] = True
    acts[:5, 1] = True
    r = cx.search_formulas(acts, acts.copy(), min_firing=4, device="cpu")
    assert r[0].skipped and r[1].skipped is None
    for name in ("r.h5", "r.csv"):
        r.save(tmp_path / name)
        back = cx.load_results(tmp_path / name)
        assert [e.skipped for e in back] == [r[0].skipped, None]
        assert back.params["semantics"] == "default" and back.params["min_firing"] == 4


@pytest.mark.parametrize("kw, message", [
    (dict(semantics="reference"), "unknown semantics"),
    (dict(semantics="reference-nli", metric="precision"), "IoU only"),
    (dict(semantics="reference-vision", ops=("or", "or_not")), "no OR NOT"),
    (dict(semantics="reference-nli", candidate_limit=3), "no candidate_limit"),
    (dict(min_firing=-1), "min_firing"),
    (dict(min_firing=2.5), "min_firing"),
    (dict(min_firing=True), "min_firing"),
])
def test_bad_semantics_parameters(kw, message):
    acts = np.ones((4, 1), bool)
    with pytest.raises(ValueError, match=message):
        cx.search_formulas(acts, acts.copy(), **kw)


def test_reference_modes_imply_repeats():
    acts = np.ones((4, 1), bool)
    r = cx.search_formulas(acts, acts.copy(), semantics="reference-vision")
    assert r.params["allow_repeats"] is True and r.params["semantics"] == "reference-vision"


# ------------------------------------------------------------ random problems vs the emulation

def _problem(seed: int, P: int, K: int):
    rng = np.random.default_rng(seed)
    density = rng.uniform(0.05, 0.5, size=K)
    concepts = rng.random((K, P)) < density[:, None]
    concepts[rng.random(K) < 0.15] = False                      # some empty concepts
    a, b, c = rng.integers(0, K, 3)
    unit = (concepts[a] | concepts[b]) & ~concepts[c]
    unit ^= rng.random(P) < rng.uniform(0.0, 0.2)               # noise
    return unit, concepts


_PENALTIES = st.sampled_from([1.0, 0.9, 0.97, 1.05])


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), P=st.integers(8, 120), K=st.integers(1, 8),
       beam_size=st.integers(1, 6), max_length=st.integers(1, 4), penalty=_PENALTIES,
       limit=st.one_of(st.none(), st.integers(1, 4)))
def test_reference_vision_matches_the_emulation(seed, P, K, beam_size, max_length, penalty,
                                                limit):
    unit, concepts = _problem(seed, P, K)
    expected = reference_vision_search(unit, concepts, beam_size=beam_size,
                                       max_length=max_length, penalty=penalty,
                                       candidate_limit=limit)
    e, beam = _search(unit, concepts, semantics="reference-vision", beam_size=beam_size,
                      max_length=max_length, complexity_penalty=penalty, candidate_limit=limit)
    assert beam == expected
    if expected:
        assert e.score == expected[0][1]
    else:
        assert e.formula is None


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), P=st.integers(8, 120), K=st.integers(1, 8),
       beam_size=st.integers(1, 6), max_length=st.integers(1, 4), penalty=_PENALTIES,
       min_firing=st.sampled_from([0, 5, 30]))
def test_reference_nli_matches_the_emulation(seed, P, K, beam_size, max_length, penalty,
                                             min_firing):
    unit, concepts = _problem(seed, P, K)
    expected = reference_nli_search(unit, concepts, beam_size=beam_size, max_length=max_length,
                                    penalty=penalty, min_firing=min_firing)
    e, beam = _search(unit, concepts, semantics="reference-nli", beam_size=beam_size,
                      max_length=max_length, complexity_penalty=penalty, min_firing=min_firing)
    if expected is None:
        assert e.skipped and e.formula is None and beam == []
    else:
        assert beam == expected
        assert e.score == expected[0][1]


def test_reference_modes_match_the_emulation_on_many_units_at_once(device):
    """Several units per batch (the driver's batching and early stop), a bigger problem, on
    every device."""
    rng = np.random.default_rng(7)
    P, K, U = 400, 12, 9
    concepts = rng.random((K, P)) < rng.uniform(0.05, 0.4, size=K)[:, None]
    units = np.stack([((concepts[s % K] | concepts[(s * 5 + 1) % K]) & ~concepts[(s + 3) % K])
                      ^ (rng.random(P) < 0.05) for s in range(U)])
    names = [f"c{j}" for j in range(K)]
    for semantics, emulate, kw in [
            ("reference-vision", reference_vision_search, {}),
            ("reference-nli", reference_nli_search, {"min_firing": 40})]:
        r = cx.search_formulas(units.T.copy(), concepts.T.copy(), names=names, max_length=4,
                               beam_size=5, semantics=semantics, unit_batch_size=4,
                               device=device, **kw)
        for u in range(U):
            expected = emulate(units[u], concepts, beam_size=5, max_length=4, **kw)
            got = [(formula_key(f, names.index), s) for f, s in r[u].beam]
            assert got == (expected or []), (semantics, u)
