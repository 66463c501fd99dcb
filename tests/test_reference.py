"""Tests of the NumPy reference (tests/reference.py), the oracle the engine is tested against.

* hand-computed beam searches (every pool worked out on paper in the comments),
* a brute-force cross-check on random inputs (an independent naive implementation that
  evaluates every candidate formula with plain boolean arrays and Python loops),
* Pillow bit-for-bit tests of the bilinear resize,
* thresholds and unit masks.
"""

import os
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(__file__))

from reference import (  # noqa: E402
    format_name,
    formula_text,
    pack_masks,
    pil_resize_bilinear,
    pillow_vertical_first,
    reference_metric,
    reference_primitive_counts,
    reference_search,
    reference_thresholds,
    reference_unit_masks,
)


def cells(P, *idx):
    m = np.zeros(P, dtype=bool)
    m[list(idx)] = True
    return m


def only(results):
    assert len(results) == 1
    return results[0]


# --------------------------------------------------------------------------------------
# Formula text
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, expected",
    [
        ("water", "water"),
        ("water-s", "water-s"),
        ("a.b/c:1", "a.b/c:1"),
        ("", '""'),
        ("two words", '"two words"'),
        ("tab\there", '"tab\there"'),
        ("new\nline", '"new\nline"'),
        ("(x", '"(x"'),
        ("x)", '"x)"'),
        ('say "hi"', '"say \\"hi\\""'),
        ('q"', '"q\\""'),
        ("back\\slash", '"back\\\\slash"'),
        ("AND", '"AND"'),
        ("and", '"and"'),
        ("Or", '"Or"'),
        ("nOt", '"nOt"'),
        ("ANDY", "ANDY"),
        ("NOTE", "NOTE"),
        ("ünïcode", "ünïcode"),
    ],
)
def test_format_name(name, expected):
    assert format_name(name) == expected


def test_formula_text_ops():
    f = formula_text("or", "water", "river")
    assert f == "(water OR river)"
    assert formula_text("and_not", f, "blue") == "((water OR river) AND NOT blue)"
    assert formula_text("and", "a", '"b c"') == '(a AND "b c")'
    assert formula_text("or_not", "a", "b") == "(a OR NOT b)"


def test_search_uses_formatted_names():
    P = 6
    U = cells(P, 0, 1, 2)[None]
    C = np.stack([cells(P, 0, 1), cells(P, 2, 5)])
    r = only(reference_search(U, C, ["sky blue", "and"], max_length=2, beam_size=1, ops=("or",)))
    assert r["primitive"] == '"sky blue"'
    assert r["formula"] == '("sky blue" OR "and")'


def test_default_names_are_indices():
    P = 4
    U = cells(P, 0, 1)[None]
    C = np.stack([cells(P, 3), cells(P, 0, 1)])
    r = only(reference_search(U, C, max_length=1))
    assert r["primitive"] == "1"


# --------------------------------------------------------------------------------------
# Hand-computed beam searches
# --------------------------------------------------------------------------------------
# Data set 1: P = 10 cells, U = {0,1,2,3} (|U| = 4).
#   A = {0,1,4}:       I=2 S=3 union=5  IoU 2/5
#   B = {2,3,5,6}:     I=2 S=4 union=6  IoU 1/3
#   C = {1,7}:         I=1 S=2 union=5  IoU 1/5
P1 = 10
U1 = cells(P1, 0, 1, 2, 3)[None]
C1 = np.stack([cells(P1, 0, 1, 4), cells(P1, 2, 3, 5, 6), cells(P1, 1, 7)])
N1 = ["A", "B", "C"]


def test_step1_only():
    r = only(reference_search(U1, C1, N1, max_length=1, beam_size=10))
    assert r == {
        "unit": 0,
        "formula": "A",
        "iou": 2 / 5,
        "score": 2 / 5,
        "primitive": "A",
        "primitive_iou": 2 / 5,
        "beam": [("A", 2 / 5), ("B", 1 / 3), ("C", 1 / 5)],
    }
    r = only(reference_search(U1, C1, N1, max_length=1, beam_size=2))
    assert r["beam"] == [("A", 2 / 5), ("B", 1 / 3)]


