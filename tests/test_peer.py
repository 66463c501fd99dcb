"""Our engine vs the published peer package ``compositional-explanations`` (0.0.3.4), in one process.

Skipped unless the peer is installed (``pip install --no-deps compositional-explanations==0.0.3.4``;
it needs torch). The adapter is ``benchmarks/peer.py``; see its docstring for the peer's API and
the semantic differences (first beam of 2B concepts, equivalence-aware dedup, expansion of
only the newest beam formulas, branch and bound on IoU upper bounds).
"""
import os
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("compositional_explanations.beam")

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import compexp_core as cx  # noqa: E402
from peer import peer_available, peer_formula_to_text, run_peer  # noqa: E402

N, H, W, K = 50, 8, 8, 12
NAMES = [f"c{j}" for j in range(K)]


def _dataset(seed=0):
    """Random concept masks; 3 units with planted formulas, 2 planted formulas with 5% noise."""
    rng = np.random.default_rng(seed)
    m = rng.random((N, K, H, W)) < 0.25
    c = lambda j: m[:, j]  # noqa: E731
    noise = rng.random((N, H, W)) < 0.05
    units = np.stack([
        c(0) | c(3),
        c(1) & ~c(2),
        (c(4) | c(5)) & ~c(6),
        (c(7) | c(8)) ^ noise,
        ((c(9) & ~c(10)) | c(11)) ^ noise,
    ])
    return units, m


def _iou(formula_text, masks, unit):
    g = cx.Formula.parse(formula_text).evaluate(masks, NAMES).reshape(unit.shape)
    union = int((g | unit).sum())
    return int((g & unit).sum()) / union if union else 0.0


def test_peer_available():
    assert peer_available()


@pytest.mark.parametrize("max_length,beam_size", [(3, 5), (2, 3)])
def test_peer_agrees_with_engine(tmp_path, max_length, beam_size):
    units, masks = _dataset()
    peer = run_peer(units, masks, NAMES, max_length=max_length, beam_size=beam_size,
                    cache_dir=str(tmp_path))
    assert peer.preprocess_seconds > 0 and os.path.isdir(peer.cache_dir)
    assert [r["unit"] for r in peer] == list(range(len(units)))
    ours = cx.search_formulas(np.ascontiguousarray(units.transpose(1, 0, 2, 3)), masks, names=NAMES,
                              max_length=max_length, beam_size=beam_size, allow_repeats=False)
    for r, e in zip(peer, ours):
        assert r["seconds"] > 0
        # The conversion is right: our evaluation of the converted text gives the peer's IoU.
        assert str(cx.Formula.parse(r["formula"])) == r["formula"]
        assert _iou(r["formula"], masks, units[r["unit"]]) == pytest.approx(r["iou"], abs=1e-12)
        assert len(cx.Formula.parse(r["formula"])) <= max_length
        # Ours is never worse; here both searches reach the same formula.
        assert e.iou >= r["iou"] - 1e-12
        assert str(e.formula) == r["formula"]
        assert e.iou == pytest.approx(r["iou"], abs=1e-12)
    if max_length >= 2:
        assert [r["formula"] for r in peer[:2]] == ["(c0 OR c3)", "(c1 AND NOT c2)"]
        assert peer[0]["iou"] == peer[1]["iou"] == 1.0
    if max_length >= 3:
        assert peer[2]["formula"] in ("((c4 OR c5) AND NOT c6)", "((c5 OR c4) AND NOT c6)")
        assert peer[2]["iou"] == 1.0


def test_peer_cache_is_per_dataset(tmp_path):
    units, masks = _dataset(0)
    a = run_peer(units[:1], masks, NAMES, max_length=1, beam_size=2, cache_dir=str(tmp_path))
    units1, masks1 = _dataset(1)
    b = run_peer(units1[:1], masks1, NAMES, max_length=1, beam_size=2, cache_dir=str(tmp_path))
    assert a.cache_dir != b.cache_dir
    assert a[0]["formula"] in ("c0", "c3") and b[0]["formula"] in ("c0", "c3")


def test_formula_conversion():
    from compositional_explanations import formula as PF

    names = ["water", "living room", "blue", "AND"]
    tree = PF.Or(PF.And(PF.Leaf(0), PF.Not(PF.Leaf(2))), PF.Leaf(1))
    text = peer_formula_to_text(tree, names)
    assert text == '((water AND NOT blue) OR "living room")'
    assert cx.Formula.parse(text) == cx.Formula.from_steps("water", [("and_not", "blue"),
                                                                     ("or", "living room")])
    assert peer_formula_to_text(PF.And(PF.Leaf(3), PF.Leaf(0)), names) == '("AND" AND water)'
    assert peer_formula_to_text(PF.Leaf(2), names) == "blue"
    assert peer_formula_to_text(None, names) is None
