"""``describe(path)``: a human-readable summary of any compexp HDF5 file (``compexp info FILE``).

Reads only metadata (and concept names), never the large datasets: activations files get
their shape, dtype, chunking and provenance, concepts files their grid, concepts per category,
sources and index, and results, images and unknown HDF5 files a listing of every group,
dataset and attribute.

Examples:
    >>> import os, tempfile
    >>> import numpy as np
    >>> from compexp_core.io import save_images
    >>> p = os.path.join(tempfile.mkdtemp(), "images.h5")
    >>> save_images(p, np.zeros((2, 4, 4, 3), np.uint8))
    >>> print(describe(p).split("\\n", 1)[1])  # doctest: +NORMALIZE_WHITESPACE
    kind: images (compexp-images)
    @format: compexp-images
    @version: 1
      images: shape (2, 4, 4, 3), dtype uint8, chunks (2, 4, 4, 3), 0.00 MB
"""
from __future__ import annotations

import os
from collections import Counter
from typing import Any

import h5py
import numpy as np

from ..engine.concepts import BLOCK_WORDS
from . import _h5
from ._h5 import (ACTIVATIONS_FORMAT, CONCEPTS_FORMAT, IMAGES_FORMAT, RESULTS_FORMAT,
                  PathLike)
from .activations import validated_acts

__all__ = ["describe"]

def _mb(nbytes: int) -> str:
    return f"{nbytes / 1e6:.2f} MB"


def _short(value: Any, limit: int = 120) -> str:
    if isinstance(value, np.ndarray) and value.size > 8:
        return f"array shape {value.shape} dtype {value.dtype}"
    if isinstance(value, np.generic) and not isinstance(value, np.bytes_):
        value = value.item()               # 1, not np.int64(1)
    s = _h5.attr_str(value) if isinstance(value, (bytes, np.bytes_, str)) else repr(value)
    if isinstance(value, np.ndarray):
        s = np.array2string(value, threshold=8)
    return s if len(s) <= limit else s[:limit - 3] + "..."


def _ds_line(ds: h5py.Dataset) -> str:
    string = h5py.check_string_dtype(ds.dtype)
    dtype = f"{string.encoding} string" if string is not None else str(ds.dtype)
    parts = [f"shape {ds.shape}", f"dtype {dtype}"]
    if ds.chunks:
        parts.append(f"chunks {ds.chunks}")
    size = _mb(ds.size * ds.dtype.itemsize)
    if ds.compression:
        parts.append(f"compression {ds.compression}")
        size += f" ({_mb(ds.id.get_storage_size())} stored)"
    parts.append(size)
    return ", ".join(parts)


