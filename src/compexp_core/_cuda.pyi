"""Type stub of the compiled CUDA backend (python/cuda_bindings.cpp). Private: use compexp_core
with ``device="cuda"``.

Same conventions as ``_core.ConceptIndex``: a mask set is the tuple ``(ptr int64 [n+1],
block int64 [nnz], words uint64 [nnz, 8])``; counts are bit-identical to the CPU's. Mask
sets may also stay on the GPU as :class:`DeviceMasks` handles, which every kernel takes in
place of a tuple. Device data never comes back implicitly: only ``download`` copies masks to
the host. CUDA failures raise RuntimeError with CUDA's text; bad arguments ValueError.
"""
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

from ._core import MaskSet, Work

def device_count() -> int:
    """Usable CUDA devices (0 without a driver or a device; never raises)."""
def device_description(device: int = 0) -> str:
    """Name, compute capability and memory of a device."""

class DeviceMasks:
    """A mask set held on one GPU, made by one DeviceConceptIndex (upload, or materialize with
    on_device=True). Not a tuple: DeviceConceptIndex.download copies it back."""
    @property
    def n_masks(self) -> int: ...
    @property
    def nnz(self) -> int:
        """Stored blocks over all masks."""
    @property
    def nbytes(self) -> int:
        """Device memory held, in bytes."""
    @property
    def device(self) -> int: ...

Masks = Union[MaskSet, DeviceMasks]

class DeviceConceptIndex:
    """All K concept masks uploaded once to ``device``; checked as ``_core.ConceptIndex``.

    Raises:
        RuntimeError: no CUDA device is visible.
        ValueError: a malformed index or a device index out of range.
    """
    def __init__(self, n_cells: int, n_concepts: int, block_ptr: npt.ArrayLike, entry_concept: npt.ArrayLike,
                 entry_words: npt.ArrayLike, full_ptr: npt.ArrayLike, full_concept: npt.ArrayLike,
                 device: int = 0) -> None: ...
    @staticmethod
    def from_dense(ptr: int, dtype: str, shape: Sequence[int], strides: Optional[Sequence[int]],
                   device: int = 0, stream: int = 0) -> Tuple["DeviceConceptIndex", npt.NDArray[np.int64]]:
        """(index, sizes): the index built on the GPU from dense masks at device address ptr
        (dtype "bool"/"uint8" holding 0/1, shape [N, K, H, W] or [N, K], strides in bytes or None
        for C order; stream as unit_thresholds'), the same arrays as the CPU builder's, bit for
        bit, and |C_j| (int64 [K]). The masks are never copied to the host. ValueError for bad
        shapes, strides or values."""
    def download_block_major(self) -> Tuple[npt.NDArray[np.int64], npt.NDArray[np.int32], npt.NDArray[np.uint64],
                                            npt.NDArray[np.int64], npt.NDArray[np.int32]]:
        """(block_ptr, entry_concept, entry_words, full_ptr, full_concept) copied to the host."""
    def upload(self, masks: MaskSet) -> DeviceMasks:
        """Copy a mask set to the GPU once (checked like every mask-set argument)."""
    def download(self, masks: DeviceMasks) -> MaskSet:
        """Copy a handle made by this index back to the host."""
    def primitive_counts(self, units: Masks) -> npt.NDArray[np.int64]:
        """|U_u & C_j|: int64 [n_units, K]."""
    def extension_counts(self, formulas: Masks, unit_of: npt.ArrayLike,
                         units: Masks) -> Tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], Work]:
        """(f, g, work) as ``_core.ConceptIndex.extension_counts`` (work counted on the GPU)."""
    def materialize(self, formulas: Masks, src: npt.ArrayLike, op: npt.ArrayLike, concept: npt.ArrayLike,
                    on_device: bool = False) -> Union[MaskSet, DeviceMasks]:
        """Masks op[i](F_src[i], C_concept[i]); a DeviceMasks handle with on_device=True."""
    def time_extension_counts(self, formulas: Masks, unit_of: npt.ArrayLike, units: Masks,
                              repeats: int = 20) -> List[float]:
        """Benchmark: milliseconds of each run of the extension kernel alone (CUDA events)."""
    def copy_bandwidth(self, bytes: int = 1 << 30, repeats: int = 20) -> float:
        """Benchmark: device-to-device copy bandwidth, bytes read + written per second."""
    def unit_thresholds(self, ptr: int, dtype: str, shape: Sequence[int], strides: Optional[Sequence[int]],
                        ids: npt.ArrayLike, q: float, stream: int = 0) -> npt.NDArray[np.float64]:
        """np.quantile(values of unit ids[i] as float64, q) (linear; -0.0 given as +0.0), computed on
        the GPU from maps at device address ptr: dtype "float32"/"float64", shape [N, U, h, w] or
        [N, U], strides in bytes (None: C order); stream: the producer's stream, synchronised
        first (0: none). ValueError naming a unit with NaN or infinity."""
    def unit_masks(self, ptr: int, dtype: str, shape: Sequence[int], strides: Optional[Sequence[int]],
                   ids: npt.ArrayLike, height: int, width: int,
                   threshold: npt.ArrayLike, stream: int = 0) -> Tuple[DeviceMasks, npt.NDArray[np.int64]]:
        """(masks, popcounts): ``_core.unit_masks_from_maps`` of all N samples, bit for bit, computed on
        the GPU from device maps (as unit_thresholds); the masks stay on the GPU."""
    @property
    def device(self) -> int: ...
    @property
    def n_cells(self) -> int: ...
    @property
    def n_blocks(self) -> int: ...
    @property
    def n_concepts(self) -> int: ...
    @property
    def n_entries(self) -> int: ...
    @property
    def n_full(self) -> int: ...
    @property
    def nbytes(self) -> int:
        """Device memory held by the index arrays."""


class _TestDeviceBuffer:
    """Tests only: a device copy (cudaMalloc) of a C-contiguous host array."""
    def __init__(self, array: npt.ArrayLike, device: int = 0) -> None: ...
    @property
    def ptr(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def device(self) -> int: ...
    def read(self) -> bytes: ...
