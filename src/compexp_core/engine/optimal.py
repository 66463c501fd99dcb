"""Guaranteed-optimal explanations: branch and bound over the beam's grammar, on exact counts.

The search space is the beam's: left-deep formulas ``op(...op(op(C1, C2), C3)..., Ck)`` with
``k <= max_length``, operators from ``ops``, every concept (no candidate limit; the first
concept need not score above 0 alone), ``allow_repeats``, ``metric`` and
``complexity_penalty`` as given (``semantics="default"``). A node is a prefix F (a formula of
length l < max_length); expanding it means one row of the backend's extension counts,
``f_j = |F & C_j|`` and ``g_j = |U & F & C_j|`` for every concept j, which scores every child
``op(F, C_j)`` exactly (the counting identity, DESIGN.md) and gives each child its own
integer counts ``TP = |U & G|`` and ``FP = |G & ~U|``. Nodes are expanded in bulk (many
prefixes per kernel call), level by level, best bound first within a level.

**Bounds** (:class:`CompletionBound`; the proof is in ``docs/OPTIMAL.md``). Every metric is a
function m(TP, FP) of a formula's true and false positives (|U| fixed) that never decreases
when TP grows and never increases when FP grows (IoU = TP / (|U| + FP), precision
= TP / (TP + FP), recall = TP / |U|). So if every completion G of F in some family has
TP(G) <= T and FP(G) >= F0, then m(T, F0) bounds them all. One step from any H with
TP(H) <= T, FP(H) >= F0, with concept j (a_j = |U & C_j|, b_j = |C_j & ~U|):

* ``H AND C_j``:      TP <= min(T, a_j),        FP >= 0
* ``H AND NOT C_j``:  TP <= T,                  FP >= 0
* ``H OR C_j``:       TP <= min(|U|, T + a_j),   FP >= max(F0, b_j)
* ``H OR NOT C_j``:   TP <= |U|,                FP >= max(F0, P - |U| - b_j)

For OR only the concepts on the Pareto front of (a_j high, b_j low) matter; for AND, the
largest a_j; for OR NOT, the largest b_j. All four maps are monotone in (T, -F0), so applying
the dominating point ``(max a_j, min b_j)`` in place of every OR concept in early steps stays
admissible; the last step uses the whole front. The bound of a prefix of length l with r
steps left is the maximum over t = 1..r of ``penalty ** (l + t - 1) * m`` over the states
reachable in t steps.

**Incumbent and ties**: the beam's best formula is the first incumbent. Among formulas of
maximal score the search returns the beam's formula if it is one of them; otherwise the
first in canonical order: fewer leaves first, then the first concept's index, then each later
step's operator (OR, AND, AND NOT, OR NOT) and concept index, compared left to right. A unit
whose best score is 0 gets no formula, as in the beam search.

**Anytime**: a per-unit budget of expanded nodes and/or seconds; when it runs out, the
incumbent is returned with the largest bound of the nodes still open (an upper bound on every
formula of the grammar), so ``upper_bound - score`` is the proven gap.

Examples:
    >>> import numpy as np
    >>> from compexp_core.engine.beam import SearchParams
    >>> cb = CompletionBound(np.array([3, 1]), np.array([4, 5]), 4, 20,
    ...                      SearchParams(max_length=2))
    >>> float(cb.bound(np.array([3]), np.array([1]), 1, 1)[0])   # OR: TP <= 4, FP >= 1
    0.8
    >>> float(cb.bound(np.array([3]), np.array([1]), 2, 0)[0])   # nothing left to add
    0.0
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .. import _core
from .beam import OP_AND, OP_AND_NOT, OP_LEAF, OP_OR, OP_OR_NOT, Entry, SearchParams, metric_values
from .masks import MaskSet
from .results import Optimality

__all__ = ["OptimalBudget", "CompletionBound", "ParentBound", "pair_bound", "last_step_children",
           "Cooccurrence", "OptimalUnit", "search_unit_optimal"]


class OptimalBudget:
    """Per-unit limits of the optimal search (None: no limit).

    Args:
        nodes: most prefixes expanded (kernel rows) per unit, an integer >= 1.
        seconds: most wall-clock seconds per unit, a number > 0.
        batch: most prefixes expanded per kernel call (bounds memory: two int64 ``[batch, K]``
            count arrays).

    Raises:
        TypeError / ValueError: naming the parameter.
    """

    def __init__(self, nodes: Optional[int] = None, seconds: Optional[float] = None,
                 batch: int = 256) -> None:
        if nodes is not None:
            if isinstance(nodes, bool) or not isinstance(nodes, (int, np.integer)):
                raise TypeError(f"node_budget must be an integer >= 1 or None, got {nodes!r}")
            if nodes < 1:
                raise ValueError(f"node_budget must be >= 1, got {nodes}")
            nodes = int(nodes)
        if seconds is not None:
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float, np.integer,
                                                                     np.floating)):
                raise TypeError(f"time_budget must be a number of seconds > 0 or None, got "
                                f"{seconds!r}")
            if not (np.isfinite(seconds) and seconds > 0):
                raise ValueError(f"time_budget must be a finite number of seconds > 0, got "
                                 f"{seconds}")
            seconds = float(seconds)
        if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
            raise ValueError(f"batch must be an integer >= 1, got {batch!r}")
        self.nodes, self.seconds, self.batch = nodes, seconds, int(batch)

    def as_dict(self) -> dict:
        return {"node_budget": self.nodes, "time_budget": self.seconds}


class CompletionBound:
    """Admissible upper bounds on the score of every completion of prefixes of one unit.

    Args:
        prim: int64 ``[K]``, ``|U & C_j|``.
        sizes: int64 ``[K]``, ``|C_j|``.
        unit_size: ``|U|``.
        n_cells: P.
        params: the search parameters (operators, metric, penalty).
    """

    def __init__(self, prim, sizes, unit_size: int, n_cells: int, params: SearchParams) -> None:
        a = np.asarray(prim, np.int64)
        b = np.asarray(sizes, np.int64) - a
        self.prim, self.nonunit = a, b
        self.u, self.P, self.params = int(unit_size), int(n_cells), params
        self.ops = {int(c) for c in params.op_codes}
        # The Pareto front of (a high, b low): by b ascending (a descending among equal b),
        # each point whose a beats every point before it.
        order = np.lexsort((-a, b))
        a_s, b_s = a[order], b[order]
        prev = np.maximum.accumulate(np.concatenate([[-1], a_s[:-1]]))
        keep = a_s > prev
        self.front_a, self.front_b = a_s[keep], b_s[keep]
        self.a_max, self.b_min = int(a.max()), int(b.min())
        self.nb_min = self.P - self.u - int(b.max())    # fewest non-U cells outside a concept

    def metric(self, tp, fp) -> np.ndarray:
        """m(TP, FP), the metric of a formula with those true and false positives (integer
        counts, as int64 or exact float64): the very float64 operations of
        :func:`~.beam.metric_values`, so a bound computed from counts that dominate a
        formula's is never below its score."""
        tp = np.asarray(tp, np.float64)
        fp = np.asarray(fp, np.float64)
        if self.params.metric == "iou":
            denom = self.u + fp              # |U| + S - I
        elif self.params.metric == "precision":
            denom = tp + fp
        else:
            denom = np.full(np.broadcast(tp, fp).shape, float(self.u))
        out = np.zeros(np.broadcast(tp, denom).shape)
        np.divide(tp, denom, out=out, where=denom > 0)
        return out

    def _one_step(self, tp, fp, precise: bool) -> np.ndarray:
        """Bound on m over one more step from every state (tp, fp) (upper TP, lower FP)."""
        u, out = self.u, np.zeros(np.shape(tp))
        if OP_AND_NOT in self.ops:                       # dominates AND
            out = np.maximum(out, self.metric(tp, 0))
        elif OP_AND in self.ops:
            out = np.maximum(out, self.metric(np.minimum(tp, self.a_max), 0))
        if OP_OR in self.ops:
            pts = zip(self.front_a, self.front_b) if precise else [(self.a_max, self.b_min)]
            for a_j, b_j in pts:
                out = np.maximum(out, self.metric(np.minimum(u, tp + a_j), np.maximum(fp, b_j)))
        if OP_OR_NOT in self.ops:
            out = np.maximum(out, self.metric(np.full(np.shape(tp), u),
                                              np.maximum(fp, self.nb_min)))
        return out

    def _moves(self, tp, fp) -> list:
        """States one step on (OR relaxed to the dominating concept point)."""
        u, out = self.u, []
        if OP_AND_NOT in self.ops:
            out.append((tp, np.zeros_like(fp)))
        elif OP_AND in self.ops:
            out.append((np.minimum(tp, self.a_max), np.zeros_like(fp)))
        if OP_OR in self.ops:
            out.append((np.minimum(u, tp + self.a_max), np.maximum(fp, self.b_min)))
        if OP_OR_NOT in self.ops:
            out.append((np.full_like(tp, u), np.maximum(fp, self.nb_min)))
        return out

    def bound(self, tp, fp, length: int, steps: int, precise: bool = True) -> np.ndarray:
        """Upper bound on the score of every formula that extends a prefix of ``length``
        leaves with exact counts ``tp`` = |U & F|, ``fp`` = |F & ~U| by 1..``steps`` more
        leaves (0 where ``steps`` is 0). ``precise=False`` uses the dominating concept point
        for OR in every step: a looser, cheaper bound (a prefilter)."""
        tp = np.asarray(tp, np.int64)
        fp = np.asarray(fp, np.int64)
        out = np.zeros(tp.shape)
        states = [(tp, fp)]
        for t in range(1, steps + 1):
            best = np.zeros(tp.shape)
            for s_tp, s_fp in states:
                best = np.maximum(best, self._one_step(s_tp, s_fp, precise))
            out = np.maximum(out, best * self.params.factor(length + t))
            if t < steps:
                states = [m for s in states for m in self._moves(*s)]
        return out


