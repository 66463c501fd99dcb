"""A Penn Treebank part-of-speech tagger: a greedy averaged perceptron, run on trained weights.

The weights are those the optional package ``textblob-aptagger`` ships (``pip install
"compexp-core[nli]"``): Matthew Honnibal's 2013 averaged-perceptron tagger trained on the
Wall Street Journal, 45 Penn Treebank tags, about 97% accurate on news text. This module never
imports that package (nor TextBlob or NLTK): it finds the weights file inside it
(``importlib.util.find_spec``, which locates a top-level package without running it), reads it
with a restricted unpickler, and predicts with its own code.

The weights file is a pickle (protocol 2, written by Python 2) of ``(weights, tagdict,
classes)``: ``weights`` maps a feature string to ``{tag: weight}``, ``tagdict`` maps frequent
unambiguous words (case kept) to their tag, ``classes`` is the set of tags. Unpickling can run
arbitrary code, so :func:`load_tagger_weights` accepts only the one global such a file needs
(the builtin ``set``), then checks the structure.

Prediction (the design the weights were trained for), one token at a time, left to right:

* a word in ``tagdict`` gets its tag directly;
* otherwise its features are scored: with ``w`` the word itself and ``c`` the sentence's
  *normalised* words padded with ``-START-``, ``-START2-`` before and ``-END-``, ``-END2-``
  after (normalisation: a word with a ``-`` not at its start is ``!HYPHEN``; four digits
  ``!YEAR``; a word starting with a digit ``!DIGITS``; anything else lower-cased), and ``p1``,
  ``p2`` the two previous predicted tags (``-START-``, ``-START2-`` at the sentence start), the
  features are, in this order: ``bias``, ``i suffix`` + last 3 chars of w, ``i pref1`` + first
  char of w, ``i-1 tag`` p1, ``i-2 tag`` p2, ``i tag+i-2 tag`` p1 p2, ``i word`` c[i],
  ``i-1 tag+i word`` p1 c[i], ``i-1 word`` c[i-1], ``i-1 suffix`` + last 3 chars of c[i-1],
  ``i-2 word`` c[i-2], ``i+1 word`` c[i+1], ``i+1 suffix``, ``i+2 word`` (name and values
  joined by single spaces). A tag's score is the sum of its weights over the features, added
  in that order in float64; the best score wins, ties going to the alphabetically last tag.

:meth:`PosTagger.tag_many` runs many sentences at once: position by position over the batch,
the feature strings in Python and the weight sums in NumPy over a compressed-row copy of the
weights (about 4 MB), so tagging 20,000 short sentences takes seconds.

Examples:
    >>> tagger = default_tagger()                      # doctest: +SKIP
    >>> tagger.tag("The dog runs .".split())          # doctest: +SKIP
    ['DT', 'NN', 'VBZ', '.']
    >>> normalize_word("1999"), normalize_word("well-dressed"), normalize_word("Dog")
    ('!YEAR', '!HYPHEN', 'dog')
"""
from __future__ import annotations

import functools
import importlib.util
import io
import os
import pickle
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

__all__ = ["PosTagger", "default_tagger", "find_tagger_weights", "load_tagger_weights", "normalize_word",
           "TAGGER_PACKAGE", "TAGGER_INSTALL"]

PathLike = Union[str, "os.PathLike[str]"]

TAGGER_PACKAGE = "textblob_aptagger"
WEIGHTS_FILE = "trontagger-0.1.0.pickle"
TAGGER_INSTALL = 'pip install "compexp-core[nli]" (or pip install textblob-aptagger)'

START = ("-START-", "-START2-")
END = ("-END-", "-END2-")

# The only globals a weights file may ask for: the set of tags, pickled by Python 2 or 3.
_ALLOWED_GLOBALS = {("__builtin__", "set"): set, ("builtins", "set"): set}


class _Refused(pickle.UnpicklingError):
    """The pickle asks for something a weights file never needs."""