def test_step2_tie_keeps_pool_order():
    # beam_size=4. Step 1 beam [A .4, B 1/3, C .2] (C kept: beam_size 4 > 3 concepts).
    # Step 2 pool (beam first, then F=A, F=B, F=C, each C in index order, ops or/and/and_not):
    #   A .4, B 1/3, C .2,
    #   (A OR B)={0..6}: 4/7, (A AND B)={}: 0, (A AND NOT B)=A: 2/5,
    #   (A OR C)={0,1,4,7}: 2/6, (A AND C)={1}: 1/4, (A AND NOT C)={0,4}: 1/5,
    #   (B OR A): 4/7, (B AND A): 0, (B AND NOT A)=B: 1/3,
    #   (B OR C)={1,2,3,5,6,7}: 3/7, (B AND C)={}: 0, (B AND NOT C)=B: 1/3,
    #   (C OR A)={0,1,4,7}: 2/6, (C AND A)={1}: 1/4, (C AND NOT A)={7}: 0/5,
    #   (C OR B): 3/7, (C AND B): 0, (C AND NOT B)=C: 1/5
    # Ranking: (A OR B), (B OR A) [tie, pool order], (B OR C), (C OR B) [tie], A .4 before
    # (A AND NOT B) .4 [old beam member first].
    r = only(reference_search(U1, C1, N1, max_length=2, beam_size=5))
    assert r["beam"] == [
        ("(A OR B)", 4 / 7),
        ("(B OR A)", 4 / 7),
        ("(B OR C)", 3 / 7),
        ("(C OR B)", 3 / 7),
        ("A", 2 / 5),
    ]
    assert (r["formula"], r["iou"], r["score"]) == ("(A OR B)", 4 / 7, 4 / 7)
    assert (r["primitive"], r["primitive_iou"]) == ("A", 2 / 5)
    r = only(reference_search(U1, C1, N1, max_length=2, beam_size=6))
    assert [t for t, _ in r["beam"]][-2:] == ["A", "(A AND NOT B)"]


def test_step3_by_hand():
    # beam_size=3. Step 1 beam [A, B, C]. Step 2 beam: (A OR B) 4/7, (B OR A) 4/7, (B OR C) 3/7.
    # Step 3 new candidates:
    #   F=(A OR B) (leaves A,B), C: OR C={0..7}: 4/8, AND C={1}: 1/4, AND NOT C={0,2..6}: 3/7
    #   F=(B OR A): the same three values
    #   F=(B OR C) (leaves B,C), A: OR A={0..7}: 4/8, AND A={1}: 1/4, AND NOT A={2,3,5,6,7}: 2/7
    # Ranking: (A OR B), (B OR A), ((A OR B) OR C) .5 (first of the three .5 entries).
    r = only(reference_search(U1, C1, N1, max_length=3, beam_size=3))
    assert r["beam"] == [("(A OR B)", 4 / 7), ("(B OR A)", 4 / 7), ("((A OR B) OR C)", 0.5)]
    # beam_size=6: step 2 beam (see test_step2_tie_keeps_pool_order) is
    #   (A OR B), (B OR A), (B OR C), (C OR B), A, (A AND NOT B).
    # Step 3 new: ((A OR B) OR C) .5, ((B OR A) OR C) .5, ((B OR C) OR A) .5,
    # ((C OR B) OR A) .5 (all = {0..7}); F=A regenerates (A OR B), (A AND NOT B): skipped.
    r = only(reference_search(U1, C1, N1, max_length=3, beam_size=6))
    assert r["beam"] == [
        ("(A OR B)", 4 / 7),
        ("(B OR A)", 4 / 7),
        ("((A OR B) OR C)", 0.5),
        ("((B OR A) OR C)", 0.5),
        ("((B OR C) OR A)", 0.5),
        ("((C OR B) OR A)", 0.5),
    ]
    # beam_size=8: the step 2 beam also holds B and (A OR C) (1/3 each, pool order), so
    # step 3 adds ((A OR C) OR B) = {0..7} .5 as the fifth .5 entry, then (B OR C) 3/7.
    r = only(reference_search(U1, C1, N1, max_length=3, beam_size=8))
    assert r["beam"][5:] == [("((C OR B) OR A)", 0.5), ("((A OR C) OR B)", 0.5), ("(B OR C)", 3 / 7)]


def test_complexity_penalty_shorter_wins():
    # penalty 0.6: (A OR B) scores 4/7*0.6 = 0.3428... < A's 0.4; B's 1/3 < 0.3428.
    r = only(reference_search(U1, C1, N1, max_length=2, beam_size=3, complexity_penalty=0.6))
    assert r["beam"] == [("A", 0.4), ("(A OR B)", (4 / 7) * 0.6), ("(B OR A)", (4 / 7) * 0.6)]
    assert (r["formula"], r["iou"], r["score"]) == ("A", 0.4, 0.4)
    # penalty 0.9: (A OR B) scores 0.514 > 0.4 and keeps its raw IoU in "iou".
    r = only(reference_search(U1, C1, N1, max_length=2, beam_size=1, complexity_penalty=0.9))
    assert (r["formula"], r["iou"], r["score"]) == ("(A OR B)", 4 / 7, (4 / 7) * 0.9)
    # length 3 uses penalty ** 2, computed as a Python float power.
    r = only(reference_search(U1, C1, N1, max_length=3, beam_size=3, complexity_penalty=0.95))
    texts = dict(r["beam"])
    assert texts["((A OR B) OR C)"] == 0.5 * (0.95 ** 2)
    assert r["beam"][0] == ("(A OR B)", (4 / 7) * 0.95)


