"""Beam search for compositional explanations (Mu & Andreas, NeurIPS 2020).

For each unit: score every concept alone; keep the ``beam_size`` best with a positive score;
then, ``max_length - 1`` times, extend every beam formula F with every candidate concept C and
operator (OR, AND, AND NOT, optionally OR NOT), and keep the ``beam_size`` best of the old beam
followed by the new candidates (stable ranking: ties keep the earlier entry). The exact
semantics are those of ``DESIGN.md``.

The driver never touches bits. Scores come from integer counts returned by the compiled
kernels: for each beam formula F of unit U and every concept j, the kernel counts
f_j = |F & C_j| and g_j = |U & F & C_j| in one pass over the blocks where F is set, and every
operator's intersection and size follow from them (the counting identity of DESIGN.md). Only
the formulas that enter the beam are materialised as masks.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .. import _core
from .backends import resolve_device
from .concepts import ConceptSet, check_names, empty_masks
from .formula import Formula, Leaf
from .results import Explanation, SearchResult
from .units import (as_activations, check_activations, check_quantile, compute_thresholds,
                    unit_batches, unit_masks)

__all__ = ["search_formulas", "materialize_formulas", "formula_key", "OPERATORS", "METRICS"]

log = logging.getLogger("compexp_core")

# Generation order of operators (DESIGN.md): the order of `ops` given by the caller does not
# change results.
OPERATORS = ("or", "and", "and_not", "or_not")
METRICS = ("iou", "precision", "recall")
_OP_CODE = {"or": _core.OP_OR, "and": _core.OP_AND, "and_not": _core.OP_AND_NOT,
            "or_not": _core.OP_OR_NOT}


class _Stats:
    """Wall time per phase and the work done by the extension kernel, for profiling."""

    def __init__(self) -> None:
        self.seconds = {"thresholds": 0.0, "unit_masks": 0.0, "index_upload": 0.0,
                        "primitive_counts": 0.0, "extension_counts": 0.0, "materialize": 0.0,
                        "driver": 0.0}
        self.extension_entries = 0      # partial concept blocks read by the extension kernel
        self.extension_full = 0         # full concept blocks counted without reading words
        self.extension_formula_blocks = 0

    def as_dict(self) -> dict:
        return {"seconds": dict(self.seconds), "extension_entries": self.extension_entries,
                "extension_full": self.extension_full,
                "extension_formula_blocks": self.extension_formula_blocks,
                "extension_bytes": self.extension_entries * (8 * _core.BLOCK_WORDS + 4)}


@dataclass
class _Entry:
    """A beam member: its formula key, counts and scores."""
    key: tuple           # (first concept, (op, concept), (op, concept), ...)
    inter: int           # |U & F|
    size: int            # |F|
    metric: float
    score: float
    row: int = -1        # row of its mask in the batch's formula mask set

    @property
    def length(self) -> int:
        return len(self.key)

    def concepts(self) -> set:
        return {self.key[0], *(c for _, c in self.key[1:])}


def metric_values(metric: str, inter: np.ndarray, size: np.ndarray, unit_size) -> np.ndarray:
    """Metric from exact counts, in float64; 0 where its denominator is 0.

    iou = I / (|U| + S - I), precision = I / S, recall = I / |U|.
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


class _Params:
    """Validated search parameters."""

    def __init__(self, max_length, beam_size, ops, metric, allow_repeats, candidate_limit,
                 complexity_penalty):
        self.max_length = _positive_int(max_length, "max_length")
        self.beam_size = _positive_int(beam_size, "beam_size")
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
        self.candidate_limit = None if candidate_limit is None else _positive_int(
            candidate_limit, "candidate_limit")
        if isinstance(complexity_penalty, bool) or not isinstance(
                complexity_penalty, (int, float, np.floating, np.integer)):
            raise TypeError(f"complexity_penalty must be a number, got {complexity_penalty!r}")
        if not (np.isfinite(complexity_penalty) and complexity_penalty > 0):
            raise ValueError(f"complexity_penalty must be a finite number > 0, got {complexity_penalty}")
        self.penalty = float(complexity_penalty)

    def factor(self, length: int) -> float:
        """Complexity penalty of a formula of `length` leaves."""
        return self.penalty ** (length - 1)

    def as_dict(self) -> dict:
        return {"max_length": self.max_length, "beam_size": self.beam_size, "ops": list(self.ops),
                "metric": self.metric, "allow_repeats": self.allow_repeats,
                "candidate_limit": self.candidate_limit, "complexity_penalty": self.penalty}


