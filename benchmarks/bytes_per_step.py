"""Host <-> device bytes of a CUDA search, call by call, measured at the binding boundary.

    python benchmarks/bytes_per_step.py [--samples 40 --units 6 --concepts 30 --length 3]

Wraps the DeviceConceptIndex of the CUDA backend and adds up, per call, the bytes of the
host arrays passed in (host -> device) and of the host arrays returned (device -> host);
DeviceMasks handles count 0 (they stay on the device). It fails if any call copies masks back
(``download``) during the search. Also prints the calculation for the reference scale.
Runs on a GPU or on the cudaemu emulator (add CUDAEMU_TRACE=1 to see every kernel launch).
Not counted (inside the C++ of one call): materialize's output pointers ((n_out + 1) x 8 bytes
back) and its launch plans (up), the thresholds kernel's per-unit flags.
"""
from __future__ import annotations

import argparse
import collections

import numpy as np


def nbytes(x) -> int:
    if isinstance(x, np.ndarray):
        return x.nbytes
    if isinstance(x, (tuple, list)):
        return sum(nbytes(v) for v in x)
    return 0


class Recording:
    def __init__(self, index, log):
        self._index = index
        self._log = log

    def __getattr__(self, name):
        attr = getattr(self._index, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            out = attr(*args, **kwargs)
            self._log.append((name, nbytes(args) + nbytes(tuple(kwargs.values())), nbytes(out)))
            return out
        return call


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=40)
    ap.add_argument("--units", type=int, default=6)
    ap.add_argument("--concepts", type=int, default=30)
    ap.add_argument("--length", type=int, default=3)
    ap.add_argument("--beam", type=int, default=5)
    args = ap.parse_args()

    import compexp_core as cx
    from compexp_core.engine import backends

    log: list = []
    orig = backends.CudaBackend.prepare
    backends.CudaBackend.prepare = lambda self, cs: Recording(orig(self, cs), log)
    try:
        rng = np.random.default_rng(0)
        acts = rng.standard_normal((args.samples, args.units, 4, 4)).astype(np.float32)
        masks = rng.random((args.samples, args.concepts, 8, 8)) < 0.2
        res = cx.search_formulas(acts, masks, max_length=args.length, beam_size=args.beam,
                                 quantile=0.05, device="cuda")
    finally:
        backends.CudaBackend.prepare = orig
    assert not any(name == "download" for name, _, _ in log), "masks were copied back during the search"
    per = collections.OrderedDict()
    for name, up, down in log:
        c = per.setdefault(name, [0, 0, 0])
        c[0] += 1
        c[1] += up
        c[2] += down
    K = args.concepts
    print(f"search: {args.samples} samples, {args.units} units, K = {K}, length {args.length}, "
          f"beam {args.beam} on {res.params['device']}")
    print("| call | calls | host -> device bytes | device -> host bytes |\n|---|---:|---:|---:|")
    for name, (n, up, down) in per.items():
        print(f"| {name} | {n} | {up:,} | {down:,} |")
    ext = [(up, down) for name, up, down in log if name == "extension_counts"]
    for step, (up, down) in enumerate(ext, start=2):
        n_formulas = up // 8
        print(f"step {step}: {n_formulas} beam formulas: f and g back = {down:,} bytes "
              f"(= 2 x 8 x {n_formulas} x {K} = {2 * 8 * n_formulas * K:,}) + 3 work counters "
              f"(24 bytes); unit_of up = {up:,} bytes")
    n_ref = 512 * 5
    ref = 2 * 8 * n_ref * 1290
    print(f"reference scale (512 units x beam 5 = {n_ref} formulas, K = 1,290): f and g = 2 x 8 x "
          f"{n_ref} x 1290 = {ref:,} bytes = {ref / 2**20:.1f} MiB per step (int32 would halve it: "
          f"{ref // 2:,})")


if __name__ == "__main__":
    main()
