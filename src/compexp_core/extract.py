"""Activation extraction: run a PyTorch model over images and write layers' activations.

:func:`extract_activations` runs any :class:`torch.nn.Module` (a Python module or a TorchScript
one) over a dataset, captures the outputs of one or more layers named by their module path
(``"layer4"``, ``"layer4.1.conv2"``) and writes them, batch by batch, to activations files
(``format = "compexp-activations"``, see ``docs/FORMAT.md``) that :func:`~compexp_core.io.
open_activations` and ``compexp search`` read. Only one batch of activations is ever in memory.

An extraction writes into ``<output>.partial`` and records after each batch how many samples
are done; an interrupted run (Ctrl-C, a crash, a lost machine) is continued with
``resume=True`` without recomputing the finished samples, and the partial file is renamed onto
``<output>`` only when every sample is written. The finished file records the model, layer and
dataset it came from (root attributes ``model``, ``layer``, ``dataset``). Models with other
inputs (padded token sequences and their lengths, say) are run with ``collate_inputs``, which
turns a list of dataset items into the model's arguments (:mod:`compexp_core.nli.model` does).

:class:`ImageDataset` turns a ``compexp-images`` file (or a uint8 array) into normalised float
tensors; :func:`load_model` builds a model from a TorchScript file, a ``torch.export``
program, a ``torchvision:NAME`` / ``timm:NAME`` model or a ``module:function`` spec, and loads
a checkpoint into it (:func:`read_state_dict`: a state dict, ``{"state_dict": ...}``, a
``module.`` prefix, as the Places365 models ship). ``compexp extract``
(:mod:`compexp_core.cli.extract`) wraps them.

torch is imported inside the functions only, so importing this module (and ``compexp --help``)
stays fast.

Examples:
    >>> import os, tempfile
    >>> import numpy as np
    >>> import torch
    >>> from compexp_core.io import read_activations_metadata
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    >>> images = np.zeros((10, 8, 8, 3), np.uint8)
    >>> out = os.path.join(tempfile.mkdtemp(), "acts.h5")
    >>> extract_activations(model, ImageDataset(images), "0", out, batch_size=4,
    ...                     progress=False, model_name="tiny") == [out]
    True
    >>> meta = read_activations_metadata(out)
    >>> meta["shape"], meta["model"], meta["layer"]
    ((10, 4, 6, 6), 'tiny', '0')
"""
from __future__ import annotations

import contextlib
import difflib
import errno
import importlib
import importlib.util
import os
import re
import sys
from collections import OrderedDict
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from ._optional import require
from .engine.backends import parse_device
from .io import open_images
from .io.activations import PARTIAL_SUFFIX, ActivationsWriter

__all__ = ["ImageDataset", "extract_activations", "load_model", "read_state_dict",
           "patch_grid", "MODEL_PACKAGES", "PARTIAL_SUFFIX"]

PathLike = Union[str, "os.PathLike[str]"]

# An extraction in progress is written to ``output + PARTIAL_SUFFIX`` (docs/FORMAT.md §1.1)
# by compexp_core.io.activations.ActivationsWriter(resumable=True).

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# =============================================================================== the dataset

def _check_triple(values: Any, what: str, *, positive: bool = False) -> tuple:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be 3 numbers (one per RGB channel), got {values!r}") from None
    if len(out) != 3 or not all(np.isfinite(out)):
        raise ValueError(f"{what} must be 3 finite numbers (one per RGB channel), got {values!r}")
    if positive and min(out) <= 0:
        raise ValueError(f"{what} must be > 0, got {values!r}")
    return out


def _check_size(size: Any) -> Optional[tuple]:
    """``None``, an int or an (h, w) pair -> ``None`` or ``(h, w)``."""
    if size is None:
        return None
    pair = (size, size) if isinstance(size, (int, np.integer)) else size
    try:
        h, w = pair
    except (TypeError, ValueError):
        raise TypeError(f"size must be an int or an (height, width) pair, got {size!r}") from None
    for v in (h, w):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"size must be an int or an (height, width) pair of ints, got "
                            f"{size!r}")
        if v < 1:
            raise ValueError(f"size must be >= 1, got {size!r}")
    return int(h), int(w)


