"""Unit masks: per-unit thresholds and block-sparse unit masks from activations.

A unit fires on the cells where its activation, upsampled to the concepts' grid, exceeds the
unit's threshold: the (1 - quantile) quantile of all its raw activation values (NumPy's default
linear interpolation, computed in float64). Maps are resized exactly as Pillow's
``Image.resize(BILINEAR)`` does on a float32 image (half-pixel centres, no antialiasing when
upsampling), as the reference code does; float64 maps with the same operations in double
precision (no float32 rounding) and compared with the threshold in double. Boolean
activations are unit masks already.

Activations are read in batches of units and chunks of samples, so neither the activation
tensor nor any dense mask of the whole dataset has to fit in memory: ``acts`` may be an
``h5py.Dataset``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .. import _core
from .masks import MaskSet

__all__ = ["compute_thresholds", "unit_masks", "as_activations", "DeviceArray", "DeviceActivations"]

# Bytes of activations read at once (a batch of units x a chunk of samples).
_READ_BYTES = 1 << 28
# A sparse torch tensor is made dense only up to this many bytes (its dense form); larger ones
# are refused with a message rather than exhausting memory.
MAX_DENSIFY_BYTES = 1 << 30
# Torch floating dtypes NumPy holds as they are; other floating ones (bfloat16, float8) are
# widened to float32, which represents every one of their values exactly.
_NUMPY_FLOATS = ("torch.float16", "torch.float32", "torch.float64")


def is_tensor(x) -> bool:
    """Whether ``x`` is a torch tensor, without importing torch (duck typing)."""
    return hasattr(x, "detach") and hasattr(x, "cpu") and hasattr(x, "layout")


def tensor_to_numpy(t, what: str = "acts") -> np.ndarray:
    """A torch tensor's values as a NumPy array, on the host, without importing torch.

    CUDA (and other device) tensors are copied to the CPU; bfloat16 and float8 values are
    widened to float32 (exact); quantized tensors are dequantized; sparse tensors (any sparse
    layout) are made dense when their dense form takes at most :data:`MAX_DENSIFY_BYTES`.

    Raises:
        ValueError: a tensor on the ``meta`` device (it has a shape but no data); a sparse
            tensor whose dense form is larger than :data:`MAX_DENSIFY_BYTES`.
        TypeError: a dtype NumPy cannot hold.
    """
    t = t.detach()
    shape = tuple(int(d) for d in t.shape)
    if getattr(t, "is_meta", False) or getattr(getattr(t, "device", None), "type", "") == "meta":
        raise ValueError(f"{what} is a torch tensor on the 'meta' device: it has a shape "
                         f"{shape} but no data; pass a tensor that holds values (on the CPU or a "
                         f"GPU)")
    t = t.cpu()
    layout = str(t.layout)
    if layout != "torch.strided":
        nbytes = int(np.prod(shape, dtype=np.float64)) * int(t.element_size())
        if nbytes > MAX_DENSIFY_BYTES:
            raise ValueError(f"{what} is a sparse torch tensor ({layout}) of shape {shape}, whose "
                             f"dense form would take {nbytes / 2 ** 30:.3g} GiB, more than the "
                             f"{MAX_DENSIFY_BYTES / 2 ** 30:.3g} GiB made dense automatically; "
                             f"pass dense values (a tensor, an array, an h5py dataset or an "
                             f"activations file, which is read in chunks)")
        t = t.to_dense()
    if getattr(t, "is_quantized", False):
        t = t.dequantize()
    if t.is_floating_point() and str(t.dtype) not in _NUMPY_FLOATS:
        t = t.float()
    if hasattr(t, "resolve_conj"):
        t = t.resolve_conj().resolve_neg()
    try:
        return t.numpy()
    except (TypeError, RuntimeError) as e:
        raise TypeError(f"{what} is a torch tensor of dtype {t.dtype}, which NumPy cannot hold "
                        f"({e}); pass float or bool values") from None


def is_cuda_array(x) -> bool:
    """Whether ``x`` exposes ``__cuda_array_interface__`` (a torch CUDA tensor, a CuPy array,
    Numba device arrays...), without importing any of them. CPU torch tensors do not."""
    try:
        return hasattr(x, "__cuda_array_interface__")
    except Exception:                                  # noqa: BLE001 (a property that raises)
        return False


class DeviceArray:
    """A view of a GPU array's ``__cuda_array_interface__`` (version 2 or 3; torch CUDA tensors,
    CuPy, Numba...), the one reader of that protocol in the package. The array (``owner``) is
    kept alive by the view; its values are read by the CUDA kernels in place.

    DLPack (``__dlpack__``) is not read: torch and CuPy arrays expose this interface too, and
    consuming a DLPack capsule would add a second protocol (capsule ownership, its own stream
    handshake) for no array this one misses.

    Attributes: ``shape``, ``dtype``, ``ptr`` (device address), ``strides`` (bytes, or None for
    C order), ``stream`` (the producer's CUDA stream to wait for, 0 for none), ``device`` (CUDA
    ordinal, or None if the object does not say), ``owner``. Subclasses say which dtypes and
    ranks they take (:meth:`_check_dtype`, ``_NDIMS``).
    """

    _NDIMS: tuple = ()
    _SHAPE_TEXT = ""

    def _check_dtype(self, dtype: np.dtype, what: str) -> None:
        raise NotImplementedError

    def __init__(self, owner, what: str) -> None:
        try:
            cai = owner.__cuda_array_interface__
        except Exception as e:                          # noqa: BLE001
            raise TypeError(f"{what} has no usable __cuda_array_interface__ ({e})") from None
        if not isinstance(cai, dict) or "shape" not in cai or "typestr" not in cai or "data" not in cai:
            raise TypeError(f"{what}: __cuda_array_interface__ must be a dict with shape, typestr "
                            f"and data")
        shape = tuple(int(d) for d in cai["shape"])
        try:
            dtype = np.dtype(cai["typestr"])
        except TypeError:
            raise TypeError(f"{what} on the GPU has typestr {cai['typestr']!r}, which is not a "
                            f"NumPy dtype") from None
        if dtype.byteorder == ">":
            raise TypeError(f"{what} on the GPU is big-endian ({cai['typestr']}); pass "
                            f"little-endian values")
        dtype = dtype.newbyteorder("=")
        self._check_dtype(dtype, what)
        if len(shape) not in self._NDIMS:
            raise ValueError(f"{what} must be {self._SHAPE_TEXT}, got shape {shape}")
        ptr = int(cai["data"][0]) if cai["data"] is not None else 0
        if ptr == 0 and int(np.prod(shape, dtype=np.int64)) > 0:
            raise ValueError(f"{what} on the GPU has a null data pointer")
        strides = cai.get("strides")
        if strides is not None:
            strides = tuple(int(b) for b in strides)
            if len(strides) != len(shape):
                raise ValueError(f"{what}: __cuda_array_interface__ strides {strides} do not match "
                                 f"shape {shape}")
            if any(b < 0 or b % dtype.itemsize for b in strides):
                raise ValueError(f"{what} on the GPU has strides {strides} (bytes): they must be "
                                 f"non-negative multiples of the item size {dtype.itemsize}")
        if cai.get("mask") is not None:
            raise ValueError(f"{what} on the GPU is a masked array; pass plain values")
        # Version 3: the producer's stream (None: nothing to wait for; 1 / 2: the legacy /
        # per-thread default stream). The kernels wait for it before reading the values.
        stream = cai.get("stream")
        if stream is not None and (isinstance(stream, bool) or not isinstance(stream, (int, np.integer))
                                   or int(stream) <= 0):
            raise ValueError(f"{what}: __cuda_array_interface__ stream must be None or a positive "
                             f"integer, got {stream!r}")
        self.owner = owner
        self.shape = shape
        self.dtype = dtype
        self.ptr = ptr
        self.strides = strides
        self.stream = 0 if stream is None else int(stream)
        self.device = _cuda_device_of(owner)


class DeviceActivations(DeviceArray):
    """Activations that stay in GPU memory: a :class:`DeviceArray` of float32 or float64 values
    ``[N, U, h, w]`` / ``[N, U]`` for the CUDA backend, which computes thresholds and unit masks
    on the device, so the values never travel through host memory.
    """

    _NDIMS = (2, 4)
    _SHAPE_TEXT = "[N, U, h, w] or [N, U]"

    def _check_dtype(self, dtype: np.dtype, what: str) -> None:
        if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise TypeError(f"{what} on the GPU must be float32 or float64 to stay on the GPU, "
                            f"got {dtype}; convert it on the GPU first (e.g. acts.float()) or "
                            f"pass a host array")

    def __init__(self, owner, what: str = "acts") -> None:
        super().__init__(owner, what)

    def __repr__(self) -> str:
        return (f"DeviceActivations(shape={self.shape}, dtype={self.dtype}, device={self.device}, "
                f"ptr=0x{self.ptr:x})")

    def __getitem__(self, key):
        raise TypeError("acts on the GPU are read by the CUDA backend only (device='cuda'); "
                        "this is an internal error if you see it")


def _cuda_float(x) -> bool:
    """Whether a GPU array holds float32 or float64 values (others take the host path)."""
    try:
        t = np.dtype(x.__cuda_array_interface__["typestr"])
    except Exception:                                  # noqa: BLE001
        return False
    return t.kind == "f" and t.itemsize in (4, 8)


def _cuda_device_of(x) -> Optional[int]:
    """The CUDA ordinal of a GPU array: torch (``.device.index``), CuPy (``.device.id``), or an
    integer ``.device`` attribute; None when it does not say."""
    dev = getattr(x, "device", None)
    for attr in ("index", "id"):
        v = getattr(dev, attr, None)
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            return int(v)
    if isinstance(dev, (int, np.integer)) and not isinstance(dev, bool):
        return int(dev)
    return None


def as_activations(acts, on_device: bool = False):
    """Accept a NumPy array, an h5py dataset or a torch tensor (paths are opened by the
    caller: :func:`compexp_core.io.open_activations`). With ``on_device`` (a CUDA search),
    float32/float64 GPU arrays (``__cuda_array_interface__``: torch CUDA tensors, CuPy) become
    :class:`DeviceActivations` and stay on the GPU; otherwise they are copied to the host. Tensors are converted by
    :func:`tensor_to_numpy` (a GPU tensor is copied to the CPU, bfloat16 widened to float32,
    a small sparse tensor made dense; a meta tensor is refused).

    Returns an object with ``shape``, ``dtype`` and NumPy-style slicing.
    """
    import os

    if isinstance(acts, (str, bytes, os.PathLike)):
        raise TypeError(f"acts is a path ({acts!r}); open it with compexp_core.io.open_activations "
                        f"or pass it to compexp_core.search_formulas, which opens it")
    if isinstance(acts, DeviceActivations):
        if on_device:
            return acts
        acts = acts.owner
    if on_device:
        # A torch tensor that requires grad exposes no interface until detached (no copy).
        probe = acts.detach() if is_tensor(acts) else acts
        if is_cuda_array(probe) and _cuda_float(probe):
            return DeviceActivations(probe, "acts")
    if is_tensor(acts):                      # torch.Tensor without importing torch
        acts = tensor_to_numpy(acts, "acts")
    elif is_cuda_array(acts):                # CuPy and other GPU arrays: copied only if asked
        if callable(getattr(acts, "get", None)):
            acts = acts.get()                # CuPy: an explicit device-to-host copy
        else:
            raise TypeError(f"acts is a GPU array ({type(acts).__name__}, "
                            f"__cuda_array_interface__): search it with device='cuda' (it stays "
                            f"on the GPU) or copy it to the host first")
    if hasattr(acts, "shape") and hasattr(acts, "dtype") and hasattr(acts, "__getitem__") \
            and not isinstance(acts, np.ndarray) and type(acts).__module__.startswith("h5py"):
        return acts
    if not isinstance(acts, np.ndarray):
        acts = np.asarray(acts)
    return acts


def check_activations(acts, n_samples: int, grid: tuple[int, int]) -> None:
    """Validate shape and dtype of activations against a concept set's samples and grid."""
    dtype = np.dtype(acts.dtype)
    if dtype.kind not in "fb":
        raise TypeError(f"acts must hold floats (activations) or booleans (unit masks), got "
                        f"dtype {dtype}")
    if len(acts.shape) not in (2, 4):
        raise ValueError(f"acts must be [N, U, h, w] or [N, U], got shape {tuple(acts.shape)}")
    n, u = acts.shape[:2]
    if n != n_samples:
        raise ValueError(f"acts has {n} samples but the concept masks have {n_samples}")
    if u == 0:
        raise ValueError("acts has zero units (U = 0)")
    if len(acts.shape) == 4:
        if acts.shape[2] == 0 or acts.shape[3] == 0:
            raise ValueError(f"acts maps are empty: shape {tuple(acts.shape)}")
        if dtype == bool and tuple(acts.shape[2:]) != tuple(grid):
            raise ValueError(f"boolean acts are unit masks and must be on the concepts' grid "
                             f"{tuple(grid)}, got maps of {tuple(acts.shape[2:])}")


