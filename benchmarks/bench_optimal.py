"""Beam search against the optimal search (issue 17) on the Broden-like reference workload.

    python benchmarks/bench_optimal.py --units 0-15 --length 3
    python benchmarks/bench_optimal.py --scale 0.1 --units 0-63 --length 3 --time-budget 60
    python benchmarks/bench_optimal.py --acts DIR/acts.h5 --concepts DIR/concepts.h5 --units 0-95
        (any activations and concept files, e.g. those `compexp demo` writes: the built-in CNN)

For each unit: beam search with beam 5 and beam 10 (time per unit), then the optimal search
(seeded with beam 10's answer; per-unit time, nodes expanded, whether it finished within the
budget). Reports the share of units whose beam-5 / beam-10 explanation is suboptimal and by how
much (score difference, absolute and relative), and the optimal search's time per unit.
The workload is generated once per scale by broden_workload.py and cached under --data-dir.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _units(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b or a) + 1))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data-dir", default="/tmp/compexp-bench")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--units", default="0-15")
    ap.add_argument("--length", type=int, default=3)
    ap.add_argument("--time-budget", type=float, default=300.0, help="seconds per unit")
    ap.add_argument("--json", default=None, help="also write the per-unit rows here")
    ap.add_argument("--optimal-only", action="store_true",
                    help="one optimal search (seeded with beam --beam), no separate beam runs: "
                         "the whole-layer timing; the beam's answer comes from its record")
    ap.add_argument("--beam", type=int, default=10, help="beam size seeding the optimal search")
    ap.add_argument("--acts", default=None, help="an activations file instead of the workload")
    ap.add_argument("--concepts", default=None, help="its concepts file (with --acts)")
    args = ap.parse_args(argv)

    import compexp_core as cx
    from bench_search import workload

    if (args.acts is None) != (args.concepts is None):
        ap.error("--acts and --concepts go together")
    if args.acts is not None:
        d, acts_path, concepts_path = Path(args.acts).parent, Path(args.acts), Path(args.concepts)
    else:
        d = workload(Path(args.data_dir), args.scale)
        acts_path, concepts_path = d / "acts.h5", d / "concepts.h5"
    t = time.perf_counter()
    concepts = cx.load_concepts(concepts_path)
    acts = cx.open_activations(acts_path)
    print(f"workload {d}: {concepts}; acts {tuple(acts.shape)}; loaded in "
          f"{time.perf_counter() - t:.1f} s", flush=True)
    units = _units(args.units)
    common = dict(max_length=args.length, device="cpu", units=units)
    timings = {}
    results = {}
    if args.optimal_only:
        optimal_only(cx, acts, concepts, common, args)
        return
    for name, kw in (("beam5", dict(beam_size=5)), ("beam10", dict(beam_size=10)),
                     ("optimal", dict(beam_size=args.beam, method="optimal",
                                      time_budget=args.time_budget))):
        t = time.perf_counter()
        results[name] = cx.search_formulas(acts, concepts, **common, **kw)
        timings[name] = time.perf_counter() - t
        print(f"{name}: {timings[name]:.1f} s for {len(units)} units", flush=True)
    rows = []
    for i, u in enumerate(units):
        o = results["optimal"][i]
        rows.append({"unit": u, "optimal": str(o.formula), "score": o.score,
                     "upper_bound": o.optimality.upper_bound, "proven": bool(o.optimal),
                     "seconds": o.optimality.seconds, "nodes": o.optimality.nodes_expanded,
                     "beam5": str(results["beam5"][i].formula),
                     "beam5_score": results["beam5"][i].score,
                     "beam10": str(results["beam10"][i].formula),
                     "beam10_score": results["beam10"][i].score})
    print(f"\n| unit | beam-5 | beam-10 | optimal | bound | s | nodes |")
    print("|---:|---|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['unit']} | {r['beam5_score']:.4f} | {r['beam10_score']:.4f} | "
              f"{r['score']:.4f} `{r['optimal']}` | {r['upper_bound']:.4f} | "
              f"{r['seconds']:.1f} | {r['nodes']} |")
    proven = [r for r in rows if r["proven"]]
    print(f"\nproven optimal: {len(proven)} of {len(rows)} units "
          f"(budget {args.time_budget} s/unit)")
    for b in ("beam5", "beam10"):
        worse = [r for r in proven if r[f"{b}_score"] < r["score"]]
        gaps = np.array([r["score"] - r[f"{b}_score"] for r in worse])
        rel = np.array([(r["score"] - r[f"{b}_score"]) / r["score"] for r in worse])
        print(f"{b}: suboptimal on {len(worse)} of {len(proven)} proven units "
              f"({100 * len(worse) / max(len(proven), 1):.0f}%)"
              + (f"; score gap mean {gaps.mean():.4f}, max {gaps.max():.4f}; relative mean "
                 f"{100 * rel.mean():.2f}%, max {100 * rel.max():.2f}%" if worse else ""))
    secs = np.array([r["seconds"] for r in rows])
    print(f"time per unit: beam-5 {1000 * timings['beam5'] / len(units):.0f} ms, beam-10 "
          f"{1000 * timings['beam10'] / len(units):.0f} ms, optimal (branch and bound after "
          f"beam 10) median {np.median(secs):.1f} s, max {secs.max():.1f} s, total "
          f"{timings['optimal']:.0f} s")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


def optimal_only(cx, acts, concepts, common, args) -> None:
    """One optimal search over the units (the beam of size ``args.beam`` runs inside it, as
    the first incumbent): wall time, per-unit proof times, peak RSS, and how many of the
    beam's answers (``Explanation.beam[0]``) were suboptimal."""
    t = time.perf_counter()
    res = cx.search_formulas(acts, concepts, **common, beam_size=args.beam, method="optimal",
                             time_budget=args.time_budget, progress=True)
    wall = time.perf_counter() - t
    secs = np.array([e.optimality.seconds for e in res])
    worse = [e for e in res if e.beam_suboptimal]
    gaps = np.array([e.score - (e.beam[0][1] if e.beam else 0.0) for e in worse])
    rel = np.array([g / e.score for g, e in zip(gaps, worse)])
    print(f"optimal search (beam {args.beam} inside): {wall:.1f} s for {len(res)} units "
          f"({wall / len(res):.2f} s/unit); search stats: {res.stats['seconds']}")
    print(f"proven optimal: {sum(bool(e.optimal) for e in res)} of {len(res)}; branch and bound "
          f"per unit: median {np.median(secs):.2f} s, mean {secs.mean():.2f} s, max "
          f"{secs.max():.1f} s, sum {secs.sum():.0f} s")
    print(f"beam {args.beam}: suboptimal on {len(worse)} of {len(res)} units "
          f"({100 * len(worse) / max(len(res), 1):.0f}%)"
          + (f"; score gap mean {gaps.mean():.4f}, max {gaps.max():.4f}; relative mean "
             f"{100 * rel.mean():.2f}%, max {100 * rel.max():.2f}%" if worse else ""))
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            [{"unit": e.unit, "optimal": str(e.formula), "score": e.score,
              "upper_bound": e.optimality.upper_bound, "seconds": e.optimality.seconds,
              "nodes": e.optimality.nodes_expanded,
              "beam": str(e.beam[0][0]) if e.beam else None,
              "beam_score": e.beam[0][1] if e.beam else 0.0} for e in res], indent=1))


if __name__ == "__main__":
    main()