class ImageDataset:
    """RGB images as normalised float tensors, for :func:`extract_activations`.

    A map-style dataset (``len(ds)``, ``ds[i]``), usable with :class:`torch.utils.data.
    DataLoader` and :class:`~torch.utils.data.Subset`, over a ``compexp-images`` HDF5 file
    (see :func:`compexp_core.io.save_images`) or a uint8 ``[N, H, W, 3]`` NumPy array. Item i
    is the float32 tensor ``[3, H, W]`` of ``(image / 255 - mean) / std``, resized bilinearly
    to ``size`` when one is given. The file is opened on first access in each process (so
    DataLoader workers each get their own handle) and never read whole.

    (The class does not derive from :class:`torch.utils.data.Dataset`, so that importing this
    module does not import torch; DataLoader needs only ``__len__`` and ``__getitem__``.)

    Args:
        source: the images file path, or a uint8 array ``[N, H, W, 3]`` (a memmap works).
        mean, std: per-channel normalisation (default: the ImageNet statistics).
        size: resize every image to ``size`` (an int for a square, or ``(height, width)``);
            default: keep the stored size.

    Attributes:
        description: provenance string (the file's absolute path, or "array of N images HxW"),
            recorded as the ``dataset`` attribute of the activations files.
        shape: ``(N, H, W, 3)`` of the stored images.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: not a compexp-images file; an array of the wrong shape; bad mean/std/size.
        TypeError: an array that is not uint8.

    Examples:
        >>> import numpy as np
        >>> ds = ImageDataset(np.full((2, 4, 6, 3), 255, np.uint8), mean=(0, 0, 0),
        ...                   std=(1, 1, 1), size=2)
        >>> len(ds), tuple(ds[0].shape), float(ds[1].max())
        (2, (3, 2, 2), 1.0)
    """

    def __init__(self, source: Union[PathLike, np.ndarray], *,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 size: Union[int, Sequence[int], None] = None) -> None:
        self.mean = _check_triple(mean, "mean")
        self.std = _check_triple(std, "std", positive=True)
        self.size = _check_size(size)
        self._images: Any = None
        self._pid: Optional[int] = None
        if isinstance(source, (str, os.PathLike)):
            self.path: Optional[str] = os.path.abspath(os.fspath(source))
            ds = open_images(self.path)  # validates the file (FileNotFoundError / ValueError)
            try:
                self.shape = tuple(int(s) for s in ds.shape)
            finally:
                ds.file.close()  # reopened lazily in whichever process reads it
            self.description = self.path
        else:
            self.path = None
            array = source if isinstance(source, np.ndarray) else np.asarray(source)
            if array.ndim != 4 or array.shape[3] != 3 or any(s < 1 for s in array.shape):
                raise ValueError(f"images must be uint8 [N, H, W, 3] RGB with N, H, W >= 1, got "
                                 f"shape {array.shape}")
            if array.dtype != np.uint8:
                raise TypeError(f"images must be uint8 (0..255 RGB), got dtype {array.dtype}")
            self._images = array
            self.shape = tuple(int(s) for s in array.shape)
            self.description = (f"array of {self.shape[0]} images "
                                f"{self.shape[1]}x{self.shape[2]}")

    def __len__(self) -> int:
        return self.shape[0]

    def _source(self) -> Any:
        if self.path is None:
            return self._images
        # One h5py handle per process: a handle inherited through fork must not be shared.
        if self._images is None or self._pid != os.getpid():
            self._images = open_images(self.path)
            self._pid = os.getpid()
        return self._images

    def __getitem__(self, index: int):
        import torch

        n = len(self)
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"ImageDataset index must be an integer, got {index!r}")
        i = int(index) + n if index < 0 else int(index)
        if not 0 <= i < n:
            raise IndexError(f"image index {index} out of range for {n} images")
        image = np.asarray(self._source()[i])
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
        if self.size is not None and tuple(x.shape[1:]) != self.size:
            x = torch.nn.functional.interpolate(x[None], size=self.size, mode="bilinear",
                                                align_corners=False)[0]
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return (x - mean) / std

    def close(self) -> None:
        """Close the images file if this process opened it (it reopens on the next access)."""
        if self.path is not None and self._images is not None:
            with contextlib.suppress(Exception):
                self._images.file.close()
            self._images = None

    def __getstate__(self) -> dict:
        # Pickled for DataLoader workers (spawn): open h5py handles do not pickle.
        state = dict(self.__dict__)
        if self.path is not None:
            state["_images"] = None
            state["_pid"] = None
        return state

    def __repr__(self) -> str:
        return f"ImageDataset({self.description!r}, {len(self)} images, size={self.size})"


# =============================================================================== layers

def _find_layer(model: Any, path: str) -> Any:
    """The submodule at a dotted ``path``; ValueError listing what exists when there is none."""
    module = model
    walked: list[str] = []
    for part in path.split("."):
        children = dict(module.named_children())
        if part not in children:
            where = f"'{'.'.join(walked)}'" if walked else "the model"
            names = list(children)
            all_names = [n for n, _ in model.named_modules() if n]
            close = difflib.get_close_matches(path, all_names, n=3, cutoff=0.6)
            shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)"
                                             if len(names) > 12 else "")
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(f"layer '{path}' does not exist: {where} has no submodule '{part}' "
                             f"(its submodules: {shown or 'none'}){hint}")
        module = children[part]
        walked.append(part)
    return module


def _check_layers(layers: Any) -> list[str]:
    if isinstance(layers, str):
        layers = [layers]
    try:
        layers = list(layers)
    except TypeError:
        raise TypeError(f"layers must be a module path or a list of them, got {layers!r}") from None
    if not layers:
        raise ValueError("layers is empty: name at least one layer (a module path like 'layer4')")
    for layer in layers:
        if not isinstance(layer, str):
            raise TypeError(f"a layer must be a module path string, got {layer!r}")
        if not layer or any(not p for p in layer.split(".")):
            raise ValueError(f"layer {layer!r} is not a module path like 'layer4' or "
                             f"'layer4.1.conv2'")
    dup = sorted({x for x in layers if layers.count(x) > 1})
    if dup:
        raise ValueError(f"layers must be distinct; repeated: {dup}")
    return layers


class _LayersCaptured(BaseException):
    """Raised by the last hook to stop the forward pass once every layer is captured.

    A BaseException, so that a model's own ``except Exception`` does not swallow it."""


def _capture(output: Any, dtype: Any) -> Any:
    """A CPU copy of a layer's output in the output dtype (a copy: an in-place operation later
    in the forward pass, such as ``ReLU(inplace=True)``, must not change what was captured)."""
    import torch

    if isinstance(output, torch.Tensor) and output.is_floating_point():
        return output.detach().to(device="cpu", dtype=dtype, copy=True)
    return output  # refused by _as_block, which names the layer


class _HookTaps:
    """Captures layer outputs with forward hooks (Python modules).

    Each layer keeps the output of its first call in a forward pass (a module called twice,
    such as a shared ReLU, is captured at its first call); the forward pass stops as soon as
    every layer has been captured, so the rest of the network is not computed."""

    def __init__(self, model: Any, layers: list[str], dtype: Any) -> None:
        self.model = model
        self.layers = layers
        self.outputs: dict[str, Any] = {}
        self.handles = []
        modules = [_find_layer(model, layer) for layer in layers]  # all checked before hooking
        for layer, module in zip(layers, modules):
            try:
                self.handles.append(module.register_forward_hook(self._hook(layer, dtype)))
            except RuntimeError as e:  # a submodule of a TorchScript module
                self.remove()
                raise ValueError(f"cannot capture layer '{layer}': it belongs to a TorchScript "
                                 f"submodule, which takes no hooks ({e}); pass the TorchScript "
                                 f"module itself as the model, or a Python model") from None

    def _hook(self, layer: str, dtype: Any):
        def hook(module, inputs, output):
            if layer not in self.outputs:
                self.outputs[layer] = _capture(output, dtype)
                if len(self.outputs) == len(self.layers):
                    raise _LayersCaptured()
        return hook

    def __call__(self, *inputs: Any) -> list:
        self.outputs = {}
        try:
            self.model(*inputs)
        except _LayersCaptured:
            pass
        # None for a layer the forward pass did not call (reported by _as_block).
        return [self.outputs.get(layer) for layer in self.layers]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


