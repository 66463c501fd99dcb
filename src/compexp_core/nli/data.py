"""SNLI sentence pairs: read the tokenized files of the paper's NLI experiments or SNLI's jsonl.

Two formats are read:

* **Tokenized** (the files the NLI experiments of Mu & Andreas (2020) use): a ``.tok`` file of
  whitespace-separated tokens, line 2k+1 the premise and line 2k+2 the hypothesis of pair k,
  and beside it a ``.labels`` file (same stem) holding a header line ``gt`` and then one gold
  label per pair: ``entailment``, ``neutral``, ``contradiction``, or ``UNK`` (no annotator
  consensus; ``-`` is accepted too).
* **SNLI's official jsonl** (``snli_1.0_*.jsonl``): one JSON object per line with
  ``sentence1``, ``sentence2`` and ``gold_label`` (``-`` = no consensus). Tokens come from
  ``sentence1_binary_parse`` / ``sentence2_binary_parse`` (the parse's words, parentheses
  dropped) when present, else from :func:`simple_tokenize`.

Tokens keep their case. Unlabelled pairs are kept and marked -1 in ``labels``.

Examples:
    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> with open(os.path.join(d, "tiny.tok"), "w") as f:
    ...     _ = f.write("A dog runs .\\nAn animal moves .\\nA cat sleeps .\\nThe cat runs .\\n")
    >>> with open(os.path.join(d, "tiny.labels"), "w") as f:
    ...     _ = f.write("gt\\nentailment\\nUNK\\n")
    >>> pairs = read_snli(d)
    >>> len(pairs), pairs.premises[0], pairs.labels.tolist()
    (2, ('A', 'dog', 'runs', '.'), [0, -1])
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

__all__ = ["LABELS", "SNLIPairs", "read_snli", "simple_tokenize"]

PathLike = Union[str, "os.PathLike[str]"]

LABELS = ("entailment", "neutral", "contradiction")
# Label strings meaning "no gold label": the tokenized files write UNK, SNLI's jsonl "-".
UNLABELLED = ("UNK", "-")
_LABEL_CODE = {**{name: i for i, name in enumerate(LABELS)}, **{name: -1 for name in UNLABELLED}}
LABELS_HEADER = "gt"
DEFAULT_TOK = "snli_1.0_dev.tok"

# A word (letters/digits, with inner hyphens or apostrophes), or any single other non-space char.
_TOKEN = re.compile(r"\w+(?:[-']\w+)*|[^\w\s]")


@dataclass(frozen=True)
class SNLIPairs:
    """N sentence pairs with their gold labels.

    Attributes:
        premises: tuple of N premises, each a tuple of str tokens (case kept).
        hypotheses: tuple of N hypotheses, likewise.
        labels: int8 [N], read-only: index into :data:`LABELS`, -1 for an unlabelled pair.

    Examples:
        >>> p = SNLIPairs((("A", "dog"), ("A", "cat")), (("Dogs",), ("Cats",)), [0, 2])
        >>> len(p), p.subset([1]).hypotheses, p.subset([1]).labels.tolist()
        (2, (('Cats',),), [2])
    """

    premises: tuple
    hypotheses: tuple
    labels: np.ndarray

    def __post_init__(self):
        premises = tuple(tuple(s) for s in self.premises)
        hypotheses = tuple(tuple(s) for s in self.hypotheses)
        if len(premises) != len(hypotheses):
            raise ValueError(f"SNLIPairs: {len(premises)} premises but {len(hypotheses)} hypotheses")
        labels = np.asarray(self.labels)
        if labels.ndim != 1 or len(labels) != len(premises):
            raise ValueError(f"SNLIPairs: labels must have shape [{len(premises)}], got {labels.shape}")
        if labels.size and (labels.dtype.kind not in "iu" or labels.min() < -1 or labels.max() >= len(LABELS)):
            raise ValueError(f"SNLIPairs: labels must be integers in -1..{len(LABELS) - 1}")
        labels = labels.astype(np.int8)         # a copy: the caller's array stays theirs
        labels.setflags(write=False)
        object.__setattr__(self, "premises", premises)
        object.__setattr__(self, "hypotheses", hypotheses)
        object.__setattr__(self, "labels", labels)

    def __len__(self) -> int:
        return len(self.premises)

    def __eq__(self, other) -> bool:
        if not isinstance(other, SNLIPairs):
            return NotImplemented
        return (self.premises == other.premises and self.hypotheses == other.hypotheses
                and np.array_equal(self.labels, other.labels))

    __hash__ = None     # holds an array: not hashable

    def __repr__(self) -> str:
        return f"SNLIPairs({len(self)} pairs, {int((self.labels >= 0).sum())} labelled)"

    def subset(self, indices) -> "SNLIPairs":
        """The pairs at ``indices`` (integer positions, in that order, or a bool mask of length N).

        Args:
            indices: a sequence/array of ints in [-N, N), or a bool array of shape [N].

        Returns:
            A new :class:`SNLIPairs`.

        Examples:
            >>> p = SNLIPairs([["a"], ["b"], ["c"]], [["x"], ["y"], ["z"]], [0, 1, -1])
            >>> p.subset([2, 0]).premises, p.subset(p.labels >= 0).labels.tolist()
            ((('c',), ('a',)), [0, 1])
        """
        idx = np.asarray(indices)
        n = len(self)
        if idx.dtype == bool:
            if idx.shape != (n,):
                raise ValueError(f"subset: a bool mask must have shape [{n}], got {idx.shape}")
            idx = np.flatnonzero(idx)
        elif idx.size == 0:
            idx = idx.astype(np.int64)
        elif idx.dtype.kind not in "iu" or idx.ndim != 1:
            raise TypeError(f"subset: indices must be a 1-d sequence of ints or a bool mask, "
                            f"got dtype {idx.dtype} and shape {idx.shape}")
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise ValueError(f"subset: indices must be in [{-n}, {n}), got {idx.min()}..{idx.max()}")
        idx = idx.reshape(-1)
        return SNLIPairs(tuple(self.premises[i] for i in idx), tuple(self.hypotheses[i] for i in idx),
                         self.labels[idx])


def simple_tokenize(sentence: str) -> tuple:
    """Split a raw sentence into words and punctuation (used for jsonl lines without a parse).

    A token is a run of letters/digits/underscores, possibly joined by inner hyphens or
    apostrophes ("well-dressed", "don't"), or any single other non-space character.

    Args:
        sentence: the text.

    Returns:
        A tuple of str tokens, case kept.

    Examples:
        >>> simple_tokenize("A well-dressed man, outside.")
        ('A', 'well-dressed', 'man', ',', 'outside', '.')
    """
    return tuple(_TOKEN.findall(sentence))


def read_snli(path: PathLike, labels: Optional[PathLike] = None) -> SNLIPairs:
    """Read SNLI sentence pairs from the tokenized files or from SNLI's jsonl.

    Args:
        path: a directory (holding ``snli_1.0_dev.tok``, else a single ``*.tok``, else a single
            ``*.jsonl``), a ``.tok`` file, or a ``.jsonl`` file.
        labels: the labels file of a ``.tok`` file; by default the ``.labels`` file of the same
            stem beside it. Not allowed with jsonl (its labels are inline).

    Returns:
        :class:`SNLIPairs`.

    Raises:
        FileNotFoundError: a missing file or a directory without data files.
        ValueError: a malformed file (odd line count, empty sentence, bad header or label,
            bad JSON, count mismatch, empty file), naming the file and line.

    Examples:
        >>> import os, tempfile
        >>> d = tempfile.mkdtemp()
        >>> with open(os.path.join(d, "s.jsonl"), "w") as f:
        ...     _ = f.write('{"sentence1": "A man sleeps.", "sentence2": "He is awake.", '
        ...                 '"gold_label": "contradiction"}\\n')
        >>> p = read_snli(os.path.join(d, "s.jsonl"))
        >>> p.hypotheses[0], p.labels.tolist()
        (('He', 'is', 'awake', '.'), [2])
    """
    path = Path(path)
    if path.is_dir():
        path = _data_file_in(path)
    elif not path.is_file():
        raise FileNotFoundError(f"read_snli: no such file or directory: {path}")
    if path.suffix == ".jsonl":
        if labels is not None:
            raise ValueError(f"read_snli: {path} is jsonl, whose labels are inline: do not pass labels=")
        return _read_jsonl(path)
    labels_path = Path(labels) if labels is not None else path.with_suffix(".labels")
    if not labels_path.is_file():
        raise FileNotFoundError(f"read_snli: labels file of {path} not found: {labels_path}")
    premises, hypotheses = _read_tok(path)
    codes = _read_labels(labels_path)
    if len(codes) != len(premises):
        raise ValueError(f"read_snli: {path} holds {len(premises)} pairs but {labels_path} "
                         f"holds {len(codes)} labels")
    return SNLIPairs(premises, hypotheses, np.array(codes, dtype=np.int8))


def _data_file_in(directory: Path) -> Path:
    """The data file a directory stands for (see :func:`read_snli`)."""
    if (directory / DEFAULT_TOK).is_file():
        return directory / DEFAULT_TOK
    for pattern in ("*.tok", "*.jsonl"):
        found = sorted(p for p in directory.glob(pattern) if p.is_file())
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise ValueError(f"read_snli: {directory} holds several {pattern} files "
                             f"({', '.join(p.name for p in found)}): pass the file itself")
    raise FileNotFoundError(f"read_snli: {directory} holds no {DEFAULT_TOK}, *.tok or *.jsonl file")


def _lines(path: Path) -> list:
    """The lines of a UTF-8 text file without their line ends; an empty file is an error."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    lines = text.splitlines()
    if not lines:
        raise ValueError(f"{path}: the file is empty")
    return lines