def _positive_int(x, what: str) -> int:
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
        raise TypeError(f"{what} must be an integer >= 1, got {x!r}")
    if x < 1:
        raise ValueError(f"{what} must be >= 1, got {x}")
    return int(x)


def _as_concept_set(masks, names) -> ConceptSet:
    import os

    if isinstance(masks, ConceptSet):
        if names is not None and tuple(names) != masks.names:
            raise ValueError("names differ from the concept set's own names; pass names=None "
                             "with a ConceptSet")
        return masks
    if isinstance(masks, (str, os.PathLike)):
        from ..io import load_concepts

        cs = load_concepts(masks)
        if names is not None and tuple(names) != cs.names:
            raise ValueError(f"names differ from the names stored in {masks}; pass names=None")
        return cs
    if hasattr(masks, "detach") and hasattr(masks, "cpu"):
        masks = masks.detach().cpu().numpy()
    masks = np.asarray(masks)
    if masks.dtype != bool:
        raise TypeError(f"masks must be a ConceptSet, a concepts HDF5 path, or a bool array "
                        f"[N, K, H, W] / [N, K]; got an array of dtype {masks.dtype}")
    if masks.ndim not in (2, 4):
        raise ValueError(f"masks must be bool [N, K, H, W] or [N, K], got shape {masks.shape}")
    if masks.shape[1] == 0:
        raise ValueError("masks has zero concepts (K = 0)")
    if masks.shape[0] == 0:
        raise ValueError("masks has zero samples (N = 0)")
    return ConceptSet.from_dense(masks, names=check_names(names, masks.shape[1]))