_HIERARCHY_ENTRY = re.compile(r"([^.()]+)\(([^()]*)\)")


def _instance_path(node: Any) -> list[str]:
    """The module path of the module whose code produced a node of an inlined TorchScript
    graph, from its module hierarchy ``"layer4(Sequential).1(BasicBlock).conv2(Conv2d).SELF(..)"``
    (``SELF`` and ``UNKNOWN_INSTANCE`` mark the module's own code and plain function calls)."""
    path = []
    for name, _ in _HIERARCHY_ENTRY.findall(node.getModuleHierarchy()):
        if name in ("SELF", "UNKNOWN_INSTANCE"):
            break
        path.append(name)
    return path


class _ScriptTaps:
    """Captures layer outputs of a TorchScript module, which takes no forward hooks.

    The module's forward graph is copied and inlined; in the inlined graph every node records
    the module instance whose code produced it. The output of layer L is the first tensor value
    computed inside L's code that is used outside it (first, as for hooks: a module called
    twice is captured at its first call). A new graph returns a copy of each captured value;
    everything after the last captured layer is dead code and removed, so it is not computed.
    This uses the TorchScript graph API of ``torch._C``."""

    def __init__(self, model: Any, layers: list[str], dtype: Any) -> None:
        import torch

        self.model = model
        self.layers = layers
        self.dtype = dtype
        for layer in layers:
            _find_layer(model, layer)  # a clear error for a layer that does not exist
        graph, nodes, paths = self._inlined_graph(model)
        values = [self._layer_value(nodes, paths, layer) for layer in layers]
        try:
            self.function = self._capture_function(graph, values)
        except Exception as e:  # pragma: no cover - a TorchScript API change
            raise RuntimeError(f"cannot build a TorchScript graph that captures layers "
                               f"{layers}: {type(e).__name__}: {e}") from e

    @staticmethod
    def _inlined_graph(model: Any) -> tuple:
        """The inlined forward graph, its top-level nodes and each node's module path."""
        import torch

        try:
            graph = model.forward.graph.copy()
            torch._C._jit_pass_inline(graph)
            paths = {}

            def record(block):
                for node in block.nodes():
                    paths[node] = _instance_path(node)
                    for sub in node.blocks():
                        record(sub)
            record(graph.block())
            # Only values of the top-level block can become outputs of the graph.
            return graph, list(graph.nodes()), paths
        except Exception as e:  # pragma: no cover - a TorchScript API change
            raise RuntimeError(f"cannot read the TorchScript graph of the model to capture "
                               f"layers: {type(e).__name__}: {e}") from e

    @staticmethod
    def _capture_function(graph: Any, values: list) -> Any:
        """A function of (module, input) returning copies of ``values`` (a tuple)."""
        import torch

        copies = []
        for v in values:  # aten::clone(v, memory_format=None) right after v is computed
            none = graph.insertConstant(None)
            clone = graph.create("aten::clone", [v, none])
            clone.output().setType(v.type())
            clone.insertAfter(v.node())
            none.node().moveBefore(clone)
            copies.append(clone.output())
        while len(list(graph.outputs())):
            graph.eraseOutput(0)
        for c in copies:
            graph.registerOutput(c)
        graph.makeMultiOutputIntoTuple()
        torch._C._jit_pass_dce(graph)  # drops the rest of the network
        graph.lint()
        return torch._C._create_function_from_graph("compexp_capture_layers", graph)

    @staticmethod
    def _layer_value(nodes: list, paths: dict, layer: str) -> Any:
        import torch

        want = layer.split(".")

        def inside(node) -> bool:
            return paths.get(node, [])[:len(want)] == want

        for node in nodes:
            if not inside(node) or node.kind() in ("prim::Constant", "prim::GetAttr"):
                continue
            for value in node.outputs():
                if any(use.user.kind() == "prim::Return" or not inside(use.user)
                       for use in value.uses()):
                    if not isinstance(value.type(), torch._C.TensorType):
                        raise ValueError(f"layer '{layer}' returns {value.type()}, not a tensor; "
                                         f"choose a layer whose output is a tensor [B, U, h, w] "
                                         f"or [B, U]")
                    return value
        raise ValueError(f"cannot capture layer '{layer}' of the TorchScript model: its output "
                         f"was not found in the model's forward graph (the layer is not called, "
                         f"is called inside a loop or branch, or returns its input unchanged)")

    def __call__(self, *inputs: Any) -> list:
        outputs = self.function(self.model._c, *inputs)
        if not isinstance(outputs, tuple):
            outputs = (outputs,)
        return [_capture(o, self.dtype) for o in outputs]

    def remove(self) -> None:
        pass


# =============================================================================== patch tokens

def patch_grid(output: Any, *, prefix_tokens: int = 1,
               grid: Optional[Sequence[int]] = None) -> Any:
    """A vision transformer's patch tokens ``[B, T, D]`` as feature maps ``[B, D, h, w]``.

    The first ``prefix_tokens`` tokens (the CLS token, register or distillation tokens) are
    dropped; the remaining ``h * w`` patch tokens, in row-major order as ViTs flatten their
    patches, become a ``D``-channel map, so each channel (unit) is explained spatially. Pass it
    to :func:`extract_activations` as ``output_transform`` (with :func:`functools.partial`
    for other arguments).

    Args:
        output: a tensor ``[B, T, D]`` (a tuple gives its first element).
        prefix_tokens: non-patch tokens at the start of the sequence (1: the CLS token).
        grid: ``(h, w)`` of the patch grid; default: a square grid (``T - prefix_tokens`` must
            then be a square number).

    Returns:
        A contiguous tensor ``[B, D, h, w]``.

    Raises:
        ValueError: ``output`` is not 3-D; the patch tokens do not fill the grid (or a square
            one); a bad ``prefix_tokens`` or ``grid``.

    Examples:
        >>> import torch
        >>> tokens = torch.arange(2 * 5 * 3.).reshape(2, 5, 3)   # CLS + 2x2 patches, D = 3
        >>> maps = patch_grid(tokens)
        >>> tuple(maps.shape), maps[0, :, 1, 0].tolist() == tokens[0, 3].tolist()
        ((2, 3, 2, 2), True)
    """
    if isinstance(output, (tuple, list)) and output:
        output = output[0]
    prefix_tokens = _check_int(prefix_tokens, "prefix_tokens", 0)
    if getattr(output, "ndim", None) != 3:
        raise ValueError(f"patch_grid needs patch tokens [batch, tokens, channels], got "
                         f"{tuple(getattr(output, 'shape', ())) or type(output).__name__}")
    b, t, d = (int(s) for s in output.shape)
    patches = t - prefix_tokens
    if patches < 1:
        raise ValueError(f"patch_grid: {t} tokens leave no patch tokens after "
                         f"prefix_tokens={prefix_tokens}")
    if grid is None:
        side = int(round(patches ** 0.5))
        if side * side != patches:
            raise ValueError(f"patch_grid: {patches} patch tokens ({t} tokens - "
                             f"{prefix_tokens} prefix) do not form a square grid; give "
                             f"grid=(h, w) or the right prefix_tokens")
        h = w = side
    else:
        try:
            h, w = (_check_int(v, "grid", 1) for v in grid)
        except (TypeError, ValueError):
            raise ValueError(f"grid must be (h, w), two integers >= 1, got {grid!r}") from None
        if h * w != patches:
            raise ValueError(f"patch_grid: grid {h}x{w} = {h * w} patches, but there are "
                             f"{patches} patch tokens ({t} tokens - {prefix_tokens} prefix)")
    return output[:, prefix_tokens:].reshape(b, h, w, d).permute(0, 3, 1, 2).contiguous()


