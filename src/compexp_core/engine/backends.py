"""Backends: the compiled engines that count and materialise, behind one protocol.

A search picks its backend once, from a ``device`` string that means the same everywhere in
the package (search, extraction, analyses):

* ``"cpu"``: the C++ kernels of ``compexp_core._core`` (always built);
* ``"cuda"`` / ``"cuda:N"``: the CUDA kernels of ``compexp_core._cuda`` on GPU 0 / GPU N;
* ``"auto"``: the best verified device. For the search that is the CPU until the CUDA kernels
  have passed their tests on a real GPU (see :data:`AUTO_USES_GPU`).

Past that choice no code branches on the device: the driver calls the :class:`Backend`
methods, and data a backend keeps on its device (``_cuda.DeviceMasks`` handles) is only ever
copied back by :meth:`Backend.to_host`. Both backends return identical integer counts.

The CUDA module is imported only when a CUDA backend is asked for, so importing the package
never loads CUDA libraries. Hardware is probed once and cached.

Examples:
    >>> parse_device("cuda:1"), parse_device("cpu"), parse_device("auto")
    (('cuda', 1), ('cpu', None), ('auto', None))
    >>> get_backend("cpu").name
    'cpu'
"""
from __future__ import annotations

import functools
import importlib
import re
import weakref
from dataclasses import dataclass
from typing import Optional, Protocol, Sequence, Union

import numpy as np

from .. import _core
from .concepts import ConceptSet, DeviceConceptMasks, DeviceConceptSet
from .masks import MaskSet
from .units import DeviceActivations, DeviceArray, compute_thresholds, unit_masks

__all__ = ["Backend", "CpuBackend", "CudaBackend", "ExtensionWork", "get_backend", "parse_device",
           "cuda_available", "cuda_compiled", "num_gpus", "backend_info", "AUTO_USES_GPU"]

SIMDS = ("auto", "scalar", "popcnt", "avx512")


@functools.lru_cache(maxsize=None)
def _cuda_module():
    try:
        return importlib.import_module("compexp_core._cuda")
    except ImportError:
        return None


def cuda_compiled() -> bool:
    """Whether this build contains the CUDA backend."""
    return _cuda_module() is not None


@functools.lru_cache(maxsize=None)
def num_gpus() -> int:
    """Number of CUDA devices the CUDA backend can use (0 without a CUDA build)."""
    mod = _cuda_module()
    if mod is None:
        return 0
    try:
        return int(mod.device_count())
    except Exception:  # a driver problem means no usable GPU, not a crash
        return 0


def cuda_available() -> bool:
    """Whether ``device="cuda"`` can run: a CUDA build and at least one GPU."""
    return num_gpus() > 0


def backend_info() -> dict:
    """What this installation can run: CPU kernel flavour, threads, CUDA build and GPUs."""
    return {"cpu_simd": _core.best_simd(), "cpu_threads": _core.default_threads(),
            "cuda_compiled": cuda_compiled(), "num_gpus": num_gpus()}


# The CUDA kernels compile and pass their tests under the CPU emulator, but have not yet run
# on a GPU. Until the GPU tests and compute-sanitizer have passed on one, "auto" stays on the
# CPU and the GPU is used only when asked for by name.
AUTO_USES_GPU = False


def parse_device(device) -> tuple[str, Optional[int]]:
    """Split a device string into ``(kind, index)``: ``("cpu", None)``, ``("cuda", N)`` (N = 0
    for plain ``"cuda"``) or ``("auto", None)``.

    Raises:
        TypeError / ValueError: anything else, naming the accepted forms.
    """
    if not isinstance(device, str):
        raise TypeError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}")
    if device in ("cpu", "auto"):
        return device, None
    m = re.fullmatch(r"cuda(?::(\d+))?", device)
    if m is None:
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}")
    return "cuda", int(m.group(1) or 0)


@dataclass(frozen=True)
class ExtensionWork:
    """What one extension-count call walked: formula blocks, partial concept blocks read
    (each ``BLOCK_WORDS`` words plus a concept id) and full concept blocks counted."""
    formula_blocks: int = 0
    partial_entries: int = 0
    full_entries: int = 0


