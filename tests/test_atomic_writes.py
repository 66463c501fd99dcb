"""Every writer is atomic (docs/FORMAT.md): a failure in the middle of a write, or while the
finished file is flushed and renamed, leaves any previous file at the path byte for byte intact
and no temporary file behind."""

import errno
import os
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest

import compexp_core as cx
from compexp_core.engine.concepts import ConceptSet
from compexp_core.engine.formula import Formula
from compexp_core.engine.results import Explanation
from compexp_core.io import (
    load_activations,
    load_concepts,
    read_images_metadata,
    save_activations,
    save_concepts,
    save_images,
    write_concept_sources,
)
from compexp_core.io import _h5
from compexp_core.io._h5 import atomic_path, scratch_file, writing
from compexp_core.io.activations import PARTIAL_SUFFIX, ActivationsWriter


class Injected(RuntimeError):
    pass


def _result(unit: int) -> cx.SearchResult:
    e = Explanation(unit, Formula.parse("(a OR b)"), 0.5, 0.5, Formula.parse("a"), 0.25,
                    beam=((Formula.parse("(a OR b)"), 0.5),), threshold=0.1,
                    by_length=((Formula.parse("a"), 0.25), (Formula.parse("(a OR b)"), 0.5)))
    return cx.SearchResult([e], {"max_length": 2})


def _concepts(k: int) -> ConceptSet:
    return ConceptSet.from_dense(np.eye(k, dtype=bool)[:, :, None, None],
                                 names=[f"c{j}" for j in range(k)])


# Each writer twice: a first call writes the file, a second (different) one is to fail.
WRITERS = {
    "activations": lambda p, v: save_activations(p, np.full((6, 2, 2, 2), v, np.float32),
                                                 chunk_samples=2),
    "concept sources": lambda p, v: write_concept_sources(
        p, n_samples=6, grid=(2, 2), names=["a", "b"], chunk_samples=2, with_index=True,
        label_maps={"o": (np.full((6, 2, 2), int(v) % 3, np.uint8), [-1, 0, 1])},
        sample_labels=(np.ones((6, 1), bool), ["b"])),
    "concepts": lambda p, v: save_concepts(p, _concepts(3 + int(v))),
    "images": lambda p, v: save_images(p, np.full((6, 4, 4, 3), v, np.uint8), chunk_samples=2),
    "results h5": lambda p, v: _result(int(v)).save(p),
    "results csv": lambda p, v: _result(int(v)).save(p),
}
SUFFIX = {"results csv": ".csv"}


def _path(tmp_path, which):
    return tmp_path / ("out" + SUFFIX.get(which, ".h5"))


def _fail_on_call(monkeypatch, targets, at):
    """Make the ``at``-th call of the functions ``targets`` ((owner, name) pairs, counted
    together) raise Injected; the calls before it work."""
    calls = []
    for owner, name in targets:
        def failing(*args, _original=getattr(owner, name), _name=name, **kwargs):
            calls.append(_name)
            if len(calls) == at:
                raise Injected(f"{_name}, call {at}")
            return _original(*args, **kwargs)
        monkeypatch.setattr(owner, name, failing)
    return calls


def _assert_intact(tmp_path, path, before):
    assert sorted(os.listdir(tmp_path)) == [path.name]          # no temporary file
    assert path.read_bytes() == before                          # previous file untouched


@pytest.mark.parametrize("which", sorted(WRITERS))
@pytest.mark.parametrize("at", [1, 2])
def test_a_failure_mid_write_keeps_the_previous_file(tmp_path, monkeypatch, which, at):
    path = _path(tmp_path, which)
    WRITERS[which](path, 1)
    before = path.read_bytes()
    with monkeypatch.context() as m:
        if which == "results csv":
            # pandas writes the rows; fail after part of them is in the temporary file
            def to_csv(self, fh, **kw):
                fh.write("unit,formula\n3,")
                raise Injected("to_csv")
            m.setattr(pd.DataFrame, "to_csv", to_csv)
        else:
            # the low-level HDF5 writes: creating a dataset, or writing into one
            _fail_on_call(m, [(h5py.Group, "create_dataset"), (h5py.Dataset, "__setitem__")],
                          at)
        with pytest.raises(Injected):
            WRITERS[which](path, 2)
    _assert_intact(tmp_path, path, before)
    WRITERS[which](path, 2)                                     # and the path works again
    assert path.read_bytes() != before