def search_formulas(
    acts,
    masks,
    *,
    names: Optional[Sequence[str]] = None,
    max_length: int = 3,
    beam_size: int = 10,
    ops: Sequence[str] = ("or", "and", "and_not"),
    metric: str = "iou",
    allow_repeats: bool = False,
    candidate_limit: Optional[int] = None,
    complexity_penalty: float = 1.0,
    quantile: float = 0.005,
    threshold=None,
    units: Optional[Sequence[int]] = None,
    device: str = "auto",
    progress: bool = False,
    unit_batch_size: int = 64,
) -> SearchResult:
    """Explain units with logical formulas over concepts, by beam search.

    Args:
        acts: ``[N, U, h, w]`` or ``[N, U]``: float activations (NumPy array, torch tensor,
            h5py dataset or path to an activations HDF5 file), or bool unit masks on the
            concepts' grid.
        masks: a :class:`ConceptSet`, a path to a concepts HDF5 file, or bool
            ``[N, K, H, W]`` / ``[N, K]`` concept masks.
        names: K unique concept names for array masks (default ``"c0".."c{K-1}"``).
        max_length: longest formula, in leaves (>= 1).
        beam_size: formulas kept per step (>= 1).
        ops: operators among ``"or"``, ``"and"``, ``"and_not"``, ``"or_not"``.
        metric: ``"iou"``, ``"precision"`` or ``"recall"``.
        allow_repeats: also form candidates whose new concept already occurs in the formula,
            as the reference code does.
        candidate_limit: extend only with the K best concepts by single-concept score.
        complexity_penalty: scores are multiplied by ``penalty ** (length - 1)``.
        quantile: fraction of each unit's activations above its threshold, in (0, 1).
        threshold: explicit threshold, a scalar or one per unit of ``acts`` (overrides
            ``quantile``).
        units: indices of the units to explain (default: all), in the order results are wanted.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"`` (the GPU when one is usable). On the GPU
            the concept index is uploaded once and the counting and materialisation kernels
            run there; thresholds and unit masks are computed on the CPU. Results are
            identical on both.
        progress: show a progress bar over units.
        unit_batch_size: units searched together (bounds memory).

    Returns:
        A :class:`SearchResult`; ``result[i]`` explains the i-th requested unit.

    Examples:
        >>> import numpy as np, compexp_core as cx
        >>> rng = np.random.default_rng(0)
        >>> masks = rng.random((500, 4)) < 0.3                # 500 sentences, 4 words
        >>> unit = (masks[:, 0] | masks[:, 1]) & ~masks[:, 2]  # a unit firing on a formula
        >>> result = cx.search_formulas(unit[:, None], masks, names=["dog", "cat", "not", "red"])
        >>> str(result[0].formula), result[0].iou
        ('((dog OR cat) AND NOT "not")', 1.0)
    """
    params = _Params(max_length, beam_size, ops, metric, allow_repeats, candidate_limit,
                     complexity_penalty)
    check_quantile(quantile)
    device = resolve_device(device)
    concepts = _as_concept_set(masks, names)
    acts = as_activations(acts)
    check_activations(acts, concepts.n_samples, concepts.grid)
    n_units = acts.shape[1]
    ids = np.arange(n_units) if units is None else _unit_ids(units, n_units)
    unit_batch_size = _positive_int(unit_batch_size, "unit_batch_size")
    is_bool = np.dtype(acts.dtype) == bool

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=2 * ids.size if not is_bool and threshold is None else ids.size,
                   unit="unit", desc="compexp")
    stats = _Stats()
    t_start = time.perf_counter()
    try:
        uniq = np.unique(ids)
        thresholds = None
        if not is_bool:
            if threshold is None:
                thresholds = compute_thresholds(acts, quantile, uniq,
                                                progress=bar.update if bar else None)
            else:
                thresholds = _explicit_thresholds(threshold, n_units)[uniq]
        stats.seconds["thresholds"] = time.perf_counter() - t_start
        log.info("compexp: searching %d units on %s (%s kernels), %d concepts, %d cells",
                 ids.size, device, "cuda" if device == "cuda" else _core.best_simd(),
                 concepts.n_concepts, concepts.n_cells)
        if device == "cuda":
            t = time.perf_counter()
            concepts.device_index()     # the one upload of the concept index
            stats.seconds["index_upload"] = time.perf_counter() - t
        found: dict[int, Explanation] = {}
        for batch in unit_batches(uniq, acts, unit_batch_size):
            pos = np.searchsorted(uniq, batch)
            t = time.perf_counter()
            umasks = unit_masks(acts, batch, concepts.grid,
                                None if thresholds is None else thresholds[pos])
            stats.seconds["unit_masks"] += time.perf_counter() - t
            for e, t in zip(_search_batch(concepts, umasks, batch, params, stats, device), pos):
                found[e.unit] = e if thresholds is None else dataclasses.replace(
                    e, threshold=float(thresholds[t]))
            if bar is not None:
                bar.update(batch.size)
    finally:
        if bar is not None:
            bar.close()
    total = time.perf_counter() - t_start
    stats.seconds["driver"] = total - sum(v for k, v in stats.seconds.items() if k != "driver")
    stats.seconds["total"] = total
    result = SearchResult([found[int(u)] for u in ids],
                          params={**params.as_dict(), "quantile": quantile, "device": device,
                                  "names": list(concepts.names)})
    result.stats = stats.as_dict()
    return result


