"""Token concepts: named families of sample-level concepts over tokenized text.

Token-level activations have one row (one cell) per token (:class:`~compexp_core.io.tokens.TokenTable`),
so a token concept is a set of tokens. :func:`token_concepts` builds these families, in this
order, each with its category in ``ConceptSet.categories``:

==========  ====================  ===================================================================
category    names                 a token is in the concept when
==========  ====================  ===================================================================
token       ``tok:X``             its text, spelled as in names (below), is X; the ``top_tokens`` most
                                  frequent X
word        ``word:x``            the word it belongs to, lower-cased, is x; the ``top_words`` most
                                  frequent x (words of space tokens are empty and never concepts)
prev        ``prev:tok:X``        the token just before it in its document (``position - 1``) is
                                  ``tok:X``, for the ``neighbours`` most frequent kept X
next        ``next:tok:X``        the token just after it in its document is ``tok:X``
tag         ``tag:NN``            its word's Penn Treebank tag (:mod:`compexp_core.nli.tagger`, each
                                  document tagged as one sentence of words); subword tokens
                                  inherit their word's tag
class       ``is:capitalized``,   character classes of its text (markers removed): first character
            ``is:upper``, ...     upper-case; all cased characters upper-case (two or more); all
                                  lower-case; all letters; all digits; punctuation; space;
                                  word start (:func:`word_starts`); continuation piece (not a word
                                  start), in the order of :data:`CHAR_CLASSES`
position    ``pos:0``,            its ``position`` falls in the bucket (``positions`` are the bucket
            ``pos:1-3``, ...      starts; the last bucket is open, ``pos:4096+``)
pattern     ``re:NAME``           ``re.search(regex, target)`` finds a match, the target being the
                                  token's word (default) or the token's name spelling
span        ``span:LABEL``        a labelled span ``(doc, start_pos, end_pos, label)`` covers it
                                  (``start_pos <= position < end_pos``)
==========  ====================  ===================================================================

**Names of tokens.** Tokenizers mark a token that starts with a space differently: GPT-2's
byte-level ``"Ġthe"``, SentencePiece's ``"▁the"``, plain text ``" the"``. In names every ``Ġ``,
``▁`` and space is written ``▁`` (U+2581), so ``"Ġthe"`` is ``tok:▁the`` and the continuation
piece ``"the"`` is ``tok:the`` whatever the tokenizer; other control characters are escaped
(``"\\n"`` is written ``\\n``). A formula prints such a name unquoted (``tok:▁the``).

**Words.** A token starts a word when it is the first token of its document in the table, its
text begins with whitespace, ``Ġ`` or ``▁``, or it or the previous token is punctuation (every
character a Unicode punctuation or symbol character) or a space token (nothing but whitespace,
markers and GPT-2's byte-level newline ``Ċ`` and tab ``ĉ``). A table in which no token begins
with a marker holds word-level tokens or WordPiece pieces: there every token starts a word but
those spelled ``##...`` (WordPiece continuations). A word's text is the concatenation of its
tokens with markers, whitespace and the ``##`` of WordPiece removed. A literal ``Ġ`` or ``▁`` in
text is read as a marker.

**Ranking.** Frequent means covering many tokens (a concept's size); equal sizes keep the
order of first occurrence in the table. Every concept covering fewer than ``min_count`` tokens
(and every empty one) is left out.

**Memory.** Concepts go straight into the block-sparse index, ``chunk_tokens`` rows at a time:
the token, word, neighbour and tag families (one concept per token each) as integer label layers
``[chunk, L, 1, 1]``, the others as boolean columns ``[rows, k]`` of at most 16 MiB,
of which only the columns of concepts present in those rows are handed on. Nothing ``[N_tokens, K]`` is ever made; what grows with N is a few
int32 arrays ``[N]`` and the index builder's staging.

Examples:
    >>> from compexp_core.io.tokens import TokenTable
    >>> t = TokenTable.from_documents([["The", "Ġcat", "Ġsat", "."], ["ĠThe", "Ġdog", "s"]])
    >>> cs = token_concepts(t, tags=False, char_classes=["capitalized", "subword"], positions=(0, 1))
    >>> cs.names[:7]
    ('tok:The', 'tok:▁cat', 'tok:▁sat', 'tok:.', 'tok:▁The', 'tok:▁dog', 'tok:s')
    >>> cs.concept_mask("word:the").tolist()
    [True, False, False, False, True, False, False]
    >>> cs.concept_mask("prev:tok:▁dog").tolist()
    [False, False, False, False, False, False, True]
    >>> cs.concept_mask("is:subword").tolist(), cs.concept_mask("pos:1+").tolist()
    ([False, False, False, False, False, False, True], [False, True, True, True, False, True, True])
"""
from __future__ import annotations

