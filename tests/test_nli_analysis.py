"""The analyses on NLI-shaped data (one cell per sentence pair, activations [N, U]): IoU against
accuracy on a planted example, read-out weights per unit, and concepts against classes."""
import itertools

import numpy as np
import pytest

import compexp_core as cx
from compexp_core.analysis import (concept_class_table, iou_accuracy_correlation,
                                   mean_iou_by_length, unit_class_weights)
from compexp_core.engine.results import Explanation

CONCEPTS = ["pre:tok:dog", "hyp:tok:sleeping", "hyp:tok:nobody", "hyp:tag:nn",
            "oth:overlap:overlap50", "pre:tok:cat"]
NOBODY = CONCEPTS.index("hyp:tok:nobody")
CLASSES = ["entailment", "neutral", "contradiction"]


def _planted(n=800, units=8, seed=0):
    """Pairs with sample-level concepts; the model errs on most pairs with "nobody" in the
    hypothesis. Unit u fires on the "nobody" pairs with a share u/10 of them swapped for random
    other pairs: the noisier the unit, the lower its IoU and the higher the accuracy where it
    fires (the swapped-in pairs are mostly right), so IoU and accuracy go opposite ways."""
    rng = np.random.default_rng(seed)
    masks = rng.random((n, len(CONCEPTS))) < 0.25
    nobody = np.flatnonzero(masks[:, NOBODY])
    others = np.flatnonzero(~masks[:, NOBODY])
    correct = np.where(masks[:, NOBODY], rng.random(n) < 0.1, rng.random(n) < 0.9)
    acts = rng.random((n, units)).astype(np.float32) * 0.4            # below the threshold
    for u in range(units):
        swap = rng.permutation(nobody.size) < round(nobody.size * u / 10)
        fire = np.concatenate([nobody[~swap], rng.choice(others, swap.sum(), replace=False)])
        acts[fire, u] += 0.6
    return masks, acts, correct


def _exact_permutation_p(x, y):
    """Two-sided p over every permutation of y (the observed one included)."""
    def r(a, b):
        a, b = a - a.mean(), b - b.mean()
        return (a * b).sum(axis=-1) / np.sqrt((a * a).sum() * (b * b).sum(axis=-1))
    observed = r(x, y)
    perms = y[np.array(list(itertools.permutations(range(y.size))))]
    return np.mean(np.abs(r(x, perms)) >= abs(observed) - 1e-12)


def test_iou_accuracy_correlation_planted_nli_example():
    masks, acts, correct = _planted()
    result = cx.search_formulas(acts, masks, names=CONCEPTS, threshold=0.5, max_length=3)
    stats = iou_accuracy_correlation(result, acts, correct, (1, 1))
    fires = acts > 0.5
    accuracy = np.array([correct[fires[:, u]].mean() for u in range(acts.shape[1])])
    iou = np.array([e.iou for e in result])
    assert stats.units.tolist() == list(range(8))
    np.testing.assert_allclose(stats.accuracy, accuracy)
    np.testing.assert_array_equal(stats.n_firing, fires.sum(axis=0))
    np.testing.assert_array_equal(stats.iou, iou)
    # The cleanest unit explains best and sits on the model's errors.
    assert str(result[0].formula) == "hyp:tok:nobody" and iou[0] == 1.0 and accuracy[0] < 0.2
    assert stats.pearson == pytest.approx(np.corrcoef(iou, accuracy)[0, 1])
    assert stats.pearson < -0.9 and stats.spearman < -0.9
    # The Monte Carlo p-value agrees with the exact one over all 8! pairings.
    exact = _exact_permutation_p(iou, accuracy)
    assert exact < 0.01
    assert stats.p_value == pytest.approx(exact, abs=0.005)
    # A ConceptSet as the grid gives the same answer.
    by_set = iou_accuracy_correlation(result, acts, correct, cx.ConceptSet.from_dense(masks))
    assert by_set.pearson == stats.pearson and by_set.p_value == stats.p_value


