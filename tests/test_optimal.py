"""The optimal search (method="optimal") against exhaustive enumeration of every formula.

The enumerator below is written apart from the engine: dense NumPy masks, every left-deep
formula of the grammar, scored in float64 the way DESIGN.md defines the score.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import compexp_core as cx
from compexp_core.engine.formula import OP_CODES

OPS = ("or", "and", "and_not", "or_not")
FAMILY = {"and": 0, "and_not": 0, "or": 1, "or_not": 1}


def _metric(metric: str, tp: int, size: int, u: int) -> float:
    denom = {"iou": u + size - tp, "precision": size, "recall": u}[metric]
    return tp / denom if denom > 0 else 0.0


def enumerate_all(unit: np.ndarray, masks: np.ndarray, max_length: int, ops, metric: str,
                  allow_repeats: bool, penalty: float) -> list:
    """Every formula of the grammar as ``(score, canonical key, text key)``."""
    K = masks.shape[1]
    u = int(unit.sum())
    apply = {"or": lambda f, c: f | c, "and": lambda f, c: f & c,
             "and_not": lambda f, c: f & ~c, "or_not": lambda f, c: f | ~c}
    out = []

    def visit(mask, key, used):
        length = len(key)
        tp, size = int((mask & unit).sum()), int(mask.sum())
        score = _metric(metric, tp, size, u) * penalty ** (length - 1)
        canon = (length, key[0]) + tuple(x for op, c in key[1:] for x in (OP_CODES[op], c))
        out.append((score, canon, key))
        if length == max_length:
            return
        for op in sorted(ops, key=OP_CODES.get):
            for j in range(K):
                if not allow_repeats and j in used:
                    continue
                visit(apply[op](mask, masks[:, j]), key + ((op, j),), used | {j})

    for j in range(K):
        visit(masks[:, j].copy(), (j,), {j})
    return out


def _text(key, names) -> str:
    s = names[key[0]]
    word = {"or": "OR", "and": "AND", "and_not": "AND NOT", "or_not": "OR NOT"}
    for op, c in key[1:]:
        s = f"({s} {word[op]} {names[c]})"
    return s


@st.composite
def instances(draw):
    n = draw(st.integers(1, 30))
    K = draw(st.integers(1, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    unit = rng.random(n) < draw(st.sampled_from([0.0, 0.2, 0.5, 0.9, 1.0]))
    cols = []
    for _ in range(K):
        kind = draw(st.sampled_from(["random", "random", "empty", "full", "copy", "unit",
                                     "overlap"]))
        if kind == "empty":
            cols.append(np.zeros(n, bool))
        elif kind == "full":
            cols.append(np.ones(n, bool))
        elif kind == "copy" and cols:
            cols.append(cols[draw(st.integers(0, len(cols) - 1))].copy())   # ties
        elif kind == "unit":
            cols.append(unit.copy())
        elif kind == "overlap":
            cols.append(unit & (rng.random(n) < 0.7) | (rng.random(n) < 0.1))
        else:
            cols.append(rng.random(n) < draw(st.sampled_from([0.1, 0.3, 0.6])))
    masks = np.stack(cols, axis=1)
    ops = draw(st.lists(st.sampled_from(OPS), min_size=1, max_size=4, unique=True))
    max_length = draw(st.integers(1, 3 if K > 3 else 4))
    return dict(unit=unit, masks=masks, ops=ops, max_length=max_length,
                metric=draw(st.sampled_from(["iou", "precision", "recall"])),
                allow_repeats=draw(st.booleans()),
                penalty=draw(st.sampled_from([1.0, 1.0, 0.5, 0.9, 1.1, 2.0])),
                beam_size=draw(st.integers(1, 3)))


def _search(inst, **kw):
    K = inst["masks"].shape[1]
    return cx.search_formulas(inst["unit"][:, None], inst["masks"],
                              names=[f"c{j}" for j in range(K)], max_length=inst["max_length"],
                              ops=inst["ops"], metric=inst["metric"],
                              allow_repeats=inst["allow_repeats"],
                              complexity_penalty=inst["penalty"], beam_size=inst["beam_size"],
                              device="cpu", **kw)[0]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances())
def test_optimal_equals_exhaustive_maximum(inst):
    """Score == the true maximum; >= beam; the tie rule picks the stated formula; proven."""
    every = enumerate_all(inst["unit"], inst["masks"], inst["max_length"], inst["ops"],
                          inst["metric"], inst["allow_repeats"], inst["penalty"])
    true_max = max(s for s, _, _ in every)
    beam = _search(inst)
    e = _search(inst, method="optimal")
    assert e.score == true_max
    assert e.score >= beam.score
    assert e.optimal is True and e.gap == 0.0 and e.optimality.upper_bound == e.score
    assert e.beam_suboptimal == (beam.score < true_max)
    names = [f"c{j}" for j in range(inst["masks"].shape[1])]
    if true_max <= 0:
        assert e.formula is None
    elif beam.score == true_max:
        assert str(e.formula) == str(beam.formula)        # the beam's answer when optimal
    else:
        first = min(c for s, c, _ in every if s == true_max)
        key = next(k for s, c, k in every if c == first)
        assert str(e.formula) == str(cx.Formula.parse(_text(key, names)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances(), st.integers(1, 4))
def test_budget_returns_incumbent_and_valid_bound(inst, nodes):
    """A node budget returns a formula of the grammar and a bound >= the true maximum."""
    every = enumerate_all(inst["unit"], inst["masks"], inst["max_length"], inst["ops"],
                          inst["metric"], inst["allow_repeats"], inst["penalty"])
    true_max = max(s for s, _, _ in every)
    e = _search(inst, method="optimal", node_budget=nodes)
    assert e.score <= true_max
    assert e.optimality.upper_bound >= true_max
    assert e.optimality.nodes_expanded <= nodes
    assert e.gap >= 0
    assert e.optimal == (e.optimality.upper_bound <= e.score)
    if e.formula is not None:
        assert any(str(cx.Formula.parse(_text(k, [f"c{j}" for j in range(inst["masks"].shape[1])])))
                   == str(e.formula) and s == e.score for s, _, k in every)


def planted(seed: int = 0):
    """U = X | Y; five decoys each cover 80% of U plus noise cells of their own: every beam
    of size <= 5 starts from decoys, and no length-2 formula from a decoy reaches IoU 1."""
    rng = np.random.default_rng(seed)
    P = 1000
    unit = np.zeros(P, bool)
    unit[:200] = True
    cols = [np.arange(P) < 100, (np.arange(P) >= 100) & (np.arange(P) < 200)]   # X, Y
    for i in range(5):
        d = unit.copy()
        d[rng.choice(200, 40, replace=False)] = False
        d[300 + 20 * i: 320 + 20 * i] = True
        cols.append(d)
    cols += [rng.random(P) < 0.2 for _ in range(3)]
    return unit, np.stack(cols, axis=1)


@pytest.mark.parametrize("beam_size", [1, 2, 3, 4, 5])
def test_planted_instance_beam_misses_optimal_finds(beam_size):
    unit, masks = planted()
    names = ["x", "y"] + [f"decoy{i}" for i in range(5)] + [f"r{i}" for i in range(3)]
    kw = dict(names=names, max_length=2, beam_size=beam_size, device="cpu")
    beam = cx.search_formulas(unit[:, None], masks, **kw)[0]
    e = cx.search_formulas(unit[:, None], masks, method="optimal", **kw)[0]
    assert beam.iou < 1.0
    assert str(e.formula) == "(x OR y)" and e.iou == 1.0 and e.optimal
    assert e.beam_suboptimal and str(e.beam[0][0]) == str(beam.formula)
    # It pruned: fewer prefixes expanded than the 10 concepts.
    assert e.optimality.nodes_expanded < masks.shape[1]


def test_first_concept_need_not_score_alone():
    """(c0 OR NOT c1) beats every concept it starts from: c0 is empty."""
    n = 20
    unit = np.arange(n) < 15
    masks = np.zeros((n, 2), bool)
    masks[15:, 1] = True                                     # c1 = ~U; c0 empty
    e = cx.search_formulas(unit[:, None], masks, ops=["or_not", "and"], max_length=2,
                           device="cpu", method="optimal")[0]
    assert str(e.formula) == "(c0 OR NOT c1)" and e.iou == 1.0


def test_stats_and_params_record_the_search():
    unit, masks = planted()
    r = cx.search_formulas(np.stack([unit, ~unit], 1), masks, max_length=3, method="optimal",
                           time_budget=30.0, device="cpu")
    assert r.params["method"] == "optimal" and r.params["time_budget"] == 30.0
    o = r.stats["optimal"]
    assert o["units"] == 2 and o["proven_optimal"] == 2
    assert o["counts_computed"] == o["nodes_expanded"] * masks.shape[1]


@pytest.mark.parametrize("kw, err, text", [
    (dict(method="exact"), ValueError, "unknown method"),
    (dict(method="optimal", semantics="reference-vision"), ValueError, "semantics"),
    (dict(node_budget=3), ValueError, "method='optimal'"),
    (dict(method="optimal", node_budget=0), ValueError, "node_budget"),
    (dict(method="optimal", node_budget=1.5), TypeError, "node_budget"),
    (dict(method="optimal", time_budget=float("nan")), ValueError, "time_budget"),
    (dict(method="optimal", time_budget="1"), TypeError, "time_budget"),
])
def test_bad_options_raise(kw, err, text):
    unit, masks = planted()
    with pytest.raises(err, match=text):
        cx.search_formulas(unit[:, None], masks, device="cpu", **kw)


def test_results_round_trip(tmp_path):
    unit, masks = planted()
    r = cx.search_formulas(unit[:, None], masks, max_length=2, beam_size=3, method="optimal",
                           device="cpu")
    for name in ("r.h5", "r.csv"):
        r.save(tmp_path / name)
        back = cx.load_results(tmp_path / name)
        assert back[0].optimality == r[0].optimality
        assert back[0].optimal and back[0].beam_suboptimal
    plain = cx.search_formulas(unit[:, None], masks, max_length=2, device="cpu")
    plain.save(tmp_path / "p.h5")
    assert cx.load_results(tmp_path / "p.h5")[0].optimality is None


def _descendant_maxima(unit, masks, max_length, ops, metric, allow_repeats, penalty):
    """``(length, tp, fp, best score over its strict descendants)`` for every prefix."""
    K = masks.shape[1]
    u = int(unit.sum())
    apply = {"or": lambda f, c: f | c, "and": lambda f, c: f & c,
             "and_not": lambda f, c: f & ~c, "or_not": lambda f, c: f | ~c}
    rows = []

    def visit(mask, length, used):      # returns the best score in the subtree, self included
        tp, size = int((mask & unit).sum()), int(mask.sum())
        own = _metric(metric, tp, size, u) * penalty ** (length - 1)
        below = 0.0
        if length < max_length:
            for op in ops:
                for j in range(K):
                    if allow_repeats or j not in used:
                        below = max(below, visit(apply[op](mask, masks[:, j]), length + 1,
                                                 used | {j}))
            rows.append((length, tp, size - tp, below))
        return max(own, below)

    for j in range(K):
        visit(masks[:, j].copy(), 1, {j})
    return rows


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances())
def test_completion_bound_is_admissible(inst):
    """For every prefix: bound (precise and loose) >= best score of any of its completions."""
    from compexp_core.engine.beam import SearchParams
    from compexp_core.engine.optimal import CompletionBound

    unit, masks = inst["unit"], inst["masks"]
    params = SearchParams(max_length=inst["max_length"], ops=inst["ops"], metric=inst["metric"],
                          allow_repeats=inst["allow_repeats"],
                          complexity_penalty=inst["penalty"])
    prim = (masks & unit[:, None]).sum(0)
    cb = CompletionBound(prim, masks.sum(0), int(unit.sum()), unit.size, params)
    rows = _descendant_maxima(unit, masks, inst["max_length"], inst["ops"], inst["metric"],
                              inst["allow_repeats"], inst["penalty"])
    for length, tp, fp, below in rows:
        steps = inst["max_length"] - length
        tight = float(cb.bound(np.array([tp]), np.array([fp]), length, steps)[0])
        loose = float(cb.bound(np.array([tp]), np.array([fp]), length, steps, precise=False)[0])
        assert below <= tight <= loose, (length, tp, fp)


def test_cli_search_optimal(tmp_path, capsys):
    from compexp_core.cli import main
    from compexp_core.synthetic import make_planted_dataset

    data = make_planted_dataset(n_samples=120, grid=(8, 8), n_units=4, seed=3)
    cx.save_activations(tmp_path / "acts.h5", data.acts)
    cx.save_concepts(tmp_path / "concepts.h5", data.concepts)
    out = tmp_path / "opt.h5"
    assert main(["search", str(tmp_path / "acts.h5"), str(tmp_path / "concepts.h5"), "-o",
                 str(out), "--length", "2", "--beam", "1", "--optimal", "--no-progress",
                 "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "of 4 units proven optimal" in text and "suboptimal for" in text
    result = cx.load_results(out)
    assert all(e.optimal for e in result) and result.params["method"] == "optimal"
    beam = cx.search_formulas(data.acts, data.concepts, max_length=2, beam_size=1, device="cpu")
    assert all(o.score >= b.score for o, b in zip(result, beam))
    assert main(["search", str(tmp_path / "acts.h5"), str(tmp_path / "concepts.h5"), "-o",
                 str(tmp_path / "x.h5"), "--node-budget", "5", "--no-progress"]) == 2
    assert "method='optimal'" in capsys.readouterr().err


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances(), st.booleans())
def test_last_step_bounds_from_count_rows_are_admissible(inst, dominating):
    """ParentBound and pair_bound (the last step's bounds from the parent's and the leaf's
    count rows) are >= the best score of every last step from every child of every prefix."""
    from compexp_core.engine.beam import SearchParams
    from compexp_core.engine.optimal import CompletionBound, ParentBound, pair_bound

    unit, masks = inst["unit"], inst["masks"]
    K, u = masks.shape[1], int(unit.sum())
    ops = inst["ops"]
    params = SearchParams(max_length=3, ops=ops, metric=inst["metric"],
                          complexity_penalty=inst["penalty"])
    cb = CompletionBound((masks & unit[:, None]).sum(0), masks.sum(0), u, unit.size, params)
    apply = {"or": lambda f, c: f | c, "and": lambda f, c: f & c,
             "and_not": lambda f, c: f & ~c, "or_not": lambda f, c: f | ~c}

    def counts(m):
        return int((m & unit).sum()), int((m & ~unit).sum())

    def row(m):          # |U & M & C_k|, |M & C_k & ~U| for every k
        return (masks & (m & unit)[:, None]).sum(0), (masks & (m & ~unit)[:, None]).sum(0)

    # Prefixes: single concepts and every length-2 formula (the bounds do not depend on length).
    prefixes = [masks[:, i].copy() for i in range(K)]
    prefixes += [apply[o](masks[:, i], masks[:, j]) for i in range(K) for j in range(K)
                 for o in ops]
    for F in prefixes:
        tp_f, fp_f = counts(F)
        g_f, fp_fk = row(F)
        pb = ParentBound(cb, (g_f + fp_fk)[None, :], g_f[None, :], np.array([tp_f]),
                         np.array([fp_f]))
        for j in range(K):
            for o in ops:
                H = apply[o](F, masks[:, j])
                tp, fp = counts(H)
                # Last steps the search forms: within a family (AND / AND NOT, OR / OR NOT),
                # (operator, concept) pairs in non-decreasing order (the rest are reorderings).
                formed = [(o2, k) for o2 in ops for k in range(K)
                          if FAMILY[o2] != FAMILY[o] or (OP_CODES[o2], k) >= (OP_CODES[o], j)]
                truth = max([_metric(inst["metric"], int((G & unit).sum()), int(G.sum()), u)
                             for o2, k in formed for G in [apply[o2](H, masks[:, k])]] + [0.0]
                            ) * inst["penalty"] ** 2
                code = np.array([OP_CODES[o]])
                b = pb.bound(np.array([0]), code, np.array([tp]), np.array([fp]), 2, dominating)
                assert truth <= b[0], ("parent", o, j)
                if "or_not" not in ops and o != "or_not":
                    g_j, fp_jk = row(masks[:, j])
                    pair = pair_bound(cb, code, np.array([tp]), np.array([fp]), np.array([tp_f]),
                                      np.array([fp_f]), g_f[None, :], fp_fk[None, :],
                                      np.array([j]), g_j[None, :], fp_jk[None, :], 2)
                    assert truth <= pair[0], ("pair", o, j)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances())
def test_branch_and_bound_without_incumbent_finds_the_maximum(inst):
    """With no beam incumbent (every pruning decision rests on the bounds alone), the score
    is still the true maximum, the formula scores it, and the proof is complete."""
    from compexp_core.engine.backends import get_backend
    from compexp_core.engine.beam import SearchParams
    from compexp_core.engine.optimal import OptimalBudget, search_unit_optimal
    from compexp_core.inputs import concepts_input

    unit, masks = inst["unit"], inst["masks"]
    K = masks.shape[1]
    every = enumerate_all(unit, masks, inst["max_length"], inst["ops"], inst["metric"],
                          inst["allow_repeats"], inst["penalty"])
    true_max = max(s for s, _, _ in every)
    params = SearchParams(max_length=inst["max_length"], ops=inst["ops"], metric=inst["metric"],
                          allow_repeats=inst["allow_repeats"], complexity_penalty=inst["penalty"])
    backend = get_backend("cpu")
    cs = concepts_input(masks, [f"c{j}" for j in range(K)])
    index = backend.prepare(cs)
    umasks, usize = backend.unit_masks(index, unit[:, None], np.array([0]), cs.grid, None)
    prim = backend.primitive_counts(index, umasks)[0]
    res = search_unit_optimal(backend, index, umasks, 0, prim, int(usize[0]), cs.sizes,
                              cs.n_cells, params, None, OptimalBudget(batch=2))
    assert res.score == true_max and res.optimality.upper_bound == true_max
    if true_max > 0:
        first = min(c for s, c, _ in every if s == true_max)
        assert res.key == next((k[0],) + tuple((OP_CODES[o], c) for o, c in k[1:])
                               for s, c, k in every if c == first)


def test_report_card_shows_beam_and_optimal_formulas(tmp_path):
    """The images report's card of an optimal search: proven optimal, and the beam's formula
    beside the optimal one when they differ."""
    from compexp_core.report import write_report
    from compexp_core.synthetic import make_planted_dataset

    data = make_planted_dataset(n_samples=60, grid=(8, 8), n_units=3, map_size=(4, 4), seed=1)
    r = cx.search_formulas(data.acts, data.concepts, max_length=3, beam_size=1,
                           method="optimal", device="cpu")
    # One explanation made to differ from its beam, whatever the search found.
    import dataclasses

    from compexp_core.results import SearchResult

    first = dataclasses.replace(r[0], beam=((cx.Formula.parse(data.concepts.names[0]), -1.0),))
    r = SearchResult([first] + [r[i] for i in range(1, len(r))], r.params)
    images = np.zeros((60, 16, 16, 3), np.uint8)
    index = write_report(r, tmp_path, acts=data.acts, concepts=data.concepts, images=images,
                         top_images=2)
    with open(index, encoding="utf-8") as fh:
        html = fh.read()
    assert html.count("proven optimal") == len(r)
    assert html.count("beam search found") == sum(bool(e.beam_suboptimal) for e in r) >= 1


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 60), st.integers(2, 6))
def test_pair_rows_equal_direct_counts(seed, n, K):
    """Two-leaf prefixes are expanded from the rows of A, B and A AND B (inclusion and
    exclusion): the rows must equal the counts of the formula's own mask, for every operator."""
    from compexp_core.engine.optimal import pair_rows

    rng = np.random.default_rng(seed)
    masks = rng.random((n, K)) < rng.random(K)
    unit = rng.random(n) < 0.4
    a, b = rng.integers(0, K, 2)
    apply = {"or": lambda f, c: f | c, "and": lambda f, c: f & c,
             "and_not": lambda f, c: f & ~c, "or_not": lambda f, c: f | ~c}

    def rows(m):
        return ((m[:, None] & masks).sum(0)[None], (m[:, None] & masks & unit[:, None]).sum(0)[None])

    A, B = masks[:, a], masks[:, b]
    for op in OPS:
        f, g = pair_rows(np.array([OP_CODES[op]]), *rows(A), *rows(B), *rows(A & B),
                         masks.sum(0), (masks & unit[:, None]).sum(0))
        want_f, want_g = rows(apply[op](A, B))
        np.testing.assert_array_equal(f, want_f, err_msg=op)
        np.testing.assert_array_equal(g, want_g, err_msg=op)


