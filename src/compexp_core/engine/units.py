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
``h5py.Dataset``, or a source that computes the requested units of a chunk of samples when they
are read (:class:`ComputedActivations`; :class:`SAEFeatures`, the features of a sparse
autoencoder computed from a residual stream), for layers whose ``[N, U]`` values would fill
neither memory nor disk (16,384 SAE features over a million tokens are 64 GB of float32).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from .. import _core
from .masks import MaskSet

__all__ = ["compute_thresholds", "unit_masks", "as_activations", "DeviceArray", "DeviceActivations",
           "ComputedActivations", "SAEFeatures"]

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


class ComputedActivations:
    """Float activations ``[N, U]`` computed when they are read, for layers too large to store.

    The engine reads activations one batch of units and one chunk of samples at a time
    (thresholds: every sample of a batch of units; unit masks: chunks of samples of it), so a
    source that computes exactly the values asked for serves a search of any number of units in
    the memory of one batch: ``compute(rows, ids)`` is called with a slice of samples (step 1)
    and the sorted, unique unit indices wanted, and returns their values ``[len(rows),
    len(ids)]``. Nothing of other units is computed (reads of a non-contiguous set of units
    cost what those units cost, unlike an array's contiguous read). The values must depend only
    on the sample and the unit, not on which other units or samples share a call: the search's
    results are then those of the materialised array (``np.asarray(source)``), bit for bit.

    Args:
        shape: ``(N, U)``, samples (one cell each: tokens) and units.
        compute: ``compute(rows: slice, ids: int64 array) -> [rows, len(ids)]`` float values.
        dtype: float16, float32 (default) or float64, the dtype the values are returned in.

    Attributes:
        reads: calls of ``compute`` so far; ``values_read``: values they returned (both for
            profiling, and tests that check what was computed).

    Raises:
        ValueError / TypeError: a shape that is not two positive sizes, a dtype that is not
            floating, a ``compute`` that is not callable; on a read, a ``compute`` whose result
            has another shape or is not floating.

    Examples:
        >>> import numpy as np
        >>> src = ComputedActivations((4, 3), lambda rows, ids: np.add.outer(
        ...     np.arange(rows.start, rows.stop), 10.0 * ids))
        >>> src[1:3, [0, 2]].tolist()
        [[1.0, 21.0], [2.0, 22.0]]
        >>> src.reads, src.values_read
        (1, 4)
    """

    ndim = 2

    def __init__(self, shape, compute: Callable, dtype=np.float32) -> None:
        try:
            shape = tuple(int(d) for d in shape)
        except TypeError:
            raise TypeError(f"shape must be (N, U), got {shape!r}") from None
        if len(shape) != 2 or min(shape) < 1:
            raise ValueError(f"shape must be (N, U) with N, U >= 1, got {shape}")
        if not callable(compute):
            raise TypeError(f"compute must be callable (rows, ids) -> values, got "
                            f"{type(compute).__name__}")
        dtype = np.dtype(dtype)
        if dtype not in (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)):
            raise TypeError(f"computed activations must be float16, float32 or float64, got "
                            f"{dtype}")
        self.shape = shape
        self.dtype = dtype
        self._compute = compute
        self.reads = 0
        self.values_read = 0

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype})"

    def read(self, s0: int, s1: int, ids: np.ndarray) -> np.ndarray:
        """Values of samples ``s0:s1`` and sorted unique units ``ids``: ``[s1 - s0, len(ids)]``."""
        ids = np.asarray(ids, np.int64)
        out = np.asarray(self._compute(slice(int(s0), int(s1)), ids))
        want = (int(s1) - int(s0), ids.size)
        if out.shape != want:
            raise ValueError(f"{self!r}: compute returned shape {out.shape} for {want[0]} samples "
                             f"and {want[1]} units; it must return [samples, units] = {want}")
        if out.dtype.kind != "f":
            raise TypeError(f"{self!r}: compute returned dtype {out.dtype}; it must return floats")
        self.reads += 1
        self.values_read += out.size
        return out.astype(self.dtype, copy=False)

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if len(key) > 2:
            raise IndexError(f"{type(self).__name__} is [N, U]: at most two indices, got "
                             f"{len(key)}")
        rows, cols = key[0], key[1] if len(key) == 2 else slice(None)
        n, u = self.shape
        squeeze_row = isinstance(rows, (int, np.integer))
        if squeeze_row:
            r = int(rows) + (n if int(rows) < 0 else 0)
            if not 0 <= r < n:
                raise IndexError(f"sample {int(rows)} is out of range for {n} samples")
            rows = slice(r, r + 1)
        if not isinstance(rows, slice) or rows.indices(n)[2] != 1:
            raise TypeError(f"{type(self).__name__} reads rows by an integer or a slice with "
                            f"step 1, got {rows!r}")
        s0, s1, _ = rows.indices(n)
        squeeze_col = isinstance(cols, (int, np.integer))
        ids = np.arange(u)[cols]
        ids = np.atleast_1d(ids).astype(np.int64)
        uniq, inverse = np.unique(ids, return_inverse=True)
        vals = self.read(s0, max(s0, s1), uniq) if uniq.size and s1 > s0 else \
            np.empty((max(0, s1 - s0), uniq.size), self.dtype)
        vals = vals[:, inverse.ravel()] if not np.array_equal(uniq, ids) else vals
        if squeeze_col:
            vals = vals[:, 0]
        return vals[0] if squeeze_row else vals

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        nbytes = self.shape[0] * self.shape[1] * self.dtype.itemsize
        if nbytes > MAX_DENSIFY_BYTES:
            raise ValueError(f"{self!r} would take {nbytes / 2 ** 30:.3g} GiB as an array, more "
                             f"than the {MAX_DENSIFY_BYTES / 2 ** 30:.3g} GiB materialised "
                             f"automatically; read it in slices (source[rows, units])")
        out = self.read(0, self.shape[0], np.arange(self.shape[1]))
        return out if dtype is None else out.astype(dtype, copy=False)


