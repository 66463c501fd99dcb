"""Tests for the model conventions of ``compexp extract``: ``torchvision:NAME`` and
``timm:NAME`` models, ``--weights`` checkpoints (a plain state dict, ``{"state_dict": ...}``,
a ``module.`` prefix), the class count read from a checkpoint, several layers in one command,
and Broden subset indexes (``--index index_ade20k.csv``) for ``convert-broden`` and
``extract``.

torchvision and timm are replaced by small fake packages written here (a folder put on
``sys.path``) that mirror the real entry points: ``torchvision.models.get_model(name,
**config)`` / ``list_models()``, and ``timm.create_model(name, pretrained=False, **kwargs)`` /
``list_models()`` / ``is_model()``; they return tiny models with the real models' layer
names (``conv1``, ``layer1``, ``fc``; ``head``). The tests at the end use the real packages
and skip where they are not installed.
"""
import os
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from compexp_core.broden import (
    BrodenDataset,
    convert_broden,
    read_broden_index,
    resolve_index_path,
)
from compexp_core.cli import main
from compexp_core.extract import ImageDataset, load_model, read_state_dict
from compexp_core.io import load_activations, load_concepts, read_activations_metadata, save_images

FAKE_TORCHVISION_MODELS = '''
import torch
from torch import nn

CALLS = []          # (name, config) of every get_model call


class ResNet(nn.Module):
    """A tiny network with torchvision's ResNet layer names."""

    def __init__(self, num_classes=1000, width=4):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
                                    nn.BatchNorm2d(2 * width), nn.ReLU())
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x)))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class AlexNet(nn.Module):
    """Its final layer is classifier.2 (a Sequential), as in torchvision's AlexNet/VGG."""

    def __init__(self, num_classes=1000):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        self.avgpool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


_BUILDERS = {"resnet18": ResNet, "resnet34": lambda **kw: ResNet(width=6, **kw),
             "alexnet": AlexNet}


def list_models(module=None, include=None, exclude=None):
    return sorted(_BUILDERS)


def get_model(name, **config):
    CALLS.append((name, dict(config)))
    if config.pop("weights", None) is not None:
        raise RuntimeError("the fake torchvision has no pretrained weights")
    if name not in _BUILDERS:
        raise ValueError(f"Unknown model {name}")
    return _BUILDERS[name](**config)
'''

FAKE_TIMM = '''
import torch
from torch import nn

CALLS = []          # (name, pretrained, kwargs) of every create_model call


class TinyViT(nn.Module):
    """Its final layer is ``head``, as in timm's vision transformers."""

    def __init__(self, num_classes=1000):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, 6, 2, stride=2)
        self.blocks = nn.Sequential(nn.Conv2d(6, 6, 1), nn.GELU(), nn.Conv2d(6, 6, 1))
        self.head = nn.Linear(6, num_classes)

    def forward(self, x):
        x = self.blocks(self.patch_embed(x))
        return self.head(x.mean((2, 3)))


_BUILDERS = {"vit_tiny_patch16_224": TinyViT}


def list_models(filter="", module="", pretrained=False, exclude_filters="", name_matches_cfg=False,
                include_tags=None):
    return sorted(_BUILDERS)


def is_model(model_name):
    return model_name.split(".")[0] in _BUILDERS


def create_model(model_name, pretrained=False, pretrained_cfg=None, pretrained_cfg_overlay=None,
                 checkpoint_path=None, scriptable=None, exportable=None, no_jit=None, **kwargs):
    CALLS.append((model_name, pretrained, dict(kwargs)))
    if pretrained:
        raise RuntimeError("the fake timm downloads nothing")
    if not is_model(model_name):
        raise RuntimeError(f"Unknown model ({model_name})")
    return _BUILDERS[model_name.split(".")[0]](**kwargs)
'''

PACKAGES = ("torchvision", "timm")


def _forget_packages():
    for name in list(sys.modules):
        if name.split(".")[0] in PACKAGES:
            del sys.modules[name]