import numbers
import re
import unicodedata
import warnings
from typing import Callable, Iterable, Mapping, Optional, Sequence

import numpy as np

from .engine.concepts import ConceptSet, ConceptSetBuilder
from .io.tokens import TokenTable
from .nli.tagger import TAGGER_INSTALL, default_tagger

__all__ = ["token_concepts", "word_starts", "words", "token_name", "CHAR_CLASSES",
           "POSITION_BUCKETS", "NAME_MARKER"]

#: How a word-start marker (``Ġ``, ``▁``, a space) is written in concept names.
NAME_MARKER = "\u2581"
#: The character classes of the ``class`` family, in concept order (``is:<class>``).
CHAR_CLASSES = ("capitalized", "upper", "lower", "alpha", "digit", "punct", "space", "word_start",
                "subword")
#: Default position bucket starts: ``pos:0``, ``pos:1-3``, ``pos:4-7``, ..., ``pos:4096+``.
POSITION_BUCKETS = (0, 1, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)

# Word-start markers of byte-level BPE (GPT-2) and SentencePiece.
_MARKERS = ("\u0120", "\u2581")
# Characters a space token may consist of besides whitespace: the markers, and GPT-2's
# byte-level newline and tab (only a token made of nothing else is a space token, so a word
# with these letters, as in Esperanto, stays a word).
_SPACE_CHARS = frozenset(("\u0120", "\u2581", "\u010a", "\u0109"))
_STRIP_MARKERS = str.maketrans({"\u0120": None, "\u2581": None})
_FAMILY_ORDER = ("token", "word", "prev", "next", "tag", "class", "position", "pattern", "span")
# Largest block of boolean columns [rows, k] made for the builder at a time (16 MiB).
_DENSE_BYTES = 1 << 24


# --------------------------------------------------------------------------------- token text
def token_name(text: str) -> str:
    """How a token is spelled in concept names (``tok:X``): ``Ġ``, ``▁`` and spaces become
    ``▁``, other control characters are escaped (``\\n``, ``\\t``, ``\\x07``).

    Args:
        text: the token as the tokenizer spells it.

    Returns:
        The spelling used in names.

    Examples:
        >>> [token_name(s) for s in ("Ġthe", "▁the", " the", "the", "\\n")]
        ['▁the', '▁the', '▁the', 'the', '\\\\n']
    """
    return _escape_controls("".join(NAME_MARKER if ch in _MARKERS or ch == " " else ch
                                    for ch in text))


def _escape_controls(text: str) -> str:
    """Control characters written as escapes (names go into files, where NUL cannot)."""
    if text.isprintable():
        return text
    return "".join(ch.encode("unicode_escape").decode("ascii") if unicodedata.category(ch) == "Cc"
                   else ch for ch in text)


def _core(text: str) -> str:
    """The token's text with markers and whitespace removed (its part of a word)."""
    return "".join(text.translate(_STRIP_MARKERS).split())


def _is_space_token(text: str) -> bool:
    return all(ch.isspace() or ch in _SPACE_CHARS for ch in text)


def _is_punct(core: str) -> bool:
    return bool(core) and all(unicodedata.category(ch)[0] in "PS" for ch in core)