@pytest.mark.parametrize("which", sorted(WRITERS))
@pytest.mark.parametrize("step", ["fsync", "replace"])
def test_a_failure_while_committing_keeps_the_previous_file(tmp_path, monkeypatch, which, step):
    path = _path(tmp_path, which)
    WRITERS[which](path, 1)
    before = path.read_bytes()
    with monkeypatch.context() as m:
        _fail_on_call(m, [(os, step)], 1)
        with pytest.raises(Injected):
            WRITERS[which](path, 2)
    _assert_intact(tmp_path, path, before)


def _count_disk_writes(monkeypatch, write) -> int:
    """How many writes ``write()`` sends to disk through the HDF5 guard."""
    count = [0]
    with monkeypatch.context() as m:
        m.setattr(_h5, "_write_hook", lambda guard: count.__setitem__(0, count[0] + 1))
        write()
    return count[0]


H5_WRITERS = sorted(w for w in WRITERS if w != "results csv")


@pytest.mark.parametrize("which", H5_WRITERS)
@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("errno_", [errno.ENOSPC, errno.EIO])
def test_a_failed_disk_write_raises_write_error(tmp_path, monkeypatch, which, where, errno_):
    """A write that the disk refuses (the first, one in the middle, or the last: HDF5's final
    flush) inside HDF5: HDF5 never sees it; the writer raises WriteError naming the file and
    the previous file is intact. (In a child process, with a real full disk and the exit
    checked: tests/test_faults.py.)"""
    path = _path(tmp_path, which)
    WRITERS[which](path, 1)
    before = path.read_bytes()
    n = _count_disk_writes(monkeypatch, lambda: WRITERS[which](tmp_path / "probe.h5", 2))
    os.unlink(tmp_path / "probe.h5")
    k = {"first": 1, "middle": max(1, n // 2), "last": n}[where]
    calls = [0]

    def failing(guard):
        calls[0] += 1
        if calls[0] >= k:
            raise OSError(errno_, os.strerror(errno_))
    with monkeypatch.context() as m:
        m.setattr(_h5, "_write_hook", failing)
        with pytest.raises(_h5.WriteError) as info:
            WRITERS[which](path, 2)
    assert f"cannot write '{path}'" in str(info.value) and info.value.errno == errno_
    if errno_ == errno.ENOSPC:
        assert "the disk is full or the file is too large" in str(info.value)
    _assert_intact(tmp_path, path, before)


def test_a_failed_write_in_the_csv_writer_raises_write_error(tmp_path, monkeypatch):
    path = tmp_path / "out.csv"
    _result(1).save(path)
    before = path.read_bytes()
    with monkeypatch.context() as m:
        def to_csv(self, fh, **kw):
            fh.write("unit,formula\n3,")
            raise OSError(errno.ENOSPC, "No space left on device")
        m.setattr(pd.DataFrame, "to_csv", to_csv)
        with pytest.raises(_h5.WriteError, match="the disk is full"):
            _result(2).save(path)
    _assert_intact(tmp_path, path, before)


def test_a_half_written_hdf5_file_is_refused(tmp_path):
    """The temporary file of a write that did not finish (a killed process leaves it) is
    marked incomplete until the very end: no reader takes it for a complete file."""
    copy = tmp_path / "copy.h5"
    with writing(tmp_path / "c.h5", "compexp-concepts") as f:
        f.attrs["n_samples"] = np.int64(1)
        f.attrs["height"] = f.attrs["width"] = np.int64(1)
        _h5.write_strings(f, "concept_names", ["a"])
        f.flush()
        shutil.copyfile(f.filename, copy)
    with pytest.raises(ValueError, match="is an incomplete file.*never finished"):
        load_concepts(copy)
    assert load_concepts(tmp_path / "c.h5").names == ("a",)


def test_new_files_are_complete_or_absent(tmp_path, monkeypatch):
    """Without a previous file, a failed write leaves nothing at all."""
    for which in sorted(WRITERS):
        path = _path(tmp_path, which)
        with monkeypatch.context() as m:
            _fail_on_call(m, [(os, "replace")], 1)
            with pytest.raises(Injected):
                WRITERS[which](path, 1)
        assert os.listdir(tmp_path) == [], which
    # and the writers' results read back
    save_activations(tmp_path / "a.h5", np.ones((3, 2), np.float32))
    assert load_activations(tmp_path / "a.h5").shape == (3, 2)
    save_images(tmp_path / "i.h5", np.zeros((1, 2, 2, 3), np.uint8))
    assert read_images_metadata(tmp_path / "i.h5")["shape"] == (1, 2, 2, 3)
    save_concepts(tmp_path / "c.h5", _concepts(2))
    assert load_concepts(tmp_path / "c.h5").names == ("c0", "c1")


# ----------------------------------------------------------------------------- the policy itself

def test_writing_and_atomic_path(tmp_path):
    p = tmp_path / "x.h5"
    with writing(p) as f:
        f.attrs["format"] = "first"
    with pytest.raises(Injected):
        with writing(p) as f:
            f.attrs["format"] = "second"
            raise Injected
    with h5py.File(p) as f:
        assert f.attrs["format"] == "first"
    q = tmp_path / "y.csv"
    with atomic_path(q) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path) and not os.path.exists(q)
        with open(tmp, "w") as fh:
            fh.write("done")
    assert q.read_text() == "done"
    assert sorted(os.listdir(tmp_path)) == ["x.h5", "y.csv"]


def test_scratch_file_is_always_removed(tmp_path):
    with scratch_file(tmp_path / "out.h5") as f:
        f["x"] = np.arange(3)
        assert len(os.listdir(tmp_path)) == 1
    assert os.listdir(tmp_path) == []
    with pytest.raises(Injected):
        with scratch_file(tmp_path / "out.h5"):
            raise Injected
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- the activations writer

def test_writer_abandoned_removes_its_temporary_file(tmp_path):
    p = tmp_path / "a.h5"
    with ActivationsWriter(p, n_samples=4, dtype="float32") as w:
        w.write(0, np.zeros((2, 3), np.float32))
        assert len(os.listdir(tmp_path)) == 1
    assert os.listdir(tmp_path) == []
    w = ActivationsWriter(p, n_samples=4, dtype="float32")
    w.write(0, np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="incomplete: 2 of 4 samples"):
        w.finish()
    w.close()
    assert os.listdir(tmp_path) == []


def test_resumable_writer_keeps_its_partial_file_and_resumes(tmp_path):
    p = tmp_path / "a.h5"
    save_activations(p, np.full((4, 3), 7, np.float32))
    before = p.read_bytes()
    blocks = [np.full((2, 3), i, np.float32) for i in range(2)]
    kw = dict(n_samples=4, dtype="float32", model="m", layer="l", dataset="d", batch_size=2,
              resumable=True)
    with pytest.raises(Injected):
        with ActivationsWriter(p, **kw) as w:
            w.write(0, blocks[0])
            raise Injected
    assert p.read_bytes() == before                              # previous file untouched
    with h5py.File(str(p) + PARTIAL_SUFFIX) as f:
        assert f.attrs["format"] == b"compexp-activations-partial" and f.attrs["n_done"] == 2
    with ActivationsWriter(p, **kw) as w:
        assert w.resume() == 2
        w.write(2, blocks[1])
        w.finish()
    assert sorted(os.listdir(tmp_path)) == ["a.h5"]
    np.testing.assert_array_equal(load_activations(p), np.concatenate(blocks))
    with h5py.File(p) as f:
        assert sorted(f.attrs) == ["dataset", "format", "layer", "model", "version"]
    with ActivationsWriter(p, **kw) as w:                        # interrupted again
        w.write(0, blocks[1])
    with pytest.raises(ValueError, match="written for layer 'l', this extraction has layer 'x'"):
        ActivationsWriter(p, **dict(kw, layer="x")).resume()
    assert sorted(os.listdir(tmp_path)) == ["a.h5", "a.h5" + PARTIAL_SUFFIX]


def test_writer_checks_blocks(tmp_path):
    with ActivationsWriter(tmp_path / "a.h5", n_samples=4, dtype="float16", layer="fc") as w:
        w.write(0, np.zeros((2, 3), np.float32))
        with pytest.raises(ValueError, match=r"layer 'fc' gives \[U, h, w\] = \(4,\)"):
            w.write(2, np.zeros((2, 4), np.float32))
        with pytest.raises(ValueError, match=r"non-finite.*\(3, 1\)"):
            w.write(2, np.array([[0, 0, 0], [0, np.inf, 0]], np.float32))
        with pytest.raises(ValueError, match="within the 4 samples"):
            w.write(3, np.zeros((2, 3), np.float32))
    with pytest.raises(TypeError, match="float16, float32, float64 or bool"):
        ActivationsWriter(tmp_path / "a.h5", n_samples=4, dtype="int32")
    assert os.listdir(tmp_path) == []


def test_resumable_writer_after_a_full_disk(tmp_path, monkeypatch):
    """A full disk in the 3rd batch, at each of its writes: the partial file keeps the
    batches recorded (its chunks are allocated when it is created, so a batch changes raw
    data and n_done only) and a later run resumes from them to the exact result. A full
    disk before any batch is recorded leaves no partial file."""
    p = tmp_path / "a.h5"
    blocks = [np.full((2, 3, 4, 4), i, np.float32) for i in range(4)]
    kw = dict(n_samples=8, dtype="float32", layer="l", batch_size=2, resumable=True)
    calls = [0]

    def full_after(k):
        def hook(guard):
            calls[0] += 1
            if calls[0] > k:
                raise OSError(errno.ENOSPC, "No space left on device")
        return hook
    # the disk fills during the first batch: nothing to resume from
    with monkeypatch.context() as m:
        m.setattr(_h5, "_write_hook", full_after(0))
        with pytest.raises(_h5.WriteError, match="disk is full"):
            with ActivationsWriter(p, **kw) as w:
                w.write(0, blocks[0])
    assert os.listdir(tmp_path) == []
    # the disk fills in the 3rd batch
    with ActivationsWriter(tmp_path / "probe.h5", **kw) as w:
        w.write(0, blocks[0])
        w.write(2, blocks[1])
        calls[0] = 0
        with monkeypatch.context() as m:
            m.setattr(_h5, "_write_hook", full_after(10 ** 9))
            w.write(4, blocks[2])
    per_batch = calls[0]
    os.unlink(tmp_path / "probe.h5.partial")
    for k in range(per_batch):
        calls[0] = 0
        with monkeypatch.context() as m:
            with pytest.raises(_h5.WriteError):
                with ActivationsWriter(p, **kw) as w:
                    w.write(0, blocks[0])
                    w.write(2, blocks[1])
                    m.setattr(_h5, "_write_hook", full_after(k))
                    w.write(4, blocks[2])
        with h5py.File(str(p) + PARTIAL_SUFFIX) as f:
            # HDF5 flushes raw data before metadata: a recorded n_done is always on disk
            assert f.attrs["n_done"] in (4, 6)
        with ActivationsWriter(p, **kw) as w:
            start = w.resume()
            for i in range(start // 2, 4):
                w.write(2 * i, blocks[i])
            w.finish()
        np.testing.assert_array_equal(load_activations(p), np.concatenate(blocks))
        os.unlink(p)
