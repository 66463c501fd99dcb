"""Activations files (``format = "compexp-activations"``, ``docs/FORMAT.md`` §1 and §1.1).

An activations file holds one dataset ``acts`` of shape ``[N, U, h, w]`` (feature maps) or
``[N, U]`` (one value per unit and sample), float16/32/64 or bool, plus optional provenance
(``model``, ``layer``, ``dataset``) and ``unit_names``. ``acts`` is chunked in one of two
layouts (readers accept both, and any other): ``"samples"`` (the default; a chunk holds every
unit of a few samples, so a batch of samples is read cheaply) or ``"units"`` (a chunk holds a
few units of many samples, so a group of units, a shard of a distributed search, is read
without reading the rest of the file). :func:`rechunk_activations` turns one into the other in
one pass.

Every activations file is written by one class, :class:`ActivationsWriter`, a batch of samples
at a time: :func:`save_activations` hands it an array a few chunks at a time, and extraction
(:func:`compexp_core.extract.extract_activations`) hands it each batch of model outputs. The
writer either writes into an anonymous temporary file, removed on any failure, or
(``resumable=True``) into ``<path>.partial`` (``format = "compexp-activations-partial"``),
which records how many samples are done after every batch and is kept when the run fails, so
that a later run continues from it. Either way the file is renamed onto ``path`` only when
all N samples are in. Token-level activations (``tokens=True``) bring each block's rows of a
:class:`~compexp_core.io.tokens.TokenTable`, appended to the file's ``tokens`` group and
truncated with ``acts`` on resume, so the two never disagree.

Examples:
    >>> import os, tempfile
    >>> import numpy as np
    >>> d = tempfile.mkdtemp()
    >>> save_activations(os.path.join(d, "acts.h5"), np.ones((4, 3, 2, 2), np.float32),
    ...                  layer="layer4")
    >>> open_activations(os.path.join(d, "acts.h5")).shape
    (4, 3, 2, 2)

    Writing batch by batch, as extraction does:

    >>> p = os.path.join(d, "batches.h5")
    >>> with ActivationsWriter(p, n_samples=6, dtype="float32", layer="fc") as w:
    ...     for start in range(0, 6, 4):
    ...         w.write(start, np.zeros((min(4, 6 - start), 5), np.float32))
    ...     w.finish()
    >>> read_activations_metadata(p)["shape"]
    (6, 5)
"""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence, Union

import h5py
import numpy as np

from ..engine.concepts import check_strings
from . import _h5
from ._h5 import ACTIVATIONS_FORMAT, FORMAT_VERSION, PARTIAL_ACTIVATIONS_FORMAT, PathLike
from .tokens import TokenTable, append_tokens, read_tokens, tokens_written, truncate_tokens

__all__ = ["save_activations", "open_activations", "load_activations",
           "read_activations_metadata", "ActivationsWriter", "PARTIAL_SUFFIX",
           "rechunk_activations", "activations_layout", "LAYOUTS"]

#: A resumable write in progress goes to ``path + PARTIAL_SUFFIX``.
PARTIAL_SUFFIX = ".partial"

ACTS_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64), np.dtype(bool))

# Root attributes only a partial file has; removed when it becomes the finished file.
_PARTIAL_ONLY_ATTRS = ("n_done", "n_samples", "dtype")
_PROVENANCE = ("model", "layer", "dataset")

#: Chunk layouts of ``acts``: ``"samples"`` (chunks span every unit of a few samples) or
#: ``"units"`` (chunks span a few units of many samples).
LAYOUTS = ("samples", "units")

#: Memory a rechunking step may hold (one slab of samples with all their units).
RECHUNK_MEMORY_BYTES = 256 << 20


def _check_layout(layout: Any) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")
    return layout