@pytest.fixture
def fake_packages(tmp_path, monkeypatch):
    """Fake torchvision and timm importable for one test (removed again afterwards)."""
    root = tmp_path / "fake_site"
    (root / "torchvision" / "models").mkdir(parents=True)
    (root / "torchvision" / "__init__.py").write_text("from . import models\n")
    (root / "torchvision" / "models" / "__init__.py").write_text(FAKE_TORCHVISION_MODELS)
    (root / "timm").mkdir()
    (root / "timm" / "__init__.py").write_text(FAKE_TIMM)
    for name in list(sys.modules):
        if name.split(".")[0] in PACKAGES:
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(root))
    yield root
    _forget_packages()


def fake_model(name, num_classes, seed=0):
    """A fake torchvision model with random weights and BatchNorm statistics."""
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    with torch.no_grad():
        for buf in model.buffers():
            if buf.is_floating_point():
                buf.uniform_(0.5, 1.5)
    return model


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


def save_checkpoint(model, path, shape):
    """``model``'s weights in one of the three checkpoint shapes ``--weights`` reads."""
    state = model.state_dict()
    if shape == "plain":
        torch.save(state, path)
    elif shape == "state_dict":
        torch.save({"epoch": 3, "arch": "resnet18", "state_dict": state, "best_prec1": 51.5},
                   path)
    elif shape == "places365":
        # As the Places365 models ship: saved from DataParallel (keys "module.*") by a PyTorch
        # older than BatchNorm's num_batches_tracked.
        old = {"module." + k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
        torch.save({"epoch": 90, "arch": "resnet18", "state_dict": old, "best_prec1": 54.7}, path)
    else:
        raise AssertionError(shape)
    return path


# ============================================================================ torchvision:NAME

def test_torchvision_model_without_weights(fake_packages):
    import torchvision

    model = load_model("torchvision:resnet18")
    assert type(model).__name__ == "ResNet" and model.fc.out_features == 1000
    assert torchvision.models.CALLS == [("resnet18", {"weights": None})]
    assert load_model("torchvision:alexnet", num_classes=7).classifier[2].out_features == 7
    assert torchvision.models.CALLS[-1] == ("alexnet", {"weights": None, "num_classes": 7})


@pytest.mark.parametrize("shape", ["plain", "state_dict", "places365"])
def test_weights_in_each_checkpoint_shape(fake_packages, tmp_path, shape):
    trained = fake_model("resnet18", num_classes=365, seed=1)
    ckpt = save_checkpoint(trained, tmp_path / "resnet18_places365.pth.tar", shape)
    model = load_model("torchvision:resnet18", weights=ckpt)
    # The class count comes from the checkpoint's fc.weight: 365, not the default 1000.
    assert model.fc.out_features == 365
    expected = trained.state_dict()
    for k, v in model.state_dict().items():
        if shape == "places365" and k.endswith("num_batches_tracked"):
            continue                       # not in old checkpoints: BatchNorm fills it in
        torch.testing.assert_close(v, expected[k], rtol=0, atol=0, msg=k)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), trained.eval()(x))


def test_read_state_dict_shapes(tmp_path):
    lin = torch.nn.Linear(3, 2)
    plain = read_state_dict(save_checkpoint(lin, tmp_path / "a.pth", "plain"))
    wrapped = read_state_dict(save_checkpoint(lin, tmp_path / "b.pth", "state_dict"))
    prefixed = read_state_dict(save_checkpoint(lin, tmp_path / "c.pth", "places365"))
    assert list(plain) == list(wrapped) == list(prefixed) == ["weight", "bias"]
    torch.save({"model": lin.state_dict(), "optimizer": {"lr": 0.1}}, tmp_path / "d.pth")
    assert list(read_state_dict(tmp_path / "d.pth")) == ["weight", "bias"]
    # Only a prefix on every key is DataParallel's: a lone "module." key stays as it is.
    torch.save({"module.a": torch.zeros(1), "b": torch.zeros(1)}, tmp_path / "e.pth")
    assert list(read_state_dict(tmp_path / "e.pth")) == ["module.a", "b"]


