"""Analyses of search results, as in the paper's vision experiments, and per-image mask views.

* :func:`mean_iou_by_length`: mean explanation IoU against the maximum formula length, from
  one search at the longest length (``Explanation.by_length``).
* :func:`iou_accuracy_correlation`: does a unit's explanation IoU go with the model's accuracy
  on the inputs where the unit fires?
* :func:`unit_class_weights` and :func:`concept_class_table`: for a classifier whose last layer
  reads the units, which class each unit pushes towards, and which concepts the explanations of
  the units pushing towards each class use (the paper's NLI analysis: "nobody", "sleeping",
  "cat" in explanations of units that push towards contradiction).
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
from .engine.formula import Formula, Leaf, Not
from .engine.units import check_activations, is_tensor, tensor_to_numpy, unit_masks
from .inputs import activations_input
from .results import SearchResult

__all__ = ["mean_iou_by_length", "IouAccuracy", "iou_accuracy_correlation", "firing_samples",
           "top_activating_samples", "unit_mask_images", "formula_mask_images",
           "unit_class_weights", "ConceptClassTable", "concept_class_table"]


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
    if len(result) == 0:
        raise ValueError("the result has no explanations")
    explained = [e for e in result if e.formula is not None]
    if not explained:
        raise ValueError(f"none of the result's {len(result)} units has a formula (no concept "
                         f"overlaps them, or the search skipped them): there is no IoU to "
                         f"average")
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