class _Analysis:
    """What every family needs from a token table, computed once per distinct token string.

    Attributes: ``codes`` int64 [N] (distinct token strings numbered by first occurrence),
    ``distinct`` (those strings), ``cores`` (their text in words), ``starts`` bool [N] (word
    starts), ``word_index`` int64 [N], ``word_text`` (list of word strings)."""

    def __init__(self, tokens: TokenTable) -> None:
        if not isinstance(tokens, TokenTable):
            raise TypeError(f"tokens must be a compexp_core.io.tokens.TokenTable, got "
                            f"{type(tokens).__name__}")
        n = len(tokens)
        self.codes, self.distinct = _factorize(tokens.text)
        leading = np.array([bool(s) and (s[0] in _MARKERS or s[0].isspace()) for s in self.distinct],
                           bool)
        # No word-start marker anywhere: word-level tokens, or WordPiece ("##" continues).
        self.wordpiece = not leading.any()
        if self.wordpiece:
            piece = np.array([len(s) > 2 and s.startswith("##") for s in self.distinct], bool)
            leading = ~piece
            self.cores = [_core(s[2:] if p else s) for s, p in zip(self.distinct, piece.tolist())]
        else:
            self.cores = [_core(s) for s in self.distinct]
        self.space = np.array([_is_space_token(s) for s in self.distinct], bool)
        for c in np.flatnonzero(self.space).tolist():
            self.cores[c] = ""          # "Ċ" is a newline, not text of a word
        self.punct = np.array([_is_punct(c) for c in self.cores], bool)
        boundary = (self.space | self.punct)[self.codes]
        first = np.ones(n, bool)
        first[1:] = tokens.doc[1:] != tokens.doc[:-1]
        starts = first | leading[self.codes] | boundary
        starts[1:] |= boundary[:-1]
        self.starts = starts
        self.first = first
        self.word_index = np.cumsum(starts, dtype=np.int64) - 1
        # Word strings: one-token words (most) directly, longer ones joined.
        begin = np.flatnonzero(starts)
        end = np.append(begin[1:], n)
        cores = self.cores
        word_text = [cores[c] for c in self.codes[begin].tolist()]
        for w in np.flatnonzero(end - begin > 1).tolist():
            word_text[w] = "".join(cores[c] for c in self.codes[begin[w]:end[w]].tolist())
        self.word_text = word_text
        self.word_begin = begin


def word_starts(tokens: TokenTable) -> np.ndarray:
    """Which tokens start a word (the module doc's rule).

    Args:
        tokens: the token table.

    Returns:
        bool ``[N]``.

    Examples:
        >>> from compexp_core.io.tokens import TokenTable
        >>> word_starts(TokenTable.from_documents([["un", "believ", "able", "Ġso", "!", "x"]])).tolist()
        [True, False, False, True, True, True]
    """
    return _Analysis(tokens).starts


def words(tokens: TokenTable) -> tuple[np.ndarray, list]:
    """The word each token belongs to.

    Args:
        tokens: the token table.

    Returns:
        ``(word_index, word_text)``: int64 ``[N]``, the word of each token, numbered from 0 in
        table order; and the text of each word (its tokens joined, markers removed; ``""`` for
        a space token).

    Examples:
        >>> from compexp_core.io.tokens import TokenTable
        >>> index, text = words(TokenTable.from_documents([["▁New", "▁Yor", "k", "▁."], ["k"]]))
        >>> index.tolist(), text
        ([0, 1, 1, 2, 3], ['New', 'York', '.', 'k'])
    """
    a = _Analysis(tokens)
    return a.word_index, a.word_text


# --------------------------------------------------------------------------------- arguments
def _count(value, what: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"token_concepts: {what} must be an int, got {value!r}")
    if value < 0:
        raise ValueError(f"token_concepts: {what} must be >= 0, got {value}")
    return int(value)


def _flag_or_subset(value, known: Sequence[str], what: str) -> tuple:
    if value is True:
        return tuple(known)
    if value is False or value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise TypeError(f"token_concepts: {what} must be True, False or a list of names from "
                        f"{list(known)}, got {value!r}")
    chosen = list(value)
    unknown = [v for v in chosen if v not in known]
    if unknown:
        raise ValueError(f"token_concepts: unknown {what} {unknown}; known: {list(known)}")
    return tuple(k for k in known if k in chosen)


