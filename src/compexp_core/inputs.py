"""What users pass, turned into what the engine takes: the thin layer above the engine.

The engine (:mod:`compexp_core.engine`) works on arrays, h5py datasets and concept sets and
never opens a file. The public functions that also accept file paths (``search_formulas``, the
analyses, the report) turn them into engine inputs here, with :mod:`compexp_core.io`.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

from .engine.concepts import ConceptSet, DeviceConceptMasks, DeviceConceptSet, check_names
from .engine.units import as_activations, is_cuda_array, is_tensor, tensor_to_numpy

__all__ = ["activations_input", "concepts_input"]


def _is_path(x) -> bool:
    return isinstance(x, (str, os.PathLike))


def activations_input(acts, on_device: bool = False):
    """Activations as the engine reads them: a path is opened as an activations HDF5 file
    (read lazily, in chunks); arrays, h5py datasets and torch tensors pass through
    :func:`compexp_core.engine.units.as_activations` (``on_device``: a CUDA search, where
    float GPU arrays stay on the GPU)."""
    if _is_path(acts):
        from .io import open_activations

        return open_activations(acts)
    from .io._h5 import check_open

    return as_activations(check_open(acts, "acts"), on_device=on_device)


def concepts_input(masks, names: Optional[Sequence[str]] = None, backend=None):
    """A concept set from a concept set, a concepts HDF5 path, or bool masks
    ``[N, K, H, W]`` / ``[N, K]`` (with optional ``names``).

    Masks in GPU memory (``__cuda_array_interface__``: torch CUDA tensors, CuPy; bool, or
    uint8 holding 0 / 1) go to ``backend.dense_concepts`` when a ``backend`` is given: a CUDA
    backend builds the index on its GPU without copying the masks to the host (a
    :class:`~compexp_core.engine.concepts.DeviceConceptSet`), the CPU backend copies them to
    the host first. Without a backend (host consumers: analyses, the report) they are copied
    to the host, and a set built on a GPU comes back with ``to_host()``.

    Returns:
        A :class:`ConceptSet`, or with a CUDA ``backend`` possibly a ``DeviceConceptSet``.

    Raises:
        TypeError / ValueError: masks of another kind or shape, names that do not fit.
    """
    if isinstance(masks, (ConceptSet, DeviceConceptSet)):
        if names is not None and tuple(names) != masks.names:
            raise ValueError("names differ from the concept set's own names; pass names=None "
                             "with a ConceptSet")
        return masks if backend is not None else masks.to_host()
    if _is_path(masks):
        from .io import load_concepts

        cs = load_concepts(masks)
        if names is not None and tuple(names) != cs.names:
            raise ValueError(f"names differ from the names stored in {masks}; pass names=None")
        return cs
    if backend is not None and is_cuda_array(masks):
        on_gpu = DeviceConceptMasks(masks, "masks")          # checks dtype and shape
        return backend.dense_concepts(on_gpu, check_names(names, on_gpu.shape[1]))
    if is_tensor(masks):                                     # a torch tensor, without torch
        if str(masks.dtype) != "torch.bool":
            raise TypeError(f"masks must be a ConceptSet, a concepts HDF5 path, or a bool array "
                            f"[N, K, H, W] / [N, K]; got a torch tensor of dtype {masks.dtype}")
        masks = tensor_to_numpy(masks, "masks")
    elif is_cuda_array(masks):
        # Without a backend (host consumers) GPU masks are copied to the host.
        masks = DeviceConceptMasks(masks, "masks").host_array()
    masks = np.asarray(masks)
    if masks.dtype != bool:
        raise TypeError(f"masks must be a ConceptSet, a concepts HDF5 path, or a bool array "
                        f"[N, K, H, W] / [N, K]; got an array of dtype {masks.dtype}")
    if masks.ndim not in (2, 4):
        raise ValueError(f"masks must be bool [N, K, H, W] or [N, K], got shape {masks.shape}")
    if masks.shape[1] == 0:
        raise ValueError("masks has zero concepts (K = 0)")
    if masks.shape[0] == 0:
        raise ValueError("masks has zero samples (N = 0)")
    return ConceptSet.from_dense(masks, names=check_names(names, masks.shape[1]))
