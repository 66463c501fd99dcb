"""The public search: :func:`search_formulas`.

Beam search for compositional explanations (Mu & Andreas, NeurIPS 2020). For each unit: score
every concept alone; keep the ``beam_size`` best with a positive score; then, ``max_length - 1``
times, extend every beam formula F with every candidate concept C and operator (OR, AND,
AND NOT, optionally OR NOT), and keep the ``beam_size`` best of the old beam followed by the new
candidates (stable ranking: ties keep the earlier entry). The exact semantics are those of
``DESIGN.md``; the beam lives in :mod:`compexp_core.engine.beam`, the data movement in
:mod:`compexp_core.engine.driver`, the kernels behind :mod:`compexp_core.engine.backends`.

This module only turns what users pass (paths, arrays, tensors, parameters) into engine
inputs, picks the backend, and wraps the explanations in a :class:`SearchResult`.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

from .engine.backends import get_backend
from .engine.beam import METRICS, OPERATORS, SearchParams, positive_int
from .engine.driver import run_search
from .engine.optimal import OptimalBudget
from .results import SearchResult
from .engine.units import check_activations, check_quantile
from .inputs import activations_input, concepts_input

__all__ = ["search_formulas", "OPERATORS", "METRICS", "METHODS", "EXECUTORS"]

METHODS = ("beam", "optimal")
#: Where the search runs: this process, or unit shards on a Ray cluster.
EXECUTORS = ("local", "ray")


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
    semantics: str = "default",
    min_firing: int = 0,
    quantile: float = 0.005,
    threshold=None,
    units: Optional[Sequence[int]] = None,
    device: str = "auto",
    progress: bool = False,
    unit_batch_size: int = 64,
    method: str = "beam",
    node_budget: Optional[int] = None,
    time_budget: Optional[float] = None,
    executor: str = "local",
    ray_address: Optional[str] = None,
    shard_size: Optional[int] = None,
    shard_dir=None,
    workers: Optional[int] = None,
) -> SearchResult:
    """Explain units with logical formulas over concepts, by beam search or, with
    ``method="optimal"``, by a branch and bound that proves its answer optimal.

    Args:
        acts: ``[N, U, h, w]`` or ``[N, U]``: float activations (NumPy array, torch tensor,
            h5py dataset or path to an activations HDF5 file), or bool unit masks on the
            concepts' grid.
        masks: a :class:`ConceptSet`, a path to a concepts HDF5 file, or bool
            ``[N, K, H, W]`` / ``[N, K]`` concept masks. Masks in GPU memory (torch CUDA
            tensors, CuPy: ``__cuda_array_interface__``; bool or uint8 0/1) are indexed on that
            GPU with ``device="cuda"`` (never copied to the host) and copied to the host with
            ``device="cpu"``.
        names: K unique concept names for array masks (default ``"c0".."c{K-1}"``).
        max_length: longest formula, in leaves (>= 1). A unit's search stops earlier, with
            the same result, once a step leaves its beam unchanged (``result.stats`` counts
            them in ``converged_units``; ``Explanation.by_length`` is then shorter).
        beam_size: formulas kept per step (>= 1).
        ops: operators among ``"or"``, ``"and"``, ``"and_not"``, ``"or_not"``.
        metric: ``"iou"``, ``"precision"`` or ``"recall"``.
        allow_repeats: also form candidates whose new concept already occurs in the formula,
            as the reference code does.
        candidate_limit: extend only with the K best concepts by single-concept score.
        complexity_penalty: scores are multiplied by ``penalty ** (length - 1)``: a finite
            number > 0 (below 1 favours shorter formulas) whose power ``max_length - 1``
            neither overflows nor underflows to 0 in float64 (else ValueError).
        semantics: ``"default"`` (DESIGN.md), or ``"reference-vision"`` / ``"reference-nli"``
            to reproduce the reference code's vision / NLI search bit for bit (its duplicate
            beam copies, IoU epsilon, NOT counted in the penalised length, candidate rules;
            see :class:`compexp_core.engine.beam.SearchParams`). The reference modes imply
            ``allow_repeats`` and take ``metric="iou"`` and OR / AND / AND NOT only.
        min_firing: skip units whose mask has fewer cells than this (samples, with one cell
            per sample; the reference NLI code uses 500 of 10,000 pairs): a skipped unit has
            no formula, and its ``Explanation.skipped`` says why.
        quantile: fraction of each unit's activations above its threshold, in (0, 1).
        threshold: explicit threshold, a scalar or one per unit of ``acts`` (overrides
            ``quantile``).
        units: indices of the units to explain (default: all), in the order results are wanted.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (the CPU until the CUDA
            path has been verified on a GPU). On a GPU the concept index is uploaded once (or
            built there from GPU masks) and the counting and materialisation kernels run there,
            as do thresholds and unit masks of float activations already on the GPU. Results
            are identical on every device; ``result.params["device"]`` says which ran.
        progress: show a progress bar over units.
        unit_batch_size: units searched together (bounds memory).
        method: ``"beam"`` (the paper's search), or ``"optimal"``: for each unit, a formula of
            maximum score over every formula of the beam's grammar (left-deep, at most
            ``max_length`` leaves, the same ``ops``, ``allow_repeats``, ``metric`` and
            ``complexity_penalty``, every concept: ``candidate_limit`` only limits the beam
            search that provides the first incumbent), found by branch and bound on exact
            counts (:mod:`compexp_core.engine.optimal`, ``docs/OPTIMAL.md``). Ties: the beam's
            formula if it is optimal, else the first optimal formula in canonical order (fewer
            leaves, then concept indices and operators OR, AND, AND NOT, OR NOT left to
            right). ``Explanation.optimality`` records the upper bound and the work done;
            ``Explanation.beam`` keeps the beam search's final beam. Only with
            ``semantics="default"``.
        node_budget: with ``method="optimal"``, most prefixes expanded per unit (None: no
            limit). When a budget runs out, the unit gets the best formula found and a proven
            upper bound (``Explanation.gap`` > 0 unless the incumbent was already optimal).
        time_budget: with ``method="optimal"``, most seconds of branch and bound per unit.
        executor: ``"local"`` (this process), or ``"ray"``: units searched in shards by
            workers of a Ray cluster (``pip install "compexp-core[ray]"``), one per node by
            default, merged into the same result, bit for bit (only ``result.stats`` differs;
            see :mod:`compexp_core.distributed`). Activations given as a file must be readable
            at the same path on every node; a units-major file
            (:func:`compexp_core.io.rechunk_activations`) lets each shard read only its units.
        ray_address: with ``executor="ray"``, the cluster (``"auto"``, ``"HOST:PORT"``,
            ``"ray://HOST:PORT"``); None: the one this process is connected to, else a new
            local cluster.
        shard_size: with ``executor="ray"``, units per shard (default 64).
        shard_dir: with ``executor="ray"``, a directory where each finished shard is saved;
            a rerun with the same parameters loads them instead of searching again (a shard
            of another search there is a ValueError naming the difference).
        workers: with ``executor="ray"``, the number of workers (default: one per node).

    Returns:
        A :class:`SearchResult`; ``result[i]`` explains the i-th requested unit. When ``acts``
        is the path of an activations file, the result records the file's ``model`` and
        ``layer`` (``SearchResult.model``, ``.layer``) and its path
        (``params["acts_path"]``); likewise ``params["concepts_path"]`` for a concepts file.

    Examples:
        >>> import numpy as np, compexp_core as cx
        >>> rng = np.random.default_rng(0)
        >>> masks = rng.random((500, 4)) < 0.3                # 500 sentences, 4 words
        >>> unit = (masks[:, 0] | masks[:, 1]) & ~masks[:, 2]  # a unit firing on a formula
        >>> result = cx.search_formulas(unit[:, None], masks, names=["dog", "cat", "not", "red"])
        >>> str(result[0].formula), result[0].iou
        ('((dog OR cat) AND NOT "not")', 1.0)
        >>> best = cx.search_formulas(unit[:, None], masks, names=["dog", "cat", "not", "red"],
        ...                           method="optimal")
        >>> best[0].iou, best[0].optimal, best[0].optimality.upper_bound
        (1.0, True, 1.0)
    """
    params = SearchParams(max_length, beam_size, ops, metric, allow_repeats, candidate_limit,
                          complexity_penalty, semantics, min_firing)
    budget = _optimal_budget(method, semantics, node_budget, time_budget)
    sharded = _executor(executor, ray_address, shard_size, shard_dir, workers)
    check_quantile(quantile)
    backend = get_backend(device)
    # GPU masks are indexed by the backend: on its GPU for a CUDA search, on the host otherwise
    # (and always on the host for Ray workers, which receive the set through the object store).
    concepts = concepts_input(masks, names, backend=None if sharded else backend)
    acts_source = acts
    # On a CUDA backend, float activations already on the GPU stay there (no host copy).
    acts = activations_input(acts, on_device=backend.name.startswith("cuda") and not sharded)
    check_activations(acts, concepts.n_samples, concepts.grid)
    n_units = acts.shape[1]
    ids = np.arange(n_units) if units is None else _unit_ids(units, n_units)
    unit_batch_size = positive_int(unit_batch_size, "unit_batch_size")
    thresholds = None if threshold is None else _explicit_thresholds(threshold, n_units)
    result_params = {**params.as_dict(), "quantile": quantile, "device": backend.name,
                     "names": list(concepts.names), "method": method,
                     **({} if budget is None else budget.as_dict())}
    if sharded:
        from .distributed import run_sharded

        options = {"quantile": quantile, "thresholds": thresholds,
                   "unit_batch_size": unit_batch_size, "optimal": budget}
        result = run_sharded(acts, concepts, {"params": params, "options": options},
                             result_params, units=ids, device=device, ray_address=ray_address,
                             shard_size=shard_size, shard_dir=shard_dir, workers=workers,
                             progress=progress)
    else:
        result = _search_here(acts, concepts, params, backend, ids, quantile, thresholds,
                              unit_batch_size, progress, threshold is None, budget,
                              result_params)
    record_input_files(result, acts_source, masks)
    return result


def _search_here(acts, concepts, params, backend, ids, quantile, thresholds, unit_batch_size,
                 progress, by_quantile, budget, result_params) -> SearchResult:
    """The search in this process (``executor="local"``)."""
    bar = None
    if progress:
        from tqdm.auto import tqdm

        two_passes = np.dtype(acts.dtype) != bool and by_quantile
        bar = tqdm(total=(2 if two_passes else 1) * ids.size, unit="unit", desc="compexp")
    try:
        explanations, stats = run_search(acts, concepts, params, backend, units=ids,
                                         quantile=quantile, thresholds=thresholds,
                                         unit_batch_size=unit_batch_size,
                                         progress=bar.update if bar is not None else None,
                                         optimal=budget)
    finally:
        if bar is not None:
            bar.close()
    result = SearchResult(explanations, params=result_params)
    result.stats = stats.as_dict()
    return result


def record_input_files(result: SearchResult, acts, masks) -> None:
    """Where the inputs came from, when they were files: their paths (``acts_path``,
    ``concepts_path``: the defaults of reports and exports) and the activations file's
    ``model`` and ``layer`` (when it records them)."""
    from .io import read_activations_metadata

    if isinstance(acts, (str, os.PathLike)):
        meta = read_activations_metadata(acts)
        result.model, result.layer = meta["model"], meta["layer"]
        result.params["acts_path"] = os.path.abspath(acts)
    if isinstance(masks, (str, os.PathLike)):
        result.params["concepts_path"] = os.path.abspath(masks)


def _optimal_budget(method, semantics: str, node_budget, time_budget) -> Optional[OptimalBudget]:
    """The optimal search's budget, None for a beam search; errors for inconsistent options."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {list(METHODS)}")
    if method == "beam":
        if node_budget is not None or time_budget is not None:
            raise ValueError("node_budget and time_budget limit the optimal search: pass "
                             "method='optimal' or leave them None")
        return None
    if semantics != "default":
        raise ValueError(f"method='optimal' searches the default semantics' grammar; "
                         f"semantics={semantics!r} reproduces the reference beam search only "
                         f"(use semantics='default')")
    return OptimalBudget(node_budget, time_budget)


def _executor(executor, ray_address, shard_size, shard_dir, workers) -> bool:
    """True for a sharded (Ray) search; errors for an unknown executor and for Ray options
    given to a local search. The options themselves are checked by
    :func:`compexp_core.distributed.run_sharded`."""
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; choose from {list(EXECUTORS)}")
    if executor == "local":
        given = [n for n, v in (("ray_address", ray_address), ("shard_size", shard_size),
                                ("shard_dir", shard_dir), ("workers", workers)) if v is not None]
        if given:
            raise ValueError(f"{', '.join(given)} only apply to executor='ray'")
        return False
    from ._optional import require

    require("ray", 'search_formulas(..., executor="ray")')
    return True


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