# =============================================================================== output paths

def _check_output_paths(output: Any, layers: list[str]) -> list[str]:
    if not isinstance(output, (str, os.PathLike)):
        raise TypeError(f"output must be a file path, got {output!r}")
    output = os.fspath(output)
    if len(layers) > 1 and "{layer}" not in output:
        raise ValueError(f"output {output!r} must contain '{{layer}}' when extracting several "
                         f"layers ({', '.join(layers)}): one file is written per layer")
    paths = [output.replace("{layer}", layer) for layer in layers]
    for p in paths:
        d = os.path.dirname(os.path.abspath(p))
        if not os.path.isdir(d):
            raise FileNotFoundError(errno.ENOENT, "Output directory does not exist", d)
        if os.path.isdir(p):
            raise IsADirectoryError(errno.EISDIR, "Output path is a directory", p)
    return paths


# =============================================================================== extraction

def _resolve_device(device: Any) -> str:
    """The torch device of a package device string (``"cpu"``, ``"cuda"``, ``"cuda:N"``,
    ``"auto"``; see :func:`compexp_core.engine.backends.parse_device`). ``"auto"`` is the GPU
    when PyTorch can use one."""
    import torch

    kind, index = parse_device(device)
    if kind == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cpu":
        return "cpu"
    if not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} was requested but CUDA is not available to "
                           f"PyTorch (no GPU, or a CPU-only torch build); use device='cpu'")
    if index >= torch.cuda.device_count():
        raise RuntimeError(f"device={device!r} was requested but PyTorch sees only "
                           f"{torch.cuda.device_count()} GPU(s); use device='cuda:0'..")
    return f"cuda:{index}"


