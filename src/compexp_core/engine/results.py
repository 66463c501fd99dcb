"""The explanation of one unit: :class:`Explanation`, pure data.

A search returns one per requested unit, gathered in a :class:`compexp_core.results.SearchResult`
(which also saves and loads them through :mod:`compexp_core.io.results`).

Examples:
    >>> from compexp_core.engine.formula import Formula
    >>> e = Explanation(unit=7, formula=Formula.parse("(water AND NOT blue)"), iou=0.5,
    ...                 score=0.5, primitive=Formula.parse("water"), primitive_iou=0.25)
    >>> e.length, str(e)
    (2, 'unit 7: (water AND NOT blue) (iou 0.5000; best single water 0.2500)')
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .formula import Formula

__all__ = ["Explanation", "Optimality"]


@dataclass(frozen=True)
class Optimality:
    """The record of an optimal search of one unit (``method="optimal"``).

    Attributes:
        upper_bound: a proven upper bound on the score of every formula of the search's
            grammar; equal to the explanation's score when the search finished (the formula
            is optimal), larger when the per-unit budget ran out first.
        nodes_expanded: prefixes whose children were counted (rows of extension counts).
        nodes_pruned: prefixes discarded because their bound could not beat the incumbent.
        counts_computed: (prefix, concept) pairs counted, each giving ``|F & C|`` and
            ``|U & F & C|``.
        seconds: wall-clock time of this unit's branch and bound (after the beam search).
    """

    upper_bound: float
    nodes_expanded: int
    nodes_pruned: int
    counts_computed: int
    seconds: float


@dataclass(frozen=True)
class Explanation:
    """The explanation of one unit.

    Attributes:
        unit: the unit's index in the activations.
        formula: the best formula found, or None when no concept overlaps the unit.
        iou: the raw metric value of ``formula`` (IoU by default; precision or recall if the
            search used that metric). 0.0 when ``formula`` is None.
        score: ``iou`` times the complexity penalty ``penalty ** (len(formula) - 1)``.
        primitive: the best single concept (the unit's Network Dissection label), or None.
        primitive_iou: its metric value.
        beam: the final beam as ``(formula, score)`` pairs, best first.
        threshold: the activation threshold that binarised the unit (None for bool
            activations).
        by_length: ``(formula, iou)`` per maximum length 1, 2, ...: the best formula of
            the beam after that many steps, which is exactly what a search with that
            ``max_length`` returns (beam search never revisits earlier steps), so one search
            at the longest length gives the whole IoU-against-length curve. The search of a
            unit stops as soon as a step leaves its beam unchanged (every later step would
            repeat it), so ``by_length`` can be shorter than ``max_length``: longer lengths
            give its last entry (:meth:`at_length`).
        skipped: why the unit was not searched (it fired on fewer cells than the search's
            ``min_firing``), else None. A skipped unit has no formula.
        optimality: for ``method="optimal"``, the proof's record (:class:`Optimality`); then
            ``beam`` is the beam search's final beam (``beam[0]`` its answer) and
            ``by_length`` is empty. None for a beam search.
    """

    unit: int
    formula: Optional[Formula]
    iou: float
    score: float
    primitive: Optional[Formula]
    primitive_iou: float
    beam: tuple = field(default=())
    threshold: Optional[float] = None
    by_length: tuple = field(default=())
    skipped: Optional[str] = None
    optimality: Optional[Optimality] = None

    @property
    def optimal(self) -> Optional[bool]:
        """Whether ``formula`` is proven optimal (its score equals the upper bound); None for
        a beam search, which proves nothing."""
        if self.optimality is None:
            return None
        return self.optimality.upper_bound <= self.score

    @property
    def gap(self) -> Optional[float]:
        """``upper_bound - score`` of an optimal search (0.0 when proven optimal), else None."""
        return None if self.optimality is None else self.optimality.upper_bound - self.score

    @property
    def beam_suboptimal(self) -> Optional[bool]:
        """For an optimal search: whether the beam search's answer (``beam[0]``) scores below
        ``formula``; None for a beam search."""
        if self.optimality is None:
            return None
        beam_score = self.beam[0][1] if self.beam else 0.0
        return beam_score < self.score

    def at_length(self, max_length: int) -> tuple:
        """``(formula, iou)`` that a search with this ``max_length`` finds (from
        ``by_length``; lengths past its end give its last entry).

        Raises:
            ValueError: ``max_length`` < 1, or no ``by_length`` (a file from before 0.1).
        """
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        if not self.by_length:
            raise ValueError("this explanation carries no per-length results (by_length)")
        return self.by_length[min(max_length, len(self.by_length)) - 1]

    @property
    def length(self) -> int:
        """Number of leaves of ``formula`` (0 when None)."""
        return 0 if self.formula is None else len(self.formula)

    def __str__(self) -> str:
        if self.skipped:
            return f"unit {self.unit}: skipped ({self.skipped})"
        return (f"unit {self.unit}: {self.formula} (iou {self.iou:.4f}; best single "
                f"{self.primitive} {self.primitive_iou:.4f})")
