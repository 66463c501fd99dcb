"""Type stub of the compiled CPU backend (python/bindings.cpp). Private: use compexp_core.

A mask set is the tuple ``(ptr int64 [n+1], block int64 [nnz], words uint64 [nnz, 8])``: mask m
owns blocks ``ptr[m]:ptr[m+1]`` (strictly increasing block ids), each 8 words = 512 cells.
"""
from typing import Sequence, Tuple

import numpy as np
import numpy.typing as npt

MaskSet = Tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.uint64]]
#: What extension_counts walked: (formula_blocks, partial_entries, full_entries).
Work = Tuple[int, int, int]

BLOCK_WORDS: int
BLOCK_CELLS: int
OP_LEAF: int
OP_OR: int
OP_AND: int
OP_AND_NOT: int
OP_OR_NOT: int
OP_COPY: int

def best_simd() -> str: ...
def simd_supported(simd: str) -> bool: ...
def default_threads() -> int: ...

class ConceptIndex:
    """All K concept masks, block-major; checked on construction (ValueError naming the
    failed condition), with its concept-major view built once. Holds the arrays, no copy."""
    def __init__(self, n_cells: int, n_concepts: int, block_ptr: npt.ArrayLike, entry_concept: npt.ArrayLike,
                 entry_words: npt.ArrayLike, full_ptr: npt.ArrayLike, full_concept: npt.ArrayLike) -> None: ...
    def primitive_counts(self, units: MaskSet, simd: str = "auto", n_threads: int = 0) -> npt.NDArray[np.int64]:
        """|U_u & C_j|: int64 [n_units, K]."""
    def extension_counts(self, formulas: MaskSet, unit_of: npt.ArrayLike, units: MaskSet, simd: str = "auto",
                         n_threads: int = 0) -> Tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], Work]:
        """(f, g, work): |F_i & C_j| and |U_unit_of[i] & F_i & C_j|, int64 [n_formulas, K] each;
        work = (formula blocks walked, partial concept entries read, full concept entries
        counted), summed over every stored block of every formula."""
    def materialize(self, formulas: MaskSet, src: npt.ArrayLike, op: npt.ArrayLike, concept: npt.ArrayLike,
                    n_threads: int = 0) -> MaskSet:
        """Masks op[i](F_src[i], C_concept[i]) (OP_LEAF: C alone; OP_COPY: F_src alone)."""
    def unit_pair_counts(self, units: MaskSet, row: int, n_threads: int = 0) -> npt.NDArray[np.int64]:
        """|U & C_c & C_k| for every pair of concepts, U = mask ``row`` of ``units``: int64
        [K, K] (the optimal search's one-leaf count rows)."""
    def concept_sizes(self) -> npt.NDArray[np.int64]: ...
    @property
    def n_cells(self) -> int: ...
    @property
    def n_blocks(self) -> int: ...
    @property
    def n_concepts(self) -> int: ...

class ConceptIndexBuilder:
    def __init__(self, n_samples: int, height: int, width: int, n_concepts: int) -> None: ...
    def add_label_maps(self, labels: npt.ArrayLike, sample_offset: int, concept_of_label: npt.ArrayLike) -> None: ...
    def add_dense(self, masks: npt.ArrayLike, sample_offset: int, concepts: npt.ArrayLike) -> None: ...
    def add_sample_labels(self, present: npt.ArrayLike, sample_offset: int, concepts: npt.ArrayLike) -> None: ...
    def finish(self) -> Tuple[npt.NDArray[np.int64], npt.NDArray[np.int32], npt.NDArray[np.uint64],
                              npt.NDArray[np.int64], npt.NDArray[np.int32]]: ...

def unit_masks_from_maps(acts: npt.ArrayLike, sample_offset: int, height: int, width: int,
                         threshold: npt.ArrayLike, n_threads: int = 0) -> MaskSet:
    """Pillow-exact bilinear resize of [n, U, h, w] maps to height x width, then > threshold[u].

    float64 maps are resized with the same operations in double precision; any other dtype is
    converted to float32 and resized exactly as Pillow's mode "F"."""
def unit_masks_from_bool(masks: npt.ArrayLike, sample_offset: int, n_threads: int = 0) -> MaskSet: ...
def merge_mask_parts(parts: Sequence[MaskSet]) -> MaskSet: ...
def mask_popcounts(masks: MaskSet, n_threads: int = 0) -> npt.NDArray[np.int64]: ...
def last_step_children(f: npt.ArrayLike, g: npt.ArrayLike, parent_tp: npt.ArrayLike,
                       parent_size: npt.ArrayLike, parent_concepts: npt.ArrayLike,
                       parent_ops: npt.ArrayLike, prim: npt.ArrayLike, sizes: npt.ArrayLike,
                       unit_size: int, n_cells: int, metric: int, ops: Sequence[int],
                       allow_repeats: bool, child_factor: float, bound_factor: float,
                       bound_children: bool, leaf_f: npt.ArrayLike, leaf_g: npt.ArrayLike,
                       leaf_have: npt.ArrayLike, incumbent: float, keep_ties: bool,
                       n_threads: int = 0) -> dict:
    """The optimal search's children of a batch of expanded prefixes (csrc/cpu/last_step.h):
    ``{"n_children", "best": (score, parent, op, concept, tp, size), "parent", "op",
    "concept", "tp", "size", "bound"}``; metric 0 iou, 1 precision, 2 recall; ``leaf_have``
    empty: no pair bounds. Use engine.optimal.last_step_children."""
