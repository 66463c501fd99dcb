"""Concept sets: K concept masks over the cells of a dataset, stored block-sparse.

A dataset has N samples on an H x W grid (language data: H = W = 1), P = N*H*W cells in all,
numbered sample-major. A :class:`ConceptSet` stores every concept's mask packed 64 cells to a
word and 8 words (512 cells) to a block, keeping only non-empty blocks, block-major (for each
block, the concepts present in it), and storing blocks a concept covers entirely as a bare
"full" flag. At Broden scale (22,210 images of 112x112, ~1,200 concepts) the dense masks would
take 42 GB; the block-sparse set takes a few hundred MB.

Concept sets are built, without ever materialising dense masks for the whole dataset, from
integer label maps (several label layers per category, 0 = no label), from sample-level labels
(a scene, a word in a sentence: the concept covers every cell of the sample), or from dense
boolean masks (small data). :class:`ConceptSetBuilder` accepts any mix of them in chunks.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import numpy as np

from .. import _core
from .masks import BLOCK_WORDS, MaskSet
from .units import DeviceArray, is_tensor, tensor_to_numpy

__all__ = ["ConceptSet", "ConceptSetBuilder", "DeviceConceptSet", "DeviceConceptMasks", "default_names",
           "index_array"]

# Samples per chunk when feeding large arrays to the builder: bounds temporary copies.
_CHUNK_CELLS = 1 << 24


def default_names(k: int) -> list[str]:
    """Names used when none are given: ``c0 .. c{k-1}``."""
    return [f"c{j}" for j in range(k)]


def check_strings(values, n: int, what: str, expected: Optional[str] = None) -> list[str]:
    """Validate a sequence of n strings (TypeError/ValueError naming `what`). `expected` words
    the length mismatch (default "expected n")."""
    if isinstance(values, str):
        raise TypeError(f"{what} must be a sequence of {n} strings, not a single string")
    values = list(values)
    if len(values) != n:
        raise ValueError(f"{what} has {len(values)} entries" + (expected or f", expected {n}"))
    for v in values:
        if not isinstance(v, str):
            raise TypeError(f"{what} must contain strings, got {type(v).__name__} {v!r}")
    return values


def check_names(names: Optional[Sequence[str]], k: int, what: str = "names") -> list[str]:
    """Validate K unique concept names (default ``c0..``), raising ValueError/TypeError."""
    if names is None:
        return default_names(k)
    names = check_strings(names, k, what, expected=f" but there are {k} concepts")
    for n in names:
        # Names go into files (HDF5 strings, CSV, JSON): NUL and text that is not valid
        # Unicode (lone surrogates) cannot be stored, so they are refused here, early.
        if "\x00" in n:
            raise ValueError(f"{what} may not contain the NUL character (\\x00): {n!r}")
        try:
            n.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"{what} must be valid Unicode text, {n!r} is not ({e.reason} at "
                             f"position {e.start})") from None
    if len(set(names)) != k:
        seen, dup = set(), []
        for n in names:
            if n in seen:
                dup.append(n)
            seen.add(n)
        raise ValueError(f"{what} must be unique; duplicated: {sorted(set(dup))[:10]}")
    return names


def index_array(x, dtype, what: str) -> np.ndarray:
    """``x`` as a C-contiguous ``dtype`` array for the concept index, refusing (TypeError) an
    array that is not of integers and (ValueError naming ``what``, the value and its position)
    any value the cast would change: a wrapped concept id or pointer would give wrong counts."""
    x = np.asarray(x)
    dtype = np.dtype(dtype)
    if x.dtype.kind not in "iu":
        if x.size == 0 and x.dtype.kind in "fb":   # e.g. np.array([]) for "no entries"
            return np.zeros(x.shape, dtype)
        raise TypeError(f"{what} must be an integer array ({dtype.name}), got dtype {x.dtype}")
    if x.size and not np.can_cast(x.dtype, dtype):
        info = np.iinfo(dtype)
        lo, hi = x.min(), x.max()
        for value in (lo, hi):
            if int(value) < info.min or int(value) > info.max:
                pos = np.unravel_index(int(np.flatnonzero(x.reshape(-1) == value)[0]), x.shape)
                pos = pos[0] if len(pos) == 1 else tuple(int(p) for p in pos)
                raise ValueError(f"{what}[{pos}] = {int(value)} does not fit in {dtype.name} "
                                 f"({info.min}..{info.max}); the index stores {what} as "
                                 f"{dtype.name} and will not wrap it")
    return np.ascontiguousarray(x, dtype)


def _words_bits(words) -> np.ndarray:
    """Block words are bit patterns: a signed 64-bit array is taken bit for bit (as the cast
    always did); narrower signed words must not be negative (index_array checks)."""
    words = np.asarray(words)
    return words.view(np.uint64) if words.dtype == np.int64 else words


def _chunk_samples(n_samples: int, cells_per_sample: int) -> int:
    return max(1, _CHUNK_CELLS // max(1, cells_per_sample))


@dataclass(frozen=True)
class _IndexArrays:
    block_ptr: np.ndarray      # int64 [n_blocks + 1]
    entry_concept: np.ndarray  # int32 [n_entries]
    entry_words: np.ndarray    # uint64 [n_entries, 8]
    full_ptr: np.ndarray       # int64 [n_blocks + 1]
    full_concept: np.ndarray   # int32 [n_full]


class ConceptSet:
    """K named concept masks over N samples on an H x W grid, block-sparse.

    Build one with :meth:`from_dense`, :meth:`from_label_maps`, :meth:`from_sample_labels` or a
    :class:`ConceptSetBuilder`; load one with :func:`compexp_core.load_concepts`. A concept
    set pickles (for Ray's object store, multiprocessing) through its arrays and metadata; the
    compiled index is rebuilt, and checked again, when it is unpickled.

    Attributes:
        n_samples: N.
        grid: (H, W) of the concept masks.
        names: tuple of K unique concept names.
        categories: tuple of K category names ("object", "scene", ... or "" when unknown).
        sizes: int64 [K], the number of cells of each concept.

    Examples:
        >>> import numpy as np
        >>> masks = np.zeros((2, 3, 4, 4), bool); masks[0, 1, :2] = True
        >>> cs = ConceptSet.from_dense(masks, names=["sky", "tree", "road"])
        >>> cs.n_concepts, cs.grid, int(cs.sizes[1])
        (3, (4, 4), 8)
        >>> bool((cs.concept_mask("tree") == masks[:, 1]).all())
        True
    """

    def __init__(self, n_samples: int, grid: tuple[int, int], names: Sequence[str],
                 block_ptr: np.ndarray, entry_concept: np.ndarray, entry_words: np.ndarray,
                 full_ptr: np.ndarray, full_concept: np.ndarray,
                 categories: Optional[Sequence[str]] = None) -> None:
        h, w = (int(grid[0]), int(grid[1]))
        if n_samples < 1 or h < 1 or w < 1:
            raise ValueError(f"a concept set needs n_samples >= 1 and a non-empty grid, got "
                             f"n_samples={n_samples}, grid={grid}")
        names = check_names(names, len(names))
        if len(names) == 0:
            raise ValueError("a concept set needs at least one concept (got zero names)")
        if categories is None:
            categories = [""] * len(names)
        categories = [str(c) for c in categories]
        if len(categories) != len(names):
            raise ValueError(f"categories has {len(categories)} entries but there are "
                             f"{len(names)} concepts")
        self.n_samples = int(n_samples)
        self.grid = (h, w)
        self.names = tuple(names)
        self.categories = tuple(categories)
        # Integer arrays only, each value checked against the stored dtype before the cast:
        # a float pointer would be truncated and an int64 concept id >= 2**31 would wrap into
        # a valid-looking id (wrong counts, no error).
        self._arrays = _IndexArrays(
            index_array(block_ptr, np.int64, "block_ptr"),
            index_array(entry_concept, np.int32, "entry_concept"),
            index_array(_words_bits(entry_words), np.uint64, "entry_words").reshape(-1, BLOCK_WORDS),
            index_array(full_ptr, np.int64, "full_ptr"),
            index_array(full_concept, np.int32, "full_concept"))
        a = self._arrays
        # The C++ index checks the structure (pointer ranges, concept ids) and builds the
        # concept-major view once.
        self._index = _core.ConceptIndex(self.n_cells, len(names), a.block_ptr, a.entry_concept,
                                         a.entry_words, a.full_ptr, a.full_concept)
        self.sizes = self._index.concept_sizes()
        self.sizes.flags.writeable = False
        #: Partial and full concept blocks stored in each block, int64 [n_blocks] (the
        #: extension kernel's work per formula block, for profiling).
        self.block_entry_counts = np.diff(a.block_ptr)
        self.block_full_counts = np.diff(a.full_ptr)
        self._name_to_index = {n: j for j, n in enumerate(self.names)}

    def __reduce__(self):
        # Pickled through its arrays and metadata (Ray's object store, multiprocessing): the
        # compiled index holds raw pointers, so it is rebuilt, and checked again, on unpickling.
        a = self._arrays
        return (ConceptSet, (self.n_samples, self.grid, self.names, a.block_ptr, a.entry_concept,
                             a.entry_words, a.full_ptr, a.full_concept, self.categories))

    # ----------------------------------------------------------------------------- shape
    @property
    def n_concepts(self) -> int:
        """K, the number of concepts."""
        return len(self.names)

    @property
    def n_cells(self) -> int:
        """P = N * H * W."""
        return self.n_samples * self.grid[0] * self.grid[1]

    @property
    def n_blocks(self) -> int:
        return int(self._index.n_blocks)

    @property
    def mask_shape(self) -> tuple[int, ...]:
        """Shape of one concept's dense mask: (N,) on a 1x1 grid, else (N, H, W)."""
        if self.grid == (1, 1):
            return (self.n_samples,)
        return (self.n_samples, *self.grid)

    def to_host(self) -> "ConceptSet":
        """This set (it is on the host already); see :meth:`DeviceConceptSet.to_host`."""
        return self

    @property
    def host_index(self):
        """The checked index in the C++ engine (``_core.ConceptIndex``): what the CPU backend
        counts with (the CUDA backend uploads :attr:`arrays`)."""
        return self._index

    @property
    def arrays(self) -> _IndexArrays:
        """The block-major arrays (read-only views), as stored in HDF5."""
        return self._arrays

    @property
    def nbytes(self) -> int:
        """Memory held by the block-sparse arrays."""
        a = self._arrays
        return sum(x.nbytes for x in (a.block_ptr, a.entry_concept, a.entry_words, a.full_ptr,
                                      a.full_concept))

    @property
    def n_stored_blocks(self) -> tuple[int, int]:
        """(partial blocks, full blocks) stored over all concepts."""
        return int(self._arrays.entry_concept.size), int(self._arrays.full_concept.size)

    def index(self, name: str) -> int:
        """Position of the concept called ``name`` (ValueError if there is none)."""
        try:
            return self._name_to_index[name]
        except KeyError:
            raise ValueError(f"no concept named {name!r} in this concept set") from None

    def __len__(self) -> int:
        return self.n_concepts

    def __repr__(self) -> str:
        partial, full = self.n_stored_blocks
        return (f"ConceptSet(n_samples={self.n_samples}, grid={self.grid}, "
                f"n_concepts={self.n_concepts}, blocks={partial} partial + {full} full, "
                f"{self.nbytes / 2**20:.1f} MiB)")

    # ----------------------------------------------------------------------------- dense views
    def concept_mask(self, concept) -> np.ndarray:
        """Dense boolean mask of one concept (by index or name), shape :attr:`mask_shape`."""
        j = self.index(concept) if isinstance(concept, str) else int(concept)
        if not 0 <= j < self.n_concepts:
            raise ValueError(f"concept index {j} out of range for {self.n_concepts} concepts")
        mask = MaskSet.from_arrays(self._index.materialize(
            MaskSet.empty(0).arrays(), np.zeros(1, np.int64), np.zeros(1, np.int32) + _core.OP_LEAF,
            np.array([j], np.int32)))
        return mask.to_dense(self.n_cells)[0].reshape(self.mask_shape)

    def to_dense(self) -> np.ndarray:
        """All masks densely, bool [N, K, H, W] (or [N, K] on a 1x1 grid). Small sets only."""
        out = np.stack([self.concept_mask(j) for j in range(self.n_concepts)], axis=1)
        return out

    # ----------------------------------------------------------------------------- builders
    @classmethod
    def from_dense(cls, masks, names: Optional[Sequence[str]] = None,
                   categories: Optional[Sequence[str]] = None) -> "ConceptSet":
        """Concept set from dense boolean masks.

        Args:
            masks: bool ``[N, K, H, W]``, or ``[N, K]`` for one cell per sample.
            names: K unique names (default ``c0..``).
            categories: K category names (optional).

        Returns:
            The block-sparse :class:`ConceptSet`.
        """
        masks = _as_bool_array(masks, "masks")
        if masks.ndim == 2:
            masks = masks[:, :, None, None]
        if masks.ndim != 4:
            raise ValueError(f"masks must be bool [N, K, H, W] or [N, K], got shape {masks.shape}")
        n, k, h, w = masks.shape
        if k == 0:
            raise ValueError("masks has zero concepts (K = 0)")
        b = ConceptSetBuilder(n, (h, w), check_names(names, k), categories)
        b.add_dense(masks, list(range(k)))
        return b.build()

    @classmethod
    def from_label_maps(cls, label_maps, concept_of_label, names: Sequence[str],
                        categories: Optional[Sequence[str]] = None) -> "ConceptSet":
        """Concept set from integer segmentation label maps.

        Args:
            label_maps: int ``[N, L, H, W]`` (L label layers; 0 = no label) or ``[N, H, W]``.
            concept_of_label: int array, ``concept_of_label[v]`` is the concept index of label
                value ``v``, or -1 for labels that are no concept.
            names: K unique concept names.
            categories: K category names (optional).
        """
        label_maps = np.asarray(label_maps)
        if label_maps.ndim == 3:
            label_maps = label_maps[:, None]
        if label_maps.ndim != 4:
            raise ValueError(f"label_maps must be int [N, L, H, W] or [N, H, W], got shape "
                             f"{label_maps.shape}")
        n, _, h, w = label_maps.shape
        b = ConceptSetBuilder(n, (h, w), names, categories)
        b.add_label_maps(label_maps, concept_of_label)
        return b.build()

    @classmethod
    def from_sample_labels(cls, labels, grid: tuple[int, int] = (1, 1),
                           names: Optional[Sequence[str]] = None,
                           categories: Optional[Sequence[str]] = None) -> "ConceptSet":
        """Concept set of sample-level concepts: bool ``[N, K]``, concept k covers every cell of
        the samples where ``labels[n, k]`` is set, on a grid of ``grid`` cells per sample."""
        labels = _as_bool_array(labels, "labels")
        if labels.ndim != 2:
            raise ValueError(f"labels must be bool [N, K], got shape {labels.shape}")
        b = ConceptSetBuilder(labels.shape[0], grid, check_names(names, labels.shape[1]), categories)
        b.add_sample_labels(labels, list(range(labels.shape[1])))
        return b.build()


class ConceptSetBuilder:
    """Incremental builder of a :class:`ConceptSet` from chunks of samples.

    Args:
        n_samples: N.
        grid: (H, W) of the concept masks.
        names: K unique concept names (all concepts, whatever source they come from).
        categories: K category names (optional).

    Thread-safe: the ``add_*`` methods may be called from several threads at once (chunks
    loaded on a thread pool; the bit packing runs in parallel, the C++ builder appends each
    call's blocks under a lock), in any order; the result is exactly that of one thread.
    :meth:`build` runs once; an ``add_*`` after it raises RuntimeError.

    Examples:
        >>> import numpy as np
        >>> b = ConceptSetBuilder(4, (2, 2), ["sky", "grass", "beach"], ["object", "object", "scene"])
        >>> labels = np.array([[[[1, 1], [2, 0]]]] * 4)        # [N=4, L=1, 2, 2]
        >>> b.add_label_maps(labels, concept_of_label=[-1, 0, 1])
        >>> b.add_sample_labels(np.array([[1], [0], [0], [1]], bool), concepts=[2])
        >>> cs = b.build(); cs.sizes.tolist()
        [8, 4, 8]
    """

    def __init__(self, n_samples: int, grid: tuple[int, int], names: Sequence[str],
                 categories: Optional[Sequence[str]] = None) -> None:
        if isinstance(n_samples, (bool, np.bool_)) or int(n_samples) < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        if len(grid) != 2 or int(grid[0]) < 1 or int(grid[1]) < 1:
            raise ValueError(f"grid must be (H, W) with H, W >= 1, got {grid}")
        names = list(names)
        if len(names) == 0:
            raise ValueError("a concept set needs at least one concept (got zero names)")
        self.names = check_names(names, len(names))
        self.categories = categories
        self.n_samples = int(n_samples)
        self.grid = (int(grid[0]), int(grid[1]))
        self._builder = _core.ConceptIndexBuilder(self.n_samples, self.grid[0], self.grid[1],
                                                  len(names))
        # The add_* methods may run from several threads at once (the C++ builder packs each
        # call's bits without a lock and appends them under its own); this lock only makes
        # build() happen once, and an add_* after it raise RuntimeError.
        self._lock = threading.Lock()
        self._built = False

    def _concepts_arg(self, concepts: Iterable, count: int, what: str) -> np.ndarray:
        idx = []
        for c in concepts:
            idx.append(self.names.index(c) if isinstance(c, str) else int(c))
        arr = np.asarray(idx, np.int32)
        if arr.shape != (count,):
            raise ValueError(f"{what}: expected {count} concepts, got {arr.size}")
        if arr.size and (arr.min() < 0 or arr.max() >= len(self.names)):
            raise ValueError(f"{what}: concept index out of range 0..{len(self.names) - 1}")
        return arr

    def _check_open(self):
        with self._lock:
            if self._built:
                raise RuntimeError("this builder has already built its concept set")

    def _add(self, method, *args) -> None:
        # The C++ builder refuses data once finished (RuntimeError); say it the same way.
        try:
            method(*args)
        except RuntimeError as e:
            if "already finished" in str(e):
                raise RuntimeError("this builder has already built its concept set") from None
            raise

    def add_label_maps(self, label_maps, concept_of_label, sample_offset: int = 0) -> None:
        """Add integer label maps ``[n, L, H, W]`` for samples ``sample_offset ..``.

        ``concept_of_label[v]`` is the concept (index or name) of label ``v``, or -1/None."""
        self._check_open()
        label_maps = np.asarray(label_maps)
        if label_maps.ndim == 3:
            label_maps = label_maps[:, None]
        if label_maps.ndim != 4 or label_maps.shape[2:] != self.grid:
            raise ValueError(f"label_maps must be [n, L, {self.grid[0]}, {self.grid[1]}], got "
                             f"shape {label_maps.shape}")
        if not np.issubdtype(label_maps.dtype, np.integer):
            raise TypeError(f"label_maps must hold integers, got dtype {label_maps.dtype}")
        mapping = np.asarray([-1 if c is None else (self.names.index(c) if isinstance(c, str) else int(c))
                              for c in concept_of_label], np.int32)
        if mapping.size == 0:
            raise ValueError("concept_of_label is empty")
        step = _chunk_samples(label_maps.shape[0], label_maps[0].size)
        for s in range(0, label_maps.shape[0], step):
            # Unsigned 32-bit and 64-bit labels could wrap when cast: check the range first.
            chunk = np.ascontiguousarray(label_maps[s:s + step], np.int32) \
                if np.can_cast(label_maps.dtype, np.int32) else _checked_int32(label_maps[s:s + step])
            self._add(self._builder.add_label_maps, chunk, sample_offset + s, mapping)

    def add_dense(self, masks, concepts, sample_offset: int = 0) -> None:
        """Add dense boolean masks ``[n, k, H, W]`` whose plane q is concept ``concepts[q]``."""
        self._check_open()
        masks = _as_bool_array(masks, "masks")
        if masks.ndim == 2:
            masks = masks[:, :, None, None]
        if masks.ndim != 4 or masks.shape[2:] != self.grid:
            raise ValueError(f"masks must be bool [n, k, {self.grid[0]}, {self.grid[1]}], got "
                             f"shape {masks.shape}")
        idx = self._concepts_arg(concepts, masks.shape[1], "add_dense")
        step = _chunk_samples(masks.shape[0], masks[0].size)
        for s in range(0, masks.shape[0], step):
            chunk = np.ascontiguousarray(masks[s:s + step]).view(np.uint8)
            self._add(self._builder.add_dense, chunk, sample_offset + s, idx)

    def add_sample_labels(self, labels, concepts, sample_offset: int = 0) -> None:
        """Add sample-level labels, bool ``[n, k]``: concept ``concepts[q]`` covers every cell of
        the samples where column q is set."""
        self._check_open()
        labels = _as_bool_array(labels, "labels")
        if labels.ndim != 2:
            raise ValueError(f"labels must be bool [n, k], got shape {labels.shape}")
        idx = self._concepts_arg(concepts, labels.shape[1], "add_sample_labels")
        self._add(self._builder.add_sample_labels, np.ascontiguousarray(labels).view(np.uint8),
                  sample_offset, idx)

    def build(self) -> ConceptSet:
        """Finish and return the :class:`ConceptSet` (the builder cannot be used afterwards)."""
        with self._lock:
            if self._built:
                raise RuntimeError("this builder has already built its concept set")
            self._built = True
        # finish() takes the staged data under the C++ builder's lock: an add_* still running
        # in another thread either lands before it or raises.
        bp, ec, ew, fp, fc = self._builder.finish()
        return ConceptSet(self.n_samples, self.grid, self.names, bp, ec, ew, fp, fc,
                          categories=self.categories)


class DeviceConceptMasks(DeviceArray):
    """Dense concept masks that stay in GPU memory: a :class:`~.units.DeviceArray` of bool
    (or uint8 holding 0 / 1) ``[N, K, H, W]`` / ``[N, K]``, any strides. The CUDA backend builds
    the concept index from it on the GPU (a :class:`DeviceConceptSet`); the CPU backend copies it
    to the host first (:meth:`host_array`)."""

    _NDIMS = (2, 4)
    _SHAPE_TEXT = "bool [N, K, H, W] or [N, K]"

    def _check_dtype(self, dtype: np.dtype, what: str) -> None:
        if dtype not in (np.dtype(bool), np.dtype(np.uint8)):
            raise TypeError(f"{what} on the GPU must be bool [N, K, H, W] / [N, K] (or uint8 "
                            f"holding 0 and 1), got dtype {dtype}")

    def __init__(self, owner, what: str = "masks") -> None:
        super().__init__(owner, what)
        if 0 in self.shape:
            raise ValueError(f"{what} has zero concepts (K = 0)" if self.shape[1] == 0 else
                             f"{what} has zero samples (N = 0)" if self.shape[0] == 0 else
                             f"{what} has an empty grid, shape {self.shape}")

    @property
    def grid(self) -> tuple[int, int]:
        """(H, W); (1, 1) for ``[N, K]`` masks."""
        return (1, 1) if len(self.shape) == 2 else (self.shape[2], self.shape[3])

    def host_array(self) -> np.ndarray:
        """A host copy of the masks: torch tensors through
        :func:`~.units.tensor_to_numpy`, CuPy arrays through ``.get()``.

        Raises:
            TypeError: a GPU array that offers no copy to the host (pass a NumPy array).
        """
        owner = self.owner
        if is_tensor(owner):
            return tensor_to_numpy(owner, "masks")
        if callable(getattr(owner, "get", None)):
            return np.asarray(owner.get())
        raise TypeError(f"masks is a GPU array ({type(owner).__name__}) without a way to copy it "
                        f"to the host (.get()); search with device='cuda' (it stays on the GPU) or "
                        f"pass a torch tensor, a CuPy array or a NumPy array")


class DeviceConceptSet:
    """A concept set whose index was built on a GPU, from dense masks in GPU memory, and stays
    there: made by the CUDA backend (``device="cuda"`` with GPU masks), never by hand.

    It answers what a search needs from a :class:`ConceptSet` on the host: ``n_samples``,
    ``grid``, ``names``, ``categories``, ``sizes`` (``|C_j|``, counted on the GPU and copied
    back), ``n_concepts``, ``n_cells``, ``n_blocks``, ``mask_shape``, ``n_stored_blocks``,
    :meth:`index`. The index arrays themselves are only on the GPU (``device_index``, a
    ``_cuda.DeviceConceptIndex``, on GPU ``device``); :meth:`to_host` copies them back once,
    as a :class:`ConceptSet`, for what needs host data (dense views, files, analyses, the CPU
    backend). It does not pickle (TypeError): GPU memory cannot travel to another process;
    pickle ``to_host()`` instead.
    """

    def __init__(self, n_samples: int, grid: tuple[int, int], names: Sequence[str], sizes: np.ndarray,
                 device_index, device: int, categories: Optional[Sequence[str]] = None) -> None:
        self.n_samples = int(n_samples)
        self.grid = (int(grid[0]), int(grid[1]))
        self.names = tuple(check_names(names, len(names)))
        self.categories = tuple("" for _ in self.names) if categories is None else tuple(categories)
        self.sizes = np.asarray(sizes, np.int64)
        self.sizes.flags.writeable = False
        self.device_index = device_index
        self.device = int(device)
        self._name_to_index = {n: j for j, n in enumerate(self.names)}
        self._host: Optional[ConceptSet] = None
        self._host_lock = threading.Lock()

    def __reduce__(self):
        # The index lives in GPU memory, which another process cannot use: refuse clearly
        # rather than fail on the handle (or copy gigabytes back behind the caller's back).
        raise TypeError("a DeviceConceptSet lives in GPU memory and cannot be pickled; pickle "
                        "its host copy, .to_host() (a ConceptSet), instead")

    n_concepts = ConceptSet.n_concepts
    n_cells = ConceptSet.n_cells
    mask_shape = ConceptSet.mask_shape
    index = ConceptSet.index
    __len__ = ConceptSet.__len__

    @property
    def n_blocks(self) -> int:
        return int(self.device_index.n_blocks)

    @property
    def n_stored_blocks(self) -> tuple[int, int]:
        """(partial blocks, full blocks) stored over all concepts."""
        return int(self.device_index.n_entries), int(self.device_index.n_full)

    @property
    def nbytes(self) -> int:
        """GPU memory held by the index (block-major and concept-major arrays)."""
        return int(self.device_index.nbytes)

    def __repr__(self) -> str:
        partial, full = self.n_stored_blocks
        return (f"DeviceConceptSet(n_samples={self.n_samples}, grid={self.grid}, "
                f"n_concepts={self.n_concepts}, blocks={partial} partial + {full} full, "
                f"cuda:{self.device}, {self.nbytes / 2**20:.1f} MiB)")

    def to_host(self) -> ConceptSet:
        """The same concept set on the host: the block-major arrays copied back from the GPU
        once (then cached) and checked again there. Equal, array for array, to
        ``ConceptSet.from_dense`` of the same masks."""
        with self._host_lock:
            if self._host is None:
                bp, ec, ew, fp, fc = self.device_index.download_block_major()
                self._host = ConceptSet(self.n_samples, self.grid, self.names, bp, ec, ew, fp, fc,
                                        categories=self.categories)
            return self._host


def _as_bool_array(x, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype == bool:
        return x
    if np.issubdtype(x.dtype, np.integer):
        if x.size and (x.min() < 0 or x.max() > 1):
            raise ValueError(f"{what} must be boolean (0/1); found values outside 0..1")
        return x.astype(bool)
    raise TypeError(f"{what} must be a boolean array, got dtype {x.dtype}")


def _checked_int32(x: np.ndarray) -> np.ndarray:
    if x.size and (int(x.min()) < np.iinfo(np.int32).min or int(x.max()) > np.iinfo(np.int32).max):
        raise ValueError(f"label values must fit in 32-bit integers; found {int(x.max())}")
    return np.ascontiguousarray(x, np.int32)
