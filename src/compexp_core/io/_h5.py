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
  file (its ``format`` is :data:`INCOMPLETE_FORMAT` until the write has finished),
  :func:`atomic_path` for any file (CSV), :func:`commit` for a temporary file kept across
  calls (the resumable activations writer). :func:`scratch_file` is a temporary HDF5 file
  that is always removed. :func:`check_writable` checks a target before any work.
* **Failed writes.** HDF5 never sees a failed write (it cannot recover from one and may
  crash at exit): it writes through a guard that records the first failure and drops the
  rest; the writer then raises :class:`WriteError` (an :class:`OSError` naming the target,
  "the disk is full or the file is too large") and removes the temporary file. Ctrl-C during
  a write acts as usual, but never inside HDF5's write callbacks.
* **Layout.** Text attributes and string datasets are fixed-length UTF-8 (:func:`set_text`,
  :func:`write_strings`): variable-length strings live in HDF5's global heap, where a corrupt
  block makes the library loop forever. Metadata datasets carry Fletcher-32 checksums
  (:func:`write_array`), and files use the HDF5 1.8 format (:data:`LIBVER`), whose object
  headers are checksummed, so corruption is reported rather than read as data.
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
    >>> with writing(p, CONCEPTS_FORMAT) as f:
    ...     _ = write_strings(f, "concept_names", ["a", "b"])
    >>> try:
    ...     with writing(p, RESULTS_FORMAT) as f:
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

import _thread
import atexit
import contextlib
import errno
import io
import os
import signal
import threading
import uuid
import weakref
import zlib
from typing import Any, Callable, Iterator, Optional, Union

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

