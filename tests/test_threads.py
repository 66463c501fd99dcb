"""Threads: the concept-set builder fed from several Python threads, the kernels' thread count
(COMPEXP_NUM_THREADS) and kernels that cannot start all their threads.

* ``ConceptSetBuilder`` (and the C++ ``_core.ConceptIndexBuilder`` under it) accepts add_*
  calls from several threads at once and builds exactly the single-threaded index; after the
  build, add_* raises instead of crashing;
* ``COMPEXP_NUM_THREADS`` is parsed with full range checks: a huge value is capped at
  ``_core.max_threads()``, a value that is not a whole number >= 1 is ignored;
* a kernel whose threads the system refuses (here: RLIMIT_AS smaller than the thread stacks)
  finishes its work on the threads it has, with the correct result, instead of aborting.
"""
import json
import os
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import compexp_core as cx
from compexp_core import _core

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


def _same_arrays(a, b):
    for field in ("block_ptr", "entry_concept", "entry_words", "full_ptr", "full_concept"):
        x, y = getattr(a.arrays, field), getattr(b.arrays, field)
        assert x.dtype == y.dtype and x.shape == y.shape, field
        np.testing.assert_array_equal(x, y, err_msg=field)
    np.testing.assert_array_equal(a.sizes, b.sizes)


# ============================================================================ builder threads

def test_builder_label_maps_from_threads_equal_single_threaded():
    # The audit's repro: 8 threads, each adding 500 samples (it segfaulted 8 runs of 8).
    lab = np.random.default_rng(0).integers(0, 51, size=(4000, 1, 16, 16)).astype(np.int32)
    names = [f"c{j}" for j in range(50)]
    serial = cx.ConceptSetBuilder(4000, (16, 16), names)
    serial.add_label_maps(lab, np.arange(-1, 50))
    expected = serial.build()
    for _ in range(3):
        b = cx.ConceptSetBuilder(4000, (16, 16), names)
        ts = [threading.Thread(target=b.add_label_maps, args=(lab[s:s + 500], np.arange(-1, 50)),
                               kwargs={"sample_offset": s}) for s in range(0, 4000, 500)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        _same_arrays(b.build(), expected)


def test_builder_mixed_sources_from_a_thread_pool_equal_single_threaded():
    # Label maps, dense masks and sample labels in small chunks, overlapping (the same cells
    # from several sources: OR-ed), submitted in a shuffled order to 8 worker threads.
    rng = np.random.default_rng(1)
    n, grid, k = 600, (7, 9), 12          # 63 cells a sample: samples straddle blocks
    names = [f"c{j}" for j in range(k)]
    lab = rng.integers(0, 9, size=(n, 2, *grid)).astype(np.int32)
    mapping = np.array([-1, 0, 1, 2, 3, 4, 5, -1, 6])
    dense = rng.random((n, 3, *grid)) < 0.3
    dense_concepts = [4, 7, 8]
    present = rng.random((n, 4)) < 0.4
    present[100:300, 1] = True            # long runs: full blocks
    label_concepts = [9, 10, 0, 11]

    calls = []
    for s in range(0, n, 37):
        calls.append(("label_maps", s, lab[s:s + 37]))
    for s in range(0, n, 53):
        calls.append(("dense", s, dense[s:s + 53]))
    for s in range(0, n, 29):
        calls.append(("sample_labels", s, present[s:s + 29]))

    def add(b, call):
        kind, s, x = call
        if kind == "label_maps":
            b.add_label_maps(x, mapping, sample_offset=s)
        elif kind == "dense":
            b.add_dense(x, dense_concepts, sample_offset=s)
        else:
            b.add_sample_labels(x, label_concepts, sample_offset=s)

    serial = cx.ConceptSetBuilder(n, grid, names)
    for call in calls:
        add(serial, call)
    expected = serial.build()
    for seed in range(3):
        order = np.random.default_rng(seed).permutation(len(calls))
        b = cx.ConceptSetBuilder(n, grid, names)
        with ThreadPoolExecutor(8) as pool:
            for f in [pool.submit(add, b, calls[i]) for i in order]:
                f.result()
        _same_arrays(b.build(), expected)


def test_core_builder_refuses_data_after_finish():
    b = _core.ConceptIndexBuilder(4, 2, 2, 3)
    b.add_dense(np.ones((4, 1, 2, 2), np.uint8), 0, np.array([0], np.int32))
    b.finish()
    with pytest.raises(RuntimeError, match="already finished"):
        b.add_dense(np.ones((4, 1, 2, 2), np.uint8), 0, np.array([0], np.int32))
    with pytest.raises(RuntimeError, match="already finished"):
        b.add_label_maps(np.ones((4, 1, 2, 2), np.int32), 0, np.array([-1, 0], np.int32))
    with pytest.raises(RuntimeError, match="already finished"):
        b.add_sample_labels(np.ones((4, 1), np.uint8), 0, np.array([0], np.int32))
    with pytest.raises(RuntimeError, match="already finished"):
        b.finish()


def test_builder_build_while_threads_add():
    # Threads keep adding while another builds: every add either lands before the build or
    # raises RuntimeError; build happens once; nothing crashes.
    lab = np.random.default_rng(2).integers(0, 6, size=(64, 1, 8, 8)).astype(np.int32)
    for _ in range(5):
        b = cx.ConceptSetBuilder(64, (8, 8), [f"c{j}" for j in range(5)])
        errors, builds = [], []

        def adder():
            for rep in range(50):
                s = (rep * 8) % 64
                try:
                    b.add_label_maps(lab[s:s + 8], np.arange(-1, 5), sample_offset=s)
                except RuntimeError as e:
                    errors.append(str(e))
                    return

        def builder():
            try:
                builds.append(b.build())
            except RuntimeError as e:
                errors.append(str(e))

        ts = [threading.Thread(target=adder) for _ in range(4)] + \
             [threading.Thread(target=builder) for _ in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert len(builds) == 1
        assert all("already built" in e for e in errors), errors
        with pytest.raises(RuntimeError, match="already built"):
            b.add_label_maps(lab[:8], np.arange(-1, 5))
        with pytest.raises(RuntimeError, match="already built"):
            b.build()