_SAE_ACTIVATIONS = ("relu", "jumprelu", "identity")


def _float_matrix(x, what: str, ndim: int) -> np.ndarray:
    """A finite float NumPy array of ``ndim`` dimensions from an array or a torch tensor."""
    if is_tensor(x):
        x = tensor_to_numpy(x, what)
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise TypeError(f"{what} must hold floats, got dtype {x.dtype}")
    if x.ndim != ndim:
        raise ValueError(f"{what} must have {ndim} dimension{'s' * (ndim > 1)}, got shape "
                         f"{x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{what} contains NaN or infinite values")
    return x


class SAEFeatures(ComputedActivations):
    """The features of a sparse autoencoder, ``[N_tokens, F]``, computed from the residual stream
    only for the features and tokens the search reads.

    Feature ``f`` of token ``t`` is ``act((resid[t] - b_dec) @ W_enc[:, f] + b_enc[f])`` (the
    encoder of SAELens' standard and JumpReLU SAEs; ``b_dec`` only when the SAE subtracts it
    from its input, SAELens' ``apply_b_dec_to_input``). A read of ``len(ids)`` features costs
    ``N x D x len(ids)`` multiply-adds and ``[N, len(ids)]`` values of memory, never ``N x F``:
    a search of F features reads the residual stream once per unit batch and holds one batch of
    features at a time, where the materialised features (F x N x 4 bytes: 64 GB for 16,384
    features over a million tokens) would fit neither memory nor disk.

    A value does not depend on what else is read with it: a BLAS may sum over D in another
    order for a product of another shape (OpenBLAS does for one feature alone), so values are
    always computed in aligned blocks of ``rows_per_step`` tokens by ``feature_group``
    features and the rows and features asked for are taken from those blocks (a search's unit
    batches, multiples of the group, waste nothing). The search's results are then those of
    the materialised features ``np.asarray(source)``, bit for bit.

    TopK SAEs are not supported: a token's features depend on all F pre-activations (compute
    them with the SAE and store them, or use :class:`ComputedActivations`).

    Args:
        resid: ``[N, D]`` float residual stream (array, h5py dataset or torch tensor; tensors
            are copied to the host).
        W_enc: ``[D, F]`` encoder weights; ``b_enc``: ``[F]`` encoder bias.
        b_dec: ``[D]`` decoder bias subtracted from the input, or None.
        activation: ``"relu"`` (default), ``"jumprelu"`` (a feature is its pre-activation where
            that exceeds ``jump_threshold[f]``, else 0) or ``"identity"`` (pre-activations).
        jump_threshold: ``[F]`` thresholds of ``"jumprelu"``.
        rows_per_step: tokens computed at once (bounds the ``resid - b_dec`` copy; an h5py
            dataset is read in these pieces).
        feature_group: features computed by one product (see above).

    Values are float64 when ``resid`` and ``W_enc`` both are, else float32. With the search's
    ``threshold=0`` a ReLU feature fires on the tokens where it is positive (the search's unit
    mask is ``value > threshold``).

    Raises:
        ValueError: ``W_enc``'s input width differs from ``resid``'s (naming both), biases of
            the wrong length, NaN or infinite weights, an unknown activation; on a read, NaN or
            infinite values in the residual stream (naming the token row).
        TypeError: non-float inputs.

    Examples:
        >>> import numpy as np
        >>> resid = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], np.float32)   # 3 tokens, D=2
        >>> W_enc = np.array([[1.0, -1.0, 0.5], [0.0, 1.0, 0.5]], np.float32)     # F=3
        >>> sae = SAEFeatures(resid, W_enc, b_enc=np.array([0.0, 0.0, -0.75], np.float32))
        >>> sae.shape, sae[:, [0, 2]].tolist()
        ((3, 3), [[1.0, 0.0], [0.0, 0.0], [1.0, 0.25]])
        >>> SAEFeatures(resid, W_enc[:1], b_enc=np.zeros(3))
        Traceback (most recent call last):
        ...
        ValueError: W_enc is [D_in, F] = (1, 3): the SAE's input width 1 differs from resid's width D = 2
    """

    def __init__(self, resid, W_enc, b_enc, b_dec=None, activation: str = "relu",
                 jump_threshold=None, rows_per_step: int = 65536, feature_group: int = 32) -> None:
        if is_tensor(resid):
            resid = tensor_to_numpy(resid, "resid")
        is_h5 = type(resid).__module__.startswith("h5py")
        if not is_h5:
            resid = np.asarray(resid)
        if np.dtype(resid.dtype).kind != "f":
            raise TypeError(f"resid must hold floats, got dtype {resid.dtype}")
        if len(resid.shape) != 2 or resid.shape[0] < 1 or resid.shape[1] < 1:
            raise ValueError(f"resid must be [N_tokens, D] with N_tokens, D >= 1, got shape "
                             f"{tuple(resid.shape)}")
        n, d = (int(v) for v in resid.shape)
        if is_tensor(W_enc) or not hasattr(W_enc, "shape") or len(W_enc.shape) == 2:
            W_enc = _float_matrix(W_enc, "W_enc", 2)
        else:
            raise ValueError(f"W_enc must be [D, F], got shape {tuple(W_enc.shape)}")
        if W_enc.shape[0] != d:
            raise ValueError(f"W_enc is [D_in, F] = {W_enc.shape}: the SAE's input width "
                             f"{W_enc.shape[0]} differs from resid's width D = {d}")
        f = int(W_enc.shape[1])
        if f < 1:
            raise ValueError("W_enc has zero features (F = 0)")
        b_enc = _float_matrix(b_enc, "b_enc", 1)
        if b_enc.shape != (f,):
            raise ValueError(f"b_enc must have one value per feature (F = {f}), got shape "
                             f"{b_enc.shape}")
        if b_dec is not None:
            b_dec = _float_matrix(b_dec, "b_dec", 1)
            if b_dec.shape != (d,):
                raise ValueError(f"b_dec must have one value per input dimension (D = {d}), got "
                                 f"shape {b_dec.shape}")
        if activation not in _SAE_ACTIVATIONS:
            topk = str(activation).lower().startswith("topk")
            hint = (" (TopK SAEs need every feature of a token at once: compute them with the "
                    "SAE, or pass a ComputedActivations)") if topk else ""
            raise ValueError(f"activation must be one of {', '.join(_SAE_ACTIVATIONS)}, got "
                             f"{activation!r}{hint}")
        if (activation == "jumprelu") != (jump_threshold is not None):
            raise ValueError("jump_threshold is given with activation='jumprelu', and only then")
        if jump_threshold is not None:
            jump_threshold = _float_matrix(jump_threshold, "jump_threshold", 1)
            if jump_threshold.shape != (f,):
                raise ValueError(f"jump_threshold must have one value per feature (F = {f}), got "
                                 f"shape {jump_threshold.shape}")
        for name, v in (("rows_per_step", rows_per_step), ("feature_group", feature_group)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        dtype = np.float64 if np.dtype(resid.dtype) == np.float64 and W_enc.dtype == np.float64 \
            else np.float32
        super().__init__((n, f), self._features, dtype)
        self.resid = resid
        # Feature-major weights: a batch of features is a contiguous gather of rows.
        self._W_t = np.ascontiguousarray(W_enc.T, dtype)
        self._b_enc = b_enc.astype(dtype)
        self._b_dec = None if b_dec is None else b_dec.astype(dtype)
        self.activation = activation
        self._jump = None if jump_threshold is None else jump_threshold.astype(dtype)
        self.rows_per_step = int(rows_per_step)
        self.feature_group = int(feature_group)

    @property
    def d_in(self) -> int:
        """D, the residual stream's width."""
        return int(self._W_t.shape[1])

    def _features(self, rows: slice, ids: np.ndarray) -> np.ndarray:
        # Each value comes from the same matrix product whatever is read: the product of the
        # aligned block of tokens [k R, (k + 1) R) with the aligned group of features
        # [g G, (g + 1) G) that hold it (a BLAS may sum in another order for another shape).
        R, G = self.rows_per_step, self.feature_group
        out = np.empty((rows.stop - rows.start, ids.size), self.dtype)
        group_of = ids // G
        groups = [(int(g), np.nonzero(group_of == g)[0]) for g in np.unique(group_of)]
        for b0 in range((rows.start // R) * R, rows.stop, R):
            b1 = min(self.shape[0], b0 + R)
            x = np.asarray(self.resid[b0:b1]).astype(self.dtype, copy=False)
            if self._b_dec is not None:
                x = x - self._b_dec
            r0, r1 = max(b0, rows.start), min(b1, rows.stop)       # the rows wanted
            for g, pos in groups:
                lo, hi = g * G, min(self.shape[1], (g + 1) * G)
                pre = x @ self._W_t[lo:hi].T
                pre += self._b_enc[lo:hi]
                if not np.isfinite(pre).all():
                    self._non_finite(x, b0)
                if self.activation == "relu":
                    np.maximum(pre, 0, out=pre)
                elif self.activation == "jumprelu":
                    # SAELens' JumpReLU: relu(pre), kept where pre exceeds the threshold.
                    np.maximum(pre, 0, out=pre)
                    pre *= pre > self._jump[lo:hi]
                out[r0 - rows.start:r1 - rows.start, pos] = pre[r0 - b0:r1 - b0][:, ids[pos] - lo]
        return out

    def _non_finite(self, x: np.ndarray, r0: int) -> None:
        bad = np.nonzero(~np.isfinite(x).all(axis=1))[0]
        if bad.size:
            raise ValueError(f"resid contains NaN or infinite values (token row {r0 + int(bad[0])})")
        raise ValueError(f"SAE pre-activations overflow to infinity from finite inputs near token "
                         f"row {r0}; rescale the residual stream or compute in float64")


def as_activations(acts, on_device: bool = False):
    """Accept a NumPy array, an h5py dataset or a torch tensor (paths are opened by the
    caller: :func:`compexp_core.io.open_activations`). With ``on_device`` (a CUDA search),
    float32/float64 GPU arrays (``__cuda_array_interface__``: torch CUDA tensors, CuPy) become
    :class:`DeviceActivations` and stay on the GPU; otherwise they are copied to the host. Tensors are converted by
    :func:`tensor_to_numpy` (a GPU tensor is copied to the CPU, bfloat16 widened to float32,
    a small sparse tensor made dense; a meta tensor is refused). A
    :class:`ComputedActivations` (an :class:`SAEFeatures`) is returned as it is: its values are
    computed batch by batch when the search reads them.

    Returns an object with ``shape``, ``dtype`` and NumPy-style slicing.
    """
    import os

    if isinstance(acts, (str, bytes, os.PathLike)):
        raise TypeError(f"acts is a path ({acts!r}); open it with compexp_core.io.open_activations "
                        f"or pass it to compexp_core.search_formulas, which opens it")
    if isinstance(acts, ComputedActivations):
        return acts                          # computed when read, never materialised here
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
    """acts[s0:s1, ids] for sorted unique ids, reading a contiguous unit range (h5py-friendly);
    a computed source computes exactly ``ids``."""
    if isinstance(acts, ComputedActivations):
        return acts.read(s0, s1, ids)
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


# Rows of a chunk compared (or checked) at once: small enough that the temporaries of one
# step stay in cache, large enough to amortise NumPy's per-call cost.
_ROW_STEP = 1 << 14


def _check_finite(block: np.ndarray, ids: np.ndarray) -> None:
    """ValueError naming the first unit (axis 1) with a NaN or infinite value in ``block``."""
    if not np.isfinite(block).all():
        bad = ~np.isfinite(block).reshape(block.shape[0], block.shape[1], -1).all(axis=(0, 2))
        raise ValueError(f"acts of unit {int(ids[np.argmax(bad)])} contain NaN or infinite values")


def _float32_floor(t: np.ndarray) -> np.ndarray:
    """The largest float32 at most each float64 threshold: for float32 ``x``, ``x > t`` in
    float64 exactly when ``x > _float32_floor(t)`` in float32 (the float32 values above that
    floor are those at or above the next float32, which exceeds ``t``), so float32
    activations are compared without being widened."""
    with np.errstate(over="ignore"):
        t32 = t.astype(np.float32)
    above = t32.astype(np.float64) > t
    t32[above] = np.nextafter(t32[above], np.float32(-np.inf))
    return t32


def _fired(chunk: np.ndarray, thresholds: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """bool ``[n, U]``: ``chunk > thresholds`` as compared in float64, the one dense boolean
    copy of a chunk of sample-level units; values checked to be finite on the way.

    Computed block of rows by block of rows, so no widened float copy of the chunk is made:
    float32 values against :func:`_float32_floor` thresholds, float16 and float64 against the
    float64 thresholds (NumPy casts float16 in buffered pieces); wider floats as float64."""
    t = _float32_floor(thresholds) if chunk.dtype == np.float32 else thresholds
    fired = np.empty(chunk.shape, bool)
    for r0 in range(0, chunk.shape[0], _ROW_STEP):
        block = chunk[r0:r0 + _ROW_STEP]
        _check_finite(block, ids)
        if block.dtype.itemsize > 8:
            block = block.astype(np.float64)
        np.greater(block, t, out=fired[r0:r0 + _ROW_STEP])
    return fired


def unit_masks(acts, ids: np.ndarray, grid: tuple[int, int], thresholds: Optional[np.ndarray]):
    """Block-sparse masks of units ``ids`` (one per id, in order) on ``grid``.

    Args:
        acts: activations (see :func:`as_activations`), already validated.
        ids: sorted unique unit indices.
        grid: (H, W) of the concept masks.
        thresholds: float64, one per id (ignored for boolean acts).

    Returns:
        A :class:`MaskSet` with one mask per id.

    Memory: one chunk of the batch's values at a time (about ``_READ_BYTES``), and for
    sample-level float values one boolean copy of it (:func:`_fired`: compared without a
    widened float copy); maps are thresholded and packed by the compiled kernel.
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
        if chunk.ndim == 2:
            # [n, U] values: a unit fires on whole samples. One boolean [n, U] array per chunk
            # (none for boolean acts); on a (1, 1) grid the broadcast below is a view, so the
            # kernel packs it without another copy.
            fired = chunk if is_bool else _fired(chunk, np.asarray(thresholds, np.float64), ids)
            grid_masks = np.broadcast_to(fired[:, :, None, None], (s1 - s0, len(ids), H, W))
            parts.append(_core.unit_masks_from_bool(
                np.ascontiguousarray(grid_masks).view(np.uint8), s0))
            del fired, grid_masks
            continue
        if not is_bool:
            for r0 in range(0, chunk.shape[0], _ROW_STEP):
                _check_finite(chunk[r0:r0 + _ROW_STEP], ids)
        if is_bool:
            parts.append(_core.unit_masks_from_bool(np.ascontiguousarray(chunk).view(np.uint8), s0))
        else:
            # float64 maps are resized in double precision (a float32 image would round them,
            # e.g. 1 + 1e-9 to 1, 1e300 to inf); other floats as Pillow's float32 image.
            dt = np.float64 if chunk.dtype == np.float64 else np.float32
            parts.append(_core.unit_masks_from_maps(np.ascontiguousarray(chunk, dt), s0, H, W,
                                                    np.ascontiguousarray(thresholds, np.float64)))
    return MaskSet.from_arrays(parts[0] if len(parts) == 1 else _core.merge_mask_parts(parts))