class Backend(Protocol):
    """What the search driver needs from an engine. Masks a backend returns live where it
    keeps them (``Resident``): host :class:`MaskSet` on the CPU, device handles on a GPU."""

    name: str

    def prepare(self, concepts) -> object:
        """The concept index as this backend uses it (uploaded once per concept set)."""

    def dense_concepts(self, masks: DeviceConceptMasks, names: Sequence[str]):
        """The concept set of dense masks in GPU memory, with K checked ``names``: built on
        this backend's device (a :class:`~.concepts.DeviceConceptSet`) or on the host (a
        :class:`~.concepts.ConceptSet`, the masks copied there first)."""

    def thresholds(self, index, acts, quantile: float, ids: np.ndarray, progress=None) -> np.ndarray:
        """float64 thresholds of units ``ids`` (see
        :func:`compexp_core.engine.units.compute_thresholds`)."""

    def unit_masks(self, index, acts, ids: np.ndarray, grid: tuple[int, int],
                   thresholds: Optional[np.ndarray]) -> tuple[object, np.ndarray]:
        """Unit masks of units ``ids`` (sorted, unique) on this backend, and their sizes
        ``|U|`` (int64); see :func:`compexp_core.engine.units.unit_masks`."""

    def primitive_counts(self, index, units) -> np.ndarray:
        """``|U_u & C_j|``: int64 ``[n_units, K]``."""

    def extension_counts(self, index, formulas, unit_of: np.ndarray, units
                         ) -> tuple[np.ndarray, np.ndarray, ExtensionWork]:
        """``f = |F_i & C_j|``, ``g = |U_unit_of[i] & F_i & C_j|`` (int64 ``[n_formulas, K]``)
        and the work done."""

    def materialize(self, index, formulas, src: np.ndarray, op: np.ndarray,
                    concept: np.ndarray) -> object:
        """Masks ``op[i](F_src[i], C_concept[i])``, kept on this backend."""

    def to_host(self, index, masks) -> MaskSet:
        """A host copy of masks this backend returned (the only copy back)."""


def _simd(simd: str) -> str:
    if simd not in SIMDS:
        raise ValueError(f"simd must be one of {list(SIMDS)}, got {simd!r}")
    return simd


def _index_args(concepts) -> tuple:
    a = concepts.arrays
    return (concepts.n_cells, concepts.n_concepts, a.block_ptr, a.entry_concept, a.entry_words,
            a.full_ptr, a.full_concept)


def _work(counters) -> ExtensionWork:
    return ExtensionWork(*(int(c) for c in counters))


class CpuBackend:
    """The C++ kernels (``compexp_core._core``). ``simd`` picks the popcount flavour
    (``"auto"``: the fastest this CPU has; ``"scalar"`` is the portable oracle)."""

    def __init__(self, simd: str = "auto") -> None:
        self.simd = _simd(simd)
        self.name = "cpu"

    def __repr__(self) -> str:
        return f"CpuBackend(simd={self.simd!r})"

    def prepare(self, concepts):
        # A set built on a GPU is copied back once (DeviceConceptSet.to_host caches it).
        return concepts.to_host().host_index

    def dense_concepts(self, masks: DeviceConceptMasks, names) -> ConceptSet:
        # The CPU counts on the host: GPU masks are copied there, the index built by the CPU.
        return ConceptSet.from_dense(masks.host_array(), names=names)

    def thresholds(self, index, acts, quantile, ids, progress=None):
        return compute_thresholds(acts, quantile, ids, progress=progress)

    def unit_masks(self, index, acts, ids, grid, thresholds):
        masks = unit_masks(acts, ids, grid, thresholds)
        return masks, masks.popcounts()

    def primitive_counts(self, index, units: MaskSet) -> np.ndarray:
        return index.primitive_counts(units.arrays(), self.simd)

    def extension_counts(self, index, formulas: MaskSet, unit_of, units: MaskSet):
        f, g, work = index.extension_counts(formulas.arrays(), np.ascontiguousarray(unit_of, np.int64),
                                            units.arrays(), self.simd)
        return f, g, _work(work)

    def materialize(self, index, formulas: MaskSet, src, op, concept) -> MaskSet:
        return MaskSet.from_arrays(index.materialize(
            formulas.arrays(), np.ascontiguousarray(src, np.int64), np.ascontiguousarray(op, np.int32),
            np.ascontiguousarray(concept, np.int32)))

    def to_host(self, index, masks: MaskSet) -> MaskSet:
        return masks