def test_precision_and_recall():
    # precision = I/S: A 2/3, B 2/4, C 1/2 (B before C on the tie).
    r = only(reference_search(U1, C1, N1, max_length=1, metric="precision"))
    assert r["beam"] == [("A", 2 / 3), ("B", 0.5), ("C", 0.5)]
    # step 2, beam_size 1 (beam [A]): (A OR B) 4/7, (A AND B) S=0 -> 0, (A AND NOT B) 2/3,
    # (A OR C) 2/4, (A AND C)={1} 1/1, (A AND NOT C)={0,4} 1/2 -> (A AND C) wins.
    r = only(reference_search(U1, C1, N1, max_length=2, beam_size=1, metric="precision"))
    assert (r["formula"], r["iou"], r["primitive"], r["primitive_iou"]) == ("(A AND C)", 1.0, "A", 2 / 3)
    # recall = I/|U|: A 2/4, B 2/4, C 1/4; step 2 from [A]: (A OR B) covers U -> 1.0.
    r = only(reference_search(U1, C1, N1, max_length=1, metric="recall"))
    assert r["beam"] == [("A", 0.5), ("B", 0.5), ("C", 0.25)]
    r = only(reference_search(U1, C1, N1, max_length=2, beam_size=1, metric="recall"))
    assert r["beam"] == [("(A OR B)", 1.0)]


# Data set 2: P = 10, U = {0,1,2,3}; A = {0,1} (IoU 1/2), B = {2,3} (1/2), C = {9} (0).
P2 = 10
U2 = cells(P2, 0, 1, 2, 3)[None]
C2 = np.stack([cells(P2, 0, 1), cells(P2, 2, 3), cells(P2, 9)])
N2 = ["A", "B", "C"]


def test_dedup_of_regenerated_formula():
    # ops or/and, beam_size 4.
    # Step 1 beam: [A .5, B .5] (C has IoU 0).
    # Step 2 pool: A, B, (A OR B) 1, (A AND B) 0, (A OR C) {0,1,9}: 2/5, (A AND C) 0,
    #              (B OR A) 1, (B AND A) 0, (B OR C) 2/5, (B AND C) 0
    #   -> beam [(A OR B) 1, (B OR A) 1, A .5, B .5].
    # Step 3 pool: the beam, then
    #   F=(A OR B): ((A OR B) OR C) 4/5, ((A OR B) AND C) 0
    #   F=(B OR A): ((B OR A) OR C) 4/5, ((B OR A) AND C) 0
    #   F=A: (A OR B) is already in the pool -> NOT added again; (A AND B) 0 (not in the
    #        pool any more: added), (A OR C) 2/5, (A AND C) 0
    #   F=B: (B OR A) skipped likewise; (B AND A) 0, (B OR C) 2/5, (B AND C) 0
    # Without the dedup the copies of (A OR B), (B OR A) (score 1) would fill the beam.
    r = only(reference_search(U2, C2, N2, max_length=3, beam_size=4, ops=("or", "and")))
    assert r["beam"] == [
        ("(A OR B)", 1.0),
        ("(B OR A)", 1.0),
        ("((A OR B) OR C)", 0.8),
        ("((B OR A) OR C)", 0.8),
    ]
    assert (r["primitive"], r["primitive_iou"]) == ("A", 0.5)
    # Whole pool visible with a large beam (zero scores stay): the step 2 beam holds all 10
    # entries of the step 2 pool; step 3 adds 2 ops * 1 concept for each of the 8 length-2
    # formulas (16), while A and B only regenerate formulas already in the pool: 26 entries.
    r = only(reference_search(U2, C2, N2, max_length=3, beam_size=100, ops=("or", "and")))
    texts = [t for t, _ in r["beam"]]
    assert len(texts) == 26 == len(set(texts))
    assert texts.count("(A OR B)") == 1
    assert r["beam"][-1][1] == 0.0
    assert dict(r["beam"])["(A AND B)"] == 0.0


def test_dedup_pool_sizes_large_beam():
    # All 3 concepts fire (IoU > 0), beam_size 100: step 2 pool = 3 + 3*2*3 = 21;
    # step 3: the 3 leaves regenerate only formulas already present (0 new), the 18
    # length-2 formulas each add 1 concept * 3 ops -> 21 + 54 = 75 entries (93 without dedup).
    r = only(reference_search(U1, C1, N1, max_length=3, beam_size=100))
    texts = [t for t, _ in r["beam"]]
    assert len(texts) == 75 == len(set(texts))
    r2 = only(reference_search(U1, C1, N1, max_length=2, beam_size=100))
    assert len(r2["beam"]) == 21