def _positions(positions) -> tuple:
    if positions is None:
        return ()
    if isinstance(positions, (str, bytes)) or not isinstance(positions, Iterable):
        raise TypeError(f"token_concepts: positions must be a sequence of bucket starts, got "
                        f"{positions!r}")
    starts = []
    for p in positions:
        if isinstance(p, (bool, np.bool_)) or not isinstance(p, numbers.Integral):
            raise TypeError(f"token_concepts: position bucket starts must be ints, got {p!r}")
        starts.append(int(p))
    if any(p < 0 for p in starts) or any(b <= a for a, b in zip(starts, starts[1:])):
        raise ValueError(f"token_concepts: position bucket starts must be >= 0 and strictly "
                         f"increasing, got {tuple(positions)}")
    return tuple(starts)


def _bucket_names(starts: tuple) -> list:
    names = []
    for q, a in enumerate(starts):
        if q + 1 == len(starts):
            names.append(f"pos:{a}+")
        else:
            b = starts[q + 1] - 1
            names.append(f"pos:{a}" if a == b else f"pos:{a}-{b}")
    return names


def _patterns(patterns) -> list:
    if patterns is None:
        return []
    if not isinstance(patterns, Mapping):
        raise TypeError(f"token_concepts: patterns must be a dict name -> regular expression, got "
                        f"{type(patterns).__name__}")
    out = []
    for name, regex in patterns.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"token_concepts: pattern names must be non-empty strings, got {name!r}")
        if isinstance(regex, re.Pattern):
            out.append((name, regex))
            continue
        if not isinstance(regex, str):
            raise TypeError(f"token_concepts: pattern {name!r} must be a str or re.Pattern, got "
                            f"{type(regex).__name__}")
        try:
            out.append((name, re.compile(regex)))
        except re.error as e:
            raise ValueError(f"token_concepts: pattern {name!r} is not a valid regular expression "
                             f"({regex!r}): {e}") from None
    return out


def _span_rows(spans, tokens: TokenTable) -> tuple:
    """Labels in first-appearance order, and (label id, first row, end row) of each span."""
    if spans is None:
        return [], np.zeros((0, 3), np.int64)
    if isinstance(spans, (str, bytes)) or not isinstance(spans, Iterable):
        raise TypeError("token_concepts: spans must be a sequence of (doc, start_pos, end_pos, label)")
    doc, pos = tokens.doc, tokens.position
    labels: dict = {}
    rows = []
    for i, span in enumerate(spans):
        try:
            d, a, b, label = span
        except (TypeError, ValueError):
            raise ValueError(f"token_concepts: spans[{i}] = {span!r} is not (doc, start_pos, "
                             f"end_pos, label)") from None
        for v, what in ((d, "doc"), (a, "start_pos"), (b, "end_pos")):
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
                raise TypeError(f"token_concepts: spans[{i}] {what} must be an int, got {v!r}")
        if not isinstance(label, str) or not label:
            raise TypeError(f"token_concepts: spans[{i}] label must be a non-empty string, got {label!r}")
        lo = int(np.searchsorted(doc, d, side="left"))
        hi = int(np.searchsorted(doc, d, side="right"))
        if lo == hi:
            raise ValueError(f"token_concepts: spans[{i}] = {tuple(span)!r}: document {d} has no "
                             f"tokens in the table")
        last = int(pos[hi - 1])
        if not 0 <= a < b <= last + 1:
            raise ValueError(f"token_concepts: spans[{i}] = {tuple(span)!r} is out of range: "
                             f"document {d} has positions {int(pos[lo])}..{last}, and a span needs "
                             f"0 <= start_pos < end_pos <= {last + 1}")
        r0 = lo + int(np.searchsorted(pos[lo:hi], a, side="left"))
        r1 = lo + int(np.searchsorted(pos[lo:hi], b, side="left"))
        rows.append((labels.setdefault(label, len(labels)), r0, r1))
    return list(labels), np.asarray(rows, np.int64).reshape(-1, 3)


