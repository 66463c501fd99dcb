"""Tests for compexp_core.extract: activation extraction with forward hooks (and TorchScript
graphs), resumable HDF5 writes, ImageDataset, load_model and ``compexp extract``.

Models are tiny and built here: a Net with nested children (``blocks.1.conv``) whose layers
are compared with a manual forward pass, plus small modules that misbehave on purpose.
"""

import doctest
import os
import pickle
import sys

import h5py
import numpy as np
import pytest
import torch
from torch import nn

import compexp_core.extract
from compexp_core.cli import main
from compexp_core.extract import (
    PARTIAL_SUFFIX,
    ImageDataset,
    extract_activations,
    load_model,
)
from compexp_core.io import (
    load_activations,
    open_activations,
    read_activations_metadata,
    save_images,
)

N, H, W = 10, 8, 8


def torch_file_warnings(test):
    """TorchScript is deprecated in recent torch (jit.script/trace/save/load warn), and
    torch.export.load emits a FutureWarning of torch's own; neither concerns these tests."""
    for mark in (pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning"),
                 pytest.mark.filterwarnings("ignore:.*LeafSpec.*deprecated:FutureWarning")):
        test = mark(test)
    return test


# ----------------------------------------------------------------------------- models, data

class Block(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)  # overwrites conv's output: capture must copy it

    def forward(self, x):
        return self.relu(self.conv(x))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.blocks = nn.Sequential(Block(4, 6), Block(6, 5))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.head(torch.flatten(self.pool(x), 1))


def make_net(seed=0):
    torch.manual_seed(seed)
    return Net()


def make_images(n=N, h=H, w=W, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


def manual_layers(net, dataset):
    """The layers' outputs computed by hand, in eval mode, on the whole dataset at once."""
    x = torch.stack([dataset[i] for i in range(len(dataset))])
    net.eval()
    with torch.no_grad():
        stem = net.stem(x)
        b0 = net.blocks[0](stem)
        conv1 = net.blocks[1].conv(b0.clone())
        head = net(x)
    return {"stem": stem, "blocks.0": b0, "blocks.1.conv": conv1, "head": head}


def count_samples(net):
    """Count the samples that go through ``net``'s forward (with a forward pre-hook)."""
    seen = []
    net.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    return seen


class Interrupting:
    """Wraps a dataset: raises KeyboardInterrupt when sample ``at`` is loaded; records loads."""

    def __init__(self, base, at=None):
        self.base, self.at, self.loaded = base, at, []
        self.description = base.description

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        self.loaded.append(i)
        if i == self.at:
            raise KeyboardInterrupt
        return self.base[i]


class TensorItems:
    """A plain dataset of (tensor, label) pairs."""

    description = "tensors"

    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], i


def run(net, ds, layers, out, **kw):
    kw.setdefault("batch_size", 4)
    kw.setdefault("progress", False)
    return extract_activations(net, ds, layers, str(out), **kw)


@pytest.fixture
def ds():
    return ImageDataset(make_images())


# ----------------------------------------------------------------------------- values

@pytest.mark.parametrize("layer", ["stem", "blocks.0", "blocks.1.conv", "head"])
def test_values_equal_a_manual_forward_pass(tmp_path, ds, layer):
    net = make_net()
    out = tmp_path / "acts.h5"
    assert run(net, ds, layer, out) == [str(out)]
    got = load_activations(out)
    want = manual_layers(make_net(), ds)[layer].numpy()
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert not os.path.exists(str(out) + PARTIAL_SUFFIX)


def test_inplace_relu_after_the_layer_does_not_change_what_was_captured(tmp_path, ds):
    out = tmp_path / "acts.h5"
    run(make_net(), ds, "blocks.1.conv", out)
    assert (load_activations(out) < 0).any()  # the conv output, before the in-place ReLU


def test_provenance_and_format(tmp_path, ds):
    out = tmp_path / "acts.h5"
    run(make_net(), ds, "blocks.1.conv", out)
    meta = read_activations_metadata(out)
    assert meta["model"] == "Net" and meta["layer"] == "blocks.1.conv"
    assert meta["dataset"] == "array of 10 images 8x8"
    with h5py.File(out, "r") as f:
        assert f.attrs["format"] == b"compexp-activations" and f.attrs["version"] == 1
        assert "n_done" not in f.attrs and "n_samples" not in f.attrs
    run(make_net(), ds, "head", out, model_name="mynet", dataset_name="probe")
    meta = read_activations_metadata(out)
    assert (meta["model"], meta["dataset"], meta["shape"]) == ("mynet", "probe", (N, 3))