def test_allow_repeats():
    # ops or, beam_size 10, step 1 beam [A, B].
    # allow_repeats=True pool: A .5, B .5, (A OR A) .5, (A OR B) 1, (A OR C) 2/5,
    #                          (B OR A) 1, (B OR B) .5, (B OR C) 2/5
    r = only(reference_search(U2, C2, N2, max_length=2, beam_size=10, ops=("or",), allow_repeats=True))
    assert r["beam"] == [
        ("(A OR B)", 1.0),
        ("(B OR A)", 1.0),
        ("A", 0.5),
        ("B", 0.5),
        ("(A OR A)", 0.5),
        ("(B OR B)", 0.5),
        ("(A OR C)", 0.4),
        ("(B OR C)", 0.4),
    ]
    r = only(reference_search(U2, C2, N2, max_length=2, beam_size=10, ops=("or",)))
    assert r["beam"] == [
        ("(A OR B)", 1.0),
        ("(B OR A)", 1.0),
        ("A", 0.5),
        ("B", 0.5),
        ("(A OR C)", 0.4),
        ("(B OR C)", 0.4),
    ]


def test_allow_repeats_deeper_leaf():
    # ((A OR B) AND NOT A) is formed only with allow_repeats.
    r = only(reference_search(U2, C2, N2, max_length=3, beam_size=100, allow_repeats=True))
    assert "((A OR B) AND NOT A)" in dict(r["beam"])
    assert dict(r["beam"])["((A OR B) AND NOT A)"] == 0.5
    r = only(reference_search(U2, C2, N2, max_length=3, beam_size=100))
    assert "((A OR B) AND NOT A)" not in dict(r["beam"])


def test_candidate_limit():
    # candidate_limit=1: candidates = [A] (A and B tie at .5, A has the lower index).
    # Step 2 pool: A .5, B .5; F=A: only A -> skipped (repeat); F=B: (B OR A) 1,
    # (B AND A) 0, (B AND NOT A)=B .5.
    r = only(reference_search(U2, C2, N2, max_length=2, beam_size=10, candidate_limit=1))
    assert r["beam"] == [("(B OR A)", 1.0), ("A", 0.5), ("B", 0.5), ("(B AND NOT A)", 0.5), ("(B AND A)", 0.0)]
    # candidate_limit=0: no candidates, the beam stays.
    r = only(reference_search(U2, C2, N2, max_length=3, beam_size=10, candidate_limit=0))
    assert r["beam"] == [("A", 0.5), ("B", 0.5)]
    # A limit above the number of firing concepts excludes C (IoU 0).
    r = only(reference_search(U2, C2, N2, max_length=3, beam_size=100, candidate_limit=5))
    assert all("C" not in t for t, _ in r["beam"])
    r_all = only(reference_search(U2, C2, N2, max_length=3, beam_size=100))
    assert any("C" in t for t, _ in r_all["beam"])


def test_candidate_limit_order_is_ranking():
    # Candidates come in ranking order (best first), not index order.
    # P=8, U={0..3}; X={4} (IoU 0 -> not a candidate), Y={3} (1/4), Z={0,1,2} (3/4).
    P = 8
    U = cells(P, 0, 1, 2, 3)[None]
    C = np.stack([cells(P, 4), cells(P, 3), cells(P, 0, 1, 2)])
    r = only(reference_search(U, C, ["X", "Y", "Z"], max_length=2, beam_size=10, ops=("and",),
                              candidate_limit=2, allow_repeats=True))
    # Step 1 beam [Z .75, Y .25]. Pool: Z, Y, F=Z: (Z AND Z) .75, (Z AND Y) 0;
    # F=Y: (Y AND Z) 0, (Y AND Y) .25.
    assert r["beam"] == [("Z", 0.75), ("(Z AND Z)", 0.75), ("Y", 0.25), ("(Y AND Y)", 0.25),
                         ("(Z AND Y)", 0.0), ("(Y AND Z)", 0.0)]


def test_unit_that_never_fires():
    U = np.zeros((2, P1), dtype=bool)
    U[1] = U1[0]
    res = reference_search(U, C1, N1, max_length=3, beam_size=5)
    assert res[0] == {
        "unit": 0,
        "formula": None,
        "iou": 0.0,
        "score": 0.0,
        "primitive": None,
        "primitive_iou": 0.0,
        "beam": [],
    }
    assert res[1]["unit"] == 1 and res[1]["formula"] == "(A OR B)"


def test_no_concept_overlaps():
    U = cells(P1, 8, 9)[None]
    r = only(reference_search(U, C1[:2], N1[:2], max_length=2))
    assert r["beam"] == [] and r["formula"] is None and r["primitive"] is None


