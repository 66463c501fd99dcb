"""GPU benchmark: the reference-scale search on one GPU against the CPU, from the same inputs.

    python benchmarks/bench_cuda.py                          # reference scale, all sections
    python benchmarks/bench_cuda.py --scale 0.1 --sections kernel

Needs a CUDA build of compexp_core (nvcc at install time) and a visible GPU; without them it
stops at once with a message saying which is missing.

Sections (one workload, generated once per scale by broden_workload.py and cached under
--data-dir; the default is the issue's reference scale: 22,210 images of 112x112, ~1,290
concepts, 512 units, quantile 0.005):
  kernel  the fused extension kernel alone on a realistic input (each unit's beam = its
          --beam best single concepts, all --units units at once): median of --repeats runs
          timed with CUDA events, the bytes of concept blocks it touches per second against
          the device-to-device copy bandwidth measured in the same run (cudaMemcpy timed with
          CUDA events, bytes read + written), and the CPU kernel on the same inputs (ratio).
  engine  whole layer end to end from the HDF5 files (concept index, GPU upload, thresholds,
          upsampling, search) on the GPU and on the CPU, each in its own process, for
          (length, beam) in --configs (default: 3x5, 10x5, 3x10): wall times, phases, ratio,
          and whether both found identical formulas and IoUs; with a GPU torch can see, also
          from the activations as a torch CUDA tensor ("cuda-acts": thresholds and unit masks
          on the GPU, no host copy), --device-acts.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def require_gpu() -> str:
    """Description of GPU 0, or SystemExit with what is missing."""
    import compexp_core as cx

    if not cx.cuda_compiled():
        raise SystemExit("bench_cuda: this build of compexp_core has no CUDA backend "
                         "(compexp_core._cuda): reinstall with the CUDA toolkit (nvcc on PATH).")
    if not cx.cuda_available():
        raise SystemExit("bench_cuda: no CUDA GPU is visible (compexp_core.num_gpus() == 0): run it "
                         "on a machine with a GPU and a driver (check CUDA_VISIBLE_DEVICES).")
    from compexp_core import _cuda

    return _cuda.device_description(0)


def _engine_child(d: str, length: int, beam: int, device: str, out) -> None:
    """One end-to-end run from the files, in its own process."""
    import compexp_core as cx

    t0 = time.perf_counter()
    cs = cx.load_concepts(f"{d}/concepts.h5")
    t_index = time.perf_counter() - t0
    acts = cx.open_activations(f"{d}/acts.h5")
    if device == "cuda-acts":
        # Activations already on the GPU (a torch CUDA tensor): thresholds and unit masks are
        # computed there; the read and the upload are timed in total_s.
        import torch

        acts = torch.from_numpy(np.asarray(acts[:])).to("cuda:0")
        torch.cuda.synchronize()
        device = "cuda"
    res = cx.search_formulas(acts, cs, max_length=length, beam_size=beam, device=device)
    out.put({"index_s": t_index, "total_s": time.perf_counter() - t0, "stats": res.stats,
             "iou": [e.iou for e in res], "formulas": [str(e.formula) for e in res],
             "P": cs.n_cells, "K": cs.n_concepts})


def run_engine(d: Path, length: int, beam: int, device: str) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_engine_child, args=(str(d), length, beam, device, q))
    p.start()
    r = q.get()
    p.join()
    if p.exitcode != 0:
        raise RuntimeError(f"the {device} engine run failed (exit code {p.exitcode})")
    return r


def section_kernel(args, d: Path) -> None:
    import compexp_core as cx
    from compexp_core import _core
    from compexp_core.engine.backends import get_backend
    from compexp_core.engine.beam import metric_values
    from compexp_core.engine.masks import MaskSet
    from compexp_core.engine.units import compute_thresholds, unit_masks

    cs = cx.load_concepts(f"{d}/concepts.h5")
    acts = cx.open_activations(f"{d}/acts.h5")
    ids = np.arange(min(args.units, acts.shape[1]))
    t = time.perf_counter()
    umasks = unit_masks(acts, ids, cs.grid, compute_thresholds(acts, 0.005, ids))
    t_masks = time.perf_counter() - t
    # Each unit's beam: its `beam` best single concepts by IoU (the first extension step's input).
    cpu = get_backend("cpu")
    cpu_index = cpu.prepare(cs)
    prim = cpu.primitive_counts(cpu_index, umasks)
    usize = umasks.popcounts()
    iou = metric_values("iou", prim, cs.sizes[None, :], usize[:, None])
    top = np.argsort(-iou, axis=1, kind="stable")[:, :args.beam]
    unit_of = np.repeat(np.arange(ids.size), args.beam)
    concept = top.ravel().astype(np.int32)
    formulas = cpu.materialize(cpu_index, MaskSet.empty(0), np.zeros(concept.size, np.int64),
                               np.full(concept.size, _core.OP_LEAF, np.int32), concept)
    touched = int(cs.block_entry_counts[formulas.block].sum()) * (8 * _core.BLOCK_WORDS + 4)

    t = time.perf_counter()
    cuda = get_backend("cuda")
    gpu = cuda.prepare(cs)
    t_upload = time.perf_counter() - t
    bw = gpu.copy_bandwidth(args.copy_bytes, args.repeats)
    ms = np.array(gpu.time_extension_counts(formulas.arrays(), unit_of, umasks.arrays(), args.repeats))
    # Equality and the CPU side on the same inputs.
    f_gpu, g_gpu, _ = cuda.extension_counts(gpu, formulas, unit_of, umasks)
    cpu_times = []
    for _ in range(args.cpu_repeats):
        t = time.perf_counter()
        f_cpu, g_cpu, _ = cpu.extension_counts(cpu_index, formulas, unit_of, umasks)
        cpu_times.append(time.perf_counter() - t)
    same = bool((f_gpu == f_cpu).all() and (g_gpu == g_cpu).all())
    args.all_identical &= same
    t_gpu = float(np.median(ms)) * 1e-3
    t_cpu = float(np.median(cpu_times))
    kbw = touched / t_gpu
    print(f"\n## kernel: fused extension counts, {ids.size} units x beam {args.beam} = {concept.size} "
          f"formulas x {cs.n_concepts} concepts (P = {cs.n_cells:,} cells)")
    print(f"(unit masks {t_masks:.1f} s on the CPU; index upload {t_upload:.2f} s, "
          f"{gpu.nbytes / 2**20:.0f} MiB on the GPU)")
    print(f"GPU counts equal CPU counts: {same}")
    print("| | GPU | CPU |\n|---|---:|---:|")
    print(f"| kernel ms (median of {args.repeats} GPU / {args.cpu_repeats} CPU runs) | "
          f"{1e3 * t_gpu:.2f} (min {ms.min():.2f}, max {ms.max():.2f}) | {1e3 * t_cpu:.1f} |")
    print(f"| concept blocks touched, GB/s | {kbw / 1e9:.0f} | {touched / t_cpu / 1e9:.1f} |")
    print(f"| device-to-device copy bandwidth, GB/s (read + written) | {bw / 1e9:.0f} | |")
    print(f"| kernel as % of copy bandwidth | {100 * kbw / bw:.0f}% | |")
    print(f"| GPU vs CPU | {t_cpu / t_gpu:.0f}x | |")


def section_engine(args, d: Path) -> None:
    print(f"\n## engine: whole layer end to end from HDF5 (scale {args.scale}, {args.units} units)")
    print("| length | beam | device | total s | index s | upload s | thresholds s | unit masks s | "
          "search s | extension kernel s | identical to CPU |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for length, beam in args.configs:
        devs = ("cuda", "cuda-acts", "cpu") if args.device_acts else ("cuda", "cpu")
        runs = {dev: run_engine(d, length, beam, dev) for dev in devs}
        same = all(runs[g]["formulas"] == runs["cpu"]["formulas"] and runs[g]["iou"] == runs["cpu"]["iou"]
                   for g in devs if g != "cpu")
        args.all_identical &= same
        for dev, r in runs.items():
            s = r["stats"]["seconds"]
            search = s["primitive_counts"] + s["extension_counts"] + s["materialize"] + s["driver"]
            print(f"| {length} | {beam} | {dev} | {r['total_s']:.1f} | {r['index_s']:.1f} | "
                  f"{s.get('index_upload', 0.0):.2f} | {s['thresholds']:.1f} | {s['unit_masks']:.1f} | "
                  f"{search:.1f} | {s['extension_counts']:.2f} | {same if dev != 'cpu' else ''} |", flush=True)
        print(f"  GPU vs CPU (end to end): {runs['cpu']['total_s'] / runs['cuda']['total_s']:.1f}x; "
              f"GPU phases {({k: round(v, 2) for k, v in runs['cuda']['stats']['seconds'].items()})}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--units", type=int, default=512)
    ap.add_argument("--beam", type=int, default=5, help="beam of the kernel section")
    ap.add_argument("--configs", default="3x5,10x5,3x10", help="length x beam pairs of the engine section")
    ap.add_argument("--repeats", type=int, default=50, help="timed GPU kernel runs (median)")
    ap.add_argument("--cpu-repeats", type=int, default=3, help="timed CPU kernel runs (median)")
    ap.add_argument("--sections", default="kernel,engine")
    ap.add_argument("--data-dir", type=Path, default=Path("/tmp/compexp-bench"))
    ap.add_argument("--copy-bytes", type=int, default=1 << 30, help="bytes per timed device copy")
    ap.add_argument("--device-acts", choices=("auto", "yes", "no"), default="auto",
                    help="also run the engine from activations already on the GPU (a torch CUDA "
                         "tensor); auto: when torch sees a GPU")
    ap.add_argument("--strict", action="store_true",
                    help="exit with status 1 unless every GPU result equals the CPU's")
    args = ap.parse_args()
    args.all_identical = True
    try:
        args.configs = [tuple(int(x) for x in c.split("x")) for c in args.configs.split(",")]
    except ValueError:
        ap.error(f"--configs must look like 3x5,10x5; got {args.configs!r}")
    gpu_name = require_gpu()
    if args.device_acts == "auto":
        try:
            import torch

            args.device_acts = "yes" if torch.cuda.is_available() else "no"
        except ImportError:
            args.device_acts = "no"
    args.device_acts = args.device_acts == "yes"
    from bench_search import workload

    import compexp_core as cx

    print(f"# bench_cuda {time.strftime('%Y-%m-%d')}: GPU {gpu_name}; host {platform.machine()}, "
          f"{os.cpu_count()} cores, CPU kernels {cx.backend_info()['cpu_simd']}")
    print(f"command: python benchmarks/bench_cuda.py {' '.join(sys.argv[1:])}")
    d = workload(args.data_dir, args.scale, args.units)
    sections = args.sections.split(",")
    if "kernel" in sections:
        section_kernel(args, d)
    if "engine" in sections:
        section_engine(args, d)
    print(f"\nall GPU results identical to the CPU's: {args.all_identical}")
    if args.strict and not args.all_identical:
        sys.exit(1)


if __name__ == "__main__":
    main()