class CudaBackend:
    """The CUDA kernels (``compexp_core._cuda``) on one GPU. The concept index of each concept
    set is uploaded on first use and kept while the set lives (dense masks already on the GPU
    are indexed there by :meth:`dense_concepts`: no upload); unit masks of activations
    already on the GPU (:class:`~.units.DeviceActivations`) are computed there, thresholds
    included, those of host activations on the host and uploaded once per batch; formula
    masks stay on the GPU between steps."""

    def __init__(self, device: int = 0, requested: Optional[str] = None) -> None:
        asked = requested or f"cuda:{device}"       # the device string as the caller wrote it
        mod = _cuda_module()
        if mod is None:
            raise RuntimeError(
                f"device={asked!r} was requested but this build of compexp_core has no CUDA backend. "
                "Reinstall on a machine with the CUDA toolkit (nvcc on PATH) so that CMake builds "
                "compexp_core._cuda, or use device='cpu'.")
        n = num_gpus()
        if n == 0:
            raise RuntimeError(f"device={asked!r} was requested but no CUDA GPU is visible "
                               f"(check CUDA_VISIBLE_DEVICES and the driver), or use device='cpu'.")
        if device >= n:
            raise RuntimeError(f"device={asked!r} was requested but only {n} CUDA GPU(s) are "
                               f"visible (cuda:0 .. cuda:{n - 1}), or use device='cpu'.")
        self._mod = mod
        self.device = device
        self.name = f"cuda:{device}"
        self._indexes: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return f"CudaBackend(device={self.device})"

    def prepare(self, concepts):
        if isinstance(concepts, DeviceConceptSet):
            self._check_device(concepts, "the concept set (built on a GPU)")
            return concepts.device_index
        index = self._indexes.get(concepts)
        if index is None:
            index = self._mod.DeviceConceptIndex(*_index_args(concepts), device=self.device)
            self._indexes[concepts] = index
        return index

    def _resident(self, index, masks):
        return index.upload(masks.arrays()) if isinstance(masks, MaskSet) else masks

    def _check_device(self, data: Union[DeviceArray, DeviceConceptSet], what: str = "acts") -> None:
        # The array's own word for its device (the emulator cannot ask the driver about a
        # pointer): the kernels must not read another GPU's memory.
        if data.device is not None and data.device != self.device:
            raise ValueError(f"{what} lives on cuda:{data.device} but the search runs on {self.name}; "
                             f"pass device='cuda:{data.device}' or move {what} to {self.name}")

    def dense_concepts(self, masks: DeviceConceptMasks, names) -> DeviceConceptSet:
        # Built on this GPU from the masks in place: they never travel through host memory.
        self._check_device(masks, "masks")
        index, sizes = self._mod.DeviceConceptIndex.from_dense(
            masks.ptr, masks.dtype.name, masks.shape, masks.strides, device=self.device,
            stream=masks.stream)
        return DeviceConceptSet(masks.shape[0], masks.grid, names, sizes, index, self.device)

    def thresholds(self, index, acts, quantile, ids, progress=None):
        if not isinstance(acts, DeviceActivations):
            return compute_thresholds(acts, quantile, ids, progress=progress)
        self._check_device(acts)
        t = index.unit_thresholds(acts.ptr, acts.dtype.name, acts.shape, acts.strides,
                                  np.ascontiguousarray(ids, np.int64), 1.0 - quantile,
                                  stream=acts.stream)
        if progress is not None:
            progress(len(ids))
        return t

    def unit_masks(self, index, acts, ids, grid, thresholds):
        if isinstance(acts, DeviceActivations):
            # Thresholds, resize and packing on the GPU: the values never leave it.
            self._check_device(acts)
            return index.unit_masks(acts.ptr, acts.dtype.name, acts.shape, acts.strides,
                                    np.ascontiguousarray(ids, np.int64), int(grid[0]), int(grid[1]),
                                    np.ascontiguousarray(thresholds, np.float64), stream=acts.stream)
        # Host activations: masks computed on the host, uploaded once.
        masks = unit_masks(acts, ids, grid, thresholds)
        return index.upload(masks.arrays()), masks.popcounts()

    def primitive_counts(self, index, units) -> np.ndarray:
        return index.primitive_counts(self._resident(index, units))

    def extension_counts(self, index, formulas, unit_of, units):
        f, g, work = index.extension_counts(self._resident(index, formulas),
                                            np.ascontiguousarray(unit_of, np.int64),
                                            self._resident(index, units))
        return f, g, _work(work)

    def materialize(self, index, formulas, src, op, concept):
        return index.materialize(self._resident(index, formulas), np.ascontiguousarray(src, np.int64),
                                 np.ascontiguousarray(op, np.int32), np.ascontiguousarray(concept, np.int32),
                                 on_device=True)

    def to_host(self, index, masks) -> MaskSet:
        if isinstance(masks, MaskSet):
            return masks
        return MaskSet.from_arrays(index.download(masks))


_BACKENDS: dict = {}


def get_backend(device: str = "auto", *, simd: str = "auto") -> Union[CpuBackend, CudaBackend]:
    """The backend that runs on ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"``).

    Backends are cached per device, so a concept set is uploaded to a GPU once however many
    searches use it.

    Args:
        device: where to run; ``"auto"`` is the CPU until the CUDA path is verified on a GPU.
        simd: CPU popcount flavour (``"auto"``, ``"scalar"``, ``"popcnt"``, ``"avx512"``).

    Raises:
        TypeError / ValueError: a device string of another form, an unknown ``simd``.
        RuntimeError: a CUDA device without a CUDA build or without that GPU, saying how to fix it.
    """
    kind, index = parse_device(device)
    if kind == "auto":
        kind, index = ("cuda", 0) if AUTO_USES_GPU and cuda_available() else ("cpu", None)
    key = (kind, index, _simd(simd) if kind == "cpu" else None)
    backend = _BACKENDS.get(key)
    if backend is None:
        backend = CpuBackend(simd) if kind == "cpu" else CudaBackend(index, device)
        _BACKENDS[key] = backend
    return backend