def test_or_not_padding():
    # P = 70 (not a multiple of 64): U = {0..59}, A = {0..9} (1/6), B = {60..69} (0), E = {} (0).
    # ops or_not only, step 1 beam [A]. Pool: A 1/6,
    #   (A OR NOT B) = {0..59}: I=60 S=60 -> 1.0   (padding bits would make S 118)
    #   (A OR NOT E) = all 70 cells: I=60 S=70 -> 60/70
    P = 70
    U = np.zeros((1, P), bool)
    U[0, :60] = True
    A = np.zeros(P, bool)
    A[:10] = True
    B = np.zeros(P, bool)
    B[60:] = True
    E = np.zeros(P, bool)
    r = only(reference_search(U, np.stack([A, B, E]), ["A", "B", "E"], max_length=2, beam_size=5,
                              ops=("or_not",)))
    assert r["beam"] == [("(A OR NOT B)", 1.0), ("(A OR NOT E)", 60 / 70), ("A", 1 / 6)]
    # Length 3 from a materialised OR NOT formula: ((A OR NOT E) AND NOT B) = {0..59} -> 1.0,
    # so its mask must not carry padding bits either.
    # Step 2 (ops and_not, or_not) beam: (A OR NOT B) 1, (A OR NOT E) 6/7, A, (A AND NOT B),
    # (A AND NOT E) (1/6 each). Step 3: ((A OR NOT B) AND NOT E) = {0..59} 1.0,
    # ((A OR NOT E) AND NOT B) 1.0, ((A AND NOT E) OR NOT B) 1.0 -> with the beam's
    # (A OR NOT B) the four 1.0 entries, then (A OR NOT E) 6/7 (old beam member first).
    r = only(reference_search(U, np.stack([A, B, E]), ["A", "B", "E"], max_length=3, beam_size=5,
                              ops=("and_not", "or_not")))
    assert r["beam"] == [("(A OR NOT B)", 1.0), ("((A OR NOT B) AND NOT E)", 1.0),
                         ("((A OR NOT E) AND NOT B)", 1.0), ("((A AND NOT E) OR NOT B)", 1.0),
                         ("(A OR NOT E)", 60 / 70)]
    r = only(reference_search(U, np.stack([A, B, E]), ["A", "B", "E"], max_length=3, beam_size=100,
                              ops=("and_not", "or_not")))
    d = dict(r["beam"])
    assert d["((A OR NOT B) OR NOT E)"] == 60 / 70
    assert d["((A AND NOT B) OR NOT E)"] == 60 / 70
    assert d["((A AND NOT B) AND NOT E)"] == 1 / 6


def test_ops_order_is_canonical():
    a = reference_search(U1, C1, N1, max_length=3, beam_size=7, ops=("or", "and", "and_not", "or_not"))
    b = reference_search(U1, C1, N1, max_length=3, beam_size=7, ops=("or_not", "and_not", "and", "or"))
    assert a == b
    c = reference_search(U1, C1, N1, max_length=3, beam_size=7, ops=["and", "or"])
    d = reference_search(U1, C1, N1, max_length=3, beam_size=7, ops=("or", "and"))
    assert c == d


def test_validation():
    with pytest.raises(ValueError):
        reference_search(U1, C1, N1, ops=("xor",))
    with pytest.raises(ValueError):
        reference_search(U1, C1, N1, metric="f1")
    with pytest.raises(ValueError):
        reference_search(U1, C1, N1[:2])
    with pytest.raises(ValueError):
        reference_search(U1, C1[:, :5], N1)


def test_several_units_independent():
    rng = np.random.default_rng(5)
    U = rng.random((4, 200)) < 0.2
    C = rng.random((6, 200)) < 0.3
    all_units = reference_search(U, C, max_length=3, beam_size=3)
    for u in range(4):
        single = only(reference_search(U[u:u + 1], C, max_length=3, beam_size=3))
        single["unit"] = u
        assert all_units[u] == single


def test_result_types():
    r = only(reference_search(U1, C1, N1, max_length=2, beam_size=2))
    assert type(r["iou"]) is float and type(r["score"]) is float and type(r["primitive_iou"]) is float
    assert all(type(s) is float and type(t) is str for t, s in r["beam"])
    assert type(r["unit"]) is int


# --------------------------------------------------------------------------------------
# Packed counts
# --------------------------------------------------------------------------------------
def test_pack_masks_layout_and_padding():
    m = np.zeros((2, 70), bool)
    m[0, [0, 63, 64, 69]] = True
    m[1, :] = True
    w = pack_masks(m)
    assert w.dtype == np.uint64 and w.shape == (2, 2)
    assert int(w[0, 0]) == (1 | (1 << 63)) and int(w[0, 1]) == (1 | (1 << 5))
    assert int(w[1, 1]) == (1 << 6) - 1  # padding bits stay zero
    assert int(w[1, 0]) == (1 << 64) - 1


def test_primitive_counts_and_metric():
    rng = np.random.default_rng(1)
    U = rng.random((3, 131)) < 0.3
    C = rng.random((5, 131)) < 0.4
    inter, us, cs = reference_primitive_counts(U, C)
    assert inter.dtype == np.int64
    for u in range(3):
        assert us[u] == U[u].sum()
        for j in range(5):
            assert inter[u, j] == (U[u] & C[j]).sum()
    assert list(cs) == [int(c.sum()) for c in C]
    m = reference_metric("iou", np.array([0, 2, 0]), np.array([0, 3, 4]), 4)
    assert list(m) == [0.0, 2 / 5, 0.0]
    assert list(reference_metric("precision", np.array([0, 2]), np.array([0, 3]), 4)) == [0.0, 2 / 3]
    assert list(reference_metric("recall", np.array([0, 2]), np.array([0, 3]), 0)) == [0.0, 0.0]
    assert list(reference_metric("iou", np.array([0]), np.array([0]), 0)) == [0.0]