def test_float16(tmp_path, ds):
    run(make_net(), ds, "blocks.0", tmp_path / "a32.h5")
    run(make_net(), ds, "blocks.0", tmp_path / "a16.h5", dtype="float16")
    a16 = load_activations(tmp_path / "a16.h5")
    assert a16.dtype == np.float16
    np.testing.assert_array_equal(a16, load_activations(tmp_path / "a32.h5").astype(np.float16))


def test_two_layers_at_once(tmp_path, ds):
    net = make_net()
    seen = count_samples(net)
    paths = run(net, ds, ["blocks.1.conv", "stem"], tmp_path / "acts_{layer}.h5")
    assert paths == [str(tmp_path / "acts_blocks.1.conv.h5"), str(tmp_path / "acts_stem.h5")]
    want = manual_layers(make_net(), ds)
    for path, layer in zip(paths, ["blocks.1.conv", "stem"]):
        np.testing.assert_allclose(load_activations(path), want[layer].numpy(), rtol=1e-6,
                                   atol=1e-6)
        assert read_activations_metadata(path)["layer"] == layer
    assert sum(seen) == N  # one forward pass serves both layers
    with pytest.raises(ValueError, match=r"must contain '\{layer\}'"):
        run(make_net(), ds, ["stem", "head"], tmp_path / "acts.h5")
    with pytest.raises(ValueError, match="distinct"):
        run(make_net(), ds, ["stem", "stem"], tmp_path / "acts_{layer}.h5")


@pytest.mark.parametrize("n,batch", [(10, 4), (7, 7), (1, 4), (10, 3)])
def test_chunked_writes(tmp_path, n, batch):
    ds = ImageDataset(make_images(n))
    out = tmp_path / "acts.h5"
    run(make_net(), ds, "blocks.0", out, batch_size=batch)
    acts = open_activations(out)
    try:
        assert acts.shape == (n, 6, 4, 4)
        # Chunks along samples that batches fill whole (N smaller than a batch: one chunk).
        assert acts.chunks[1:] == (6, 4, 4)
        assert batch % acts.chunks[0] == 0 or acts.chunks[0] == n
        np.testing.assert_allclose(acts[()], manual_layers(make_net(), ds)["blocks.0"].numpy(),
                                   rtol=1e-6, atol=1e-6)
    finally:
        acts.file.close()


def test_dataset_of_tuples_and_num_workers(tmp_path):
    x = torch.randn(N, 3, H, W)
    net = make_net()
    run(net, TensorItems(x), "stem", tmp_path / "a.h5")
    with torch.no_grad():
        want = net.stem(x).numpy()
    np.testing.assert_allclose(load_activations(tmp_path / "a.h5"), want, rtol=1e-6, atol=1e-6)
    assert read_activations_metadata(tmp_path / "a.h5")["dataset"] == "tensors"
    # An images file read by a worker process (the HDF5 file is opened there).
    images = tmp_path / "images.h5"
    save_images(images, make_images())
    run(make_net(), ImageDataset(images), "stem", tmp_path / "b.h5", num_workers=1)
    run(make_net(), ImageDataset(make_images()), "stem", tmp_path / "c.h5")
    np.testing.assert_array_equal(load_activations(tmp_path / "b.h5"),
                                  load_activations(tmp_path / "c.h5"))


def test_model_mode_is_restored_and_eval_is_used(tmp_path, ds):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Dropout(0.9), nn.Conv2d(4, 2, 1))
    net.train()
    run(net, ds, "1", tmp_path / "a.h5")
    assert net.training and net[1].training
    with torch.no_grad():
        want = net[0](torch.stack([ds[i] for i in range(N)]))
    np.testing.assert_allclose(load_activations(tmp_path / "a.h5"), want.numpy(), rtol=1e-6,
                               atol=1e-6)  # dropout off: eval mode


def test_progress_bar(tmp_path, ds, capsys):
    run(make_net(), ds, "stem", tmp_path / "a.h5", progress=True)
    err = capsys.readouterr().err
    assert "extract stem" in err and "10/10" in err


