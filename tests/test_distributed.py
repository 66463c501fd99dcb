"""Sharded search on Ray (``executor="ray"``) and what it rests on: pickling a ConceptSet, the
units-major activations layout and its one-pass rechunking, shard resume, a killed worker.

The Ray tests share one local cluster (two CPUs, so two workers on this one node) started once
for the module; they skip when Ray is not installed.
"""
import logging
import os
import pickle
import sys

import h5py
import numpy as np
import pytest

import compexp_core as cx
from compexp_core.engine.concepts import ConceptSet, DeviceConceptSet
from compexp_core.io import open_activations, save_concepts
from compexp_core.io.activations import (ActivationsWriter, activations_layout,
                                         read_activations_metadata, rechunk_activations,
                                         save_activations)


def _data(seed=0, n=240, units=12, k=14):
    rng = np.random.default_rng(seed)
    masks = rng.random((n, k, 6, 6)) < 0.2
    # Units that partly follow concepts, so formulas of several lengths come out.
    acts = rng.random((n, units, 3, 3)).astype(np.float32)
    acts[:, ::2] += masks[:, :units // 2, ::2, ::2].astype(np.float32)
    return acts, ConceptSet.from_dense(masks, categories=["object"] * k)


def _same(result, expected):
    """Explanations equal, field by field (floats exactly), and the same params."""
    assert list(result) == list(expected)
    assert result.params == expected.params


# ------------------------------------------------------------------------ pickling (no Ray)

def test_concept_set_pickles_through_its_arrays():
    _, cs = _data()
    back = pickle.loads(pickle.dumps(cs))
    assert back is not cs and back.names == cs.names and back.categories == cs.categories
    assert back.n_samples == cs.n_samples and back.grid == cs.grid
    assert np.array_equal(back.sizes, cs.sizes)
    for name in ("block_ptr", "entry_concept", "entry_words", "full_ptr", "full_concept"):
        assert np.array_equal(getattr(back.arrays, name), getattr(cs.arrays, name)), name
    # The compiled index was rebuilt: it counts like the original.
    assert np.array_equal(back.to_dense(), cs.to_dense())
    acts, _ = _data()
    assert list(cx.search_formulas(acts, back, device="cpu")) == \
        list(cx.search_formulas(acts, cs, device="cpu"))


def test_device_concept_set_refuses_pickling_and_names_to_host():
    dcs = DeviceConceptSet(4, (1, 1), ["a"], np.array([1]), device_index=None, device=0)
    with pytest.raises(TypeError, match=r"to_host\(\)"):
        pickle.dumps(dcs)


# ------------------------------------------------------------------------ layout and rechunk

def test_rechunk_makes_units_major_chunks_with_the_same_values(tmp_path):
    acts = np.random.default_rng(1).random((300, 64, 4, 4)).astype(np.float32)
    src, dst = tmp_path / "a.h5", tmp_path / "b.h5"
    save_activations(src, acts, model="m", layer="l4", unit_names=[f"u{i}" for i in range(64)])
    ds = open_activations(src)
    assert activations_layout(ds) == "samples"
    ds.file.close()
    row = 64 * 16 * 4
    rechunk_activations(src, dst, memory_bytes=100 * row)   # slabs of 100 samples
    ds = open_activations(dst)
    try:
        assert ds.chunks == (100, 64, 4, 4)     # 2 MiB hold all 64 units of 100 samples
        assert np.array_equal(ds[()], acts)
    finally:
        ds.file.close()
    meta = read_activations_metadata(dst)
    assert (meta["model"], meta["layer"], meta["unit_names"][3]) == ("m", "l4", "u3")
    # With more samples per chunk than fit 2 MiB of all units, a chunk holds a few units only,
    # so a range of units is read from its own chunks.
    big = np.random.default_rng(2).random((3000, 64, 4, 4)).astype(np.float32)
    save_activations(src, big)
    rechunk_activations(src, dst)
    ds = open_activations(dst)
    try:
        rows, k = ds.chunks[:2]
        assert rows == 3000 and k < 64 and activations_layout(ds) == "units"
        assert rows * k * 16 * 4 <= 2 << 20
        assert np.array_equal(ds[:, 5:9], big[:, 5:9])
    finally:
        ds.file.close()


def test_units_layout_writes_whole_chunks_and_bad_layouts_are_refused(tmp_path):
    acts = np.random.default_rng(3).random((50, 6)).astype(np.float32)
    save_activations(tmp_path / "u.h5", acts, layout="units", chunk_samples=20)
    ds = open_activations(tmp_path / "u.h5")
    assert ds.chunks == (20, 6) and np.array_equal(ds[()], acts)
    ds.file.close()
    with pytest.raises(ValueError, match="layout must be one of"):
        save_activations(tmp_path / "x.h5", acts, layout="columns")
    with pytest.raises(ValueError, match="layout must be one of"):
        ActivationsWriter(tmp_path / "x.h5", n_samples=5, dtype="float32", layout="bad")
    with pytest.raises(ValueError, match="dst is the source file"):
        rechunk_activations(tmp_path / "u.h5", tmp_path / "u.h5")
    with pytest.raises(ValueError, match="memory_bytes"):
        rechunk_activations(tmp_path / "u.h5", tmp_path / "v.h5", memory_bytes=0)
    with pytest.raises(FileNotFoundError):
        rechunk_activations(tmp_path / "missing.h5", tmp_path / "v.h5")


# ------------------------------------------------------------------------ options (no Ray)

def test_executor_options_are_checked():
    acts, cs = _data()
    with pytest.raises(ValueError, match="unknown executor 'dask'"):
        cx.search_formulas(acts, cs, executor="dask")
    with pytest.raises(ValueError, match="shard_size, shard_dir only apply to executor='ray'"):
        cx.search_formulas(acts, cs, shard_size=4, shard_dir="x")


def test_without_ray_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)          # `import ray` fails as if absent
    acts, cs = _data()
    with pytest.raises(ImportError, match=r'pip install "compexp-core\[ray\]"'):
        cx.search_formulas(acts, cs, executor="ray")


