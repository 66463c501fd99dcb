"""HDF5 input and output: activation files and concept files.

compexp-core reads two kinds of input from HDF5, both documented field by field in
``docs/FORMAT.md``:

* an **activations file** (root attribute ``format = "compexp-activations"``) holding one
  dataset ``acts`` of shape ``[N, U, h, w]`` (feature maps) or ``[N, U]`` (one value per unit
  and sample), float16/32/64 or bool, chunked along samples so that it can be read a batch of
  samples at a time;
* a **concepts file** (``format = "compexp-concepts"``) holding the K concept names and
  categories, and either the *sources* of the concept masks (integer label maps per category,
  sample-level labels, dense boolean masks), or the already built block-sparse *index* of a
  :class:`~compexp_core.ConceptSet`, or both (the index is then used as is).

Large datasets are written and read in chunks of samples, so no function here needs a whole
label-map or activation tensor in memory (except :func:`load_activations`, meant for small
files). Files are written to a temporary file next to the target and renamed into place only
when complete, so a failed write never leaves a half-written file behind.

Errors are reported the same way by every reader:

* a missing file raises :class:`FileNotFoundError` naming the path;
* a file HDF5 cannot open (a text file, a truncated file) raises :class:`ValueError` saying it
  is not a readable HDF5 file;
* a wrong ``format`` attribute, a missing dataset or attribute, or shapes and values that do
  not fit together raise :class:`ValueError` naming the file and the dataset involved.

Examples:
    >>> import os, tempfile
    >>> import numpy as np
    >>> from compexp_core import ConceptSet
    >>> d = tempfile.mkdtemp()
    >>> save_activations(os.path.join(d, "acts.h5"), np.ones((4, 3, 2, 2), np.float32),
    ...                  layer="layer4")
    >>> open_activations(os.path.join(d, "acts.h5")).shape
    (4, 3, 2, 2)
    >>> cs = ConceptSet.from_dense(np.eye(4, dtype=bool)[:, :, None, None], names=list("abcd"))
    >>> save_concepts(os.path.join(d, "concepts.h5"), cs)
    >>> load_concepts(os.path.join(d, "concepts.h5")).names
    ('a', 'b', 'c', 'd')
"""
from __future__ import annotations

import contextlib
import errno
import os
import uuid
from collections import Counter
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import h5py
import numpy as np

from .engine.concepts import BLOCK_WORDS, ConceptSet, ConceptSetBuilder, check_names, check_strings

__all__ = [
    "ACTIVATIONS_FORMAT",
    "CONCEPTS_FORMAT",
    "RESULTS_FORMAT",
    "FORMAT_VERSION",
    "save_activations",
    "open_activations",
    "load_activations",
    "read_activations_metadata",
    "write_concept_sources",
    "save_concepts",
    "load_concepts",
    "describe",
    "IMAGES_FORMAT",
    "save_images",
    "open_images",
    "read_images_metadata",
]

IMAGES_FORMAT = "compexp-images"
ACTIVATIONS_FORMAT = "compexp-activations"
CONCEPTS_FORMAT = "compexp-concepts"
RESULTS_FORMAT = "compexp-results"
FORMAT_VERSION = 1

PathLike = Union[str, "os.PathLike[str]"]

# HDF5 chunks are sized to about this many bytes (along the sample axis).
_CHUNK_TARGET_BYTES = 2 << 20
# Reads and writes move about this many bytes of samples at a time.
_IO_BUDGET_BYTES = 64 << 20

_ACTS_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64), np.dtype(bool))
_STR_DTYPE = h5py.string_dtype("utf-8")
_INDEX_DATASETS = (
    # name, dtype kind(s) accepted, required dtype, ndim
    ("block_ptr", "iu", np.int64, 1),
    ("entry_concept", "iu", np.int32, 1),
    ("entry_words", "iu", np.uint64, 2),
    ("full_ptr", "iu", np.int64, 1),
    ("full_concept", "iu", np.int32, 1),
)


# =============================================================================== helpers: files

def _fspath(path: PathLike) -> str:
    return os.fspath(path)


def _open_read(path: PathLike) -> h5py.File:
    """Open an HDF5 file for reading, turning every failure into a clear exception."""
    p = _fspath(path)
    if not os.path.exists(p):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", p)
    if os.path.isdir(p):
        raise IsADirectoryError(errno.EISDIR, "Is a directory, not an HDF5 file", p)
    try:
        return h5py.File(p, "r")
    except PermissionError:
        raise
    except OSError as e:
        raise ValueError(f"'{p}' is not a readable HDF5 file ({e})") from None


@contextlib.contextmanager
def _reading(path: str) -> Iterator[None]:
    """Report HDF5 read errors (a corrupt or truncated file) as ValueError naming the file."""
    try:
        yield
    except (FileNotFoundError, PermissionError):
        raise
    except UnicodeDecodeError as e:
        raise ValueError(f"'{path}' is not a readable HDF5 file: a string in it is not valid "
                         f"UTF-8 ({e}); it may be corrupt") from e
    except (OSError, RuntimeError, KeyError, TypeError) as e:
        # h5py reports corrupt metadata as OSError, RuntimeError, KeyError or TypeError.
        raise ValueError(f"'{path}' is not a readable HDF5 file: reading it failed "
                         f"({type(e).__name__}: {e}); it may be truncated or corrupt") from e


@contextlib.contextmanager
def _writing(path: PathLike) -> Iterator[h5py.File]:
    """Write an HDF5 file atomically: into a temporary file renamed onto ``path`` on success."""
    p = _fspath(path)
    d, name = os.path.split(os.path.abspath(p))
    tmp = os.path.join(d, f".{name}.{uuid.uuid4().hex[:12]}.tmp")
    f = h5py.File(tmp, "w")
    try:
        yield f
        f.close()
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(Exception):
            f.close()
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _attr_str(value: Any) -> str:
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray) and value.size == 1:
        return _attr_str(value.reshape(-1)[0])
    return str(value)


def _format_of(f: h5py.File) -> Optional[str]:
    if "format" not in f.attrs:
        return None
    return _attr_str(f.attrs["format"])


