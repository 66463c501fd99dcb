"""Images files (``format = "compexp-images"``, ``docs/FORMAT.md`` §4).

The inputs a model is run on, for ``compexp extract`` and ``compexp report``: uint8 RGB images
``[N, H, W, 3]`` chunked along samples, optional class ``labels`` with their ``label_names``,
optional image ``names`` and a ``dataset`` provenance attribute.

Examples:
    >>> import os, tempfile
    >>> import numpy as np
    >>> p = os.path.join(tempfile.mkdtemp(), "images.h5")
    >>> save_images(p, np.zeros((3, 4, 4, 3), np.uint8), names=["a.jpg", "b.jpg", "c.jpg"])
    >>> ds = open_images(p); ds.shape
    (3, 4, 4, 3)
    >>> ds.file.close()
"""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import h5py
import numpy as np

from ..engine.concepts import check_strings
from . import _h5
from ._h5 import IMAGES_FORMAT, PathLike

__all__ = ["save_images", "open_images", "read_images_metadata"]


def save_images(path: PathLike, images: Any, *, labels: Optional[Any] = None,
                label_names: Optional[Sequence[str]] = None,
                names: Optional[Sequence[str]] = None, dataset: Optional[str] = None,
                chunk_samples: Optional[int] = None) -> None:
    """Write an images file: the inputs a model is run on, for extraction and reports.

    Args:
        path: the file to write (replaced if it exists).
        images: uint8 ``[N, H, W, 3]`` RGB images (NumPy array, memmap or h5py dataset; written
            a chunk at a time).
        labels: optional int ``[N]`` class labels (for accuracy analyses).
        label_names: optional names of the label values 0..max(labels).
        names: optional N image names (file names, say).
        dataset: optional provenance string, stored as root attribute ``dataset``.
        chunk_samples: images per HDF5 chunk (default: about 2 MiB per chunk).

    Raises:
        ValueError: ``images`` is not ``[N, H, W, 3]`` with N >= 1; ``labels`` or ``names`` has
            the wrong length; a label is negative or has no name.
        TypeError: ``images`` is not uint8; ``labels`` is not integer.

    Examples:
        >>> import os, tempfile
        >>> import numpy as np
        >>> p = os.path.join(tempfile.mkdtemp(), "images.h5")
        >>> save_images(p, np.zeros((2, 8, 8, 3), np.uint8), labels=[0, 1],
        ...             label_names=["cat", "dog"])
        >>> read_images_metadata(p)["label_names"]
        ['cat', 'dog']
    """
    images = _h5.array_like(images, "images")
    if images.ndim != 4 or images.shape[3] != 3 or any(int(s) < 1 for s in images.shape):
        raise ValueError(f"images must be uint8 [N, H, W, 3] RGB with N, H, W >= 1, got shape "
                         f"{tuple(images.shape)}")
    if np.dtype(images.dtype) != np.uint8:
        raise TypeError(f"images must be uint8 (0..255 RGB), got dtype {images.dtype}")
    shape = tuple(int(s) for s in images.shape)
    n = shape[0]
    if labels is not None:
        labels = np.asarray(labels)
        if labels.dtype == bool or labels.dtype.kind not in "iu":
            raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
        if labels.shape != (n,):
            raise ValueError(f"labels has shape {labels.shape}, expected ({n},): one per image")
        if labels.size and int(labels.min()) < 0:
            raise ValueError(f"labels must be >= 0, found {int(labels.min())}")
    if label_names is not None:
        label_names = [_h5.check_text(t, "label_names")
                       for t in check_strings(label_names, len(label_names), "label_names")]
        if labels is not None and labels.size and int(labels.max()) >= len(label_names):
            raise ValueError(f"labels holds {int(labels.max())} but label_names names only "
                             f"{len(label_names)} labels")
    if names is not None:
        names = [_h5.check_text(t, "names") for t in check_strings(names, n, "names")]
    dataset = _h5.check_str(dataset, "dataset")
    row_bytes = int(np.prod(shape[1:]))
    chunk = _h5.chunk_rows(n, row_bytes, chunk_samples)
    step = _h5.io_rows(n, row_bytes, chunk)
    with _h5.writing(path, IMAGES_FORMAT) as f:
        if dataset is not None:
            _h5.set_text(f.attrs, "dataset", dataset)
        ds = f.create_dataset("images", shape=shape, dtype=np.uint8, chunks=(chunk,) + shape[1:])
        for s in range(0, n, step):
            ds[s:s + step] = np.asarray(images[s:s + step])
            _h5.check_io(f)                   # a full disk stops the write here
        if labels is not None:
            _h5.write_array(f, "labels", labels.astype(np.int64))
        for key, values in (("label_names", label_names), ("names", names)):
            if values is not None:
                _h5.write_strings(f, key, values)


def _validated_images(f: h5py.File, path: str) -> h5py.Dataset:
    _h5.check_format(f, path, IMAGES_FORMAT)
    ds = _h5.get(f, "images", path, h5py.Dataset)
    if ds.ndim != 4 or ds.shape[3] != 3 or any(s < 1 for s in ds.shape):
        raise ValueError(f"'{path}': dataset 'images' must be [N, H, W, 3] with N, H, W >= 1, "
                         f"found shape {ds.shape}")
    if np.dtype(ds.dtype) != np.uint8:
        raise ValueError(f"'{path}': dataset 'images' must be uint8, found dtype {ds.dtype}")
    for key in ("labels", "names"):
        extra = _h5.get(f, key, path, h5py.Dataset, required=False)
        if extra is not None and extra.shape != (ds.shape[0],):
            raise ValueError(f"'{path}': dataset '{key}' has shape {extra.shape}, expected "
                             f"({ds.shape[0]},): one per image")
    return ds


def open_images(path: PathLike) -> h5py.Dataset:
    """Open an images file and return its uint8 ``images`` dataset ``[N, H, W, 3]``, unread.

    The dataset keeps its file open (``ds.file``) while referenced, like
    :func:`~compexp_core.io.open_activations`.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: not a readable HDF5 file, not a ``compexp-images`` file, or a malformed one.
    """
    return _h5.open_dataset(path, _validated_images)


def read_images_metadata(path: PathLike) -> dict:
    """Shape, labels and names of an images file, without reading the pixels.

    Returns:
        A dict with keys ``shape`` (tuple), ``labels`` (int64 array or None), ``label_names``,
        ``names`` (lists of strings or None) and ``dataset`` (string or None).
    """
    p = os.fspath(path)
    ds = open_images(p)
    f = ds.file
    try:
        with _h5.reading(p):
            meta: dict = {"shape": tuple(ds.shape),
                          "dataset": _h5.attr_str(f.attrs["dataset"]) if "dataset" in f.attrs
                          else None}
            labels = _h5.get(f, "labels", p, h5py.Dataset, required=False)
            if labels is not None and np.dtype(labels.dtype).kind not in "iu":
                raise ValueError(f"'{p}': dataset 'labels' must hold integers, found dtype "
                                 f"{labels.dtype}")
            meta["labels"] = (None if labels is None
                              else _h5.read_array(labels, p, "labels").astype(np.int64))
            for key in ("label_names", "names"):
                d = _h5.get(f, key, p, h5py.Dataset, required=False)
                meta[key] = None if d is None else _h5.read_strings(d, p, key)
            return meta
    finally:
        _h5.close_reader(f)
