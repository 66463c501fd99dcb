"""Concepts files (``format = "compexp-concepts"``, ``docs/FORMAT.md`` §2).

A concepts file names K concepts (and their categories) and defines one mask per concept over
the N·H·W cells, through *sources* (integer label maps per category, sample-level labels,
dense boolean masks; OR-ed together) and/or the already built block-sparse *index* of a
:class:`~compexp_core.engine.concepts.ConceptSet` (used as is when present).

The rules a source obeys (shapes that fit N, the grid and K; integer label maps whose values
all index ``concept_of_label``; concept indices in range; boolean masks) are checked in one
place, :class:`_SourceRules`, for the arrays :func:`write_concept_sources` is given and for
the datasets :func:`load_concepts` reads alike; only the wording differs (argument names for
the writer, the file and dataset paths for the reader). Sources are moved a few chunks of
samples at a time, so no label map or mask tensor is ever in memory whole.

Examples:
    >>> import os, tempfile
    >>> import numpy as np
    >>> from compexp_core.engine.concepts import ConceptSet
    >>> d = tempfile.mkdtemp()
    >>> cs = ConceptSet.from_dense(np.eye(4, dtype=bool)[:, :, None, None], names=list("abcd"))
    >>> save_concepts(os.path.join(d, "concepts.h5"), cs)
    >>> load_concepts(os.path.join(d, "concepts.h5")).names
    ('a', 'b', 'c', 'd')
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import h5py
import numpy as np

from ..engine.concepts import (BLOCK_WORDS, ConceptSet, ConceptSetBuilder, check_names, check_strings,
                               index_array)
from . import _h5
from ._h5 import CONCEPTS_FORMAT, PathLike

__all__ = ["write_concept_sources", "save_concepts", "load_concepts"]

INDEX_DATASETS = (
    # name, dtype kind(s) accepted, required dtype, ndim
    ("block_ptr", "iu", np.int64, 1),
    ("entry_concept", "iu", np.int32, 1),
    ("entry_words", "iu", np.uint64, 2),
    ("full_ptr", "iu", np.int64, 1),
    ("full_concept", "iu", np.int32, 1),
)


# =============================================================================== source rules

class _Arguments:
    """How :class:`_SourceRules` words problems with the arguments of a writer."""

    type_error = TypeError

    @staticmethod
    def name(group: str, part: str) -> str:
        if group.startswith("label_maps/"):
            return f"label_maps[{group[len('label_maps/'):]!r}] {part}"
        return f"{group} {part}"

    @staticmethod
    def ref(group: str, part: str) -> str:
        return "its concept_of_label" if part == "concept_of_label" else part

    @staticmethod
    def count(c: int) -> str:
        return f"{c} entries"

    @staticmethod
    def out_of_range(subject: str, q: int, v: int, lo: int, k: int) -> str:
        return (f"{subject}[{q}] = {v} is out of range: concept indices must be in "
                f"{lo}..{k - 1} (K = {k} concepts)")


class _FileContents:
    """How :class:`_SourceRules` words problems with the datasets of a file."""

    type_error = ValueError

    def __init__(self, path: str) -> None:
        self.path = path

    def name(self, group: str, part: str) -> str:
        return f"'{self.path}': dataset '{group}/{part}'"

    @staticmethod
    def ref(group: str, part: str) -> str:
        return f"'{group}/{part}'"

    @staticmethod
    def count(c: int) -> str:
        return f"shape ({c},)"

    @staticmethod
    def out_of_range(subject: str, q: int, v: int, lo: int, k: int) -> str:
        return (f"{subject} holds concept index {v} at position {q}, outside {lo}..{k - 1} "
                f"(K = {k} concepts in 'concept_names')")


@dataclass
class _Source:
    """One checked source: ``data`` (an array, memmap or h5py dataset, not yet read) holds
    the label maps ``[N, L, H, W]`` (or ``[N, H, W]``), the sample labels ``[N, k]`` or the
    dense masks ``[N, k, H, W]`` of HDF5 group ``group``; ``concepts`` (int32) is the
    ``concept_of_label`` of label maps, or the concept of each column / plane."""

    group: str            # "label_maps/<category>", "sample_labels" or "dense"
    part: str             # "maps", "present" or "masks"
    concepts_part: str    # "concept_of_label" or "concepts"
    data: Any
    shape: tuple          # the stored shape (label maps always 4-D)
    concepts: np.ndarray

    @property
    def is_label_maps(self) -> bool:
        return self.part == "maps"

    @property
    def dtype(self) -> np.dtype:
        """The stored dtype: label maps keep their integer dtype, masks are bool."""
        return np.dtype(self.data.dtype) if self.is_label_maps else np.dtype(bool)

    def row_bytes(self, widened: bool = False) -> int:
        """Bytes per sample as stored, or in memory once label values are widened to int32."""
        item = self.dtype.itemsize
        if widened and self.is_label_maps:
            item = max(4, item)
        return max(1, int(np.prod(self.shape[1:])) * item)


class _SourceRules:
    """The one validator of concept sources (``docs/FORMAT.md`` §2.2) for N samples on a
    grid and K named concepts.

    :meth:`label_maps`, :meth:`sample_labels` and :meth:`dense` check a source's shape, dtype
    and concept indices (names allowed for a writer's arguments) and return it as a
    :class:`_Source`; :meth:`blocks` reads it a step of samples at a time, checking the values
    (label values within ``concept_of_label``, masks 0/1). ``voice`` words the messages:
    :class:`_Arguments` or :class:`_FileContents`.
    """

    def __init__(self, n: int, grid: tuple, names: Sequence[str], voice: Any) -> None:
        self.n, self.grid, self.names, self.voice = n, tuple(grid), list(names), voice

    # -------------------------------------------------------------------------- concepts
    def _concept_indices(self, values: Any, group: str, part: str, *, allow_none: bool,
                         count: Optional[tuple] = None) -> np.ndarray:
        """Concept indices (int32) of a sequence of indices or names (-1/None allowed if
        asked); ``count`` = (number expected, data part, what it counts) checks the length."""
        what = self.voice.name(group, part)
        k = len(self.names)
        if isinstance(values, h5py.Dataset) or (isinstance(values, np.ndarray)
                                                and values.dtype.kind in "iu"):
            if values.dtype.kind not in "iu" or values.ndim != 1:
                error = self.voice.type_error if values.dtype.kind not in "iu" else ValueError
                raise error(f"{what} must be a 1-D integer array, found shape {values.shape} "
                            f"dtype {values.dtype}")
            idx = np.asarray(values[()]).astype(np.int64)
        else:
            if isinstance(values, (str, bytes)):
                raise TypeError(f"{what} must be a sequence of concept indices or names, not a "
                                f"single string")
            lookup = {name: j for j, name in enumerate(self.names)}
            out = []
            for v in values:
                if v is None:
                    if not allow_none:
                        raise ValueError(f"{what} contains None; every entry must name a "
                                         f"concept")
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
        if count is not None and idx.size != count[0]:
            expected, data_part, unit, shape = count
            raise ValueError(f"{what} has {self.voice.count(idx.size)} but "
                             f"{self.voice.ref(group, data_part)} has {expected} {unit} (shape "
                             f"{shape})")
        lo = -1 if allow_none else 0
        bad = (idx < lo) | (idx >= k)
        if bad.any():
            q = int(np.flatnonzero(bad)[0])
            raise ValueError(self.voice.out_of_range(what, q, int(idx[q]), lo, k))
        return idx.astype(np.int32)

    def _check_dtype(self, data: Any, group: str, part: str, kinds: str, wanted: str) -> None:
        dt = np.dtype(data.dtype)
        if dt.kind not in kinds:
            raise self.voice.type_error(f"{self.voice.name(group, part)} must {wanted}, found "
                                        f"dtype {dt}")

    def _shape_error(self, data: Any, group: str, part: str, expected: str) -> ValueError:
        return ValueError(f"{self.voice.name(group, part)} has shape {tuple(data.shape)}, "
                          f"expected {expected}")

    # -------------------------------------------------------------------------- sources
    def label_maps(self, category: str, maps: Any, mapping: Any) -> _Source:
        """Label maps ``[N, L, H, W]`` or ``[N, H, W]`` (integers, 0 = no label) of
        ``category`` and their ``concept_of_label`` (concept of each label value, -1 none)."""
        group = f"label_maps/{category}"
        n, (h, w) = self.n, self.grid
        self._check_dtype(maps, group, "maps", "iu", "hold integers")
        shape = tuple(int(s) for s in maps.shape)
        if len(shape) == 3:
            shape = (shape[0], 1) + shape[1:]
        if len(shape) != 4 or shape[0] != n or shape[2:] != self.grid or shape[1] < 1:
            raise self._shape_error(maps, group, "maps", f"[N={n}, L, H={h}, W={w}] (or "
                                                         f"[N, H, W]) with L >= 1")
        mapping = self._concept_indices(mapping, group, "concept_of_label", allow_none=True)
        if mapping.size == 0:
            raise ValueError(f"{self.voice.name(group, 'concept_of_label')} is empty")
        return _Source(group, "maps", "concept_of_label", maps, shape, mapping)

    def sample_labels(self, present: Any, concepts: Any) -> _Source:
        """Sample labels ``present`` bool ``[N, k]``: column q covers every cell of the samples
        where it is set with concept ``concepts[q]``."""
        group, n = "sample_labels", self.n
        self._check_dtype(present, group, "present", "biu", "be boolean")
        if present.ndim != 2 or present.shape[0] != n or present.shape[1] < 1:
            raise self._shape_error(present, group, "present", f"[N={n}, k] with k >= 1")
        shape = tuple(int(s) for s in present.shape)
        cols = self._concept_indices(concepts, group, "concepts", allow_none=False,
                                     count=(shape[1], "present", "columns", shape))
        return _Source(group, "present", "concepts", present, shape, cols)

    def dense(self, masks: Any, concepts: Any) -> _Source:
        """Dense masks bool ``[N, k, H, W]``: plane q is a mask of concept ``concepts[q]``."""
        group, n, (h, w) = "dense", self.n, self.grid
        self._check_dtype(masks, group, "masks", "biu", "be boolean")
        if masks.ndim != 4 or masks.shape[0] != n or tuple(masks.shape[2:]) != self.grid \
                or masks.shape[1] < 1:
            raise self._shape_error(masks, group, "masks", f"[N={n}, k, H={h}, W={w}] with "
                                                           f"k >= 1")
        shape = tuple(int(s) for s in masks.shape)
        cols = self._concept_indices(concepts, group, "concepts", allow_none=False,
                                     count=(shape[1], "masks", "planes", shape))
        return _Source(group, "masks", "concepts", masks, shape, cols)

    # -------------------------------------------------------------------------- values
    def blocks(self, source: _Source, step: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(s, block)`` for samples ``s .. s + step - 1``, read and checked: label values
        must index ``concept_of_label``; masks must be 0/1 (returned as bool)."""
        what = self.voice.name(source.group, source.part)
        for s in range(0, self.n, step):
            block = np.asarray(source.data[s:s + step]).reshape((-1,) + source.shape[1:])
            if source.is_label_maps:
                n_labels = source.concepts.size
                if block.size and (block.min() < 0 or block.max() >= n_labels):
                    bad = np.argwhere((block < 0) | (block >= n_labels))[0]
                    raise ValueError(
                        f"{what} holds label value {block[tuple(bad)]} (at sample "
                        f"{s + int(bad[0])}) outside "
                        f"{self.voice.ref(source.group, source.concepts_part)}, which maps "
                        f"label values 0..{n_labels - 1}")
            elif block.dtype != bool:
                if block.size and (block.min() < 0 or block.max() > 1):
                    bad = np.argwhere((block < 0) | (block > 1))[0]
                    raise ValueError(f"{what} must be boolean (0/1), found "
                                     f"{block[tuple(bad)]} at sample {s + int(bad[0])}")
                block = block.astype(bool)
            yield s, block

    def add(self, builder: ConceptSetBuilder, source: _Source, s: int, block: np.ndarray) -> None:
        """Add a checked block of ``source`` (samples from ``s``) to a concept-set builder."""
        if source.is_label_maps:
            try:
                builder.add_label_maps(block, source.concepts, sample_offset=s)
            except ValueError as e:
                raise ValueError(f"{self.voice.name(source.group, source.part)} (samples "
                                 f"{s}..{s + block.shape[0] - 1}): {e}") from None
        elif source.part == "present":
            builder.add_sample_labels(block, source.concepts, sample_offset=s)
        else:
            builder.add_dense(block, source.concepts, sample_offset=s)


# =============================================================================== write

def _check_group_name(category: Any) -> str:
    if not isinstance(category, str):
        raise TypeError(f"label_maps keys must be category names (strings), got {category!r}")
    if not category or "/" in category or category in (".", ".."):
        raise ValueError(f"label_maps category {category!r} is not a valid HDF5 group name "
                         f"(non-empty, no '/')")
    return category


def _pair(value: Any, what: str, parts: str) -> tuple:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{what} must be a {parts} pair")
    return value[0], value[1]


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
        with_index: also build the :class:`ConceptSet` (from the same chunks, as they are
            written) and store its ``index`` group, so that loading the file does not rebuild
            it.

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
    names = list(names) if not isinstance(names, str) else names
    if len(names) == 0:
        raise ValueError("names is empty: a concepts file needs at least one concept")
    names = check_names(names, len(names), "names")
    k = len(names)
    if chunk_samples is not None:
        chunk_samples = _h5.check_chunk_samples(chunk_samples)

    # ---- validate every source before writing anything
    rules = _SourceRules(n, grid, names, _Arguments())
    sources = []
    for category, value in dict(label_maps or {}).items():
        category = _check_group_name(category)
        maps, mapping = _pair(value, f"label_maps[{category!r}]", "(maps, concept_of_label)")
        maps = _h5.array_like(maps, f"label_maps[{category!r}] maps")
        sources.append(rules.label_maps(category, maps, mapping))
    if sample_labels is not None:
        present, cols = _pair(sample_labels, "sample_labels", "(present, concepts)")
        sources.append(rules.sample_labels(_h5.array_like(present, "sample_labels present"), cols))
    if dense is not None:
        masks, cols = _pair(dense, "dense", "(masks, concepts)")
        masks = _h5.array_like(masks, "dense masks")
        if masks.ndim == 2 and grid == (1, 1):
            masks = np.asarray(masks)[:, :, None, None]
        sources.append(rules.dense(masks, cols))

    if categories is None:
        cats = [""] * k
        for source in sources:
            if source.is_label_maps:
                for c in source.concepts:
                    if c >= 0 and not cats[c]:
                        cats[c] = source.group[len("label_maps/"):]
    else:
        cats = check_strings(categories, k, "categories")
    for c in cats:
        _h5.check_text(c, "a category")

    # ---- write (and build the index from the same chunks)
    builder = ConceptSetBuilder(n, grid, names, cats) if with_index else None
    with _h5.writing(path, CONCEPTS_FORMAT) as f:
        _write_header(f, n, grid, names, cats)
        for source in sources:
            g = f.create_group(source.group)
            chunk = _h5.chunk_rows(n, source.row_bytes(), chunk_samples)
            ds = g.create_dataset(source.part, shape=source.shape, dtype=source.dtype,
                                  chunks=(chunk,) + source.shape[1:], compression=compression)
            _h5.write_array(g, source.concepts_part, source.concepts)
            for s, block in rules.blocks(source, _h5.io_rows(n, source.row_bytes(), chunk)):
                ds[s:s + block.shape[0]] = block
                _h5.check_io(f)               # a full disk stops the write here
                if builder is not None:
                    rules.add(builder, source, s, block)
        if builder is not None:
            _write_index(f, builder.build())


def _write_header(f: h5py.File, n: int, grid: tuple, names: list[str],
                  categories: list[str]) -> None:
    # format and version: set by _h5.writing (format last, when the file is complete)
    f.attrs["n_samples"] = np.int64(n)
    f.attrs["height"] = np.int64(grid[0])
    f.attrs["width"] = np.int64(grid[1])
    _h5.write_strings(f, "concept_names", names)
    _h5.write_strings(f, "concept_categories", categories)


def _write_index(f: h5py.File, cs: ConceptSet) -> None:
    g = f.create_group("index")
    g.attrs["block_words"] = np.int64(BLOCK_WORDS)
    a = cs.arrays
    for name, _, dtype, _ in INDEX_DATASETS:
        _h5.write_array(g, name, np.ascontiguousarray(getattr(a, name), dtype))


def save_concepts(path: PathLike, concepts: ConceptSet) -> None:
    """Write a :class:`ConceptSet` to a concepts file: names, categories and the built
    block-sparse ``index`` group (no sources). :func:`load_concepts` reads it back exactly.

    Args:
        path: the file to write (replaced if it exists).
        concepts: the concept set.

    Examples:
        >>> import os, tempfile
        >>> import numpy as np
        >>> from compexp_core.engine.concepts import ConceptSet
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
    for text in concepts.names + concepts.categories:
        _h5.check_text(text, "a concept name or category")
    with _h5.writing(path, CONCEPTS_FORMAT) as f:
        _write_header(f, concepts.n_samples, concepts.grid, list(concepts.names),
                      list(concepts.categories))
        _write_index(f, concepts)


# =============================================================================== read

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
    p = os.fspath(path)
    if chunk_samples is not None:
        chunk_samples = _h5.check_chunk_samples(chunk_samples)
    with _h5.reading(p), _h5.open_file(p) as f:
        n, grid, names, categories = read_header(f, p)
        if _h5.get(f, "index", p, h5py.Group, required=False) is not None:
            return _read_index(f, p, n, grid, names, categories)
        return _build_from_sources(f, p, n, grid, names, categories, chunk_samples)


def read_header(f: h5py.File, p: str) -> tuple:
    """``(n_samples, (H, W), names, categories)`` of an open concepts file, checked."""
    _h5.check_format(f, p, CONCEPTS_FORMAT)
    n = _h5.attr_int(f, "n_samples", p)
    grid = (_h5.attr_int(f, "height", p), _h5.attr_int(f, "width", p))
    names = _h5.read_strings(_h5.get(f, "concept_names", p, h5py.Dataset), p, "concept_names")
    k = len(names)
    if k == 0:
        raise ValueError(f"'{p}': dataset 'concept_names' is empty (a concepts file needs at "
                         f"least one concept)")
    cat_ds = _h5.get(f, "concept_categories", p, h5py.Dataset, required=False)
    categories = [""] * k if cat_ds is None else \
        _h5.read_strings(cat_ds, p, "concept_categories")
    if len(categories) != k:
        raise ValueError(f"'{p}': dataset 'concept_categories' has shape ({len(categories)},) "
                         f"but 'concept_names' has shape ({k},)")
    try:
        check_names(names, k, "concept_names")
    except ValueError as e:
        raise ValueError(f"'{p}': {e}") from None
    return n, grid, names, categories


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
    for name, kinds, dtype, ndim in INDEX_DATASETS:
        ds = _h5.get(f, f"index/{name}", path, h5py.Dataset)
        if ds.dtype.kind not in kinds or ds.ndim != ndim:
            raise ValueError(f"'{path}': dataset 'index/{name}' must be a {ndim}-D integer array "
                             f"({np.dtype(dtype).name}), found shape {ds.shape} dtype {ds.dtype}")
        raw = _h5.read_array(ds, path, f"index/{name}")
        if name == "entry_words" and raw.dtype == np.int64:
            raw = raw.view(np.uint64)     # words are bit patterns: signed 64-bit, bit for bit
        try:
            # Range-checked before the cast: an int64 concept id >= 2**31 would otherwise wrap
            # into a valid-looking id and give wrong counts.
            arrays[name] = index_array(raw, dtype, name)
        except (TypeError, ValueError) as e:
            raise ValueError(f"'{path}': dataset 'index/{name}' ({ds.dtype}): {e}") from None
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


def _file_sources(f: h5py.File, path: str, rules: _SourceRules) -> list[_Source]:
    """The sources of an open concepts file, present and checked by ``rules``."""
    sources = []
    lm = _h5.get(f, "label_maps", path, h5py.Group, required=False)
    if lm is not None:
        for category in lm:
            base = f"label_maps/{category}"
            _h5.get(f, base, path, h5py.Group)
            maps = _h5.get(f, f"{base}/maps", path, h5py.Dataset)
            mapping = _h5.get(f, f"{base}/concept_of_label", path, h5py.Dataset)
            _h5.read_array(mapping, path, f"{base}/concept_of_label")   # its checksum
            sources.append(rules.label_maps(category, maps, mapping))
    if _h5.get(f, "sample_labels", path, h5py.Group, required=False) is not None:
        present = _h5.get(f, "sample_labels/present", path, h5py.Dataset)
        cols = _h5.get(f, "sample_labels/concepts", path, h5py.Dataset)
        _h5.read_array(cols, path, "sample_labels/concepts")
        sources.append(rules.sample_labels(present, cols))
    if _h5.get(f, "dense", path, h5py.Group, required=False) is not None:
        masks = _h5.get(f, "dense/masks", path, h5py.Dataset)
        cols = _h5.get(f, "dense/concepts", path, h5py.Dataset)
        _h5.read_array(cols, path, "dense/concepts")
        sources.append(rules.dense(masks, cols))
    return sources


def _build_from_sources(f: h5py.File, path: str, n: int, grid: tuple, names: list[str],
                        categories: list[str], chunk_samples: Optional[int]) -> ConceptSet:
    rules = _SourceRules(n, grid, names, _FileContents(path))
    sources = _file_sources(f, path, rules)
    try:
        builder = ConceptSetBuilder(n, grid, names, categories)
    except ValueError as e:
        raise ValueError(f"'{path}': {e}") from None
    for source in sources:
        step = _h5.read_rows(source.data, source.row_bytes(widened=True), chunk_samples)
        for s, block in rules.blocks(source, step):
            rules.add(builder, source, s, block)
    return builder.build()