def test_num_classes_explicit_and_inferred(fake_packages, tmp_path):
    ckpt = save_checkpoint(fake_model("alexnet", 12), tmp_path / "a.pth", "state_dict")
    # Inferred from the last weight (classifier.2.weight), then given explicitly: the same.
    assert load_model("torchvision:alexnet", weights=ckpt).classifier[2].out_features == 12
    model = load_model("torchvision:alexnet", weights=ckpt, num_classes=12)
    assert_same_weights(model, fake_model("alexnet", 12))
    # A checkpoint with the default head: the model is built once, with the default.
    import torchvision

    same = save_checkpoint(fake_model("resnet18", 1000), tmp_path / "r.pth", "plain")
    torchvision.models.CALLS.clear()
    assert load_model("torchvision:resnet18", weights=same).fc.out_features == 1000
    assert torchvision.models.CALLS == [("resnet18", {"weights": None})]
    # An explicit count that contradicts the checkpoint: the shapes are named.
    with pytest.raises(ValueError, match=r"do not fit model 'torchvision:alexnet': 2 of another "
                                         r"shape \(classifier.2.weight: checkpoint \(12, 8\), "
                                         r"model \(5, 8\); classifier.2.bias"):
        load_model("torchvision:alexnet", weights=ckpt, num_classes=5)
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        load_model("torchvision:alexnet", num_classes=0)
    with pytest.raises(TypeError, match="num_classes must be an integer"):
        load_model("torchvision:alexnet", num_classes="12")


