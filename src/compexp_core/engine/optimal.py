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
    >>> float(cb.bound(np.array([3]), np.array([1]), 1, 1)[0])   # (C0 OR C1) at best 4 / 4
    1.0
    >>> float(cb.bound(np.array([3]), np.array([1]), 2, 0)[0])   # nothing left to add
    0.0
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .beam import OP_AND, OP_AND_NOT, OP_LEAF, OP_OR, OP_OR_NOT, Entry, SearchParams, metric_values
from .masks import MaskSet
from .results import Optimality

__all__ = ["OptimalBudget", "CompletionBound", "OptimalUnit", "search_unit_optimal"]


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
        """m(TP, FP), the metric of a formula with those true and false positives."""
        tp = np.asarray(tp, np.int64)
        return metric_values(self.params.metric, tp, tp + np.asarray(fp, np.int64), self.u)

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
            out = np.maximum(out, self.metric(np.full(np.shape(tp), u), np.maximum(fp, self.nb_min)))
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
            self.score, self.key, self.inter, self.size, self.from_beam = score, key, inter, size, False


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


def search_unit_optimal(backend, index, umasks, row: int, prim: np.ndarray, unit_size: int,
                        sizes: np.ndarray, n_cells: int, params: SearchParams,
                        beam_best: Optional[Entry], budget: OptimalBudget) -> OptimalUnit:
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
        while pos < n:
            if not best.keeps(level.bound[pos:pos + 1], length)[0]:
                pruned += n - pos            # sorted: every later node fails too
                break
            over_nodes = budget.nodes is not None and expanded >= budget.nodes
            over_time = budget.seconds is not None and time.perf_counter() - t0 >= budget.seconds
            if over_nodes or over_time:
                stopped = True
                open_bound = max(open_bound, float(level.bound[pos]))
                break
            size_b = budget.batch if budget.nodes is None else min(budget.batch,
                                                                   budget.nodes - expanded)
            idx = np.arange(pos, min(n, pos + size_b))
            idx = idx[best.keeps(level.bound[idx], length)]
            pos += size_b
            batch = level.take(idx)
            nb = idx.size
            masks = _materialize(backend, index, batch)
            f, g, _ = backend.extension_counts(index, masks, np.full(nb, row, np.int64), umasks)
            expanded += nb
            counted += nb * K
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
            flat = np.flatnonzero(np.broadcast_to(valid[:, :, None], inter.shape).ravel())
            c_inter, c_size = inter.ravel()[flat], size.ravel()[flat]
            c_score = cb.metric(c_inter, c_size - c_inter) * p.factor(length + 1)
            b_i, j_i, o_i = np.unravel_index(flat, inter.shape)

            def child_key(i, b_i=b_i, j_i=j_i, o_i=o_i, batch=batch):
                return batch.key(int(b_i[i])) + ((int(op_codes[o_i[i]]), int(j_i[i])),)

            offer(c_score, child_key, c_inter, c_size)
            if length + 1 < L:
                steps = L - length - 1
                loose = cb.bound(c_inter, c_size - c_inter, length + 1, steps, precise=False)
                keep = best.keeps(loose, length + 1)
                sel = np.flatnonzero(keep)
                tight = cb.bound(c_inter[sel], c_size[sel] - c_inter[sel], length + 1, steps)
                keep2 = best.keeps(tight, length + 1)
                sel, tight = sel[keep2], tight[keep2]
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
