"""The one HDF5 policy of compexp-core: format names, atomic writes, chunking, error reports.

Every file compexp-core writes goes through this module, and every reader reports problems
the same way (``docs/FORMAT.md`` §6):

* **Names and versions.** The root attribute ``format`` tells the files apart
  (:data:`ACTIVATIONS_FORMAT`, :data:`CONCEPTS_FORMAT`, :data:`RESULTS_FORMAT`,
  :data:`IMAGES_FORMAT`, and :data:`PARTIAL_ACTIVATIONS_FORMAT` for an extraction in
  progress); ``version`` is :data:`FORMAT_VERSION`, and :func:`check_format` refuses others.
* **Atomic writes.** A file is written into a temporary file beside its target (same
  directory, hence same file system), flushed to disk (``fsync``) and renamed onto the target
  with :func:`os.replace` only when complete. On any failure the temporary file is removed
  and a previous file at the target is left untouched. :func:`writing` does this for an HDF5
  file, :func:`atomic_path` for any file (CSV), :func:`commit` for a temporary file kept
  across calls (the resumable activations writer). :func:`scratch_file` is a temporary HDF5
  file that is always removed.
* **Errors.** :func:`open_file` turns a missing path into :class:`FileNotFoundError` naming
  it and a file HDF5 cannot open into :class:`ValueError` saying it is not a readable HDF5
  file; :func:`reading` does the same for failures met while reading (corrupt or truncated
  files); :func:`check_format`, :func:`get` and :func:`attr_int` raise :class:`ValueError`
  naming the file and the dataset or attribute that is wrong or missing.
* **Chunks.** Datasets that grow with the number of samples are chunked along samples,
  about 2 MiB a chunk (:func:`chunk_rows`), and moved about 64 MiB at a time
  (:func:`io_rows`).

Examples:
    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> p = os.path.join(d, "x.h5")
    >>> with writing(p) as f:
    ...     f.attrs["format"] = CONCEPTS_FORMAT
    >>> try:
    ...     with writing(p) as f:
    ...         f.attrs["format"] = RESULTS_FORMAT
    ...         raise RuntimeError("interrupted")
    ... except RuntimeError:
    ...     pass
    >>> os.listdir(d)                      # no temporary file left behind
    ['x.h5']
    >>> with open_file(p) as f:            # the previous file is intact
    ...     format_of(f)
    'compexp-concepts'
    >>> open_file(os.path.join(d, "missing.h5"))
    Traceback (most recent call last):
    ...
    FileNotFoundError: [Errno 2] No such file or directory: '...missing.h5'
"""
from __future__ import annotations

import contextlib
import errno
import os
import uuid
from typing import Any, Iterator, Optional, Union

import h5py
import numpy as np

ACTIVATIONS_FORMAT = "compexp-activations"
PARTIAL_ACTIVATIONS_FORMAT = "compexp-activations-partial"
CONCEPTS_FORMAT = "compexp-concepts"
RESULTS_FORMAT = "compexp-results"
IMAGES_FORMAT = "compexp-images"
FORMAT_VERSION = 1

PathLike = Union[str, "os.PathLike[str]"]

#: Variable-length UTF-8 strings, the dtype of every text dataset written.
STR_DTYPE = h5py.string_dtype("utf-8")

# HDF5 chunks are sized to about this many bytes (along the sample axis).
CHUNK_TARGET_BYTES = 2 << 20
# Reads and writes move about this many bytes of samples at a time.
IO_BUDGET_BYTES = 64 << 20


# =============================================================================== atomic writes

def temp_path(path: PathLike, tag: str = "tmp") -> str:
    """A fresh temporary file name beside ``path``: ``.<name>.<random>.<tag>``."""
    d, name = os.path.split(os.path.abspath(os.fspath(path)))
    return os.path.join(d, f".{name}.{uuid.uuid4().hex[:12]}.{tag}")


def discard(tmp: PathLike) -> None:
    """Remove a temporary file if it exists (never raises)."""
    with contextlib.suppress(OSError):
        os.unlink(tmp)


