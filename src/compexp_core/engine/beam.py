"""The beam search of one unit, on exact counts (DESIGN.md): pure, no device, no I/O, no timing.

A :class:`UnitBeam` starts from the unit's primitive counts ``|U & C_j|`` and, at each step,
takes the extension counts of its beam formulas, ``f = |F & C_j|`` and ``g = |U & F & C_j|``,
from which every operator's intersection and size follow (the counting identity):

* AND:      I = g,                 S = f
* AND NOT:  I = |U & F| - g,       S = |F| - f
* OR:       I = |U & F| + |U & C| - g,   S = |F| + |C| - f
* OR NOT:   I = |U| - |U & C| + g,       S = P - |C| + f

It scores the candidates, keeps the ``beam_size`` best of the old beam followed by the new
candidates (stable ranking: ties keep the earlier entry), and says which new formulas were
born from which parent so the driver can have the backend materialise their masks. Scores are
computed from the integer counts in float64 in one place (:func:`metric_values`), so every
backend gives identical results.

Examples:
    >>> import numpy as np
    >>> params = SearchParams(max_length=2, beam_size=2)
    >>> sizes = np.array([4, 4, 2])                  # |C_j| for 3 concepts over P = 8 cells
    >>> beam = UnitBeam(np.array([2, 2, 0]), 3, sizes, 8, params)   # |U & C_j|, |U| = 3
    >>> [e.key for e in beam.beam], beam.primitive
    ([(0,), (1,)], (0, 0.4))
    >>> f = np.array([[4, 1, 2], [1, 4, 0]]); g = np.array([[2, 1, 0], [1, 2, 0]])
    >>> born = beam.extend(f, g)                     # f, g: counts of the 2 beam formulas
    >>> [e.key for e in beam.beam], round(beam.best.metric, 3)   # (c0 AND NOT c2), (c0 OR c1)
    ([(0, (3, 2)), (0, (1, 1))], 0.667)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .formula import OP_CODES, Leaf, key_formula
from .results import Explanation

__all__ = ["SearchParams", "UnitBeam", "Entry", "metric_values", "OPERATORS", "METRICS",
           "materialization_plan"]

# Generation order of operators (DESIGN.md): the order of `ops` given by the caller does not
# change results.
OPERATORS = ("or", "and", "and_not", "or_not")
METRICS = ("iou", "precision", "recall")
OP_OR, OP_AND, OP_AND_NOT, OP_OR_NOT = (OP_CODES[o] for o in OPERATORS)
OP_LEAF, OP_COPY = 0, 5     # materialisation only (csrc/compexp.h): a concept alone, F itself


def positive_int(x, what: str) -> int:
    """``x`` as an int, or TypeError/ValueError naming ``what`` when it is not an integer >= 1."""
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
        raise TypeError(f"{what} must be an integer >= 1, got {x!r}")
    if x < 1:
        raise ValueError(f"{what} must be >= 1, got {x}")
    return int(x)


class SearchParams:
    """Validated beam-search parameters (see :func:`compexp_core.search_formulas`).

    Raises:
        TypeError / ValueError: naming the parameter and what it accepts.
    """

    def __init__(self, max_length: int = 3, beam_size: int = 10,
                 ops: Sequence[str] = ("or", "and", "and_not"), metric: str = "iou",
                 allow_repeats: bool = False, candidate_limit: Optional[int] = None,
                 complexity_penalty: float = 1.0) -> None:
        self.max_length = positive_int(max_length, "max_length")
        self.beam_size = positive_int(beam_size, "beam_size")
        if isinstance(ops, str):
            ops = (ops,)
        ops = tuple(ops)
        unknown = [o for o in ops if o not in OPERATORS]
        if unknown or not ops:
            raise ValueError(f"unknown operator(s) {unknown} in ops; choose from {list(OPERATORS)}"
                             if unknown else "ops must name at least one operator")
        self.ops = tuple(o for o in OPERATORS if o in ops)
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; choose from {list(METRICS)}")
        self.metric = metric
        if not isinstance(allow_repeats, (bool, np.bool_)):
            raise TypeError(f"allow_repeats must be True or False, got {allow_repeats!r}")
        self.allow_repeats = bool(allow_repeats)
        self.candidate_limit = None if candidate_limit is None else positive_int(
            candidate_limit, "candidate_limit")
        if isinstance(complexity_penalty, bool) or not isinstance(
                complexity_penalty, (int, float, np.floating, np.integer)):
            raise TypeError(f"complexity_penalty must be a number, got {complexity_penalty!r}")
        try:
            penalty = float(complexity_penalty)
        except OverflowError:                       # an int beyond the float range
            raise ValueError(f"complexity_penalty must be a finite number > 0, got an integer of "
                             f"{len(str(abs(complexity_penalty)))} digits, beyond the float "
                             f"range") from None
        if not (np.isfinite(penalty) and penalty > 0):
            raise ValueError(f"complexity_penalty must be a finite number > 0, got {complexity_penalty}")
        # Scores are multiplied by penalty ** (length - 1) for lengths up to max_length: the
        # largest power must be a finite, nonzero float (no overflow, no underflow to 0).
        try:
            largest = penalty ** (self.max_length - 1)
        except OverflowError:
            largest = float("inf")
        if not (np.isfinite(largest) and largest > 0):
            big = penalty > 1
            raise ValueError(
                f"complexity_penalty {complexity_penalty} is too {'large' if big else 'small'} "
                f"for max_length {self.max_length}: scores are multiplied by "
                f"complexity_penalty ** (length - 1), and {penalty!r} ** {self.max_length - 1} "
                f"{'overflows' if big else 'underflows to 0'} in float64; choose a penalty "
                f"nearer 1 (below 1 favours shorter formulas, above 1 longer ones)")
        self.penalty = penalty
        self.op_codes = np.array([OP_CODES[o] for o in self.ops], np.int32)

    def factor(self, length: int) -> float:
        """Complexity penalty of a formula of ``length`` leaves."""
        return self.penalty ** (length - 1)

    def as_dict(self) -> dict:
        return {"max_length": self.max_length, "beam_size": self.beam_size, "ops": list(self.ops),
                "metric": self.metric, "allow_repeats": self.allow_repeats,
                "candidate_limit": self.candidate_limit, "complexity_penalty": self.penalty}


def metric_values(metric: str, inter, size, unit_size) -> np.ndarray:
    """Metric from exact counts, in float64; 0 where its denominator is 0.

    iou = I / (|U| + S - I), precision = I / S, recall = I / |U|.

    Examples:
        >>> metric_values("iou", [2, 0], [4, 0], 3).tolist()
        [0.4, 0.0]
    """
    inter = np.asarray(inter, np.int64)
    size = np.asarray(size, np.int64)
    if metric == "iou":
        denom = unit_size + size - inter
    elif metric == "precision":
        denom = size
    else:
        denom = np.broadcast_to(np.asarray(unit_size, np.int64), inter.shape)
    denom = np.asarray(denom, np.int64)
    out = np.zeros(np.broadcast(inter, denom).shape)
    np.divide(inter.astype(np.float64), denom.astype(np.float64), out=out, where=denom > 0)
    return out


def _top_stable(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best scores, descending, ties in index order (a stable sort's head)."""
    if scores.size > 4 * k:
        kth = np.partition(scores, scores.size - k)[scores.size - k]
        pick = np.flatnonzero(scores >= kth)
    else:
        pick = np.arange(scores.size)
    return pick[np.argsort(-scores[pick], kind="stable")][:k]