def _check_format(f: h5py.File, path: str, expected: str, *,
                  lenient_if: Optional[str] = None) -> None:
    """Check the root ``format`` and ``version`` attributes.

    With ``lenient_if``, a file without a ``format`` attribute is accepted when it has that
    dataset (activation files written by other tools)."""
    found = _format_of(f)
    if found is None:
        if lenient_if is not None and isinstance(f.get(lenient_if), h5py.Dataset):
            return
        what = f" and no '{lenient_if}' dataset" if lenient_if else ""
        raise ValueError(f"'{path}' is not a {expected} file: expected root attribute "
                         f"format = '{expected}', found no format attribute{what}")
    if found != expected:
        raise ValueError(f"'{path}' is not a {expected} file: expected root attribute "
                         f"format = '{expected}', found format = '{found}'")
    if "version" in f.attrs:
        try:
            version = int(np.asarray(f.attrs["version"]).reshape(-1)[0])
        except (TypeError, ValueError, IndexError):
            raise ValueError(f"'{path}': root attribute 'version' must be an integer, found "
                             f"{f.attrs['version']!r}") from None
        if version != FORMAT_VERSION:
            raise ValueError(f"'{path}': {expected} version {version} is not supported (this "
                             f"version of compexp-core reads version {FORMAT_VERSION})")


def _get(f: h5py.File, name: str, path: str, kind: type, *, required: bool = True):
    """The dataset or group ``name``: ValueError naming it and the file when it is missing."""
    try:
        obj = f.get(name)
    except (KeyError, TypeError, ValueError):  # broken link, or a dataset on the way
        obj = None
    what = "dataset" if kind is h5py.Dataset else "group"
    if obj is None:
        if not required:
            return None
        raise ValueError(f"'{path}' has no {what} '{name}' (required in a "
                         f"{_format_of(f) or 'compexp'} file)")
    if not isinstance(obj, kind):
        raise ValueError(f"'{path}': '{name}' must be an HDF5 {what}, found "
                         f"{type(obj).__name__}")
    return obj


def _attr_int(f: h5py.File, name: str, path: str, minimum: int = 1) -> int:
    if name not in f.attrs:
        raise ValueError(f"'{path}' has no root attribute '{name}' (required in a "
                         f"{_format_of(f) or 'compexp'} file)")
    v = np.asarray(f.attrs[name])
    if v.size != 1 or v.dtype.kind not in "iu":
        raise ValueError(f"'{path}': root attribute '{name}' must be an integer, found "
                         f"{f.attrs[name]!r}")
    out = int(v.reshape(-1)[0])
    if out < minimum:
        raise ValueError(f"'{path}': root attribute '{name}' must be >= {minimum}, found {out}")
    return out


def _read_strings(ds: h5py.Dataset, path: str, name: str) -> list[str]:
    if h5py.check_string_dtype(ds.dtype) is None:
        raise ValueError(f"'{path}': dataset '{name}' must hold strings, found dtype {ds.dtype}")
    if ds.ndim != 1:
        raise ValueError(f"'{path}': dataset '{name}' must be 1-D, found shape {ds.shape}")
    return [str(s) for s in ds.asstr()[()]]