def _unit_ids(units, n_units: int) -> np.ndarray:
    ids = np.asarray(units)
    if ids.ndim != 1:
        raise ValueError(f"units must be a 1-D sequence of unit indices, got shape {ids.shape}")
    if ids.size == 0:
        raise ValueError("units is empty: name at least one unit")
    if ids.dtype == bool or not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"units must hold integer unit indices, got dtype {ids.dtype}")
    bad = ids[(ids < 0) | (ids >= n_units)]
    if bad.size:
        raise ValueError(f"unit index {int(bad[0])} out of range: acts has {n_units} units")
    return ids.astype(np.int64)


def _explicit_thresholds(threshold, n_units: int) -> np.ndarray:
    t = np.asarray(threshold, dtype=np.float64) if not isinstance(threshold, bool) else None
    if t is None or t.ndim > 1:
        raise ValueError(f"threshold must be a number or one number per unit, got {threshold!r}")
    if t.ndim == 1 and t.size != n_units:
        raise ValueError(f"threshold has {t.size} values but acts has {n_units} units")
    if np.isnan(t).any():
        raise ValueError("threshold contains NaN")
    return np.broadcast_to(t, (n_units,)).copy()


def formula_key(formula: Formula, concepts: ConceptSet) -> tuple:
    """The step key ``(first concept, (op code, concept), ...)`` of a left-deep formula, as
    the search builds them. Raises ValueError for other shapes or unknown concepts."""
    from .formula import And, Not, Or

    steps = []
    node = formula
    while isinstance(node, (And, Or)):
        right, negated = node.right, isinstance(node.right, Not)
        if negated:
            right = right.operand
        if not isinstance(right, Leaf):
            raise ValueError(f"{formula} is not left-deep (a search formula)")
        name = ("and_not" if negated else "and") if isinstance(node, And) else \
            ("or_not" if negated else "or")
        steps.append((_OP_CODE[name], concepts.index(right.name)))
        node = node.left
    if not isinstance(node, Leaf):
        raise ValueError(f"{formula} is not left-deep (a search formula)")
    return (concepts.index(node.name), *reversed(steps))


def materialize_formulas(concepts: ConceptSet, formulas: Sequence[Formula]):
    """Block-sparse masks of left-deep formulas (one per formula), built step by step with the
    materialisation kernel: a mask set ``(ptr, block, words)``."""
    keys = [formula_key(f, concepts) for f in formulas]
    n = len(keys)
    masks = concepts.materialize(empty_masks(0), np.zeros(n, np.int64), np.full(n, _core.OP_LEAF, np.int32),
                                 np.array([k[0] for k in keys], np.int32))
    for step in range(1, max((len(k) for k in keys), default=1)):
        # Formulas that are already complete are carried over with COPY.
        op = [k[step][0] if len(k) > step else _core.OP_COPY for k in keys]
        concept = [k[step][1] if len(k) > step else 0 for k in keys]
        masks = concepts.materialize(masks, np.arange(n), op, concept)
    return masks


def _key_to_formula(key: tuple, names: Sequence[str]) -> Formula:
    inverse = {code: name for name, code in _OP_CODE.items()}
    return Formula.from_steps(names[key[0]], [(inverse[op], names[c]) for op, c in key[1:]])