def _union_sizes(rows: np.ndarray, n_labels: int) -> np.ndarray:
    """Tokens covered by each label's spans (overlaps counted once)."""
    sizes = np.zeros(n_labels, np.int64)
    order = np.lexsort((rows[:, 1], rows[:, 0]))
    label, reach = -1, 0
    for lab, r0, r1 in rows[order].tolist():
        if lab != label:
            label, reach = lab, 0
        if r1 > max(r0, reach):
            sizes[lab] += r1 - max(r0, reach)
        reach = max(reach, r1)
    return sizes


# --------------------------------------------------------------------------------- families
def _ranked(ids: np.ndarray, n_values: int, keep: int, min_count: int) -> np.ndarray:
    """Rank of each value among the ``keep`` largest (by count, then by id: ids number values
    by first occurrence), -1 for values left out; counts below ``min_count`` are left out."""
    counts = np.bincount(ids[ids >= 0], minlength=n_values)
    order = np.argsort(-counts, kind="stable")[:keep]
    order = order[counts[order] >= max(1, min_count)]
    rank = np.full(n_values, -1, np.int64)
    rank[order] = np.arange(order.size)
    return rank


def _factorize(values: Sequence) -> tuple:
    """Codes of ``values`` numbering distinct values by first occurrence, and those values."""
    distinct = list(dict.fromkeys(values))
    index = {v: i for i, v in enumerate(distinct)}
    return np.fromiter(map(index.__getitem__, values), np.int64, count=len(values)), distinct


class _Families:
    """Names, categories and per-token data of every family, before the build."""

    def __init__(self) -> None:
        self.names: list = []
        self.categories: list = []
        self.sparse: list = []   # int64 [N] arrays: the family's concept (global index) or -1
        self.dense: list = []    # (first concept, columns(lo, hi) -> bool [hi - lo, k])

    def add_sparse(self, category: str, names: list, local: np.ndarray) -> None:
        """One concept per token: ``local`` is each token's concept in ``names`` or -1."""
        if not names:
            return
        first = len(self.names)
        self.names += names
        self.categories += [category] * len(names)
        self.sparse.append(np.where(local >= 0, local + first, -1))

    def add_dense(self, category: str, names: list, columns: Callable) -> None:
        """Any number of concepts per token: ``columns(lo, hi)`` gives rows lo..hi."""
        if not names:
            return
        self.dense.append((len(self.names), len(names), columns))
        self.names += names
        self.categories += [category] * len(names)