def test_weights_that_do_not_fit(fake_packages, tmp_path):
    state = fake_model("resnet18", 10).state_dict()
    del state["layer1.0.weight"], state["layer1.0.bias"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"weights '.*partial.pth' do not fit model "
                                         r"'torchvision:resnet18': 2 missing key\(s\) "
                                         r"\(layer1.0.weight, layer1.0.bias\); 1 unexpected "
                                         r"key\(s\) \(extra.weight\)"):
        load_model("torchvision:resnet18", weights=tmp_path / "partial.pth")
    # The weights of another architecture: the first few keys, then "...".
    big = {f"blocks.{i}.weight": torch.zeros(2, 2) for i in range(9)}
    torch.save(big, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"9 unexpected key\(s\) \(blocks.0.weight, "
                                         r"blocks.1.weight, blocks.2.weight, blocks.3.weight, "
                                         r"blocks.4.weight, ...\)"):
        load_model("torchvision:resnet18", weights=tmp_path / "other.pth")
    # Another width (resnet34 of the fake): shapes differ before the head.
    torch.save(fake_model("resnet34", 1000).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(ValueError, match=r"of another shape \(conv1.weight: checkpoint "
                                         r"\(6, 3, 3, 3\), model \(4, 3, 3, 3\)"):
        load_model("torchvision:resnet18", weights=tmp_path / "r34.pth")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_unreadable_checkpoints(fake_packages, tmp_path):
    with pytest.raises(FileNotFoundError, match="none.pth"):
        load_model("torchvision:resnet18", weights=tmp_path / "none.pth")
    with pytest.raises(IsADirectoryError):
        read_state_dict(tmp_path)
    whole = tmp_path / "whole.pth"
    torch.save(fake_model("resnet18", 3), whole)             # a pickled model, not weights
    with pytest.raises(ValueError, match=r"whole.pth': torch.load\(weights_only=True\) cannot "
                                         r"read it .*keep only its tensors"):
        load_model("torchvision:resnet18", weights=whole)
    text = tmp_path / "text.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="text.pth': torch.load"):
        read_state_dict(text)
    torch.save({"epoch": 3, "arch": "resnet18"}, tmp_path / "meta.pth")
    with pytest.raises(ValueError, match=r"holds a dict with keys 'epoch', 'arch', not a state "
                                         r"dict"):
        read_state_dict(tmp_path / "meta.pth")
    torch.save({}, tmp_path / "empty.pth")
    with pytest.raises(ValueError, match="holds an empty dict"):
        read_state_dict(tmp_path / "empty.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="holds a list, not a state dict"):
        read_state_dict(tmp_path / "list.pth")
    torch.save({"weight": torch.zeros(1), "step": 5}, tmp_path / "mixed.pth")
    with pytest.raises(ValueError, match=r"1 entries are not name -> tensor \(first: 'step' -> "
                                         r"int\)"):
        read_state_dict(tmp_path / "mixed.pth")
    with pytest.raises(TypeError, match="weights must be the path"):
        load_model("torchvision:resnet18", weights=3)


def test_unknown_model_names_near_matches(fake_packages):
    with pytest.raises(ValueError, match=r"'torchvision:resnet81': torchvision has no model "
                                         r"'resnet81'; did you mean 'resnet18'"):
        load_model("torchvision:resnet81")
    with pytest.raises(ValueError, match=r"torchvision has no model 'zzz' \(3 models there\)"):
        load_model("torchvision:zzz")
    with pytest.raises(ValueError, match=r"timm has no model 'vit_tiny_patch16_2244'; did you "
                                         r"mean 'vit_tiny_patch16_224'"):
        load_model("timm:vit_tiny_patch16_2244")


@pytest.mark.parametrize("package", PACKAGES)
def test_missing_package_says_how_to_install_it(monkeypatch, package):
    monkeypatch.setitem(sys.modules, package, None)       # `import package` fails
    with pytest.raises(ImportError, match=f"needs {package}, which is not installed: pip install "
                                          f"{package}"):
        load_model(f"{package}:resnet18")


def test_broken_package_is_named(tmp_path, monkeypatch):
    root = tmp_path / "site"
    (root / "torchvision").mkdir(parents=True)
    # What a torchvision built for another torch does on import.
    (root / "torchvision" / "__init__.py").write_text(
        "raise RuntimeError('operator torchvision::nms does not exist')\n")
    for name in list(sys.modules):
        if name.split(".")[0] == "torchvision":
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(root))
    try:
        with pytest.raises(RuntimeError, match=r"importing torchvision failed: RuntimeError: "
                                               r"operator torchvision::nms does not exist"):
            load_model("torchvision:resnet18")
    finally:
        _forget_packages()


# ============================================================================ timm:NAME

def test_timm_model_and_weights(fake_packages, tmp_path):
    import timm

    model = load_model("timm:vit_tiny_patch16_224")
    assert model.head.out_features == 1000
    assert timm.CALLS == [("vit_tiny_patch16_224", False, {})]
    torch.manual_seed(3)
    trained = timm.create_model("vit_tiny_patch16_224", num_classes=5)
    ckpt = save_checkpoint(trained, tmp_path / "vit.pth", "places365")
    timm.CALLS.clear()
    loaded = load_model("timm:vit_tiny_patch16_224.augreg_in21k", weights=ckpt)
    assert_same_weights(loaded, trained)
    assert timm.CALLS == [("vit_tiny_patch16_224.augreg_in21k", False, {}),
                          ("vit_tiny_patch16_224.augreg_in21k", False, {"num_classes": 5})]


# ============================================================================ module:function

BUILDERS_PY = '''
import torch
from torch import nn

def head(num_classes=10):
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(num_classes))

def fixed():
    return nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 10, 1))
'''


def test_weights_with_a_function_spec(tmp_path):
    path = tmp_path / "builders.py"
    path.write_text(BUILDERS_PY)
    trained = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.ReLU(),
                                  torch.nn.Conv2d(4, 3, 1))
    ckpt = save_checkpoint(trained, tmp_path / "w.pth", "places365")
    with pytest.raises(ValueError, match=r"fixed\(num_classes=3\) failed: fixed takes no "
                                         r"num_classes argument"):
        load_model(f"{path}:fixed", weights=ckpt)
    torch.save({"0.weight": trained[0].weight, "0.bias": trained[0].bias,
                "2.weight": torch.ones(10, 4, 1, 1), "2.bias": torch.zeros(10)}, tmp_path / "f.pth")
    model = load_model(f"{path}:fixed", weights=tmp_path / "f.pth")
    torch.testing.assert_close(model[0].weight, trained[0].weight)
    assert float(model[2].weight.detach().sum()) == 40.0
    # A module:function spec whose function takes num_classes (torchvision.models:resnet18
    # with torchvision installed works the same way).
    sys.modules.pop("compexp_model_builders", None)
    seq = load_model(f"{path}:head", num_classes=6)
    assert seq[3].out_features == 6


