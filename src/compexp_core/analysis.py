"""Analyses of search results, as in the paper's vision experiments, and per-image mask views.

* :func:`mean_iou_by_length`: mean explanation IoU against the maximum formula length, from
  one search at the longest length (``Explanation.by_length``).
* :func:`iou_accuracy_correlation`: does a unit's explanation IoU go with the model's accuracy
  on the inputs where the unit fires?
* :func:`unit_class_weights` and :func:`concept_class_table`: for a classifier whose last layer
  reads the units, which class each unit pushes towards, and which concepts the explanations of
  the units pushing towards each class use (the paper's NLI analysis: "nobody", "sleeping",
  "cat" in explanations of units that push towards contradiction).
* :func:`gradient_contributions` and :func:`contribution_table`: how much each unit adds to
  each class's logit (mean gradient x activation, for any model; for a linear read-out the
  weights of :func:`unit_class_weights` say the same up to the activation's scale), and each
  class's most contributing units with their explanations (the reference code's
  "contributions" page). :func:`positive_terms` reads the concepts a formula asks for (the
  edits :mod:`compexp_core.adversarial` proposes).
* :func:`firing_samples`, :func:`top_activating_samples`, :func:`unit_mask_images` and
  :func:`formula_mask_images`: which inputs a unit fires on, and the unit's and a formula's
  masks on chosen inputs (for reports), computed exactly as the search computes them.

The analyses of explanations leave out units without a formula (``Explanation.formula is
None``: no concept overlaps the unit, or the search skipped it, for instance because it fires
on too few samples); each function's docstring says so.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .engine.concepts import ConceptSet
from .engine.driver import materialize_formulas
from ._optional import require
from .engine.formula import Formula, Leaf, Not, Or
from .engine.units import check_activations, is_tensor, tensor_to_numpy, unit_masks
from .inputs import activations_input
from .results import SearchResult

__all__ = ["mean_iou_by_length", "IouAccuracy", "iou_accuracy_correlation", "firing_samples",
           "top_activating_samples", "unit_mask_images", "formula_mask_images",
           "unit_class_weights", "ConceptClassTable", "concept_class_table",
           "gradient_contributions", "ContributionTable", "contribution_table",
           "positive_terms", "explained_units"]


def explained_units(result: SearchResult, need: str, empty_hint: str = "") -> list:
    """The explanations of ``result`` that have a formula (units no concept overlaps, and units
    the search skipped, have none).

    Raises:
        ValueError: the result is empty (the message ends in ``empty_hint``), or none of its
            units has a formula (the message ends in ``need``: what was wanted of them).
    """
    if len(result) == 0:
        raise ValueError(f"the result has no explanations{empty_hint}")
    explained = [e for e in result if e.formula is not None]
    if not explained:
        raise ValueError(f"none of the result's {len(result)} units has a formula (no concept "
                         f"overlaps them, or the search skipped them): {need}")
    return explained


def mean_iou_by_length(result: SearchResult) -> np.ndarray:
    """Mean IoU of the units' explanations for each maximum formula length 1..L.

    Entry ``l - 1`` is the mean over units of the IoU a search with ``max_length = l`` finds;
    one search at the longest length gives them all (see ``Explanation.by_length``). Units
    without a formula (no concept overlaps them, or the search skipped them) are left out.

    Args:
        result: a search result whose explanations carry ``by_length`` (every search since
            version 0.1 records it).

    Returns:
        float64 array of L means, non-decreasing.

    Raises:
        ValueError: the result is empty, no unit has a formula, or its explanations carry no
            ``by_length``.

    Examples:
        >>> import numpy as np, compexp_core as cx
        >>> masks = np.eye(4, dtype=bool)[np.arange(40) % 4]           # 40 samples, 4 concepts
        >>> unit = masks[:, 0] | masks[:, 1]
        >>> result = cx.search_formulas(unit[:, None], masks, max_length=3)
        >>> mean_iou_by_length(result).round(2).tolist()
        [0.5, 1.0, 1.0]
    """
    explained = explained_units(result, "there is no IoU to average")
    lengths = {len(e.by_length) for e in explained}
    if 0 in lengths:
        raise ValueError("the result's explanations carry no per-length IoUs (by_length); it "
                         "was written by an older version: search again")
    # Searches stop once a unit's beam stops changing: pad to the length searched for.
    L = max(max(lengths), int((result.params or {}).get("max_length") or 0))
    table = np.zeros((len(explained), L))
    for i, e in enumerate(explained):
        values = [v for _, v in e.by_length]
        table[i, :len(values)] = values
        table[i, len(values):] = values[-1]
    return table.mean(axis=0)


# ------------------------------------------------------------------------------ mask views

def _thresholds_of(result: SearchResult, units: Sequence[int]) -> Optional[np.ndarray]:
    values = [result.by_unit(int(u)).threshold for u in units]
    if all(v is None for v in values):
        return None
    if any(v is None for v in values):
        raise ValueError("the result mixes units with and without thresholds")
    return np.asarray(values, np.float64)


def _checked_acts(acts, concepts_or_grid):
    acts = activations_input(acts)
    if isinstance(concepts_or_grid, ConceptSet):
        grid = concepts_or_grid.grid
        check_activations(acts, concepts_or_grid.n_samples, grid)
    else:
        grid = tuple(int(g) for g in concepts_or_grid)
        check_activations(acts, acts.shape[0], grid)
    return acts, grid


def firing_samples(acts, result: SearchResult, grid, units: Optional[Sequence[int]] = None
                   ) -> np.ndarray:
    """Which inputs each unit fires on: bool ``[N, len(units)]``.

    A unit fires on an input when its binarised mask (threshold from the result, maps
    upsampled to ``grid`` exactly as in the search) has at least one cell set there.

    Args:
        acts: the activations the result was computed from.
        result: the search result (for each unit's threshold).
        grid: the concepts' (H, W) grid, or the :class:`ConceptSet`.
        units: unit indices (default: the result's units, in its order).
    """
    acts, grid = _checked_acts(acts, grid)
    units = result.units if units is None else [int(u) for u in units]
    n = acts.shape[0]
    cells = grid[0] * grid[1]
    out = np.zeros((n, len(units)), bool)
    uniq = np.unique(np.asarray(units, np.int64))
    masks = unit_masks(acts, uniq, grid, _thresholds_of(result, uniq))
    for j, u in enumerate(units):
        k = int(np.searchsorted(uniq, u))
        out[np.unique(masks.cells(k) // cells), j] = True
    return out


def top_activating_samples(acts, units, k: int = 8, *, return_peaks: bool = False):
    """The ``k`` inputs with the highest peak (maximum) activation of each unit, best first
    (ties in index order).

    One pass over the activations, a chunk of samples at a time, for all units together.

    Args:
        acts: ``[N, U, h, w]`` or ``[N, U]`` activations (array, h5py dataset or path).
        units: a unit index, or a sequence of them.
        k: inputs per unit (at most N are returned).
        return_peaks: also return the peak activations of those inputs.

    Returns:
        int64 sample indices, ``[k]`` for one unit or ``[len(units), k]`` for a sequence; with
        ``return_peaks``, ``(samples, peaks)`` with float64 peaks of the same shape.

    Raises:
        ValueError: a unit index out of range.
    """
    acts = activations_input(acts)
    single = np.ndim(units) == 0
    ids = np.atleast_1d(np.asarray(units, np.int64))
    bad = ids[(ids < 0) | (ids >= acts.shape[1])]
    if bad.size:
        raise ValueError(f"unit {int(bad[0])} out of range: acts has {acts.shape[1]} units")
    n = int(acts.shape[0])
    lo, hi = (int(ids.min()), int(ids.max()) + 1) if ids.size else (0, 0)
    per_sample = int(np.prod(acts.shape[2:], dtype=np.int64)) * max(1, hi - lo)
    step = max(1, (64 << 20) // max(1, per_sample * 8))
    peaks = np.empty((n, ids.size))
    for s in range(0, n, step):
        block = np.asarray(acts[s:s + step, lo:hi], dtype=np.float64)
        block = block.reshape(block.shape[0], block.shape[1], -1).max(axis=2)
        peaks[s:s + block.shape[0]] = block[:, ids - lo]
    k = min(int(k), n)
    order = np.argsort(-peaks, axis=0, kind="stable")[:k].T
    top_peaks = np.take_along_axis(peaks.T, order, axis=1)
    if single:
        order, top_peaks = order[0], top_peaks[0]
    return (order, top_peaks) if return_peaks else order


def unit_mask_images(acts, unit: int, samples: Sequence[int], grid,
                     threshold: Optional[float]) -> np.ndarray:
    """The binarised mask of ``unit`` on the given inputs: bool ``[len(samples), H, W]``,
    identical to the cells the search scored (same threshold, same upsampling)."""
    acts = activations_input(acts)
    grid = tuple(int(g) for g in grid)
    samples = np.asarray(samples, np.int64)
    sub = np.stack([np.asarray(acts[int(s), int(unit):int(unit) + 1]) for s in samples]) \
        if samples.size else np.zeros((0, 1) + tuple(acts.shape[2:]), acts.dtype)
    if samples.size == 0:
        return np.zeros((0,) + grid, bool)
    masks = unit_masks(sub, np.array([0]), grid,
                       None if threshold is None else np.array([threshold], np.float64))
    dense = np.zeros(samples.size * grid[0] * grid[1], bool)
    dense[masks.cells(0)] = True
    return dense.reshape((samples.size,) + grid)


def formula_mask_images(concepts: ConceptSet, formula: Formula,
                        samples: Sequence[int]) -> np.ndarray:
    """The mask of a search formula on the given inputs: bool ``[len(samples), H, W]``."""
    masks = materialize_formulas(concepts, [formula])
    cells = concepts.grid[0] * concepts.grid[1]
    set_cells = masks.cells(0)
    samples = np.asarray(samples, np.int64)
    out = np.zeros((samples.size, cells), bool)
    owner = set_cells // cells
    for i, s in enumerate(samples):
        lo, hi = np.searchsorted(owner, [s, s + 1])
        out[i, set_cells[lo:hi] - s * cells] = True
    return out.reshape((samples.size,) + concepts.grid)


# ------------------------------------------------------------------------------ accuracy

@dataclass(frozen=True)
class IouAccuracy:
    """Explanation IoU against the model's accuracy where each unit fires.

    Attributes:
        units: the units with a formula and at least ``min_firing`` firing inputs, in the
            result's order.
        iou: their explanation IoUs.
        accuracy: the model's accuracy on the inputs where each fires.
        n_firing: how many inputs each fires on.
        pearson: Pearson correlation of ``iou`` and ``accuracy`` (NaN with fewer than 3 units
            or a constant column).
        spearman: Spearman rank correlation (average ranks for ties).
        p_value: two-sided permutation p-value of ``pearson`` (10,000 permutations, seeded).
    """
    units: np.ndarray
    iou: np.ndarray
    accuracy: np.ndarray
    n_firing: np.ndarray
    pearson: float
    spearman: float
    p_value: float


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if x.size < 3:
        return float("nan")
    x, y = x - x.mean(), y - y.mean()
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denom) if denom > 0 else float("nan")


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(x.size)
    ranks[order] = np.arange(x.size)
    # Average the ranks of ties.
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def iou_accuracy_correlation(result: SearchResult, acts, correct, grid, *,
                             min_firing: int = 1, permutations: int = 10_000,
                             seed: int = 0) -> IouAccuracy:
    """Correlate each unit's explanation IoU with the model's accuracy on the inputs where the
    unit fires (the paper's question: do more interpretable units go with better accuracy?).

    Units without a formula (no concept overlaps them, or the search skipped them) are left
    out, as are units firing on fewer than ``min_firing`` inputs. Language data has one cell
    per sample: pass ``[N, U]`` activations and ``grid=(1, 1)``. The p-value is two-sided:
    the share of random pairings of the IoUs with the accuracies whose correlation is at least
    as far from 0 as the observed one (counting the observed pairing, so it is never 0).

    Args:
        result: a search result on ``acts``.
        acts: the activations the result was computed from (``[N, U, h, w]`` or ``[N, U]``).
        correct: bool ``[N]``: whether the model's prediction on each input was right.
        grid: the concepts' (H, W) grid or the :class:`ConceptSet`.
        min_firing: units firing on fewer inputs are left out.
        permutations: permutations for the p-value (0: no p-value, NaN).
        seed: seed of the permutations.

    Returns:
        An :class:`IouAccuracy`.

    Raises:
        ValueError: ``correct`` does not have one entry per input; ``min_firing`` < 1.

    Examples:
        >>> import numpy as np, compexp_core as cx
        >>> masks = np.eye(3, dtype=bool)[np.arange(30) % 3]
        >>> acts = np.stack([masks[:, 0], masks[:, 0] | masks[:, 1], masks[:, 2]], 1)
        >>> result = cx.search_formulas(acts.astype(np.float32), masks, threshold=0.5,
        ...                             max_length=1)
        >>> correct = np.arange(30) % 3 != 1                 # wrong on every concept-1 input
        >>> stats = iou_accuracy_correlation(result, acts.astype(np.float32), correct, (1, 1))
        >>> stats.accuracy.tolist(), stats.iou.round(2).tolist()
        ([1.0, 0.5, 1.0], [1.0, 0.5, 1.0])
        >>> round(stats.pearson, 3)
        1.0
    """
    correct = np.asarray(correct)
    acts = activations_input(acts)
    if correct.dtype != bool:
        if correct.dtype.kind in "iu" and correct.size and set(np.unique(correct)) <= {0, 1}:
            correct = correct.astype(bool)
        else:
            raise TypeError(f"correct must be bool (one per input), got dtype {correct.dtype}")
    if correct.shape != (acts.shape[0],):
        raise ValueError(f"correct has shape {correct.shape}, expected ({acts.shape[0]},): one "
                         f"entry per input")
    if isinstance(min_firing, bool) or not isinstance(min_firing, (int, np.integer)) \
            or min_firing < 1:
        raise ValueError(f"min_firing must be an integer >= 1, got {min_firing!r}")
    explained = [e for e in result if e.formula is not None]
    units = np.array([e.unit for e in explained], np.int64)
    if units.size:
        fires = firing_samples(acts, result, grid, units=units)
    else:
        _checked_acts(acts, grid)
        fires = np.zeros((acts.shape[0], 0), bool)
    n_firing = fires.sum(axis=0)
    keep = n_firing >= min_firing
    accuracy = (fires & correct[:, None]).sum(axis=0)[keep] / n_firing[keep]
    iou = np.array([e.iou for e in explained], np.float64)[keep]
    pearson = _pearson(iou, accuracy)
    spearman = _pearson(_ranks(iou), _ranks(accuracy))
    p_value = float("nan")
    if permutations and not np.isnan(pearson):
        rng = np.random.default_rng(seed)
        shuffled = np.array([_pearson(iou, rng.permutation(accuracy))
                             for _ in range(int(permutations))])
        p_value = float((np.sum(np.abs(shuffled) >= abs(pearson) - 1e-12) + 1)
                        / (permutations + 1))
    return IouAccuracy(units[keep], iou, accuracy, n_firing[keep], pearson, spearman, p_value)



# ------------------------------------------------------------------------------ classes

def unit_class_weights(weight, units: Optional[Sequence[int]] = None) -> np.ndarray:
    """The weights a read-out layer gives each unit: one row per unit, one column per class.

    For a layer read directly by the linear layer, unit u's weight to class c is
    ``weight[c, u]``; for a layer of feature maps read after global pooling (average or max,
    one value per channel), it is the same column: the pooled value of channel u is the
    linear layer's input u. (For any other model, use :func:`gradient_contributions`.)

    Args:
        weight: the read-out layer's weight ``[C, U]`` in ``torch.nn.Linear`` layout (class
            c's score is ``weight[c] @ units + bias[c]``): a NumPy array or a torch tensor
            (copied to the host).
        units: unit indices into ``U`` (default: all, in order).

    Returns:
        float64 ``[len(units), C]``: row i is the weight of unit ``units[i]`` towards each
        class. With ``units=None`` row u is unit u's, the ``weights`` layout of
        :func:`compexp_core.io.results.write_reference_csv`.

    Raises:
        TypeError: ``weight`` is not numeric; ``units`` are not integers.
        ValueError: ``weight`` is not 2-D or is empty, holds NaN or infinity (the message
            gives the first position); a unit index outside ``0..U-1``.

    Examples:
        >>> w = np.array([[0.5, -1.0, 0.0],
        ...               [0.1, 2.0, -0.3]])            # [C=2 classes, U=3 units]
        >>> unit_class_weights(w, [1, 2]).tolist()
        [[-1.0, 2.0], [0.0, -0.3]]
        >>> unit_class_weights(w).shape
        (3, 2)
    """
    w = _readout_weight(weight)
    n_units = w.shape[1]
    if units is None:
        return np.ascontiguousarray(w.T)
    ids = np.asarray(units)
    if ids.ndim != 1:
        raise ValueError(f"units must be a sequence of unit indices, got shape {ids.shape}")
    if ids.size == 0:
        return np.zeros((0, w.shape[0]))
    if ids.dtype == bool or ids.dtype.kind not in "iu":
        raise TypeError(f"units must be integer unit indices, got dtype {ids.dtype}")
    bad = ids[(ids < 0) | (ids >= n_units)]
    if bad.size:
        hint = ""
        if w.shape[0] > int(bad.max()) >= 0:
            hint = (f"; is weight transposed? It must be [C, U] (nn.Linear layout), and a "
                    f"[{w.shape[0]}, {n_units}] weight is read as {w.shape[0]} classes of "
                    f"{n_units} units")
        raise ValueError(f"unit {int(bad[0])} out of range: weight has U={n_units} units "
                         f"(shape [C, U] = {list(w.shape)}){hint}")
    return np.ascontiguousarray(w[:, ids.astype(np.int64)].T)


def _readout_weight(weight) -> np.ndarray:
    """``weight`` as a checked float64 ``[C, U]`` host array."""
    if is_tensor(weight):
        weight = tensor_to_numpy(weight, "weight")
    w = np.asarray(weight)
    if w.dtype == bool or w.dtype.kind not in "iuf":
        raise TypeError(f"weight must be a numeric array [C, U] (a read-out layer's weight), "
                        f"got dtype {w.dtype}")
    if w.ndim != 2:
        raise ValueError(f"weight must be 2-D [C, U] (nn.Linear layout: classes x units), got "
                         f"shape {w.shape}")
    if 0 in w.shape:
        raise ValueError(f"weight is empty: shape {w.shape}, expected [C, U] with C, U >= 1")
    w = w.astype(np.float64)
    finite = np.isfinite(w)
    if not finite.all():
        c, u = np.argwhere(~finite)[0]
        raise ValueError(f"weight holds {w[c, u]} at [{c}, {u}] (class {c}, unit {u}): it "
                         f"must be finite")
    return w


@dataclass(frozen=True)
class ConceptClassTable:
    """Concepts used by explanations against the class their units push towards.

    Row r counts, for each class, the units that push towards that class (their largest
    read-out weight) and whose formula uses concept ``concepts[r]`` negated (under a NOT:
    ``AND NOT`` / ``OR NOT``) when ``negated[r]``, or plainly otherwise; a unit counts once
    per row however often its formula repeats the concept. Rows are sorted by total count,
    descending (ties by concept name, the plain row first).

    Attributes:
        class_names: the C class names.
        concepts: the concept of each row.
        negated: bool ``[R]``: whether the row counts negated uses.
        counts: int64 ``[R, C]``.
        n_units: units counted (those with a formula).
        n_left_out: units left out for having no formula.
    """
    class_names: tuple
    concepts: tuple
    negated: np.ndarray
    counts: np.ndarray
    n_units: int
    n_left_out: int

    @property
    def totals(self) -> np.ndarray:
        """int64 ``[R]``: units per row, over all classes."""
        return self.counts.sum(axis=1)

    def rows(self, top: Optional[int] = None) -> list:
        """The first ``top`` rows (default: all) as dicts: ``concept``, ``negated``, one count
        per class name, and ``total``."""
        out = []
        for r in range(len(self.concepts) if top is None else min(top, len(self.concepts))):
            row = {"concept": self.concepts[r], "negated": bool(self.negated[r])}
            row.update({c: int(n) for c, n in zip(self.class_names, self.counts[r])})
            row["total"] = int(self.counts[r].sum())
            out.append(row)
        return out

    def to_pandas(self):
        """One row per table row: concept, negated, a column per class, total."""
        import pandas as pd

        return pd.DataFrame(self.rows(),
                            columns=["concept", "negated", *self.class_names, "total"])


def _literals(formula: Formula) -> set:
    """``(concept, negated)`` for every leaf of ``formula``; a leaf is negated when an odd
    number of NOT nodes lie above it (explicit stack: formulas may be deep)."""
    out = set()
    stack = [(formula, False)]
    while stack:
        node, negated = stack.pop()
        if isinstance(node, Leaf):
            out.add((node.name, negated))
        elif isinstance(node, Not):
            stack.append((node.operand, not negated))
        else:
            stack.append((node.left, negated))
            stack.append((node.right, negated))
    return out


def concept_class_table(result: SearchResult, weight, class_names: Sequence[str]
                        ) -> ConceptClassTable:
    """Which concepts the units' best formulas use, against the class each unit pushes
    towards (the argmax of its read-out weights; the first class on a tie). Concepts used
    negated and plainly are counted in separate rows. Units without a formula (no concept
    overlaps them, or the search skipped them) are left out (``n_left_out``).

    Args:
        result: a search result over the units read by the layer.
        weight: the read-out layer's weight ``[C, U]`` (nn.Linear layout; see
            :func:`unit_class_weights`).
        class_names: the C class names, in the order of ``weight``'s rows.

    Returns:
        A :class:`ConceptClassTable`.

    Raises:
        ValueError: ``class_names`` does not have C distinct names; as
            :func:`unit_class_weights` for ``weight`` and the result's units.

    Examples:
        >>> from compexp_core.engine.results import Explanation
        >>> def unit(u, text):
        ...     return Explanation(u, Formula.parse(text), 0.5, 0.5, None, 0.0)
        >>> result = SearchResult([unit(0, "(hyp:tok:sleeping AND NOT hyp:tok:dog)"),
        ...                        unit(1, "(hyp:tok:sleeping OR hyp:tok:nobody)"),
        ...                        unit(2, "(pre:tok:dog AND hyp:tok:dog)"),
        ...                        Explanation(3, None, 0.0, 0.0, None, 0.0)])
        >>> weight = np.array([[0.1, 0.0, 0.9, 0.0],           # [C=3 classes, U=4 units]
        ...                    [0.0, 0.1, 0.0, 0.0],
        ...                    [0.8, 0.7, 0.1, 0.0]])
        >>> table = concept_class_table(result, weight, ["entailment", "neutral", "contradiction"])
        >>> for row in table.rows(3):
        ...     print(row)
        {'concept': 'hyp:tok:sleeping', 'negated': False,
         'entailment': 0, 'neutral': 0, 'contradiction': 2, 'total': 2}
        {'concept': 'hyp:tok:dog', 'negated': False,
         'entailment': 1, 'neutral': 0, 'contradiction': 0, 'total': 1}
        {'concept': 'hyp:tok:dog', 'negated': True,
         'entailment': 0, 'neutral': 0, 'contradiction': 1, 'total': 1}
        >>> table.n_units, table.n_left_out
        (3, 1)
    """
    w = _readout_weight(weight)
    names = tuple(class_names) if not isinstance(class_names, str) else (class_names,)
    if len(names) != w.shape[0]:
        raise ValueError(f"class_names has {len(names)} names but weight has C={w.shape[0]} "
                         f"classes (rows; the layout is [C, U])")
    if len(set(names)) != len(names):
        raise ValueError(f"class_names must be distinct, got {list(names)}")
    explained = [e for e in result if e.formula is not None]
    pushes = unit_class_weights(w, [e.unit for e in explained]).argmax(axis=1) \
        if explained else np.zeros(0, np.int64)
    counts: dict = {}
    for e, c in zip(explained, pushes):
        for literal in _literals(e.formula):
            counts.setdefault(literal, np.zeros(len(names), np.int64))[c] += 1
    order = sorted(counts, key=lambda lit: (-int(counts[lit].sum()), lit[0], lit[1]))
    table = (np.stack([counts[lit] for lit in order]) if order
             else np.zeros((0, len(names)), np.int64))
    return ConceptClassTable(names, tuple(lit[0] for lit in order),
                             np.array([lit[1] for lit in order], bool), table,
                             len(explained), len(result) - len(explained))


# ------------------------------------------------------------------------------ contributions

def gradient_contributions(model, inputs, layer: str, *, classes: Optional[Sequence[int]] = None,
                           batch_size: int = 64, device: str = "cpu") -> np.ndarray:
    """Mean gradient x activation attribution of each unit of ``layer`` to each class.

    For input x, unit u and class c the attribution is
    ``sum over the unit's positions p of  d logit_c(x) / d a_u,p(x)  *  a_u,p(x)``
    (the first-order estimate of how much the unit's activation adds to the class's logit),
    and the result is its mean over the inputs. For a layer read by global average pooling
    and a linear layer this is ``weight[c, u]`` times the unit's mean pooled activation; after
    global max pooling, ``weight[c, u]`` times its mean peak activation. The model runs in
    eval mode (its mode is restored afterwards); gradients of the model's parameters are
    neither computed nor changed.

    Args:
        model: a ``torch.nn.Module`` whose output is the logits ``[B, K]``.
        inputs: a tensor or array ``[N, ...]`` of model inputs, or a dataset (``len`` and
            ``[i]`` giving one input tensor).
        layer: the module path of the layer (``model.get_submodule(layer)``); its output is
            ``[B, U, h, w]`` or ``[B, U]``.
        classes: output indices to attribute to (default: all K outputs).
        batch_size: inputs per forward pass.
        device: where to run (``"cpu"``, ``"cuda"``...).

    Returns:
        float64 ``[U, len(classes)]``: row u is unit u's mean attribution to each class.

    Raises:
        ValueError: no inputs; ``layer`` is not a module of the model; the output is not
            ``[B, K]``; a class index outside ``0..K-1``; a non-finite attribution.
        TypeError: ``batch_size`` is not a positive integer.

    Examples:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Linear(2, 2, bias=False))
        >>> with torch.no_grad():
        ...     _ = net[1].weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 0.0]]))
        >>> x = torch.tensor([[1.0, 1.0], [3.0, 0.0]])           # unit means: 2.0 and 0.5
        >>> gradient_contributions(net, x, "0").tolist()        # weight[c, u] * mean a_u
        [[2.0, 1.0], [-1.0, 0.0]]
    """
    torch = require("torch", "gradient x activation contributions")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise TypeError(f"batch_size must be a positive integer, got {batch_size!r}")
    try:
        module = model.get_submodule(layer)
    except AttributeError:
        raise ValueError(f"layer {layer!r} is not a module of the model (module paths look "
                         f"like 'layer4' or 'block4.0')") from None
    n = len(inputs)
    if n == 0:
        raise ValueError("inputs is empty: attributions are averaged over at least one input")
    captured = []

    def hook(m, i, out):
        # The layer's output becomes a leaf the rest of the model reads: gradients stop
        # there (nothing upstream is differentiated), and it needs no upstream parameter.
        if torch.is_tensor(out) and out.is_floating_point():
            out = out.detach().requires_grad_(True)
        captured.append(out)
        return out

    handle = module.register_forward_hook(hook)
    was_training = model.training
    model.eval()
    total = None
    ids = None
    try:
        for s in range(0, n, batch_size):
            if hasattr(inputs, "shape"):
                batch = inputs[s:s + batch_size]
                batch = batch if torch.is_tensor(batch) else torch.from_numpy(np.asarray(batch))
            else:
                batch = torch.stack([torch.as_tensor(inputs[i])
                                     for i in range(s, min(n, s + batch_size))])
            captured.clear()
            with torch.enable_grad():
                logits = model(batch.to(device))
                if not torch.is_tensor(logits) or logits.ndim != 2:
                    raise ValueError(f"the model's output must be logits [B, K], got "
                                     f"{getattr(logits, 'shape', type(logits).__name__)}")
                if len(captured) != 1 or not torch.is_tensor(captured[0]):
                    raise ValueError(f"layer {layer!r} must run once per forward pass and output "
                                     f"a tensor (it ran {len(captured)} times)")
                acts = captured[0]
                if ids is None:
                    ids = _class_ids(classes, logits.shape[1])
                    total = np.zeros((acts.shape[1], ids.size))
                for j, c in enumerate(ids):
                    # Inputs are independent in eval mode: the gradient of the summed logit
                    # holds each input's own gradient.
                    grad, = torch.autograd.grad(logits[:, c].sum(), acts, retain_graph=True,
                                                allow_unused=True)
                    if grad is None:        # this output does not read the layer
                        continue
                    per_input = (grad * acts).detach().reshape(acts.shape[0], acts.shape[1], -1)
                    total[:, j] += per_input.sum(dim=(0, 2)).double().cpu().numpy()
    finally:
        handle.remove()
        model.train(was_training)
    out = total / n
    if not np.isfinite(out).all():
        u, j = np.argwhere(~np.isfinite(out))[0]
        raise ValueError(f"the attribution of unit {u} to class {int(ids[j])} is {out[u, j]}: "
                         f"the model's activations or gradients are not finite")
    return out


def _class_ids(classes, k: int) -> np.ndarray:
    if classes is None:
        return np.arange(k)
    ids = np.asarray(classes)
    if ids.ndim != 1 or ids.size == 0 or ids.dtype == bool or ids.dtype.kind not in "iu":
        raise ValueError(f"classes must be a non-empty sequence of output indices, got "
                         f"{classes!r}")
    bad = ids[(ids < 0) | (ids >= k)]
    if bad.size:
        raise ValueError(f"class {int(bad[0])} out of range: the model has K={k} outputs")
    return ids.astype(np.int64)


@dataclass(frozen=True)
class ContributionTable:
    """Each class's most contributing units with their explanations (plain data).

    Attributes:
        class_names: the C class names.
        rows: one dict per (class, rank): ``class``, ``rank`` (1 = largest), ``unit``,
            ``contribution``, ``formula`` (text, ``""`` for a unit without one), ``iou``; in
            class order, then rank.
    """
    class_names: tuple
    rows: tuple

    def for_class(self, name: str) -> list:
        """The rows of one class, best first."""
        if name not in self.class_names:
            raise ValueError(f"class {name!r} is not one of the table's classes")
        return [r for r in self.rows if r["class"] == name]

    COLUMNS = ("class", "rank", "unit", "contribution", "formula", "iou")


def contribution_table(result: SearchResult, contributions, class_names: Sequence[str], *,
                       top: int = 5) -> ContributionTable:
    """For each class, the ``top`` units of the result with the largest positive contribution
    to it, with their formulas.

    Args:
        result: a search result over the units of the layer.
        contributions: float ``[U, C]``, row u = unit u (:func:`unit_class_weights` with
            ``units=None``, or :func:`gradient_contributions`).
        class_names: the C class names, in column order.
        top: units per class (>= 1); fewer when fewer contribute positively.

    Returns:
        A :class:`ContributionTable`.

    Raises:
        ValueError: shapes that disagree; a unit of the result outside ``0..U-1``; NaN.

    Examples:
        >>> from compexp_core.engine.results import Explanation
        >>> result = SearchResult([Explanation(0, Formula.parse("(red AND circle)"), 0.4, 0.2,
        ...                                    None, 0.0),
        ...                        Explanation(1, None, 0.0, 0.0, None, 0.0)])
        >>> table = contribution_table(result, np.array([[0.5, -1.0], [2.0, 0.1]]),
        ...                            ["red circle", "blue square"])
        >>> [(r["class"], r["unit"], r["formula"]) for r in table.rows]
        [('red circle', 1, ''), ('red circle', 0, '(red AND circle)'), ('blue square', 1, '')]
    """
    c = _contribution_matrix(contributions, result)
    names = _class_names(class_names, c.shape[1])
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
        raise ValueError(f"top must be an integer >= 1, got {top!r}")
    units = np.array(result.units, np.int64)
    rows = []
    for j, name in enumerate(names):
        values = c[units, j]
        order = np.argsort(-values, kind="stable")
        for rank, i in enumerate([i for i in order if values[i] > 0][:top]):
            e = result.by_unit(int(units[i]))
            rows.append({"class": name, "rank": rank + 1, "unit": int(units[i]),
                         "contribution": float(values[i]),
                         "formula": "" if e.formula is None else str(e.formula),
                         "iou": float(e.iou)})
    return ContributionTable(names, tuple(rows))


def _contribution_matrix(contributions, result: SearchResult) -> np.ndarray:
    """``contributions`` as a checked float64 ``[U, C]`` covering the result's units."""
    if is_tensor(contributions):
        contributions = tensor_to_numpy(contributions, "contributions")
    c = np.asarray(contributions)
    if c.dtype == bool or c.dtype.kind not in "iuf":
        raise TypeError(f"contributions must be a numeric array [U, C], got dtype {c.dtype}")
    if c.ndim != 2 or 0 in c.shape:
        raise ValueError(f"contributions must be a non-empty [U, C] array (row u = unit u), "
                         f"got shape {c.shape}")
    c = c.astype(np.float64)
    if not np.isfinite(c).all():
        u, j = np.argwhere(~np.isfinite(c))[0]
        raise ValueError(f"contributions holds {c[u, j]} at [{u}, {j}]: it must be finite")
    units = result.units
    if units and (min(units) < 0 or max(units) >= c.shape[0]):
        raise ValueError(f"the result explains unit {max(units)} but contributions has rows "
                         f"for U={c.shape[0]} units (layout [U, C], row u = unit u)")
    return c