def _fsync_dir(d: str) -> None:
    # Makes the rename durable; not every platform or file system allows it.
    with contextlib.suppress(OSError):
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def commit(tmp: PathLike, path: PathLike) -> None:
    """Move the complete, closed file ``tmp`` onto ``path``: ``fsync`` it, then
    :func:`os.replace` (atomic: ``path`` is either the previous file or the new one).

    Raises whatever ``fsync`` or the rename raises; ``tmp`` is then still there (the caller
    decides whether to keep it, as a resumable writer does, or :func:`discard` it)."""
    tmp, path = os.fspath(tmp), os.fspath(path)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[str]:
    """Write any file atomically: yields a temporary path beside ``path`` to write and close;
    on success it is committed onto ``path`` (:func:`commit`), on any failure removed."""
    tmp = temp_path(path)
    try:
        yield tmp
        commit(tmp, path)
    except BaseException:
        discard(tmp)
        raise


@contextlib.contextmanager
def writing(path: PathLike) -> Iterator[h5py.File]:
    """Write an HDF5 file atomically: yields a new file (a temporary file beside ``path``),
    closed and committed onto ``path`` when the block ends without error, removed otherwise."""
    with atomic_path(path) as tmp:
        f = create(tmp)
        try:
            yield f
        except BaseException:
            with contextlib.suppress(Exception):
                f.close()
            raise
        f.close()  # a failure to flush here is a failed write too


@contextlib.contextmanager
def scratch_file(beside: PathLike) -> Iterator[h5py.File]:
    """A scratch HDF5 file beside ``beside`` (same disk), removed afterwards, also on error."""
    tmp = temp_path(beside, "scratch.tmp")
    f = create(tmp)
    try:
        yield f
    finally:
        with contextlib.suppress(Exception):
            f.close()
        discard(tmp)


def create(path: PathLike) -> h5py.File:
    """A new, empty HDF5 file at ``path`` (replaced if it exists). Callers write into
    temporary files only: see :func:`writing`."""
    return h5py.File(os.fspath(path), "w")


# =============================================================================== reading

def open_file(path: PathLike, mode: str = "r") -> h5py.File:
    """Open an HDF5 file (``mode`` ``"r"`` or ``"r+"``), turning every failure into a clear
    exception: :class:`FileNotFoundError` or :class:`IsADirectoryError` naming the path,
    :class:`ValueError` "not a readable HDF5 file" for anything HDF5 cannot open."""
    p = os.fspath(path)
    if not os.path.exists(p):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", p)
    if os.path.isdir(p):
        raise IsADirectoryError(errno.EISDIR, "Is a directory, not an HDF5 file", p)
    try:
        return h5py.File(p, mode)
    except PermissionError:
        raise
    except OSError as e:
        raise ValueError(f"'{p}' is not a readable HDF5 file ({e})") from None


@contextlib.contextmanager
def reading(path: PathLike) -> Iterator[None]:
    """Report HDF5 read errors (a corrupt or truncated file) as ValueError naming the file."""
    try:
        yield
    except (FileNotFoundError, PermissionError):
        raise
    except UnicodeDecodeError as e:
        raise ValueError(f"'{os.fspath(path)}' is not a readable HDF5 file: a string in it is "
                         f"not valid UTF-8 ({e}); it may be corrupt") from e
    except (OSError, RuntimeError, KeyError, TypeError) as e:
        # h5py reports corrupt metadata as OSError, RuntimeError, KeyError or TypeError.
        raise ValueError(f"'{os.fspath(path)}' is not a readable HDF5 file: reading it failed "
                         f"({type(e).__name__}: {e}); it may be truncated or corrupt") from e


def attr_str(value: Any) -> str:
    """An attribute value as text (bytes decoded as UTF-8, a 1-element array unwrapped)."""
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray) and value.size == 1:
        return attr_str(value.reshape(-1)[0])
    return str(value)


def format_of(f: h5py.File) -> Optional[str]:
    """The root ``format`` attribute, or None."""
    if "format" not in f.attrs:
        return None
    return attr_str(f.attrs["format"])


def check_format(f: h5py.File, path: str, expected: str, *,
                 lenient_if: Optional[str] = None) -> None:
    """Check the root ``format`` and ``version`` attributes.

    With ``lenient_if``, a file without a ``format`` attribute is accepted when it has that
    dataset (activation files written by other tools)."""
    found = format_of(f)
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


def get(f: h5py.File, name: str, path: str, kind: type, *, required: bool = True):
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
                         f"{format_of(f) or 'compexp'} file)")
    if not isinstance(obj, kind):
        raise ValueError(f"'{path}': '{name}' must be an HDF5 {what}, found "
                         f"{type(obj).__name__}")
    return obj