def _unit_major_chunks(rows: int, sample_shape: tuple, itemsize: int,
                       chunk_bytes: int = _h5.CHUNK_TARGET_BYTES) -> tuple:
    """Chunk shape ``(rows, k, h, w)`` / ``(rows, k)`` of the ``"units"`` layout: ``rows``
    samples of as many units as make about ``chunk_bytes`` (at least one), so that reading a
    range of units reads only the chunks of those units (and a few neighbours)."""
    u, maps = sample_shape[0], sample_shape[1:]
    unit_bytes = rows * int(np.prod(maps, dtype=np.int64)) * itemsize
    k = max(1, min(u, chunk_bytes // max(1, unit_bytes)))
    return (rows, k) + tuple(maps)


# =============================================================================== the writer

class ActivationsWriter:
    """Writes one activations file a batch of samples at a time.

    The dataset ``acts`` is created at the first :meth:`write`, whose block tells the shape
    ``[U, h, w]`` (or ``[U]``) of a sample; every later block must have the same. Values must
    be finite (checked block by block). :meth:`finish` completes the file and renames it onto
    ``path``; :meth:`close` (or leaving the ``with`` block) without :meth:`finish` abandons
    it.

    Args:
        path: the activations file to write (replaced when complete).
        n_samples: N.
        dtype: float16, float32, float64 or bool; blocks are converted to it.
        model, layer, dataset: optional provenance strings (root attributes).
        unit_names: optional U strings, written by :meth:`finish`.
        chunk_samples: samples per HDF5 chunk. Default: about 2 MiB per chunk, or, with
            ``batch_size``, the largest divisor of the batch size within about 2 MiB, so that
            each batch fills whole chunks.
        batch_size: the number of samples each :meth:`write` brings (a chunking hint).
        compression: HDF5 compression of ``acts`` (``"gzip"``, ``"lzf"``, a gzip level).
        layout: ``"samples"`` (default: a chunk holds all units of ``chunk_samples`` samples)
            or ``"units"``: a chunk holds a few units (about 2 MiB) of ``chunk_samples``
            samples, by default ``batch_size`` samples (each batch fills whole chunks) or about
            64 MiB of samples. Units-major files let a distributed search read one shard's
            units only; with small batches prefer a sample-major extraction followed by
            :func:`rechunk_activations`, whose chunks span more samples.
        resumable: write into ``path + PARTIAL_SUFFIX`` (``docs/FORMAT.md`` §1.1), record
            ``n_done`` after every write, keep it when abandoned, and allow :meth:`resume`.
            Otherwise the file goes to an anonymous temporary file that an abandoned write
            removes.
        tokens: token-level activations (``[N_tokens, U]``): every :meth:`write` brings the
            :class:`~compexp_core.io.tokens.TokenTable` rows of its block, kept in the
            ``tokens`` group (``docs/FORMAT.md`` §1.2) in step with ``acts``.
        chunk_bytes: the target size of one HDF5 chunk (default about 2 MiB).
    """

    def __init__(self, path: PathLike, *, n_samples: int, dtype: Any,
                 model: Optional[str] = None, layer: Optional[str] = None,
                 dataset: Optional[str] = None, unit_names: Optional[Sequence[str]] = None,
                 chunk_samples: Optional[int] = None, batch_size: Optional[int] = None,
                 compression: Optional[Union[str, int]] = None, resumable: bool = False,
                 layout: str = "samples", tokens: bool = False,
                 chunk_bytes: int = _h5.CHUNK_TARGET_BYTES) -> None:
        self.path = os.fspath(path)
        self.tokens = bool(tokens)
        self.layout = _check_layout(layout)
        self._chunk_bytes = int(chunk_bytes)
        if self._chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be >= 1, got {chunk_bytes}")
        self.n_samples = int(n_samples)
        self.dtype = np.dtype(dtype)
        if self.dtype not in ACTS_DTYPES:
            raise TypeError(f"acts must be float16, float32, float64 or bool, got dtype "
                            f"{self.dtype}")
        self.provenance = {"model": _h5.check_str(model, "model"),
                           "layer": _h5.check_str(layer, "layer"),
                           "dataset": _h5.check_str(dataset, "dataset")}
        self.unit_names = None if unit_names is None else list(unit_names)
        for name in self.unit_names or ():
            if isinstance(name, str):           # the rest: TypeError in finish()
                _h5.check_text(name, "unit_names")
        self.chunk_samples = (None if chunk_samples is None
                              else _h5.check_chunk_samples(chunk_samples))
        self.batch_size = batch_size
        self.compression = compression
        self.resumable = resumable
        self.temp = self.path + PARTIAL_SUFFIX if resumable else _h5.temp_path(self.path)
        self.n_done = 0
        self._durable = 0        # samples recorded in the partial file on disk
        self._discard = False    # a failed resumable write with nothing worth resuming
        self._file: Optional[h5py.File] = None
        self._acts: Optional[h5py.Dataset] = None

    def __enter__(self) -> "ActivationsWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -------------------------------------------------------------------------- resume
    def _expected_attrs(self) -> dict:
        """The partial file's attributes that must match for a resume, in the order checked."""
        out = {k: v for k, v in self.provenance.items() if v is not None}
        out["n_samples"] = self.n_samples
        out["dtype"] = self.dtype.name
        return out

    def resume(self) -> int:
        """Reopen the partial file of an earlier, interrupted run (``resumable=True`` only) and
        return its ``n_done``: samples ``0 .. n_done-1`` are in it (0 when there is no partial
        file; :meth:`write` then starts a new one).

        Raises:
            ValueError: the partial file is not readable, not a partial activations file, or
                was written for another model, layer, dataset, N or dtype (the message names
                the one that differs).
        """
        if not self.resumable:
            raise ValueError("resume() needs an ActivationsWriter made with resumable=True")
        self.close()
        p = self.temp
        if not os.path.exists(p):
            return 0
        try:
            f = _h5.open_update(p, target=self.path)
        except ValueError as e:
            raise ValueError(f"cannot resume from '{p}': {e}; delete it or run without "
                             f"resume") from None
        try:
            with _h5.reading(p):
                acts, n_done = self._check_partial(f, p)
        except BaseException:
            _h5.abandon(f)
            raise
        self._file, self._acts, self.n_done = f, acts, n_done
        self._durable = n_done
        return n_done

    def _check_partial(self, f: h5py.File, p: str) -> tuple:
        found = _h5.format_of(f)
        if found != PARTIAL_ACTIVATIONS_FORMAT:
            raise ValueError(f"cannot resume from '{p}': it is not a partial activations file "
                             f"(format = {found!r}, expected '{PARTIAL_ACTIVATIONS_FORMAT}')")
        for key, want in self._expected_attrs().items():
            have = f.attrs.get(key)
            have = None if have is None else (
                int(have) if key == "n_samples" else _h5.attr_str(have))
            if have != want:
                raise ValueError(f"cannot resume from '{p}': it was written for {key} "
                                 f"{have!r}, this extraction has {key} {want!r}; run "
                                 f"without resume to start over")
        acts = f.get("acts")
        n = self.n_samples
        if (not isinstance(acts, h5py.Dataset) or acts.ndim not in (2, 4)
                or acts.shape[0] != n or acts.dtype != self.dtype):
            raise ValueError(f"cannot resume from '{p}': its dataset 'acts' is missing or "
                             f"does not hold {n} samples of {self.dtype.name}")
        n_done = int(np.asarray(f.attrs.get("n_done", -1)).reshape(-1)[0])
        if not 0 <= n_done <= n:
            raise ValueError(f"cannot resume from '{p}': attribute n_done = {n_done} is "
                             f"outside 0..{n}")
        if self.tokens:
            have = tokens_written(f)
            if have < n_done:
                raise ValueError(f"cannot resume from '{p}': its tokens group holds {have} "
                                 f"rows but n_done = {n_done}; run without resume to start "
                                 f"over")
            # Rows of a batch that failed after its tokens were appended are not done.
            truncate_tokens(f, n_done)
        return acts, n_done

    # -------------------------------------------------------------------------- writing
    def _create(self, sample_shape: tuple) -> None:
        n = self.n_samples
        shape = (n,) + sample_shape
        row_bytes = int(np.prod(sample_shape)) * self.dtype.itemsize
        if self.layout == "units":
            rows = self.chunk_samples or self.batch_size or _h5.io_rows(n, row_bytes, 1)
            chunks = _unit_major_chunks(min(n, int(rows)), sample_shape, self.dtype.itemsize,
                                        self._chunk_bytes)
        elif self.chunk_samples is None and self.batch_size is not None:
            chunks = (_h5.batch_chunk_rows(self.batch_size, n, row_bytes),) + sample_shape
        else:
            chunks = (_h5.chunk_rows(n, row_bytes, self.chunk_samples),) + sample_shape
        _h5.check_writable(self.path)
        # a resumable write replaces a stale partial file
        f = _h5.create(self.temp, target=self.path)
        kwargs = {}
        if self.resumable and self.compression is None:
            # All chunks allocated now (on disk: a sparse file), so that writing a batch
            # changes raw data only: a partial file whose last batch failed is consistent.
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
            kwargs = {"dcpl": dcpl, "fill_time": "never"}
        try:
            _h5.set_text(f.attrs, "format", PARTIAL_ACTIVATIONS_FORMAT)
            f.attrs["version"] = np.int64(FORMAT_VERSION)
            for key, value in self._expected_attrs().items():
                if key == "n_samples":
                    f.attrs[key] = np.int64(value)
                else:
                    _h5.set_text(f.attrs, key, value)
            f.attrs["n_done"] = np.int64(0)
            self._acts = f.create_dataset("acts", shape=shape, dtype=self.dtype,
                                          chunks=chunks,
                                          compression=self.compression, **kwargs)
            _h5.check_io(f)
        except BaseException:
            _h5.abandon(f)
            _h5.discard(self.temp)
            raise
        self._file = f

    @property
    def chunks(self) -> Optional[tuple]:
        """The HDF5 chunk shape of ``acts`` (None before the first write)."""
        return None if self._acts is None else self._acts.chunks

    def write(self, start: int, block: Any, tokens: Optional[TokenTable] = None) -> None:
        """Write samples ``start .. start + len(block) - 1`` (``block``: ``[B, U, h, w]`` or
        ``[B, U]``) and record them as done.

        With ``tokens=True`` at construction, ``tokens`` is the block's B rows of the token
        table; token rows from ``start`` on that an earlier write left are replaced.

        Raises:
            ValueError: the block leaves the N samples, has another sample shape than the
                blocks before (or than the partial file being resumed), or holds NaN or
                infinity (the message gives the index of the first); token rows missing,
                unexpected, of another count than the block's, or leaving a gap after the
                rows written.
        """
        block = np.asarray(block)
        end = start + block.shape[0]
        if block.ndim not in (2, 4) or start < 0 or end > self.n_samples:
            raise ValueError(f"a block of acts must be [B, U, h, w] or [B, U] within the "
                             f"{self.n_samples} samples, got shape {block.shape} at sample "
                             f"{start}")
        if self.tokens != (tokens is not None):
            raise ValueError("token rows must come with every block of a writer made with "
                             "tokens=True, and only then" if self.tokens else
                             "token rows given to a writer made without tokens=True")
        if tokens is not None and len(tokens) != block.shape[0]:
            raise ValueError(f"a block of {block.shape[0]} rows at row {start} came with "
                             f"{len(tokens)} token rows")
        if self._file is None:
            self._create(block.shape[1:])
        assert self._acts is not None and self._file is not None
        if self._acts.shape[1:] != block.shape[1:]:
            who = f"layer '{self.provenance['layer']}'" if self.provenance["layer"] else "acts"
            raise ValueError(f"{who} gives [U, h, w] = {block.shape[1:]} on samples "
                             f"{start}..{end - 1} but {self._acts.shape[1:]} on the samples "
                             f"before (in '{self.temp}'); all inputs must give maps of one "
                             f"size")
        if block.dtype != self.dtype:
            block = block.astype(self.dtype)
        if self.dtype.kind == "f":
            finite = np.isfinite(block)
            if not finite.all():
                bad = tuple(int(i) for i in np.argwhere(~finite)[0])
                raise ValueError(f"acts holds non-finite values (NaN or infinity), the first "
                                 f"at index {(bad[0] + start,) + bad[1:]}: {block[bad]}")
        if tokens is not None and tokens_written(self._file) < start:
            raise ValueError(f"token rows for rows {start}..{end - 1} would leave a gap: only "
                             f"{tokens_written(self._file)} token rows are written")
        try:
            self._acts[start:end] = block
            if tokens is not None:
                truncate_tokens(self._file, start)   # rows written again replace the old
                append_tokens(self._file, tokens)
            _h5.check_io(self._file)          # a full disk stops the write here
            self._file.attrs["n_done"] = np.int64(end)
            if self.resumable:
                self._file.flush()  # n_done on disk never counts samples that are not
                _h5.check_io(self._file)
        except _h5.WriteError:
            self._discard = self._durable == 0   # nothing to resume from
            raise
        self.n_done = end
        if self.resumable:
            self._durable = end

    def finish(self) -> None:
        """Turn the complete file into the activations file at ``path`` (``docs/FORMAT.md``
        §1): partial-only attributes removed, ``unit_names`` written, flushed to disk and
        renamed onto ``path``.

        Raises:
            ValueError: fewer than N samples were written; ``unit_names`` does not have U
                entries (the file is then abandoned, see :meth:`close`).
        """
        if self._file is None or self.n_done != self.n_samples:
            raise ValueError(f"'{self.path}' is incomplete: {self.n_done} of "
                             f"{self.n_samples} samples written")
        f = self._file
        assert self._acts is not None
        if self.tokens and tokens_written(f) != self.n_samples:
            raise ValueError(f"'{self.path}' is incomplete: {tokens_written(f)} token rows "
                             f"for {self.n_samples} rows of acts")
        if self.unit_names is not None:
            names = check_strings(self.unit_names, self._acts.shape[1], "unit_names")
            _h5.write_strings(f, "unit_names", names)
        for key in _PARTIAL_ONLY_ATTRS:
            if key in f.attrs:
                del f.attrs[key]
        _h5.set_text(f.attrs, "format", ACTIVATIONS_FORMAT)
        self._file = self._acts = None
        try:
            try:
                _h5.close(f)
            except BaseException:
                _h5.abandon(f)
                raise
            _h5.commit(self.temp, self.path)
        except BaseException as e:
            if not self.resumable:
                _h5.discard(self.temp)
            if isinstance(e, OSError) and not isinstance(e, _h5.WriteError) \
                    and e.errno in _h5.NO_ROOM_ERRNOS:
                raise _h5.write_error(e, self.path) from e
            raise

    def close(self) -> None:
        """Close the file without finishing it: a resumable write keeps its partial file (for
        :meth:`resume`), any other is removed. Does nothing after :meth:`finish`."""
        f, self._file, self._acts = self._file, None, None
        _h5.abandon(f)
        if not self.resumable or self._discard:
            _h5.discard(self.temp)


# =============================================================================== save

def save_activations(path: PathLike, acts: Any, *, model: Optional[str] = None,
                     layer: Optional[str] = None, dataset: Optional[str] = None,
                     unit_names: Optional[Sequence[str]] = None,
                     chunk_samples: Optional[int] = None,
                     compression: Optional[Union[str, int]] = None,
                     layout: str = "samples") -> None:
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
        layout: ``"samples"`` (chunks hold every unit of a few samples) or ``"units"`` (chunks
            hold a few units of ``chunk_samples`` samples, by default about 64 MiB of samples:
            what a distributed search reads shard by shard; see :class:`ActivationsWriter`).

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
    acts = _h5.array_like(acts, "acts")
    dtype = np.dtype(acts.dtype)
    if acts.ndim not in (2, 4):
        raise ValueError(f"acts must be [N, U, h, w] or [N, U], got shape {tuple(acts.shape)}")
    if dtype not in ACTS_DTYPES:
        raise TypeError(f"acts must be float16, float32, float64 or bool, got dtype {dtype}")
    if any(int(s) < 1 for s in acts.shape):
        raise ValueError(f"acts must have N >= 1 samples, U >= 1 units and non-empty maps, got "
                         f"shape {tuple(acts.shape)}")
    shape = tuple(int(s) for s in acts.shape)
    n, u = shape[0], shape[1]
    if unit_names is not None:
        unit_names = [_h5.check_text(t, "unit_names")
                      for t in check_strings(unit_names, u, "unit_names")]
    with ActivationsWriter(path, n_samples=n, dtype=dtype, model=model, layer=layer,
                           dataset=dataset, unit_names=unit_names, chunk_samples=chunk_samples,
                           compression=compression, layout=layout) as writer:
        row_bytes = int(np.prod(shape[1:])) * dtype.itemsize
        step = _h5.io_rows(n, row_bytes, _h5.chunk_rows(n, row_bytes, chunk_samples))
        if layout == "units":
            # Whole chunks of samples per write: a chunk is written once, never read back.
            step = chunk_samples or _h5.io_rows(n, row_bytes, 1)
        for s in range(0, n, step):
            writer.write(s, np.asarray(acts[s:s + step]))
        writer.finish()


# =============================================================================== rechunk

def rechunk_activations(src: PathLike, dst: PathLike, *, layout: str = "units",
                        memory_bytes: int = RECHUNK_MEMORY_BYTES,
                        chunk_bytes: int = _h5.CHUNK_TARGET_BYTES,
                        compression: Optional[Union[str, int]] = None) -> None:
    """Copy an activations file into another chunk layout, in one pass with bounded memory.

    The source is read a slab of samples at a time (every unit of at most ``memory_bytes`` of
    samples), each slab fills whole chunks of the destination (so no chunk is written twice or
    read back), and the destination is written into a temporary file renamed onto ``dst`` when
    complete. Provenance and ``unit_names`` are copied; the values are copied unchanged.

    Args:
        src: an activations file (any layout).
        dst: the file to write (replaced if it exists); not ``src``.
        layout: ``"units"`` (default: chunks of a few units spanning the slab's samples, which
            a distributed search reads shard by shard) or ``"samples"``.
        memory_bytes: the most bytes of activations held at once (one slab); larger slabs
            give units-major chunks that span more samples. At least one sample is read.
        chunk_bytes: with ``layout="units"``, about how many bytes a chunk holds (2 MiB by
            default; at least one unit of a slab): fewer units per chunk make smaller shards
            cheap to read.
        compression: HDF5 compression of the new ``acts``.

    Raises:
        ValueError: ``dst`` is ``src``; an unknown layout; ``memory_bytes`` or ``chunk_bytes``
            < 1; the errors of
            :func:`open_activations` for ``src``.

    Examples:
        >>> import os, tempfile
        >>> import numpy as np
        >>> d = tempfile.mkdtemp()
        >>> save_activations(os.path.join(d, "a.h5"), np.ones((100, 8, 2, 2), np.float32))
        >>> rechunk_activations(os.path.join(d, "a.h5"), os.path.join(d, "b.h5"),
        ...                     memory_bytes=40 * 8 * 16)
        >>> ds = open_activations(os.path.join(d, "b.h5"))
        >>> ds.chunks                     # 40 samples of 8 units (all that fit in 2 MiB)
        (40, 8, 2, 2)
        >>> ds.file.close()
    """
    _check_layout(layout)
    for what, value in (("memory_bytes", memory_bytes), ("chunk_bytes", chunk_bytes)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{what} must be a whole number of bytes >= 1, got {value!r}")
    s, d = os.fspath(src), os.fspath(dst)
    if os.path.abspath(s) == os.path.abspath(d):
        raise ValueError(f"rechunk_activations: dst is the source file '{s}'; write to another "
                         f"path (and rename it afterwards if you want)")
    meta = read_activations_metadata(s)
    ds = open_activations(s)
    try:
        with _h5.reading(s):
            n, shape = ds.shape[0], tuple(ds.shape[1:])
            row_bytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(ds.dtype).itemsize
            rows = max(1, min(n, int(memory_bytes) // max(1, row_bytes)))
            # Token-level activations keep their token table, row for row.
            tokens = read_tokens(ds.file, s)
            with ActivationsWriter(d, n_samples=n, dtype=ds.dtype, model=meta["model"],
                                   layer=meta["layer"], dataset=meta["dataset"],
                                   unit_names=meta["unit_names"],
                                   chunk_samples=rows if layout == "units" else None,
                                   compression=compression, layout=layout,
                                   tokens=tokens is not None,
                                   chunk_bytes=chunk_bytes) as writer:
                for start in range(0, n, rows):
                    writer.write(start, ds[start:start + rows], None if tokens is None
                                 else tokens.rows(start, start + rows))
                writer.finish()
    finally:
        _h5.close_reader(ds.file)


def activations_layout(ds: h5py.Dataset) -> str:
    """The chunk layout of an ``acts`` dataset: ``"units"`` when a chunk holds fewer than all
    units (or there is one unit), so a range of units is read without the rest;
    ``"samples"`` when every chunk spans all units (reading any unit reads whole samples);
    ``"contiguous"`` for an unchunked dataset (a unit range is read as strided pieces).

    Examples:
        >>> import os, tempfile
        >>> import numpy as np
        >>> p = os.path.join(tempfile.mkdtemp(), "a.h5")
        >>> save_activations(p, np.ones((10, 4), np.float32))
        >>> ds = open_activations(p); activations_layout(ds)
        'samples'
        >>> ds.file.close()
    """
    if ds.chunks is None:
        return "contiguous"
    return "units" if ds.chunks[1] < ds.shape[1] or ds.shape[1] == 1 else "samples"


# =============================================================================== read

def validated_acts(f: h5py.File, path: str) -> h5py.Dataset:
    """The ``acts`` dataset of an open activations file, its format and shape checked."""
    _h5.check_format(f, path, ACTIVATIONS_FORMAT, lenient_if="acts")
    ds = _h5.get(f, "acts", path, h5py.Dataset)
    if ds.ndim not in (2, 4):
        raise ValueError(f"'{path}': dataset 'acts' must be [N, U, h, w] or [N, U], found shape "
                         f"{ds.shape}")
    if np.dtype(ds.dtype) not in ACTS_DTYPES:
        raise ValueError(f"'{path}': dataset 'acts' must be float16, float32, float64 or bool, "
                         f"found dtype {ds.dtype}")
    if any(s < 1 for s in ds.shape):
        raise ValueError(f"'{path}': dataset 'acts' must have N >= 1 samples, U >= 1 units and "
                         f"non-empty maps, found shape {ds.shape}")
    un = _h5.get(f, "unit_names", path, h5py.Dataset, required=False)
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
    return _h5.open_dataset(path, validated_acts)


def load_activations(path: PathLike) -> np.ndarray:
    """Read the whole ``acts`` dataset of an activations file into memory (small files).

    Args:
        path: the activations file.

    Returns:
        ``acts`` as a NumPy array of the stored dtype.

    Raises:
        The errors of :func:`open_activations`.
    """
    p = os.fspath(path)
    ds = open_activations(p)
    try:
        with _h5.reading(p):
            return ds[()]
    finally:
        _h5.close_reader(ds.file)


def read_activations_metadata(path: PathLike) -> dict:
    """Shape, dtype and provenance of an activations file, without reading ``acts``.

    Returns:
        A dict with keys ``shape`` (tuple), ``dtype`` (NumPy dtype), ``model``, ``layer``,
        ``dataset`` (strings or None) and ``unit_names`` (list of U strings, or None).
    """
    p = os.fspath(path)
    ds = open_activations(p)
    f = ds.file
    try:
        with _h5.reading(p):
            meta = {"shape": tuple(ds.shape), "dtype": np.dtype(ds.dtype)}
            for key in _PROVENANCE:
                meta[key] = _h5.attr_str(f.attrs[key]) if key in f.attrs else None
            un = _h5.get(f, "unit_names", p, h5py.Dataset, required=False)
            meta["unit_names"] = None if un is None else _h5.read_strings(un, p, "unit_names")
            return meta
    finally:
        _h5.close_reader(f)