#: ``errno`` values that mean there is no room for the file.
NO_ROOM_ERRNOS = frozenset(e for e in (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", None))
                           if e is not None)

#: The ``format`` of a file being written: the final ``format`` is set only when the file is
#: complete, so a half-written file (a temporary file left by a killed process) is refused.
INCOMPLETE_FORMAT = "compexp-incomplete"


class WriteError(OSError):
    """Writing a file failed (the disk is full, the file is too large, an I/O error): raised
    by every writer instead of the low-level error, which is its ``__cause__``. The message
    names the file; any previous file at that path is unchanged."""


def write_error(err: BaseException, target: PathLike) -> WriteError:
    """The :class:`WriteError` for ``err`` met while writing ``target``."""
    target = os.fspath(target)
    code = getattr(err, "errno", None)
    reason = getattr(err, "strerror", None) or str(err)
    if code in NO_ROOM_ERRNOS:
        why = f"the disk is full or the file is too large ({reason})"
    else:
        why = f"a write failed ({reason})"
    out = WriteError(code if code is not None else errno.EIO,
                     f"cannot write '{target}': {why}; nothing was written there and any "
                     f"previous file at that path is unchanged")
    out.target = target
    return out


def temp_path(path: PathLike, tag: str = "tmp") -> str:
    """A fresh temporary file name beside ``path``: ``.<name>.<random>.<tag>``."""
    d, name = os.path.split(os.path.abspath(os.fspath(path)))
    return os.path.join(d, f".{name}.{uuid.uuid4().hex[:12]}.{tag}")


def discard(tmp: PathLike) -> None:
    """Remove a temporary file if it exists (never raises)."""
    with contextlib.suppress(OSError):
        os.unlink(tmp)


def check_writable(path: PathLike, *, probe: bool = False) -> str:
    """Check that a file can be written at ``path`` (replacing any file there), before any
    work is done: ``path`` is not a directory, its directory exists, and (``probe``) a file
    can be created in it (a temporary file, removed at once).

    Raises:
        IsADirectoryError: ``path`` is a directory.
        FileNotFoundError: its directory does not exist.
        NotADirectoryError: its "directory" is a file.
        PermissionError / OSError: (``probe``) no file can be created in the directory.
    """
    p = os.fspath(path)
    if os.path.isdir(p):
        raise IsADirectoryError(errno.EISDIR, f"cannot write '{p}': it is a directory", p)
    d = os.path.dirname(os.path.abspath(p))
    if not os.path.exists(d):
        raise FileNotFoundError(errno.ENOENT, f"cannot write '{p}': its directory '{d}' does "
                                              f"not exist", p)
    if not os.path.isdir(d):
        raise NotADirectoryError(errno.ENOTDIR, f"cannot write '{p}': '{d}' is not a "
                                                f"directory", p)
    if probe:
        tmp = temp_path(p, "probe")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as e:
            raise type(e)(e.errno, f"cannot write '{p}': no file can be created in '{d}' "
                                   f"({e.strerror})", p) from None
        os.close(fd)
        discard(tmp)
    return p


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
    on success it is committed onto ``path`` (:func:`commit`), on any failure removed. A full
    disk (or any other failed write) raises :class:`WriteError` naming ``path``."""
    target = check_writable(path)
    tmp = temp_path(target)
    try:
        yield tmp
        commit(tmp, target)
    except BaseException as e:
        discard(tmp)
        if isinstance(e, OSError) and not isinstance(e, WriteError) \
                and e.errno in NO_ROOM_ERRNOS | {errno.EIO}:
            raise write_error(e, target) from e
        raise


# ------------------------------------------------------------------------ guarded HDF5 files
#
# HDF5 does not survive a failed write: when flushing its caches fails (a full disk), closing
# the file fails too, the library keeps the half-closed objects and crashes the interpreter at
# exit while it tries to close them again. So HDF5 never sees a failed write here: every file
# compexp-core writes goes through h5py's "fileobj" driver to a _GuardedFile, which records the
# first OSError of a write and drops every later write, reporting success to HDF5. The writer
# raises the recorded error (as WriteError) at its next check (check_io) or when it closes
# the file (close), and removes the temporary file; HDF5 closes cleanly.
#
# A Python exception raised inside a driver callback would reach HDF5 as a failed write too.
# The only asynchronous one is KeyboardInterrupt (Ctrl-C): while a guarded file is open in
# the main thread, a SIGINT handler holds a signal that arrives during a callback back (it is
# delivered again every 10 ms until it lands outside a callback, where it acts as usual).

#: Called with the _GuardedFile at every write that reaches the disk (tests pause or
#: interrupt writes with it).
_write_hook: Optional[Callable[["_GuardedFile"], None]] = None


class _GuardedFile:
    """The file object HDF5 reads and writes through (h5py's ``fileobj`` driver)."""

    def __init__(self, path: str, target: str, *, create: bool, fail_reads: bool) -> None:
        self.name = path
        self.target = target
        self.fail_reads = fail_reads   # after a failed write, reads fail (scratch files)
        self.error: Optional[OSError] = None
        flags = os.O_RDWR | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
        if create:
            flags |= os.O_CREAT | os.O_TRUNC
        self._raw = io.FileIO(os.open(path, flags, 0o666), "r+", closefd=True)
        _sigint_shield_acquire(self)

    def __repr__(self) -> str:   # h5py names the HDF5 file after it
        return self.name

    # the driver's calls
    def seek(self, pos: int, whence: int = 0) -> int:
        return self._raw.seek(pos, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def readinto(self, buf) -> int:
        if self.error is not None and self.fail_reads:
            raise self.error
        return self._raw.readinto(buf)

    def read(self, n: int = -1) -> bytes:
        if self.error is not None and self.fail_reads:
            raise self.error
        return self._raw.read(n)

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        n = view.nbytes
        if self.error is None:
            try:
                if _write_hook is not None:
                    _write_hook(self)
                while view.nbytes:
                    k = self._raw.write(view)
                    if not k:
                        raise OSError(errno.EIO, "the disk accepted no bytes")
                    view = view[k:]
            except OSError as e:
                self.error = e
            except Exception as e:  # noqa: BLE001 - HDF5 must never see a failed write
                self.error = OSError(errno.EIO, f"{type(e).__name__}: {e}")
            except BaseException as e:  # a KeyboardInterrupt the shield could not hold back
                self.error = OSError(errno.EINTR, f"interrupted ({type(e).__name__})")
                if isinstance(e, KeyboardInterrupt):
                    _hold_sigint()
        if self.error is not None:   # dropped: keep the position HDF5 expects
            self._raw.seek(n, os.SEEK_CUR)
        return n

    def truncate(self, size: Optional[int] = None) -> int:
        if self.error is None:
            try:
                self._raw.truncate(size)
            except OSError as e:
                self.error = e
        return self.tell() if size is None else size

    def flush(self) -> None:
        pass  # durability comes from commit()'s fsync

    def close(self) -> None:
        try:
            self._raw.close()
        except OSError as e:
            if self.error is None:
                self.error = e
        _sigint_shield_release(self)


_WEAKREF_FILE = weakref.__file__
_GUARD_CODES = frozenset(getattr(_GuardedFile, name).__code__ for name in (
    "seek", "tell", "readinto", "read", "write", "truncate", "flush"))
_shield_lock = threading.Lock()
_shield_users: set = set()
_shield_previous: Any = None
_sigint_deferred = 0      # how often a SIGINT was held back (tests look at it)
# A SIGINT held back and not yet delivered; a delivery of it under way (interrupt_main). An
# RLock: the handler runs in the main thread, perhaps while that thread holds the lock.
_sigint_lock = threading.RLock()
_sigint_pending = False
_sigint_redelivery = False


def _sigint_shield(signum: int, frame: Any) -> None:
    """The SIGINT handler while guarded files are open in the main thread: inside a driver
    callback, hold the signal back (it is delivered at the writer's next check, or again in
    10 ms, until it lands outside a callback); elsewhere, do what the previous handler
    does."""
    global _sigint_pending, _sigint_redelivery
    with _sigint_lock:
        redelivered, _sigint_redelivery = _sigint_redelivery, False
    f = frame
    while f is not None:
        if f.f_code in _GUARD_CODES:
            _hold_sigint()
            return
        f = f.f_back
    if frame is not None and frame.f_code.co_filename == _WEAKREF_FILE:
        # in a weak reference's callback (h5py's object registry) an exception is ignored:
        # the interrupt would be lost, so it waits for the next check too
        _hold_sigint()
        return
    with _sigint_lock:
        was_pending, _sigint_pending = _sigint_pending, False
    if redelivered and not was_pending:
        return      # held back, and delivered meanwhile by interruption_point()
    _call_previous(signum, frame)


def _hold_sigint() -> None:
    global _sigint_deferred, _sigint_pending
    with _sigint_lock:
        _sigint_deferred += 1
        _sigint_pending = True
    _deliver_soon()


def _call_previous(signum: int, frame: Any) -> None:
    previous = _shield_previous
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)


def interruption_point() -> None:
    """Deliver a SIGINT held back during an HDF5 callback now (the writers call it between
    HDF5 calls, and before a file is committed): raises KeyboardInterrupt by default."""
    global _sigint_pending
    if not _sigint_pending or threading.current_thread() is not threading.main_thread():
        return
    with _sigint_lock:
        if not _sigint_pending:
            return
        _sigint_pending = False
    _call_previous(signal.SIGINT, None)


def _deliver_soon() -> None:
    """Deliver a held-back SIGINT to the main thread again in 10 ms."""
    timer = threading.Timer(0.01, _deliver_again)
    timer.daemon = True
    timer.start()


def _deliver_again() -> None:
    global _sigint_redelivery
    with _sigint_lock:
        if not _sigint_pending:
            return                       # delivered meanwhile
        _sigint_redelivery = True
    with contextlib.suppress(Exception):
        _thread.interrupt_main()         # SIGINT, handled as if it had just arrived


def _sigint_shield_acquire(guard: _GuardedFile) -> None:
    """Install the shield (main thread only: signals are handled there) while ``guard`` is
    open."""
    global _shield_previous
    if threading.current_thread() is not threading.main_thread():
        return
    with _shield_lock:
        current = signal.getsignal(signal.SIGINT)
        if current is not _sigint_shield:
            if current is None:    # a handler not installed from Python: leave it alone
                return
            try:
                signal.signal(signal.SIGINT, _sigint_shield)
            except ValueError:     # not the main interpreter
                return
            _shield_previous = current
        _shield_users.add(id(guard))


def _sigint_shield_release(guard: _GuardedFile) -> None:
    """Restore the previous SIGINT handler when the last guarded file is closed (from the
    main thread; elsewhere the shield stays, passing signals on to the previous handler)."""
    with _shield_lock:
        if id(guard) not in _shield_users:
            return
        _shield_users.discard(id(guard))
        if _shield_users or threading.current_thread() is not threading.main_thread():
            return
        with contextlib.suppress(ValueError):
            if signal.getsignal(signal.SIGINT) is _sigint_shield:
                signal.signal(signal.SIGINT, _shield_previous)


# The guarded files still open, closed at exit before HDF5 shuts down (HDF5 would otherwise
# close them from its own exit handler, calling into an interpreter that is gone).
# (Plain dicts: a weak-value dictionary runs Python code whenever an entry dies, where a
# Ctrl-C would be lost.)
_open_guards: dict = {}
_open_files: dict = {}


@atexit.register
def _close_guarded_files() -> None:
    for key, guard in list(_open_guards.items()):
        fid = _open_files.pop(key, None)
        fid = fid() if fid is not None else None
        if fid is not None and fid.valid:
            with contextlib.suppress(Exception):
                h5py.File(fid).close()
        guard.close()


def create(path: PathLike, *, target: Optional[PathLike] = None,
           scratch: bool = False) -> h5py.File:
    """A new, empty HDF5 file at ``path`` (replaced if it exists) that HDF5 writes through a
    guard (see above): close it with :func:`close` (or :func:`abandon`), check it with
    :func:`check_io`. ``target`` is the file it will become (named in errors). Callers write
    into temporary files only: see :func:`writing`."""
    return _open_guarded(os.fspath(path), target, "w", scratch)


def open_update(path: PathLike, *, target: Optional[PathLike] = None) -> h5py.File:
    """Open an existing HDF5 file to change it (``"r+"``), guarded like :func:`create`;
    errors as :func:`open_file`."""
    p = os.fspath(path)
    if not os.path.exists(p):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", p)
    try:
        return _open_guarded(p, target, "r+", False)
    except PermissionError:
        raise
    except OSError as e:
        raise ValueError(f"'{p}' is not a readable HDF5 file ({e})") from None


def _open_guarded(p: str, target: Optional[PathLike], mode: str, scratch: bool) -> h5py.File:
    guard = _GuardedFile(p, os.fspath(target) if target is not None else p,
                         create=(mode == "w"), fail_reads=scratch)
    try:
        f = h5py.File(guard, mode, libver=LIBVER)
    except BaseException:
        guard.close()
        raise
    f._compexp_guard = guard
    _open_guards[id(guard)] = guard
    _open_files[id(guard)] = weakref.ref(f.id)
    return f


def _guard_of(f: h5py.File) -> Optional[_GuardedFile]:
    return getattr(f, "_compexp_guard", None)


def check_io(f: h5py.File) -> None:
    """Raise :class:`WriteError` if a write into the guarded file ``f`` has failed (call it
    between writes so that a long write stops soon after the disk is full)."""
    guard = _guard_of(f)
    if guard is not None and guard.error is not None:
        raise write_error(guard.error, guard.target) from guard.error
    interruption_point()


def close(f: h5py.File) -> None:
    """Flush and close a guarded file; raise :class:`WriteError` if any write into it failed
    (the file is closed either way)."""
    guard = _guard_of(f)
    try:
        if f.id.valid:
            f.flush()
            f.close()
    finally:
        _forget(guard)
    if guard is not None and guard.error is not None:
        raise write_error(guard.error, guard.target) from guard.error
    interruption_point()


def abandon(f: Optional[h5py.File]) -> None:
    """Close a guarded file whose contents are given up (never raises)."""
    if f is None:
        return
    guard = _guard_of(f)
    with contextlib.suppress(Exception):
        if f.id.valid:
            f.close()
    _forget(guard)


def _forget(guard: Optional[_GuardedFile]) -> None:
    if guard is not None:
        _open_guards.pop(id(guard), None)
        _open_files.pop(id(guard), None)
        guard.close()


@contextlib.contextmanager
def writing(path: PathLike, format: Optional[str] = None) -> Iterator[h5py.File]:
    """Write an HDF5 file atomically: yields a new file (a temporary file beside ``path``),
    committed onto ``path`` when the block ends without error, removed otherwise.

    The file's ``format`` attribute is :data:`INCOMPLETE_FORMAT` until the block has ended;
    then it becomes ``format`` (when given), ``version`` is set, and the file is flushed and
    closed. A failed write (a full disk) raises :class:`WriteError` naming ``path``."""
    with atomic_path(path) as tmp:
        f = create(tmp, target=path)
        try:
            if format is not None:
                set_text(f.attrs, "format", INCOMPLETE_FORMAT)
                f.attrs["version"] = np.int64(FORMAT_VERSION)
            yield f
            check_io(f)
            if format is not None:
                set_text(f.attrs, "format", format)
            close(f)
        except BaseException as e:
            guard = _guard_of(f)
            abandon(f)
            if guard is not None and guard.error is not None and not isinstance(e, WriteError):
                # the failed write is the cause of whatever HDF5 or the writer raised next
                raise write_error(guard.error, path) from e
            raise


@contextlib.contextmanager
def scratch_file(beside: PathLike) -> Iterator[h5py.File]:
    """A scratch HDF5 file beside ``beside`` (same disk), removed afterwards, also on error.
    After a failed write (a full disk), reading the file fails too."""
    tmp = temp_path(beside, "scratch.tmp")
    f = create(tmp, scratch=True)
    try:
        yield f
        check_io(f)
    except BaseException as e:
        guard = _guard_of(f)
        if guard is not None and guard.error is not None and not isinstance(e, WriteError):
            raise write_error(guard.error, tmp) from e
        raise
    finally:
        abandon(f)
        discard(tmp)


# =============================================================================== layout

#: Files are written in the HDF5 1.8 file format (readable by HDF5 1.8 and later), whose
#: object headers and indices carry checksums.
LIBVER = ("v108", "v108")

# Datasets up to this size are one chunk (with a Fletcher-32 checksum).
_ONE_CHUNK_BYTES = 4 << 20

#: The attribute holding the CRC-32 of a dataset written by :func:`write_array`.
CHECKSUM_ATTR = "crc32"


def set_text(attrs: Any, name: str, value: str) -> None:
    """A text attribute as a fixed-length UTF-8 string, stored in the object header (never a
    variable-length string: those live in HDF5's global heap, where a corrupt block makes
    the library loop forever)."""
    data = check_text(value, f"attribute {name!r}").encode("utf-8")
    attrs.create(name, np.array(data, dtype=f"S{max(1, len(data))}"),
                 dtype=h5py.string_dtype("utf-8", max(1, len(data))))


def check_text(value: Any, what: str) -> str:
    """A str that can be written to a file: UTF-8 encodable, without NUL (ValueError /
    TypeError naming ``what``)."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, got {type(value).__name__}")
    if "\x00" in value:
        raise ValueError(f"{what} contains a NUL character (\\x00), which files cannot hold: "
                         f"{value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{what} is not valid Unicode text ({e.reason} at position "
                         f"{e.start}): {value!r}") from None
    return value


def _crc32(data: np.ndarray) -> int:
    data = np.ascontiguousarray(data)
    return zlib.crc32(memoryview(data).cast("B")) if data.size else zlib.crc32(b"")


def write_array(group: h5py.Group, name: str, data: Any, **kwargs: Any) -> h5py.Dataset:
    """A small or medium dataset (metadata, an index) with checksums, so that a corrupt block
    is reported on reading instead of read as data: the attribute :data:`CHECKSUM_ATTR`, the
    CRC-32 of its bytes (checked by :func:`read_array`; it also catches a zeroed block, which
    HDF5's own Fletcher-32 filter does not), and the Fletcher-32 filter (checked by HDF5):
    chunked, one chunk up to 4 MiB, else chunks of about 2 MiB along the first axis. Empty
    and scalar datasets are contiguous, without the filter."""
    data = np.asarray(data)
    if data.size == 0 or data.ndim == 0:
        ds = group.create_dataset(name, data=data, **kwargs)
    else:
        if data.nbytes <= _ONE_CHUNK_BYTES:
            chunks = data.shape
        else:
            row = max(1, data.nbytes // data.shape[0])
            chunks = (chunk_rows(data.shape[0], row),) + data.shape[1:]
        ds = group.create_dataset(name, data=data, chunks=chunks, fletcher32=True, **kwargs)
    ds.attrs[CHECKSUM_ATTR] = np.int64(_crc32(data))
    return ds


def read_array(ds: h5py.Dataset, path: str, name: str) -> np.ndarray:
    """The whole dataset ``ds`` (``name`` in the file ``path``), its :data:`CHECKSUM_ATTR`
    checked when it has one (files written by :func:`write_array`).

    Raises:
        ValueError: the contents do not match the checksum (the file is corrupt)."""
    data = ds[()]
    if CHECKSUM_ATTR in ds.attrs:
        want = np.asarray(ds.attrs[CHECKSUM_ATTR]).reshape(-1)
        if want.size != 1 or want.dtype.kind not in "iu" or int(want[0]) != _crc32(data):
            raise ValueError(f"'{path}': dataset '{name}' is corrupt: its contents do not match "
                             f"their CRC-32 checksum (attribute '{CHECKSUM_ATTR}')")
    return data


def write_strings(group: h5py.Group, name: str, values: Any) -> h5py.Dataset:
    """A string dataset holding ``values`` (any shape): fixed-length UTF-8, NUL-padded, with a
    Fletcher-32 checksum (no variable-length strings, see :func:`set_text`).

    Raises:
        ValueError / TypeError: a value is not a str, holds NUL or is not valid Unicode."""
    arr = np.asarray(values, dtype=object)
    encoded = [check_text(v, f"an entry of {name!r}").encode("utf-8") for v in arr.reshape(-1)]
    width = max([1] + [len(b) for b in encoded])
    dt = h5py.string_dtype("utf-8", width)
    data = np.array(encoded, dtype=f"S{width}").reshape(arr.shape)
    # gzip: the NUL padding of short strings next to long ones compresses away
    return write_array(group, name, data.astype(dt), dtype=dt,
                       **({"compression": "gzip"} if data.size else {}))


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
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except UnicodeDecodeError as e:
        raise ValueError(f"'{os.fspath(path)}' is not a readable HDF5 file: a string in it is "
                         f"not valid UTF-8 ({e}); it may be corrupt") from e
    except (OSError, RuntimeError, KeyError, TypeError, IndexError) as e:
        # h5py reports corrupt metadata as OSError, RuntimeError, KeyError or TypeError.
        raise ValueError(f"'{os.fspath(path)}' is not a readable HDF5 file: reading it failed "
                         f"({type(e).__name__}: {e}); it may be truncated or corrupt") from e
    except ValueError as e:
        if os.fspath(path) in str(e):
            raise
        raise ValueError(f"'{os.fspath(path)}': {e}") from e   # every message names the file


def close_reader(f: h5py.File) -> None:
    """Close a file opened for reading (a corrupt file may fail to close: never raises)."""
    with contextlib.suppress(Exception):
        f.close()


def open_dataset(path: PathLike, validate) -> h5py.Dataset:
    """Open ``path`` for reading and return ``validate(file, path)`` (a dataset left open for
    lazy reads); the file is closed when opening or validation fails."""
    p = os.fspath(path)
    f = open_file(p)
    try:
        with reading(p):
            return validate(f, p)
    except BaseException:
        close_reader(f)
        raise


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
    if found == INCOMPLETE_FORMAT:
        raise ValueError(f"'{path}' is an incomplete file (format = '{found}'): its write "
                         f"never finished, it is not a complete {expected} file")
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
        obj = f[name] if name in f else None   # (h5py's get() hides a corrupt object)
    except (KeyError, TypeError, ValueError, OSError, RuntimeError) as e:
        # the link is there but the object cannot be opened: corrupt, not missing
        raise ValueError(f"'{path}': '{name}' cannot be read ({type(e).__name__}: {e}); the "
                         f"file may be corrupt") from None
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
    """A 1-D string dataset (fixed- or variable-length) as a list of str, its checksum checked
    (:func:`read_array`), or ValueError naming it."""
    if h5py.check_string_dtype(ds.dtype) is None:
        raise ValueError(f"'{path}': dataset '{name}' must hold strings, found dtype {ds.dtype}")
    if ds.ndim != 1:
        raise ValueError(f"'{path}': dataset '{name}' must be 1-D, found shape {ds.shape}")
    return decode_strings(read_array(ds, path, name), path, name).tolist()


def decode_strings(data: np.ndarray, path: str, name: str) -> np.ndarray:
    """Strings read from a dataset (bytes, fixed- or variable-length) as an array of str."""
    out = np.empty(np.shape(data), dtype=object)
    flat = out.reshape(-1)
    for i, x in enumerate(np.asarray(data, dtype=object).reshape(-1)):
        try:
            flat[i] = x.decode("utf-8") if isinstance(x, (bytes, np.bytes_)) else str(x)
        except UnicodeDecodeError as e:
            raise ValueError(f"'{path}': dataset '{name}' holds a string that is not valid "
                             f"UTF-8 ({e}); the file may be corrupt") from None
    return out


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

def array_like(x: Any, what: str = "the array") -> Any:
    """Keep NumPy arrays (including memmaps) and open h5py datasets as they are (sliced
    lazily); convert anything else with ``np.asarray``.

    Raises:
        ValueError: ``x`` is an h5py dataset whose file is closed."""
    if isinstance(x, h5py.Dataset):
        return check_open(x, what)
    if isinstance(x, np.ndarray):
        return x
    return np.asarray(x)


def check_open(ds: Any, what: str) -> Any:
    """``ds``, or ValueError if it is an h5py dataset whose file has been closed."""
    if isinstance(ds, h5py.Dataset) and not ds.id.valid:
        raise ValueError(f"{what} is an h5py dataset whose file has been closed (a closed "
                         f"dataset cannot be read); open the file again, or keep it open while "
                         f"the dataset is used")
    return ds


def check_str(value: Any, what: str) -> Optional[str]:
    """None, or a str (TypeError naming ``what`` otherwise)."""
    if value is None:
        return None
    return check_text(value, what)