# ----------------------------------------------------------------------------- errors

def test_unknown_layer(tmp_path, ds):
    with pytest.raises(ValueError, match=r"layer 'blocks.5' does not exist: 'blocks' has no "
                                         r"submodule '5' \(its submodules: 0, 1\)"):
        run(make_net(), ds, "blocks.5", tmp_path / "a.h5")
    with pytest.raises(ValueError, match=r"the model has no submodule 'blok'.*stem, blocks, pool, "
                                         r"head"):
        run(make_net(), ds, "blok", tmp_path / "a.h5")
    with pytest.raises(ValueError, match=r"did you mean 'blocks.1.conv'"):
        run(make_net(), ds, "blocks.1.cnv", tmp_path / "a.h5")
    with pytest.raises(ValueError, match="not a module path"):
        run(make_net(), ds, "blocks..1", tmp_path / "a.h5")
    with pytest.raises(TypeError, match="module path string"):
        run(make_net(), ds, ["stem", 3], tmp_path / "a_{layer}.h5")
    assert os.listdir(tmp_path) == []


class Reshape3D(nn.Module):
    def forward(self, x):
        return x.flatten(2)


class Pair(nn.Module):
    def forward(self, x):
        return x, x


class ToInt(nn.Module):
    def forward(self, x):
        return x.long()


@pytest.mark.parametrize("module,match", [
    (Reshape3D(), r"layer '1' returns shape \(4, 2, 64\) for a batch of 4; extraction needs"),
    (Pair(), r"layer '1' returns a tuple, not a tensor"),
    (ToInt(), r"layer '1' returns a torch.int64 tensor"),
])
def test_layer_output_of_the_wrong_kind(tmp_path, ds, module, match):
    net = nn.Sequential(nn.Conv2d(3, 2, 1), module)
    with pytest.raises((ValueError, TypeError), match=match):
        run(net, ds, "1", tmp_path / "a.h5")
    assert not os.path.exists(tmp_path / "a.h5")


def test_layer_not_called(tmp_path, ds):
    net = make_net()
    net.unused = nn.Conv2d(3, 3, 1)
    with pytest.raises(RuntimeError, match=r"layer 'unused' was not called .* samples 0..3"):
        run(net, ds, "unused", tmp_path / "a.h5")


def test_wrong_image_size_names_the_samples_and_the_shape(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(2 * 6 * 6, 4))
    run(net, ImageDataset(make_images()), "2", tmp_path / "ok.h5")
    assert open_activations(tmp_path / "ok.h5").shape == (N, 4)
    with pytest.raises(RuntimeError, match=r"model failed on samples 0..3 \(input shape "
                                           r"\(4, 3, 10, 10\)\): RuntimeError: mat1 and mat2") as e:
        run(net, ImageDataset(make_images(h=10, w=10)), "2", tmp_path / "a.h5")
    assert isinstance(e.value.__cause__, RuntimeError)


def test_model_failing_later(tmp_path, ds):
    class FailAfter(nn.Module):
        def __init__(self, batches):
            super().__init__()
            self.left = batches

        def forward(self, x):
            if self.left == 0:
                raise ValueError("boom")
            self.left -= 1
            return x

    net = nn.Sequential(FailAfter(2), nn.Conv2d(3, 2, 1))
    with pytest.raises(RuntimeError, match=r"model failed on samples 8..9 \(input shape "
                                           r"\(2, 3, 8, 8\)\): ValueError: boom"):
        run(net, ds, "1", tmp_path / "a.h5")
    with h5py.File(str(tmp_path / "a.h5") + PARTIAL_SUFFIX, "r") as f:
        assert f.attrs["n_done"] == 8  # kept for resume
    net[0].left = 100
    run(net, ds, "1", tmp_path / "a.h5", resume=True)
    run(nn.Sequential(nn.Identity(), net[1]), ds, "1", tmp_path / "b.h5")
    np.testing.assert_array_equal(load_activations(tmp_path / "a.h5"),
                                  load_activations(tmp_path / "b.h5"))