# --------------------------------------------------------------------------------------
# Brute force cross-check
# --------------------------------------------------------------------------------------
_OPS = ("or", "and", "and_not", "or_not")
_TXT = {"or": "OR", "and": "AND", "and_not": "AND NOT", "or_not": "OR NOT"}


def naive_metric(metric, U, G):
    i = 0
    s = 0
    nu = 0
    for a, b in zip(U.tolist(), G.tolist()):
        i += a and b
        s += b
        nu += a
    if metric == "iou":
        d = nu + s - i
    elif metric == "precision":
        d = s
    else:
        d = nu
    return 0.0 if d == 0 else float(np.float64(i) / np.float64(d))


def naive_search(units, concepts, names, max_length, beam_size, ops, metric, allow_repeats,
                 candidate_limit, penalty):
    """Evaluate every candidate formula explicitly with plain boolean arrays."""
    K = len(concepts)
    order = [op for op in _OPS if op in ops]
    out = []
    for u, U in enumerate(units):
        prim = [naive_metric(metric, U, concepts[j]) for j in range(K)]
        ranked = sorted([j for j in range(K) if prim[j] > 0], key=lambda j: -prim[j])
        # entries: (text, leaf names, mask, metric, score)
        beam = [(format_name(names[j]), [names[j]], concepts[j].copy(), prim[j], prim[j]) for j in ranked[:beam_size]]
        primitive = (beam[0][0], beam[0][3]) if beam else (None, 0.0)
        cands = list(range(K)) if candidate_limit is None else ranked[:candidate_limit]
        for length in range(2, max_length + 1):
            pool = list(beam)
            texts = [e[0] for e in pool]
            for text, leaves, mask, _, _ in beam:
                for j in cands:
                    if not allow_repeats and names[j] in leaves:
                        continue
                    for op in order:
                        t = "(" + text + " " + _TXT[op] + " " + format_name(names[j]) + ")"
                        if t in texts:
                            continue
                        c = concepts[j]
                        if op == "or":
                            g = mask | c
                        elif op == "and":
                            g = mask & c
                        elif op == "and_not":
                            g = mask & ~c
                        else:
                            g = mask | ~c
                        m = naive_metric(metric, U, g)
                        texts.append(t)
                        pool.append((t, leaves + [names[j]], g, m, m * float(penalty) ** (length - 1)))
            # stable selection sort-free ranking: repeatedly take the first maximum
            beam = []
            rest = list(pool)
            while rest and len(beam) < beam_size:
                best = 0
                for i in range(1, len(rest)):
                    if rest[i][4] > rest[best][4]:
                        best = i
                beam.append(rest.pop(best))
        out.append({
            "unit": u,
            "formula": beam[0][0] if beam else None,
            "iou": beam[0][3] if beam else 0.0,
            "score": beam[0][4] if beam else 0.0,
            "primitive": primitive[0],
            "primitive_iou": primitive[1],
            "beam": [(e[0], e[4]) for e in beam],
        })
    return out