def _search_batch(cs: ConceptSet, umasks, unit_ids: np.ndarray, p: _Params,
                  stats: Optional[_Stats] = None, device: str = "cpu") -> list[Explanation]:
    """Beam search for one batch of units whose masks are `umasks`, counting on `device`
    (``"cpu"`` or ``"cuda"``; both give identical counts, hence identical results)."""
    stats = stats or _Stats()
    n = unit_ids.size
    K = cs.n_concepts
    P = cs.n_cells
    sizes = cs.sizes
    t = time.perf_counter()
    unit_size = _core.mask_popcounts(umasks)
    if device == "cuda":
        # On the GPU the unit masks are uploaded once per batch and the beam formulas stay
        # there between steps (DeviceMasks handles).
        umasks = cs.device_index().upload(umasks)
    prim = cs.primitive_counts(umasks, device=device)                    # [n, K] |U & C_j|
    stats.seconds["primitive_counts"] += time.perf_counter() - t
    prim_metric = metric_values(p.metric, prim, sizes[None, :], unit_size[:, None])

    beams: list[list[_Entry]] = []
    candidates: list[np.ndarray] = []
    primitives = []
    for k in range(n):
        positive = np.flatnonzero(prim_metric[k] > 0)
        ranked = positive[np.argsort(-prim_metric[k, positive], kind="stable")]
        beams.append([_Entry((int(j),), int(prim[k, j]), int(sizes[j]), float(prim_metric[k, j]),
                             float(prim_metric[k, j]) * p.factor(1)) for j in ranked[:p.beam_size]])
        primitives.append((int(ranked[0]), float(prim_metric[k, ranked[0]])) if ranked.size else None)
        candidates.append(np.arange(K) if p.candidate_limit is None else ranked[:p.candidate_limit])

    op_codes = np.array([_OP_CODE[o] for o in p.ops], np.int32)
    cand_pos = []
    for cands in candidates:
        pos = np.full(K, -1, np.int64)
        pos[cands] = np.arange(cands.size)
        cand_pos.append(pos)
    # `formulas` holds exactly the masks of the current beams, unit-major in beam order, so the
    # extension kernel reads it as is and its size never grows with the search's history.
    # The best of each beam after every step: the answer of a search stopped at that length.
    best_by_step: list[list] = [[b[0] if b else None] for b in beams]
    formulas = empty_masks(0)
    if p.max_length > 1:
        formulas = _next_formulas(cs, formulas, beams, [(e, -1, _core.OP_LEAF, e.key[0])
                                                        for beam in beams for e in beam], stats,
                                  device)

    for _step in range(1, p.max_length):
        unit_of = np.array([k for k in range(n) for _ in beams[k]], np.int64)
        if unit_of.size == 0:
            break
        t = time.perf_counter()
        f_all, g_all, work = cs.extension_counts(formulas, unit_of, umasks, device=device)
        stats.seconds["extension_counts"] += time.perf_counter() - t
        stats.extension_formula_blocks += work[0]   # counted by the kernel (on the GPU there)
        stats.extension_entries += work[1]
        stats.extension_full += work[2]
        born = []         # new beam members: (entry, parent row, op, concept)
        offset = 0
        for k in range(n):
            beam = beams[k]
            if not beam:
                continue
            new_beam, born_k = _extend(beam, candidates[k], cand_pos[k], f_all[offset:offset + len(beam)],
                                       g_all[offset:offset + len(beam)], int(unit_size[k]), prim[k],
                                       sizes, P, op_codes, p)
            offset += len(beam)
            beams[k] = new_beam
            born += born_k
        for k in range(n):
            best_by_step[k].append(beams[k][0] if beams[k] else None)
        if _step + 1 < p.max_length:
            formulas = _next_formulas(cs, formulas, beams, born, stats, device)

    out = []
    for k in range(n):
        steps = best_by_step[k]
        steps += steps[-1:] * (p.max_length - len(steps))   # the search stopped early: no beam
        beam = beams[k]
        prim_k = primitives[k]
        best = beam[0] if beam else None
        out.append(Explanation(
            unit=int(unit_ids[k]),
            formula=_key_to_formula(best.key, cs.names) if best else None,
            iou=best.metric if best else 0.0,
            score=best.score if best else 0.0,
            primitive=Leaf(cs.names[prim_k[0]]) if prim_k else None,
            primitive_iou=prim_k[1] if prim_k else 0.0,
            beam=tuple((_key_to_formula(e.key, cs.names), e.score) for e in beam),
            by_length=tuple((_key_to_formula(e.key, cs.names), e.metric) if e else (None, 0.0)
                            for e in best_by_step[k])))
    return out