def _numpy_last_step(cb, f, g, batch, length, leaf):
    """The NumPy path's children of ``batch`` and their bounds: formed as the search forms
    them (no repeats, commuting steps in one order), bounded by the minimum of every NumPy
    bound (CompletionBound cheap and precise, ParentBound with dominating points and with
    fronts, pair_bound where it applies)."""
    from compexp_core.engine import optimal as O
    from compexp_core.engine.beam import OP_AND, OP_AND_NOT, OP_OR, OP_OR_NOT

    p, K, nb = cb.params, f.shape[1], f.shape[0]
    codes = p.op_codes
    inter_f, size_f = batch.inter[:, None], batch.size[:, None]
    a, c = cb.prim[None, :], (cb.prim + cb.nonunit)[None, :]
    inter = np.empty((nb, K, codes.size), np.int64)
    size = np.empty_like(inter)
    for o, code in enumerate(codes):
        inter[:, :, o], size[:, :, o] = {
            OP_AND: (g, f), OP_AND_NOT: (inter_f - g, size_f - f),
            OP_OR: (inter_f + a - g, size_f + c - f),
            OP_OR_NOT: (cb.u - a + g, cb.P - c + f)}[int(code)]
    valid = np.ones((nb, K), bool)
    if not p.allow_repeats:
        valid[np.arange(nb)[:, None], batch.conc] = False
    valid = valid[:, :, None] & O._ordered_steps(batch, codes, K)
    b_i, j_i, o_i = np.nonzero(valid)
    tp, sz = inter[b_i, j_i, o_i], size[b_i, j_i, o_i]
    fp, op1 = sz - tp, codes[o_i]
    score = cb.metric(tp, fp) * p.factor(length + 1)
    pb = O.ParentBound(cb, f, g, batch.inter, batch.size - batch.inter)
    bound = np.minimum.reduce([cb.bound(tp, fp, length + 1, 1, precise=False),
                               pb.bound(b_i, op1, tp, fp, length + 1, True),
                               pb.bound(b_i, op1, tp, fp, length + 1, False),
                               cb.bound(tp, fp, length + 1, 1)])
    if leaf is not None and OP_OR_NOT not in cb.ops:
        ok = np.flatnonzero(op1 != OP_OR_NOT)
        if ok.size:
            par, j = b_i[ok], j_i[ok]
            pair = O.pair_bound(cb, op1[ok], tp[ok], fp[ok], batch.inter[par],
                                batch.size[par] - batch.inter[par], g[par], (f - g)[par], j,
                                leaf.g[j], leaf.f[j] - leaf.g[j], length + 1)
            bound[ok] = np.minimum(bound[ok], pair)
    return b_i, j_i, op1, tp, sz, score, bound


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances(), st.booleans())
def test_compiled_last_step_equals_numpy_bounds_and_is_admissible(inst, with_leaf):
    """_core.last_step_children (through optimal.last_step_children) forms the same children
    as the NumPy path, scores them bit for bit, finds the same best child, and bounds each
    one by exactly the NumPy bounds' minimum, which is >= the best score of every last step
    the search forms from it (checked against dense masks)."""
    from compexp_core.engine import optimal as O
    from compexp_core.engine.beam import SearchParams

    unit, masks = inst["unit"], inst["masks"]
    K, u, n = masks.shape[1], int(unit.sum()), unit.size
    ops = inst["ops"]
    params = SearchParams(max_length=3, ops=ops, metric=inst["metric"],
                          complexity_penalty=inst["penalty"],
                          allow_repeats=inst["allow_repeats"])
    cb = O.CompletionBound((masks & unit[:, None]).sum(0), masks.sum(0), u, n, params)
    apply = {OP_CODES[k]: v for k, v in {
        "or": lambda f, c: f | c, "and": lambda f, c: f & c,
        "and_not": lambda f, c: f & ~c, "or_not": lambda f, c: f | ~c}.items()}
    leaf = None
    if with_leaf:
        leaf = O._LeafRows(K)
        leaf.f[:] = (masks[:, :, None] & masks[:, None, :]).sum(0)
        leaf.g[:] = (masks[:, :, None] & masks[:, None, :] & unit[:, None, None]).sum(0)
        leaf.have[:] = True
    codes = params.op_codes
    one = (np.arange(K, dtype=np.int32)[:, None], np.zeros((K, 0), np.int8))
    pairs = [(i, o, j) for i in range(K) for o in codes for j in range(K)
             if (params.allow_repeats or i != j) and not (o in (OP_CODES["and"], OP_CODES["or"])
                                                          and j < i)]
    two = (np.array([[i, j] for i, _, j in pairs], np.int32).reshape(-1, 2),
           np.array([[o] for _, o, _ in pairs], np.int8).reshape(-1, 1))
    for length, (conc, opk) in ((1, one), (2, two)):
        if conc.shape[0] == 0:
            continue
        dense = []
        for r in range(conc.shape[0]):
            m = masks[:, conc[r, 0]].copy()
            for s in range(opk.shape[1]):
                m = apply[int(opk[r, s])](m, masks[:, conc[r, s + 1]])
            dense.append(m)
        dense = np.stack(dense)
        f = (dense[:, :, None] & masks[None]).sum(1)
        g = (dense[:, :, None] & masks[None] & unit[None, :, None]).sum(1)
        batch = O._Level(conc, opk, (dense & unit).sum(1), dense.sum(1), np.zeros(len(dense)))
        b_i, j_i, op1, tp, sz, score, bound = _numpy_last_step(cb, f, g, batch, length, leaf)
        r = O.last_step_children(cb, O._Best(-1.0, None, 0, 0, False), f, g, batch, length,
                                 length + 2, leaf)
        assert r["n_children"] == b_i.size
        np.testing.assert_array_equal(r["parent"], b_i)
        np.testing.assert_array_equal(r["concept"], j_i)
        np.testing.assert_array_equal(r["op"], op1)
        np.testing.assert_array_equal(r["tp"], tp)
        np.testing.assert_array_equal(r["size"], sz)
        np.testing.assert_array_equal(r["bound"], bound)      # the same float64 values
        if b_i.size:
            keys = [batch.key(int(b)) + ((int(o), int(j)),) for b, o, j in zip(b_i, op1, j_i)]
            top = score.max()
            first = min((O._canonical(k), k) for k, s in zip(keys, score) if s == top)[1]
            best = r["best"]
            assert best[0] == top and batch.key(best[1]) + ((best[2], best[3]),) == first
        # Admissible: >= every last step the search forms from each child.
        for i in range(b_i.size):
            H = apply[int(op1[i])](dense[b_i[i]], masks[:, j_i[i]])
            used = set(conc[b_i[i]].tolist()) | {int(j_i[i])}
            truth = 0.0
            for o2 in codes:
                for k in range(K):
                    if FAMILY_CODE[int(o2)] == FAMILY_CODE[int(op1[i])] and \
                            (int(o2), k) < (int(op1[i]), int(j_i[i])):
                        continue
                    if not params.allow_repeats and k in used:
                        continue
                    G = apply[int(o2)](H, masks[:, k])
                    truth = max(truth, _metric(inst["metric"], int((G & unit).sum()),
                                               int(G.sum()), u))
            assert truth * params.factor(length + 2) <= r["bound"][i]