def _check_int(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {value}")
    return int(value)


def _check_str(value: Any, what: str) -> Optional[str]:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{what} must be a string, got {type(value).__name__}")
    return value


def _brief(err: BaseException) -> str:
    """One line for an exception: TorchScript errors put the cause on their last line."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return f"{type(err).__name__}: {lines[-1] if lines else ''}"


def _as_block(output: Any, layer: str, batch: int, lo: int, hi: int,
              out_dtype: np.dtype) -> np.ndarray:
    """A captured layer output as a NumPy block ``[B, U, h, w]`` or ``[B, U]``, checked."""
    import torch

    if output is None:
        raise RuntimeError(f"layer '{layer}' was not called during the model's forward pass on "
                           f"samples {lo}..{hi - 1}, so it has no output to capture")
    if not isinstance(output, torch.Tensor):
        raise ValueError(f"layer '{layer}' returns a {type(output).__name__}, not a tensor; "
                         f"choose a layer whose output is a tensor [B, U, h, w] or [B, U] (a "
                         f"submodule of it, say)")
    if not output.is_floating_point():
        raise TypeError(f"layer '{layer}' returns a {output.dtype} tensor; activations must "
                        f"be floating point")
    if output.ndim not in (2, 4) or output.shape[0] != batch:
        raise ValueError(f"layer '{layer}' returns shape {tuple(output.shape)} for a batch of "
                         f"{batch}; extraction needs [B, U, h, w] feature maps or [B, U] "
                         f"vectors")
    block = output.numpy()
    if block.dtype != out_dtype:  # pragma: no cover - _capture converted it already
        block = block.astype(out_dtype)
    finite = np.isfinite(block)
    if not finite.all():
        bad = tuple(int(i) for i in np.argwhere(~finite)[0])
        note = (" (in float16, values beyond +-65504 overflow to infinity; use float32)"
                if out_dtype == np.float16 else "")
        raise ValueError(f"layer '{layer}' gives a non-finite value ({block[bad]}) on sample "
                         f"{lo + bad[0]} (of samples {lo}..{hi - 1}), at index "
                         f"{(lo + bad[0],) + bad[1:]}{note}")
    return block


def _model_inputs(batch: Any, collated: bool) -> tuple:
    """The model's positional arguments from a loaded batch: the batch as
    ``collate_inputs`` returned it (``collated``), else the first element of each item."""
    import torch

    if collated:
        inputs = tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)
        if not inputs or not isinstance(inputs[0], torch.Tensor):
            raise TypeError(f"collate_inputs must return a tensor or a tuple of the model's "
                            f"inputs whose first is a tensor, got "
                            f"{type(inputs[0] if inputs else batch).__name__}")
        return inputs
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"dataset items must be tensors or tuples whose first "
                        f"element is a tensor, got batches of {type(x).__name__}")
    return (x,)


def _model_description(model: Any) -> str:
    return str(getattr(model, "original_name", None) or type(model).__name__)


def extract_activations(model: Any, dataset: Any, layers: Union[str, Sequence[str]],
                        output: PathLike, *, batch_size: int = 64, device: str = "cpu",
                        dtype: str = "float32", num_workers: int = 0, resume: bool = False,
                        progress: bool = True, model_name: Optional[str] = None,
                        dataset_name: Optional[str] = None,
                        collate_inputs: Optional[Callable[[list], Any]] = None,
                        output_transform: Optional[Callable[[Any], Any]] = None) -> list[str]:
    """Run a model over a dataset and write the activations of one or more layers.

    The model runs in ``eval()`` mode under ``torch.no_grad()``, a batch at a time. Each
    layer's output (captured by a forward hook; in a TorchScript model, read from its graph)
    must be a float tensor ``[B, U, h, w]`` or ``[B, U]``; it is written into an activations
    file (``docs/FORMAT.md`` section 1) as the batch comes, chunked along samples, so memory
    holds one batch whatever N is. The forward pass stops after the last layer asked for.

    Each file is written as ``<path>.partial`` (with a root attribute ``n_done``, flushed
    after every batch) and renamed onto ``<path>`` when all N samples are in. An interrupted
    extraction leaves the partial file; ``resume=True`` continues it from ``n_done``, after
    checking that it was written for the same model, layer, dataset (names), N and dtype.
    Without ``resume`` a partial file left by an earlier run is overwritten. A partial file is
    also kept when the extraction stops on an error (NaN, a model failure).

    Args:
        model: a :class:`torch.nn.Module` (Python or TorchScript). It is put in eval mode and
            moved to ``device``; the train/eval mode of its modules is restored afterwards.
        dataset: a map-style dataset (``len`` and ``[i]``; :class:`ImageDataset`, a
            :class:`torch.utils.data.Dataset`) whose items are input tensors, or tuples
            whose first element is the input tensor (the rest, labels say, is ignored).
        layers: a module path (``"layer4"``, ``"layer4.1.conv2"``, as in
            ``model.named_modules()``) or a list of them. A module called more than once in a
            forward pass is captured at its first call.
        output: the activations file to write; with several layers it must contain
            ``{layer}``, replaced by each layer's path (``"acts_{layer}.h5"``).
        batch_size: samples per forward pass (and per write).
        device: ``"cpu"``, ``"cuda"`` (or ``"cuda:N"``), or ``"auto"`` (CUDA when available).
        dtype: ``"float32"`` or ``"float16"`` (half the file size) for the stored activations.
        num_workers: DataLoader worker processes loading the samples (0: in this process).
        resume: continue the partial files of an interrupted extraction (when there is none,
            the extraction starts from the beginning).
        progress: show a progress bar over samples (tqdm).
        model_name, dataset_name: provenance written as the ``model`` and ``dataset``
            attributes (defaults: the model's class name; the dataset's ``description``
            attribute, else its class name). A resumed extraction must use the same names.
        collate_inputs: for models that take several or variable-length inputs (padded token
            sequences and their lengths, say): a function from a list of dataset items to the
            model's positional arguments (a tuple of tensors, or one tensor), used as the data
            loader's ``collate_fn``. The first argument's first dimension is the batch. Default:
            items are stacked and the model gets the first element of each item.
        output_transform: a function applied to each captured layer output (a CPU tensor, or
            what the layer returned when that is not a tensor) before it is checked and
            written, e.g. :func:`patch_grid` to turn a vision transformer's patch tokens
            ``[B, T, D]`` into maps ``[B, D, h, w]``.

    Returns:
        The paths written, one per layer, in the order of ``layers``.

    Raises:
        ValueError: a layer that does not exist (the message lists the valid names near it);
            a layer whose output is not a tensor of rank 4 or 2; non-finite activations
            (naming the layer and the sample); several layers and no ``{layer}`` in
            ``output``; an empty dataset; a partial file that does not match (``resume``).
        RuntimeError: the model fails on a batch (the message names the samples and the input
            shape; the original exception is chained); a sample fails to load; ``"cuda"``
            without CUDA.
        TypeError: ``model`` is not a Module; dataset items are not tensors.
        FileNotFoundError: the output directory does not exist.

    Examples:
        >>> import os, tempfile
        >>> import numpy as np
        >>> import torch
        >>> from compexp_core.io import open_activations
        >>> block = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.ReLU())
        >>> model = torch.nn.Sequential(block, torch.nn.AdaptiveAvgPool2d(1))
        >>> out = os.path.join(tempfile.mkdtemp(), "acts_{layer}.h5")
        >>> paths = extract_activations(model, ImageDataset(np.zeros((5, 4, 4, 3), np.uint8)),
        ...                             ["0.0", "1"], out, batch_size=2, progress=False)
        >>> [open_activations(p).shape for p in paths]
        [(5, 2, 4, 4), (5, 2, 1, 1)]
    """
    torch = require("torch", "activation extraction")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    layers = _check_layers(layers)
    paths = _check_output_paths(output, layers)
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
    out_dtype = np.dtype(dtype)
    torch_dtype = torch.float16 if dtype == "float16" else torch.float32
    batch_size = _check_int(batch_size, "batch_size", 1)
    num_workers = _check_int(num_workers, "num_workers", 0)
    if output_transform is not None and not callable(output_transform):
        raise TypeError(f"output_transform must be callable, got "
                        f"{type(output_transform).__name__}")
    model_name = _check_str(model_name, "model_name") or _model_description(model)
    dataset_name = (_check_str(dataset_name, "dataset_name")
                    or str(getattr(dataset, "description", "") or type(dataset).__name__))
    try:
        n = len(dataset)
    except TypeError:
        raise TypeError(f"dataset must have a length (a map-style dataset), got "
                        f"{type(dataset).__name__}") from None
    if n < 1:
        raise ValueError(f"dataset '{dataset_name}' is empty")
    device = _resolve_device(device)

    is_script = isinstance(model, torch.jit.ScriptModule)
    taps = (_ScriptTaps if is_script else _HookTaps)(model, layers, torch_dtype)
    files = [ActivationsWriter(p, n_samples=n, dtype=dtype, model=model_name, layer=layer,
                               dataset=dataset_name, batch_size=batch_size, resumable=True)
             for p, layer in zip(paths, layers)]
    modes = [(m, m.training) for m in model.modules()]
    bar = None
    try:
        # Resume from the least advanced layer (a missing partial file counts as 0 done);
        # rows written twice get the same values.
        start = min(f.resume() for f in files) if resume else 0
        model.eval()
        model.to(device)
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, initial=start, unit="img", desc=f"extract {', '.join(layers)}")
        subset = dataset if start == 0 else torch.utils.data.Subset(dataset, range(start, n))
        loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, shuffle=False,
                                             num_workers=num_workers,
                                             collate_fn=collate_inputs,
                                             pin_memory=device.startswith("cuda"))
        batches = iter(loader)
        with torch.no_grad():
            for lo in range(start, n, batch_size):
                hi = min(n, lo + batch_size)
                try:
                    batch = next(batches)
                except StopIteration:
                    raise RuntimeError(f"the dataset yielded only {lo} samples, but its length "
                                       f"is {n}") from None
                except Exception as e:
                    raise RuntimeError(f"loading samples {lo}..{hi - 1} from the dataset failed: "
                                       f"{_brief(e)}") from e
                inputs = _model_inputs(batch, collate_inputs is not None)
                x = inputs[0]
                if x.shape[0] != hi - lo:
                    raise RuntimeError(f"the data loader gave {x.shape[0]} samples for samples "
                                       f"{lo}..{hi - 1}")
                shape = (tuple(x.shape) if len(inputs) == 1
                         else ", ".join(str(tuple(getattr(a, "shape", ()))) for a in inputs))
                inputs = [a.to(device, non_blocking=True) if isinstance(a, torch.Tensor) else a
                          for a in inputs]
                try:
                    outputs = taps(*inputs)
                except Exception as e:
                    raise RuntimeError(f"model failed on samples {lo}..{hi - 1} (input shape "
                                       f"{shape}): {_brief(e)}") from e
                if output_transform is not None:
                    outputs = [None if o is None else _capture(output_transform(o), torch_dtype)
                               for o in outputs]
                blocks = [_as_block(o, layer, hi - lo, lo, hi, out_dtype)
                          for o, layer in zip(outputs, layers)]
                for f, block in zip(files, blocks):
                    f.write(lo, block)
                if bar is not None:
                    bar.update(hi - lo)
        for f in files:
            f.finish()
    finally:
        if bar is not None:
            bar.close()
        for f in files:
            f.close()  # an unfinished partial file stays on disk, ready for resume
        taps.remove()
        for m, training in modes:
            m.train(training)
    return paths


# =============================================================================== models

def _is_spec_with_function(spec: str) -> bool:
    head, sep, tail = spec.rpartition(":")
    return bool(sep and head and re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", tail))


# Model families named as "<package>:<model name>", built without downloading any weights.
MODEL_PACKAGES = ("torchvision", "timm")
# Shown when a checkpoint holds more than tensors: how to keep only its weights.
_RESAVE_HINT = ("if you trust the file, keep only its tensors: torch.save(torch.load(path, "
                "weights_only=False)['state_dict'], 'weights.pth')")
# Missing / unexpected keys named in an error message.
_KEYS_SHOWN = 5


def load_model(spec: str, *, weights: Optional[PathLike] = None,
               num_classes: Optional[int] = None) -> Any:
    """Build a model from a saved file, a model family's name or a ``module:function`` spec.

    Args:
        spec: one of

            * a TorchScript file written by ``torch.jit.save`` (loaded on the CPU);
            * a ``torch.export`` program written by ``torch.export.save`` (a ``.pt2`` file,
              exported with a dynamic batch dimension); it is unflattened
              (``torch.export.unflatten``) so that its layers keep their module paths;
            * ``"torchvision:NAME"``: ``torchvision.models.get_model(NAME, weights=None)``
              (torchvision's model names: ``resnet18``, ``alexnet``, ``densenet161``, ...);
            * ``"timm:NAME"``: ``timm.create_model(NAME, pretrained=False)``;
            * ``"package.module:function"``: imports the module and calls ``function()``;
            * ``"path/to/file.py:function"``: runs the file as a module (its directory is on
              ``sys.path`` meanwhile, so it can import its neighbours) and calls ``function()``.

            The function takes no arguments (or ``num_classes=``, see below) and returns a
            :class:`torch.nn.Module`. Nothing is downloaded: a model family's architecture
            comes without weights unless ``weights`` gives them.
        weights: a checkpoint file to load into the model built from a family name or a
            function (see :func:`read_state_dict` for the checkpoint shapes accepted:
            a plain state dict, ``{"state_dict": ...}``, a ``module.`` prefix). Saved model
            files hold their weights already and take none.
        num_classes: the number of outputs of the final layer, passed to the constructor
            (``num_classes=``). Default: the constructor's default, unless ``weights`` has a
            final layer of another size: then the model is built with the checkpoint's
            number (the last weight tensor of the model, e.g. ``fc.weight``, is compared
            with the checkpoint's; the Places365 ResNet-18 has 365 outputs, torchvision's
            default 1000).

    Returns:
        The model, with the weights loaded when ``weights`` is given.

    Raises:
        FileNotFoundError: the model file, the ``.py`` file or the weights file does not
            exist.
        ImportError: torchvision or timm is not installed (the message says how to install
            it).
        ValueError: a file that is neither TorchScript nor a torch.export program; the module
            cannot be imported; it has no such function; an unknown torchvision/timm model
            (near matches named); ``weights`` or ``num_classes`` with a saved model file;
            weights that do not fit the model (the first missing/unexpected keys and the
            mismatched shapes named); a checkpoint that cannot be read safely.
        RuntimeError: the function raised an exception; torchvision or timm fails to import.
        TypeError: the function did not return a ``torch.nn.Module``; a bad argument.

    Examples:
        >>> m = load_model("torch.nn:Identity")
        >>> type(m).__name__
        'Identity'
        >>> import os, tempfile, torch
        >>> folder = tempfile.mkdtemp()
        >>> with open(os.path.join(folder, "nets.py"), "w") as fh:
        ...     _ = fh.write("import torch\\n"
        ...                  "def head(num_classes=10):\\n"
        ...                  "    return torch.nn.Linear(3, num_classes)\\n")
        >>> ckpt = os.path.join(folder, "ckpt.pth")     # 4 classes, saved from DataParallel
        >>> torch.save({"epoch": 1, "state_dict": {"module.weight": torch.ones(4, 3),
        ...                                        "module.bias": torch.zeros(4)}}, ckpt)
        >>> m = load_model(os.path.join(folder, "nets.py") + ":head", weights=ckpt)
        >>> m.out_features, m.weight.detach().sum().item()
        (4, 12.0)
    """
    torch = require("torch", "loading a model")

    if not isinstance(spec, str) or not spec:
        raise TypeError(f"a model spec must be a non-empty string, got {spec!r}")
    if weights is not None and (not isinstance(weights, (str, os.PathLike))
                                or not os.fspath(weights)):
        raise TypeError(f"weights must be the path of a checkpoint file, got {weights!r}")
    if num_classes is not None:
        num_classes = _check_int(num_classes, "num_classes", 1)
    family, _, name = spec.partition(":")
    if family in MODEL_PACKAGES and name and not os.path.isfile(spec):
        build = _family_constructor(family, name, spec)
    elif not _is_spec_with_function(spec) or os.path.isfile(spec):
        if weights is not None or num_classes is not None:
            given = "weights" if weights is not None else "num_classes"
            raise ValueError(f"model '{spec}' is a saved model file, which holds its weights "
                             f"and classes already: {given} applies to torchvision:NAME, "
                             f"timm:NAME and module:function / file.py:function models")
        return _load_model_file(spec)
    else:
        build = _function_constructor(spec)

    state = read_state_dict(weights) if weights is not None else None
    model = build(num_classes)
    if state is not None and num_classes is None:
        found = _checkpoint_classes(model, state)
        if found is not None:
            model = build(found)
    if state is not None:
        _load_state(model, state, spec, os.fspath(weights))
    return model


def _build(function: Callable, name: str, spec: str, num_classes: Optional[int]) -> Any:
    """``function()`` or ``function(num_classes=...)``, checked to give an ``nn.Module``."""
    import torch

    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    call = f"{name}({', '.join(f'{k}={v}' for k, v in kwargs.items())})"
    try:
        model = function(**kwargs)
    except TypeError as e:
        if kwargs and "num_classes" in str(e):
            raise ValueError(f"model spec '{spec}': {call} failed: {name} takes no "
                             f"num_classes argument ({_brief(e)}); give a function that builds "
                             f"the model with the checkpoint's number of classes") from e
        raise RuntimeError(f"model spec '{spec}': {call} failed: {_brief(e)}") from e
    except Exception as e:
        raise RuntimeError(f"model spec '{spec}': {call} failed: {_brief(e)}") from e
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model spec '{spec}': {call} returned a {type(model).__name__}, not a "
                        f"torch.nn.Module")
    return model


def _import_package(package: str, spec: str) -> Any:
    """torchvision or timm, with an install hint when absent and the cause when broken."""
    try:
        return require(package, f"model '{spec}'")
    except ImportError:
        raise
    except Exception as e:
        # A torchvision built for another torch (or CUDA) fails here, not with ImportError.
        raise RuntimeError(f"model '{spec}': importing {package} failed: {_brief(e)} (is it "
                           f"built for the installed torch? reinstall it to match)") from e


def _unknown_model(spec: str, package: str, name: str, known: Sequence[str]) -> ValueError:
    close = difflib.get_close_matches(name, list(known), n=5, cutoff=0.6)
    hint = (f"; did you mean {', '.join(repr(c) for c in close)}?" if close
            else f" ({len(known)} models there)")
    return ValueError(f"model spec '{spec}': {package} has no model '{name}'{hint}")


def _family_constructor(package: str, name: str, spec: str) -> Callable:
    """A function of ``num_classes`` building the named torchvision/timm model (no weights)."""
    module = _import_package(package, spec)
    if package == "torchvision":
        models = module.models
        if not hasattr(models, "get_model"):
            raise RuntimeError(f"model '{spec}': torchvision "
                               f"{getattr(module, '__version__', '?')} has no models.get_model; "
                               f"torchvision >= 0.14 is needed (pip install -U torchvision)")
        known = list(models.list_models())
        if name not in known:
            raise _unknown_model(spec, package, name, known)

        def function(**kwargs: Any) -> Any:
            return models.get_model(name, weights=None, **kwargs)
        label = f"torchvision.models.get_model('{name}')"
    else:
        # is_model accepts pretrained tags too ("resnet18.a1_in1k"); list_models has no tags.
        if not module.is_model(name):
            raise _unknown_model(spec, package, name, module.list_models())

        def function(**kwargs: Any) -> Any:
            return module.create_model(name, pretrained=False, **kwargs)
        label = f"timm.create_model('{name}')"
    return lambda num_classes: _build(function, label, spec, num_classes)


def _function_constructor(spec: str) -> Callable:
    """A function of ``num_classes`` calling the spec's ``module:function``."""
    where, _, name = spec.rpartition(":")
    if where.endswith(".py") or os.sep in where:
        module = _import_file(where, spec)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise ValueError(f"model spec '{spec}': cannot import module '{where}' ({e})") from e
        except Exception as e:
            raise ValueError(f"model spec '{spec}': importing module '{where}' failed: "
                             f"{_brief(e)}") from e
    obj: Any = module
    for part in name.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"model spec '{spec}': module '{where}' has no attribute '{name}'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"model spec '{spec}': '{name}' is not callable")
    return lambda num_classes: _build(obj, name, spec, num_classes)


def read_state_dict(path: PathLike) -> dict:
    """Read a checkpoint file's weights as a state dict, safely (``weights_only=True``).

    Accepted shapes: a plain state dict (``torch.save(model.state_dict(), path)``), or a dict
    holding one under ``"state_dict"`` (as the Places365 models ship, with the epoch and the
    architecture beside it) or ``"model"``. When every key starts with ``module.`` (a model
    saved from ``torch.nn.DataParallel``), the prefix is removed.

    Args:
        path: the checkpoint file (tensors are loaded onto the CPU).

    Returns:
        The state dict: parameter name -> tensor, in the file's order (its ``_metadata``, the
        module versions that ``load_state_dict`` reads, kept with the same keys).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: it cannot be read by ``torch.load(weights_only=True)`` (a whole pickled
            model, or other Python objects), or it holds no state dict (the message lists its
            top-level keys).

    Examples:
        >>> import os, tempfile, torch
        >>> path = os.path.join(tempfile.mkdtemp(), "resnet_places365.pth.tar")
        >>> torch.save({"epoch": 90, "arch": "resnet18",
        ...             "state_dict": {"module.fc.bias": torch.zeros(365)}}, path)
        >>> {k: tuple(v.shape) for k, v in read_state_dict(path).items()}
        {'fc.bias': (365,)}
    """
    torch = require("torch", "reading a checkpoint")

    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise TypeError(f"a checkpoint must be a file path, got {path!r}")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "No such checkpoint file (weights)", path)
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "Is a directory, not a checkpoint file", path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"weights '{path}': torch.load(weights_only=True) cannot read it "
                         f"({_brief(e)}); a checkpoint must hold tensors in dicts (a state "
                         f"dict), not pickled Python objects; {_RESAVE_HINT}") from e
    state = checkpoint
    if isinstance(checkpoint, dict):
        for key in ("state_dict", "model"):
            if isinstance(checkpoint.get(key), dict):
                state = checkpoint[key]
                break
    if (not isinstance(state, dict) or not state
            or not any(isinstance(v, torch.Tensor) for v in state.values())):
        what = (f"a dict with keys {', '.join(map(repr, list(checkpoint)[:10]))}"
                if isinstance(checkpoint, dict) and checkpoint else
                f"an empty dict" if isinstance(checkpoint, dict) else
                f"a {type(checkpoint).__name__}")
        raise ValueError(f"weights '{path}' holds {what}, not a state dict (parameter name -> "
                         f"tensor, or {{'state_dict': ...}})")
    odd = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if odd:
        raise ValueError(f"weights '{path}' is not a state dict: {len(odd)} entries are not "
                         f"name -> tensor (first: {odd[0]!r} -> {type(state[odd[0]]).__name__})")
    prefix = "module."
    if all(k.startswith(prefix) for k in state):
        metadata = getattr(state, "_metadata", None)
        state = OrderedDict((k[len(prefix):], v) for k, v in state.items())
        if metadata is not None:
            # Module versions by module path: the wrapper "module" itself becomes the root "".
            state._metadata = OrderedDict(  # type: ignore[attr-defined]
                ("" if k == "module" else k[len(prefix):] if k.startswith(prefix) else k, v)
                for k, v in metadata.items())
    return state