def _class_names(class_names: Sequence[str], n: int) -> tuple:
    names = (class_names,) if isinstance(class_names, str) else tuple(class_names)
    if len(names) != n:
        raise ValueError(f"class_names has {len(names)} names but contributions has C={n} "
                         f"classes (columns; the layout is [U, C])")
    if len(set(names)) != len(names):
        raise ValueError(f"class_names must be distinct, got {list(names)}")
    return tuple(str(s) for s in names)


def positive_terms(formula: Formula, *, limit: int = 64) -> list:
    """The conjunctions of concepts a formula uses positively: the formula read as an OR of
    ANDs, each term's leaves that are not under a NOT (sorted names), without repeats.

    These are the concepts whose presence the formula asks for; a leaf under ``AND NOT`` (or
    ``OR NOT``) asks for an absence and is left out.

    Args:
        formula: a search formula.
        limit: at most this many terms (the expansion of ANDs of ORs multiplies).

    Returns:
        A list of tuples of concept names, in the formula's left-to-right order.

    Examples:
        >>> positive_terms(Formula.parse("((red AND circle) OR blue)"))
        [('circle', 'red'), ('blue',)]
        >>> positive_terms(Formula.parse("((water OR river) AND NOT blue)"))
        [('water',), ('river',)]
    """
    def terms(node) -> list:
        if isinstance(node, Leaf):
            return [frozenset([node.name])]
        if isinstance(node, Not):
            return [frozenset()]
        left, right = terms(node.left), terms(node.right)
        if isinstance(node, Or):
            return (left + right)[:limit]
        return [a | b for a in left for b in right][:limit]

    out: list = []
    for t in terms(formula):
        key = tuple(sorted(t))
        if key and key not in out:
            out.append(key)
    return out[:limit]
