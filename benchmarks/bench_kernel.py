"""The fused extension kernel alone: bytes of concept blocks touched per second, per SIMD path,
against the machine's memory bandwidth measured in the same run (a large copy).

    python benchmarks/bench_kernel.py DATA_DIR [--units 64] [--repeats 5]

DATA_DIR holds concepts.h5 and acts.h5 (benchmarks/broden_workload.py). The formulas counted
are the real step-2 beams of a search (length 2, beam 5) of the first --units units.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import compexp_core as cx
from compexp_core import _core
from compexp_core.engine.driver import materialize_formulas

from bench_search import memory_bandwidth
from compexp_core.engine.units import compute_thresholds, unit_masks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("--units", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    cs = cx.load_concepts(f"{args.data}/concepts.h5")
    acts = cx.open_activations(f"{args.data}/acts.h5")
    ids = np.arange(min(args.units, acts.shape[1]))
    um = unit_masks(acts, ids, cs.grid, compute_thresholds(acts, 0.005, ids))
    # The real step-2 beams: the best 5 formulas of length 2 for each unit, materialised.
    res = cx.search_formulas(acts, cs, units=ids, max_length=2, beam_size=5)
    beams = [(k, f) for k, e in enumerate(res) for f, _ in e.beam]
    formulas = materialize_formulas(cs, [f for _, f in beams])
    unit_of = np.array([k for k, _ in beams], np.int64)
    touched = int(cs.block_entry_counts[formulas[1]].sum())
    nbytes = touched * (8 * _core.BLOCK_WORDS + 4)
    bw = memory_bandwidth()
    print(f"{formulas[0].size - 1} formulas over {formulas[1].size:,} blocks; {touched:,} concept "
          f"blocks touched = {nbytes / 1e9:.2f} GB per call; memory copy bandwidth {bw / 1e9:.1f} GB/s")
    print("| kernel | ms/call | touched GB/s | % of copy bandwidth |")
    print("|---|---:|---:|---:|")
    ref = None
    for simd in ("scalar", "popcnt", "avx512"):
        if not _core.simd_supported(simd):
            continue
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            out = cs.extension_counts(formulas, unit_of, um, simd)
            times.append(time.perf_counter() - t)
        if ref is None:
            ref = out
        assert all((a == b).all() for a, b in zip(out[:2], ref[:2])) and out[2] == ref[2], simd
        t = float(np.median(times))
        print(f"| {simd} | {1000 * t:.1f} | {nbytes / t / 1e9:.2f} | {100 * nbytes / t / bw:.0f}% |")


if __name__ == "__main__":
    main()