class _WeightsUnpickler(pickle.Unpickler):
    """An unpickler that builds plain containers only: every global but ``set`` is refused."""

    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise _Refused(f"it asks for {module}.{name}") from None

    def persistent_load(self, pid):
        raise _Refused("it holds a persistent reference")


def normalize_word(word: str) -> str:
    """The word form the tagger's context features use.

    Args:
        word: one token.

    Returns:
        ``!HYPHEN`` for a word with a ``-`` after its first character, ``!YEAR`` for four
        digits, ``!DIGITS`` for another word starting with a digit, else the word lower-cased.

    Examples:
        >>> [normalize_word(w) for w in ("-LRB-", "3rd", "2012", "Dogs")]
        ['-lrb-', '!DIGITS', '!YEAR', 'dogs']
    """
    if "-" in word and word[0] != "-":
        return "!HYPHEN"
    if word.isdigit() and len(word) == 4:
        return "!YEAR"
    if word[0].isdigit():
        return "!DIGITS"
    return word.lower()


def find_tagger_weights() -> Optional[Path]:
    """Path of the weights file inside the installed ``textblob_aptagger`` package, or None.

    The package is located, not imported (``find_spec`` of a top-level name runs no code).

    Returns:
        The path, or None when the package (or its weights file) is absent.

    Examples:
        >>> p = find_tagger_weights()
        >>> p is None or p.name == "trontagger-0.1.0.pickle"
        True
    """
    try:
        spec = importlib.util.find_spec(TAGGER_PACKAGE)
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / WEIGHTS_FILE
        if path.is_file():
            return path
    return None