def test_iou_accuracy_p_value_without_correlation():
    # The same units but accuracies unrelated to the IoUs: a large p-value, again matching
    # the exact one.
    masks, acts, correct = _planted(seed=1)
    result = cx.search_formulas(acts, masks, names=CONCEPTS, threshold=0.5, max_length=1)
    shuffled = np.random.default_rng(5).permutation(correct)
    stats = iou_accuracy_correlation(result, acts, shuffled, (1, 1), permutations=4000)
    exact = _exact_permutation_p(stats.iou, stats.accuracy)
    assert stats.p_value == pytest.approx(exact, abs=0.03)
    assert stats.p_value > 0.05
    assert np.isnan(iou_accuracy_correlation(result, acts, correct, (1, 1),
                                             permutations=0).p_value)


def _without_formula(e, threshold="keep"):
    """The explanation of a unit the search skipped (no formula, no beam)."""
    return Explanation(e.unit, None, 0.0, 0.0, None, 0.0, (),
                       e.threshold if threshold == "keep" else threshold, ((None, 0.0),))


def test_units_without_formula_are_left_out():
    masks, acts, correct = _planted()
    full = cx.search_formulas(acts, masks, names=CONCEPTS, threshold=0.5, max_length=3)
    # Unit 2 skipped, with no threshold recorded; unit 5 skipped with one.
    skipped = cx.SearchResult([_without_formula(e, None) if e.unit == 2 else
                               _without_formula(e) if e.unit == 5 else e for e in full],
                              full.params)
    kept = cx.SearchResult([e for e in full if e.unit not in (2, 5)], full.params)
    a = iou_accuracy_correlation(skipped, acts, correct, (1, 1), permutations=300)
    b = iou_accuracy_correlation(kept, acts, correct, (1, 1), permutations=300)
    assert a.units.tolist() == [0, 1, 3, 4, 6, 7]
    for field in ("units", "iou", "accuracy", "n_firing"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert (a.pearson, a.spearman, a.p_value) == (b.pearson, b.spearman, b.p_value)
    np.testing.assert_array_equal(mean_iou_by_length(skipped), mean_iou_by_length(kept))
    # No unit with a formula: nothing to correlate.
    none = cx.SearchResult([_without_formula(e, None) for e in full])
    empty = iou_accuracy_correlation(none, acts, correct, (1, 1))
    assert empty.units.size == 0 and np.isnan(empty.pearson) and np.isnan(empty.p_value)


# ------------------------------------------------------------------------------ weights

W = np.array([[0.5, -1.0, 0.0, 2.0],
              [0.1, 2.0, -0.3, 2.0],
              [0.0, 0.0, 0.7, 1.0]])          # [C=3, U=4]


def test_unit_class_weights_values_and_inputs():
    np.testing.assert_array_equal(unit_class_weights(W), W.T)
    np.testing.assert_array_equal(unit_class_weights(W, [3, 0, 3]), W[:, [3, 0, 3]].T)
    assert unit_class_weights(W, []).shape == (0, 3)
    assert unit_class_weights(W, np.array([1], np.uint8)).tolist() == [[-1.0, 2.0, 0.0]]
    assert unit_class_weights(W.astype(np.float32)).dtype == np.float64
    torch = pytest.importorskip("torch")
    layer = torch.nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(W))
    np.testing.assert_allclose(unit_class_weights(layer.weight, [1, 2]),
                               W[:, [1, 2]].T.astype(np.float32))


@pytest.mark.parametrize("weight, units, error, match", [
    (W[0], None, ValueError, r"2-D \[C, U\].*shape \(4,\)"),
    (W[None], None, ValueError, "2-D"),
    (np.zeros((0, 4)), None, ValueError, "empty"),
    (np.where(np.arange(12).reshape(3, 4) == 6, np.nan, W), None, ValueError,
     r"nan at \[1, 2\] \(class 1, unit 2\)"),
    (np.where(np.arange(12).reshape(3, 4) == 0, np.inf, W), None, ValueError, "finite"),
    (W > 0, None, TypeError, "numeric"),
    (W.astype(object), None, TypeError, "numeric"),
    (W, [4], ValueError, r"unit 4 out of range: weight has U=4 units"),
    (W, [-1], ValueError, "unit -1 out of range"),
    (W, [0.5], TypeError, "integer"),
    (W, [[0, 1]], ValueError, "sequence"),
    (W.T, [3], ValueError, "transposed"),      # a [U, C] weight read as 4 classes of 3 units
])
def test_unit_class_weights_errors(weight, units, error, match):
    with pytest.raises(error, match=match):
        unit_class_weights(weight, units)


