"""Faults that reach users through the files: what the package promises on failure
(docs/FORMAT.md, "Guarantees").

* every writer, interrupted by a real SIGINT or SIGKILL in a child process mid-write, or
  meeting a full disk (RLIMIT_FSIZE), fails cleanly: no crash, the previous file byte for byte
  intact, no temporary file left (SIGKILL: a hidden temporary file that no reader accepts);
* two processes writing the same path: the last complete write wins, never a mix;
* ``search_formulas`` from 8 threads at once gives the single-threaded results;
* results files: NumPy parameters save; CSV keeps every text column text; truncated or
  incomplete files (CSV and HDF5) are refused; bad or input output paths are refused before a
  search starts; concept names with NUL are refused early;
* corrupt files (byte flips, zeroed blocks, truncations) are refused with ValueError, without
  hanging (the files hold no variable-length strings, which HDF5 keeps in its global heap,
  where a corrupt block makes it loop forever) and without crashing.

Injected exceptions inside every writer are in tests/test_atomic_writes.py.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import compexp_core as cx
import fault_child
from compexp_core.engine.concepts import ConceptSet
from compexp_core.engine.formula import Formula, Leaf, Or
from compexp_core.engine.results import Explanation
from compexp_core.io import _h5, load_concepts, save_activations, save_images
from compexp_core.io.results import check_output_path

CHILD = str(Path(__file__).with_name("fault_child.py"))
SRC = str(Path(cx.__file__).resolve().parents[1])
KINDS = fault_child.KINDS


def _env(**extra):
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join([SRC] + [p for p in
                                                 env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def _path(tmp_path, kind):
    return tmp_path / ("out.csv" if kind.endswith("csv") else "out.h5")


def _written(tmp_path, kind, v):
    """``tmp_path/out.*`` written with value ``v`` (in this process); its bytes."""
    path = _path(tmp_path, kind)
    fault_child.write(kind, str(path), v)
    return path, path.read_bytes()


def _temporary_files(tmp_path, keep=()):
    return sorted(n for n in os.listdir(tmp_path) if n not in keep)


# ----------------------------------------------------------------------------- SIGINT

@pytest.mark.parametrize("kind", KINDS)
def test_sigint_mid_write(tmp_path, kind):
    """A real Ctrl-C at the 1st, 3rd and 8th write to disk (CSV: 1st to 3rd quarter; the
    extraction writer: 2nd and 5th batch; for HDF5 files: inside HDF5's
    write callback, where it is held back until the callback has returned): the write stops
    (KeyboardInterrupt) and the previous file is intact, or, when the rest of the write
    took less time than that, the write completes and the interrupt follows at once; never
    a crash, a swallowed signal or a half file."""
    path, before = _written(tmp_path, kind, 1)
    ks = {"resumable": ["2", "5"], "results csv": ["1", "2", "3"]}.get(kind, ["1", "3", "8"])
    with subprocess.Popen([sys.executable, CHILD, "pause", kind, str(path), "2"] + ks,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=_env(FAULT_CHILD_PAUSE_S="10")) as proc:
        outcomes = []
        for line in proc.stdout:
            line = line.strip()
            if line == "PAUSED":
                proc.send_signal(signal.SIGINT)
            else:
                outcomes.append(line)
        stderr = proc.stderr.read()
    assert proc.wait(timeout=60) == 0, stderr[-2000:]
    assert "Exception ignored" not in stderr and "Traceback" not in stderr, stderr[-2000:]
    results = [o for o in outcomes if o != "LATE"]
    assert len(results) == len(ks) and set(results) <= {"INTERRUPTED", "DONE"}, outcomes
    # the signal is never swallowed: a write that completed is followed by the interrupt
    assert outcomes.count("DONE") == outcomes.count("LATE"), outcomes
    if "DONE" not in results:
        assert path.read_bytes() == before             # byte for byte
    assert fault_child.value_of(kind, str(path)) in (1, 2)  # one complete version
    # a resumable write keeps its partial file for a later run; nothing else remains
    assert _temporary_files(tmp_path, {path.name, path.name + ".partial"}) == []
    if kind == "resumable":
        fault_child.write(kind, str(path), 2)          # resumes, and finishes
        assert fault_child.value_of(kind, str(path)) == 2
        assert _temporary_files(tmp_path) == [path.name]


def test_sigint_between_extraction_batches_resumes(tmp_path):
    """Ctrl-C while the model runs between two batches (outside HDF5): the partial file keeps
    the batches done, and the next run resumes from them."""
    path, before = _written(tmp_path, "resumable", 1)
    with subprocess.Popen([sys.executable, CHILD, "pause", "resumable", str(path), "3", "4"],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                          env=_env(FAULT_CHILD_PAUSE_S="10")) as proc:
        outcomes = []
        for line in proc.stdout:
            if line.strip() == "PAUSED":
                proc.send_signal(signal.SIGINT)
            else:
                outcomes.append(line.strip())
    assert proc.wait(timeout=60) == 0 and outcomes == ["INTERRUPTED"]
    assert path.read_bytes() == before
    with h5py.File(str(path) + ".partial") as f:
        assert f.attrs["n_done"] == 32 and f.attrs["format"] == b"compexp-activations-partial"
    with pytest.raises(ValueError, match="not a compexp-activations file"):
        cx.io.load_activations(str(path) + ".partial")


# ----------------------------------------------------------------------------- SIGKILL

@pytest.mark.parametrize("kind", KINDS)
def test_sigkill_mid_write(tmp_path, kind):
    """SIGKILL mid-write: no cleanup can run, so a hidden temporary file may remain, but the
    previous file is byte for byte intact and the half-written file is refused by every
    reader (it is not loadable as if complete)."""
    path, before = _written(tmp_path, kind, 1)
    k = {"resumable": "3", "results csv": "2"}.get(kind, "4")
    with subprocess.Popen([sys.executable, CHILD, "pause", kind, str(path), "2", k],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                          env=_env(FAULT_CHILD_PAUSE_S="60")) as proc:
        assert proc.stdout.readline().strip() == "PAUSED"
        proc.kill()
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert path.read_bytes() == before
    left = _temporary_files(tmp_path, {path.name})
    assert len(left) <= 1, left
    for name in left:
        assert name.startswith("." + path.name) or name == path.name + ".partial"
        half = tmp_path / ("half" + path.suffix)
        shutil.copyfile(tmp_path / name, half)
        with pytest.raises(ValueError):
            fault_child.value_of(kind, str(half))
    if kind == "resumable":                            # resumes from the batches done
        fault_child.write(kind, str(path), 2)
        assert fault_child.value_of(kind, str(path)) == 2


# ----------------------------------------------------------------------------- full disk

@pytest.mark.parametrize("kind", KINDS)
def test_full_disk(tmp_path, kind):
    """Writes that hit the file size limit (a full disk, simulated with RLIMIT_FSIZE: writes
    past it fail with EFBIG) early, midway and at the very end (HDF5's final flush, where
    HDF5 used to crash the interpreter at exit) raise WriteError naming the file; the child
    exits normally, the previous file is intact, no temporary file remains."""
    (tmp_path / "probe").mkdir()
    size = len(_written(tmp_path / "probe", kind, 2)[1])     # the size of the new file
    shutil.rmtree(tmp_path / "probe")
    path, before = _written(tmp_path, kind, 1)
    limits = [str(x) for x in (512, size // 3, size - 1)]
    proc = subprocess.run([sys.executable, CHILD, "disk", kind, str(path), "2"] + limits,
                          capture_output=True, text=True, env=_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]          # no crash (at exit either)
    assert "Exception ignored" not in proc.stderr, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == len(limits), lines
    for line in lines:
        assert line.startswith("WRITEERROR"), lines
        assert f"cannot write '{path}'" in line and "the disk is full or the file is too " \
                                                     "large" in line
    assert path.read_bytes() == before
    keep = {path.name, path.name + ".partial"} if kind == "resumable" else {path.name}
    assert _temporary_files(tmp_path, keep) == []


# ----------------------------------------------------------------------------- concurrency

@pytest.mark.parametrize("kind", ["results h5", "results csv", "activations"])
def test_two_processes_writing_one_path(tmp_path, kind):
    """Two processes write the same path 25 times each, at once, while this process reads
    it: every read and the final file are one complete write (last writer wins), never a
    mix, and no temporary file remains."""
    path = _path(tmp_path, kind)
    fault_child.write(kind, str(path), 1)
    procs = [subprocess.Popen([sys.executable, CHILD, "loop", kind, str(path), str(v), "25"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=_env()) for v in (2, 3)]
    seen = set()
    while any(p.poll() is None for p in procs):
        seen.add(fault_child.value_of(kind, str(path)))
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0 and out.strip() == "DONE", err[-2000:]
    assert fault_child.value_of(kind, str(path)) in (2, 3)
    assert seen <= {1, 2, 3}
    assert _temporary_files(tmp_path, {path.name}) == []


def test_search_from_eight_threads(tmp_path):
    """search_formulas called from 8 threads at once on shared concept sets and activations
    gives exactly the single-threaded results."""
    rng = np.random.default_rng(0)
    masks = rng.random((300, 24, 6, 6)) < 0.2
    cs = ConceptSet.from_dense(masks, names=[f"c{j}" for j in range(24)])
    acts = rng.random((300, 6, 3, 3)).astype(np.float32)
    save_activations(tmp_path / "a.h5", acts)
    kw = dict(max_length=3, beam_size=4)
    expected = [list(cx.search_formulas(acts, cs, **kw)),
                list(cx.search_formulas(str(tmp_path / "a.h5"), cs, **kw))]
    assert expected[0] == expected[1]
    out = [None] * 8
    errors = []
    barrier = threading.Barrier(8)

    def run(i):
        try:
            barrier.wait()
            src = acts if i % 2 else str(tmp_path / "a.h5")
            out[i] = list(cx.search_formulas(src, cs, **kw))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(o == expected[0] for o in out)


# ----------------------------------------------------------------------------- results files

def _search(quantile=0.05):
    rng = np.random.default_rng(1)
    masks = rng.random((60, 5, 4, 4)) < 0.3
    acts = rng.random((60, 3, 4, 4)).astype(np.float32)
    return cx.search_formulas(acts, masks, names=["a", "b", "c", "d", "e"], max_length=2,
                              quantile=quantile)


@pytest.mark.parametrize("ext", [".h5", ".csv"])
def test_numpy_parameters_save(tmp_path, ext):
    r = _search(quantile=np.float32(0.01))
    r.params["extra"] = {"n": np.int64(3), "v": np.arange(2), "p": tmp_path}
    r.save(tmp_path / f"q{ext}")
    back = cx.load_results(tmp_path / f"q{ext}")
    assert list(back) == list(r)
    assert back.params["quantile"] == float(np.float32(0.01))
    assert back.params["extra"] == {"n": 3, "v": [0, 1], "p": str(tmp_path)}


@pytest.mark.parametrize("ext", [".h5", ".csv"])
def test_a_failing_save_keeps_the_previous_file(tmp_path, ext):
    path = tmp_path / f"q{ext}"
    _search().save(path)
    before = path.read_bytes()
    r = _search()
    r.params["bad"] = object()
    with pytest.raises(TypeError, match="search parameters cannot be saved.*object"):
        r.save(path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == [path.name]


def _results_with_names(names):
    es = []
    for i, name in enumerate(names):
        other = names[(i + 1) % len(names)]
        f = Leaf(name) if other == name else Or(Leaf(name), Leaf(other))
        es.append(Explanation(i, f, 0.5, 0.5, Leaf(name), 0.25, beam=((f, 0.5),),
                              threshold=0.1, by_length=((Leaf(name), 0.25),)))
    return cx.SearchResult(es, {"names": list(names)})


NUMBER_LIKE = ["007", "1e5", "1.50", "-0", "+3", "nan", "NaN", "NA", "N/A", "#N/A", "None",
               "null", "True", "false", "inf", "-inf", "", " ", "  x ", "0x1F", "1_000", "٣"]


@pytest.mark.parametrize("ext", [".csv", ".h5"])
def test_names_that_look_like_numbers_round_trip(tmp_path, ext):
    r = _results_with_names(NUMBER_LIKE)
    r.save(tmp_path / f"r{ext}")
    back = cx.load_results(tmp_path / f"r{ext}")
    assert list(back) == list(r)
    assert [e.primitive.name for e in back] == NUMBER_LIKE


@pytest.mark.parametrize("names", [["007"], ["1e5", "1.50"], ["-0", "+3"], ["0x1F"],
                                   ["nan", "NA", "None", "null"], ["True", "False"], [""],
                                   ["inf", "-inf"]])
def test_names_that_all_look_like_numbers_round_trip(tmp_path, names):
    """A column made only of such names is not turned into numbers or missing values."""
    r = _results_with_names(names)
    r.save(tmp_path / "r.csv")
    back = cx.load_results(tmp_path / "r.csv")
    assert [str(e.formula) for e in back] == [str(e.formula) for e in r]
    assert [e.primitive.name for e in back] == names


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                        max_size=12), min_size=1, max_size=5, unique=True))
def test_any_name_round_trips_through_csv(tmp_path, names):
    r = _results_with_names(names)
    path = tmp_path / "r.csv"
    r.save(path)
    back = cx.load_results(path)
    assert list(back) == list(r)


def test_truncated_csv_is_refused(tmp_path):
    path = tmp_path / "r.csv"
    _search().save(path)
    data = path.read_bytes()
    bad = tmp_path / "cut.csv"
    cuts = sorted(set(range(0, len(data) - 1, max(1, len(data) // 97)))
                  | {int(len(data) * 0.9)} | {i + 1 for i, b in enumerate(data) if b == 10})
    for cut in cuts:
        if cut >= len(data) - 1:          # complete (perhaps without the final newline)
            continue
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError) as info:
            cx.load_results(bad)
        assert str(bad) in str(info.value), cut
    bad.write_bytes(data[:-1])
    assert list(cx.load_results(bad)) == list(cx.load_results(path))


def test_truncated_or_incomplete_h5_is_refused(tmp_path):
    path = tmp_path / "r.h5"
    _search().save(path)
    data = path.read_bytes()
    for cut in range(0, len(data), max(1, len(data) // 53)):
        (tmp_path / "cut.h5").write_bytes(data[:cut])
        with pytest.raises(ValueError, match="cut.h5"):
            cx.load_results(tmp_path / "cut.h5")
    # a dataset shorter than the others (an incomplete copy made by some other tool)
    with h5py.File(path, "a") as f:
        iou = f["iou"][()]
        del f["iou"]
        f["iou"] = iou[:-1]
    with pytest.raises(ValueError, match="incomplete or corrupt: dataset 'iou' has"):
        cx.load_results(path)


def test_old_results_files_still_load(tmp_path):
    """Files written before the row count, the params dataset and fixed-length strings."""
    r = _search()
    old = tmp_path / "old.h5"
    string = h5py.string_dtype("utf-8")
    with h5py.File(old, "w") as f:
        f.attrs["format"] = "compexp-results"
        f.attrs["version"] = 1
        f.attrs["params"] = json.dumps(r.params)
        f["unit"] = np.array([e.unit for e in r], np.int64)
        f.create_dataset("formula", data=[str(e.formula or "") for e in r], dtype=string)
        f["iou"] = np.array([e.iou for e in r])
        f["score"] = np.array([e.score for e in r])
        f.create_dataset("primitive", data=[str(e.primitive or "") for e in r], dtype=string)
        f["primitive_iou"] = np.array([e.primitive_iou for e in r])
        width = max(len(e.beam) for e in r)
        f.create_dataset("beam_formula", dtype=string, data=[
            [str(fm) for fm, _ in e.beam] + [""] * (width - len(e.beam)) for e in r])
        f["beam_score"] = np.array([[s for _, s in e.beam] + [np.nan] * (width - len(e.beam))
                                    for e in r])
    back = cx.load_results(old)
    assert [(e.unit, e.formula, e.iou, e.beam) for e in back] == \
        [(e.unit, e.formula, e.iou, e.beam) for e in r]
    assert back.params == json.loads(json.dumps(r.params))
    csv = tmp_path / "old.csv"
    r.save(csv)
    lines = csv.read_text().splitlines()
    header = json.loads(lines[0][2:])
    del header["rows"]
    rows = [line.rsplit(",", 1)[0] for line in lines[1:]]   # drop the row column
    csv.write_text("# " + json.dumps(header) + "\n" + "\n".join(rows) + "\n")
    assert list(cx.load_results(csv)) == list(r)


def test_nul_and_invalid_names_are_refused_early():
    masks = np.zeros((4, 2), bool)
    for bad in (["a\x00b", "c"], ["\ud800", "c"]):
        with pytest.raises(ValueError, match="NUL|valid Unicode"):
            cx.search_formulas(masks[:, :1], masks, names=bad)
        with pytest.raises(ValueError, match="NUL|valid Unicode"):
            ConceptSet.from_dense(masks, names=bad)


def test_closed_datasets_are_refused(tmp_path):
    save_activations(tmp_path / "a.h5", np.ones((4, 2), np.float32))
    ds = cx.io.open_activations(tmp_path / "a.h5")
    ds.file.close()
    with pytest.raises(ValueError, match="acts is an h5py dataset whose file has been closed"):
        cx.search_formulas(ds, np.ones((4, 2), bool))
    with pytest.raises(ValueError, match="acts is an h5py dataset whose file has been closed"):
        save_activations(tmp_path / "b.h5", ds)
    save_images(tmp_path / "i.h5", np.zeros((2, 4, 4, 3), np.uint8))
    img = cx.io.open_images(tmp_path / "i.h5")
    img.file.close()
    with pytest.raises(ValueError, match="images is an h5py dataset whose file has been closed"):
        save_images(tmp_path / "j.h5", img)
    from compexp_core.report.inputs import Images

    with pytest.raises(ValueError, match="images is an h5py dataset whose file has been closed"):
        Images(img)
    cx.search_formulas(np.ones((4, 2), bool), np.ones((4, 2), bool))
    with pytest.raises(ValueError, match="acts is an h5py dataset whose file has been closed"):
        from compexp_core.analysis import top_activating_samples

        top_activating_samples(ds, [0])


# ----------------------------------------------------------------------------- output paths

@pytest.fixture
def search_inputs(tmp_path):
    rng = np.random.default_rng(2)
    acts = rng.random((30, 2, 3, 3)).astype(np.float32)
    save_activations(tmp_path / "acts.h5", acts)
    cx.io.save_concepts(tmp_path / "c.h5", ConceptSet.from_dense(
        rng.random((30, 3, 3, 3)) < 0.4, names=["x", "y", "z"]))
    return tmp_path / "acts.h5", tmp_path / "c.h5"


def _bad_outputs(tmp_path, acts, concepts):
    (tmp_path / "adir").mkdir()
    os.symlink(concepts, tmp_path / "link.h5")
    os.link(acts, tmp_path / "hard.h5")
    return {
        "o.txt": "must end in .h5, .hdf5 or .csv",
        "nodir/o.h5": "its directory .* does not exist",
        "adir": "must end in|is a directory",
        str(concepts): "is the input file",
        "link.h5": "is the input file",
        "hard.h5": "is the input file",
    }


def test_cli_checks_the_output_before_searching(tmp_path, search_inputs, monkeypatch, capsys):
    from compexp_core.cli import main

    acts, concepts = search_inputs
    inputs_before = (acts.read_bytes(), concepts.read_bytes())
    calls = []
    monkeypatch.setattr("compexp_core.search.search_formulas",
                        lambda *a, **k: calls.append("search"))
    monkeypatch.setattr("compexp_core.io.load_concepts", lambda *a, **k: calls.append("load"))
    for out, message in _bad_outputs(tmp_path, acts, concepts).items():
        out = out if os.path.isabs(out) else str(tmp_path / out)
        assert main(["search", str(acts), str(concepts), "-o", out, "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert re.search(message, err), (out, err)
    assert calls == []                                 # nothing was loaded or searched
    assert (acts.read_bytes(), concepts.read_bytes()) == inputs_before


def test_save_refuses_the_search_inputs(tmp_path, search_inputs):
    acts, concepts = search_inputs
    r = cx.search_formulas(str(acts), str(concepts), max_length=2)
    r.params["acts_path"], r.params["concepts_path"] = str(acts), str(concepts)
    before = concepts.read_bytes()
    os.symlink(concepts, tmp_path / "c-link.h5")
    for target in (concepts, tmp_path / "c-link.h5"):
        with pytest.raises(ValueError, match="is the input file"):
            r.save(target)
    assert concepts.read_bytes() == before
    assert load_concepts(concepts).names == ("x", "y", "z")


def test_check_output_path(tmp_path, monkeypatch):
    assert check_output_path(tmp_path / "ok.h5") == str(tmp_path / "ok.h5")
    (tmp_path / "d.h5").mkdir()
    with pytest.raises(IsADirectoryError):
        check_output_path(tmp_path / "d.h5")
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError):
        check_output_path(tmp_path / "f" / "o.h5")
    real_open = os.open

    def read_only(path, flags, *a):           # a read-only directory (even for root)
        if str(path).endswith(".probe"):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, flags, *a)
    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(PermissionError, match="no file can be created in"):
        check_output_path(tmp_path / "o.csv")
    assert os.listdir(tmp_path) == ["d.h5", "f"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_directory(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    try:
        with pytest.raises(PermissionError):
            check_output_path(d / "o.h5")
        with pytest.raises(PermissionError):
            _search().save(d / "o.h5")
    finally:
        d.chmod(0o755)


# ----------------------------------------------------------------------------- corrupt files

def _walk(f):
    out = []
    f.visititems(lambda name, obj: out.append((name, obj)))
    return out


def test_files_hold_no_variable_length_strings_and_checksummed_metadata(tmp_path):
    """The structure that keeps corrupt files from hanging HDF5 or being read as data: the
    1.8 file format (checksummed object headers), no variable-length strings (attributes
    or datasets), a CRC-32 on every dataset but the large sample-indexed ones."""
    bulk = {"acts", "images", "o/maps", "label_maps/o/maps", "sample_labels/present"}
    for kind in KINDS:
        path = _path(tmp_path, kind)
        fault_child.write(kind, str(path), 1)
        if kind.endswith("csv"):
            continue
        assert path.read_bytes()[:8] == b"\x89HDF\r\n\x1a\n" and path.read_bytes()[8] >= 2
        with h5py.File(path) as f:
            objects = [("/", f)] + _walk(f)
            for name, obj in objects:
                for key in obj.attrs:
                    dt = obj.attrs.get_id(key).dtype
                    assert h5py.check_vlen_dtype(dt) is None and dt.kind != "O", (kind, name,
                                                                                   key)
                    assert obj.attrs.get_id(key).get_storage_size() <= 256, (kind, name, key)
                if isinstance(obj, h5py.Dataset):
                    assert h5py.check_vlen_dtype(obj.dtype) is None and obj.dtype.kind != "O"
                    if name not in bulk:
                        assert "crc32" in obj.attrs, (kind, name)


def test_corrupt_files_are_refused_cleanly():
    """A small fuzz campaign (benchmarks/fuzz_files.py; the big one is in
    benchmarks/RESULTS.md): every corrupt results, concepts or activations file is read
    without a crash or a hang, and any error is a ValueError naming the file; results and
    concepts files (checksummed) are never silently read as different data."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import fuzz_files

    counts = fuzz_files.campaign(per_kind=24, seed=7, timeout=20)
    shutil.rmtree(counts.pop("workdir"), ignore_errors=True)
    examples = counts.pop("examples")
    total = {o: sum(c[o] for c in counts.values()) for o in fuzz_files.OUTCOMES}
    assert total["crash"] == total["hang"] == total["other"] == 0, (total, examples)
    for (kind, _), c in counts.items():
        if kind != "activations":                 # activations data carry no checksum
            assert c["differs"] == 0, (kind, examples)