def token_concepts(tokens: TokenTable, *, top_tokens: int = 1000, top_words: int = 1000,
                   neighbours: int = 250, tags: bool = True, tagger=None, char_classes=True,
                   positions: Optional[Sequence[int]] = POSITION_BUCKETS,
                   patterns: Optional[Mapping] = None, pattern_target: str = "word",
                   spans: Optional[Iterable] = None, min_count: int = 1,
                   chunk_tokens: int = 65536) -> ConceptSet:
    """The token concepts of the module doc, one sample (one cell) per token.

    Args:
        tokens: the :class:`~compexp_core.io.tokens.TokenTable` of the activations' rows.
        top_tokens: how many of the most frequent tokens become ``tok:`` concepts (0: none).
        top_words: how many of the most frequent lower-cased words become ``word:`` concepts.
        neighbours: how many of the kept tokens (the most frequent first) get ``prev:tok:`` and
            ``next:tok:`` concepts (at most ``top_tokens``: more is read as ``top_tokens``).
        tags: add the ``tag:`` concepts. With the default tagger and ``textblob-aptagger`` not
            installed they are left out with one warning.
        tagger: anything with ``tag_many(sentences) -> list of tag lists`` (default:
            :func:`~compexp_core.nli.tagger.default_tagger`); a document's words are one sentence.
        char_classes: True for every class of :data:`CHAR_CLASSES`, False for none, or a list
            of some of them.
        positions: bucket starts, strictly increasing ints >= 0 (None: no position concepts);
            tokens before the first start are in no bucket.
        patterns: dict ``NAME -> regex`` (str or compiled), one ``re:NAME`` concept each.
        pattern_target: ``"word"``: a regex is searched in the word the token belongs to (markers
            removed, case kept), so every token of a matching word is in the concept;
            ``"token"``: in the token's name spelling (:func:`token_name`, ``▁the``).
        spans: ``(doc, start_pos, end_pos, label)`` tuples; tokens of document ``doc`` with
            ``start_pos <= position < end_pos`` are in ``span:label``.
        min_count: the fewest tokens a concept must cover to be kept (any family).
        chunk_tokens: rows handed to the index builder at a time.

    Returns:
        A :class:`~compexp_core.engine.concepts.ConceptSet` over the N tokens on a 1x1 grid, with
        each concept's family as its category.

    Raises:
        TypeError: ``tokens`` not a TokenTable; a parameter of the wrong type.
        ValueError: no tokens; a negative count; an unknown character
            class or ``pattern_target``; bad bucket starts; an invalid regular expression (named);
            a span out of range (named); no concept left at all.

    Examples:
        >>> from compexp_core.io.tokens import TokenTable
        >>> t = TokenTable.from_documents([["▁I", "▁do", "▁not", "▁know", "."]])
        >>> cs = token_concepts(t, top_tokens=2, top_words=0, tags=False, char_classes=False,
        ...                     positions=None, patterns={"neg": r"^(not|never)$"},
        ...                     spans=[(0, 1, 3, "verb group")])
        >>> cs.names
        ('tok:▁I', 'tok:▁do', 'prev:tok:▁I', 'prev:tok:▁do', 'next:tok:▁do', 're:neg', 'span:verb group')
        >>> cs.categories[-2:], cs.concept_mask("span:verb group").tolist()
        (('pattern', 'span'), [False, True, True, False, False])
    """
    analysis = _Analysis(tokens)
    n = len(tokens)
    if n == 0:
        raise ValueError("token_concepts: the token table is empty")
    top_tokens = _count(top_tokens, "top_tokens")
    top_words = _count(top_words, "top_words")
    neighbours = _count(neighbours, "neighbours")
    min_count = _count(min_count, "min_count")
    chunk_tokens = _count(chunk_tokens, "chunk_tokens")
    if chunk_tokens < 1:
        raise ValueError("token_concepts: chunk_tokens must be >= 1")
    neighbours = min(neighbours, top_tokens)    # prev/next exist only for kept tokens
    classes = _flag_or_subset(char_classes, CHAR_CLASSES, "char_classes")
    starts = _positions(positions)
    regexes = _patterns(patterns)
    if pattern_target not in ("word", "token"):
        raise ValueError(f"token_concepts: pattern_target must be 'word' or 'token', got "
                         f"{pattern_target!r}")
    span_labels, span_rows = _span_rows(spans, tokens)
    families = _Families()
    codes = analysis.codes

    # token: names merge tokenizer spellings ("Ġthe" and " the" are both ▁the).
    name_of_code, token_names = _factorize([token_name(s) for s in analysis.distinct])
    tok_value = name_of_code[codes]
    tok_rank = _ranked(tok_value, len(token_names), top_tokens, min_count)
    kept = np.flatnonzero(tok_rank >= 0)[np.argsort(tok_rank[tok_rank >= 0])]
    families.add_sparse("token", [f"tok:{token_names[v]}" for v in kept], tok_rank[tok_value])

    # word: the lower-cased word of each token; empty words (space tokens) are no concept.
    word_value, word_names = _factorize([w.lower() for w in analysis.word_text])
    token_word = word_value[analysis.word_index]
    if "" in word_names:
        token_word = np.where(token_word == word_names.index(""), -1, token_word)
    word_rank = _ranked(token_word, len(word_names), top_words, min_count)
    kept_words = np.flatnonzero(word_rank >= 0)[np.argsort(word_rank[word_rank >= 0])]
    families.add_sparse("word", [f"word:{_escape_controls(word_names[v])}" for v in kept_words],
                        np.where(token_word >= 0, word_rank[np.maximum(token_word, 0)], -1))

    # prev / next: the neighbour's rank among the kept tokens, when below `neighbours`.
    neighbour_rank = np.where((tok_rank >= 0) & (tok_rank < neighbours), tok_rank, -1)
    for category, row in (("prev", tokens.previous_row()), ("next", tokens.next_row())):
        local = np.where(row >= 0, neighbour_rank[tok_value[np.maximum(row, 0)]], -1)
        rank = _ranked(local, neighbours, neighbours, min_count)   # drops rare neighbours only
        present = np.flatnonzero(rank >= 0)                       # in tok order
        remap = np.full(max(neighbours, 1), -1, np.int64)
        remap[present] = np.arange(present.size)
        families.add_sparse(category, [f"{category}:tok:{token_names[kept[r]]}" for r in present],
                            np.where(local >= 0, remap[np.maximum(local, 0)], -1))

    # tag: one tag per word, inherited by its tokens.
    if tags:
        word_tags = _tag_words(tokens, analysis, tagger)
        if word_tags is not None:
            tag_value, tag_names = _factorize(word_tags)
            token_tag = tag_value[analysis.word_index]
            if None in tag_names:
                token_tag = np.where(token_tag == tag_names.index(None), -1, token_tag)
            tag_rank = _ranked(token_tag, len(tag_names), len(tag_names), min_count)
            kept_tags = np.flatnonzero(tag_rank >= 0)[np.argsort(tag_rank[tag_rank >= 0])]
            families.add_sparse("tag", [f"tag:{tag_names[v]}" for v in kept_tags],
                                np.where(token_tag >= 0, tag_rank[np.maximum(token_tag, 0)], -1))

    # class: per distinct token string, except the two word-membership classes.
    if classes:
        _add_classes(families, classes, analysis, min_count)

    # position buckets
    if starts:
        bucket = np.searchsorted(np.asarray(starts), tokens.position, side="right") - 1
        sizes = np.bincount(bucket[bucket >= 0], minlength=len(starts))
        keep = np.flatnonzero(sizes >= max(1, min_count))
        names = _bucket_names(starts)
        families.add_dense("position", [names[q] for q in keep],
                           lambda lo, hi, keep=keep: bucket[lo:hi, None] == keep[None, :])

    # pattern: searched once per distinct word (or token name).
    if regexes:
        if pattern_target == "word":
            value_of_word, targets = _factorize(analysis.word_text)
            value_of_token = value_of_word[analysis.word_index]
        else:
            targets, value_of_token = token_names, tok_value
        match = np.array([[rx.search(s) is not None for _, rx in regexes] for s in targets],
                         bool).reshape(len(targets), len(regexes))
        sizes = np.bincount(value_of_token, minlength=len(targets)) @ match.astype(np.int64)
        keep = np.flatnonzero(sizes >= max(1, min_count))
        families.add_dense("pattern", [f"re:{regexes[q][0]}" for q in keep],
                           lambda lo, hi, keep=keep: match[value_of_token[lo:hi]][:, keep])

    # span
    if span_labels:
        sizes = _union_sizes(span_rows, len(span_labels))
        keep = np.flatnonzero(sizes >= max(1, min_count))
        column = np.full(len(span_labels), -1, np.int64)
        column[keep] = np.arange(keep.size)
        families.add_dense("span", [f"span:{span_labels[q]}" for q in keep],
                           lambda lo, hi: _span_columns(span_rows, column, keep.size, lo, hi))

    if not families.names:
        raise ValueError("token_concepts: no concept left: every family is empty or switched off "
                         f"(min_count={min_count})")
    return _build(n, families, chunk_tokens)


