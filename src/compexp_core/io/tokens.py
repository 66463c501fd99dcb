"""Per-token metadata of token-level activations: :class:`TokenTable` and its HDF5 group.

Token-level activations are ``[N_tokens, U]``: one row (one cell) per token of every
document, padding dropped. Row i's document, position, vocabulary id and text are row i of a
:class:`TokenTable`; concepts over tokens (:mod:`compexp_core.text`) and token reports read
them from it. In an activations file the table is the group ``tokens`` (docs/FORMAT.md §1.2):
datasets ``doc``, ``position``, ``token_id`` (int64) and ``text`` (UTF-8 strings), N rows each,
appended batch by batch as extraction writes (:func:`append_tokens`).
"""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import h5py
import numpy as np

from . import _h5

__all__ = ["TokenTable", "append_tokens", "read_tokens", "tokens_written", "TOKENS_GROUP"]

TOKENS_GROUP = "tokens"
_INT_FIELDS = ("doc", "position", "token_id")


class TokenTable:
    """Which token each row of token-level activations is.

    Rows come document by document (``doc`` never decreases) and, within a document, in
    order (``position`` strictly increases: 0, 1, 2, ... when nothing but padding was dropped).

    Args:
        doc: int ``[N]``: the document (sequence) of each token, >= 0.
        position: int ``[N]``: the token's position in its document, >= 0.
        token_id: int ``[N]``: its vocabulary id (-1 when unknown).
        text: ``N`` strings: the token as the tokenizer spells it (``"Ġthe"``, ``"▁the"``,
            ``" the"`` or ``"the"``).

    Raises:
        ValueError: fields of different lengths, negative documents or positions, rows out of
            order (naming the first bad row).
        TypeError: non-integer ids or non-string text.

    Examples:
        >>> t = TokenTable.from_documents([["The", " cat", " sat"], ["No", "!"]])
        >>> len(t), t.doc.tolist(), t.position.tolist()
        (5, [0, 0, 0, 1, 1], [0, 1, 2, 0, 1])
        >>> t.context(1, before=1, after=5)
        (['The', ' cat', ' sat'], 1)
        >>> t.previous_row().tolist(), t.next_row().tolist()
        ([-1, 0, 1, -1, 3], [1, 2, -1, 4, -1])
    """

    def __init__(self, doc: Any, position: Any, token_id: Any, text: Sequence[str]) -> None:
        fields = {}
        for name, value in (("doc", doc), ("position", position), ("token_id", token_id)):
            a = np.asarray(value)
            if a.ndim != 1:
                raise ValueError(f"TokenTable.{name} must be 1-D, got shape {a.shape}")
            if a.size and not np.issubdtype(a.dtype, np.integer):
                raise TypeError(f"TokenTable.{name} must hold integers, got dtype {a.dtype}")
            fields[name] = a.astype(np.int64)
        text = np.asarray(list(text), dtype=object)
        n = fields["doc"].size
        for name, a in (*fields.items(), ("text", text)):
            if a.size != n:
                raise ValueError(f"TokenTable fields differ in length: doc has {n} rows, "
                                 f"{name} has {a.size}")
        for i, s in enumerate(text):
            if not isinstance(s, str):
                raise TypeError(f"TokenTable.text[{i}] is {type(s).__name__}, not a string")
        for name in ("doc", "position"):
            bad = np.flatnonzero(fields[name] < 0)
            if bad.size:
                raise ValueError(f"TokenTable.{name}[{bad[0]}] = {fields[name][bad[0]]} is "
                                 f"negative")
        d, p = fields["doc"], fields["position"]
        if n > 1:
            same = d[1:] == d[:-1]
            bad = np.flatnonzero((d[1:] < d[:-1]) | (same & (p[1:] <= p[:-1])))
            if bad.size:
                i = int(bad[0]) + 1
                raise ValueError(f"TokenTable rows out of order at row {i}: (doc {d[i]}, "
                                 f"position {p[i]}) follows (doc {d[i - 1]}, position "
                                 f"{p[i - 1]}); rows go document by document, in order")
        self.doc, self.position, self.token_id = fields["doc"], fields["position"], fields["token_id"]
        self.text = text
        for a in (self.doc, self.position, self.token_id, self.text):
            a.flags.writeable = False

    @classmethod
    def from_documents(cls, documents: Sequence[Sequence[str]],
                       token_ids: Optional[Sequence[Sequence[int]]] = None,
                       first_doc: int = 0) -> "TokenTable":
        """The table of tokenized documents (lists of token strings), positions from 0;
        ``token_ids`` (same shape) default to -1; documents numbered from ``first_doc``."""
        doc, pos, ids, text = [], [], [], []
        for d, tokens in enumerate(documents):
            tokens = list(tokens)
            doc += [first_doc + d] * len(tokens)
            pos += range(len(tokens))
            text += tokens
            if token_ids is None:
                ids += [-1] * len(tokens)
            else:
                row = list(token_ids[d])
                if len(row) != len(tokens):
                    raise ValueError(f"document {d} has {len(tokens)} tokens but "
                                     f"{len(row)} token ids")
                ids += row
        return cls(np.asarray(doc, np.int64), np.asarray(pos, np.int64),
                   np.asarray(ids, np.int64), text)

    @classmethod
    def concat(cls, tables: Sequence["TokenTable"]) -> "TokenTable":
        """Tables one after the other (their documents must follow in order)."""
        if not tables:
            return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), [])
        return cls(*(np.concatenate([getattr(t, n) for t in tables]) for n in _INT_FIELDS),
                   [s for t in tables for s in t.text])

    def __len__(self) -> int:
        return int(self.doc.size)

    def __repr__(self) -> str:
        n_docs = int(np.unique(self.doc).size)
        return f"TokenTable({len(self)} tokens, {n_docs} documents)"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TokenTable):
            return NotImplemented
        return all(np.array_equal(getattr(self, n), getattr(other, n))
                   for n in (*_INT_FIELDS, "text"))

    def rows(self, start: int, stop: int) -> "TokenTable":
        """Rows ``start:stop`` (whole documents or not: a slice keeps the order)."""
        return TokenTable(self.doc[start:stop], self.position[start:stop],
                          self.token_id[start:stop], self.text[start:stop])

    def previous_row(self) -> np.ndarray:
        """int64 ``[N]``: the row of the token just before each token in its document (the
        one at ``position - 1``), or -1 when there is none."""
        out = np.full(len(self), -1, np.int64)
        if len(self) > 1:
            ok = (self.doc[1:] == self.doc[:-1]) & (self.position[1:] == self.position[:-1] + 1)
            out[1:][ok] = np.flatnonzero(ok)
        return out

    def next_row(self) -> np.ndarray:
        """int64 ``[N]``: the row of the token just after each token in its document, or -1."""
        out = np.full(len(self), -1, np.int64)
        prev = self.previous_row()
        has = prev >= 0
        out[prev[has]] = np.flatnonzero(has)
        return out

    def context(self, row: int, before: int = 5, after: int = 5) -> tuple[list[str], int]:
        """The tokens of ``row``'s document from ``before`` tokens before it to ``after`` after
        it, and the index of ``row`` in that list."""
        row = int(row)
        if not 0 <= row < len(self):
            raise IndexError(f"row {row} out of range: the table has {len(self)} tokens")
        lo = int(np.searchsorted(self.doc, self.doc[row], side="left"))
        hi = int(np.searchsorted(self.doc, self.doc[row], side="right"))
        a, b = max(lo, row - int(before)), min(hi, row + int(after) + 1)
        return [str(s) for s in self.text[a:b]], row - a