def _chunk_rows(n: int, row_bytes: int, chunk_samples: Optional[int] = None) -> int:
    """Samples per HDF5 chunk: ``chunk_samples``, or about 2 MiB of samples."""
    if chunk_samples is not None:
        return min(n, _check_chunk_samples(chunk_samples))
    return max(1, min(n, _CHUNK_TARGET_BYTES // max(1, row_bytes)))


def _io_rows(n: int, row_bytes: int, chunk: int) -> int:
    """Samples moved per read or write: whole HDF5 chunks, about 64 MiB."""
    rows = max(1, _IO_BUDGET_BYTES // max(1, row_bytes))
    rows = max(chunk, rows // chunk * chunk)
    return min(n, rows)


def _check_chunk_samples(chunk_samples: Any) -> int:
    if isinstance(chunk_samples, (bool, np.bool_)) \
            or not isinstance(chunk_samples, (int, np.integer)):
        raise TypeError(f"chunk_samples must be a positive integer, got {chunk_samples!r}")
    if chunk_samples < 1:
        raise ValueError(f"chunk_samples must be >= 1, got {chunk_samples}")
    return int(chunk_samples)


def _array_like(x: Any) -> Any:
    """Keep NumPy arrays (including memmaps) and h5py datasets as they are (sliced lazily);
    convert anything else with ``np.asarray``."""
    if isinstance(x, (np.ndarray, h5py.Dataset)):
        return x
    return np.asarray(x)


def _check_str(value: Any, what: str) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, got {type(value).__name__}")
    return value


# =============================================================================== activations

def save_activations(path: PathLike, acts: Any, *, model: Optional[str] = None,
                     layer: Optional[str] = None, dataset: Optional[str] = None,
                     unit_names: Optional[Sequence[str]] = None,
                     chunk_samples: Optional[int] = None,
                     compression: Optional[Union[str, int]] = None) -> None:
    """Write an activations file.

    The array is written a few chunks of samples at a time (a NumPy memmap or an h5py dataset
    is never read whole), into a temporary file renamed onto ``path`` when complete.

    Args:
        path: the file to write (replaced if it exists).
        acts: ``[N, U, h, w]`` feature maps or ``[N, U]`` one value per sample and unit;
            float16, float32, float64 or bool (anything ``np.asarray`` accepts; NumPy arrays,
            memmaps and h5py datasets are sliced lazily). The dtype is kept.
        model, layer, dataset: optional provenance strings, stored as root attributes.
        unit_names: optional U strings, stored as dataset ``unit_names``.
        chunk_samples: samples per HDF5 chunk (default: about 2 MiB per chunk).
        compression: HDF5 compression of ``acts`` (``"gzip"``, ``"lzf"`` or a gzip level
            0-9); off by default, since activations compress poorly and decompression slows
            reading.

    Raises:
        ValueError: ``acts`` is not 2-D or 4-D, has N = 0 or U = 0 (or an empty map), or holds
            NaN or infinite values; ``unit_names`` has the wrong length.
        TypeError: ``acts`` is not float16/32/64 or bool; a provenance value or unit name is
            not a string.

    Examples:
        >>> import os, tempfile
        >>> import numpy as np
        >>> p = os.path.join(tempfile.mkdtemp(), "acts.h5")
        >>> save_activations(p, np.zeros((10, 4), np.float16), model="bert",
        ...                  unit_names=list("abcd"))
        >>> read_activations_metadata(p)["unit_names"]
        ['a', 'b', 'c', 'd']
    """
    acts = _array_like(acts)
    dtype = np.dtype(acts.dtype)
    if acts.ndim not in (2, 4):
        raise ValueError(f"acts must be [N, U, h, w] or [N, U], got shape {tuple(acts.shape)}")
    if dtype not in _ACTS_DTYPES:
        raise TypeError(f"acts must be float16, float32, float64 or bool, got dtype {dtype}")
    if any(int(s) < 1 for s in acts.shape):
        raise ValueError(f"acts must have N >= 1 samples, U >= 1 units and non-empty maps, got "
                         f"shape {tuple(acts.shape)}")
    model, layer, dataset = (_check_str(model, "model"), _check_str(layer, "layer"),
                             _check_str(dataset, "dataset"))
    shape = tuple(int(s) for s in acts.shape)
    n, u = shape[0], shape[1]
    if unit_names is not None:
        unit_names = check_strings(unit_names, u, "unit_names")
    row_bytes = int(np.prod(shape[1:])) * dtype.itemsize
    chunk = _chunk_rows(n, row_bytes, chunk_samples)
    step = _io_rows(n, row_bytes, chunk)
    with _writing(path) as f:
        f.attrs["format"] = ACTIVATIONS_FORMAT
        f.attrs["version"] = np.int64(FORMAT_VERSION)
        for key, value in (("model", model), ("layer", layer), ("dataset", dataset)):
            if value is not None:
                f.attrs[key] = value
        ds = f.create_dataset("acts", shape=shape, dtype=dtype, chunks=(chunk,) + shape[1:],
                              compression=compression)
        for s in range(0, n, step):
            block = np.asarray(acts[s:s + step])
            if dtype.kind == "f":
                finite = np.isfinite(block)
                if not finite.all():
                    bad = tuple(int(i) for i in np.argwhere(~finite)[0])
                    bad = (bad[0] + s,) + bad[1:]
                    raise ValueError(f"acts holds non-finite values (NaN or infinity), the first "
                                     f"at index {bad}: {block[tuple([bad[0] - s, *bad[1:]])]}")
            ds[s:s + block.shape[0]] = block
        if unit_names is not None:
            f.create_dataset("unit_names", data=np.array(unit_names, dtype=object),
                             dtype=_STR_DTYPE)


def _validated_acts(f: h5py.File, path: str) -> h5py.Dataset:
    _check_format(f, path, ACTIVATIONS_FORMAT, lenient_if="acts")
    ds = _get(f, "acts", path, h5py.Dataset)
    if ds.ndim not in (2, 4):
        raise ValueError(f"'{path}': dataset 'acts' must be [N, U, h, w] or [N, U], found shape "
                         f"{ds.shape}")
    if np.dtype(ds.dtype) not in _ACTS_DTYPES:
        raise ValueError(f"'{path}': dataset 'acts' must be float16, float32, float64 or bool, "
                         f"found dtype {ds.dtype}")
    if any(s < 1 for s in ds.shape):
        raise ValueError(f"'{path}': dataset 'acts' must have N >= 1 samples, U >= 1 units and "
                         f"non-empty maps, found shape {ds.shape}")
    un = _get(f, "unit_names", path, h5py.Dataset, required=False)
    if un is not None and un.shape != (ds.shape[1],):
        raise ValueError(f"'{path}': dataset 'unit_names' has shape {un.shape} but 'acts' has "
                         f"U = {ds.shape[1]} units (shape {ds.shape})")
    return ds


def open_activations(path: PathLike) -> h5py.Dataset:
    """Open an activations file and return its ``acts`` dataset, without reading it.

    The returned :class:`h5py.Dataset` slices like a NumPy array (``ds[i:j]`` reads samples
    ``i..j-1``) and keeps its file open for as long as it is referenced (``ds.file`` is the
    open :class:`h5py.File`; call ``ds.file.close()`` to close it early). A file without a
    ``format`` attribute is accepted when it has an ``acts`` dataset.

    Args:
        path: the activations file.

    Returns:
        The ``acts`` dataset, ``[N, U, h, w]`` or ``[N, U]``, float16/32/64 or bool.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: not a readable HDF5 file; ``format`` is not ``compexp-activations``; no
            ``acts`` dataset, or one of the wrong rank or dtype.
    """
    p = _fspath(path)
    f = _open_read(p)
    try:
        with _reading(p):
            return _validated_acts(f, p)
    except BaseException:
        f.close()
        raise


def load_activations(path: PathLike) -> np.ndarray:
    """Read the whole ``acts`` dataset of an activations file into memory (small files).

    Args:
        path: the activations file.

    Returns:
        ``acts`` as a NumPy array of the stored dtype.

    Raises:
        The errors of :func:`open_activations`.
    """
    p = _fspath(path)
    ds = open_activations(p)
    try:
        with _reading(p):
            return ds[()]
    finally:
        ds.file.close()


def read_activations_metadata(path: PathLike) -> dict:
    """Shape, dtype and provenance of an activations file, without reading ``acts``.

    Returns:
        A dict with keys ``shape`` (tuple), ``dtype`` (NumPy dtype), ``model``, ``layer``,
        ``dataset`` (strings or None) and ``unit_names`` (list of U strings, or None).
    """
    p = _fspath(path)
    ds = open_activations(p)
    f = ds.file
    try:
        with _reading(p):
            meta = {"shape": tuple(ds.shape), "dtype": np.dtype(ds.dtype)}
            for key in ("model", "layer", "dataset"):
                meta[key] = _attr_str(f.attrs[key]) if key in f.attrs else None
            un = _get(f, "unit_names", p, h5py.Dataset, required=False)
            meta["unit_names"] = None if un is None else _read_strings(un, p, "unit_names")
            return meta
    finally:
        f.close()


# =============================================================================== images

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
    images = _array_like(images)
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
        label_names = check_strings(label_names, len(label_names), "label_names")
        if labels is not None and labels.size and int(labels.max()) >= len(label_names):
            raise ValueError(f"labels holds {int(labels.max())} but label_names names only "
                             f"{len(label_names)} labels")
    if names is not None:
        names = check_strings(names, n, "names")
    dataset = _check_str(dataset, "dataset")
    row_bytes = int(np.prod(shape[1:]))
    chunk = _chunk_rows(n, row_bytes, chunk_samples)
    step = _io_rows(n, row_bytes, chunk)
    with _writing(path) as f:
        f.attrs["format"] = IMAGES_FORMAT
        f.attrs["version"] = np.int64(FORMAT_VERSION)
        if dataset is not None:
            f.attrs["dataset"] = dataset
        ds = f.create_dataset("images", shape=shape, dtype=np.uint8, chunks=(chunk,) + shape[1:])
        for s in range(0, n, step):
            ds[s:s + step] = np.asarray(images[s:s + step])
        if labels is not None:
            f.create_dataset("labels", data=labels.astype(np.int64))
        for key, values in (("label_names", label_names), ("names", names)):
            if values is not None:
                f.create_dataset(key, data=np.array(values, dtype=object), dtype=_STR_DTYPE)


def _validated_images(f: h5py.File, path: str) -> h5py.Dataset:
    _check_format(f, path, IMAGES_FORMAT)
    ds = _get(f, "images", path, h5py.Dataset)
    if ds.ndim != 4 or ds.shape[3] != 3 or any(s < 1 for s in ds.shape):
        raise ValueError(f"'{path}': dataset 'images' must be [N, H, W, 3] with N, H, W >= 1, "
                         f"found shape {ds.shape}")
    if np.dtype(ds.dtype) != np.uint8:
        raise ValueError(f"'{path}': dataset 'images' must be uint8, found dtype {ds.dtype}")
    for key in ("labels", "names"):
        extra = _get(f, key, path, h5py.Dataset, required=False)
        if extra is not None and extra.shape != (ds.shape[0],):
            raise ValueError(f"'{path}': dataset '{key}' has shape {extra.shape}, expected "
                             f"({ds.shape[0]},): one per image")
    return ds


def open_images(path: PathLike) -> h5py.Dataset:
    """Open an images file and return its uint8 ``images`` dataset ``[N, H, W, 3]``, unread.

    The dataset keeps its file open (``ds.file``) while referenced, like
    :func:`open_activations`.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: not a readable HDF5 file, not a ``compexp-images`` file, or a malformed one.
    """
    p = _fspath(path)
    f = _open_read(p)
    try:
        with _reading(p):
            return _validated_images(f, p)
    except BaseException:
        f.close()
        raise


def read_images_metadata(path: PathLike) -> dict:
    """Shape, labels and names of an images file, without reading the pixels.

    Returns:
        A dict with keys ``shape`` (tuple), ``labels`` (int64 array or None), ``label_names``,
        ``names`` (lists of strings or None) and ``dataset`` (string or None).
    """
    p = _fspath(path)
    ds = open_images(p)
    f = ds.file
    try:
        with _reading(p):
            meta: dict = {"shape": tuple(ds.shape),
                          "dataset": _attr_str(f.attrs["dataset"]) if "dataset" in f.attrs
                          else None}
            labels = _get(f, "labels", p, h5py.Dataset, required=False)
            if labels is not None and np.dtype(labels.dtype).kind not in "iu":
                raise ValueError(f"'{p}': dataset 'labels' must hold integers, found dtype "
                                 f"{labels.dtype}")
            meta["labels"] = None if labels is None else labels[()].astype(np.int64)
            for key in ("label_names", "names"):
                d = _get(f, key, p, h5py.Dataset, required=False)
                meta[key] = None if d is None else _read_strings(d, p, key)
            return meta
    finally:
        f.close()


# =============================================================================== concepts: write

def _concept_indices(values: Any, names: list[str], what: str, *, allow_none: bool) -> np.ndarray:
    """Concept indices (int32) of a sequence of indices or names (-1/None allowed if asked)."""
    lookup = {n: j for j, n in enumerate(names)}
    k = len(names)
    if isinstance(values, np.ndarray) and values.dtype.kind in "iu":
        if values.ndim != 1:
            raise ValueError(f"{what} must be 1-D, got shape {values.shape}")
        idx = values.astype(np.int64)
    else:
        if isinstance(values, (str, bytes)):
            raise TypeError(f"{what} must be a sequence of concept indices or names, not a "
                            f"single string")
        out = []
        for v in values:
            if v is None:
                if not allow_none:
                    raise ValueError(f"{what} contains None; every entry must name a concept")
                out.append(-1)
            elif isinstance(v, str):
                if v not in lookup:
                    raise ValueError(f"{what} names an unknown concept {v!r}")
                out.append(lookup[v])
            elif isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
                out.append(int(v))
            else:
                raise TypeError(f"{what} must hold concept indices or names, got {v!r}")
        idx = np.asarray(out, np.int64)
    lo = -1 if allow_none else 0
    bad = (idx < lo) | (idx >= k)
    if bad.any():
        q = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{what}[{q}] = {int(idx[q])} is out of range: concept indices must be in "
                         f"{lo}..{k - 1} (K = {k} concepts)")
    return idx.astype(np.int32)


def _check_group_name(category: Any) -> str:
    if not isinstance(category, str):
        raise TypeError(f"label_maps keys must be category names (strings), got {category!r}")
    if not category or "/" in category or category in (".", ".."):
        raise ValueError(f"label_maps category {category!r} is not a valid HDF5 group name "
                         f"(non-empty, no '/')")
    return category


def _as_bool_block(block: np.ndarray, what: str, offset: int) -> np.ndarray:
    if block.dtype == bool:
        return block
    if block.size and (block.min() < 0 or block.max() > 1):
        bad = np.argwhere((block < 0) | (block > 1))[0]
        raise ValueError(f"{what} must be boolean (0/1), found {block[tuple(bad)]} at sample "
                         f"{offset + int(bad[0])}")
    return block.astype(bool)


def _check_labels_block(block: np.ndarray, n_labels: int, what: str, mapping_name: str,
                        offset: int) -> None:
    """Every label value must index the label->concept mapping."""
    if not block.size:
        return
    lo, hi = block.min(), block.max()
    if lo >= 0 and hi < n_labels:
        return
    bad = np.argwhere((block < 0) | (block >= n_labels))[0]
    value = block[tuple(bad)]
    raise ValueError(f"{what} holds label value {value} (at sample {offset + int(bad[0])}) outside "
                     f"{mapping_name}, which maps label values 0..{n_labels - 1}")


def write_concept_sources(path: PathLike, *, n_samples: int, grid: Sequence[int],
                          names: Sequence[str], categories: Optional[Sequence[str]] = None,
                          label_maps: Optional[Mapping[str, tuple]] = None,
                          sample_labels: Optional[tuple] = None,
                          dense: Optional[tuple] = None,
                          chunk_samples: Optional[int] = None,
                          compression: Optional[Union[str, int]] = None,
                          with_index: bool = False) -> None:
    """Write a concepts file from the sources of the concept masks.

    The masks are defined by any combination of sources, OR-ed together; each is validated
    against ``n_samples``, ``grid`` and the K names and written a few chunks of samples at a
    time (NumPy memmaps and h5py datasets are never read whole). :func:`load_concepts` builds
    the :class:`ConceptSet` from them.

    Args:
        path: the file to write (replaced if it exists).
        n_samples: N.
        grid: (H, W) of the concept masks ((1, 1) for one cell per sample).
        names: the K unique concept names.
        categories: K category names; by default each concept referenced by
            ``label_maps[category]`` gets that category (the first one when several do) and
            the others get ``""``.
        label_maps: dict ``category -> (maps, concept_of_label)``: ``maps`` integer
            ``[N, L, H, W]`` or ``[N, H, W]`` (0 = no label; stored as ``[N, L, H, W]`` in its
            own integer dtype), ``concept_of_label[v]`` the concept (index or name) of label
            value ``v``, or -1/None for no concept.
        sample_labels: ``(present, concepts)``: ``present`` bool ``[N, k]``, concept
            ``concepts[q]`` (index or name) covering every cell of the samples where column
            ``q`` is set.
        dense: ``(masks, concepts)``: bool ``[N, k, H, W]`` (or ``[N, k]`` on a 1x1 grid), plane
            ``q`` a mask of concept ``concepts[q]``.
        chunk_samples: samples per HDF5 chunk (default: about 2 MiB per chunk).
        compression: HDF5 compression of the source datasets (``"gzip"``, ``"lzf"``, a gzip
            level, or None, the default). Label maps compress very well with ``"gzip"``.
        with_index: also build the :class:`ConceptSet` and store its ``index`` group, so that
            loading the file does not rebuild it.

    Raises:
        ValueError: shapes that do not match ``n_samples``/``grid``, concept indices or names
            out of range, label values outside ``concept_of_label``, non-boolean masks.
        TypeError: maps that are not integer; names or categories that are not strings.

    Examples:
        >>> import os, tempfile
        >>> import numpy as np
        >>> p = os.path.join(tempfile.mkdtemp(), "concepts.h5")
        >>> maps = np.array([[[1, 2], [0, 2]], [[2, 2], [1, 0]]], np.uint16)   # [N=2, H=2, W=2]
        >>> write_concept_sources(p, n_samples=2, grid=(2, 2), names=["sky", "tree", "beach"],
        ...                       label_maps={"object": (maps, [-1, 0, 1])},
        ...                       sample_labels=(np.array([[True], [False]]), ["beach"]))
        >>> cs = load_concepts(p)
        >>> cs.sizes.tolist(), cs.categories
        ([2, 4, 4], ('object', 'object', ''))
    """
    if isinstance(n_samples, (bool, np.bool_)) or not isinstance(n_samples, (int, np.integer)):
        raise TypeError(f"n_samples must be an integer, got {n_samples!r}")
    n = int(n_samples)
    if n < 1:
        raise ValueError(f"n_samples must be >= 1, got {n}")
    grid = tuple(int(g) for g in grid)
    if len(grid) != 2 or grid[0] < 1 or grid[1] < 1:
        raise ValueError(f"grid must be (H, W) with H, W >= 1, got {grid}")
    h, w = grid
    names = list(names) if not isinstance(names, str) else names
    if len(names) == 0:
        raise ValueError("names is empty: a concepts file needs at least one concept")
    names = check_names(names, len(names), "names")
    k = len(names)
    label_maps = dict(label_maps or {})

    # ---- validate everything before writing
    maps_plan = []
    for category, value in label_maps.items():
        category = _check_group_name(category)
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise TypeError(f"label_maps[{category!r}] must be a (maps, concept_of_label) pair")
        maps, mapping = _array_like(value[0]), value[1]
        what = f"label_maps[{category!r}] maps"
        if maps.ndim not in (3, 4):
            raise ValueError(f"{what} must be [N, L, H, W] or [N, H, W], got shape "
                             f"{tuple(maps.shape)}")
        if np.dtype(maps.dtype).kind not in "iu":
            raise TypeError(f"{what} must hold integers, got dtype {maps.dtype}")
        shape4 = (maps.shape[0], 1 if maps.ndim == 3 else maps.shape[1]) + tuple(maps.shape[-2:])
        if shape4[0] != n or shape4[2:] != grid or shape4[1] < 1:
            raise ValueError(f"{what} has shape {tuple(maps.shape)}, expected [N={n}, L, H={h}, "
                             f"W={w}] (or [N, H, W]) with L >= 1")
        mapping = _concept_indices(mapping, names, f"label_maps[{category!r}] concept_of_label",
                                   allow_none=True)
        if mapping.size == 0:
            raise ValueError(f"label_maps[{category!r}] concept_of_label is empty")
        maps_plan.append((category, maps, shape4, mapping))
    sl_plan = None
    if sample_labels is not None:
        if not isinstance(sample_labels, (tuple, list)) or len(sample_labels) != 2:
            raise TypeError("sample_labels must be a (present, concepts) pair")
        present = _array_like(sample_labels[0])
        if present.ndim != 2 or present.shape[0] != n or present.shape[1] < 1:
            raise ValueError(f"sample_labels present has shape {tuple(present.shape)}, expected "
                             f"[N={n}, k] with k >= 1")
        if np.dtype(present.dtype).kind not in "biu":
            raise TypeError(f"sample_labels present must be boolean, got dtype {present.dtype}")
        cols = _concept_indices(sample_labels[1], names, "sample_labels concepts", allow_none=False)
        if cols.size != present.shape[1]:
            raise ValueError(f"sample_labels concepts has {cols.size} entries but present has "
                             f"{present.shape[1]} columns (shape {tuple(present.shape)})")
        sl_plan = (present, cols)
    dense_plan = None
    if dense is not None:
        if not isinstance(dense, (tuple, list)) or len(dense) != 2:
            raise TypeError("dense must be a (masks, concepts) pair")
        masks = _array_like(dense[0])
        if masks.ndim == 2 and grid == (1, 1):
            masks = np.asarray(masks)[:, :, None, None]
        if masks.ndim != 4 or masks.shape[0] != n or tuple(masks.shape[2:]) != grid \
                or masks.shape[1] < 1:
            raise ValueError(f"dense masks has shape {tuple(masks.shape)}, expected [N={n}, k, "
                             f"H={h}, W={w}] with k >= 1")
        if np.dtype(masks.dtype).kind not in "biu":
            raise TypeError(f"dense masks must be boolean, got dtype {masks.dtype}")
        cols = _concept_indices(dense[1], names, "dense concepts", allow_none=False)
        if cols.size != masks.shape[1]:
            raise ValueError(f"dense concepts has {cols.size} entries but masks has "
                             f"{masks.shape[1]} planes (shape {tuple(masks.shape)})")
        dense_plan = (masks, cols)

    if categories is None:
        cats = [""] * k
        for category, _, _, mapping in maps_plan:
            for c in mapping:
                if c >= 0 and not cats[c]:
                    cats[c] = category
    else:
        cats = check_strings(categories, k, "categories")

    # ---- write
    with _writing(path) as f:
        _write_concept_header(f, n, grid, names, cats)
        for category, maps, shape4, mapping in maps_plan:
            g = f.create_group(f"label_maps/{category}")
            dt = np.dtype(maps.dtype)
            row_bytes = int(np.prod(shape4[1:])) * dt.itemsize
            chunk = _chunk_rows(n, row_bytes, chunk_samples)
            ds = g.create_dataset("maps", shape=shape4, dtype=dt, chunks=(chunk,) + shape4[1:],
                                  compression=compression)
            g.create_dataset("concept_of_label", data=mapping)
            step = _io_rows(n, row_bytes, chunk)
            for s in range(0, n, step):
                block = np.asarray(maps[s:s + step]).reshape((-1,) + shape4[1:])
                _check_labels_block(block, mapping.size, f"label_maps[{category!r}] maps",
                                    "its concept_of_label", s)
                ds[s:s + block.shape[0]] = block
        if sl_plan is not None:
            present, cols = sl_plan
            g = f.create_group("sample_labels")
            chunk = _chunk_rows(n, present.shape[1], chunk_samples)
            ds = g.create_dataset("present", shape=(n, present.shape[1]), dtype=bool,
                                  chunks=(chunk, present.shape[1]), compression=compression)
            g.create_dataset("concepts", data=cols)
            step = _io_rows(n, present.shape[1], chunk)
            for s in range(0, n, step):
                block = _as_bool_block(np.asarray(present[s:s + step]), "sample_labels present", s)
                ds[s:s + block.shape[0]] = block
        if dense_plan is not None:
            masks, cols = dense_plan
            g = f.create_group("dense")
            shape = tuple(int(x) for x in masks.shape)
            row_bytes = int(np.prod(shape[1:]))
            chunk = _chunk_rows(n, row_bytes, chunk_samples)
            ds = g.create_dataset("masks", shape=shape, dtype=bool, chunks=(chunk,) + shape[1:],
                                  compression=compression)
            g.create_dataset("concepts", data=cols)
            step = _io_rows(n, row_bytes, chunk)
            for s in range(0, n, step):
                block = _as_bool_block(np.asarray(masks[s:s + step]), "dense masks", s)
                ds[s:s + block.shape[0]] = block
        if with_index:
            f.flush()
            cs = _build_from_sources(f, _fspath(path), n, grid, names, cats, None)
            _write_index(f, cs)


def _write_concept_header(f: h5py.File, n: int, grid: tuple, names: list[str],
                          categories: list[str]) -> None:
    f.attrs["format"] = CONCEPTS_FORMAT
    f.attrs["version"] = np.int64(FORMAT_VERSION)
    f.attrs["n_samples"] = np.int64(n)
    f.attrs["height"] = np.int64(grid[0])
    f.attrs["width"] = np.int64(grid[1])
    f.create_dataset("concept_names", data=np.array(names, dtype=object), dtype=_STR_DTYPE)
    f.create_dataset("concept_categories", data=np.array(categories, dtype=object),
                     dtype=_STR_DTYPE)


def _write_index(f: h5py.File, cs: ConceptSet) -> None:
    g = f.create_group("index")
    g.attrs["block_words"] = np.int64(BLOCK_WORDS)
    a = cs.arrays
    for name, _, dtype, _ in _INDEX_DATASETS:
        g.create_dataset(name, data=np.ascontiguousarray(getattr(a, name), dtype))


def save_concepts(path: PathLike, concepts: ConceptSet) -> None:
    """Write a :class:`ConceptSet` to a concepts file: names, categories and the built
    block-sparse ``index`` group (no sources). :func:`load_concepts` reads it back exactly.

    Args:
        path: the file to write (replaced if it exists).
        concepts: the concept set.

    Examples:
        >>> import os, tempfile
        >>> import numpy as np
        >>> from compexp_core import ConceptSet
        >>> cs = ConceptSet.from_sample_labels(np.eye(3, dtype=bool), grid=(4, 4),
        ...                                    names=["a", "b", "c"], categories=["scene"] * 3)
        >>> p = os.path.join(tempfile.mkdtemp(), "concepts.h5")
        >>> save_concepts(p, cs)
        >>> back = load_concepts(p)
        >>> back.grid, back.categories, back.sizes.tolist()
        ((4, 4), ('scene', 'scene', 'scene'), [16, 16, 16])
    """
    if not isinstance(concepts, ConceptSet):
        raise TypeError(f"concepts must be a ConceptSet, got {type(concepts).__name__}")
    with _writing(path) as f:
        _write_concept_header(f, concepts.n_samples, concepts.grid, list(concepts.names),
                              list(concepts.categories))
        _write_index(f, concepts)


# =============================================================================== concepts: read

def load_concepts(path: PathLike, *, chunk_samples: Optional[int] = None) -> ConceptSet:
    """Load a concepts file as a :class:`ConceptSet`.

    If the file has an ``index`` group it is read directly. Otherwise the set is built from the
    sources (``label_maps/<category>``, ``sample_labels``, ``dense``), each read
    ``chunk_samples`` samples at a time (by default whole HDF5 chunks adding up to about 64 MiB
    once labels are widened to int32), so the label maps are never in memory whole.

    Args:
        path: the concepts file.
        chunk_samples: samples read per step when building from sources.

    Returns:
        The concept set (names and categories from ``concept_names`` / ``concept_categories``).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: not a readable HDF5 file; ``format`` is not ``compexp-concepts``; a required
            dataset or attribute is missing; shapes inconsistent with ``n_samples``, the grid
            or K; concept indices out of range; a label value outside its ``concept_of_label``;
            an invalid ``index``. The message names the file and the dataset.
    """
    p = _fspath(path)
    if chunk_samples is not None:
        chunk_samples = _check_chunk_samples(chunk_samples)
    with _open_read(p) as f, _reading(p):
        _check_format(f, p, CONCEPTS_FORMAT)
        n = _attr_int(f, "n_samples", p)
        grid = (_attr_int(f, "height", p), _attr_int(f, "width", p))
        names = _read_strings(_get(f, "concept_names", p, h5py.Dataset), p, "concept_names")
        k = len(names)
        if k == 0:
            raise ValueError(f"'{p}': dataset 'concept_names' is empty (a concepts file needs at "
                             f"least one concept)")
        cat_ds = _get(f, "concept_categories", p, h5py.Dataset, required=False)
        categories = [""] * k if cat_ds is None else \
            _read_strings(cat_ds, p, "concept_categories")
        if len(categories) != k:
            raise ValueError(f"'{p}': dataset 'concept_categories' has shape ({len(categories)},) "
                             f"but 'concept_names' has shape ({k},)")
        try:
            check_names(names, k, "concept_names")
        except ValueError as e:
            raise ValueError(f"'{p}': {e}") from None
        if _get(f, "index", p, h5py.Group, required=False) is not None:
            return _read_index(f, p, n, grid, names, categories)
        return _build_from_sources(f, p, n, grid, names, categories, chunk_samples)


def _read_index(f: h5py.File, path: str, n: int, grid: tuple, names: list[str],
                categories: list[str]) -> ConceptSet:
    g = f["index"]
    if "block_words" not in g.attrs:
        raise ValueError(f"'{path}': group 'index' has no attribute 'block_words' (must be "
                         f"{BLOCK_WORDS})")
    bw = np.asarray(g.attrs["block_words"]).reshape(-1)
    if bw.size != 1 or bw.dtype.kind not in "iu" or int(bw[0]) != BLOCK_WORDS:
        raise ValueError(f"'{path}': index/block_words is {g.attrs['block_words']!r}, but this "
                         f"build of compexp-core uses blocks of {BLOCK_WORDS} words")
    n_cells = n * grid[0] * grid[1]
    n_blocks = -(-n_cells // (64 * BLOCK_WORDS))
    arrays = {}
    for name, kinds, dtype, ndim in _INDEX_DATASETS:
        ds = _get(f, f"index/{name}", path, h5py.Dataset)
        if ds.dtype.kind not in kinds or ds.ndim != ndim:
            raise ValueError(f"'{path}': dataset 'index/{name}' must be a {ndim}-D integer array "
                             f"({np.dtype(dtype).name}), found shape {ds.shape} dtype {ds.dtype}")
        arrays[name] = np.ascontiguousarray(ds[()], dtype)
    for name in ("block_ptr", "full_ptr"):
        if arrays[name].shape != (n_blocks + 1,):
            raise ValueError(f"'{path}': dataset 'index/{name}' has shape {arrays[name].shape}, "
                             f"expected ({n_blocks + 1},): n_blocks + 1 for n_samples={n} on "
                             f"grid {grid[0]}x{grid[1]} ({n_cells} cells, {n_blocks} blocks)")
    ne = arrays["entry_concept"].shape[0]
    if arrays["entry_words"].shape != (ne, BLOCK_WORDS):
        raise ValueError(f"'{path}': dataset 'index/entry_words' has shape "
                         f"{arrays['entry_words'].shape}, expected ({ne}, {BLOCK_WORDS}) to match "
                         f"'index/entry_concept' of shape ({ne},)")
    try:
        return ConceptSet(n, grid, names, arrays["block_ptr"], arrays["entry_concept"],
                          arrays["entry_words"], arrays["full_ptr"], arrays["full_concept"],
                          categories=categories)
    except ValueError as e:
        raise ValueError(f"'{path}': the concept index in group 'index' is invalid: {e}") from None


def _read_rows(ds: h5py.Dataset, row_bytes: int, chunk_samples: Optional[int]) -> int:
    n = ds.shape[0]
    if chunk_samples is not None:
        return min(n, chunk_samples)
    chunk = ds.chunks[0] if ds.chunks else 1
    return _io_rows(n, row_bytes, min(n, chunk))


def _build_from_sources(f: h5py.File, path: str, n: int, grid: tuple, names: list[str],
                        categories: list[str], chunk_samples: Optional[int]) -> ConceptSet:
    k = len(names)
    h, w = grid
    try:
        builder = ConceptSetBuilder(n, grid, names, categories)
    except ValueError as e:
        raise ValueError(f"'{path}': {e}") from None

    def concept_column(name: str, count: int, allow_none: bool, what_rows: str) -> np.ndarray:
        ds = _get(f, name, path, h5py.Dataset)
        if ds.dtype.kind not in "iu" or ds.ndim != 1:
            raise ValueError(f"'{path}': dataset '{name}' must be a 1-D integer array, found "
                             f"shape {ds.shape} dtype {ds.dtype}")
        if count >= 0 and ds.shape[0] != count:
            raise ValueError(f"'{path}': dataset '{name}' has shape {ds.shape} but {what_rows}")
        values = ds[()].astype(np.int64)
        lo = -1 if allow_none else 0
        bad = (values < lo) | (values >= k)
        if bad.any():
            q = int(np.flatnonzero(bad)[0])
            raise ValueError(f"'{path}': dataset '{name}' holds concept index {values[q]} at "
                             f"position {q}, outside {lo}..{k - 1} (K = {k} concepts in "
                             f"'concept_names')")
        return values.astype(np.int32)

    def bool_block(block: np.ndarray, name: str, s: int) -> np.ndarray:
        return _as_bool_block(block, f"'{path}': dataset '{name}'", s)

    lm = _get(f, "label_maps", path, h5py.Group, required=False)
    if lm is not None:
        for category in lm:
            base = f"label_maps/{category}"
            _get(f, base, path, h5py.Group)
            ds = _get(f, f"{base}/maps", path, h5py.Dataset)
            if ds.dtype.kind not in "iu":
                raise ValueError(f"'{path}': dataset '{base}/maps' must hold integers, found "
                                 f"dtype {ds.dtype}")
            shape = ds.shape
            if ds.ndim == 3:
                shape = (shape[0], 1) + shape[1:]
            if len(shape) != 4 or shape[0] != n or shape[2:] != grid or shape[1] < 1:
                raise ValueError(f"'{path}': dataset '{base}/maps' has shape {ds.shape}, expected "
                                 f"[N={n}, L, H={h}, W={w}] (n_samples and grid of the file)")
            mapping = concept_column(f"{base}/concept_of_label", -1, True, "")
            if mapping.size == 0:
                raise ValueError(f"'{path}': dataset '{base}/concept_of_label' is empty")
            row_bytes = int(np.prod(shape[1:])) * max(4, ds.dtype.itemsize)
            step = _read_rows(ds, row_bytes, chunk_samples)
            for s in range(0, n, step):
                block = ds[s:s + step].reshape((-1,) + shape[1:])
                _check_labels_block(block, mapping.size, f"'{path}': dataset '{base}/maps'",
                                    f"'{base}/concept_of_label'", s)
                try:
                    builder.add_label_maps(block, mapping, sample_offset=s)
                except ValueError as e:
                    raise ValueError(f"'{path}': dataset '{base}/maps' (samples {s}.."
                                     f"{s + block.shape[0] - 1}): {e}") from None
    if _get(f, "sample_labels", path, h5py.Group, required=False) is not None:
        ds = _get(f, "sample_labels/present", path, h5py.Dataset)
        if ds.ndim != 2 or ds.shape[0] != n or ds.dtype.kind not in "biu":
            raise ValueError(f"'{path}': dataset 'sample_labels/present' has shape {ds.shape} "
                             f"dtype {ds.dtype}, expected bool [N={n}, k]")
        cols = concept_column("sample_labels/concepts", ds.shape[1], False,
                              f"'sample_labels/present' has {ds.shape[1]} columns "
                              f"(shape {ds.shape})")
        step = _read_rows(ds, max(1, ds.shape[1]), chunk_samples)
        for s in range(0, n, step):
            block = bool_block(ds[s:s + step], "sample_labels/present", s)
            builder.add_sample_labels(block, cols, sample_offset=s)
    if _get(f, "dense", path, h5py.Group, required=False) is not None:
        ds = _get(f, "dense/masks", path, h5py.Dataset)
        if ds.ndim != 4 or ds.shape[0] != n or ds.shape[2:] != grid or ds.dtype.kind not in "biu":
            raise ValueError(f"'{path}': dataset 'dense/masks' has shape {ds.shape} dtype "
                             f"{ds.dtype}, expected bool [N={n}, k, H={h}, W={w}]")
        cols = concept_column("dense/concepts", ds.shape[1], False,
                              f"'dense/masks' has {ds.shape[1]} planes (shape {ds.shape})")
        step = _read_rows(ds, max(1, int(np.prod(ds.shape[1:]))), chunk_samples)
        for s in range(0, n, step):
            block = bool_block(ds[s:s + step], "dense/masks", s)
            builder.add_dense(block, cols, sample_offset=s)
    return builder.build()


# =============================================================================== describe

def _mb(nbytes: int) -> str:
    return f"{nbytes / 1e6:.2f} MB"


def _short(value: Any, limit: int = 120) -> str:
    if isinstance(value, np.ndarray) and value.size > 8:
        return f"array shape {value.shape} dtype {value.dtype}"
    s = _attr_str(value) if isinstance(value, (bytes, np.bytes_, str)) else repr(value)
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
    ds = _validated_acts(f, path)
    lines = [f"kind: activations ({ACTIVATIONS_FORMAT}"
             + (", no format attribute" if _format_of(f) is None else "") + ")"]
    n, u = ds.shape[:2]
    if ds.ndim == 4:
        lines.append(f"acts: {n} samples x {u} units x {ds.shape[2]}x{ds.shape[3]} maps")
    else:
        lines.append(f"acts: {n} samples x {u} units (one value per sample)")
    lines.append(f"  {_ds_line(ds)}")
    for key in ("model", "layer", "dataset"):
        if key in f.attrs:
            lines.append(f"{key}: {_attr_str(f.attrs[key])}")
    un = _get(f, "unit_names", path, h5py.Dataset, required=False)
    if un is not None:
        lines.append(f"unit_names: {_preview(_read_strings(un, path, 'unit_names'))}")
    return lines


def _describe_concepts(f: h5py.File, path: str) -> list[str]:
    _check_format(f, path, CONCEPTS_FORMAT)
    n = _attr_int(f, "n_samples", path)
    h, w = _attr_int(f, "height", path), _attr_int(f, "width", path)
    names = _read_strings(_get(f, "concept_names", path, h5py.Dataset), path, "concept_names")
    cat_ds = _get(f, "concept_categories", path, h5py.Dataset, required=False)
    cats = [""] * len(names) if cat_ds is None \
        else _read_strings(cat_ds, path, "concept_categories")
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
        FileNotFoundError, ValueError: as :func:`load_concepts` and :func:`open_activations`
            (for activations and concepts files, missing required parts are errors).

    Examples:
        >>> import os, tempfile
        >>> import numpy as np
        >>> p = os.path.join(tempfile.mkdtemp(), "acts.h5")
        >>> save_activations(p, np.zeros((5, 3), np.float32), model="resnet18", layer="layer4")
        >>> print(describe(p).split("\\n", 1)[1])  # doctest: +NORMALIZE_WHITESPACE
        kind: activations (compexp-activations)
        acts: 5 samples x 3 units (one value per sample)
          shape (5, 3), dtype float32, chunks (5, 3), 0.00 MB
        model: resnet18
        layer: layer4
    """
    p = _fspath(path)
    with _open_read(p) as f, _reading(p):
        fmt = _format_of(f)
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