def _add_classes(families: _Families, classes: tuple, analysis: _Analysis, min_count: int) -> None:
    cores, codes, starts = analysis.cores, analysis.codes, analysis.starts
    tests = {
        "capitalized": lambda c: bool(c) and c[0].isupper(),
        "upper": lambda c: c.isupper() and sum(ch.isupper() for ch in c) >= 2,
        "lower": str.islower, "alpha": str.isalpha, "digit": str.isdigit,
    }
    columns = []   # per class: ("code", bool [n_codes]) or ("start", flip)
    sizes = []
    code_counts = np.bincount(codes, minlength=len(cores))
    for c in classes:
        if c in ("word_start", "subword"):
            flip = c == "subword"
            columns.append(("start", flip))
            sizes.append(int((starts != flip).sum()))
            continue
        if c == "punct":
            per_code = analysis.punct
        elif c == "space":
            per_code = analysis.space
        else:
            per_code = np.array([tests[c](core) for core in cores], bool)
        columns.append(("code", per_code))
        sizes.append(int(code_counts[per_code].sum()))
    keep = [q for q, size in enumerate(sizes) if size >= max(1, min_count)]

    def rows(lo: int, hi: int) -> np.ndarray:
        out = np.empty((hi - lo, len(keep)), bool)
        for j, q in enumerate(keep):
            kind, value = columns[q]
            out[:, j] = (starts[lo:hi] != value) if kind == "start" else value[codes[lo:hi]]
        return out

    families.add_dense("class", [f"is:{classes[q]}" for q in keep], rows)