def test_saved_model_files_take_no_weights(tmp_path):
    path = tmp_path / "net.pt2"
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1))
    torch.save(net.state_dict(), tmp_path / "w.pth")
    path.write_text("a model file")
    with pytest.raises(ValueError, match=r"is a saved model file, which holds its weights and "
                                         r"classes already: weights applies to torchvision:NAME"):
        load_model(str(path), weights=tmp_path / "w.pth")
    with pytest.raises(ValueError, match="num_classes applies"):
        load_model(str(path), num_classes=3)


# ============================================================================ compexp extract

def manual_layers(model, dataset, layers):
    """Layer outputs by forward hooks on the whole dataset at once (the expected values)."""
    got = {}
    handles = [model.get_submodule(name).register_forward_hook(
        lambda m, i, o, name=name: got.__setitem__(name, o.detach().clone())) for name in layers]
    x = torch.stack([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    return got


@pytest.mark.parametrize("layer_args", [["--layer", "layer1", "--layer", "layer2"],
                                        ["--layer", "layer1,layer2"]])
def test_cli_torchvision_weights_several_layers(fake_packages, tmp_path, capsys, layer_args):
    images = tmp_path / "images.h5"
    save_images(images, np.random.default_rng(0).integers(0, 256, (7, 8, 8, 3), dtype=np.uint8))
    trained = fake_model("resnet18", 365, seed=4)
    ckpt = save_checkpoint(trained, tmp_path / "resnet18_places365.pth.tar", "places365")
    out = tmp_path / "acts_{layer}.h5"
    assert main(["extract", "torchvision:resnet18", str(images), "-o", str(out),
                 "--weights", str(ckpt), *layer_args, "--batch-size", "3", "--no-progress",
                 "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and "layer layer1, shape (7, 4, 8, 8)" in printed
    assert "layer layer2, shape (7, 8, 4, 4)" in printed
    want = manual_layers(trained, ImageDataset(images), ["layer1", "layer2"])
    for layer in ("layer1", "layer2"):
        path = tmp_path / f"acts_{layer}.h5"
        np.testing.assert_allclose(load_activations(path), want[layer].numpy(), rtol=1e-5,
                                   atol=1e-6)
        meta = read_activations_metadata(path)
        assert meta["model"] == f"torchvision:resnet18 (weights {ckpt})"
        assert meta["layer"] == layer


def test_cli_model_errors(fake_packages, tmp_path, capsys, monkeypatch):
    images = tmp_path / "images.h5"
    save_images(images, np.zeros((2, 8, 8, 3), np.uint8))
    base = [str(images), "-o", str(tmp_path / "a_{layer}.h5"), "--no-progress"]
    assert main(["extract", "torchvision:resnet81", *base, "--layer", "layer1"]) == 2
    assert "did you mean 'resnet18'" in capsys.readouterr().err
    assert main(["extract", "torchvision:resnet18", *base, "--layer", "layer1,nope"]) == 2
    assert "layer 'nope' does not exist" in capsys.readouterr().err
    assert main(["extract", "torchvision:resnet18", *base, "--layer", "layer1,,layer2"]) == 2
    assert "not a module path" in capsys.readouterr().err
    assert main(["extract", "torchvision:resnet18", *base, "--layer", "layer1",
                 "--weights", str(tmp_path / "none.pth")]) == 2
    assert "none.pth" in capsys.readouterr().err
    assert main(["extract", "torchvision:resnet18", *base, "--layer", "layer1",
                 "--index", "index_ade20k.csv"]) == 2
    assert "--index applies to a Broden directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["extract", "torchvision:resnet18", *base, "--layer", "layer1",
              "--num-classes", "0"])
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "timm", None)
    assert main(["extract", "timm:resnet18", *base, "--layer", "layer1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("compexp extract: error: ") and "pip install timm" in err


# ============================================================================ Broden subset index

INDEX_HEADER = "image,split,ih,iw,sh,sw,object,scene"
LABELS = {1: ("sky", "object"), 2: ("tree", "object"), 3: ("forest-s", "scene"),
          4: ("street-s", "scene")}


def write_broden(root, n=5, seed=0):
    """A small Broden directory: n 8x8 images with 4x4 object PNGs and a scene each; index.csv
    lists all of them, index_sub.csv images 3, 0 and 4 (in that order)."""
    rng = np.random.default_rng(seed)
    (root / "images" / "sub").mkdir(parents=True)
    lines = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
            root / "images" / "sub" / f"im{i}.jpg", quality=95)
        seg = np.zeros((4, 4, 3), np.uint8)
        seg[..., 0] = rng.integers(0, 3, (4, 4))
        Image.fromarray(seg).save(root / "images" / "sub" / f"im{i}_object.png")
        lines.append(f"sub/im{i}.jpg,train,8,8,4,4,sub/im{i}_object.png,{3 + i % 2}")
    (root / "index.csv").write_text("\n".join([INDEX_HEADER] + lines) + "\n")
    (root / "index_sub.csv").write_text("\n".join([INDEX_HEADER] + [lines[i] for i in (3, 0, 4)])
                                        + "\n")
    (root / "label.csv").write_text("number,name,category,frequency,coverage,syns\n0,-,,0,0,\n"
                                    + "".join(f"{k},{nm},{c}(1),1,0.5,\n"
                                              for k, (nm, c) in LABELS.items()))
    (root / "category.csv").write_text("name,first,last,count,frequency\nobject,1,2,2,1\n"
                                       "scene,3,4,2,1\n")
    return root


@pytest.fixture
def broden_dir(tmp_path):
    return write_broden(tmp_path / "broden")


@pytest.fixture
def subset_copy(broden_dir, tmp_path):
    """The same directory with index.csv replaced by the subset (what --index must equal)."""
    d = tmp_path / "copy"
    shutil.copytree(broden_dir, d)
    shutil.copy(d / "index_sub.csv", d / "index.csv")
    return d


def test_convert_with_a_subset_index(broden_dir, subset_copy, tmp_path):
    summary = convert_broden(broden_dir, tmp_path / "sub.h5", index="index_sub.csv",
                             progress=False)
    assert summary.n_samples == 3
    convert_broden(subset_copy, tmp_path / "want.h5", progress=False)
    got, want = load_concepts(tmp_path / "sub.h5"), load_concepts(tmp_path / "want.h5")
    assert got.names == want.names
    np.testing.assert_array_equal(got.to_dense(), want.to_dense())
    full = load_concepts(convert_broden(broden_dir, tmp_path / "full.h5", progress=False).output)
    np.testing.assert_array_equal(got.to_dense(), full.to_dense()[[3, 0, 4]])


def test_index_paths_resolve(broden_dir, tmp_path, monkeypatch):
    sub = str(broden_dir / "index_sub.csv")
    assert resolve_index_path(broden_dir) == str(broden_dir / "index.csv")
    assert resolve_index_path(broden_dir, "index_sub.csv") == sub
    assert resolve_index_path(broden_dir, sub) == sub
    # A path relative to the current directory, when the Broden directory has no such file.
    monkeypatch.chdir(tmp_path)
    assert resolve_index_path(broden_dir, os.path.join("broden", "index_sub.csv")) == sub
    index = read_broden_index(broden_dir, index="index_sub.csv")
    assert index.index_path == sub and [r.image for r in index.rows] == [
        "sub/im3.jpg", "sub/im0.jpg", "sub/im4.jpg"]
    assert read_broden_index(broden_dir).index_path == str(broden_dir / "index.csv")


def test_index_errors(broden_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"the Broden index file given as index.*"
                                                r"index_ade20k.csv"):
        convert_broden(broden_dir, tmp_path / "c.h5", index="index_ade20k.csv", progress=False)
    with pytest.raises(FileNotFoundError, match="index_ade20k.csv"):
        BrodenDataset(broden_dir, index="index_ade20k.csv")
    with pytest.raises(IsADirectoryError):
        read_broden_index(broden_dir, index="images")
    (broden_dir / "bad.csv").write_text("image,ih,iw,sh,sw,object\nsub/im0.jpg,8,8,4,4,\n")
    with pytest.raises(ValueError, match=r"bad.csv', line 1: missing column 'split'"):
        convert_broden(broden_dir, tmp_path / "c.h5", index="bad.csv", progress=False)
    with pytest.raises(TypeError, match="index must be the path of an index file"):
        read_broden_index(broden_dir, index=3)
    # Errors about rows name the index file they come from.
    (broden_dir / "images" / "sub" / "im4_object.png").unlink()
    with pytest.raises(FileNotFoundError, match="named by index_sub.csv line 4"):
        convert_broden(broden_dir, tmp_path / "c.h5", index="index_sub.csv", progress=False)
    with pytest.raises(ValueError, match=r"split 'val': no row of '.*index_sub.csv'"):
        BrodenDataset(broden_dir, index="index_sub.csv", split="val")
    assert not (tmp_path / "c.h5").exists()


def test_dataset_with_a_subset_index(broden_dir, subset_copy):
    ds = BrodenDataset(broden_dir, index="index_sub.csv")
    want = BrodenDataset(subset_copy)
    assert ds.names == want.names == ("sub/im3.jpg", "sub/im0.jpg", "sub/im4.jpg")
    for i in range(len(ds)):
        torch.testing.assert_close(ds[i], want[i], rtol=0, atol=0)
    assert ds.description == f"broden:{broden_dir / 'index_sub.csv'}"
    assert BrodenDataset(broden_dir).description == f"broden:{broden_dir}"


def test_cli_convert_and_extract_with_the_same_index(fake_packages, broden_dir, subset_copy,
                                                     tmp_path, capsys):
    concepts = tmp_path / "concepts.h5"
    assert main(["convert-broden", str(broden_dir), str(concepts), "--index", "index_sub.csv",
                 "--no-progress"]) == 0
    assert "N = 3 images" in capsys.readouterr().out
    ckpt = save_checkpoint(fake_model("resnet18", 365), tmp_path / "w.pth.tar", "places365")
    out = tmp_path / "acts_{layer}.h5"
    assert main(["extract", "torchvision:resnet18", str(broden_dir), "-o", str(out),
                 "--index", "index_sub.csv", "--weights", str(ckpt), "--layer", "layer2",
                 "--no-progress", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "(3 samples)" in printed
    acts = load_activations(tmp_path / "acts_layer2.h5")
    assert acts.shape[0] == load_concepts(concepts).n_samples == 3
    want = manual_layers(fake_model("resnet18", 365), BrodenDataset(subset_copy), ["layer2"])
    np.testing.assert_allclose(acts, want["layer2"].numpy(), rtol=1e-5, atol=1e-6)
    meta = read_activations_metadata(tmp_path / "acts_layer2.h5")
    assert meta["dataset"] == f"broden:{broden_dir / 'index_sub.csv'}"
    # A directory with no index.csv works when --index names one.
    (broden_dir / "index.csv").unlink()
    assert main(["extract", "torchvision:resnet18", str(broden_dir), "-o", str(out),
                 "--index", "index_sub.csv", "--layer", "layer1", "--no-progress"]) == 0
    assert main(["extract", "torchvision:resnet18", str(broden_dir), "-o", str(out),
                 "--layer", "layer1", "--no-progress"]) == 2
    assert "or its index file with --index" in capsys.readouterr().err


def test_real_ade20k_index(shared_data, broden_dir):
    """Broden's own index_ade20k.csv (../shared/data/broden) read as the index of a directory:
    the 22,210 ADE20k rows, in order (their images are not there, so nothing is decoded)."""
    real = shared_data / "broden" / "index_ade20k.csv"
    if not real.is_file():
        pytest.skip(f"{real} not found")
    shutil.copy(real, broden_dir / "index_ade20k.csv")
    index = read_broden_index(broden_dir, index="index_ade20k.csv")
    assert len(index.rows) == 22210 and index.index_path == str(broden_dir / "index_ade20k.csv")
    assert {r.split for r in index.rows} == {"train", "val"}
    assert all(r.image.startswith("ade20k/") for r in index.rows)
    assert list(index.column_kinds) == ["color", "object", "part", "material", "scene",
                                        "texture"]
    ds = BrodenDataset(broden_dir, index=str(real), split="val")
    assert 0 < len(ds) < 22210 and ds.description.endswith("index_ade20k.csv:val")


# ============================================================================ the real packages

def test_real_torchvision_places365_layout(tmp_path):
    """With the real torchvision: a checkpoint laid out as resnet18_places365.pth.tar is
    ({"state_dict": {"module.*": ...}}, 365 classes) loads, and layer3,layer4 extract."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(num_classes=365)
    ckpt = save_checkpoint(reference, tmp_path / "resnet18_places365.pth.tar", "places365")
    model = load_model("torchvision:resnet18", weights=ckpt)
    assert model.fc.out_features == 365
    for k, v in reference.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0)
    images = tmp_path / "images.h5"
    save_images(images, np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8))
    assert main(["extract", "torchvision:resnet18", str(images), "-o",
                 str(tmp_path / "acts_{layer}.h5"), "--weights", str(ckpt), "--layer",
                 "layer3,layer4", "--no-progress", "--device", "cpu"]) == 0
    assert load_activations(tmp_path / "acts_layer4.h5").shape == (2, 512, 2, 2)
    assert load_activations(tmp_path / "acts_layer3.h5").shape == (2, 256, 4, 4)


def test_real_timm(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    reference = timm.create_model("resnet18", pretrained=False, num_classes=10)
    ckpt = save_checkpoint(reference, tmp_path / "r.pth", "state_dict")
    model = load_model("timm:resnet18", weights=ckpt)
    assert_same_weights(model, reference)
    with pytest.raises(ValueError, match="did you mean 'resnet18'"):
        load_model("timm:resnet81")


def test_cli_search_report_adversarial_with_the_same_index(fake_packages, broden_dir,
                                                           tmp_path, capsys):
    """The whole pipeline on a subset index: report and adversarial read the images through
    the same --index (else they would see 5 images for 3 samples), adversarial loads the
    torchvision:NAME model with --weights."""
    concepts, acts = tmp_path / "concepts.h5", tmp_path / "acts.h5"
    results = tmp_path / "results.h5"
    ckpt = save_checkpoint(fake_model("resnet18", 365), tmp_path / "w.pth.tar", "places365")
    assert main(["convert-broden", str(broden_dir), str(concepts), "--index", "index_sub.csv",
                 "--no-progress"]) == 0
    assert main(["extract", "torchvision:resnet18", str(broden_dir), "-o", str(acts),
                 "--index", "index_sub.csv", "--weights", str(ckpt), "--layer", "layer2",
                 "--no-progress", "--device", "cpu"]) == 0
    assert main(["search", str(acts), str(concepts), "-o", str(results), "--length", "2",
                 "--quantile", "0.2", "--no-progress", "--device", "cpu"]) == 0
    capsys.readouterr()
    report = tmp_path / "report"
    assert main(["report", str(results), "--images", str(broden_dir), "--index",
                 "index_sub.csv", "-o", str(report), "--no-progress"]) == 0
    assert (report / "index.html").is_file()
    # Without the index, the report sees all 5 images and says they do not match.
    assert main(["report", str(results), "--images", str(broden_dir), "-o",
                 str(tmp_path / "r2"), "--no-progress"]) == 2
    assert "5" in capsys.readouterr().err
    # adversarial: the subset's 3 images line up with the results only through --index, and
    # --weights is loaded (a checkpoint of another architecture is refused by name). On 3
    # tiny images no unit gets a formula, so the run ends at the edits, past both.
    adversarial = ["adversarial", "torchvision:resnet18", str(results), "--images",
                   str(broden_dir), "--layer", "layer2", "--size", "8", "-o",
                   str(tmp_path / "adv"), "--device", "cpu"]
    assert main(adversarial + ["--weights", str(ckpt)]) == 2
    assert "has 5 images but the concepts file" in capsys.readouterr().err
    other = save_checkpoint(fake_model("resnet34", 365), tmp_path / "o.pth.tar", "plain")
    assert main(adversarial + ["--index", "index_sub.csv", "--weights", str(other)]) == 2
    assert "weights" in capsys.readouterr().err
    assert main(adversarial + ["--index", "index_sub.csv", "--weights", str(ckpt)]) == 2
    assert "nothing to read edits from" in capsys.readouterr().err
    # --index and --weights are for images: the sentence-pair path refuses them.
    assert main(["adversarial", "model.pt", str(results), "--snli", str(tmp_path),
                 "--weights", str(ckpt)]) == 2
    assert "--snli does not take --weights" in capsys.readouterr().err
