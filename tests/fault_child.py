"""The child process of tests/test_faults.py: runs one writer of compexp-core and lets the test
interrupt it, kill it, fill its disk or race it against another process.

    python fault_child.py pause KIND PATH VALUE K [K ...]   # pause at the K-th write, for a signal
    python fault_child.py disk KIND PATH VALUE LIMIT [...]  # write with RLIMIT_FSIZE = LIMIT
    python fault_child.py loop KIND PATH VALUE COUNT        # write COUNT times (racing another)

``pause``: each K is one write of KIND; at its K-th write to disk (an HDF5 driver write, a
quarter of a CSV file, or for ``resumable`` after the K-th batch) the child prints ``PAUSED``
and waits up to ``PAUSE_S`` seconds for the test's SIGINT or SIGKILL. It prints
``INTERRUPTED`` when the write raised KeyboardInterrupt, ``DONE`` when it finished.
``disk``: prints ``WRITEERROR <message>`` or ``DONE`` per limit. Exit status 0 unless
something unexpected happened.
"""
from __future__ import annotations

import os
import resource
import signal
import sys
import time

import numpy as np

PAUSE_S = float(os.environ.get("FAULT_CHILD_PAUSE_S", "1.0"))
KINDS = ("activations", "resumable", "concept sources", "concepts", "images", "results h5",
         "results csv")
N = 64  # samples of the sample-indexed files


def results(v: int):
    import compexp_core as cx
    from compexp_core.engine.formula import Formula
    from compexp_core.engine.results import Explanation

    f = Formula.parse(f'(a OR "b {v}")')
    es = [Explanation(u, f, v / 10, v / 10, Formula.parse("a"), v / 20,
                      beam=((f, v / 10), (Formula.parse("a"), v / 20)), threshold=float(v),
                      by_length=((Formula.parse("a"), v / 20), (f, v / 10)))
          for u in range(200)]
    return cx.SearchResult(es, {"max_length": 2, "value": v, "names": ["a", f"b {v}"]})


def concept_set(v: int):
    from compexp_core.engine.concepts import ConceptSet

    rng = np.random.default_rng(v)
    return ConceptSet.from_dense(rng.random((N, 40, 8, 8)) < 0.3,
                                 names=[f"c{j}" for j in range(40)])


