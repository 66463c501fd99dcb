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

# Where the package under test was imported from (an installed copy in CI, src/ here).
SRC = os.path.dirname(os.path.dirname(os.path.abspath(cx.__file__)))


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


# ============================================================================ thread count

def _child(code, env_extra=None, timeout=120):
    env = dict(os.environ)
    env.pop("COMPEXP_NUM_THREADS", None)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env["OPENBLAS_NUM_THREADS"] = env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = "1"
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=timeout)


_SETTING = """
    import json
    from compexp_core import _core
    print(json.dumps([_core.default_threads(), _core.max_threads(), _core.thread_setting()]))
"""


@pytest.mark.parametrize("value, meaning", [
    (None, "hardware"), ("99999999999", "cap"), ("99999999999999999999999", "cap"),
    ("abc", "hardware"), ("0", "hardware"), ("-3", "hardware"), ("", "hardware"),
    ("1e3", "hardware"), ("2x", "hardware"), ("-99999999999999999999999", "hardware"),
    ("3", 3), (" 2 ", 2), ("+1", 1), ("100000", "cap"),
])
def test_num_threads_env_is_parsed_with_range_checks(value, meaning):
    r = _child(_SETTING, {} if value is None else {"COMPEXP_NUM_THREADS": value})
    assert r.returncode == 0, r.stderr
    threads, cap, setting = json.loads(r.stdout)
    assert cap == (min(1024, 4 * setting["hardware"]) if setting["hardware"] else 1024)
    assert 1 <= threads <= cap <= 1024
    assert setting["threads"] == threads and setting["cap"] == cap
    assert setting["env"] == value
    if meaning == "hardware":
        assert threads == min(max(setting["hardware"], 1), cap)
        assert setting["source"] == "hardware"
        assert (setting["note"] == "") == (value is None)
    elif meaning == "cap":
        assert threads == cap and "capped" in setting["note"]
    else:
        assert threads == min(meaning, cap) and setting["note"] == ""


# ============================================================================ threads refused

# The child makes every thread stack larger than the address space left (RLIMIT_STACK, which
# glibc takes as the default thread stack size, then RLIMIT_AS), so std::thread cannot start
# (std::system_error). It checks the search and the builder against results computed before
# the limit, with COMPEXP_NUM_THREADS=1000 (capped) asking for as many threads as allowed.
_REFUSED = """
    import os, resource, sys
    import numpy as np
    import compexp_core as cx
    from compexp_core import _core

    threads_fit = int(sys.argv[1])
    rng = np.random.default_rng(3)
    acts = rng.random((40, 6, 4, 4)).astype(np.float32)
    masks = rng.random((40, 5, 8, 8)) < 0.3
    # Thresholds up front: compute_thresholds spreads units over a Python thread pool, which
    # cannot start under the limit either (RuntimeError; engine/units.py, not the kernels).
    kw = dict(max_length=3, beam_size=4, device="cpu", threshold=cx.compute_thresholds(acts))
    expected = [str(e.formula) + repr(e.iou) for e in cx.search_formulas(acts, masks, **kw)]
    cs = cx.ConceptSet.from_dense(masks)

    def vm_bytes():
        for line in open("/proc/self/status"):
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024

    stack = resource.getrlimit(resource.RLIMIT_STACK)[0]
    assert stack >= 1 << 30, stack
    # Room for ordinary allocations (1 GiB) plus threads_fit thread stacks.
    resource.setrlimit(resource.RLIMIT_AS, (vm_bytes() + (1 << 30) + threads_fit * stack + (stack // 2),) * 2)
    try:
        import threading
        t = threading.Thread(target=lambda: None)
        t.start()
        t.join()
        started_python_thread = True
    except RuntimeError:
        started_python_thread = False
    print("python thread started:", started_python_thread, flush=True)
    got = [str(e.formula) + repr(e.iou) for e in cx.search_formulas(acts, masks, **kw)]
    assert got == expected, (got, expected)
    again = cx.ConceptSet.from_dense(masks)
    for f in ("block_ptr", "entry_concept", "entry_words", "full_ptr", "full_concept"):
        assert np.array_equal(getattr(again.arrays, f), getattr(cs.arrays, f)), f
    print("OK", _core.default_threads(), flush=True)
"""


@pytest.mark.parametrize("threads_fit", [0, 1])
def test_kernels_finish_when_threads_cannot_start(threads_fit):
    def limits():
        import resource
        resource.setrlimit(resource.RLIMIT_STACK, (2 << 30, 2 << 30))

    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env["OPENBLAS_NUM_THREADS"] = env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = "1"
    env["COMPEXP_NUM_THREADS"] = "1000"
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(_REFUSED), str(threads_fit)],
                       env=env, capture_output=True, text=True, timeout=300, preexec_fn=limits)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr[-3000:])
    assert "OK" in r.stdout
    if threads_fit == 0:   # the limit is real: not even a Python thread could start
        assert "python thread started: False" in r.stdout