# ------------------------------------------------------------------------------ concepts x classes

def _expl(unit, text):
    return Explanation(unit, None if text is None else cx.Formula.parse(text), 0.5, 0.5, None,
                       0.0)


def test_concept_class_table_by_hand():
    # Pushes (argmax of each column of W): unit 0 -> entailment, 1 -> neutral,
    # 2 -> contradiction, 3 -> entailment and neutral tie: the first, entailment.
    result = cx.SearchResult([
        _expl(0, "((hyp:tok:sleeping AND NOT hyp:tok:nobody) OR hyp:tok:sleeping)"),
        _expl(1, "(hyp:tok:nobody OR NOT pre:tok:cat)"),
        _expl(2, "((hyp:tok:nobody OR hyp:tok:sleeping) AND NOT NOT pre:tok:cat)"),
        _expl(3, "NOT (hyp:tok:nobody AND pre:tok:dog)"),   # both under a NOT
        _expl(1, None),                                    # skipped: left out
    ])
    table = concept_class_table(result, W, CLASSES)
    assert table.class_names == tuple(CLASSES) and (table.n_units, table.n_left_out) == (4, 1)
    assert table.rows() == [
        {"concept": "hyp:tok:nobody", "negated": False, "entailment": 0, "neutral": 1,
         "contradiction": 1, "total": 2},
        {"concept": "hyp:tok:nobody", "negated": True, "entailment": 2, "neutral": 0,
         "contradiction": 0, "total": 2},
        {"concept": "hyp:tok:sleeping", "negated": False, "entailment": 1, "neutral": 0,
         "contradiction": 1, "total": 2},   # twice in unit 0's formula: counted once
        {"concept": "pre:tok:cat", "negated": False, "entailment": 0, "neutral": 0,
         "contradiction": 1, "total": 1},   # NOT NOT: plain
        {"concept": "pre:tok:cat", "negated": True, "entailment": 0, "neutral": 1,
         "contradiction": 0, "total": 1},
        {"concept": "pre:tok:dog", "negated": True, "entailment": 1, "neutral": 0,
         "contradiction": 0, "total": 1},
    ]
    assert table.totals.tolist() == [2, 2, 2, 1, 1, 1] and table.counts.dtype == np.int64
    assert table.rows(2) == table.rows()[:2]
    df = table.to_pandas()
    assert list(df.columns) == ["concept", "negated", *CLASSES, "total"] and len(df) == 6


def test_concept_class_table_from_a_search():
    # The planted units all explain "nobody" pairs: with weights pushing every unit towards
    # contradiction, "hyp:tok:nobody" tops the table in that column.
    masks, acts, _ = _planted()
    result = cx.search_formulas(acts, masks, names=CONCEPTS, threshold=0.5, max_length=2)
    weight = np.zeros((3, acts.shape[1]))
    weight[2] = 1.0
    table = concept_class_table(result, weight, CLASSES)
    assert table.rows(1)[0]["concept"] == "hyp:tok:nobody"
    assert table.rows(1)[0]["contradiction"] == acts.shape[1]
    assert table.counts[:, :2].sum() == 0


def test_concept_class_table_errors_and_empty():
    result = cx.SearchResult([_expl(0, "a"), _expl(5, "b")])
    with pytest.raises(ValueError, match="class_names has 2 names but weight has C=3"):
        concept_class_table(result, W, CLASSES[:2])
    with pytest.raises(ValueError, match="distinct"):
        concept_class_table(result, W, ["a", "a", "b"])
    with pytest.raises(ValueError, match="unit 5 out of range"):
        concept_class_table(result, W, CLASSES)
    with pytest.raises(ValueError, match="2-D"):
        concept_class_table(result, W[0], CLASSES)
    empty = concept_class_table(cx.SearchResult([_expl(0, None)]), W, CLASSES)
    assert empty.concepts == () and empty.counts.shape == (0, 3) and empty.n_left_out == 1
    assert empty.rows() == [] and len(empty.to_pandas()) == 0