def test_non_finite_output(tmp_path):
    x = torch.randn(N, 3, H, W)
    x[6, 1, 2, 3] = float("nan")
    net = nn.Sequential(nn.Conv2d(3, 2, 1))
    with pytest.raises(ValueError, match=r"layer '0' gives a non-finite value \(nan\) on sample 6 "
                                         r"\(of samples 4..7\), at index \(6, "):
        run(net, TensorItems(x), "0", tmp_path / "a.h5")
    assert not os.path.exists(tmp_path / "a.h5")
    with h5py.File(str(tmp_path / "a.h5") + PARTIAL_SUFFIX, "r") as f:
        assert f.attrs["n_done"] == 4
    big = torch.full((2, 3, 2, 2), 1e5)
    with pytest.raises(ValueError, match="overflow"):
        run(nn.Sequential(nn.Identity()), TensorItems(big), "0", tmp_path / "b.h5",
            dtype="float16")


def test_bad_arguments(tmp_path, ds):
    net = make_net()
    with pytest.raises(TypeError, match="torch.nn.Module"):
        run(lambda x: x, ds, "stem", tmp_path / "a.h5")
    with pytest.raises(ValueError, match="dtype"):
        run(net, ds, "stem", tmp_path / "a.h5", dtype="int8")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        run(net, ds, "stem", tmp_path / "a.h5", batch_size=0)
    with pytest.raises(ValueError, match="device"):
        run(net, ds, "stem", tmp_path / "a.h5", device="tpu")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        run(net, ds, "stem", tmp_path / "nowhere" / "a.h5")
    with pytest.raises(ValueError, match="empty"):
        run(net, TensorItems(torch.zeros(0, 3, 4, 4)), "stem", tmp_path / "a.h5")
    with pytest.raises(TypeError, match="tensors or tuples"):
        run(net, ["not a tensor"] * 3, "stem", tmp_path / "a.h5")


def test_dataset_failing_to_load(tmp_path, ds):
    class Broken(Interrupting):
        def __getitem__(self, i):
            if i == 5:
                raise OSError("disk on fire")
            return self.base[i]

    with pytest.raises(RuntimeError, match=r"loading samples 4..7 from the dataset failed: "
                                           r"OSError: disk on fire"):
        run(make_net(), Broken(ds), "stem", tmp_path / "a.h5")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cuda_without_cuda(tmp_path, ds):
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        run(make_net(), ds, "stem", tmp_path / "a.h5", device="cuda")
    run(make_net(), ds, "stem", tmp_path / "a.h5", device="auto")  # falls back to the CPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_equals_cpu(tmp_path, ds):
    run(make_net(), ds, "blocks.1.conv", tmp_path / "cpu.h5")
    run(make_net(), ds, "blocks.1.conv", tmp_path / "gpu.h5", device="cuda")
    np.testing.assert_allclose(load_activations(tmp_path / "gpu.h5"),
                               load_activations(tmp_path / "cpu.h5"), rtol=1e-3, atol=1e-4)


# ----------------------------------------------------------------------------- resume

def test_interrupted_extraction_resumes_without_recomputing(tmp_path, ds):
    out = tmp_path / "acts_{layer}.h5"
    layers = ["blocks.1.conv", "head"]
    interrupting = Interrupting(ds, at=6)
    with pytest.raises(KeyboardInterrupt):
        run(make_net(), interrupting, layers, out)
    for layer in layers:
        partial = str(out).format(layer=layer) + PARTIAL_SUFFIX
        with h5py.File(partial, "r") as f:
            assert f.attrs["n_done"] == 4 and f.attrs["format"] == b"compexp-activations-partial"
        assert not os.path.exists(str(out).format(layer=layer))
        with pytest.raises(ValueError, match="is not a compexp-activations file"):
            open_activations(partial)  # a partial file is never taken for a finished one

    net = make_net()
    seen = count_samples(net)
    again = Interrupting(ds)
    paths = run(net, again, layers, out, resume=True)
    assert sum(seen) == N - 4 and min(again.loaded) == 4  # samples 0..3 were not recomputed
    ref = run(make_net(), ds, layers, tmp_path / "ref_{layer}.h5")
    for path, ref_path in zip(paths, ref):
        np.testing.assert_array_equal(load_activations(path), load_activations(ref_path))
        assert read_activations_metadata(path)["layer"] == read_activations_metadata(ref_path)[
            "layer"]
        assert not os.path.exists(path + PARTIAL_SUFFIX)
        with h5py.File(path, "r") as f:
            assert "n_done" not in f.attrs and f.attrs["format"] == b"compexp-activations"