def _read_tok(path: Path) -> tuple:
    lines = _lines(path)
    if len(lines) % 2:
        raise ValueError(f"{path}: {len(lines)} lines, an odd number: expected premise and "
                         f"hypothesis lines in pairs")
    sentences = []
    for number, line in enumerate(lines, start=1):
        tokens = tuple(line.split())
        if not tokens:
            raise ValueError(f"{path}, line {number}: empty sentence")
        sentences.append(tokens)
    return tuple(sentences[0::2]), tuple(sentences[1::2])


def _label_code(value, where: str) -> int:
    code = _LABEL_CODE.get(value) if isinstance(value, str) else None
    if code is None:
        known = ", ".join(LABELS + UNLABELLED)
        raise ValueError(f"{where}: unknown label {value!r} (expected one of {known})")
    return code


def _read_labels(path: Path) -> list:
    lines = _lines(path)
    if lines[0].strip() != LABELS_HEADER:
        raise ValueError(f"{path}, line 1: header {lines[0].strip()!r}, expected {LABELS_HEADER!r}")
    return [_label_code(line.strip(), f"{path}, line {number}")
            for number, line in enumerate(lines[1:], start=2)]


def _parse_tokens(parse: str) -> tuple:
    """The words of a binary parse such as ``( ( A dog ) runs )``."""
    return tuple(t for t in parse.split() if t not in ("(", ")"))


def _jsonl_sentence(record: dict, which: str, where: str) -> tuple:
    parse = record.get(f"{which}_binary_parse")
    if isinstance(parse, str) and parse.strip():
        tokens = _parse_tokens(parse)
    else:
        text = record.get(which)
        if not isinstance(text, str):
            raise ValueError(f"{where}: field {which!r} missing or not a string")
        tokens = simple_tokenize(text)
    if not tokens:
        raise ValueError(f"{where}: empty sentence in {which!r}")
    return tokens


def _read_jsonl(path: Path) -> SNLIPairs:
    premises, hypotheses, codes = [], [], []
    for number, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue                    # blank lines between records carry nothing
        where = f"{path}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: malformed JSON ({err.msg}, column {err.colno})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
        premises.append(_jsonl_sentence(record, "sentence1", where))
        hypotheses.append(_jsonl_sentence(record, "sentence2", where))
        if "gold_label" not in record:
            raise ValueError(f"{where}: field 'gold_label' missing")
        codes.append(_label_code(record["gold_label"], where))
    if not premises:
        raise ValueError(f"{path}: the file holds no records")
    return SNLIPairs(premises, hypotheses, np.array(codes, dtype=np.int8))