FAMILY_CODE = {OP_CODES[k]: v for k, v in FAMILY.items()}


def test_compiled_last_step_prunes_against_the_incumbent():
    """Only children whose bound beats the incumbent come back (ties only with keep_ties);
    the last level returns its best child and no survivors."""
    from compexp_core.engine import optimal as O
    from compexp_core.engine.beam import SearchParams

    rng = np.random.default_rng(3)
    masks = rng.random((200, 8)) < 0.3
    unit = masks[:, 0] & masks[:, 1] | (rng.random(200) < 0.05)
    params = SearchParams(max_length=3)
    cb = O.CompletionBound((masks & unit[:, None]).sum(0), masks.sum(0), int(unit.sum()), 200,
                           params)
    f = (masks[:, :, None] & masks[:, None, :]).sum(0)
    g = (masks[:, :, None] & masks[:, None, :] & unit[:, None, None]).sum(0)
    batch = O._Level(np.arange(8, dtype=np.int32)[:, None], np.zeros((8, 0), np.int8),
                     (masks & unit[:, None]).sum(0), masks.sum(0), np.zeros(8))
    every = O.last_step_children(cb, O._Best(-1.0, None, 0, 0, False), f, g, batch, 1, 3)
    cut = float(np.median(every["bound"]))
    some = O.last_step_children(cb, O._Best(cut, (0,), 0, 0, True), f, g, batch, 1, 3)
    assert some["tp"].size == int((every["bound"] > cut).sum()) < every["tp"].size
    assert (some["bound"] > cut).all() and some["best"] == every["best"]
    ties = O.last_step_children(cb, O._Best(cut, (0, (1, 1), (1, 2)), 0, 0, False), f, g,
                                batch, 1, 3)
    assert ties["tp"].size == int((every["bound"] >= cut).sum())
    last = O.last_step_children(cb, O._Best(-1.0, None, 0, 0, False), f, g, batch, 1, 2)
    assert last["tp"].size == 0 and last["best"] == every["best"]
    with pytest.raises(ValueError, match="f and g"):
        O.last_step_children(cb, O._Best(0.0, None, 0, 0, False), f[:, :3], g, batch, 1, 3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_unit_pair_counts_equal_dense_counts(seed):
    """ConceptIndex.unit_pair_counts: |U & C_c & C_k| for every pair, for one unit of several,
    with partial and full blocks (a concept covering every cell)."""
    from compexp_core.engine.masks import MaskSet

    rng = np.random.default_rng(seed)
    n, K = 3000, 7
    masks = rng.random((n, K)) < rng.choice([0.01, 0.2, 0.6], K)
    masks[:, 0] = True                               # full blocks
    units = rng.random((n, 3)) < 0.3
    units[:1100, 1] = True
    concepts = cx.ConceptSet.from_dense(masks, names=[f"c{k}" for k in range(K)])
    index = concepts.host_index
    um = MaskSet.from_dense(units.T)
    for row in range(3):
        U = units[:, row]
        want = (masks[:, :, None] & masks[:, None, :] & U[:, None, None]).sum(0)
        np.testing.assert_array_equal(index.unit_pair_counts(um.arrays(), row), want)
    with pytest.raises(ValueError, match="row"):
        index.unit_pair_counts(um.arrays(), 3)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances())