def _values_per_unit(acts) -> int:
    return int(np.prod(acts.shape[2:], dtype=np.int64)) if len(acts.shape) == 4 else 1


def _read(acts, s0: int, s1: int, ids: np.ndarray) -> np.ndarray:
    """acts[s0:s1, ids] for sorted unique ids, reading a contiguous unit range (h5py-friendly)."""
    lo, hi = int(ids[0]), int(ids[-1]) + 1
    block = np.asarray(acts[s0:s1, lo:hi])
    if hi - lo == ids.size:
        return block
    return block[:, ids - lo]


def unit_batches(ids: np.ndarray, acts, max_units: int) -> list[np.ndarray]:
    """Split sorted unit ids into batches whose reads stay within the read budget."""
    per_unit = max(1, acts.shape[0] * _values_per_unit(acts) * 8)
    size = max(1, min(max_units, _READ_BYTES // per_unit))
    return [ids[i:i + size] for i in range(0, ids.size, size)]


def compute_thresholds(acts, quantile: float = 0.005, units: Optional[Sequence[int]] = None,
                       progress=None) -> np.ndarray:
    """Per-unit thresholds: the (1 - quantile) quantile of each unit's raw activations.

    Args:
        acts: float ``[N, U, h, w]`` or ``[N, U]`` (array or h5py dataset).
        quantile: fraction of each unit's values above the threshold, in (0, 1).
        units: unit indices (default: all).

    Returns:
        float64 array, one threshold per requested unit.

    Raises:
        ValueError: non-finite activations (naming the unit), quantile outside (0, 1).

    Examples:
        >>> import numpy as np
        >>> acts = np.arange(10, dtype=np.float32).reshape(5, 2)   # unit 0: 0, 2, .. 8
        >>> compute_thresholds(acts, quantile=0.25).tolist()
        [6.0, 7.0]
    """
    check_quantile(quantile)
    acts = as_activations(acts)
    if np.dtype(acts.dtype).kind != "f":
        raise TypeError(f"thresholds need float activations, got dtype {acts.dtype}")
    ids = np.arange(acts.shape[1]) if units is None else np.asarray(units, np.int64)
    uniq, inverse = np.unique(ids, return_inverse=True)
    out = np.empty(uniq.size)
    done = 0

    def one_unit(vals: np.ndarray, i: int) -> float:
        # One contiguous float64 copy per unit, partitioned in place (overwrite_input): the
        # same value as np.quantile on the float64 values, without its extra copies.
        v = np.ascontiguousarray(vals[:, i]).astype(np.float64).ravel()
        if not np.isfinite(v).all():
            raise ValueError(f"acts of unit {int(batch[i])} contain NaN or infinite values")
        # + 0.0: a zero threshold is +0.0 whichever zero NumPy's partition left at the index
        # (the same masks; the GPU's radix select gives the same bits).
        return float(np.quantile(v, 1.0 - quantile, overwrite_input=True)) + 0.0

    from concurrent.futures import ThreadPoolExecutor

    # NumPy's partition releases the GIL: units are spread over the cores.
    with ThreadPoolExecutor(max_workers=max(1, _core.default_threads())) as pool:
        for batch in unit_batches(uniq, acts, 64):
            vals = _read(acts, 0, acts.shape[0], batch)
            out[done:done + batch.size] = list(pool.map(lambda i: one_unit(vals, i), range(batch.size)))
            done += batch.size
            if progress is not None:
                progress(batch.size)
    return out[inverse]


def check_quantile(quantile) -> None:
    if isinstance(quantile, bool) or not isinstance(quantile, (int, float, np.floating, np.integer)):
        raise TypeError(f"quantile must be a number in (0, 1), got {quantile!r}")
    if not 0.0 < float(quantile) < 1.0:
        raise ValueError(f"quantile must lie in (0, 1), got {quantile}")


def unit_masks(acts, ids: np.ndarray, grid: tuple[int, int], thresholds: Optional[np.ndarray]):
    """Block-sparse masks of units ``ids`` (one per id, in order) on ``grid``.

    Args:
        acts: activations (see :func:`as_activations`), already validated.
        ids: sorted unique unit indices.
        grid: (H, W) of the concept masks.
        thresholds: float64, one per id (ignored for boolean acts).

    Returns:
        A :class:`MaskSet` with one mask per id.
    """
    H, W = grid
    n = acts.shape[0]
    is_bool = np.dtype(acts.dtype) == bool
    per_sample = len(ids) * max(_values_per_unit(acts), H * W) * (8 if acts.dtype == np.float64 else 4)
    step = max(1, _READ_BYTES // max(1, per_sample))
    parts = []      # (ptr, block, words) tuples of consecutive sample ranges
    for s0 in range(0, n, step):
        s1 = min(n, s0 + step)
        chunk = _read(acts, s0, s1, ids)
        if not is_bool and not np.isfinite(chunk).all():
            bad = ids[np.nonzero(~np.isfinite(chunk).reshape(chunk.shape[0], len(ids), -1).all(axis=(0, 2)))[0][0]]
            raise ValueError(f"acts of unit {int(bad)} contain NaN or infinite values")
        if chunk.ndim == 2:
            # [n, U] values: a unit fires on whole samples.
            fired = chunk if is_bool else chunk.astype(np.float64, copy=False) > thresholds[None, :]
            grid_masks = np.broadcast_to(fired[:, :, None, None], (s1 - s0, len(ids), H, W))
            parts.append(_core.unit_masks_from_bool(
                np.ascontiguousarray(grid_masks).view(np.uint8), s0))
        elif is_bool:
            parts.append(_core.unit_masks_from_bool(np.ascontiguousarray(chunk).view(np.uint8), s0))
        else:
            # float64 maps are resized in double precision (a float32 image would round them,
            # e.g. 1 + 1e-9 to 1, 1e300 to inf); other floats as Pillow's float32 image.
            dt = np.float64 if chunk.dtype == np.float64 else np.float32
            parts.append(_core.unit_masks_from_maps(np.ascontiguousarray(chunk, dt), s0, H, W,
                                                    np.ascontiguousarray(thresholds, np.float64)))
    return MaskSet.from_arrays(parts[0] if len(parts) == 1 else _core.merge_mask_parts(parts))
