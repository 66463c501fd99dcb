"""The demo's cached CNN weights: a corrupted cache file is retrained over (and said so), never a
demo that fails until the file is deleted; the cache is written atomically, so an interrupted
save leaves the previous file and no temporary file.

Training is replaced by a fresh untrained model (the cache logic is what is tested; the real
small-size training runs in tests/test_cli.py), with the small configuration those tests use.
"""
import os
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

import compexp_core.demo as demo  # noqa: E402
from compexp_core.cli import main  # noqa: E402

SMALL = demo.DemoConfig(train_images=200, eval_images=100, epochs=1)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache folder, and training replaced by a fresh model (counted in .trained)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("COMPEXP_CACHE_DIR", str(folder))
    trained = []

    def fake_train(config, log=print):
        trained.append(config)
        torch.manual_seed(len(trained))
        return demo.build_demo_model().eval(), 0.5

    monkeypatch.setattr(demo, "train_demo_model", fake_train)
    return SimpleNamespace(folder=folder, trained=trained)


def cache_file(cache):
    return cache.folder / f"demo-cnn-{SMALL.key()}.pt"


def same_weights(model, path):
    state = torch.load(path, map_location="cpu", weights_only=True)
    return all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def good_bytes(cache):
    model = demo.load_or_train(SMALL, log=lambda line: None)
    return model, cache_file(cache).read_bytes()


CORRUPTIONS = {
    "truncated": lambda good: good[: len(good) // 2],
    "garbage": lambda good: b"\x80\x04\x95 not a checkpoint" * 50,
    "text": lambda good: b"hello, world\n",
    "empty": lambda good: b"",
    "another model": None,                 # a valid checkpoint of other tensors
    "a list": None,                        # a valid checkpoint that is not a state dict
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_corrupt_cache_is_retrained_and_replaced(cache, kind):
    _, good = good_bytes(cache)
    path = cache_file(cache)
    if kind == "another model":
        torch.save({"weight": torch.zeros(3)}, path)
    elif kind == "a list":
        torch.save([1, 2, 3], path)
    else:
        path.write_bytes(CORRUPTIONS[kind](good))
    lines = []
    model = demo.load_or_train(SMALL, log=lines.append)
    assert len(cache.trained) == 2                      # trained again
    assert any(f"the cached weights {path} are unreadable" in line and "training the CNN "
               "again" in line for line in lines), lines
    assert f"cached the weights in {path}" in lines[-1]
    assert same_weights(model, path)                    # the file was replaced by the new model
    # and the next run loads it.
    lines = []
    demo.load_or_train(SMALL, log=lines.append)
    assert len(cache.trained) == 2 and lines == [f"loaded the trained CNN from {path}"]


def test_cli_demo_survives_a_garbage_cache(cache, tmp_path, capsys):
    path = cache_file(cache)
    os.makedirs(cache.folder)
    path.write_bytes(b"garbage" * 100)
    assert main(["demo", "--out", str(tmp_path / "demo"), "--train-images", "200",
                 "--eval-images", "100", "--epochs", "1", "--no-progress", "--no-report"]) == 0
    out = capsys.readouterr().out
    assert f"the cached weights {path} are unreadable" in out
    assert len(cache.trained) == 1 and path.read_bytes()[:2] == b"PK"   # a torch zip file


class Interrupted(BaseException):
    pass


@pytest.mark.parametrize("error", [Interrupted, OSError])
def test_interrupted_save_keeps_the_previous_file(cache, monkeypatch, error):
    _, good = good_bytes(cache)
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.seek(0)
        f.truncate(100)                                  # half-written when the process dies
        raise error("interrupted while saving")

    monkeypatch.setattr(torch, "save", dying_save)
    lines = []
    if error is Interrupted:
        with pytest.raises(Interrupted):
            demo.load_or_train(SMALL, retrain=True, log=lines.append)
    else:
        model = demo.load_or_train(SMALL, retrain=True, log=lines.append)
        assert model is not None
        assert f"could not cache the weights in {cache_file(cache)}" in lines[-1]
    assert cache_file(cache).read_bytes() == good        # the previous cache, intact
    assert sorted(os.listdir(cache.folder)) == [cache_file(cache).name]   # no temporary file left


def test_first_save_interrupted_leaves_no_cache(cache, monkeypatch):
    def dying_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial")
        raise Interrupted()

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(Interrupted):
        demo.load_or_train(SMALL, log=lambda line: None)
    assert os.listdir(cache.folder) == []