def _head_key(model: Any) -> Optional[str]:
    """The model's final layer: the last weight of two or more dimensions in its state dict
    (``fc.weight`` of a ResNet, ``classifier.6.weight`` of a VGG, ``head.weight`` of a ViT)."""
    last = None
    for key, value in model.state_dict().items():
        if key.endswith("weight") and getattr(value, "ndim", 0) >= 2:
            last = key
    return last


def _checkpoint_classes(model: Any, state: dict) -> Optional[int]:
    """The checkpoint's number of classes when its final layer differs from the model's only in
    the number of outputs; None otherwise (including when they agree)."""
    key = _head_key(model)
    if key is None or key not in state:
        return None
    mine, theirs = model.state_dict()[key].shape, state[key].shape
    if len(mine) == len(theirs) and mine[1:] == theirs[1:] and mine[0] != theirs[0]:
        return int(theirs[0])
    return None


def _load_state(model: Any, state: dict, spec: str, path: str) -> None:
    """``model.load_state_dict(state)``, with an error that names what does not fit."""
    own = model.state_dict()
    shapes = [f"{k}: checkpoint {tuple(v.shape)}, model {tuple(own[k].shape)}"
              for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    problems = []
    if shapes:
        problems.append(f"{len(shapes)} of another shape ({'; '.join(shapes[:_KEYS_SHOWN])}"
                        f"{', ...' if len(shapes) > _KEYS_SHOWN else ''})")
    else:
        # strict=False reports the keys instead of raising; BatchNorm's num_batches_tracked,
        # absent from checkpoints of old PyTorch versions, is filled in by the module itself.
        result = model.load_state_dict(state, strict=False)
        for what, keys in (("missing", result.missing_keys),
                           ("unexpected", result.unexpected_keys)):
            if keys:
                problems.append(f"{len(keys)} {what} key(s) ({', '.join(keys[:_KEYS_SHOWN])}"
                                f"{', ...' if len(keys) > _KEYS_SHOWN else ''})")
    if problems:
        raise ValueError(f"weights '{path}' do not fit model '{spec}': {'; '.join(problems)}")


def _load_model_file(path: str) -> Any:
    """A TorchScript file or a torch.export program (tried first for a ``.pt2`` file)."""
    import torch

    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "No such model file (or give 'module:function')",
                                path)
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "Is a directory, not a model file", path)

    def torchscript() -> Any:
        return torch.jit.load(path, map_location="cpu")

    def exported() -> Any:
        # unflatten restores the module hierarchy (and its paths) that hooks need.
        return torch.export.unflatten(torch.export.load(path))

    loaders = [("torch.export.load", exported), ("torch.jit.load", torchscript)]
    if not path.endswith(".pt2"):
        loaders.reverse()
    failures = []
    for what, loader in loaders:
        try:
            return loader()
        except Exception as e:
            failures.append(f"{what}: {_brief(e)}")
    raise ValueError(f"'{path}' is neither a TorchScript file nor a torch.export program "
                     f"({'; '.join(failures)}); save the model with torch.jit.save or "
                     f"torch.export.save, or give 'module:function'")


def _import_file(filename: str, spec: str) -> Any:
    """Run a ``.py`` file as a fresh module (named after the file) and return it."""
    if not os.path.isfile(filename):
        raise FileNotFoundError(errno.ENOENT, f"No such Python file (model spec '{spec}')",
                                filename)
    path = os.path.abspath(filename)
    mod_name = "compexp_model_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    module_spec = importlib.util.spec_from_file_location(mod_name, path)
    if module_spec is None or module_spec.loader is None:
        raise ValueError(f"model spec '{spec}': cannot load '{filename}' as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    folder = os.path.dirname(path)
    sys.path.insert(0, folder)
    sys.modules[mod_name] = module  # so that classes defined there pickle and script
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(mod_name, None)
        raise ValueError(f"model spec '{spec}': running '{filename}' failed: {_brief(e)}") from e
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(folder)
    return module