def _span_columns(rows: np.ndarray, column: np.ndarray, k: int, lo: int, hi: int) -> np.ndarray:
    out = np.zeros((hi - lo, k), bool)
    hit = rows[(rows[:, 1] < hi) & (rows[:, 2] > lo) & (column[rows[:, 0]] >= 0)]
    for lab, r0, r1 in hit.tolist():
        out[max(r0, lo) - lo:min(r1, hi) - lo, column[lab]] = True
    return out


def _tag_words(tokens: TokenTable, analysis: _Analysis, tagger) -> Optional[list]:
    """The tag of every word (None for empty words), each document's non-empty words tagged
    as one sentence; None when the default tagger's weights are absent (one warning)."""
    if tagger is None:
        try:
            tagger = default_tagger()
        except ImportError:
            warnings.warn(f"token_concepts: part-of-speech concepts left out: the tagger's weights "
                          f"are not installed ({TAGGER_INSTALL}); pass tags=False to leave them "
                          f"out silently", stacklevel=3)
            return None
    word_doc = tokens.doc[analysis.word_begin]
    bounds = np.flatnonzero(np.diff(word_doc)) + 1
    text = analysis.word_text
    sentences, members = [], []
    for a, b in zip(np.concatenate([[0], bounds]).tolist(), np.append(bounds, len(text)).tolist()):
        idx = [w for w in range(a, b) if text[w]]
        if idx:
            sentences.append([text[w] for w in idx])
            members.append(idx)
    tagged = tagger.tag_many(sentences)
    if len(tagged) != len(sentences):
        raise ValueError(f"token_concepts: the tagger returned {len(tagged)} tag lists for "
                         f"{len(sentences)} documents")
    out: list = [None] * len(text)
    for idx, sent, sent_tags in zip(members, sentences, tagged):
        sent_tags = list(sent_tags)
        if len(sent_tags) != len(idx) or not all(isinstance(t, str) and t for t in sent_tags):
            raise ValueError(f"token_concepts: the tagger returned {len(sent_tags)} tags for the "
                             f"{len(idx)} words of document {int(word_doc[idx[0]])}")
        for w, t in zip(idx, sent_tags):
            out[w] = t
    return out


def _build(n: int, families: _Families, chunk_tokens: int) -> ConceptSet:
    builder = ConceptSetBuilder(n, (1, 1), families.names, families.categories)
    # Label v means concept v - 1; 0 is "no concept" in a layer.
    concept_of_label = np.arange(-1, len(families.names), dtype=np.int32)
    for lo in range(0, n, chunk_tokens):
        hi = min(n, lo + chunk_tokens)
        if families.sparse:
            layers = np.stack([f[lo:hi] for f in families.sparse], axis=1).astype(np.int32) + 1
            builder.add_label_maps(layers[:, :, None, None], concept_of_label, sample_offset=lo)
        for first, k, columns in families.dense:
            # Rows at a time so that a block of boolean columns stays under _DENSE_BYTES.
            step = max(1, min(hi - lo, _DENSE_BYTES // k))
            for a in range(lo, hi, step):
                block = columns(a, min(hi, a + step))
                present = np.flatnonzero(block.any(axis=0))
                if present.size:
                    builder.add_sample_labels(block[:, present], (first + present).tolist(),
                                              sample_offset=a)
    return builder.build()