def load_tagger_weights(path: PathLike) -> tuple:
    """Read and check a weights file without running any code from it.

    Args:
        path: the pickle of ``(weights, tagdict, classes)``.

    Returns:
        ``(weights, tagdict, classes)``: dict feature -> {tag: float}, dict word -> tag, set of
        tags.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not the tagger weights file expected (not a pickle, truncated,
            asks for any global but ``set``, or has another structure); the message names it.

    Examples:
        >>> import os, pickle, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "w.pickle")
        >>> with open(path, "wb") as f:
        ...     pickle.dump(({"bias": {"NN": 1.0}}, {"the": "DT"}, {"NN", "DT"}), f, protocol=2)
        >>> weights, tagdict, classes = load_tagger_weights(path)
        >>> sorted(classes), tagdict
        (['DT', 'NN'], {'the': 'DT'})
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tagger weights file not found: {path}")
    bad = f"{path} is not the tagger weights file we expect"
    data = path.read_bytes()
    try:
        obj = _WeightsUnpickler(io.BytesIO(data)).load()
    except _Refused as err:
        raise ValueError(f"{bad}: {err}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError, UnicodeDecodeError,
            OverflowError, MemoryError) as err:
        # What a truncated or corrupted pickle raises, depending on where it breaks.
        raise ValueError(f"{bad}: not a complete pickle ({type(err).__name__}: {err})") from None
    _check_weights_structure(obj, bad)
    return obj


def _check_weights_structure(obj, bad: str) -> None:
    if not (isinstance(obj, tuple) and len(obj) == 3):
        raise ValueError(f"{bad}: expected a tuple (weights, tagdict, classes), got {type(obj).__name__}")
    weights, tagdict, classes = obj
    if not (isinstance(classes, set) and classes and all(isinstance(c, str) for c in classes)):
        raise ValueError(f"{bad}: classes must be a non-empty set of tag strings")
    if not isinstance(tagdict, dict):
        raise ValueError(f"{bad}: tagdict must be a dict word -> tag, got {type(tagdict).__name__}")
    for word, tag in tagdict.items():
        if not (isinstance(word, str) and word and tag in classes):
            raise ValueError(f"{bad}: tagdict entry {word!r}: {tag!r} is not word -> known tag")
    if not (isinstance(weights, dict) and weights):
        raise ValueError(f"{bad}: weights must be a non-empty dict feature -> {{tag: weight}}")
    for feature, row in weights.items():
        if not (isinstance(feature, str) and isinstance(row, dict)):
            raise ValueError(f"{bad}: weights entry {feature!r} is not feature -> {{tag: weight}}")
        for tag, weight in row.items():
            if tag not in classes or type(weight) not in (float, int) or weight != weight:
                raise ValueError(f"{bad}: weights[{feature!r}] has {tag!r}: {weight!r}, "
                                 f"not a known tag with a number")


class PosTagger:
    """A Penn Treebank part-of-speech tagger (greedy averaged perceptron, see the module doc).

    Args:
        path: the weights file; by default the one of the installed ``textblob-aptagger``.

    Raises:
        ImportError: no ``path`` and ``textblob-aptagger`` is not installed (says how to get it).
        FileNotFoundError / ValueError: see :func:`load_tagger_weights`.

    Attributes:
        tags: tuple of the tags it can predict, sorted.

    Examples:
        >>> import os, pickle, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "toy.pickle")   # a toy model: the word
        >>> with open(path, "wb") as f:                             # "the", and a bias to NN
        ...     pickle.dump(({"bias": {"NN": 0.5}, "i-1 tag DT": {"NN": 1.0, "VB": 2.0}},
        ...                  {"the": "DT"}, {"DT", "NN", "VB"}), f, protocol=2)
        >>> PosTagger(path).tag_many([["the", "dog", "barks"], ["dogs"]])
        [['DT', 'VB', 'NN'], ['NN']]
        >>> PosTagger().tag("The dog runs .".split())       # the real weights  # doctest: +SKIP
        ['DT', 'NN', 'VBZ', '.']
    """

    def __init__(self, path: Optional[PathLike] = None) -> None:
        if path is None:
            path = find_tagger_weights()
            if path is None:
                raise ImportError(f"the part-of-speech tagger needs the weights of textblob-aptagger, "
                                  f"which is not installed: {TAGGER_INSTALL}")
        weights, tagdict, classes = load_tagger_weights(path)
        self.path = Path(path)
        self.tagdict = tagdict
        # Columns in descending tag order: argmax takes the first best score, which is then
        # the alphabetically last tag among equals, as the trained design breaks ties.
        self._columns = tuple(sorted(classes, reverse=True))
        self.tags = tuple(sorted(classes))
        column = {tag: j for j, tag in enumerate(self._columns)}
        # Compressed rows: feature f's weights are entries ptr[f]..ptr[f+1] (tag column, weight).
        self._feature_id = {}
        ptr = np.zeros(len(weights) + 1, np.int64)
        cols, vals = [], []
        for f, (feature, row) in enumerate(weights.items()):
            self._feature_id[feature] = f
            ptr[f + 1] = ptr[f] + len(row)
            cols.extend(column[t] for t in row)
            vals.extend(row.values())
        self._ptr = ptr
        self._cols = np.asarray(cols, np.int64)
        self._vals = np.asarray(vals, np.float64)

    def __repr__(self) -> str:
        return f"PosTagger({len(self._feature_id)} features, {len(self.tags)} tags, {self.path})"

    def tag(self, tokens: Sequence[str]) -> list:
        """Tags of one sentence.

        Args:
            tokens: the sentence's tokens (non-empty strings, case kept).

        Returns:
            A list of Penn Treebank tags, one per token.

        Examples:
            >>> default_tagger().tag(["The", "dog", "runs", "."])      # doctest: +SKIP
            ['DT', 'NN', 'VBZ', '.']
        """
        return self.tag_many([tokens])[0]

    def tag_many(self, sentences: Sequence[Sequence[str]]) -> list:
        """Tags of many sentences (each tagged on its own, from the sentence start).

        Args:
            sentences: a sequence of sentences, each a sequence of non-empty str tokens.

        Returns:
            A list with one list of tags per sentence.

        Examples:
            >>> default_tagger().tag_many([["Two", "dogs", "play"], []])    # doctest: +SKIP
            [['CD', 'NNS', 'VBP'], []]
        """
        sentences = _checked_sentences(sentences)
        tags = [[None] * len(s) for s in sentences]
        contexts = [START + tuple(normalize_word(w) for w in s) + END for s in sentences]
        longest = max((len(s) for s in sentences), default=0)
        fid = self._feature_id.get
        for i in range(longest):
            # Tokens at position i that the perceptron must score (tagdict words are known).
            todo = []
            for n, sent in enumerate(sentences):
                if i < len(sent):
                    known = self.tagdict.get(sent[i])
                    if known:
                        tags[n][i] = known
                    else:
                        todo.append(n)
            if not todo:
                continue
            rows = np.empty((len(todo), 14), np.int64)
            for b, n in enumerate(todo):
                word, c = sentences[n][i], contexts[n]
                # The two previous tags; the padding shifts in as the sentence starts.
                p1 = tags[n][i - 1] if i >= 1 else START[0]
                p2 = tags[n][i - 2] if i >= 2 else START[0] if i == 1 else START[1]
                j = i + len(START)          # position of token i in its padded context
                rows[b] = [fid(f, -1) for f in (
                    "bias", "i suffix " + word[-3:], "i pref1 " + word[0], "i-1 tag " + p1,
                    "i-2 tag " + p2, f"i tag+i-2 tag {p1} {p2}", "i word " + c[j],
                    f"i-1 tag+i word {p1} {c[j]}", "i-1 word " + c[j - 1],
                    "i-1 suffix " + c[j - 1][-3:], "i-2 word " + c[j - 2], "i+1 word " + c[j + 1],
                    "i+1 suffix " + c[j + 1][-3:], "i+2 word " + c[j + 2])]
            best = self._best_tags(rows)
            for b, n in enumerate(todo):
                tags[n][i] = best[b]
        return tags

    def _best_tags(self, rows: np.ndarray) -> list:
        """Best tag per token from its feature ids [B, 14] (-1 = feature without weights)."""
        scores = np.zeros((rows.shape[0], len(self._columns)), np.float64)
        # One feature slot at a time, in the feature order: every tag's sum is then added in
        # the same order as the reference design's, so equal and near-equal scores come out
        # bit for bit the same. Within a slot a (token, tag) pair occurs at most once.
        for k in range(rows.shape[1]):
            present = np.flatnonzero(rows[:, k] >= 0)
            if present.size == 0:
                continue
            f = rows[present, k]
            start, count = self._ptr[f], self._ptr[f + 1] - self._ptr[f]
            total = int(count.sum())
            entry = np.repeat(start - np.cumsum(count) + count, count) + np.arange(total)
            scores[np.repeat(present, count), self._cols[entry]] += self._vals[entry]
        return [self._columns[j] for j in scores.argmax(axis=1)]


def _checked_sentences(sentences) -> list:
    if isinstance(sentences, str):
        raise TypeError("sentences must be a sequence of token sequences, not a string")
    out = []
    for n, sent in enumerate(sentences):
        if isinstance(sent, str):
            raise TypeError(f"sentence {n} is a string; pass its tokens (e.g. text.split())")
        sent = tuple(sent)
        for t in sent:
            if not isinstance(t, str) or not t:
                raise ValueError(f"sentence {n}: tokens must be non-empty strings, got {t!r}")
        out.append(sent)
    return out


@functools.lru_cache(maxsize=None)
def _cached_tagger(path: Path) -> PosTagger:
    return PosTagger(path)


def default_tagger() -> PosTagger:
    """The tagger on the installed ``textblob-aptagger`` weights, loaded once per process.

    Returns:
        A shared :class:`PosTagger`.

    Raises:
        ImportError: ``textblob-aptagger`` is not installed (the message says how to install it).

    Examples:
        >>> default_tagger() is default_tagger()               # doctest: +SKIP
        True
    """
    path = find_tagger_weights()
    if path is None:
        raise ImportError(f"the part-of-speech tagger needs the weights of textblob-aptagger, "
                          f"which is not installed: {TAGGER_INSTALL}")
    return _cached_tagger(path.resolve())