def test_an_interrupted_extraction_keeps_the_previous_file(tmp_path, ds):
    out = tmp_path / "a.h5"
    run(make_net(), ds, "stem", out)
    before = out.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        run(make_net(seed=1), Interrupting(ds, at=6), "stem", out)
    assert out.read_bytes() == before                    # untouched until the run completes
    assert sorted(os.listdir(tmp_path)) == ["a.h5", "a.h5" + PARTIAL_SUFFIX]
    run(make_net(seed=1), ds, "stem", out, resume=True)
    assert sorted(os.listdir(tmp_path)) == ["a.h5"] and out.read_bytes() != before


def test_resume_after_the_last_batch_and_without_a_partial_file(tmp_path, ds):
    out = tmp_path / "a.h5"
    with pytest.raises(KeyboardInterrupt):
        run(make_net(), Interrupting(ds, at=9), "stem", out, batch_size=9)
    net = make_net()
    seen = count_samples(net)
    run(net, ds, "stem", out, resume=True, batch_size=5)  # another batch size is fine
    assert seen == [1]
    run(make_net(), ds, "stem", tmp_path / "b.h5", resume=True)  # nothing to resume: starts
    # (batches of other sizes may round differently in the last bit)
    np.testing.assert_allclose(load_activations(out), load_activations(tmp_path / "b.h5"),
                               rtol=1e-6, atol=1e-6)


def test_without_resume_a_stale_partial_file_is_overwritten(tmp_path, ds):
    out = tmp_path / "a.h5"
    with pytest.raises(KeyboardInterrupt):
        run(make_net(seed=1), Interrupting(ds, at=5), "stem", out)
    net = make_net()
    seen = count_samples(net)
    run(net, ds, "stem", out)
    assert sum(seen) == N
    np.testing.assert_allclose(load_activations(out),
                               manual_layers(make_net(), ds)["stem"].numpy(), rtol=1e-6,
                               atol=1e-6)


@pytest.mark.parametrize("change,match", [
    (dict(model_name="other"), r"written for model 'Net', this extraction has model 'other'"),
    (dict(dtype="float16"), r"written for dtype 'float32', this extraction has dtype 'float16'"),
    (dict(dataset_name="other"), r"written for dataset 'array of 10 images 8x8'"),
    (dict(n=7), r"written for n_samples 10, this extraction has n_samples 7"),
])
def test_mismatched_resume(tmp_path, ds, change, match):
    out = tmp_path / "a.h5"
    with pytest.raises(KeyboardInterrupt):
        run(make_net(), Interrupting(ds, at=5), "stem", out)
    n = change.pop("n", None)
    data = ImageDataset(make_images(n)) if n else ds
    if n:
        change["dataset_name"] = ds.description
    with pytest.raises(ValueError, match=match):
        run(make_net(), data, "stem", out, resume=True, **change)
    assert os.path.exists(str(out) + PARTIAL_SUFFIX)


def test_resume_with_a_different_map_size(tmp_path):
    out = tmp_path / "a.h5"
    with pytest.raises(KeyboardInterrupt):
        run(make_net(), Interrupting(ImageDataset(make_images()), at=5), "stem", out)
    bigger = ImageDataset(make_images(), size=12)
    bigger.description = ImageDataset(make_images()).description
    with pytest.raises(ValueError, match=r"gives \[U, h, w\] = \(4, 6, 6\) on samples 4..7 but "
                                         r"\(4, 4, 4\)"):
        run(make_net(), bigger, "stem", out, resume=True)


def test_resume_from_a_file_that_is_not_a_partial_file(tmp_path, ds):
    out = tmp_path / "a.h5"
    with open(str(out) + PARTIAL_SUFFIX, "w") as f:
        f.write("text")
    with pytest.raises(ValueError, match="cannot resume from .*not a readable HDF5 file"):
        run(make_net(), ds, "stem", out, resume=True)


# ----------------------------------------------------------------------------- TorchScript

