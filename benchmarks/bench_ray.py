"""The search on one process against the same search sharded over Ray workers, at the
reference scale (the Broden-like ADE20k workload of broden_workload.py: 22,210 images of
112x112, 1,290 concepts, 512 units of 7x7 maps), and a scale-out estimate from the measured
per-shard cost.

    python benchmarks/bench_ray.py                        # 512 units, 2 workers, shards of 32
    python benchmarks/bench_ray.py --units 64 --scale 0.25 --workers 2 --shard-size 16

Steps: the workload (generated once, cached under --data-dir, as bench_search.py does); a
units-major copy of its activations (rechunk_activations, timed once, cached); the concept set
loaded once; then the single-process search and the Ray search from the same units-major file
(results compared first: they must be identical), then the timings. Ray's own start
(ray.init) is timed apart: a cluster is started once and serves every search.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=Path("/tmp/compexp-bench"))
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the 22,210 images")
    ap.add_argument("--units", type=int, default=512, help="units searched (the first ones)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shard-size", type=int, default=32)
    ap.add_argument("--length", type=int, default=3)
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args()

    import ray

    import compexp_core as cx
    from compexp_core.io.activations import rechunk_activations
    from bench_search import workload

    d = workload(args.data_dir, args.scale, 512)
    units_major = d / "acts_units.h5"
    t_rechunk = None
    if not units_major.exists():
        t = time.perf_counter()
        rechunk_activations(d / "acts.h5", units_major)
        t_rechunk = time.perf_counter() - t
    t = time.perf_counter()
    cs = cx.load_concepts(d / "concepts.h5")
    t_index = time.perf_counter() - t
    units = list(range(args.units))
    kw = dict(max_length=args.length, beam_size=args.beam, units=units, device="cpu")
    acts = str(units_major)
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs; P={cs.n_cells:,} cells, K={cs.n_concepts}, index "
          f"{cs.nbytes / 2**20:.0f} MiB; {args.units} units; length {args.length}, "
          f"beam {args.beam}")
    if t_rechunk is not None:
        print(f"rechunk_activations (one pass, {os.path.getsize(d / 'acts.h5') / 2**30:.2f} GiB): "
              f"{t_rechunk:.1f} s")
    print(f"concept set loaded in {t_index:.1f} s")

    t = time.perf_counter()
    single = cx.search_formulas(acts, cs, **kw)
    t_single = time.perf_counter() - t
    print(f"single process: {t_single:.1f} s ({1000 * t_single / args.units:.0f} ms/unit)",
          flush=True)

    t = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    t_init = time.perf_counter() - t
    try:
        t = time.perf_counter()
        sharded = cx.search_formulas(acts, cs, executor="ray", workers=args.workers,
                                     shard_size=args.shard_size, **kw)
        t_ray = time.perf_counter() - t
    finally:
        ray.shutdown()
    same = list(sharded) == list(single) and sharded.params == single.params
    print(f"identical results: {same}")
    if not same:
        raise SystemExit("the Ray result differs from the single-process one")
    shard_s = np.array(sharded.stats["shard_seconds"])
    worker_s = float(sum(v for k, v in sharded.stats["seconds"].items() if k != "total"))
    print(f"ray, {args.workers} workers: {t_ray:.1f} s (+ ray.init {t_init:.1f} s); "
          f"{shard_s.size} shards of {args.shard_size} units: median {np.median(shard_s):.2f} s "
          f"(min {shard_s.min():.2f}, max {shard_s.max():.2f}) from submission to result; "
          f"search phases {worker_s:.1f} worker-s "
          f"({1000 * worker_s / args.units:.0f} ms/unit on one core)")
    print(f"overhead: ray / single = {t_ray / t_single:.2f}")
    out = {"units": args.units, "scale": args.scale, "workers": args.workers,
           "shard_size": args.shard_size, "length": args.length, "beam": args.beam,
           "P": cs.n_cells, "K": cs.n_concepts, "index_mib": cs.nbytes / 2**20,
           "rechunk_s": t_rechunk, "index_s": t_index, "single_s": t_single,
           "ray_init_s": t_init, "ray_s": t_ray, "shard_s": shard_s.tolist(),
           "worker_search_s": worker_s, "stats_single": single.stats,
           "stats_ray": {k: v for k, v in sharded.stats.items() if k != "shard_seconds"}}
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