def test_an_unreachable_address_fails_fast_naming_it():
    from compexp_core.distributed import _check_reachable

    with socket_closed_port() as port:
        with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}"):
            _check_reachable(f"127.0.0.1:{port}")
    with pytest.raises(ValueError, match="ray_address must be"):
        _check_reachable("nowhere")


class socket_closed_port:
    """A local TCP port with nothing listening on it."""

    def __enter__(self):
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        return self.port

    def __exit__(self, *exc):
        return False


# ------------------------------------------------------------------------ on a Ray cluster

@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    ray = pytest.importorskip("ray")
    crash_dir = tmp_path_factory.mktemp("crash")
    # Read by the workers (started by ray.init below, with this environment).
    old = os.environ.get("COMPEXP_RAY_TEST_CRASH_DIR")
    os.environ["COMPEXP_RAY_TEST_CRASH_DIR"] = str(crash_dir)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield crash_dir
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop("COMPEXP_RAY_TEST_CRASH_DIR", None)
        else:
            os.environ["COMPEXP_RAY_TEST_CRASH_DIR"] = old


def test_ray_result_equals_the_single_process_one(ray_cluster):
    acts, cs = _data()
    units = [11, 0, 3, 3, 7, 5, 1]
    expected = cx.search_formulas(acts, cs, device="cpu", units=units)
    result = cx.search_formulas(acts, cs, device="cpu", units=units, executor="ray",
                                shard_size=2, workers=2, progress=True)
    _same(result, expected)
    assert result.stats["shards"] == 3 and result.stats["workers"] == 2   # 6 distinct units
    assert result.stats["steps"] == expected.stats["steps"]
    assert result.stats["extension_entries"] == expected.stats["extension_entries"]
    # Explicit per-unit thresholds are sliced per shard the same way.
    t = np.linspace(0.5, 1.2, acts.shape[1])
    _same(cx.search_formulas(acts, cs, device="cpu", threshold=t, executor="ray", shard_size=5),
          cx.search_formulas(acts, cs, device="cpu", threshold=t))


def test_ray_reads_files_of_either_layout(ray_cluster, tmp_path, caplog):
    acts, cs = _data(seed=4)
    save_activations(tmp_path / "samples.h5", acts, model="net", layer="layer4")
    rechunk_activations(tmp_path / "samples.h5", tmp_path / "units.h5",
                        memory_bytes=40 * 12 * 36, chunk_bytes=40 * 9 * 4 * 2)   # 2 units
    save_concepts(tmp_path / "c.h5", cs)
    expected = cx.search_formulas(acts, cs, device="cpu")
    # What a search from files records: the activations file's model and layer, the paths.
    expected.model, expected.layer = "net", "layer4"
    expected.params["acts_path"] = str(tmp_path / "samples.h5")
    expected.params["concepts_path"] = str(tmp_path / "c.h5")
    with caplog.at_level(logging.WARNING, logger="compexp_core"):
        _same(cx.search_formulas(str(tmp_path / "samples.h5"), str(tmp_path / "c.h5"),
                                 device="cpu", executor="ray", shard_size=4), expected)
    assert "rechunk_activations" in caplog.text      # a sample-major file: every shard reads all
    caplog.clear()
    with h5py.File(tmp_path / "units.h5", "r") as f:
        assert f["acts"].chunks[1] < acts.shape[1]
    with caplog.at_level(logging.WARNING, logger="compexp_core"):
        result = cx.search_formulas(str(tmp_path / "units.h5"), cs, device="cpu",
                                    executor="ray", shard_size=4)
    assert "rechunk_activations" not in caplog.text
    # As a local search from a file does, the result records the file's model and layer.
    assert (result.model, result.layer) == ("net", "layer4")
    expected.params["acts_path"] = str(tmp_path / "units.h5")
    del expected.params["concepts_path"]                  # given as a ConceptSet this time
    _same(result, expected)


