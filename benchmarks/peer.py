"""Side-by-side adapter for the published peer package ``compositional-explanations`` (PyPI 0.0.3.4).

    pip install --no-deps compositional-explanations==0.0.3.4   # needs numpy, scipy, torch
    python benchmarks/peer.py                      # N=1000, 56x56, 300 concepts, 3 units, beam 5, length 3
    python benchmarks/peer.py --jemalloc --threads 1   # re-executed under LD_PRELOAD=libjemalloc.so.2
                                                   # (MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1),
                                                   # torch on 1 thread: the peer's best setting here

The peer's API (``compositional_explanations.beam``; top-level modules ``compositional_explanations``
and ``package_utils``)::

    label = beam.compute_beam_explanations(bitmaps=..., masks=..., disjoint_info=None,
                                           length=L, beam_size=B, device=torch.device("cpu"),
                                           cache_dir=dir)

* ``bitmaps``: torch bool ``[N, H*W]``, the unit's *binary* firing mask. The peer does no
  thresholding or upsampling of its own, so it is given exactly the boolean unit masks our engine
  searches (no activation/quantile trick is needed: ``U_u`` is passed as is).
* ``masks``: a list of K concept masks, each torch bool ``[N, H*W]`` (the peer also accepts a
  ``scipy.sparse.csr_matrix`` or a path to an ``.npz`` of one, densified on every access); a
  concept is identified by its index in the list.
* ``disjoint_info``: optional bool ``[K, K]`` matrix of concept pairs known to be disjoint (used
  only to tighten its IoU bounds); ``None`` here.
* ``cache_dir``: where ``package_utils.mask_utils.get_dataset_info`` pickles the one-time
  per-dataset preprocessing (``quantities.pkl``: which cells are covered by 0, 1 or >1 concepts).
  The file name does not depend on the data, so a directory reused for another concept set
  silently gives wrong bounds; :func:`run_peer` therefore uses ``cache_dir/<fingerprint of the
  masks>``.
* It returns only the best formula (``None`` when no concept overlaps the unit): a tree of
  ``formula.Leaf(int)``, ``Or``, ``And``, ``Not(Leaf)``. Its IoU is the ``.iou`` attribute of a
  binary node (set from the exact IoU when the node entered the beam); a ``Leaf`` carries
  ``iou=None``, so for a single-concept answer :func:`run_peer` reports the peer's own
  ``metrics.iou`` of that concept's mask.

Its search ("beam search guided by the optimal heuristic", La Rosa et al.), read from the source:

1. Per unit (not cached): exact per-sample counts for every concept (a dense pass over all K
   masks); the first beam is the ``2 * B`` best concepts with IoU > 0 (ours: ``B``).
2. Step l -> l+1 expands only the beam formulas of length exactly l (ours: every beam member,
   so a single concept that survives in the beam is also extended at step 3), with every concept
   not already in the formula (= our ``allow_repeats=False``) and OR, AND, AND NOT (no OR NOT).
3. Candidates go through ``set()`` with an equivalence-aware hash/eq: ``(A OR B)`` = ``(B OR A)``,
   ``((A OR B) OR C)`` = ``((A OR C) OR B)``, same for AND chains and AND-NOT chains. Ours removes
   only textually identical formulas, so our beam can hold two spellings of one mask and the peer's
   cannot. The set's order depends on Python's string hash (``PYTHONHASHSEED``).
4. Candidates are sorted by an upper bound of their IoU (from per-sample counts of the beam
   formulas' masks) and exact IoUs are computed in that order until the bound falls below the
   current beam minimum (branch and bound); a candidate enters the beam only with an IoU strictly
   above the beam minimum (a min-heap of ``(iou, formula)``; ties fall back to the formulas'
   ``__lt__``). New beam = best B of old beam + new entries (``Counter.most_common``; old entries
   first on ties). On the last step only the best one is kept.
5. Scores: exact IoU from integer counts, ``I / (|U| + |F| - I)`` as a Python float, 0 for an
   empty union: the same float64 value as ours for the same formula.

Consequences. Step 1 and the scores coincide with ours; the peer's first beam (2B concepts) and
its equivalence dedup usually make its step-2 beam better than ours (not always: it extends only
the newest formulas at step 3), so it can end with a higher IoU than our
``allow_repeats=False`` search with the same B (it did on 5 of the 64 units of the Broden-like
workload below, all weak units with IoU ~0.01-0.05; ours was never higher, 56 of 64 texts were
identical, 3 more differed only in a tie). On planted formulas both agree
(tests/test_peer.py). Turning its pruning off (every bound set to 2) changed no IoU on 450 random
small cases, so the bound looks admissible. The same formula can be spelled differently:
``((c3 OR c11) OR c2)`` vs ``((c2 OR c11) OR c3)``.

Costs and problems (N=1000, 56x56, K=300, 2 cores): per unit it converts bool to int32 sums over
[N, H*W] 4 times per concept; torch's 2-thread reduction is several times slower than 1 thread on
a loaded 2-core machine (set ``--threads 1``). Under glibc malloc the process grows by about 7 GB
during the first unit (then stays flat) and that first unit is slow; under jemalloc with default
decay RSS stays flat but each unit costs ~3x the CPU; with ``MALLOC_CONF=dirty_decay_ms:-1,
muzzy_decay_ms:-1`` both are fine (flat RSS, ~2-3 s/unit). No crashes seen.

Output: per unit ``{"unit", "formula" (our print style, parseable by compexp_core.Formula.parse),
"iou", "seconds", "cpu_seconds", "peer_text", "rss_mb"}``; the list's ``preprocess_seconds``
attribute holds the one-time preprocessing (mask conversion, fingerprint, ``get_dataset_info``),
which is not included in the per-unit seconds. Per-unit seconds cover one
``compute_beam_explanations`` call (it re-reads the cached pickle and recomputes the per-concept
counts for that unit every call).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import os
import sys
import time
import warnings
from typing import Optional, Sequence

import numpy as np

JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
# Keep freed pages: with jemalloc's default decay the peer's 3 MB temporaries are returned to the
# OS and faulted in again (about 3x the CPU time per unit); glibc malloc keeps them but fragments
# (RSS about +7 GB on the first unit at N=1000, 56x56, K=300).
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
PEER_VERSION = "0.0.3.4"

__all__ = ["peer_available", "run_peer", "peer_formula_to_text", "PeerResults"]


def peer_available() -> bool:
    """Whether the peer package (and torch, which it needs) can be imported."""
    try:
        import torch  # noqa: F401
        from compositional_explanations import beam, formula, metrics  # noqa: F401
        from package_utils import mask_utils  # noqa: F401
    except Exception:
        return False
    return True


class PeerResults(list):
    """A list of per-unit dicts, plus ``preprocess_seconds``, ``cache_dir`` and ``cache_hit``
    (whether the peer's preprocessing was loaded from ``cache_dir`` instead of computed)."""

    preprocess_seconds: float = 0.0
    cache_dir: str = ""
    cache_hit: bool = False


def peer_formula_to_text(label, names: Sequence[str]) -> Optional[str]:
    """Convert a peer formula tree (concept indices) to our print style, e.g. ``((a OR b) AND NOT c)``."""
    if label is None:
        return None
    return str(_to_ours(label, names))


def _to_ours(node, names):
    import compexp_core as cx
    from compositional_explanations import formula as PF

    if isinstance(node, PF.Leaf):
        return cx.Leaf(str(names[int(node.val)]))
    if isinstance(node, PF.Not):
        return cx.Not(_to_ours(node.val, names))
    if isinstance(node, PF.And):
        return cx.And(_to_ours(node.left, names), _to_ours(node.right, names))
    if isinstance(node, PF.Or):
        return cx.Or(_to_ours(node.left, names), _to_ours(node.right, names))
    if isinstance(node, (int, np.integer)):
        return cx.Leaf(str(names[int(node)]))
    raise TypeError(f"unknown peer formula node {type(node).__name__}")


@contextlib.contextmanager
def _quiet_peer(quiet: bool):
    """The peer prints progress and touches ``scipy.sparse.csr.csr_matrix`` on every mask access
    (a DeprecationWarning since SciPy 1.8; an error under this project's pytest settings)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*scipy\.sparse\.csr.*", category=DeprecationWarning)
        with contextlib.redirect_stdout(io.StringIO() if quiet else sys.stdout):
            yield


def _rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def _dense_concepts(concept_masks) -> np.ndarray:
    """bool [N, K, H, W] or [N, K]; a compexp_core ConceptSet is densified."""
    if hasattr(concept_masks, "to_dense"):
        concept_masks = concept_masks.to_dense()
    cm = np.asarray(concept_masks)
    if cm.dtype != np.bool_:
        raise TypeError(f"concept masks must be bool, got {cm.dtype}")
    if cm.ndim == 2:
        cm = cm[:, :, None, None]
    if cm.ndim != 4:
        raise ValueError(f"concept masks must be [N, K, H, W] or [N, K], got shape {cm.shape}")
    return cm


def run_peer(unit_masks, concept_masks, names: Sequence[str], *, max_length: int, beam_size: int,
             cache_dir: str, units: Optional[Sequence[int]] = None, device: str = "cpu",
             quiet: bool = True) -> PeerResults:
    """Run the peer's beam search on the same binary unit masks our engine searches.

    Args:
        unit_masks: bool ``[U, N, H, W]`` unit masks (``[U, N, H*W]`` and ``[U, N*H*W]``,
            sample-major, are accepted too).
        concept_masks: bool ``[N, K, H, W]`` (or ``[N, K]``) concept masks, or a
            ``compexp_core.ConceptSet`` (densified).
        names: K concept names (used for the formula text).
        max_length: formula length in leaves (the peer's ``length``).
        beam_size: the peer's ``beam_size``.
        cache_dir: the peer's preprocessing cache lives in ``cache_dir/<masks fingerprint>``.
        units: indices of the units to run (default: all).
        device: torch device for the peer (``"cpu"``).
        quiet: swallow the peer's prints.

    Returns:
        :class:`PeerResults`: one dict per unit ``{"unit", "formula", "iou", "seconds" (wall),
        "cpu_seconds" (process CPU time), "peer_text" (the peer's own print), "rss_mb" (RSS after
        the call)}`` (``formula`` None and ``iou`` 0.0 when the peer finds nothing),
        with ``.preprocess_seconds`` (one-time, not in the per-unit seconds), ``.cache_dir`` and
        ``.cache_hit``.
    """
    import torch
    from compositional_explanations import beam, metrics
    from compositional_explanations import formula as PF
    from package_utils import mask_utils

    if max_length < 1 or beam_size < 1:
        raise ValueError("max_length and beam_size must be >= 1")
    t_pre = time.perf_counter()
    if hasattr(concept_masks, "concept_mask"):
        # A ConceptSet: one concept at a time, so only the peer's own copy is ever dense.
        N, K = concept_masks.n_samples, concept_masks.n_concepts
        cells = concept_masks.grid[0] * concept_masks.grid[1]
        masks = [torch.from_numpy(concept_masks.concept_mask(k).reshape(N, cells)) for k in range(K)]
        shape = concept_masks.grid
    else:
        cm = _dense_concepts(concept_masks)
        N, K = cm.shape[:2]
        cells = int(np.prod(cm.shape[2:]))
        shape = cm.shape[2:]
        # Concept masks as the peer wants them: a list of K bool tensors [N, H*W].
        masks = [torch.from_numpy(np.ascontiguousarray(cm[:, k].reshape(N, cells))) for k in range(K)]
        del cm
    if len(names) != K:
        raise ValueError(f"{len(names)} names for {K} concepts")
    um = np.asarray(unit_masks)
    if um.dtype != np.bool_:
        raise TypeError(f"unit masks must be bool, got {um.dtype}")
    um = um.reshape(um.shape[0], N, cells)
    dev = torch.device(device)

    h = hashlib.sha1(f"{N},{K},{tuple(shape)}".encode())
    for k in range(K):
        h.update(np.packbits(masks[k].numpy()).tobytes())
    sub = os.path.join(cache_dir, f"peer-N{N}-K{K}-P{cells}-{h.hexdigest()[:16]}")
    cache_hit = os.path.exists(os.path.join(sub, "quantities.pkl"))
    with _quiet_peer(quiet):
        mask_utils.get_dataset_info(masks, sub)   # computes and writes sub/quantities.pkl once
    results = PeerResults()
    results.preprocess_seconds = time.perf_counter() - t_pre
    results.cache_dir = sub
    results.cache_hit = cache_hit

    for u in (range(um.shape[0]) if units is None else units):
        u = int(u)
        bitmaps = torch.from_numpy(np.ascontiguousarray(um[u]))
        c0, t0 = time.process_time(), time.perf_counter()
        with _quiet_peer(quiet):
            label = beam.compute_beam_explanations(
                bitmaps=bitmaps, masks=masks, disjoint_info=None, length=max_length,
                beam_size=beam_size, device=dev, cache_dir=sub)
        seconds = time.perf_counter() - t0
        cpu_seconds = time.process_time() - c0
        if label is None:
            text, iou = None, 0.0
        else:
            text = peer_formula_to_text(label, names)
            if isinstance(label, PF.Leaf) or getattr(label, "iou", None) is None:
                # The peer keeps a single concept's (exact) IoU only in its internal beam dict.
                with _quiet_peer(quiet):
                    iou = float(metrics.iou(masks[int(label.val)].to(dev), bitmaps.to(dev)))
            else:
                iou = float(label.iou)
        results.append({"unit": u, "formula": text, "iou": iou, "seconds": seconds,
                        "cpu_seconds": cpu_seconds,
                        "peer_text": None if label is None else str(label), "rss_mb": _rss_mb()})
    return results


# --------------------------------------------------------------------------------------
# Timing script: peer vs our engine on the same Broden-like masks.
# --------------------------------------------------------------------------------------
def main(argv=None) -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from workloads import add_workload_arguments

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload_arguments(ap)
    ap.add_argument("--units", type=int, default=3, help="units timed (the first ones of the workload)")
    ap.add_argument("--workload-units", type=int, default=64)
    ap.add_argument("--length", type=int, default=3)
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3, help="engine timing repeats (median)")
    ap.add_argument("--cache-dir",
                    default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "compexp-peer-cache"))
    ap.add_argument("--jemalloc", action="store_true", help=f"re-run under LD_PRELOAD={JEMALLOC}")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads for the peer (default: torch's default, one per core)")
    args = ap.parse_args(argv)

    if args.jemalloc and JEMALLOC not in os.environ.get("LD_PRELOAD", ""):
        if not os.path.exists(JEMALLOC):
            sys.exit(f"{JEMALLOC} not found (apt-get install -y libjemalloc2)")
        env = dict(os.environ, LD_PRELOAD=(JEMALLOC + " " + os.environ.get("LD_PRELOAD", "")).strip())
        env.setdefault("MALLOC_CONF", JEMALLOC_CONF)
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__)] + sys.argv[1:], env)
    if not peer_available():
        sys.exit(f"peer not importable: pip install --no-deps compositional-explanations=={PEER_VERSION}")

    import platform

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.join(here, "..", "tests"))
    sys.path.insert(0, here)
    import compexp_core as cx
    from reference import reference_unit_masks
    from workloads import workload_from_arguments

    load0 = os.getloadavg()[0]
    t = time.perf_counter()
    wl = workload_from_arguments(args, args.workload_units)
    cs = wl.concept_set()
    N, H, W, U = args.samples, args.grid, args.grid, args.units
    umasks = reference_unit_masks(wl.acts[:, :U], (H, W)).reshape(U, N, H, W)
    names = list(cs.names)
    print(f"workload: N={N} grid={H}x{W} K={len(names)} units={U} length={args.length} "
          f"beam={args.beam}; built in {time.perf_counter() - t:.1f} s")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), LD_PRELOAD={os.environ.get('LD_PRELOAD', '')!r}, "
          f"MALLOC_CONF={os.environ.get('MALLOC_CONF', '')!r}, "
          f"engine kernels: {cx.backend_info().get('cpu_simd')}")

    bool_acts = np.ascontiguousarray(umasks.transpose(1, 0, 2, 3))   # [N, U, H, W]
    params = dict(names=names, max_length=args.length, beam_size=args.beam, allow_repeats=False)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ours = cx.search_formulas(bool_acts, cs, **params)
        times.append(time.perf_counter() - t0)
    t_ours = float(np.median(times))

    rss0 = _rss_mb()
    peer = run_peer(umasks, cs, names, max_length=args.length, beam_size=args.beam,
                    cache_dir=args.cache_dir)
    print(f"peer preprocessing (one-time, cache {peer.cache_dir}, "
          f"{'loaded' if peer.cache_hit else 'computed'}): {peer.preprocess_seconds:.2f} s; "
          f"RSS before peer units {rss0:.0f} MB")
    print(f"load average after: {os.getloadavg()[0]:.2f} (before the workload: {load0:.2f})")
    print("| unit | peer s | peer CPU s | peer formula | peer IoU | our formula | our IoU "
          "| peer RSS after (MB) |")
    print("|---:|---:|---:|---|---:|---|---:|---:|")
    for r, e in zip(peer, ours):
        print(f"| {r['unit']} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | {r['formula']} "
              f"| {r['iou']:.4f} | {e.formula} | "
              f"{e.iou:.4f} | {r['rss_mb']:.0f} |")
    peer_pu = float(np.mean([r["seconds"] for r in peer]))
    peer_med = float(np.median([r["seconds"] for r in peer]))
    print(f"\npeer: {peer_pu:.2f} s/unit (mean of {len(peer)}; median {peer_med:.2f}); "
          f"ours: {1000 * t_ours / U:.1f} ms/unit ({t_ours:.3f} s for {U} units, median of "
          f"{args.repeats}, same masks, engine threads={cx.backend_info().get('cpu_threads')})")
    same_text = sum(r["formula"] == str(e.formula) for r, e in zip(peer, ours))
    same_iou = sum(r["iou"] == e.iou for r, e in zip(peer, ours))
    ours_higher = sum(e.iou > r["iou"] for r, e in zip(peer, ours))
    peer_higher = sum(r["iou"] > e.iou for r, e in zip(peer, ours))
    print(f"agreement on {len(peer)} units: same formula {same_text}, same IoU {same_iou}, "
          f"ours higher {ours_higher}, peer higher {peer_higher}")
    print(f"speed-up: {peer_pu / (t_ours / U):.0f}x")


if __name__ == "__main__":
    main()
