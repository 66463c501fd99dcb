"""Block-sparse mask sets on the host: the one Python home of the bit layout.

A mask set holds n masks over the P cells of a dataset. Cells are packed 64 to a little-endian
word (cell c is bit ``c % 64`` of word ``c // 64``) and words are grouped into blocks of
:data:`BLOCK_WORDS` words (:data:`BLOCK_CELLS` cells); only non-empty blocks are stored. Mask m
owns the stored blocks ``ptr[m]:ptr[m+1]``, whose ids (``block``) strictly increase, and whose
words are ``words[ptr[m]:ptr[m+1]]``. Bits at cells >= P are always zero. This is the layout of
``csrc/compexp.h``; everything else in Python goes through :class:`MaskSet` to read it.

Examples:
    >>> import numpy as np
    >>> dense = np.zeros((2, 1000), bool); dense[0, [3, 700]] = True
    >>> m = MaskSet.from_dense(dense)
    >>> m.n_masks, m.nnz, m.popcounts().tolist()
    (2, 2, [2, 0])
    >>> m.cells(0).tolist()
    [3, 700]
    >>> bool((m.to_dense(1000) == dense).all())
    True
"""
from __future__ import annotations

import numpy as np

from .. import _core

__all__ = ["MaskSet", "BLOCK_WORDS", "BLOCK_CELLS"]

BLOCK_WORDS = _core.BLOCK_WORDS
BLOCK_CELLS = _core.BLOCK_CELLS


class MaskSet:
    """n block-sparse masks on the host (see the module docstring for the layout).

    Attributes:
        ptr: int64 ``[n + 1]``, mask m owns stored blocks ``ptr[m]:ptr[m+1]``.
        block: int64 ``[nnz]``, the block id of each stored block.
        words: uint64 ``[nnz, BLOCK_WORDS]``, the bits of each stored block.

    The arrays are checked by the compiled kernels when a mask set is passed to them.
    """

    __slots__ = ("ptr", "block", "words")

    def __init__(self, ptr, block, words) -> None:
        self.ptr = np.ascontiguousarray(ptr, np.int64)
        self.block = np.ascontiguousarray(block, np.int64)
        self.words = np.ascontiguousarray(words, np.uint64).reshape(-1, BLOCK_WORDS)
        if self.ptr.ndim != 1 or self.ptr.size < 1:
            raise ValueError(f"ptr must be 1-D with n_masks + 1 >= 1 entries, got shape {self.ptr.shape}")
        if self.block.ndim != 1 or self.block.size != self.words.shape[0]:
            raise ValueError(f"block ({self.block.shape}) and words ({self.words.shape}) must have one "
                             f"row per stored block")

    @classmethod
    def from_arrays(cls, arrays) -> "MaskSet":
        """Wrap the ``(ptr, block, words)`` tuple the compiled kernels return."""
        ptr, block, words = arrays
        return cls(ptr, block, words)

    @classmethod
    def empty(cls, n: int) -> "MaskSet":
        """n masks without any set cell."""
        return cls(np.zeros(n + 1, np.int64), np.zeros(0, np.int64), np.zeros((0, BLOCK_WORDS), np.uint64))

    @classmethod
    def from_dense(cls, dense) -> "MaskSet":
        """Masks of the rows of a dense bool ``[n_masks, n_cells]`` array (small data, tests)."""
        dense = np.asarray(dense, bool)
        if dense.ndim != 2:
            raise ValueError(f"dense masks must be bool [n_masks, n_cells], got shape {dense.shape}")
        n, p = dense.shape
        n_blocks = -(-p // BLOCK_CELLS)
        padded = np.zeros((n, n_blocks * BLOCK_CELLS), bool)
        padded[:, :p] = dense
        packed = np.packbits(padded, axis=1, bitorder="little").view(np.uint64).reshape(
            n, n_blocks, BLOCK_WORDS)
        nonzero = packed.any(axis=2)
        ptr = np.zeros(n + 1, np.int64)
        np.cumsum(nonzero.sum(axis=1), out=ptr[1:])
        rows, blocks = np.nonzero(nonzero)
        return cls(ptr, blocks.astype(np.int64), packed[rows, blocks])

    def arrays(self) -> tuple:
        """The ``(ptr, block, words)`` tuple the compiled kernels take."""
        return self.ptr, self.block, self.words

    @property
    def n_masks(self) -> int:
        return int(self.ptr.size - 1)

    @property
    def nnz(self) -> int:
        """Stored blocks over all masks."""
        return int(self.block.size)

    @property
    def nbytes(self) -> int:
        return self.ptr.nbytes + self.block.nbytes + self.words.nbytes

    def __len__(self) -> int:
        return self.n_masks

    def __repr__(self) -> str:
        return f"MaskSet(n_masks={self.n_masks}, stored_blocks={self.nnz})"

    def popcounts(self) -> np.ndarray:
        """Set cells of each mask, int64 ``[n_masks]``."""
        return _core.mask_popcounts(self.arrays())

    def to_dense(self, n_cells: int) -> np.ndarray:
        """Dense bool ``[n_masks, n_cells]`` (small data, tests)."""
        n = self.n_masks
        n_blocks = -(-int(n_cells) // BLOCK_CELLS)
        if self.nnz and int(self.block.max()) >= n_blocks:
            raise ValueError(f"a stored block lies past the {n_cells} cells asked for")
        packed = np.zeros((n, n_blocks, BLOCK_WORDS), np.uint64)
        rows = np.repeat(np.arange(n), np.diff(self.ptr))
        packed[rows, self.block] = self.words
        bits = np.unpackbits(packed.reshape(n, -1).view(np.uint8), axis=1, bitorder="little")
        return bits[:, :n_cells].astype(bool)

    def cells(self, i: int) -> np.ndarray:
        """Sorted indices of the set cells of mask ``i``, int64, without a dense mask."""
        lo, hi = int(self.ptr[i]), int(self.ptr[i + 1])
        bits = np.unpackbits(self.words[lo:hi].view(np.uint8), axis=1, bitorder="little")
        rows, cols = np.nonzero(bits)
        return self.block[lo:hi][rows] * BLOCK_CELLS + cols
