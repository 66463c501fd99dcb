"""Analyses of search results, as in the paper's vision experiments, and per-image mask views.

* :func:`mean_iou_by_length`: mean explanation IoU against the maximum formula length, from
  one search at the longest length (``Explanation.by_length``).
* :func:`iou_accuracy_correlation`: does a unit's explanation IoU go with the model's accuracy
  on the inputs where the unit fires?
* :func:`firing_samples`, :func:`top_activating_samples`, :func:`unit_mask_images` and
  :func:`formula_mask_images`: which inputs a unit fires on, and the unit's and a formula's
  masks on chosen inputs (for reports), computed exactly as the search computes them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .engine.concepts import ConceptSet
from .engine.driver import materialize_formulas
from .engine.formula import Formula
from .engine.units import check_activations, unit_masks
from .inputs import activations_input
from .results import SearchResult

__all__ = ["mean_iou_by_length", "IouAccuracy", "iou_accuracy_correlation", "firing_samples",
           "top_activating_samples", "unit_mask_images", "formula_mask_images"]


def mean_iou_by_length(result: SearchResult) -> np.ndarray:
    """Mean IoU of the units' explanations for each maximum formula length 1..L.

    Entry ``l - 1`` is the mean over units of the IoU a search with ``max_length = l`` finds;
    one search at the longest length gives them all (see ``Explanation.by_length``). Units
    with no formula count as IoU 0.

    Args:
        result: a search result whose explanations carry ``by_length`` (every search since
            version 0.1 records it).

    Returns:
        float64 array of L means, non-decreasing.

    Raises:
        ValueError: the result is empty or its explanations carry no ``by_length``.

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
    lengths = {len(e.by_length) for e in result}
    if 0 in lengths:
        raise ValueError("the result's explanations carry no per-length IoUs (by_length); it "
                         "was written by an older version: search again")
    # Searches stop once a unit's beam stops changing: pad to the length searched for.
    L = max(max(lengths), int((result.params or {}).get("max_length") or 0))
    table = np.zeros((len(result), L))
    for i, e in enumerate(result):
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
        units: the units with at least ``min_firing`` firing inputs, in the result's order.
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
    fires = firing_samples(acts, result, grid)
    n_firing = fires.sum(axis=0)
    keep = n_firing >= min_firing
    accuracy = (fires & correct[:, None]).sum(axis=0)[keep] / n_firing[keep]
    iou = np.array([e.iou for e in result])[keep]
    pearson = _pearson(iou, accuracy)
    spearman = _pearson(_ranks(iou), _ranks(accuracy))
    p_value = float("nan")
    if permutations and not np.isnan(pearson):
        rng = np.random.default_rng(seed)
        shuffled = np.array([_pearson(iou, rng.permutation(accuracy))
                             for _ in range(int(permutations))])
        p_value = float((np.sum(np.abs(shuffled) >= abs(pearson) - 1e-12) + 1)
                        / (permutations + 1))
    return IouAccuracy(np.asarray(result.units)[keep], iou, accuracy, n_firing[keep],
                       pearson, spearman, p_value)
