"""The search driver: activations and concepts in, one :class:`Explanation` per unit out.

It moves data, not bits: units are thresholded and batched (bounding memory), each batch's
unit masks go to the backend once, the backend counts (primitive counts, then the fused
extension counts of every beam formula at each step) and materialises the masks of the
formulas that enter the beams, and the pure beam module (:mod:`.beam`) turns the counts into
beams. Only counts come back from the backend at each step, never masks. Wall time per phase
and the extension kernel's work are recorded in :class:`SearchStats`.

The public entry point, which also accepts file paths, is
:func:`compexp_core.search_formulas`.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Callable, Optional, Sequence

import numpy as np

from .backends import Backend, ExtensionWork, get_backend
from .beam import OP_COPY, OP_LEAF, Birth, SearchParams, UnitBeam, materialization_plan
from .concepts import ConceptSet
from .formula import Formula, formula_key, key_formula
from .masks import BLOCK_WORDS, MaskSet
from .optimal import Cooccurrence, OptimalBudget, search_unit_optimal
from .results import Explanation
from .units import check_activations, check_quantile, unit_batches

__all__ = ["run_search", "materialize_formulas", "SearchStats"]

log = logging.getLogger("compexp_core")


class SearchStats:
    """Wall time per phase and the work done by the extension kernel, for profiling."""

    PHASES = ("thresholds", "unit_masks", "index_upload", "primitive_counts", "extension_counts",
              "materialize", "optimal", "driver")

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(self.PHASES, 0.0)
        self.work = ExtensionWork()
        self.steps = 1                  # lengths searched, at most max_length
        self.converged_units = 0        # units whose beam stopped changing before max_length
        self.optimal: Optional[dict] = None   # totals of the optimal search (method="optimal")

    def add_work(self, w: ExtensionWork) -> None:
        self.work = ExtensionWork(self.work.formula_blocks + w.formula_blocks,
                                  self.work.partial_entries + w.partial_entries,
                                  self.work.full_entries + w.full_entries)

    def as_dict(self) -> dict:
        w = self.work
        return {"seconds": dict(self.seconds), "steps": self.steps,
                "converged_units": self.converged_units, "extension_entries": w.partial_entries,
                "extension_full": w.full_entries, "extension_formula_blocks": w.formula_blocks,
                "extension_bytes": w.partial_entries * (8 * BLOCK_WORDS + 4),
                **({} if self.optimal is None else {"optimal": dict(self.optimal)})}

    def add_optimal(self, e: Explanation) -> None:
        """Add one unit's optimal-search record to the totals."""
        if self.optimal is None:
            self.optimal = {"units": 0, "proven_optimal": 0, "beam_suboptimal": 0,
                            "nodes_expanded": 0, "nodes_pruned": 0, "counts_computed": 0}
        o, r = self.optimal, e.optimality
        o["units"] += 1
        o["proven_optimal"] += bool(e.optimal)
        o["beam_suboptimal"] += bool(e.beam_suboptimal)
        o["nodes_expanded"] += r.nodes_expanded
        o["nodes_pruned"] += r.nodes_pruned
        o["counts_computed"] += r.counts_computed


class _Timer:
    """``with timer("phase"):`` adds the block's wall time to that phase."""

    def __init__(self, stats: SearchStats) -> None:
        self.stats = stats

    def __call__(self, phase: str):
        self.phase = phase
        return self

    def __enter__(self):
        self.t0 = time.perf_counter()

    def __exit__(self, *exc):
        self.stats.seconds[self.phase] += time.perf_counter() - self.t0


def run_search(acts, concepts: ConceptSet, params: SearchParams, backend: Backend, *,
               units: np.ndarray, quantile: float = 0.005,
               thresholds: Optional[np.ndarray] = None, unit_batch_size: int = 64,
               progress: Optional[Callable[[int], None]] = None,
               optimal: Optional[OptimalBudget] = None
               ) -> tuple[list[Explanation], SearchStats]:
    """Search every unit of ``units`` (indices into ``acts``, in the order results are wanted).

    Args:
        acts: ``[N, U, h, w]`` / ``[N, U]`` activations or bool unit masks (an array or h5py
            dataset; see :func:`.units.as_activations`), already matched to ``concepts``.
        concepts: the concept set.
        params: validated search parameters.
        backend: the engine that counts (:func:`.backends.get_backend`).
        units: int64 unit indices.
        quantile: fraction of each unit's activations above its threshold.
        thresholds: explicit float64 thresholds, one per unit of ``acts`` (overrides quantile).
        unit_batch_size: units searched together (bounds memory).
        progress: called with a number of units whenever that many more are done (thresholds
            count once, searches once).
        optimal: when given, each unit's beam result seeds a branch and bound
            (:mod:`.optimal`) under this per-unit budget, and the explanation is its answer.

    Returns:
        ``(explanations, stats)``: one :class:`Explanation` per entry of ``units``.
    """
    check_quantile(quantile)
    check_activations(acts, concepts.n_samples, concepts.grid)
    stats = SearchStats()
    timer = _Timer(stats)
    t_start = time.perf_counter()
    uniq = np.unique(units)
    log.info("compexp: searching %d units on %r, %d concepts, %d cells", units.size, backend,
             concepts.n_concepts, concepts.n_cells)
    with timer("index_upload"):
        index = backend.prepare(concepts)
    unit_thresholds = None
    if np.dtype(acts.dtype) != bool:
        with timer("thresholds"):
            # On the backend: activations already on a GPU are thresholded there.
            unit_thresholds = backend.thresholds(index, acts, quantile, uniq, progress=progress) \
                if thresholds is None else np.asarray(thresholds, np.float64)[uniq]
    found: dict[int, Explanation] = {}
    # Concept pair counts, shared by every unit's optimal search (counted when first needed).
    cooccurrence = Cooccurrence(concepts.n_concepts) if optimal is not None else None
    for batch in unit_batches(uniq, acts, unit_batch_size):
        pos = np.searchsorted(uniq, batch)
        batch_thresholds = None if unit_thresholds is None else unit_thresholds[pos]
        with timer("unit_masks"):
            umasks, unit_size = backend.unit_masks(index, acts, batch, concepts.grid,
                                                   batch_thresholds)
        beams = _search_batch(concepts, index, umasks, unit_size, params, backend, timer, stats)
        stats.steps = max(stats.steps, max(len(b.best_by_step) for b in beams))
        stats.converged_units += sum(len(b.best_by_step) < params.max_length for b in beams)
        for k, (u, beam) in enumerate(zip(batch, beams)):
            found[int(u)] = beam.explanation(
                int(u), concepts.names, None if batch_thresholds is None else float(batch_thresholds[k]))
            if optimal is not None and not beam.skipped:
                with timer("optimal"):
                    found[int(u)] = _optimal_explanation(found[int(u)], beam, backend, index,
                                                         umasks, k, concepts, params, optimal,
                                                         cooccurrence)
                stats.add_optimal(found[int(u)])
        if progress is not None:
            progress(batch.size)
    total = time.perf_counter() - t_start
    stats.seconds["driver"] = total - sum(v for k, v in stats.seconds.items() if k != "driver")
    stats.seconds["total"] = total
    return [found[int(u)] for u in units], stats


