"""Engine vs the tests' NumPy reference, side by side in one run, same inputs, same results.

    python benchmarks/bench_core.py                      # N=1000, 56x56, 300 concepts, 64 units
    python benchmarks/bench_core.py --ref-units 16       # time the reference on fewer units

Both sides start from the same float activations and the same concept masks. Reported:
  * search: beam search from the unit masks (the reference's own unit masks are given to the
    engine as boolean acts, so both search exactly the same masks);
  * end to end: thresholds, upsampling and search from the float activations.
The reference is vectorised over all concepts for each beam formula and operator on packed
bits with np.bitwise_count (tests/reference.py). Results are checked for equality first.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, HERE)

import compexp_core as cx  # noqa: E402
from reference import reference_search, reference_unit_masks  # noqa: E402
from workloads import add_workload_arguments, workload_from_arguments  # noqa: E402


def same(result, expected) -> bool:
    for e, r in zip(result, expected):
        got = (None if e.formula is None else str(e.formula), e.iou, e.score,
               [(str(f), s) for f, s in e.beam])
        want = (r["formula"], r["iou"], r["score"], [(t, s) for t, s in r["beam"]])
        if got != want:
            print("MISMATCH unit", e.unit, got[:2], want[:2])
            return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload_arguments(ap)
    ap.add_argument("--units", type=int, default=64)
    ap.add_argument("--length", type=int, default=3)
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--ref-units", type=int, default=None, help="units the reference runs (default: all)")
    ap.add_argument("--repeats", type=int, default=3, help="engine timing repeats (median)")
    args = ap.parse_args()

    t = time.perf_counter()
    wl = workload_from_arguments(args, args.units)
    cs = wl.concept_set()
    t_build = time.perf_counter() - t
    P = cs.n_cells
    print(f"workload: N={args.samples} grid={args.grid}x{args.grid} P={P:,} K={cs.n_concepts} "
          f"U={args.units} length={args.length} beam={args.beam}; {cs}; built in {t_build:.2f} s")
    params = dict(max_length=args.length, beam_size=args.beam)

    # Unit masks from the reference (its Pillow-exact NumPy resize), shared by both searches.
    t = time.perf_counter()
    umasks = reference_unit_masks(wl.acts, (args.grid, args.grid))
    t_ref_masks = time.perf_counter() - t
    bool_acts = np.ascontiguousarray(umasks.reshape(args.units, args.samples, args.grid, args.grid)
                                     .transpose(1, 0, 2, 3))
    dense = np.ascontiguousarray(cs.to_dense().transpose(1, 0, 2, 3).reshape(cs.n_concepts, P))

    def median_time(fn):
        times, out = [], None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        return float(np.median(times)), out

    t_eng_search, res_search = median_time(lambda: cx.search_formulas(bool_acts, cs, **params))
    t_eng_e2e, res_e2e = median_time(lambda: cx.search_formulas(wl.acts, cs, **params))

    n_ref = args.units if args.ref_units is None else min(args.ref_units, args.units)
    t = time.perf_counter()
    expected = reference_search(umasks[:n_ref], dense, list(cs.names), **params)
    t_ref_search = time.perf_counter() - t

    ok = same(res_search[:n_ref], expected) and list(res_e2e) == list(res_search)
    print(f"results identical to the reference on {n_ref} units (and end-to-end == from masks): {ok}")
    if not ok:
        sys.exit(1)

    per = lambda total, n: 1000.0 * total / n  # noqa: E731  ms per unit
    ref_search_pu = per(t_ref_search, n_ref)
    ref_e2e_pu = ref_search_pu + per(t_ref_masks, args.units)
    rows = [
        ("search (from unit masks)", per(t_eng_search, args.units), ref_search_pu),
        ("end to end (from float acts)", per(t_eng_e2e, args.units), ref_e2e_pu),
    ]
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"kernels: {cx.backend_info()['cpu_simd']}")
    print(f"| stage | engine ms/unit | NumPy reference ms/unit | speed-up |")
    print(f"|---|---:|---:|---:|")
    for name, eng, ref in rows:
        print(f"| {name} | {eng:.2f} | {ref:.1f} | {ref / eng:.0f}x |")
    mean_iou = np.mean([e.iou for e in res_e2e])
    print(f"\nmean IoU {mean_iou:.3f}; engine whole run {t_eng_e2e:.2f} s for {args.units} units; "
          f"reference search {t_ref_search:.1f} s for {n_ref} units")


if __name__ == "__main__":
    main()