@torch_file_warnings
@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_model_gives_the_same_activations(tmp_path, ds, how):
    net = make_net()
    x = torch.stack([ds[i] for i in range(2)])
    ts = torch.jit.script(net) if how == "script" else torch.jit.trace(net.eval(), x)
    path = tmp_path / "net.pt"
    torch.jit.save(ts, str(path))
    loaded = load_model(str(path))
    assert isinstance(loaded, torch.jit.ScriptModule)
    layers = ["blocks.1.conv", "blocks.0", "stem", "head"]
    got = run(loaded, ds, layers, tmp_path / "ts_{layer}.h5")
    want = run(make_net(), ds, layers, tmp_path / "py_{layer}.h5")
    for g, w in zip(got, want):
        np.testing.assert_allclose(load_activations(g), load_activations(w), rtol=1e-6,
                                   atol=1e-6)
    assert read_activations_metadata(got[0])["model"] == "Net"
    with pytest.raises(ValueError, match=r"layer 'blocks.1.cnv' does not exist.*did you mean"):
        run(loaded, ds, "blocks.1.cnv", tmp_path / "x.h5")


@torch_file_warnings
def test_torchscript_layer_with_a_tuple_output(tmp_path, ds):
    net = torch.jit.script(nn.Sequential(nn.Conv2d(3, 2, 1), Pair()))
    with pytest.raises(ValueError, match=r"layer '1' returns .*Tuple.*not a tensor"):
        run(net, ds, "1", tmp_path / "a.h5")


@torch_file_warnings
def test_torchscript_wrong_input_size(tmp_path):
    torch.manual_seed(0)
    net = torch.jit.script(nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(72, 4)))
    with pytest.raises(RuntimeError, match=r"model failed on samples 0..3 \(input shape "
                                           r"\(4, 3, 10, 10\)\): .*mat1 and mat2"):
        run(net, ImageDataset(make_images(h=10, w=10)), "2", tmp_path / "a.h5")


@torch_file_warnings
def test_layer_inside_a_torchscript_submodule_of_a_python_model(tmp_path, ds):
    net = nn.Sequential(torch.jit.script(nn.Sequential(nn.Conv2d(3, 2, 1))))
    with pytest.raises(ValueError, match="TorchScript submodule"):
        run(net, ds, "0.0", tmp_path / "a.h5")


@torch_file_warnings
def test_torch_export_program(tmp_path, ds):
    x = torch.stack([ds[i] for i in range(4)])
    batch = torch.export.Dim("batch")
    program = torch.export.export(make_net().eval(), (x,), dynamic_shapes=({0: batch},))
    path = tmp_path / "net.pt2"
    torch.export.save(program, str(path))
    loaded = load_model(str(path))
    layers = ["blocks.1.conv", "stem", "head"]
    got = run(loaded, ds, layers, tmp_path / "ep_{layer}.h5")
    want = run(make_net(), ds, layers, tmp_path / "py_{layer}.h5")
    for g, w in zip(got, want):
        np.testing.assert_allclose(load_activations(g), load_activations(w), rtol=1e-6,
                                   atol=1e-6)
    # Exported with a fixed batch of 4: the last batch (2 samples) fails, and says why.
    torch.export.save(torch.export.export(make_net().eval(), (x,)), str(path))
    with pytest.raises(RuntimeError, match=r"model failed on samples 8..9 \(input shape "
                                           r"\(2, 3, 8, 8\)\): .*shape\[0\]"):
        run(load_model(str(path)), ds, "stem", tmp_path / "a.h5")


# ----------------------------------------------------------------------------- load_model

MODEL_PY = """
import torch
from torch import nn

def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 2, 1))

def not_a_model():
    return 42

def broken():
    raise KeyError("weights missing")

NOT_CALLABLE = 3
"""


@pytest.fixture
def model_py(tmp_path):
    path = tmp_path / "mymodels.py"
    path.write_text(MODEL_PY)
    return path


def test_load_model_from_a_python_file_and_a_module(model_py, monkeypatch):
    m = load_model(f"{model_py}:build")
    assert isinstance(m, nn.Sequential) and isinstance(m[0], nn.Conv2d)
    monkeypatch.syspath_prepend(str(model_py.parent))
    monkeypatch.delitem(sys.modules, "mymodels", raising=False)
    m2 = load_model("mymodels:build")
    torch.testing.assert_close(m2[0].weight, m[0].weight)
    assert isinstance(load_model("torch.nn:Identity"), nn.Identity)


