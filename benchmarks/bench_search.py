"""Reference-scale search benchmark: the engine against the NumPy reference and the peer package.

    python benchmarks/bench_search.py                       # everything, at the reference scale
    python benchmarks/bench_search.py --sections engine     # only the engine at --scale
    python benchmarks/bench_search.py --scale 0.1 --lengths 3,10 --sections engine,scaling

Sections (each compares on one workload, generated once per scale by broden_workload.py and
cached under --data-dir):
  engine     whole layer end to end from the HDF5 files (concept index, thresholds,
             upsampling, search) in a child process: wall time, peak RSS, the extension
             kernel's touched bytes/s against the machine's copy bandwidth measured in the
             same run; one row per --lengths value.
  reference  engine vs tests/reference.py (NumPy, packed bits) on the same unit masks at
             --ref-scale: identical results, ms/unit, ratio.
  peer       engine vs compositional-explanations 0.0.3.4 (benchmarks/peer.py) on the same
             boolean unit masks (--peer-samples images of 112x112, 600 concepts) for
             --peer-units units: formulas and IoUs compared, s/unit, ratio. Run under jemalloc.
  scaling    search time against units, beam size, length and data size (scale).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))


def workload(data_dir: Path, scale: float, units: int = 512, seed: int = 0) -> Path:
    """Directory holding concepts.h5 and acts.h5 for this scale (generated once)."""
    from broden_workload import generate

    d = data_dir / f"scale{scale:g}_units{units}_seed{seed}"
    if not ((d / "concepts.h5").exists() and (d / "acts.h5").exists()):
        generate(str(d), scale, units, seed, verbose=False)
    return d


def memory_bandwidth(gib: float = 1.0, repeats: int = 5) -> float:
    """Large-copy bandwidth in bytes/s (bytes read + bytes written), median of repeats."""
    a = np.ones(int(gib * (1 << 27)), np.uint64)
    b = np.empty_like(a)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(b, a)
        times.append(time.perf_counter() - t)
    return 2 * a.nbytes / float(np.median(times))


def _engine_child(d: str, length: int, beam: int, units, out, quantile: float = 0.005):
    """One end-to-end run from the files, in its own process (so its peak RSS is its own)."""
    import compexp_core as cx

    t0 = time.perf_counter()
    cs = cx.load_concepts(f"{d}/concepts.h5")
    t_index = time.perf_counter() - t0
    res = cx.search_formulas(cx.open_activations(f"{d}/acts.h5"), cs, max_length=length,
                             beam_size=beam, units=units, quantile=quantile)
    total = time.perf_counter() - t0
    out.put({"index_s": t_index, "total_s": total, "stats": res.stats, "n_units": len(res),
             "iou": [e.iou for e in res], "formulas": [str(e.formula) for e in res],
             "rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
             "P": cs.n_cells, "K": cs.n_concepts, "index_mib": cs.nbytes / 2**20})


def run_engine(d: Path, length: int, beam: int, units=None, quantile: float = 0.005) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_engine_child, args=(str(d), length, beam, units, q, quantile))
    p.start()
    r = q.get()
    p.join()
    return r


def section_engine(args, bw: float) -> None:
    d = workload(args.data_dir, args.scale, args.units)
    print(f"\n## engine: whole layer end to end from HDF5 (scale {args.scale}, {args.units} units, "
          f"beam {args.beam})")
    print("| length | total s | index s | thresholds s | unit masks s | search s | peak RSS GiB | "
          "kernel touched GB/s | % of copy bw |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for length in args.lengths:
        r = run_engine(d, length, args.beam)
        s = r["stats"]["seconds"]
        search = s["primitive_counts"] + s["extension_counts"] + s["materialize"] + s["driver"]
        kbw = r["stats"]["extension_bytes"] / max(s["extension_counts"], 1e-9)
        print(f"| {length} | {r['total_s']:.1f} | {r['index_s']:.1f} | {s['thresholds']:.1f} | "
              f"{s['unit_masks']:.1f} | {search:.1f} | {r['rss_gib']:.2f} | {kbw / 1e9:.2f} | "
              f"{100 * kbw / bw:.0f}% |", flush=True)
        detail = {k: round(v, 2) for k, v in s.items()}
        print(f"  (P={r['P']:,} cells, K={r['K']}, index {r['index_mib']:.0f} MiB; phases {detail}; "
              f"median IoU {np.median(r['iou']):.3f})")


def section_reference(args) -> None:
    import compexp_core as cx
    from reference import reference_search, reference_unit_masks

    d = workload(args.data_dir, args.ref_scale, args.units)
    cs = cx.load_concepts(f"{d}/concepts.h5")
    acts = cx.load_activations(f"{d}/acts.h5")[:, :args.ref_units]
    n, u = acts.shape[:2]
    H, W = cs.grid
    masks = reference_unit_masks(acts, cs.grid)
    bool_acts = np.ascontiguousarray(masks.reshape(u, n, H, W).transpose(1, 0, 2, 3))
    dense = np.ascontiguousarray(cs.to_dense().transpose(1, 0, 2, 3).reshape(cs.n_concepts, -1))
    params = dict(max_length=3, beam_size=args.beam)
    t = time.perf_counter()
    ours = cx.search_formulas(bool_acts, cs, **params)
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    ref = reference_search(masks, dense, list(cs.names), **params)
    t_ref = time.perf_counter() - t
    same = all(str(e.formula) == (r["formula"] or "None") and e.iou == r["iou"] and
               [(str(f), s) for f, s in e.beam] == [tuple(b) for b in r["beam"]]
               for e, r in zip(ours, ref))
    print(f"\n## reference: engine vs NumPy reference, same unit masks (N={n}, {H}x{W}, "
          f"K={cs.n_concepts}, {u} units, length 3, beam {args.beam})")
    print(f"results identical: {same}")
    print("| | engine | NumPy reference | ratio |\n|---|---:|---:|---:|")
    print(f"| ms/unit | {1000 * t_ours / u:.2f} | {1000 * t_ref / u:.0f} | {t_ref / t_ours:.0f}x |")


def section_peer(args) -> None:
    # Broden-like data at 112x112 with a 600-concept vocabulary, the size at which the peer
    # (dense masks, O(P*K) per unit) still finishes a few units within minutes on 2 cores.
    cmd = [sys.executable, str(HERE / "peer.py"), "--jemalloc", "--threads", "1",
           "--samples", str(args.peer_samples), "--grid", "112", "--objects", "550",
           "--colors", "11", "--scenes", "39", "--units", str(args.peer_units),
           "--length", "3", "--beam", str(args.beam)]
    print(f"\n## peer: engine vs compositional-explanations 0.0.3.4 on the same unit masks "
          f"(`python benchmarks/peer.py {' '.join(cmd[2:])}`)", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    print(proc.stdout[-6000:])
    if proc.returncode != 0:
        print(f"peer run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def section_scaling(args) -> None:
    """Time against units, beam, length; against unit sparsity at fixed P x K; against scale."""
    print(f"\n## scaling: search time (excluding index/thresholds/upsampling) and the extension "
          f"kernel's work (scale {args.scaling_scale})")
    d = workload(args.data_dir, args.scaling_scale, args.units)
    print("| units | beam | length | search s | kernel blocks touched (M) | kernel s |")
    print("|---:|---:|---:|---:|---:|---:|")
    base = dict(units=args.units, beam=5, length=3)
    rows = [dict(base, units=n) for n in (64, 128, 256, 512) if n <= args.units]
    rows += [dict(base, beam=b) for b in (2, 10, 20)]
    rows += [dict(base, length=L) for L in (2, 5, 10)]
    for row in rows:
        r = run_engine(d, row["length"], row["beam"], units=list(range(row["units"])))
        s = r["stats"]["seconds"]
        search = s["primitive_counts"] + s["extension_counts"] + s["materialize"] + s["driver"]
        print(f"| {row['units']} | {row['beam']} | {row['length']} | {search:.2f} | "
              f"{r['stats']['extension_entries'] / 1e6:.1f} | {s['extension_counts']:.2f} |", flush=True)
    # Same P and K, different unit sparsity: cost follows the overlapping blocks, not P x K.
    print("\n| quantile (fraction of cells a unit fires on) | P x K (G) | kernel blocks touched (M) "
          "| kernel s | search s |")
    print("|---:|---:|---:|---:|---:|")
    for q in (0.001, 0.005, 0.02):
        r = run_engine(d, 3, 5, units=list(range(128)), quantile=q)
        s = r["stats"]["seconds"]
        search = s["primitive_counts"] + s["extension_counts"] + s["materialize"] + s["driver"]
        print(f"| {q} | {r['P'] * r['K'] / 1e9:.0f} | {r['stats']['extension_entries'] / 1e6:.1f} | "
              f"{s['extension_counts']:.2f} | {search:.2f} |", flush=True)
    print("\n| scale | images | cells P | K | P x K (G) | kernel blocks touched (M) | search s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for scale in (0.05, 0.1, 0.25, 0.5, 1.0):
        if scale > args.scale:
            continue
        r = run_engine(workload(args.data_dir, scale, args.units), 3, 5, units=list(range(64)))
        s = r["stats"]["seconds"]
        search = s["primitive_counts"] + s["extension_counts"] + s["materialize"] + s["driver"]
        print(f"| {scale} | {r['P'] // (112 * 112):,} | {r['P']:,} | {r['K']} | "
              f"{r['P'] * r['K'] / 1e9:.0f} | {r['stats']['extension_entries'] / 1e6:.1f} | {search:.2f} |",
              flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--units", type=int, default=512)
    ap.add_argument("--beam", type=int, default=5)
    ap.add_argument("--lengths", default="3,10", help="lengths for the engine section")
    ap.add_argument("--device", default="cpu", choices=["cpu"])
    ap.add_argument("--sections", default="engine,reference,peer,scaling")
    ap.add_argument("--ref-scale", type=float, default=0.02)
    ap.add_argument("--ref-units", type=int, default=16)
    ap.add_argument("--peer-samples", type=int, default=1000)
    ap.add_argument("--peer-units", type=int, default=3)
    ap.add_argument("--scaling-scale", type=float, default=0.25)
    ap.add_argument("--data-dir", type=Path, default=Path("/tmp/compexp-bench"))
    args = ap.parse_args()
    args.lengths = [int(x) for x in args.lengths.split(",")]
    import compexp_core as cx

    bw = memory_bandwidth()
    print(f"# bench_search {time.strftime('%Y-%m-%d')}: {platform.machine()}, {os.cpu_count()} cores, "
          f"kernels {cx.backend_info()['cpu_simd']}, copy bandwidth {bw / 1e9:.1f} GB/s")
    sections = args.sections.split(",")
    for name in ("engine", "reference", "peer", "scaling"):
        if name in sections:
            globals()[f"section_{name}"](args) if name != "engine" else section_engine(args, bw)


if __name__ == "__main__":
    main()