def _optimal_explanation(e: Explanation, beam: UnitBeam, backend: Backend, index, umasks,
                         row: int, cs: ConceptSet, p: SearchParams,
                         budget: OptimalBudget, cooccurrence=None) -> Explanation:
    """The beam's explanation ``e`` with the branch and bound's formula and record (the beam's
    final beam stays in ``beam``)."""
    res = search_unit_optimal(backend, index, umasks, row, beam.prim, beam.unit_size, cs.sizes,
                              cs.n_cells, p, beam.best, budget, cooccurrence)
    return dataclasses.replace(
        e, formula=None if res.key is None else key_formula(res.key, cs.names), iou=res.metric,
        score=res.score, by_length=(), optimality=res.optimality)


def _search_batch(cs: ConceptSet, index, umasks, unit_size: np.ndarray, p: SearchParams,
                  backend: Backend, timer: _Timer, stats: SearchStats) -> list[UnitBeam]:
    """Beam search for one batch of units whose masks (on the backend) are ``umasks``."""
    with timer("primitive_counts"):
        prim = backend.primitive_counts(index, umasks)                  # [n, K] |U & C_j|
    beams = [UnitBeam(prim[k], int(unit_size[k]), cs.sizes, cs.n_cells, p)
             for k in range(prim.shape[0])]
    if p.max_length == 1:
        return beams
    # `formulas` holds exactly the masks of the beams still searched (those not converged),
    # unit-major in beam order, so the extension kernel reads it as is and its size never
    # grows with the search's history. A batch stops as soon as every beam has converged.
    active = [(k, b) for k, b in enumerate(beams) if not b.converged]
    if not active:
        return beams
    born = [Birth(e, -1, OP_LEAF, e.key[0]) for _, b in active for e in b.beam]
    formulas = _materialize(backend, index, MaskSet.empty(0), [b for _, b in active], born, timer)
    for step in range(1, p.max_length):
        unit_of = np.array([k for k, b in active for _ in b.beam], np.int64)
        with timer("extension_counts"):
            f_all, g_all, work = backend.extension_counts(index, formulas, unit_of, umasks)
        stats.add_work(work)
        born, offset = [], 0
        for _, b in active:
            n = len(b.beam)
            born += b.extend(f_all[offset:offset + n], g_all[offset:offset + n])
            offset += n
        active = [(k, b) for k, b in active if not b.converged]
        if not active or step + 1 == p.max_length:
            break
        formulas = _materialize(backend, index, formulas, [b for _, b in active], born, timer)
    return beams


def _materialize(backend: Backend, index, formulas, beams: Sequence[UnitBeam],
                 born: Sequence[Birth], timer: _Timer):
    src, op, concept = materialization_plan(beams, born)
    with timer("materialize"):
        return backend.materialize(index, formulas, src, op, concept)


def materialize_formulas(concepts: ConceptSet, formulas: Sequence[Formula],
                         backend: Optional[Backend] = None) -> MaskSet:
    """Block-sparse masks of left-deep formulas (one per formula), built step by step with the
    materialisation kernel, as a host :class:`MaskSet`.

    Raises:
        ValueError: a formula that is not left-deep, or names a concept the set lacks.
    """
    backend = backend or get_backend("cpu")
    keys = [formula_key(f, concepts.index) for f in formulas]
    n = len(keys)
    index = backend.prepare(concepts)
    masks = backend.materialize(index, MaskSet.empty(0), np.zeros(n, np.int64),
                                np.full(n, OP_LEAF, np.int32), np.array([k[0] for k in keys], np.int32))
    for step in range(1, max((len(k) for k in keys), default=1)):
        # Formulas that are already complete are carried over with COPY.
        op = [k[step][0] if len(k) > step else OP_COPY for k in keys]
        concept = [k[step][1] if len(k) > step else 0 for k in keys]
        masks = backend.materialize(index, masks, np.arange(n), op, concept)
    return backend.to_host(index, masks)