@torch_file_warnings
def test_load_model_errors(tmp_path, model_py):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_model(str(tmp_path / "missing.pt"))
    text = tmp_path / "model.pt"
    text.write_text("not a model")
    with pytest.raises(ValueError, match=r"model.pt' is neither a TorchScript file nor a "
                                         r"torch.export program \(torch.jit.load: "):
        load_model(str(text))
    state = tmp_path / "state.pt"
    torch.save(nn.Linear(2, 2).state_dict(), str(state))
    with pytest.raises(ValueError, match="is neither a TorchScript file"):
        load_model(str(state))
    with pytest.raises(FileNotFoundError, match="nope.py"):
        load_model(str(tmp_path / "nope.py") + ":build")
    with pytest.raises(ValueError, match="cannot import module 'no_such_module_xyz'"):
        load_model("no_such_module_xyz:build")
    with pytest.raises(ValueError, match="has no attribute 'missing'"):
        load_model(f"{model_py}:missing")
    with pytest.raises(ValueError, match="'NOT_CALLABLE' is not callable"):
        load_model(f"{model_py}:NOT_CALLABLE")
    with pytest.raises(TypeError, match=r"not_a_model\(\) returned a int, not a torch.nn.Module"):
        load_model(f"{model_py}:not_a_model")
    with pytest.raises(RuntimeError, match=r"broken\(\) failed: KeyError: 'weights missing'"):
        load_model(f"{model_py}:broken")
    bad = tmp_path / "bad.py"
    bad.write_text("import no_such_module_xyz\n")
    with pytest.raises(ValueError, match="running .*bad.py' failed: ModuleNotFoundError"):
        load_model(f"{bad}:build")


# ----------------------------------------------------------------------------- ImageDataset

def test_image_dataset_from_file_and_array(tmp_path):
    images = make_images()
    path = tmp_path / "images.h5"
    save_images(path, images, dataset="probe")
    from_file, from_array = ImageDataset(path), ImageDataset(images)
    assert len(from_file) == len(from_array) == N
    assert from_file.description == str(path.resolve())
    for i in (0, N - 1, -1):
        torch.testing.assert_close(from_file[i], from_array[i], rtol=0, atol=0)
    x = from_array[3]
    assert x.dtype == torch.float32 and x.shape == (3, H, W)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    want = (torch.from_numpy(images[3]).permute(2, 0, 1).float() / 255 - mean) / std
    torch.testing.assert_close(x, want)
    # Pickles without its open HDF5 handle (for DataLoader workers) and reopens after.
    clone = pickle.loads(pickle.dumps(from_file))
    torch.testing.assert_close(clone[2], from_array[2], rtol=0, atol=0)
    from_file.close()


def test_image_dataset_resize_and_normalisation():
    images = np.zeros((1, 4, 4, 3), np.uint8)
    images[0, :, 2:] = 255
    ds = ImageDataset(images, mean=(0, 0, 0), std=(1, 1, 1), size=(2, 6))
    x = ds[0]
    assert x.shape == (3, 2, 6)
    want = torch.nn.functional.interpolate(
        torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255, size=(2, 6),
        mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(x, want)
    assert ImageDataset(images, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))[0].min() == -1