def attr_int(f: h5py.File, name: str, path: str, minimum: int = 1) -> int:
    """The integer root attribute ``name`` (>= ``minimum``), or ValueError naming it."""
    if name not in f.attrs:
        raise ValueError(f"'{path}' has no root attribute '{name}' (required in a "
                         f"{format_of(f) or 'compexp'} file)")
    v = np.asarray(f.attrs[name])
    if v.size != 1 or v.dtype.kind not in "iu":
        raise ValueError(f"'{path}': root attribute '{name}' must be an integer, found "
                         f"{f.attrs[name]!r}")
    out = int(v.reshape(-1)[0])
    if out < minimum:
        raise ValueError(f"'{path}': root attribute '{name}' must be >= {minimum}, found {out}")
    return out


def read_strings(ds: h5py.Dataset, path: str, name: str) -> list[str]:
    """A 1-D string dataset as a list of str, or ValueError naming it."""
    if h5py.check_string_dtype(ds.dtype) is None:
        raise ValueError(f"'{path}': dataset '{name}' must hold strings, found dtype {ds.dtype}")
    if ds.ndim != 1:
        raise ValueError(f"'{path}': dataset '{name}' must be 1-D, found shape {ds.shape}")
    return [str(s) for s in ds.asstr()[()]]


def write_strings(group: h5py.Group, name: str, values: Any) -> h5py.Dataset:
    """A string dataset (variable-length UTF-8) holding ``values``."""
    return group.create_dataset(name, data=np.array(values, dtype=object), dtype=STR_DTYPE)


# =============================================================================== chunks

def check_chunk_samples(chunk_samples: Any) -> int:
    """A valid ``chunk_samples`` argument (a positive integer), or TypeError/ValueError."""
    if isinstance(chunk_samples, (bool, np.bool_)) \
            or not isinstance(chunk_samples, (int, np.integer)):
        raise TypeError(f"chunk_samples must be a positive integer, got {chunk_samples!r}")
    if chunk_samples < 1:
        raise ValueError(f"chunk_samples must be >= 1, got {chunk_samples}")
    return int(chunk_samples)


def chunk_rows(n: int, row_bytes: int, chunk_samples: Optional[int] = None) -> int:
    """Samples per HDF5 chunk: ``chunk_samples``, or about 2 MiB of samples."""
    if chunk_samples is not None:
        return min(n, check_chunk_samples(chunk_samples))
    return max(1, min(n, CHUNK_TARGET_BYTES // max(1, row_bytes)))


def batch_chunk_rows(batch_size: int, n: int, row_bytes: int) -> int:
    """Samples per HDF5 chunk for data written ``batch_size`` samples at a time: the largest
    divisor of the batch size whose chunk stays within about 2 MiB, so that each batch fills
    whole chunks (HDF5 then writes them directly instead of reading back partly written
    ones)."""
    fits = [d for d in range(1, batch_size + 1)
            if batch_size % d == 0 and d * row_bytes <= CHUNK_TARGET_BYTES]
    return max(1, min(n, max(fits, default=1)))


def io_rows(n: int, row_bytes: int, chunk: int) -> int:
    """Samples moved per read or write: whole HDF5 chunks, about 64 MiB."""
    rows = max(1, IO_BUDGET_BYTES // max(1, row_bytes))
    rows = max(chunk, rows // chunk * chunk)
    return min(n, rows)


def read_rows(ds: h5py.Dataset, row_bytes: int, chunk_samples: Optional[int]) -> int:
    """Samples to read per step from ``ds``: ``chunk_samples``, or whole chunks of it making
    about 64 MiB (``row_bytes`` per sample once in memory)."""
    n = ds.shape[0]
    if chunk_samples is not None:
        return min(n, chunk_samples)
    chunk = ds.chunks[0] if ds.chunks else 1
    return io_rows(n, row_bytes, min(n, chunk))


# =============================================================================== arguments

def array_like(x: Any) -> Any:
    """Keep NumPy arrays (including memmaps) and h5py datasets as they are (sliced lazily);
    convert anything else with ``np.asarray``."""
    if isinstance(x, (np.ndarray, h5py.Dataset)):
        return x
    return np.asarray(x)


def check_str(value: Any, what: str) -> Optional[str]:
    """None, or a str (TypeError naming ``what`` otherwise)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, got {type(value).__name__}")
    return value
