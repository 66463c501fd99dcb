"""The search sharded by unit over a Ray cluster: ``search_formulas(..., executor="ray")``.

Units are independent given the concept index, so a layer is split into shards of consecutive
units, each searched by the same engine path as a single-process search
(:func:`compexp_core.engine.driver.run_search`), and the shards' explanations are merged into
one :class:`SearchResult` equal, bit for bit, to the single-process one. Thresholds are per
unit (the quantile of that unit's own activations), so sharding cannot change them.

Design:

* **The concept index travels once per node.** The driver puts the :class:`ConceptSet` into
  Ray's object store once (it pickles through its arrays); each worker receives it from its
  node's store and builds the compiled index once, when it starts.
* **Workers are actors**, by default one per node, reserving that node's CPUs (the engine's
  thread pool then uses them: ``COMPEXP_NUM_THREADS`` is set to the worker's share unless
  the cluster's environment sets it). An actor
  rather than stateless tasks: the index is unpickled and its concept-major view built once
  per worker, not once per shard. The driver keeps each worker fed with two shards (one
  running, one queued), collects them with ``ray.wait`` and advances one progress bar.
* **Activations**: a file (a path or an open HDF5 dataset) is opened by each worker, so it
  must be visible at the same path on every node (a shared file system); a shard reads
  ``acts[:, first:last + 1]`` only. In the ``"units"`` chunk layout
  (:func:`compexp_core.io.activations.rechunk_activations`) that reads just the shard's
  chunks; a sample-major file works too but every shard then reads the whole file (a warning
  says so). Arrays in memory are sent shard by shard (the shard's columns only).
* **Failures**: workers are restarted by Ray when their process dies (``max_restarts``) and
  the shard they held is resubmitted (``max_task_retries``); a restarted worker fetches the
  index from the object store again. A shard is a pure function of its inputs, so a retried
  shard gives the same explanations.
* **Resume**: with ``shard_dir``, every finished shard is saved there
  (``shard-00003.h5``, a results file written atomically) with what defines it (the search
  parameters, the shard's units, the shapes of the inputs); a later run with the same
  parameters loads those shards instead of searching them again, and refuses a shard written
  by a different search, naming the difference.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from typing import Optional

import numpy as np

from .engine.concepts import ConceptSet
from .engine.driver import run_search
from .engine.beam import positive_int
from .results import SearchResult

__all__ = ["run_sharded", "shard_plan", "DEFAULT_SHARD_SIZE"]

log = logging.getLogger("compexp_core")

#: Units per shard when none is given.
DEFAULT_SHARD_SIZE = 64
# Shards queued per worker beyond the one running: hides the driver's round trip.
_QUEUED_PER_WORKER = 1
# A test hook: a worker that finds the file <dir>/crash-shard-<i> removes it and kills its own
# process while searching shard i (the killed-worker test). Users never set this variable.
_CRASH_DIR_ENV = "COMPEXP_RAY_TEST_CRASH_DIR"
# How long to wait for a TCP connection to a cluster address before calling it unreachable.
_CONNECT_TIMEOUT_S = 5.0


def shard_plan(units: np.ndarray, shard_size: int) -> list[np.ndarray]:
    """The shards of a search: the sorted, distinct requested units cut into runs of
    ``shard_size`` (the last one shorter).

    Examples:
        >>> [s.tolist() for s in shard_plan(np.array([5, 1, 2, 2, 9]), 2)]
        [[1, 2], [5, 9]]
    """
    uniq = np.unique(units)
    return [uniq[i:i + shard_size] for i in range(0, uniq.size, shard_size)]


class _ShardWorker:
    """One worker (a Ray actor): holds the concept set and searches shards."""

    def __init__(self, concepts: ConceptSet, device: str, threads: int) -> None:
        from .engine.backends import get_backend

        # The engine's threads: this worker's share of its node (the kernels read the variable
        # at every call); a value the user set for the cluster is kept.
        os.environ.setdefault("COMPEXP_NUM_THREADS", str(threads))
        self.concepts = concepts            # resolved from the object store by Ray
        self.backend = get_backend(device)

    def search(self, index: int, units: np.ndarray, kind: str, value, search: dict):
        """Explanations and statistics of shard ``index`` (``units``); activations ``value``:
        ``(path, dataset name)`` for ``kind="file"``, else the shard's columns (an array,
        given to the call as an object reference so that Ray resolves it)."""
        _maybe_crash(index)
        if kind == "file":
            from .io.activations import open_activations

            path, name = value
            acts = open_activations(path) if name == "/acts" else _open_dataset(path, name)
            ids = units
        options = search["options"]
        if kind != "file":                  # the shard's own columns, units renumbered
            acts, ids = value, np.arange(units.size, dtype=np.int64)
            if options["thresholds"] is not None:
                options = {**options, "thresholds": options["thresholds"][units]}
        try:
            explanations, stats = run_search(acts, self.concepts, search["params"],
                                             self.backend, units=ids, **options)
        finally:
            if kind == "file":
                acts.file.close()
        if kind != "file":
            import dataclasses

            explanations = [dataclasses.replace(e, unit=int(u))
                            for e, u in zip(explanations, units)]
        return explanations, stats.as_dict()


def _open_dataset(path: str, name: str):
    import h5py

    return h5py.File(path, "r")[name]


def _maybe_crash(index: int) -> None:
    d = os.environ.get(_CRASH_DIR_ENV)
    if not d:
        return
    try:
        os.remove(os.path.join(d, f"crash-shard-{index}"))
    except FileNotFoundError:
        return
    os._exit(1)


def run_sharded(acts, concepts: ConceptSet, search: dict, result_params: dict, *,
                units: np.ndarray, device: str, ray_address: Optional[str] = None,
                shard_size: Optional[int] = None, shard_dir=None, workers: Optional[int] = None,
                progress: bool = False) -> SearchResult:
    """Search ``units`` shard by shard on a Ray cluster and merge the shards.

    Called by :func:`compexp_core.search_formulas` with ``executor="ray"``, which has already
    validated the parameters and turned the inputs into engine inputs.

    Args:
        acts: validated activations (a NumPy array or an h5py dataset of a file).
        concepts: the host concept set.
        search: ``{"params": SearchParams, "options": dict}``: ``run_search``'s parameters
            and keyword options (quantile, thresholds, unit_batch_size, optimal).
        result_params: the ``params`` of the result (those of a single-process search).
        units: int64 unit indices in the order results are wanted.
        device: the device each worker searches on.
        ray_address: the cluster to connect to (``ray.init(address=...)``): ``"auto"``,
            ``"HOST:PORT"``, ``"ray://HOST:PORT"``; None: the cluster this process is already
            connected to, else a new local one (shut down again at the end).
        shard_size: units per shard (default :data:`DEFAULT_SHARD_SIZE`).
        shard_dir: a directory where finished shards are saved and from which a rerun resumes.
        workers: number of workers (default: one per node with CPUs).
        progress: one progress bar over units, advanced as shards finish.

    Returns:
        The merged :class:`SearchResult`; its ``stats`` sum the shards' phase times and kernel
        work and add ``executor``, ``shards``, ``workers``, ``shards_resumed``,
        ``shard_seconds`` (each shard's wall time on its worker) and ``wall_seconds``.

    Raises:
        ImportError: Ray is not installed (``pip install "compexp-core[ray]"``).
        ConnectionError: nothing answers at ``ray_address``.
        ValueError: a bad ``shard_size`` / ``workers``; a ``shard_dir`` shard written by another
            search (naming the difference).
        RuntimeError: a shard failed even after its retries (naming the shard).
    """
    from ._optional import require

    ray = require("ray", 'executor="ray"')
    shard_size = positive_int(DEFAULT_SHARD_SIZE if shard_size is None else shard_size,
                              "shard_size")
    if workers is not None:
        workers = positive_int(workers, "workers")
    shards = shard_plan(units, shard_size)
    acts_source = _acts_source(acts)
    keys = [_shard_key(result_params, search, acts, concepts, s) for s in shards]
    done = _load_shards(shard_dir, keys) if shard_dir is not None else {}
    todo = [i for i in range(len(shards)) if i not in done]
    started_here = _connect(ray, ray_address) if todo else False
    t0 = time.perf_counter()
    bar, pool = None, []
    try:
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=int(sum(s.size for s in shards)), unit="unit", desc="compexp ray")
            bar.update(int(sum(shards[i].size for i in done)))
        if acts_source[0] == "file" and todo and _layout(acts) == "samples" and len(shards) > 1:
            log.warning("compexp: %s is chunked by samples: every shard reads the whole file; "
                        "compexp_core.io.rechunk_activations writes a units-major copy that "
                        "each shard reads only its part of", acts_source[1][0])
        # The concept set's object reference lives as long as the workers: a restarted worker
        # receives the set from it again.
        pool, concepts_ref = _start_workers(ray, concepts, device, workers) if todo else ([], None)
        shard_stats = _run_shards(ray, pool, shards, todo, acts, acts_source, search,
                                  done, keys, shard_dir, bar)
    finally:
        if bar is not None:
            bar.close()
        for worker in pool:                 # free the cluster's CPUs now, not at garbage collection
            ray.kill(worker, no_restart=True)
        if started_here:
            ray.shutdown()
    found = {}
    for i in range(len(shards)):
        for e in done[i][0]:
            found[e.unit] = e
    result = SearchResult([found[int(u)] for u in units], params=result_params)
    result.stats = _merged_stats([done[i][1] for i in range(len(shards))], shard_stats,
                                 n_workers=len(pool), n_resumed=len(shards) - len(todo),
                                 wall=time.perf_counter() - t0)
    return result


def _acts_source(acts) -> tuple:
    """How workers get activations: ("file", (path, dataset name)) for an HDF5 dataset,
    ("array", None) for an array (sent shard by shard)."""
    if type(acts).__module__.startswith("h5py"):
        return "file", (os.path.abspath(acts.file.filename), acts.name)
    return "array", None


def _layout(acts) -> str:
    from .io.activations import activations_layout

    return activations_layout(acts)


def _connect(ray, address: Optional[str]) -> bool:
    """Connect to the cluster; True when this call started it (then it is shut down after)."""
    if ray.is_initialized():
        if address is not None:
            raise ValueError(f"this process is already connected to a Ray cluster; pass "
                             f"ray_address=None to use it (or ray.shutdown() first), not "
                             f"{address!r}")
        return False
    if address is not None:
        _check_reachable(address)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    except ConnectionError as e:
        raise ConnectionError(f"cannot connect to the Ray cluster at {address!r}: {e}") from e
    return True


def _check_reachable(address: str) -> None:
    """Fail fast, naming the address, when nothing listens there (``ray.init`` would retry
    for minutes)."""
    if not isinstance(address, str) or not address:
        raise ValueError(f"ray_address must be 'auto', 'HOST:PORT' or 'ray://HOST:PORT', got "
                         f"{address!r}")
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"ray_address must be 'auto', 'HOST:PORT' or 'ray://HOST:PORT', got "
                         f"{address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=_CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise ConnectionError(f"cannot reach the Ray cluster at {address!r}: {e}") from None


def _start_workers(ray, concepts: ConceptSet, device: str, workers: Optional[int]) -> tuple:
    """One actor per node with CPUs (or ``workers`` actors spread over the nodes), each
    reserving its share of its node's CPUs, all given the one object-store copy of the
    concept set. Returns the actors and that copy's reference."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU", 0) >= 1]
    if not nodes:
        raise RuntimeError("the Ray cluster has no live node with CPUs")
    n_workers = workers or len(nodes)
    placed = [nodes[i % len(nodes)] for i in range(n_workers)]
    per_node = {n["NodeID"]: sum(p["NodeID"] == n["NodeID"] for p in placed) for n in nodes}
    ref = ray.put(concepts)
    actor = ray.remote(_ShardWorker)
    pool = []
    for node in placed:
        cpus = max(1, int(node["Resources"]["CPU"]) // per_node[node["NodeID"]])
        pool.append(actor.options(
            num_cpus=cpus, max_restarts=3, max_task_retries=3,
            # soft: a worker whose node died is restarted elsewhere
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=True),
        ).remote(ref, device, cpus))
    return pool, ref


def _run_shards(ray, pool: list, shards: list, todo: list, acts, acts_source: tuple,
                search: dict, done: dict, keys: list, shard_dir, bar) -> dict:
    """Search shards ``todo`` on the workers of ``pool``; fills ``done`` with
    ``(explanations, stats)`` per shard and saves each to ``shard_dir``. Returns each shard's
    wall time on its worker."""
    queue = list(todo)
    running = {}                                 # ObjectRef -> (shard index, worker, t0)
    seconds = {}

    def submit(worker) -> None:
        i = queue.pop(0)
        value = acts_source[1] if acts_source[0] == "file" else \
            ray.put(np.ascontiguousarray(acts[:, shards[i]]))
        ref = worker.search.remote(i, shards[i], acts_source[0], value, search)
        running[ref] = (i, worker, time.perf_counter())

    for worker in pool:
        for _ in range(1 + _QUEUED_PER_WORKER):
            if queue:
                submit(worker)
    while running:
        ready, _ = ray.wait(list(running), num_returns=1)
        i, worker, t0 = running.pop(ready[0])
        try:
            explanations, stats = ray.get(ready[0])
        except Exception as e:                  # noqa: BLE001 (Ray wraps every failure)
            raise RuntimeError(f"shard {i} (units {int(shards[i][0])}..{int(shards[i][-1])}) "
                               f"failed after its retries: {e}") from e
        seconds[i] = time.perf_counter() - t0
        done[i] = (explanations, stats)
        if shard_dir is not None:
            _save_shard(shard_dir, i, explanations, keys[i])
        if bar is not None:
            bar.update(int(shards[i].size))
        if queue:
            submit(worker)
    return seconds


# ------------------------------------------------------------------------------- resume

def _digest(a: Optional[np.ndarray]) -> Optional[str]:
    return None if a is None else hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


def _shard_key(result_params: dict, search: dict, acts, concepts: ConceptSet,
               shard: np.ndarray) -> dict:
    """What defines a shard's result, as JSON-plain data (compared on resume)."""
    from .io.results import params_json

    options = search["options"]
    thresholds = options.get("thresholds")
    key = {"params": {k: v for k, v in result_params.items() if k != "device"},
           "units": [int(u) for u in shard],
           "acts": {"shape": [int(s) for s in acts.shape], "dtype": str(np.dtype(acts.dtype))},
           "concepts": {"n_samples": concepts.n_samples, "grid": list(concepts.grid),
                        "sizes": _digest(concepts.sizes)},
           "thresholds": None if thresholds is None else _digest(np.asarray(thresholds)[shard])}
    return json.loads(params_json(key))


def _shard_path(shard_dir, i: int) -> str:
    return os.path.join(os.fspath(shard_dir), f"shard-{i:05d}.h5")


def _save_shard(shard_dir, i: int, explanations: list, key: dict) -> None:
    SearchResult(explanations, params={"shard": key}).save(_shard_path(shard_dir, i))


def _load_shards(shard_dir, keys: list) -> dict:
    """The shards already in ``shard_dir`` (created if missing), checked against ``keys``."""
    d = os.fspath(shard_dir)
    if os.path.exists(d) and not os.path.isdir(d):
        raise ValueError(f"shard_dir '{d}' exists and is not a directory")
    os.makedirs(d, exist_ok=True)
    done = {}
    for i, key in enumerate(keys):
        p = _shard_path(d, i)
        if not os.path.exists(p):
            continue
        saved = SearchResult.load(p)
        diff = _difference(saved.params.get("shard"), key)
        if diff is not None:
            raise ValueError(f"shard_dir '{d}': {os.path.basename(p)} was written by another "
                             f"search ({diff}); use another shard_dir or empty this one")
        done[i] = (list(saved), None)
    if done:
        log.info("compexp: resuming from %d of %d shards in %s", len(done), len(keys), d)
    return done


def _difference(saved, want: dict, where: str = "") -> Optional[str]:
    """The first difference between a saved shard key and this run's, in words, or None."""
    if isinstance(saved, dict) and isinstance(want, dict):
        for k in list(want) + [k for k in saved if k not in want]:
            diff = _difference(saved.get(k), want.get(k), f"{where}.{k}" if where else k)
            if diff is not None:
                return diff
        return None
    if saved != want:
        return f"{where or 'shard'}: saved {_short(saved)}, this run {_short(want)}"
    return None


def _short(v) -> str:
    text = json.dumps(v)
    return text if len(text) <= 80 else text[:77] + "..."


def _merged_stats(shard_stats: list, seconds: dict, *, n_workers: int, n_resumed: int,
                  wall: float) -> dict:
    """The shards' statistics merged: phase seconds and work summed (worker time, not wall
    time), steps the largest, plus the executor's own figures."""
    out: dict = {"seconds": {}, "steps": 1, "converged_units": 0}
    for s in shard_stats:
        if s is None:                           # a shard loaded from shard_dir
            continue
        for phase, v in s["seconds"].items():
            out["seconds"][phase] = out["seconds"].get(phase, 0.0) + v
        out["steps"] = max(out["steps"], s["steps"])
        for k, v in s.items():
            if k in ("seconds", "steps"):
                continue
            if isinstance(v, dict):
                sub = out.setdefault(k, {})
                for kk, vv in v.items():
                    sub[kk] = sub.get(kk, 0) + vv
            else:
                out[k] = out.get(k, 0) + v
    out.update({"executor": "ray", "shards": len(shard_stats), "workers": n_workers,
                "shards_resumed": n_resumed, "shard_seconds": [seconds[i] for i in sorted(seconds)],
                "wall_seconds": wall})
    return out