def append_tokens(f: h5py.Group, table: TokenTable) -> int:
    """Append ``table``'s rows to the ``tokens`` group of an open, writable file (created,
    resizable, on first use); returns the number of rows the group then holds."""
    g = f.require_group(TOKENS_GROUP)
    n = len(table)
    if "doc" not in g:
        for name in _INT_FIELDS:
            g.create_dataset(name, shape=(0,), maxshape=(None,), dtype=np.int64,
                             chunks=(65536,))
        g.create_dataset("text", shape=(0,), maxshape=(None,), dtype=_h5.STR_DTYPE,
                         chunks=(16384,))
    start = g["doc"].shape[0]
    if start and n and (table.doc[0], table.position[0]) <= (
            int(g["doc"][start - 1]), int(g["position"][start - 1])):
        raise ValueError(f"appended tokens start at (doc {table.doc[0]}, position "
                         f"{table.position[0]}), not after the last written row (doc "
                         f"{int(g['doc'][start - 1])}, position {int(g['position'][start - 1])})")
    for name in (*_INT_FIELDS, "text"):
        ds = g[name]
        ds.resize((start + n,))
        if n:
            ds[start:] = getattr(table, name) if name != "text" else list(table.text)
    return start + n


def tokens_written(f: h5py.Group) -> int:
    """Rows in the ``tokens`` group of an open file (0 without one)."""
    g = f.get(TOKENS_GROUP)
    return 0 if g is None or "doc" not in g else int(g["doc"].shape[0])


def truncate_tokens(f: h5py.Group, n: int) -> None:
    """Keep the first ``n`` rows of the ``tokens`` group (resuming after an interruption)."""
    g = f.get(TOKENS_GROUP)
    if g is None:
        return
    for name in (*_INT_FIELDS, "text"):
        if g[name].shape[0] > n:
            g[name].resize((n,))


def read_tokens(source: Any, path: str = "") -> Optional[TokenTable]:
    """The token table of an activations file (a path, or an open file), or None when the file
    has none (image activations).

    Raises:
        ValueError: a ``tokens`` group with missing or mismatched datasets (naming the file).
    """
    if isinstance(source, (str, os.PathLike)):
        p = os.fspath(source)
        with _h5.reading(p):
            f = _h5.open_file(p)
            try:
                return read_tokens(f, p)
            finally:
                _h5.close_reader(f)
    g = source.get(TOKENS_GROUP)
    if g is None:
        return None
    name = path or source.filename
    missing = [n for n in (*_INT_FIELDS, "text") if n not in g]
    if missing:
        raise ValueError(f"{name}: the tokens group lacks {', '.join(missing)}")
    fields = {n: g[n][()] for n in _INT_FIELDS}
    text = [s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in g["text"][()]]
    try:
        return TokenTable(fields["doc"], fields["position"], fields["token_id"], text)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: invalid tokens group: {e}") from e