def _front(x: np.ndarray, y: np.ndarray, x_high: bool, y_high: bool, dominating: bool
           ) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``x``, ``y`` ``[n, K]``: the points that matter when a bound grows with x
    (``x_high``; else with -x) and with y (``y_high``): ``[n, Q]`` arrays holding each row's
    Pareto front (padded with dominated points of the row, which change no maximum), or,
    with ``dominating``, ``[n, 1]``: one point at least as good as every point of the row."""
    if dominating:
        return ((x.max(1) if x_high else x.min(1))[:, None],
                (y.max(1) if y_high else y.min(1))[:, None])
    xs = x if x_high else -x
    ys = y if y_high else -y
    order = np.argsort(-ys, axis=1, kind="stable")            # best y first
    xo = np.take_along_axis(xs, order, 1)
    prev = np.maximum.accumulate(np.concatenate(
        [np.full((x.shape[0], 1), np.iinfo(np.int64).min), xo[:, :-1]], axis=1), axis=1)
    keep = xo > prev                                           # beats every better-y point
    q = max(int(keep.sum(1).max()), 1)
    sel = np.take_along_axis(order, np.argsort(~keep, axis=1, kind="stable")[:, :q], 1)
    return np.take_along_axis(x, sel, 1), np.take_along_axis(y, sel, 1)


class ParentBound:
    """Bounds on the last step from children of expanded prefixes, using the parent's counts.

    For a child H of a prefix F (H = F AND / AND NOT C_j lies inside F; H = F OR / OR NOT C_j
    contains F) and a last concept k, the parent's row gives g_k = |U & F & C_k| and
    fp_k = |F & C_k & ~U|, with which (TP_F, FP_F: F's counts; TP_H, FP_H: H's; dT = TP_H -
    TP_F, the true positives H adds to F; a_k, b_k: C_k's; u = |U|, P: all cells):

    =====================  ========================================  ==========================
    step                   H inside F                                H contains F
    =====================  ========================================  ==========================
    AND C_k      TP <=     min(TP_H, g_k)                            min(TP_H, g_k + dT)
                 FP >=     FP_H - FP_F + fp_k                        fp_k
    AND NOT C_k  TP <=     min(TP_H, TP_F - g_k)                     TP_H - g_k
                 FP >=     FP_H - fp_k                               max(FP_F - fp_k, FP_H - b_k)
    OR C_k       TP <=     min(u, TP_H + a_k, TP_F + a_k - g_k)      min(u, TP_H + a_k - g_k)
                 FP >=     FP_H + b_k - fp_k                         max(FP_H, FP_F + b_k - fp_k)
    OR NOT C_k   TP <=     u                                         u
                 FP >=     FP_H - FP_F + P - u - b_k + fp_k          max(FP_H, P - u - b_k + fp_k)
    =====================  ========================================  ==========================

    (each from H's cells inside / outside F: e.g. H & C_k & ~U lies in F & C_k & ~U when H is
    inside F; docs/OPTIMAL.md). Over k, only Pareto fronts of (g, fp), (a, b - fp) and
    (a - g, b - fp) matter.
    """

    def __init__(self, cb: CompletionBound, f: np.ndarray, g: np.ndarray, tp_f: np.ndarray,
                 fp_f: np.ndarray) -> None:
        self.cb, self.g, self.fp = cb, g, f - g
        self.tp_f, self.fp_f = tp_f, fp_f
        a = np.broadcast_to(np.asarray(cb.prim)[None, :], g.shape)
        b = np.broadcast_to(np.asarray(cb.nonunit)[None, :], g.shape)
        self.a, self.b = a, b
        self._fronts: dict = {}

    def bound(self, parent: np.ndarray, op1: np.ndarray, tp, fp, length: int,
              dominating: bool) -> np.ndarray:
        """Bound on every formula ``op2(H, C_k)`` of the children ``H`` (of ``length``
        leaves; counts ``tp``, ``fp``) of the parents ``parent`` (rows of this batch) born by
        operator ``op1``; with ``dominating``, one point per front (cheaper, looser)."""
        inside = (op1 == OP_AND) | (op1 == OP_AND_NOT)
        out = np.zeros(np.shape(tp))
        for part, is_inside in ((np.flatnonzero(inside), True), (np.flatnonzero(~inside), False)):
            if part.size:
                out[part] = self._bound(parent[part], np.asarray(op1)[part],
                                        np.asarray(tp, np.float64)[part],
                                        np.asarray(fp, np.float64)[part], is_inside, dominating)
        return out * self.cb.params.factor(length + 1)

    def _front(self, name: str, dominating: bool):
        """The fronts, computed once per parent batch."""
        key = (name, dominating)
        if key not in self._fronts:
            x, y, x_high, y_high = {
                "and": (self.g, self.fp, True, False),
                "and_not": (self.g, self.fp, False, True),
                "and_not_b": (self.g, self.b, False, True),
                "or_in": (self.a, self.b - self.fp, True, False),
                "or_out": (self.a - self.g, self.b - self.fp, True, False)}[name]
            self._fronts[key] = tuple(v.astype(np.float64) for v in
                                      _front(x, y, x_high, y_high, dominating))
        return self._fronts[key]

    def _bound(self, parent, op1, tp, fp, inside: bool, dominating: bool) -> np.ndarray:
        cb, ops, u, m = self.cb, self.cb.ops, float(self.cb.u), self.cb.metric
        tp_f, fp_f = self.tp_f[parent].astype(np.float64), self.fp_f[parent].astype(np.float64)
        out = np.zeros(tp.shape)

        def best_over(name, value, into=out):
            x, y = self._front(name, dominating)
            x, y = x[parent], y[parent]
            for q in range(x.shape[1]):
                np.maximum(into, value(x[:, q], y[:, q]), out=into)
            return into

        if OP_AND in ops:
            # The search never forms AND right after AND NOT (_ordered_steps).
            no_and = op1 == OP_AND_NOT
            if inside:
                best_over("and", lambda g, fpk: np.where(
                    no_and, 0.0, m(np.minimum(tp, g), np.maximum(fp - fp_f + fpk, 0))))
            else:
                best_over("and", lambda g, fpk: m(np.minimum(tp, g + (tp - tp_f)), fpk))
        if OP_AND_NOT in ops:
            if inside:
                best_over("and_not", lambda g, fpk: m(np.minimum(tp, tp_f - g),
                                                      np.maximum(fp - fpk, 0)))
            else:
                # FP >= max(FP_F - fp_k, FP_H - b_k): each maximised over k, then the minimum.
                by_f = best_over("and_not", lambda g, fpk: m(tp - g, fp_f - fpk),
                                 np.zeros(tp.shape))
                by_h = best_over("and_not_b", lambda g, b: m(tp - g, np.maximum(fp - b, 0)),
                                 np.zeros(tp.shape))
                np.maximum(out, np.minimum(by_f, by_h), out=out)
        if OP_OR in ops:
            if inside:
                # Two bounds on TP, each maximised over k: their minimum is a bound.
                by_a = best_over("or_in", lambda a, rest: m(np.minimum(u, tp + a), fp + rest),
                                 np.zeros(tp.shape))
                by_new = best_over("or_out", lambda a, rest: m(np.minimum(u, tp_f + a),
                                                               fp + rest), np.zeros(tp.shape))
                np.maximum(out, np.minimum(by_a, by_new), out=out)
            else:
                # ... nor OR right after OR NOT.
                no_or = op1 == OP_OR_NOT
                best_over("or_out", lambda a, rest: np.where(no_or, 0.0, m(
                    np.minimum(u, tp + a), np.maximum(fp, fp_f + rest))))
        if OP_OR_NOT in ops:
            c = ((self.fp - self.b).min(1)[parent] + (cb.P - cb.u)).astype(np.float64)
            full = np.full(tp.shape, u)
            np.maximum(out, m(full, np.maximum(fp - fp_f + c, 0) if inside
                              else np.maximum(fp, c)), out=out)
        return out


def pair_bound(cb: CompletionBound, op1, tp, fp, tp_f, fp_f, g_f, fp_fk, j, g_j, fp_jk,
               length: int) -> np.ndarray:
    """Bound on every formula ``op2(H, C_k)``, op2 in AND / AND NOT / OR, for children
    ``H = op1(F, C_j)`` (op1 in AND, AND NOT, OR) of ``length`` leaves, from two count rows
    over k: the parent's (``g_f`` = |U & F & C_k|, ``fp_fk`` = |F & C_k & ~U|) and the leaf
    C_j's (``g_j`` = |U & C_j & C_k|, ``fp_jk`` = |C_j & C_k & ~U|), all ``[n, K]``, exactly
    maximised over k (no fronts). Each line of ``docs/OPTIMAL.md`` § pair bounds holds
    because H's cells are inside (or outside) both F and C_j (or ~C_j) as op1 says."""
    m, u, ops = cb.metric, float(cb.u), cb.ops
    a_k = cb.prim[None, :].astype(np.float64)
    b_k = cb.nonunit[None, :].astype(np.float64)
    a_j = cb.prim[j][:, None].astype(np.float64)
    b_j = cb.nonunit[j][:, None].astype(np.float64)
    tp, fp, tp_f, fp_f = (np.asarray(v, np.float64)[:, None] for v in (tp, fp, tp_f, fp_f))
    g_f, fp_fk, g_j, fp_jk = (v.astype(np.float64) for v in (g_f, fp_fk, g_j, fp_jk))
    op1 = np.asarray(op1)[:, None]
    is_and, is_not = op1 == OP_AND, op1 == OP_AND_NOT
    out = np.zeros(tp.shape[:1] + (a_k.shape[1],))
    zero = 0.0
    # Only the last steps the search forms (_ordered_steps): within a family, (op2, k) must
    # not come before (op1, j).
    later = np.arange(a_k.shape[1])[None, :] >= np.asarray(j)[:, None]
    allowed = {OP_AND: np.where(is_and, later, ~is_not),
               OP_AND_NOT: np.where(is_not, later, True),
               OP_OR: np.where(op1 == OP_OR, later, True)}
    if OP_AND in ops:
        c = np.where(is_and, m(np.minimum(np.minimum(tp, g_f), g_j),
                               np.maximum.reduce([np.full_like(g_f, zero), fp - (fp_f - fp_fk),
                                                  fp - (b_j - fp_jk)])),
                     np.where(is_not, m(np.minimum(np.minimum(tp, g_f), a_k - g_j),
                                        np.maximum(fp - (fp_f - fp_fk), zero)),
                              m(np.minimum(np.minimum(tp, g_f + g_j), a_k),
                                np.maximum(fp_fk, fp_jk))))
        np.maximum(out, np.where(allowed[OP_AND], c, 0.0), out=out)
    if OP_AND_NOT in ops:
        c = np.where(is_and, m(np.minimum(np.minimum(tp, tp_f - g_f), a_j - g_j),
                               np.maximum(np.maximum(fp - fp_fk, fp - fp_jk), zero)),
                     np.where(is_not, m(np.minimum(tp, tp_f - g_f), np.maximum(fp - fp_fk, zero)),
                              m(tp - np.maximum(g_f, g_j),
                                np.maximum.reduce([fp_f - fp_fk, b_j - fp_jk,
                                                   np.maximum(fp - b_k, zero)]))))
        np.maximum(out, np.where(allowed[OP_AND_NOT], c, 0.0), out=out)
    if OP_OR in ops:
        shared_in = np.maximum(g_f - (tp_f - tp), zero)   # |U & C_k & H| >= this, H inside F
        c = np.where(is_and, m(np.minimum(u, tp + a_k - np.maximum(shared_in, g_j - (a_j - tp))),
                               fp + b_k - np.minimum(fp_fk, fp_jk)),
                     np.where(is_not, m(np.minimum(u, tp + a_k - np.maximum(shared_in, g_f - g_j)),
                                        fp + np.maximum(b_k - fp_fk, fp_jk)),
                              m(np.minimum(u, tp + a_k - np.maximum(g_f, g_j)),
                                fp + np.maximum(b_k - fp_fk - fp_jk, zero))))
        np.maximum(out, np.where(allowed[OP_OR], c, 0.0), out=out)
    return out.max(1) * cb.params.factor(length + 1)


class Cooccurrence:
    """``|C_i & C_j|`` for every pair of concepts, counted once per search (the same for every
    unit) when the optimal search first needs it: the f rows of length-1 prefixes; and the
    rows ``|C_a & C_b & C_k|`` of the pairs (a, b) expanded so far (:meth:`and_rows`), kept up
    to ``LIMIT_BYTES``, as they too are the same for every unit."""

    LIMIT_BYTES = 1 << 30

    def __init__(self, n_concepts: int, batch: int = 256) -> None:
        self.K, self.batch = n_concepts, batch
        self.f: Optional[np.ndarray] = None
        self._and: dict = {}

    def and_rows(self, backend, index, umasks, row: int, conc: np.ndarray) -> tuple:
        """``f = |A & B & C_k|`` and ``g = |U & A & B & C_k|`` (``[n, K]`` each) for the pairs
        ``conc`` ``[n, 2]`` (A first: the smaller) and the unit mask ``row`` of ``umasks``.
        A pair seen before costs only g, counted on U & A & B, built inside U (small); a new
        pair builds A & B (large) once and keeps its f row."""
        n, K = conc.shape[0], self.K
        f, g = np.empty((n, K), np.int64), np.empty((n, K), np.int64)
        keys = [(int(a), int(b)) for a, b in conc]
        seen = np.array([k in self._and for k in keys], bool)
        new, old = np.flatnonzero(~seen), np.flatnonzero(seen)
        if new.size:
            masks = backend.materialize(index, MaskSet.empty(0), np.zeros(new.size, np.int64),
                                        np.full(new.size, OP_LEAF, np.int32),
                                        conc[new, 0].astype(np.int32))
            masks = backend.materialize(index, masks, np.arange(new.size, dtype=np.int64),
                                        np.full(new.size, OP_AND, np.int32),
                                        conc[new, 1].astype(np.int32))
            f[new], g[new], _ = backend.extension_counts(
                index, masks, np.full(new.size, row, np.int64), umasks)
            for i in new:
                if 8 * K * (len(self._and) + 1) <= self.LIMIT_BYTES:
                    self._and[keys[i]] = f[i].copy()
        if old.size:
            f[old] = np.stack([self._and[keys[i]] for i in old])
            inside = backend.materialize(index, umasks, np.full(old.size, row, np.int64),
                                         np.full(old.size, OP_AND, np.int32),
                                         conc[old, 0].astype(np.int32))
            inside = backend.materialize(index, inside, np.arange(old.size, dtype=np.int64),
                                         np.full(old.size, OP_AND, np.int32),
                                         conc[old, 1].astype(np.int32))
            g[old], _, _ = backend.extension_counts(index, inside,
                                                    np.full(old.size, row, np.int64), umasks)
        return f, g

    def rows(self, backend, index, umasks, concepts: np.ndarray) -> np.ndarray:
        if self.f is None:
            K = self.K
            self.f = np.zeros((K, K), np.int64)
            for start in range(0, K, self.batch):
                c = np.arange(start, min(K, start + self.batch), dtype=np.int32)
                masks = backend.materialize(index, MaskSet.empty(0), np.zeros(c.size, np.int64),
                                            np.full(c.size, OP_LEAF, np.int32), c)
                f, _, _ = backend.extension_counts(index, masks, np.zeros(c.size, np.int64),
                                                   umasks)
                self.f[c] = f
        return self.f[concepts]


class _LeafRows:
    """Count rows of single concepts (``|C_j & C_k|``, ``|U & C_j & C_k|``), kept from the
    expansion of length-1 prefixes for the pair bounds."""

    LIMIT_BYTES = 1 << 30

    def __init__(self, K: int) -> None:
        self.f = np.zeros((K, K), np.int64)
        self.g = np.zeros((K, K), np.int64)
        self.have = np.zeros(K, bool)

    @classmethod
    def fits(cls, K: int) -> bool:
        return 16 * K * K <= cls.LIMIT_BYTES


def _canonical(key: tuple) -> tuple:
    """The tie order of formulas: fewer leaves, then concepts and operators left to right."""
    flat = [len(key), key[0]]
    for op, c in key[1:]:
        flat += [op, c]
    return tuple(flat)


@dataclass
class _Best:
    score: float
    key: Optional[tuple]
    inter: int
    size: int
    from_beam: bool

    def keeps(self, bound: np.ndarray, length: int) -> np.ndarray:
        """Which nodes of ``length`` with these bounds may still hold a formula that wins
        (a higher score, or an equal score first in tie order)."""
        keep = bound > self.score
        if self.score > 0 and not self.from_beam and self.key is not None \
                and len(self.key) > length:
            keep |= bound == self.score
        return keep

    def offer(self, score: float, key: tuple, inter: int, size: int) -> None:
        if score > self.score or (score == self.score and score > 0 and not self.from_beam
                                  and (self.key is None or _canonical(key) < _canonical(self.key))):
            self.score, self.key, self.inter, self.size = score, key, inter, size
            self.from_beam = False


class _Level:
    """Prefixes of one length: concepts ``[n, l]``, operators ``[n, l-1]``, counts, bounds."""

    def __init__(self, conc, ops, inter, size, bound) -> None:
        self.conc, self.ops, self.inter, self.size, self.bound = conc, ops, inter, size, bound

    @classmethod
    def concat(cls, parts: list, length: int) -> "_Level":
        if not parts:
            return cls(np.zeros((0, length), np.int32), np.zeros((0, length - 1), np.int8),
                       np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
        return cls(*(np.concatenate([getattr(p, n) for p in parts])
                     for n in ("conc", "ops", "inter", "size", "bound")))

    def take(self, idx) -> "_Level":
        return _Level(self.conc[idx], self.ops[idx], self.inter[idx], self.size[idx],
                      self.bound[idx])

    def key(self, i: int) -> tuple:
        c, o = self.conc[i], self.ops[i]
        return (int(c[0]),) + tuple((int(o[s]), int(c[s + 1])) for s in range(o.size))


@dataclass
class OptimalUnit:
    """The optimal search's answer for one unit: the best formula's key and counts (key None
    when no formula scores above 0), and the proof's record."""
    key: Optional[tuple]
    inter: int
    size: int
    metric: float
    score: float
    optimality: Optimality


def pair_rows(ops, f_a, g_a, f_b, g_b, f_ab, g_ab, sizes, prim) -> tuple:
    """Count rows ``f = |F & C_k|``, ``g = |U & F & C_k|`` of two-leaf formulas F = A op B,
    by inclusion and exclusion from the rows of A, of B and of A AND B (``[n, K]`` each;
    ``sizes`` = |C_k|, ``prim`` = |U & C_k|): exact integer identities, e.g.
    |(A OR B) & C| = |A & C| + |B & C| - |A & B & C| and
    |(A OR NOT B) & C| = |C| - |B & C| + |A & B & C|.

    Examples:
        >>> import numpy as np
        >>> A, B, C = np.array([1, 1, 0, 0], bool), np.array([0, 1, 1, 0], bool), np.ones(4, bool)
        >>> U = np.array([1, 0, 1, 1], bool)
        >>> n = lambda m: np.array([[int(m.sum())]])
        >>> f, g = pair_rows(np.array([OP_OR]), n(A & C), n(U & A & C), n(B & C), n(U & B & C),
        ...                  n(A & B & C), n(U & A & B & C), np.array([4]), np.array([3]))
        >>> int(f[0, 0]) == int(((A | B) & C).sum()), int(g[0, 0]) == int((U & (A | B) & C).sum())
        (True, True)
    """
    op = np.asarray(ops)[:, None]
    size_k, prim_k = np.asarray(sizes)[None, :], np.asarray(prim)[None, :]
    f = np.select([op == OP_AND, op == OP_AND_NOT, op == OP_OR],
                  [f_ab, f_a - f_ab, f_a + f_b - f_ab], size_k - f_b + f_ab)
    g = np.select([op == OP_AND, op == OP_AND_NOT, op == OP_OR],
                  [g_ab, g_a - g_ab, g_a + g_b - g_ab], prim_k - g_b + g_ab)
    return f.astype(np.int64), g.astype(np.int64)


def _materialize(backend, index, level: _Level):
    """The masks of ``level``'s prefixes, built leaf by leaf with the materialisation kernel."""
    n, length = level.conc.shape
    masks = backend.materialize(index, MaskSet.empty(0), np.zeros(n, np.int64),
                                np.full(n, OP_LEAF, np.int32), level.conc[:, 0].astype(np.int32))
    for s in range(1, length):
        masks = backend.materialize(index, masks, np.arange(n, dtype=np.int64),
                                    level.ops[:, s - 1].astype(np.int32),
                                    level.conc[:, s].astype(np.int32))
    return masks


_FAMILY = {OP_AND: 0, OP_AND_NOT: 0, OP_OR: 1, OP_OR_NOT: 1}


def _ordered_steps(batch: _Level, op_codes: np.ndarray, K: int) -> np.ndarray:
    """``[n, K, n_ops]``: False for children equal to a formula first in canonical order.

    Two consecutive steps of one family (AND / AND NOT, or OR / OR NOT) commute:
    ``(F op1 A) op2 B`` has the mask of ``(F op2 B) op1 A``, and so has every formula that
    extends them alike. The search forms only the order whose (operator, concept) pairs are
    non-decreasing, and ``C1 AND C2`` / ``C1 OR C2`` only with C1 <= C2, so each skipped
    formula has an equal-scoring one that is earlier in canonical order (and, repeating the
    argument, one that is not skipped): the optimum and the tie rule are unchanged."""
    n, length = batch.conc.shape
    j = np.arange(K)[None, :, None]
    codes = op_codes[None, None, :].astype(np.int64)
    if length == 1:
        c1 = batch.conc[:, 0].astype(np.int64)[:, None, None]
        symmetric = (codes == OP_AND) | (codes == OP_OR)
        return ~(symmetric & (j < c1))
    o1 = batch.ops[:, -1].astype(np.int64)[:, None, None]
    c1 = batch.conc[:, -1].astype(np.int64)[:, None, None]
    fam = np.vectorize(_FAMILY.get)
    same = fam(codes) == fam(o1)
    earlier = (codes < o1) | ((codes == o1) & (j < c1))
    return ~(same & earlier)


def _bound_children(cb: CompletionBound, best: _Best, f, g, batch: _Level, inter, size,
                    parent, op1, length: int, steps: int, concept=None,
                    leaf: Optional[_LeafRows] = None) -> tuple[np.ndarray, np.ndarray]:
    """The children (of ``length`` leaves) that may still win, as indices, and their bounds:
    cheap bounds first, the tighter ones only for the survivors; with one step left, the
    parent's counts tighten them (:class:`ParentBound`; every bound is admissible, so their
    minimum is)."""
    tp, fp = inter, size - inter
    sel = np.arange(tp.size)
    bound = cb.bound(tp, fp, length, steps, precise=False)
    pb = ParentBound(cb, f, g, batch.inter, batch.size - batch.inter) if steps == 1 else None
    stages = [lambda s: cb.bound(tp[s], fp[s], length, steps)]
    if pb is not None:
        stages = [lambda s, d=d: pb.bound(parent[s], op1[s], tp[s], fp[s], length, d)
                  for d in (True, False)] + stages
    for stage in [None] + stages:
        if stage is not None:
            bound = np.minimum(bound, stage(sel))
        keep = best.keeps(bound, length)
        sel, bound = sel[keep], bound[keep]
        if sel.size == 0:
            break
    if pb is not None and leaf is not None and OP_OR_NOT not in cb.ops and sel.size:
        # The pair bounds, on the survivors only ([n, K] work each), in chunks.
        ok = np.flatnonzero((op1[sel] != OP_OR_NOT) & leaf.have[concept[sel]])
        fp_all = f - g
        for start in range(0, ok.size, 1024):
            part = ok[start:start + 1024]
            s_, par, j = sel[part], parent[sel[part]], concept[sel[part]]
            pb_val = pair_bound(cb, op1[s_], tp[s_], fp[s_], batch.inter[par],
                                batch.size[par] - batch.inter[par], g[par], fp_all[par], j,
                                leaf.g[j], leaf.f[j] - leaf.g[j], length)
            bound[part] = np.minimum(bound[part], pb_val)
        keep = best.keeps(bound, length)
        sel, bound = sel[keep], bound[keep]
    return sel, bound


# The children of the last two levels go through the compiled code (_core.last_step_children);
# False: the NumPy path below (the reference the tests compare it with).
_COMPILED_LAST_STEP = True
_METRIC_CODES = {"iou": 0, "precision": 1, "recall": 2}


def last_step_children(cb: CompletionBound, best: "_Best", f: np.ndarray, g: np.ndarray,
                       batch: "_Level", length: int, max_length: int,
                       leaf: Optional["_LeafRows"] = None, n_threads: int = 0) -> dict:
    """The children ``op(F, C_j)`` of the prefixes of ``batch`` (``length`` leaves; count rows
    ``f``, ``g`` ``[n, K]``), formed as the search forms them, through the compiled
    ``_core.last_step_children``: their best one (highest score, first in canonical order)
    and, when they have one step left (``length + 2 == max_length``), those whose bound (the
    minimum of :class:`CompletionBound`, :class:`ParentBound` and, with ``leaf``,
    :func:`pair_bound`, with the very float64 operations) may still beat ``best`` as it was
    before them (the caller prunes them again once it has offered the best child).

    Args:
        cb: the unit's bounds. best: the incumbent. f, g: the parents' count rows.
        batch: the parents. length: their leaves. max_length: the formulas' most leaves.
        leaf: single concepts' count rows (pair bounds), or None.
        n_threads: 0: the default thread count.

    Returns:
        A dict: ``best`` (score, parent row, operator, concept, TP, size; parent -1 when no
        child), ``n_children`` (children formed), and the survivors' ``parent``, ``op``,
        ``concept``, ``tp``, ``size``, ``bound`` (arrays; empty for the last level).

    Examples:
        >>> import numpy as np
        >>> from compexp_core.engine.beam import SearchParams
        >>> p = SearchParams(max_length=2, ops=("and",))
        >>> cb = CompletionBound(np.array([2, 1]), np.array([2, 3]), 2, 8, p)
        >>> batch = _Level(np.array([[0]], np.int32), np.zeros((1, 0), np.int8),
        ...                np.array([2]), np.array([2]), np.array([1.0]))
        >>> r = last_step_children(cb, _Best(0.0, None, 0, 0, False), np.array([[2, 1]]),
        ...                        np.array([[2, 1]]), batch, 1, 2)
        >>> r["best"], r["n_children"]        # 0 AND 1: TP 1, size 1, IoU 1 / 2
        ((0.5, 0, 2, 1, 1, 1), 1)
    """
    p = cb.params
    bound_children = length + 2 == max_length
    keep_ties = bool(best.score > 0 and not best.from_beam and best.key is not None
                     and len(best.key) > length + 1)
    if leaf is not None and bound_children:
        leaf_f, leaf_g, leaf_have = leaf.f, leaf.g, leaf.have.view(np.uint8)
    else:
        leaf_f = leaf_g = np.zeros((0, 0), np.int64)
        leaf_have = np.zeros(0, np.uint8)
    return _core.last_step_children(
        np.ascontiguousarray(f, np.int64), np.ascontiguousarray(g, np.int64),
        np.ascontiguousarray(batch.inter, np.int64), np.ascontiguousarray(batch.size, np.int64),
        np.ascontiguousarray(batch.conc, np.int32), np.ascontiguousarray(batch.ops, np.int32),
        cb.prim, cb.prim + cb.nonunit, cb.u, cb.P, _METRIC_CODES[p.metric],
        [int(c) for c in p.op_codes], bool(p.allow_repeats), p.factor(length + 1),
        p.factor(length + 2), bound_children, leaf_f, leaf_g, leaf_have, float(best.score),
        keep_ties, n_threads)


def search_unit_optimal(backend, index, umasks, row: int, prim: np.ndarray, unit_size: int,
                        sizes: np.ndarray, n_cells: int, params: SearchParams,
                        beam_best: Optional[Entry], budget: OptimalBudget,
                        cooccurrence: Optional["Cooccurrence"] = None) -> OptimalUnit:
    """Branch and bound for the unit whose mask is row ``row`` of ``umasks`` (on ``backend``).

    Args:
        backend, index: the backend and its prepared concept index.
        umasks: the batch's unit masks on the backend; ``row`` is this unit's.
        prim: int64 ``[K]``, ``|U & C_j|``; ``unit_size``: ``|U|``; ``sizes``: ``|C_j|``;
            ``n_cells``: P.
        params: search parameters (``semantics="default"``).
        beam_best: the beam's best formula (the first incumbent), or None.
        budget: per-unit limits.

    Returns:
        An :class:`OptimalUnit`.
    """
    t0 = time.perf_counter()
    p, K, L = params, int(prim.size), params.max_length
    prim = np.asarray(prim, np.int64)
    sizes = np.asarray(sizes, np.int64)
    cb = CompletionBound(prim, sizes, unit_size, n_cells, p)
    best = _Best(0.0, None, 0, 0, False)
    if beam_best is not None and beam_best.score > 0:
        best = _Best(beam_best.score, beam_best.key, beam_best.inter, beam_best.size, True)
    expanded = pruned = counted = 0

    def offer(scores: np.ndarray, make_key, inter, size) -> None:
        if scores.size == 0:
            return
        top = scores.max()
        if top < best.score or top <= 0:
            return
        for i in np.flatnonzero(scores == top):
            best.offer(float(top), make_key(i), int(inter[i]), int(size[i]))

    # Length 1: every concept, scored from the primitive counts.
    score1 = cb.metric(prim, sizes - prim) * p.factor(1)
    offer(score1, lambda j: (int(j),), prim, sizes)
    level = _Level(np.arange(K, dtype=np.int32)[:, None], np.zeros((K, 0), np.int8), prim.copy(),
                   sizes.copy(), cb.bound(prim, sizes - prim, 1, L - 1))
    open_bound = 0.0             # the largest bound of a node left open by the budget
    leaf = _LeafRows(K) if L >= 3 and _LeafRows.fits(K) and OP_OR_NOT not in cb.ops else None

    def counts(batch: _Level):
        """One kernel call: the count rows of the prefixes of ``batch``."""
        nonlocal expanded, counted
        if leaf is not None and batch.conc.shape[1] == 2 and leaf.have[batch.conc].all():
            # Only A AND B is built (never larger than A or B; A OR B of two scenes can
            # cover most cells): the rows of A op B follow from it and A's and B's rows.
            # AND commutes: the smaller concept is copied first, the larger only read.
            conc = np.take_along_axis(batch.conc, np.argsort(sizes[batch.conc], axis=1,
                                                             kind="stable"), 1)
            nb = batch.conc.shape[0]
            if cooccurrence is not None:
                f_ab, g_ab = cooccurrence.and_rows(backend, index, umasks, row, conc)
            else:
                pair = _Level(conc, np.full((nb, 1), OP_AND, np.int8), batch.inter,
                              batch.size, batch.bound)
                f_ab, g_ab, _ = backend.extension_counts(
                    index, _materialize(backend, index, pair), np.full(nb, row, np.int64),
                    umasks)
            expanded += nb
            counted += nb * K
            return pair_rows(batch.ops[:, 0], leaf.f[batch.conc[:, 0]], leaf.g[batch.conc[:, 0]],
                             leaf.f[batch.conc[:, 1]], leaf.g[batch.conc[:, 1]], f_ab, g_ab,
                             sizes, prim)
        masks = _materialize(backend, index, batch)
        nb = batch.conc.shape[0]
        f, g, _ = backend.extension_counts(index, masks, np.full(nb, row, np.int64), umasks)
        expanded += nb
        counted += nb * K
        return f, g

    op_codes = p.op_codes
    csize, uc = sizes[None, :], prim[None, :]
    stopped = False
    for length in range(1, L):
        keep = best.keeps(level.bound, length)
        pruned += int((~keep).sum())
        level = level.take(np.flatnonzero(keep))
        level = level.take(np.argsort(-level.bound, kind="stable"))     # best bound first
        children: list = []
        pos, n = 0, level.bound.size
        if length == 1 and leaf is not None:
            # Expand every length-1 prefix first: the children's pair bounds use their rows.
            unit_pairs = None
            if cooccurrence is not None and _COMPILED_LAST_STEP \
                    and isinstance(index, _core.ConceptIndex) and isinstance(umasks, MaskSet):
                # On the CPU, all |U & C_c & C_k| in one walk of U's blocks.
                unit_pairs = index.unit_pair_counts(umasks.arrays(), row)
            for start in range(0, n, budget.batch):
                if (budget.nodes is not None and expanded + min(budget.batch, n - start)
                        > budget.nodes) or (budget.seconds is not None
                                            and time.perf_counter() - t0 >= budget.seconds):
                    break
                part = level.take(np.arange(start, min(n, start + budget.batch)))
                c = part.conc[:, 0]
                if cooccurrence is not None and unit_pairs is not None:
                    g = unit_pairs[c]
                    f = cooccurrence.rows(backend, index, umasks, c)
                    expanded += c.size
                    counted += c.size * K
                elif cooccurrence is not None:
                    # |C_c & C_k| is the same for every unit: only |U & C_c & C_k| is counted,
                    # on the small masks U & C_c.
                    cu = backend.materialize(index, umasks, np.full(c.size, row, np.int64),
                                             np.full(c.size, OP_AND, np.int32), c.astype(np.int32))
                    g, _, _ = backend.extension_counts(index, cu, np.full(c.size, row, np.int64),
                                                       umasks)
                    f = cooccurrence.rows(backend, index, umasks, c)
                    expanded += c.size
                    counted += c.size * K
                else:
                    f, g = counts(part)
                leaf.f[c], leaf.g[c], leaf.have[c] = f, g, True
        while pos < n:
            if not best.keeps(level.bound[pos:pos + 1], length)[0]:
                pruned += n - pos            # sorted: every later node fails too
                break
            cached = length == 1 and leaf is not None and \
                leaf.have[level.conc[pos:pos + budget.batch, 0]].all()
            over_nodes = not cached and budget.nodes is not None and expanded >= budget.nodes
            over_time = budget.seconds is not None and time.perf_counter() - t0 >= budget.seconds
            over_time = over_time and not cached
            if over_nodes or over_time:
                stopped = True
                open_bound = max(open_bound, float(level.bound[pos]))
                break
            size_b = budget.batch if budget.nodes is None or cached else min(
                budget.batch, budget.nodes - expanded)
            idx = np.arange(pos, min(n, pos + size_b))
            idx = idx[best.keeps(level.bound[idx], length)]
            pos += size_b
            batch = level.take(idx)
            nb = idx.size
            if length == 1 and leaf is not None and leaf.have[batch.conc[:, 0]].all():
                f, g = leaf.f[batch.conc[:, 0]], leaf.g[batch.conc[:, 0]]
            else:
                f, g = counts(batch)
            if _COMPILED_LAST_STEP and L - length <= 2:
                # The children are the last level, or have one step left: scored, bounded
                # and pruned in the compiled code; only the survivors come back.
                r = last_step_children(cb, best, f, g, batch, length, L, leaf)
                score, bp, bop, bj, btp, bsize = r["best"]
                if bp >= 0:
                    offer(np.array([score]), lambda i, bp=bp, bop=bop, bj=bj, batch=batch:
                          batch.key(bp) + ((bop, bj),), [btp], [bsize])
                if length + 1 < L:
                    sel = np.flatnonzero(best.keeps(r["bound"], length + 1))
                    pruned += r["n_children"] - sel.size
                    par = r["parent"][sel]
                    children.append(_Level(
                        np.concatenate([batch.conc[par], r["concept"][sel, None]], axis=1),
                        np.concatenate([batch.ops[par], r["op"][sel, None].astype(np.int8)],
                                       axis=1),
                        r["tp"][sel], r["size"][sel], r["bound"][sel]))
                continue
            inter_f, size_f = batch.inter[:, None], batch.size[:, None]
            inter = np.empty((nb, K, op_codes.size), np.int64)
            size = np.empty_like(inter)
            for o, code in enumerate(op_codes):                  # the counting identity
                if code == OP_AND:
                    inter[:, :, o], size[:, :, o] = g, f
                elif code == OP_AND_NOT:
                    inter[:, :, o], size[:, :, o] = inter_f - g, size_f - f
                elif code == OP_OR:
                    inter[:, :, o], size[:, :, o] = inter_f + uc - g, size_f + csize - f
                else:
                    inter[:, :, o], size[:, :, o] = unit_size - uc + g, n_cells - csize + f
            valid = np.ones((nb, K), bool)
            if not p.allow_repeats:
                valid[np.arange(nb)[:, None], batch.conc] = False
            valid = valid[:, :, None] & _ordered_steps(batch, op_codes, K)
            flat = np.flatnonzero(valid.ravel())
            c_inter, c_size = inter.ravel()[flat], size.ravel()[flat]
            c_score = cb.metric(c_inter, c_size - c_inter) * p.factor(length + 1)
            b_i, j_i, o_i = np.unravel_index(flat, inter.shape)

            def child_key(i, b_i=b_i, j_i=j_i, o_i=o_i, batch=batch):
                return batch.key(int(b_i[i])) + ((int(op_codes[o_i[i]]), int(j_i[i])),)

            offer(c_score, child_key, c_inter, c_size)
            if length + 1 < L:
                sel, tight = _bound_children(cb, best, f, g, batch, c_inter, c_size, b_i,
                                             op_codes[o_i], length + 1, L - length - 1,
                                             j_i, leaf)
                pruned += flat.size - sel.size
                bsel = b_i[sel]
                children.append(_Level(
                    np.concatenate([batch.conc[bsel], j_i[sel, None].astype(np.int32)], axis=1),
                    np.concatenate([batch.ops[bsel], op_codes[o_i[sel], None].astype(np.int8)],
                                   axis=1),
                    c_inter[sel], c_size[sel], tight))
        next_level = _Level.concat(children, length + 1)
        if stopped:
            if next_level.bound.size:
                open_bound = max(open_bound, float(next_level.bound.max()))
            break
        level = next_level
    upper = max(best.score, open_bound)
    metric = float(cb.metric(best.inter, best.size - best.inter)) if best.key is not None else 0.0
    proof = Optimality(upper_bound=upper, nodes_expanded=expanded, nodes_pruned=pruned,
                       counts_computed=counted, seconds=time.perf_counter() - t0)
    return OptimalUnit(best.key, best.inter, best.size, metric,
                       best.score if best.key is not None else 0.0, proof)