@st.composite
def search_cases(draw):
    P = draw(st.sampled_from([1, 5, 12, 63, 64, 65, 100, 130]))
    n_units = draw(st.integers(1, 2))
    K = draw(st.integers(1, 5))
    density = draw(st.sampled_from([0.1, 0.3, 0.5, 0.9]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    units = rng.random((n_units, P)) < density
    concepts = rng.random((K, P)) < draw(st.sampled_from([0.05, 0.3, 0.6]))
    if draw(st.booleans()):  # duplicated concepts produce exact ties
        concepts[-1] = concepts[0]
    if draw(st.booleans()):
        names = draw(st.lists(st.sampled_from(["a", "b", "c d", "AND", "x\"y", ""]), min_size=K, max_size=K))
    else:
        names = [f"n{j}" for j in range(K)]
    params = dict(
        max_length=draw(st.integers(1, 3)),
        beam_size=draw(st.integers(1, 5)),
        ops=tuple(draw(st.lists(st.sampled_from(_OPS), min_size=0, max_size=4, unique=True))),
        metric=draw(st.sampled_from(["iou", "precision", "recall"])),
        allow_repeats=draw(st.booleans()),
        candidate_limit=draw(st.one_of(st.none(), st.integers(0, K + 1))),
        complexity_penalty=draw(st.sampled_from([1.0, 0.99, 0.7, 1.25])),
    )
    return units, concepts, names, params


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(search_cases())
def test_against_brute_force(case):
    units, concepts, names, p = case
    got = reference_search(units, concepts, names, **p)
    want = naive_search(list(units), list(concepts), names, p["max_length"], p["beam_size"], p["ops"],
                        p["metric"], p["allow_repeats"], p["candidate_limit"], p["complexity_penalty"])
    assert got == want


def test_brute_force_is_sensitive():
    # The cross-check must be able to fail: a wrong op order changes the tie order.
    units, concepts = U1, C1
    a = naive_search(list(units), list(concepts), N1, 2, 10, ("or", "and", "and_not"), "iou", False, None, 1.0)
    assert a == reference_search(U1, C1, N1, max_length=2, beam_size=10)
    b = naive_search(list(units), list(concepts), N1, 2, 10, ("or", "and"), "iou", False, None, 1.0)
    assert b != reference_search(U1, C1, N1, max_length=2, beam_size=10)


# --------------------------------------------------------------------------------------
# Pillow-compatible resize
# --------------------------------------------------------------------------------------
def _pass_order():
    PIL = pytest.importorskip("PIL")
    major = int(PIL.__version__.split(".")[0])
    return "pillow13" if major >= 13 else "horizontal_first"


def _pillow(img, out_h, out_w):
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(img, dtype=np.float32))
    assert im.mode == "F"
    return np.asarray(im.resize((out_w, out_h), Image.BILINEAR), dtype=np.float32)


def _same_bits(a, b):
    return a.shape == b.shape and a.dtype == b.dtype == np.float32 and np.array_equal(a.view(np.uint32), b.view(np.uint32))


SIZES = [
    (7, 7, 112, 112),
    (7, 7, 56, 56),
    (1, 1, 5, 5),
    (1, 1, 112, 112),
    (3, 3, 3, 3),
    (5, 5, 2, 2),
    (3, 5, 7, 4),
    (4, 9, 13, 6),
    (14, 14, 112, 112),
    (2, 3, 112, 112),
    (112, 112, 7, 7),
    (10, 13, 3, 29),  # vertical first in Pillow >= 13
    (13, 10, 29, 3),
    (20, 8, 2, 7),
    (6, 6, 6, 11),  # one pass only
    (6, 6, 17, 6),
]


@pytest.mark.parametrize("h, w, oh, ow", SIZES)
@pytest.mark.parametrize("scale", [1.0, 1e-3, 1e4])
def test_resize_matches_pillow(h, w, oh, ow, scale):
    order = _pass_order()
    rng = np.random.default_rng(h * 1000 + w * 100 + oh * 10 + ow)
    img = (rng.standard_normal((h, w)) * scale).astype(np.float32)
    got = pil_resize_bilinear(img, oh, ow, pass_order=order)
    assert _same_bits(got, _pillow(img, oh, ow))


def test_resize_random_shapes_match_pillow():
    order = _pass_order()
    rng = np.random.default_rng(7)
    for _ in range(300):
        h, w, oh, ow = (int(v) for v in rng.integers(1, 40, size=4))
        img = rng.standard_normal((h, w)).astype(np.float32)
        assert _same_bits(pil_resize_bilinear(img, oh, ow, pass_order=order), _pillow(img, oh, ow)), (h, w, oh, ow)


def test_resize_special_values_match_pillow():
    order = _pass_order()
    img = np.array([[0.0, -0.0, 1e-40], [3.4e38, -3.4e38, 7.0]], dtype=np.float32)
    for oh, ow in [(5, 7), (1, 1), (2, 3), (4, 2)]:
        assert _same_bits(pil_resize_bilinear(img, oh, ow, pass_order=order), _pillow(img, oh, ow))


def test_resize_identity_and_constant():
    img = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    assert _same_bits(pil_resize_bilinear(img, 3, 4), img)
    c = pil_resize_bilinear(np.full((1, 1), 0.3, np.float32), 5, 6)
    assert c.shape == (5, 6) and np.all(c == np.float32(0.3))


def test_resize_hand_values():
    # 1x2 -> 1x4: scale 0.5, centres 0.25, 0.75, 1.25, 1.75 -> weights clamp at the edges:
    # out = [a, 0.75a+0.25b, 0.25a+0.75b, b]
    img = np.array([[0.0, 4.0]], np.float32)
    assert pil_resize_bilinear(img, 1, 4).tolist() == [[0.0, 1.0, 3.0, 4.0]]


def test_pillow_vertical_first_rule():
    assert not pillow_vertical_first(7, 7, 112, 112)
    assert pillow_vertical_first(10, 13, 3, 29)
    assert pillow_vertical_first(10, 8, 1, 4)  # 9 > 2*4
    assert not pillow_vertical_first(9, 8, 1, 4)  # 8 == 2*4
    h, w, oh, ow = 10, 13, 3, 29
    img = np.random.default_rng(3).standard_normal((h, w)).astype(np.float32)
    a = pil_resize_bilinear(img, oh, ow, pass_order="pillow13")
    b = pil_resize_bilinear(img, oh, ow, pass_order="horizontal_first")
    assert not np.array_equal(a, b)  # the order is observable, so the rule is tested


# --------------------------------------------------------------------------------------
# Thresholds and unit masks
# --------------------------------------------------------------------------------------
def test_thresholds_by_hand():
    acts = np.arange(8, dtype=np.float32).reshape(2, 1, 2, 2)  # unit 0: values 0..7
    t = reference_thresholds(acts)
    # linear quantile at 0.995: position 0.995 * 7 = 6.965 -> 6 + 0.965 * (7 - 6)
    assert t.dtype == np.float64 and t.shape == (1,)
    assert t[0] == pytest.approx(6.965, abs=1e-12)
    assert reference_thresholds(acts, quantile=0.5)[0] == pytest.approx(3.5)


def test_thresholds_match_numpy_per_unit():
    rng = np.random.default_rng(2)
    for acts in [rng.standard_normal((5, 3, 4, 6)).astype(np.float32),
                 rng.standard_normal((40, 4)),
                 rng.standard_normal((6, 2, 3, 3)).astype(np.float16)]:
        t = reference_thresholds(acts, quantile=0.01)
        for u in range(acts.shape[1]):
            assert t[u] == np.quantile(acts[:, u].astype(np.float64).ravel(), 0.99)


def test_unit_masks_bool_layout():
    rng = np.random.default_rng(0)
    acts = rng.random((3, 2, 4, 5)) < 0.5  # [N, U, H, W]
    m = reference_unit_masks(acts, (4, 5))
    assert m.dtype == bool and m.shape == (2, 3 * 20)
    for u in range(2):
        for n in range(3):
            for y in range(4):
                for x in range(5):
                    assert m[u, n * 20 + y * 5 + x] == acts[n, u, y, x]


def test_unit_masks_bool_per_sample():
    acts = np.array([[True, False], [False, True], [True, True]])  # [N=3, U=2]
    m = reference_unit_masks(acts, (2, 3))
    assert m.shape == (2, 18)
    assert m[0].tolist() == [True] * 6 + [False] * 6 + [True] * 6
    assert m[1].tolist() == [False] * 6 + [True] * 12
    m4 = reference_unit_masks(acts[:, :, None, None], (2, 3))
    assert np.array_equal(m, m4)


def test_unit_masks_float_per_sample():
    acts = np.array([[0.0, 5.0], [1.0, 4.0], [2.0, 3.0], [3.0, 2.0]], dtype=np.float64)  # [N, U]
    m = reference_unit_masks(acts, (2, 2), threshold=[1.5, 3.5])
    assert m[0].tolist() == [False] * 8 + [True] * 8
    assert m[1].tolist() == [True] * 8 + [False] * 8
    m_scalar = reference_unit_masks(acts, (1, 1), threshold=2.5)
    assert m_scalar.tolist() == [[False, False, False, True], [True, True, True, False]]
    # default threshold: the 0.995 quantile of the 4 values: only the maximum exceeds it
    d = reference_unit_masks(acts, (1, 1))
    assert d.tolist() == [[False, False, False, True], [True, False, False, False]]


def test_unit_masks_same_grid_no_resize():
    rng = np.random.default_rng(4)
    acts = rng.standard_normal((3, 2, 4, 4))
    t = reference_thresholds(acts, 0.2)
    m = reference_unit_masks(acts, (4, 4), quantile=0.2)
    want = acts.astype(np.float32).astype(np.float64) > t[None, :, None, None]
    assert np.array_equal(m, want.transpose(1, 0, 2, 3).reshape(2, -1))


@pytest.mark.parametrize("hw, grid", [((7, 7), (28, 28)), ((3, 5), (8, 11)), ((1, 1), (4, 4)), ((6, 6), (3, 3))])
def test_unit_masks_upsampled_match_pillow(hw, grid):
    order = _pass_order()
    rng = np.random.default_rng(11)
    N, U = 4, 3
    acts = rng.standard_normal((N, U) + hw).astype(np.float64)
    m = reference_unit_masks(acts, grid, quantile=0.3, pass_order=order)
    t = reference_thresholds(acts, 0.3)
    assert m.shape == (U, N * grid[0] * grid[1])
    want = np.zeros((U, N, grid[0], grid[1]), bool)
    for n in range(N):
        for u in range(U):
            up = _pillow(acts[n, u].astype(np.float32), *grid)
            want[u, n] = up.astype(np.float64) > t[u]
    assert np.array_equal(m, want.reshape(U, -1))
    assert m.any()


def test_unit_masks_threshold_per_unit_array():
    rng = np.random.default_rng(12)
    acts = rng.standard_normal((2, 3, 2, 2)).astype(np.float32)
    th = np.array([0.0, 10.0, -10.0])
    m = reference_unit_masks(acts, (5, 5), threshold=th)
    assert m[1].sum() == 0 and m[2].all()
    up = np.stack([pil_resize_bilinear(acts[n, 0], 5, 5) for n in range(2)])
    assert np.array_equal(m[0], (up.astype(np.float64) > 0.0).ravel())
