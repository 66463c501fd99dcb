"""Our optimal search against the peer's ``compute_optimal_explanations`` (issue 17).

    pip download --no-deps compositional-explanations==0.0.3.4 -d /tmp/peer   # or pip install
    python -m zipfile -e /tmp/peer/compositional_explanations-0.0.3.4-py3-none-any.whl /tmp/peer/src
    PYTHONPATH=/tmp/peer/src python benchmarks/peer_optimal.py --samples 100 --grid 28 \\
        --objects 60 --colors 11 --scenes 9 --units 4 --peer-seconds 900

The peer (``compositional_explanations.optimal``, read from its source) searches left-deep
formulas of up to ``length`` leaves with OR, AND, AND NOT, each concept at most once: our
grammar with ``ops=("or", "and", "and_not")``, ``allow_repeats=False``, IoU, no penalty. Both get
the same boolean unit masks (the reference thresholds and resize of tests/reference.py, as in
benchmarks/peer.py) and the same concept masks (the peer: a list of K bool tensors [N, H*W];
its one-time preprocessing ``get_dataset_info`` is cached in ``--cache-dir`` and not timed).
Units are run one by one while the peer's total stays under ``--peer-seconds``; its IoU is
recomputed exactly from its formula's mask (our ``Formula.evaluate``) and compared with ours.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None) -> None:
    sys.path.insert(0, HERE)
    sys.path.insert(0, os.path.join(HERE, "..", "tests"))
    from peer import PEER_VERSION, peer_available, peer_formula_to_text
    from workloads import add_workload_arguments, workload_from_arguments

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload_arguments(ap)
    ap.add_argument("--units", type=int, default=4, help="most units (the first ones)")
    ap.add_argument("--length", type=int, default=3)
    ap.add_argument("--peer-seconds", type=float, default=900.0,
                    help="stop starting peer units once its total passes this")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the peer")
    ap.add_argument("--cache-dir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"),
                                                        "compexp-peer-optimal-cache"))
    args = ap.parse_args(argv)
    if not peer_available():
        sys.exit(f"peer not importable: compositional-explanations=={PEER_VERSION} on PYTHONPATH")

    import torch
    from compositional_explanations import optimal as peer_optimal
    from package_utils import mask_utils

    import compexp_core as cx
    from reference import reference_unit_masks

    torch.set_num_threads(args.threads)
    wl = workload_from_arguments(args, args.units)
    cs = wl.concept_set()
    N, H, W, U = args.samples, args.grid, args.grid, args.units
    umasks = reference_unit_masks(wl.acts[:, :U], (H, W)).reshape(U, N, H * W)
    names = list(cs.names)
    K = len(names)
    cells = H * W
    masks = [torch.from_numpy(np.ascontiguousarray(cs.concept_mask(k).reshape(N, cells)))
             for k in range(K)]
    dense = np.stack([m.numpy().reshape(-1) for m in masks], axis=1)      # [N*H*W, K]
    print(f"workload: N={N} grid={H}x{W} K={K} units<={U} length={args.length}; machine "
          f"{platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads)", flush=True)

    # Ours: every unit at once (per-unit seconds from the proof record).
    bool_acts = np.ascontiguousarray(umasks.reshape(U, N, H, W).transpose(1, 0, 2, 3))
    t0 = time.perf_counter()
    ours = cx.search_formulas(bool_acts, cs, names=names, max_length=args.length,
                              ops=("or", "and", "and_not"), allow_repeats=False,
                              method="optimal", device="cpu")
    t_ours = time.perf_counter() - t0
    print(f"ours: {t_ours:.2f} s for {U} units (beam + optimal, one call)", flush=True)

    sub = os.path.join(args.cache_dir, f"N{N}-K{K}-P{cells}-seed{args.seed}")
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        mask_utils.get_dataset_info(masks, sub)
    print(f"peer preprocessing (one-time, not timed below): {time.perf_counter() - t0:.1f} s",
          flush=True)
    rows, total = [], 0.0
    for u in range(U):
        if total >= args.peer_seconds:
            break
        bitmaps = torch.from_numpy(np.ascontiguousarray(umasks[u]))
        c0, t0 = time.process_time(), time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            label = peer_optimal.compute_optimal_explanations(
                masks=masks, bitmaps=bitmaps, disjoint_info=None, length=args.length,
                device=torch.device("cpu"), cache_dir=sub)
        secs, cpu = time.perf_counter() - t0, time.process_time() - c0
        total += secs
        text = peer_formula_to_text(label, names)
        unit = umasks[u].reshape(-1)
        peer_iou = 0.0
        if text is not None:       # its IoU, recomputed exactly from its formula's mask
            fm = cx.Formula.parse(text).evaluate(dense, names)
            inter, union = int((fm & unit).sum()), int((fm | unit).sum())
            peer_iou = inter / union if union else 0.0
        e = ours[u]
        rows.append((u, secs, cpu, text, peer_iou, str(e.formula), e.iou,
                     e.optimality.seconds, bool(e.optimal)))
        print(f"unit {u}: peer {secs:.1f} s ({cpu:.1f} s CPU) {text} IoU {peer_iou:.6f}; ours "
              f"{e.optimality.seconds:.3f} s {e.formula} IoU {e.iou:.6f}", flush=True)
    print("\n| unit | peer s | peer formula | peer IoU | our s (optimal part) | our formula | our IoU |")
    print("|---:|---:|---|---:|---:|---|---:|")
    for u, secs, cpu, text, piou, ot, oiou, osec, proven in rows:
        print(f"| {u} | {secs:.1f} | `{text}` | {piou:.6f} | {osec:.3f} | `{ot}` | {oiou:.6f} |")
    if rows:
        same = sum(r[4] == r[6] for r in rows)
        ratio = np.array([r[1] / max(r[7], 1e-9) for r in rows])
        print(f"\nsame IoU on {same} of {len(rows)} units; ours proven optimal on "
              f"{sum(r[8] for r in rows)}; per-unit time ratio peer / ours (optimal part): "
              f"median {np.median(ratio):.0f}x, min {ratio.min():.0f}x; ours incl. beam: "
              f"{t_ours / U:.3f} s/unit; load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