def _extend(beam: list[_Entry], cands: np.ndarray, cand_pos: np.ndarray, f: np.ndarray, g: np.ndarray,
            unit_size: int, prim: np.ndarray, sizes: np.ndarray, n_cells: int, op_codes: np.ndarray,
            p: _Params):
    """One beam step for one unit. `cand_pos[j]` is concept j's position among the candidates
    (-1 if it is none). Returns the new beam and the entries born in this step as
    (entry, parent row, op, concept)."""
    B, C = len(beam), cands.size
    fc, gc = f[:, cands], g[:, cands]                                    # [B, C]
    inter_f = np.array([e.inter for e in beam], np.int64)[:, None]
    size_f = np.array([e.size for e in beam], np.int64)[:, None]
    csize, uc = sizes[cands][None, :], prim[cands][None, :]
    inter = np.empty((B, C, op_codes.size), np.int64)
    size = np.empty_like(inter)
    for o, code in enumerate(op_codes):                                  # the counting identity
        if code == _core.OP_AND:
            inter[:, :, o], size[:, :, o] = gc, fc
        elif code == _core.OP_AND_NOT:
            inter[:, :, o], size[:, :, o] = inter_f - gc, size_f - fc
        elif code == _core.OP_OR:
            inter[:, :, o], size[:, :, o] = inter_f + uc - gc, size_f + csize - fc
        else:  # OR NOT
            inter[:, :, o], size[:, :, o] = unit_size - uc + gc, n_cells - csize + fc
    metric = metric_values(p.metric, inter, size, unit_size)
    factor = np.array([p.factor(e.length + 1) for e in beam])[:, None, None]
    score = metric * factor

    valid = np.ones(metric.shape, bool)
    if not p.allow_repeats:
        for b, e in enumerate(beam):
            pos = cand_pos[list(e.concepts())]
            valid[b, pos[pos >= 0], :] = False
    # A surviving beam member regenerates the formulas it produced earlier: skip those texts.
    row_of_key = {e.key: b for b, e in enumerate(beam)}
    op_pos = {int(code): o for o, code in enumerate(op_codes)}
    for e in beam:
        parent = row_of_key.get(e.key[:-1]) if e.length > 1 else None
        if parent is not None:
            op, c = e.key[-1]
            if cand_pos[c] >= 0 and op in op_pos:
                valid[parent, cand_pos[c], op_pos[op]] = False

    flat = np.flatnonzero(valid.ravel())
    pool = np.concatenate([np.array([e.score for e in beam]), score.ravel()[flat]])
    new_beam, born = [], []
    for i in _top_stable(pool, p.beam_size):
        if i < B:
            new_beam.append(beam[i])
            continue
        b, c, o = np.unravel_index(flat[i - B], metric.shape)
        parent = beam[b]
        code, concept = int(op_codes[o]), int(cands[c])
        entry = _Entry(parent.key + ((code, concept),), int(inter[b, c, o]), int(size[b, c, o]),
                       float(metric[b, c, o]), float(score[b, c, o]))
        new_beam.append(entry)
        born.append((entry, parent.row, code, concept))
    return new_beam, born


def _next_formulas(cs: ConceptSet, formulas, beams: list, born: list, stats: _Stats,
                   device: str = "cpu"):
    """Masks of the new beams, unit-major in beam order, in one materialisation call: survivors
    are copied from their rows in `formulas`, the newly born are built from their parents' rows.
    Sets every beam entry's row to its position in the returned mask set."""
    parent = {id(e): (s, o, c) for e, s, o, c in born}
    src, op, concept = [], [], []
    for beam in beams:
        for e in beam:
            s_, o_, c_ = parent.get(id(e), (e.row, _core.OP_COPY, 0))
            src.append(max(s_, 0))      # a leaf's source is ignored
            op.append(o_)
            concept.append(c_)
    t = time.perf_counter()
    out = cs.materialize(formulas, src, op, concept, device=device, keep_on_device=True)
    stats.seconds["materialize"] += time.perf_counter() - t
    for i, e in enumerate(e for beam in beams for e in beam):
        e.row = i
    return out