def write(kind: str, path: str, v: int, between_batches=None) -> None:
    """Write a file of ``kind`` holding value ``v`` at ``path``."""
    from compexp_core.io import (save_activations, save_concepts, save_images,
                                 write_concept_sources)
    from compexp_core.io.activations import ActivationsWriter

    if kind == "activations":
        save_activations(path, np.full((N, 8, 8, 8), v, np.float32), chunk_samples=4,
                         unit_names=[f"u{v}.{i}" for i in range(8)])
    elif kind == "resumable":
        with ActivationsWriter(path, n_samples=N, dtype="float32", layer="l", batch_size=8,
                               resumable=True) as w:
            start = w.resume()
            for s in range(start, N, 8):
                w.write(s, np.full((8, 8, 8, 8), v, np.float32))
                if between_batches is not None:
                    between_batches(s // 8 + 1)
            w.finish()
    elif kind == "concept sources":
        write_concept_sources(
            path, n_samples=N, grid=(8, 8), names=["a", "b", f"v{v}"], chunk_samples=4,
            with_index=True, label_maps={"o": (np.full((N, 8, 8), v % 3, np.uint8), [-1, 0, 1])},
            sample_labels=(np.ones((N, 1), bool), [f"v{v}"]))
    elif kind == "concepts":
        save_concepts(path, concept_set(v))
    elif kind == "images":
        save_images(path, np.full((N, 32, 32, 3), v, np.uint8), chunk_samples=4,
                    names=[f"img{v}.{i}" for i in range(N)])
    elif kind in ("results h5", "results csv"):
        results(v).save(path)
    else:
        raise ValueError(kind)


def value_of(kind: str, path: str) -> int:
    """The value a complete file of ``kind`` holds (raises if it is not complete and uniform)."""
    import compexp_core as cx
    from compexp_core.io import load_activations, load_concepts, read_images_metadata

    if kind in ("activations", "resumable"):
        a = load_activations(path)
        assert a.shape[0] == N and (a == a.flat[0]).all(), "a mix"
        return int(a.flat[0])
    if kind == "concept sources":
        names = load_concepts(path).names
        return int(names[2][1:])
    if kind == "concepts":
        cs = load_concepts(path)
        for v in range(10):
            if (cs.sizes == concept_set(v).sizes).all():
                return v
        raise AssertionError("unknown concepts")
    if kind == "images":
        names = read_images_metadata(path)["names"]
        values = {int(n[3:].split(".")[0]) for n in names}
        assert len(values) == 1 and len(names) == N, "a mix"
        return values.pop()
    r = cx.load_results(path)
    values = {e.threshold for e in r}
    assert len(r) == 200 and len(values) == 1 and r.params["value"] == int(values.pop()), "a mix"
    return r.params["value"]


# ----------------------------------------------------------------------------- pausing

def _pause() -> None:
    """Say so and wait for the test's signal (a SIGINT held back inside an HDF5 callback
    ends the wait as soon as it has arrived)."""
    from compexp_core.io import _h5

    print("PAUSED", flush=True)
    seen = _h5._sigint_deferred
    end = time.monotonic() + PAUSE_S
    while time.monotonic() < end and _h5._sigint_deferred == seen:
        time.sleep(0.005)


def pause_at(kind: str, k: int):
    """Arrange for the k-th write of ``kind`` to pause; returns the between-batches hook."""
    from compexp_core.io import _h5

    if kind == "resumable":
        return lambda batch: _pause() if batch == k else None
    if kind == "results csv":
        import pandas as pd

        original = pd.DataFrame.to_csv

        def to_csv(self, fh, **kw):          # write in pieces; pause after the k-th
            text = original(self, None, **kw)
            pieces = [text[i:i + len(text) // 4 + 1] for i in range(0, len(text),
                                                                   len(text) // 4 + 1)]
            for i, piece in enumerate(pieces, 1):
                fh.write(piece)
                fh.flush()
                if i == k:
                    _pause()
        pd.DataFrame.to_csv = to_csv
        return None
    count = [0]

    def hook(guard):
        count[0] += 1
        if count[0] == k:
            _pause()
    _h5._write_hook = hook
    return None


def main(argv: list[str]) -> int:
    mode, kind, path, v = argv[0], argv[1], argv[2], int(argv[3])
    rest = [int(x) for x in argv[4:]]
    if mode == "pause":
        import pandas as pd

        original_to_csv = pd.DataFrame.to_csv
        for k in rest:
            between = pause_at(kind, k)
            try:
                try:
                    write(kind, path, v, between)
                    print("DONE", flush=True)
                except KeyboardInterrupt:
                    print("INTERRUPTED", flush=True)
                finally:
                    from compexp_core.io import _h5

                    _h5._write_hook = None
                    pd.DataFrame.to_csv = original_to_csv
                # a SIGINT held back as the write ended is delivered here (within 10 ms)
                from compexp_core.io import _h5

                end = time.monotonic() + 5
                while (_h5._sigint_pending or _h5._sigint_redelivery) \
                        and time.monotonic() < end:
                    time.sleep(0.005)
                time.sleep(0.05)
            except KeyboardInterrupt:
                print("LATE", flush=True)
        return 0
    if mode == "disk":
        from compexp_core.io._h5 import WriteError

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit fails (EFBIG)
        for limit in rest:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
            try:
                write(kind, path, v)
                print("DONE", flush=True)
            except WriteError as e:
                print("WRITEERROR", str(e).replace("\n", " "), flush=True)
            finally:
                resource.setrlimit(resource.RLIMIT_FSIZE,
                                   (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        return 0
    if mode == "loop":
        for _ in range(rest[0]):
            write(kind, path, v)
        print("DONE", flush=True)
        return 0
    raise ValueError(mode)


if __name__ == "__main__":
    # A process started in the background by a non-interactive shell inherits SIGINT ignored,
    # and Python then installs no KeyboardInterrupt handler: restore it, as a terminal has it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main(sys.argv[1:]))
