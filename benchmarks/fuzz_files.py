"""Fuzz the readers: corrupt results, concepts and activations files and read each one.

    python benchmarks/fuzz_files.py                       # 300 files per kind, 5 s timeout
    python benchmarks/fuzz_files.py --per-kind 50 --timeout 3 --seed 1

Each kind of file (written by this version of compexp-core) is corrupted three ways, in
equal shares:

* ``flip``: 1 to 8 random bytes anywhere get a random bit flipped;
* ``zero``: one 4 KiB-aligned block of 4 KiB is zeroed;
* ``trunc``: the file is cut at a random length.

Each corrupted file is read (``load_results``, ``load_concepts``, ``load_activations`` plus
``read_activations_metadata``) by a worker process that reads files one after the other; a
worker that does not answer within the timeout is killed (a **hang**: HDF5 looping while it
decodes corrupt metadata) and one that dies by a signal is a **crash**; either way a fresh
worker takes the next file. An answer is one of

* ``same``: loaded, equal to the original (the corruption hit unused bytes);
* ``differs``: loaded without error but different from the original (silent corruption);
* ``clean``: the documented error (``ValueError``; ``docs/FORMAT.md`` §6) naming the file;
* ``other``: any other exception (a raw ``OSError``, ``KeyError``, ...).

The table gives the counts per kind and mutation. ``tests/test_faults.py`` runs a small,
fixed-seed version of it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from typing import Callable, Optional

KINDS = ("results", "concepts", "activations")
MUTATIONS = ("flip", "zero", "trunc")
OUTCOMES = ("same", "differs", "clean", "other", "crash", "hang")
BLOCK = 4096


# ----------------------------------------------------------------------------- originals

def write_originals(directory: str) -> dict:
    """One file of each kind, typical of what the package writes (small), in ``directory``."""
    import numpy as np

    import compexp_core as cx
    from compexp_core.engine.concepts import ConceptSet
    from compexp_core.io import save_activations, save_concepts

    rng = np.random.default_rng(0)
    names = [f"concept {j}" for j in range(300)]
    masks = rng.random((40, 300, 7, 7)) < 0.02
    masks[:, :20] |= rng.random((40, 20, 7, 7)) < 0.3
    cs = ConceptSet.from_dense(masks, names=names, categories=["object"] * 300)
    acts = rng.random((40, 16, 7, 7)).astype(np.float32)
    paths = {k: os.path.join(directory, f"{k}.h5") for k in KINDS}
    save_concepts(paths["concepts"], cs)
    save_activations(paths["activations"], acts, model="resnet18", layer="layer4",
                     dataset="/data/broden/images.h5",
                     unit_names=[f"unit{u}" for u in range(16)])
    result = cx.search_formulas(acts, cs, max_length=3, beam_size=5, quantile=0.05)
    result.params["acts_path"] = "/data/broden/acts.h5"
    result.params["concepts_path"] = "/data/broden/concepts.h5"
    result.save(paths["results"])
    return paths


def digest(kind: str, path: str) -> str:
    """A digest of what the reader of ``kind`` returns for ``path`` (raises what it raises)."""
    h = hashlib.sha256()
    if kind == "results":
        import compexp_core as cx

        r = cx.load_results(path)
        h.update(repr(list(r)).encode())
        h.update(json.dumps(r.params, sort_keys=True).encode())
    elif kind == "concepts":
        from compexp_core.io import load_concepts

        cs = load_concepts(path)
        h.update(repr((cs.n_samples, cs.grid, cs.names, cs.categories)).encode())
        for a in (cs.arrays.block_ptr, cs.arrays.entry_concept, cs.arrays.entry_words,
                  cs.arrays.full_ptr, cs.arrays.full_concept):
            h.update(a.tobytes())
    else:
        from compexp_core.io import load_activations, read_activations_metadata

        h.update(load_activations(path).tobytes())
        meta = read_activations_metadata(path)
        h.update(repr(sorted((k, str(v)) for k, v in meta.items())).encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------- mutations

def mutate(data: bytes, how: str, rng: random.Random) -> bytes:
    b = bytearray(data)
    if how == "flip":
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif how == "zero":
        start = rng.randrange(max(1, -(-len(b) // BLOCK))) * BLOCK
        b[start:start + BLOCK] = bytes(len(b[start:start + BLOCK]))
    elif how == "trunc":
        del b[rng.randrange(len(b)):]
    else:
        raise ValueError(how)
    return bytes(b)


# ----------------------------------------------------------------------------- the worker

def _worker() -> None:
    """Read ``kind path`` lines from stdin; answer each with a JSON line on stdout."""
    for line in sys.stdin:
        kind, path = line.rstrip("\n").split(" ", 1)
        try:
            out = {"digest": digest(kind, path)}
        except BaseException as e:  # noqa: BLE001 - every exception is an answer
            out = {"error": type(e).__name__, "message": str(e)[:300]}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


class Reader:
    """A worker process reading files one after the other; replaced when it hangs or dies."""

    def __init__(self, timeout: float, env: Optional[dict] = None) -> None:
        self.timeout, self.env, self.proc = timeout, env, None

    def _start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=self.env)
        self.read("results", "")          # wait for the imports (not counted in a timeout)

    def read(self, kind: str, path: str) -> dict:
        if self.proc is None:
            self._start()
        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        try:
            self.proc.stdin.write(f"{kind} {path}\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        timeout = self.timeout if path else 120
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.proc.kill()
            self._end()
            return {"hang": True}
        line = self.proc.stdout.readline()
        if not line:
            return {"crash": self._end()}
        return json.loads(line)

    def _end(self) -> int:
        assert self.proc is not None
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass
        rc = self.proc.wait()
        self.proc = None
        return rc

    def close(self) -> None:
        if self.proc is not None:
            self._end()


def classify(answer: dict, original: str, path: str) -> str:
    if "hang" in answer:
        return "hang"
    if "crash" in answer:
        return "crash"
    if "digest" in answer:
        return "same" if answer["digest"] == original else "differs"
    if answer["error"] in ("ValueError", "FileNotFoundError") and path in answer["message"]:
        return "clean"
    return "other"


def campaign(per_kind: int, seed: int, timeout: float, kinds=KINDS,
             progress: Optional[Callable[[str], None]] = None) -> dict:
    """Run the campaign; returns ``{(kind, mutation): Counter of outcomes}`` and examples of
    ``other``/``crash``/``hang`` outcomes under ``"examples"``."""
    rng = random.Random(seed)
    work = tempfile.mkdtemp(prefix="compexp-fuzz-")
    counts: dict = {}
    examples: list = []
    reader = Reader(timeout)
    try:
        originals = write_originals(work)
        for kind in kinds:
            path = originals[kind]
            with open(path, "rb") as fh:
                data = fh.read()
            original = digest(kind, path)
            for i in range(per_kind):
                how = MUTATIONS[i % len(MUTATIONS)]
                bad = os.path.join(work, f"bad-{kind}-{i}.h5")
                with open(bad, "wb") as fh:
                    fh.write(mutate(data, how, rng))
                answer = reader.read(kind, bad)
                outcome = classify(answer, original, bad)
                counts.setdefault((kind, how), Counter())[outcome] += 1
                if outcome in ("other", "crash", "hang", "differs") and len(examples) < 40:
                    keep = os.path.join(work, f"keep-{kind}-{i}.h5")
                    shutil.copyfile(bad, keep)
                    examples.append((kind, how, outcome, answer, keep))
                os.unlink(bad)
            if progress:
                progress(f"{kind}: done")
    finally:
        reader.close()
    counts["examples"] = examples
    counts["workdir"] = work
    return counts


def table(counts: dict) -> str:
    lines = ["| kind | mutation | files | " + " | ".join(OUTCOMES) + " |",
             "|---|---|---:|" + "---:|" * len(OUTCOMES)]
    total: Counter = Counter()
    for key in sorted(k for k in counts if isinstance(k, tuple)):
        c = counts[key]
        total.update(c)
        lines.append(f"| {key[0]} | {key[1]} | {sum(c.values())} | "
                     + " | ".join(str(c[o]) for o in OUTCOMES) + " |")
    lines.append(f"| all | all | {sum(total.values())} | "
                 + " | ".join(str(total[o]) for o in OUTCOMES) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-kind", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        _worker()
        return
    t = time.perf_counter()
    counts = campaign(args.per_kind, args.seed, args.timeout, args.kinds.split(","),
                      progress=lambda s: print(s, file=sys.stderr))
    print(f"# {time.strftime('%Y-%m-%d')} {platform.node()} Python {platform.python_version()}"
          f" h5py/HDF5 {_versions()}; {time.perf_counter() - t:.0f} s")
    print(table(counts))
    for kind, how, outcome, answer, keep in counts["examples"]:
        print(f"{outcome:7} {kind:11} {how:5} {json.dumps(answer)[:160]}  {keep}")
    if not args.keep:
        shutil.rmtree(counts["workdir"], ignore_errors=True)


def _versions() -> str:
    import h5py

    return f"{h5py.__version__}/{h5py.version.hdf5_version}"


if __name__ == "__main__":
    main()