def test_a_killed_worker_is_restarted_and_the_result_is_the_same(ray_cluster):
    acts, cs = _data(seed=5)
    marker = ray_cluster / "crash-shard-1"
    marker.write_text("the worker searching shard 1 kills itself once")
    result = cx.search_formulas(acts, cs, device="cpu", executor="ray", shard_size=3, workers=2)
    assert not marker.exists()                # the worker did crash (it removed the marker)
    _same(result, cx.search_formulas(acts, cs, device="cpu"))


def test_shard_dir_resumes_and_refuses_another_search(ray_cluster, tmp_path):
    acts, cs = _data(seed=6)
    expected = cx.search_formulas(acts, cs, device="cpu")
    shards = tmp_path / "shards"
    first = cx.search_formulas(acts, cs, device="cpu", executor="ray", shard_size=3,
                               shard_dir=shards)
    _same(first, expected)
    saved = sorted(p.name for p in shards.iterdir())
    assert saved == [f"shard-{i:05d}.h5" for i in range(4)]
    # An interrupted run leaves some shards: remove half of them; the rerun searches those
    # only and loads the rest.
    (shards / "shard-00001.h5").unlink()
    (shards / "shard-00003.h5").unlink()
    again = cx.search_formulas(acts, cs, device="cpu", executor="ray", shard_size=3,
                               shard_dir=shards)
    _same(again, expected)
    assert again.stats["shards_resumed"] == 2
    # Every shard saved: nothing is searched (no worker is started).
    done = cx.search_formulas(acts, cs, device="cpu", executor="ray", shard_size=3,
                              shard_dir=shards)
    _same(done, expected)
    assert done.stats["shards_resumed"] == 4 and done.stats["workers"] == 0
    with pytest.raises(ValueError, match=r"shard-00000.h5 was written by another search "
                                         r"\(params.beam_size: saved 10, this run 4\)"):
        cx.search_formulas(acts, cs, device="cpu", executor="ray", shard_size=3,
                           shard_dir=shards, beam_size=4)
    with pytest.raises(ValueError, match="units"):
        cx.search_formulas(acts, cs, device="cpu", executor="ray", shard_size=4,
                           shard_dir=shards)


def test_ray_bad_options(ray_cluster):
    acts, cs = _data()
    with pytest.raises(ValueError, match="shard_size"):
        cx.search_formulas(acts, cs, executor="ray", shard_size=0)
    with pytest.raises(ValueError, match="workers"):
        cx.search_formulas(acts, cs, executor="ray", workers=0)
    with pytest.raises(ValueError, match="already connected"):
        cx.search_formulas(acts, cs, executor="ray", ray_address="127.0.0.1:6379")


def test_cli_search_with_ray(ray_cluster, tmp_path, capsys):
    from compexp_core.cli.main import main

    acts, cs = _data(seed=7)
    save_activations(tmp_path / "a.h5", acts)
    save_concepts(tmp_path / "c.h5", cs)
    out = tmp_path / "out.h5"
    assert main(["search", str(tmp_path / "a.h5"), str(tmp_path / "c.h5"), "-o", str(out),
                 "--ray", "--shard-size", "5", "--shard-dir", str(tmp_path / "s"),
                 "--no-progress"]) == 0
    single = tmp_path / "single.h5"
    assert main(["search", str(tmp_path / "a.h5"), str(tmp_path / "c.h5"), "-o", str(single),
                 "--no-progress"]) == 0
    assert list(cx.load_results(out)) == list(cx.load_results(single))
    assert len(list((tmp_path / "s").iterdir())) == 3
    assert main(["search", str(tmp_path / "a.h5"), str(tmp_path / "c.h5"), "-o", str(out),
                 "--shard-size", "5"]) != 0
    assert "only apply with --ray" in capsys.readouterr().err