def test_image_dataset_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        ImageDataset(tmp_path / "missing.h5")
    with pytest.raises(TypeError, match="uint8"):
        ImageDataset(np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        ImageDataset(np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="std must be > 0"):
        ImageDataset(make_images(), std=(1, 0, 1))
    with pytest.raises(ValueError, match="mean must be 3"):
        ImageDataset(make_images(), mean=(1, 2))
    with pytest.raises(ValueError, match="size must be >= 1"):
        ImageDataset(make_images(), size=0)
    with pytest.raises(IndexError):
        ImageDataset(make_images())[N]


# ----------------------------------------------------------------------------- command line

@torch_file_warnings
def test_cli_end_to_end(tmp_path, capsys):
    images = tmp_path / "images.h5"
    save_images(images, make_images(), dataset="probe")
    model = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(make_net()), str(model))
    out = tmp_path / "acts.h5"
    assert main(["extract", str(model), str(images), "-o", str(out), "--layer", "blocks.1.conv",
                 "--batch-size", "3", "--no-progress", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}: layer blocks.1.conv, shape (10, 5, 4, 4), float32" in printed
    acts = open_activations(out)
    try:
        assert acts.shape == (N, 5, 4, 4)
        want = manual_layers(make_net(), ImageDataset(images))["blocks.1.conv"].numpy()
        np.testing.assert_allclose(acts[()], want, rtol=1e-6, atol=1e-6)
    finally:
        acts.file.close()
    meta = read_activations_metadata(out)
    assert (meta["model"], meta["layer"], meta["dataset"]) == (
        str(model), "blocks.1.conv", str(images.resolve()))


def test_cli_options(tmp_path, capsys, model_py):
    images = tmp_path / "images.h5"
    save_images(images, make_images())
    out = tmp_path / "acts_{layer}.h5"
    assert main(["extract", f"{model_py}:build", str(images), "-o", str(out), "--layer", "0",
                 "--layer", "", "--no-progress"]) == 2
    assert "not a module path" in capsys.readouterr().err
    assert main(["extract", f"{model_py}:build", str(images), "-o", str(out), "--layer", "0",
                 "--float16", "--size", "6,5", "--mean", "0,0,0", "--std", "1,1,1",
                 "--workers", "0", "--no-progress"]) == 0
    acts = load_activations(tmp_path / "acts_0.h5")
    assert acts.dtype == np.float16 and acts.shape == (N, 2, 6, 5)
    ds = ImageDataset(images, mean=(0, 0, 0), std=(1, 1, 1), size=(6, 5))
    with torch.no_grad():
        want = load_model(f"{model_py}:build")(torch.stack([ds[i] for i in range(N)]))
    np.testing.assert_array_equal(acts, want.numpy().astype(np.float16))


@pytest.mark.parametrize("argv,match", [
    (["--layer", "nope"], "layer 'nope' does not exist"),
    (["--layer", "0", "--device", "cuda"], "cuda"),
])
def test_cli_errors(tmp_path, capsys, model_py, argv, match):
    images = tmp_path / "images.h5"
    save_images(images, make_images())
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("checks the error without CUDA")
    code = main(["extract", f"{model_py}:build", str(images), "-o", str(tmp_path / "a.h5"),
                 "--no-progress", *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("compexp extract: error: ") and match in err


def test_cli_bad_files(tmp_path, capsys, model_py):
    images = tmp_path / "images.h5"
    save_images(images, make_images())
    assert main(["extract", str(tmp_path / "none.pt"), str(images), "-o",
                 str(tmp_path / "a.h5"), "--layer", "0"]) == 2
    assert "none.pt" in capsys.readouterr().err
    assert main(["extract", f"{model_py}:build", str(tmp_path / "none.h5"), "-o",
                 str(tmp_path / "a.h5"), "--layer", "0"]) == 2
    assert "none.h5" in capsys.readouterr().err
    assert main(["extract", f"{model_py}:build", str(tmp_path), "-o",
                 str(tmp_path / "a.h5"), "--layer", "0"]) == 2
    assert "without index.csv" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["extract", f"{model_py}:build", str(images), "-o", "a.h5", "--layer", "0",
              "--size", "0"])
    assert "--size takes" in capsys.readouterr().err


def test_cli_interrupt_then_resume(tmp_path, capsys, model_py, monkeypatch):
    images = tmp_path / "images.h5"
    save_images(images, make_images())
    out = tmp_path / "a.h5"
    argv = ["extract", f"{model_py}:build", str(images), "-o", str(out), "--layer", "0",
            "--batch-size", "4", "--no-progress"]
    original = ImageDataset.__getitem__

    def interrupted(self, i):
        if i == 5:
            raise KeyboardInterrupt
        return original(self, i)

    monkeypatch.setattr(ImageDataset, "__getitem__", interrupted)
    assert main(argv) == 130
    assert "--resume" in capsys.readouterr().err
    monkeypatch.setattr(ImageDataset, "__getitem__", original)
    assert main(argv + ["--resume"]) == 0
    assert open_activations(out).shape == (N, 2, H, W)


def test_docstring_examples():
    failures, tried = doctest.testmod(compexp_core.extract,
                                      optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert tried > 0 and failures == 0


def test_importing_the_module_does_not_import_torch():
    import subprocess

    code = ("import sys, compexp_core.extract, compexp_core.cli; "
            "compexp_core.cli.build_parser(); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