def test_compiled_and_numpy_paths_give_the_same_answer(inst):
    """The whole search with the compiled last step and with the NumPy one: the same formula,
    score and proof (upper bound) for every instance."""
    from compexp_core.engine import optimal as O

    inst = dict(inst, max_length=min(inst["max_length"], 3))
    a = _search(inst, method="optimal")
    O._COMPILED_LAST_STEP = False
    try:
        b = _search(inst, method="optimal")
    finally:
        O._COMPILED_LAST_STEP = True
    assert (str(a.formula), a.score, a.optimality.upper_bound) == \
        (str(b.formula), b.score, b.optimality.upper_bound)


def test_cooccurrence_and_rows_cached_across_units_equal_dense_counts():
    """Cooccurrence.and_rows: |A & B & C_k| and |U & A & B & C_k| for pairs seen for the
    first time (A & B built) and again for another unit (f from the cache, g inside U)."""
    from compexp_core.engine.backends import get_backend
    from compexp_core.engine.masks import MaskSet
    from compexp_core.engine.optimal import Cooccurrence

    rng = np.random.default_rng(5)
    n, K = 2500, 6
    masks = rng.random((n, K)) < rng.choice([0.05, 0.3, 0.7], K)
    units = rng.random((n, 3)) < 0.4
    backend = get_backend("cpu")
    index = backend.prepare(cx.ConceptSet.from_dense(masks))
    um = MaskSet.from_dense(units.T)
    conc = np.array([[0, 1], [2, 5], [3, 3], [4, 1]], np.int32)
    co = Cooccurrence(K)
    for row in (0, 1, 2):                  # the first unit fills the cache, the others hit it
        f, g = co.and_rows(backend, index, um, row, conc)
        ab = masks[:, conc[:, 0]] & masks[:, conc[:, 1]]                   # [n, pairs]
        want_f = (ab[:, :, None] & masks[:, None, :]).sum(0)
        want_g = (ab[:, :, None] & masks[:, None, :] & units[:, row, None, None]).sum(0)
        np.testing.assert_array_equal(f, want_f)
        np.testing.assert_array_equal(g, want_g)
    assert len(co._and) == len(conc)