def _preview(values: list[str], limit: int = 8) -> str:
    shown = ", ".join(repr(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def _describe_activations(f: h5py.File, path: str) -> list[str]:
    ds = validated_acts(f, path)
    lines = [f"kind: activations ({ACTIVATIONS_FORMAT}"
             + (", no format attribute" if _h5.format_of(f) is None else "") + ")"]
    n, u = ds.shape[:2]
    if ds.ndim == 4:
        lines.append(f"acts: {n} samples x {u} units x {ds.shape[2]}x{ds.shape[3]} maps")
    else:
        lines.append(f"acts: {n} samples x {u} units (one value per sample)")
    lines.append(f"  {_ds_line(ds)}")
    for key in ("model", "layer", "dataset"):
        if key in f.attrs:
            lines.append(f"{key}: {_h5.attr_str(f.attrs[key])}")
    un = _h5.get(f, "unit_names", path, h5py.Dataset, required=False)
    if un is not None:
        lines.append(f"unit_names: {_preview(_h5.read_strings(un, path, 'unit_names'))}")
    return lines


def _describe_concepts(f: h5py.File, path: str) -> list[str]:
    _h5.check_format(f, path, CONCEPTS_FORMAT)
    n = _h5.attr_int(f, "n_samples", path)
    h, w = _h5.attr_int(f, "height", path), _h5.attr_int(f, "width", path)
    names = _h5.read_strings(_h5.get(f, "concept_names", path, h5py.Dataset), path,
                             "concept_names")
    cat_ds = _h5.get(f, "concept_categories", path, h5py.Dataset, required=False)
    cats = [""] * len(names) if cat_ds is None \
        else _h5.read_strings(cat_ds, path, "concept_categories")
    lines = [f"kind: concepts ({CONCEPTS_FORMAT})",
             f"samples: N = {n}, grid {h}x{w} ({n * h * w} cells)",
             f"concepts: K = {len(names)}"]
    counts = Counter(cats)
    for cat in sorted(counts, key=lambda c: (c == "", c)):
        lines.append(f"  {cat or '(no category)'}: {counts[cat]}")
    lines.append(f"  names: {_preview(names)}")
    sources = []
    lm = f.get("label_maps")
    if isinstance(lm, h5py.Group):
        for cat in lm:
            maps = lm[cat].get("maps") if isinstance(lm[cat], h5py.Group) else None
            col = lm[cat].get("concept_of_label") if isinstance(lm[cat], h5py.Group) else None
            desc = _ds_line(maps) if isinstance(maps, h5py.Dataset) else "MISSING 'maps'"
            if isinstance(col, h5py.Dataset) and col.ndim == 1:
                nl = f", {col.shape[0]} label values"
            else:
                nl = ", MISSING 'concept_of_label'"
            sources.append(f"  label_maps/{cat}/maps: {desc}{nl}")
    for group, dsname in (("sample_labels", "present"), ("dense", "masks")):
        g = f.get(group)
        if isinstance(g, h5py.Group):
            ds = g.get(dsname)
            desc = _ds_line(ds) if isinstance(ds, h5py.Dataset) else f"MISSING '{dsname}'"
            sources.append(f"  {group}/{dsname}: {desc}")
    lines.append("sources:" + ("" if sources else " none"))
    lines.extend(sources)
    idx = f.get("index")
    if isinstance(idx, h5py.Group):
        size = sum(ds.size * ds.dtype.itemsize for ds in idx.values()
                   if isinstance(ds, h5py.Dataset))
        def length(name: str) -> str:
            ds = idx.get(name)
            return str(ds.shape[0]) if isinstance(ds, h5py.Dataset) and ds.ndim >= 1 else "?"
        bp = idx.get("block_ptr")
        nb = bp.shape[0] - 1 if isinstance(bp, h5py.Dataset) and bp.ndim == 1 else "?"
        lines.append(f"index: {_mb(size)}, {nb} blocks of {64 * BLOCK_WORDS} cells, "
                     f"{length('entry_concept')} partial + {length('full_concept')} full "
                     f"block entries (used when loading)")
    else:
        lines.append("index: none (built from the sources when loading)")
    return lines


def _describe_generic(f: h5py.File, kind: str) -> list[str]:
    lines = [f"kind: {kind}"]
    for key, value in f.attrs.items():
        lines.append(f"@{key}: {_short(value)}")

    def visit(name: str, obj: Any) -> None:
        depth = name.count("/") + 1
        pad = "  " * depth
        if isinstance(obj, h5py.Dataset):
            lines.append(f"{pad}{name}: {_ds_line(obj)}")
        else:
            lines.append(f"{pad}{name}/")
        for key, value in obj.attrs.items():
            lines.append(f"{pad}  @{key}: {_short(value)}")

    f.visititems(visit)
    return lines


def describe(path: PathLike) -> str:
    """A human-readable, multi-line description of an activations, concepts or results file.

    Reads only metadata (and the concept names), never the large datasets. Activations files:
    shape, dtype, chunking, provenance. Concepts files: N, grid, K, concepts per category, the
    sources present with their shapes and dtypes, the index size. Results files (and any other
    HDF5 file): every group, dataset and attribute.

    Args:
        path: an HDF5 file.

    Returns:
        The description, one fact per line, starting with the path and the file size.

    Raises:
        FileNotFoundError, ValueError: as :func:`~compexp_core.io.load_concepts` and
            :func:`~compexp_core.io.open_activations`
            (for activations and concepts files, missing required parts are errors).

    Examples:
        >>> import os, tempfile
        >>> import numpy as np
        >>> from compexp_core.io import save_activations
        >>> p = os.path.join(tempfile.mkdtemp(), "acts.h5")
        >>> save_activations(p, np.zeros((5, 3), np.float32), model="resnet18", layer="layer4")
        >>> print(describe(p).split("\\n", 1)[1])  # doctest: +NORMALIZE_WHITESPACE
        kind: activations (compexp-activations)
        acts: 5 samples x 3 units (one value per sample)
          shape (5, 3), dtype float32, chunks (5, 3), 0.00 MB
        model: resnet18
        layer: layer4
    """
    p = os.fspath(path)
    with _h5.reading(p), _h5.open_file(p) as f:
        fmt = _h5.format_of(f)
        if fmt == ACTIVATIONS_FORMAT or (fmt is None and isinstance(f.get("acts"), h5py.Dataset)):
            body = _describe_activations(f, p)
        elif fmt == CONCEPTS_FORMAT:
            body = _describe_concepts(f, p)
        elif fmt in (RESULTS_FORMAT, IMAGES_FORMAT):
            kind = "results" if fmt == RESULTS_FORMAT else "images"
            body = _describe_generic(f, f"{kind} ({fmt})")
        else:
            found = "no format attribute" if fmt is None else f"format = '{fmt}'"
            body = _describe_generic(f, f"unknown HDF5 file ({found})")
    return "\n".join([f"{p} ({_mb(os.path.getsize(p))})"] + body)