@dataclass
class Entry:
    """A beam member: its formula key, counts and scores, and where the driver keeps its mask."""
    key: tuple           # (first concept, (op, concept), (op, concept), ...)
    inter: int           # |U & F|
    size: int            # |F|
    metric: float
    score: float
    row: int = -1        # row of its mask in the driver's current formula mask set

    @property
    def length(self) -> int:
        return len(self.key)

    def concepts(self) -> set:
        return {self.key[0], *(c for _, c in self.key[1:])}


@dataclass
class Birth:
    """A formula born in a step: ``op(parent's formula, concept)``."""
    entry: Entry
    parent_row: int
    op: int
    concept: int


class UnitBeam:
    """The search state of one unit.

    Args:
        prim: int64 ``[K]``, ``|U & C_j|`` for every concept.
        unit_size: ``|U|``.
        sizes: int64 ``[K]``, ``|C_j|``.
        n_cells: P, the number of cells.
        params: the search parameters.

    Attributes:
        beam: the current beam, best first.
        primitive: ``(concept, metric)`` of the best single concept, or None.
        best_by_step: the best entry after each step (None without a beam).
        converged: whether the last step left the beam unchanged (or there is no beam).
            Every later step would then repeat it exactly (same beam, same candidates, same
            pool), so the search of this unit is over.
    """

    def __init__(self, prim: np.ndarray, unit_size: int, sizes: np.ndarray, n_cells: int,
                 params: SearchParams) -> None:
        self.params = params
        self.prim = np.asarray(prim, np.int64)
        self.unit_size = int(unit_size)
        self.sizes = sizes
        self.n_cells = int(n_cells)
        metric = metric_values(params.metric, self.prim, sizes, self.unit_size)
        positive = np.flatnonzero(metric > 0)
        ranked = positive[np.argsort(-metric[positive], kind="stable")]
        self.beam = [Entry((int(j),), int(self.prim[j]), int(sizes[j]), float(metric[j]),
                           float(metric[j]) * params.factor(1)) for j in ranked[:params.beam_size]]
        self.primitive = (int(ranked[0]), float(metric[ranked[0]])) if ranked.size else None
        K = self.prim.size
        self.candidates = np.arange(K) if params.candidate_limit is None else \
            ranked[:params.candidate_limit]
        self.cand_pos = np.full(K, -1, np.int64)      # concept -> position among candidates
        self.cand_pos[self.candidates] = np.arange(self.candidates.size)
        self.best_by_step: list[Optional[Entry]] = [self.best]
        self.converged = not self.beam

    @property
    def best(self) -> Optional[Entry]:
        return self.beam[0] if self.beam else None

    def extend(self, f: np.ndarray, g: np.ndarray) -> list[Birth]:
        """One step: ``f``, ``g`` are int64 ``[len(beam), K]`` extension counts of the beam
        formulas, in beam order. Replaces the beam and returns the formulas born."""
        p = self.params
        beam, cands = self.beam, self.candidates
        if self.converged:
            raise RuntimeError("this unit's search has converged: its beam cannot change")
        B, C = len(beam), cands.size
        fc, gc = f[:, cands], g[:, cands]                                # [B, C]
        inter_f = np.array([e.inter for e in beam], np.int64)[:, None]
        size_f = np.array([e.size for e in beam], np.int64)[:, None]
        csize, uc = self.sizes[cands][None, :], self.prim[cands][None, :]
        inter = np.empty((B, C, p.op_codes.size), np.int64)
        size = np.empty_like(inter)
        for o, code in enumerate(p.op_codes):                            # the counting identity
            if code == OP_AND:
                inter[:, :, o], size[:, :, o] = gc, fc
            elif code == OP_AND_NOT:
                inter[:, :, o], size[:, :, o] = inter_f - gc, size_f - fc
            elif code == OP_OR:
                inter[:, :, o], size[:, :, o] = inter_f + uc - gc, size_f + csize - fc
            else:  # OR NOT
                inter[:, :, o], size[:, :, o] = self.unit_size - uc + gc, self.n_cells - csize + fc
        metric = metric_values(p.metric, inter, size, self.unit_size)
        factor = np.array([p.factor(e.length + 1) for e in beam])[:, None, None]
        score = metric * factor

        valid = np.ones(metric.shape, bool)
        if not p.allow_repeats:
            for b, e in enumerate(beam):
                pos = self.cand_pos[list(e.concepts())]
                valid[b, pos[pos >= 0], :] = False
        # A surviving beam member regenerates the formulas it produced earlier: skip those texts.
        row_of_key = {e.key: b for b, e in enumerate(beam)}
        op_pos = {int(code): o for o, code in enumerate(p.op_codes)}
        for e in beam:
            parent = row_of_key.get(e.key[:-1]) if e.length > 1 else None
            if parent is not None:
                op, c = e.key[-1]
                if self.cand_pos[c] >= 0 and op in op_pos:
                    valid[parent, self.cand_pos[c], op_pos[op]] = False

        flat = np.flatnonzero(valid.ravel())
        pool = np.concatenate([np.array([e.score for e in beam]), score.ravel()[flat]])
        new_beam, born = [], []
        for i in _top_stable(pool, p.beam_size):
            if i < B:
                new_beam.append(beam[i])
                continue
            b, c, o = np.unravel_index(flat[i - B], metric.shape)
            parent = beam[b]
            code, concept = int(p.op_codes[o]), int(cands[c])
            entry = Entry(parent.key + ((code, concept),), int(inter[b, c, o]), int(size[b, c, o]),
                          float(metric[b, c, o]), float(score[b, c, o]))
            new_beam.append(entry)
            born.append(Birth(entry, parent.row, code, concept))
        self.beam = new_beam
        self.best_by_step.append(self.best)
        # No newborn in the beam: it is the old beam in the old order, and stays so.
        self.converged = not born
        return born

    def explanation(self, unit: int, names: Sequence[str], threshold: Optional[float] = None
                    ) -> Explanation:
        """The unit's :class:`Explanation` (its best formula, beam and best per length, one
        entry per length searched: fewer than ``max_length`` when the search converged)."""
        steps = self.best_by_step
        best, prim = self.best, self.primitive
        return Explanation(
            unit=int(unit),
            formula=key_formula(best.key, names) if best else None,
            iou=best.metric if best else 0.0,
            score=best.score if best else 0.0,
            primitive=Leaf(names[prim[0]]) if prim else None,
            primitive_iou=prim[1] if prim else 0.0,
            beam=tuple((key_formula(e.key, names), e.score) for e in self.beam),
            by_length=tuple((key_formula(e.key, names), e.metric) if e else (None, 0.0)
                            for e in steps),
            threshold=threshold)


def materialization_plan(beams: Sequence[UnitBeam], born: Sequence[Birth]
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(src, op, concept)`` for one materialisation call that yields the masks of all the
    beams' formulas, unit-major in beam order: survivors are copied from their current rows,
    the newly born are built from their parents' rows (a leaf's source is ignored). Sets every
    entry's ``row`` to its position in that output."""
    parent = {id(b.entry): (b.parent_row, b.op, b.concept) for b in born}
    src, op, concept = [], [], []
    row = 0
    for beam in beams:
        for e in beam.beam:
            s_, o_, c_ = parent.get(id(e), (e.row, OP_COPY, 0))
            src.append(max(s_, 0))
            op.append(o_)
            concept.append(c_)
            e.row = row
            row += 1
    return np.array(src, np.int64), np.array(op, np.int32), np.array(concept, np.int32)
