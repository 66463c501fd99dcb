"""Sentence-pair concepts for NLI: words, part-of-speech tags and word overlap of each pair.

Each sentence pair is one sample with one cell, so every concept is a set of pairs. The
concepts follow the sentence features of Mu & Andreas (2020) (their NLI code, ``to_sentence``):

* ``pre:tok:W`` / ``hyp:tok:W``: the lower-cased word W occurs in the premise / hypothesis.
  W ranges over the ``vocab_size`` most frequent lower-cased tokens of all premises and
  hypotheses together (every occurrence counts; a premise shared by several pairs counts once
  per pair), after removing ``a``, ``an``, ``the``, ``of``, ``.`` and ``,``. Words with equal
  counts keep the order of their first occurrence in the corpus (pair by pair, premise before
  hypothesis, left to right). Only words that occur are kept, so the vocabulary can be smaller.
* ``pre:tag:T`` / ``hyp:tag:T``: the Penn Treebank tag T (lower-cased, e.g. ``nn``, ``vbz``)
  occurs in the premise / hypothesis, as tagged by :mod:`compexp_core.nli.tagger` (on the
  tokens with their case). Tags in the order of their first appearance over the corpus (pair
  by pair, premise then hypothesis).
* ``oth:overlap:overlapXX``: with P and H the *sets* of lower-cased tokens of premise and
  hypothesis (all tokens, removed words included), o = |P ∩ H| / (|P ∖ H| + |H ∖ P| + 1e-5):
  shared words over the symmetric difference (not over the union, so o may exceed 1); the
  concept holds when o > t for each threshold t of ``overlap`` (0.25 gives ``overlap25``).

Concept order, which decides ties in a reference-compatible search: all ``pre:tok:`` words by
descending count, the ``pre:tag:`` tags, all ``hyp:tok:`` words in the same order, the
``hyp:tag:`` tags, then the overlap concepts. Categories: ``pre:tok``, ``pre:tag``,
``hyp:tok``, ``hyp:tag``, ``oth:overlap``.

Where the reference's own features differ, and why they are not copied:

* it maps words through its model's vocabulary first: out-of-vocabulary words collapse into
  one ``UNK`` token, which then also counts as a shared word in the overlap. The concepts here
  describe the text, whatever model reads it.
* its sentences are padded within a batch, and the ``PAD`` token counts as a word of both
  sentences in most pairs, inflating the overlap; here only real tokens count.
* it ranks words by a NumPy ``argsort`` whose order among equal counts is not specified; here
  ties follow first occurrence.
* its tags come from spaCy's English model (which has a few tags beyond the 45 of the Penn
  Treebank, such as ``HYPH``), a large download; here they come from a small perceptron
  tagger whose weights ship in a pip package, so the concepts can be built offline.

Memory: the pairs' concept ids are fed to a :class:`~compexp_core.engine.concepts.ConceptSetBuilder`
as sparse integer label layers (``[n, L, 1, 1]``, L = the most concepts any pair of a chunk
has), a chunk of pairs at a time; no dense ``[N, K]`` matrix is made.

Examples:
    >>> cs = sentence_concepts([["A", "dog", "runs"], ["A", "cat"]],
    ...                        [["The", "dog", "runs"], ["Cats", "purr"]], tags=False)
    >>> cs.names[:6]
    ('pre:tok:dog', 'pre:tok:runs', 'pre:tok:cat', 'pre:tok:cats', 'pre:tok:purr', 'hyp:tok:dog')
    >>> cs.concept_mask("hyp:tok:cats").tolist()
    [False, True]
    >>> cs.concept_mask("oth:overlap:overlap75").tolist()    # {dog, runs} / ({a} + {the})
    [True, False]
"""
from __future__ import annotations

import numbers
import warnings
from collections import Counter
from typing import Optional, Sequence

import numpy as np

from ..engine.concepts import ConceptSet, ConceptSetBuilder
from .data import SNLIPairs
from .tagger import TAGGER_INSTALL, default_tagger

__all__ = ["sentence_concepts", "SKIPPED_WORDS", "OVERLAP_EPSILON"]

# Words too common to be concepts (the reference's list, less its model's UNK and PAD tokens).
SKIPPED_WORDS = frozenset({"a", "an", "the", "of", ".", ","})
# Added to the overlap's denominator so identical sentences do not divide by zero.
OVERLAP_EPSILON = 1e-5
# Pairs per chunk handed to the concept-index builder.
_CHUNK_PAIRS = 4096


def sentence_concepts(premises, hypotheses=None, vocab_size: int = 2000, tags: bool = True,
                      overlap: Sequence[float] = (0.25, 0.5, 0.75), tagger=None) -> ConceptSet:
    """The sentence-pair concepts of the module doc, one sample (one cell) per pair.

    Args:
        premises: N premises, each a sequence of str tokens; or an
            :class:`~compexp_core.nli.data.SNLIPairs` (then ``hypotheses`` is left out).
        hypotheses: N hypotheses, each a sequence of str tokens.
        vocab_size: how many of the most frequent words become ``pre:tok:``/``hyp:tok:``
            concepts (an int >= 1).
        tags: add the ``pre:tag:``/``hyp:tag:`` concepts. With the default tagger and
            ``textblob-aptagger`` not installed they are left out with one warning.
        overlap: strictly increasing thresholds in (0, 1), one ``oth:overlap:`` concept each;
            empty for none.
        tagger: anything with ``tag_many(sentences) -> list of tag lists`` (default: the
            :func:`~compexp_core.nli.tagger.default_tagger`).

    Returns:
        A :class:`~compexp_core.engine.concepts.ConceptSet` over N samples on a 1x1 grid.

    Raises:
        TypeError: a sentence given as a string, a non-string token, a non-int ``vocab_size``.
        ValueError: premises and hypotheses of different lengths, no pairs, ``vocab_size < 1``,
            bad ``overlap`` thresholds, or a vocabulary left empty once the skipped words are
            removed.

    Examples:
        >>> cs = sentence_concepts([["Two", "men", "run"]], [["Men", "run", "fast"]], vocab_size=2,
        ...                        tags=False, overlap=(0.5, 0.9))
        >>> cs.names     # o = |{men, run}| / (|{two}| + |{fast}|) = 1.0
        ('pre:tok:men', 'pre:tok:run', 'hyp:tok:men', 'hyp:tok:run', 'oth:overlap:overlap50', 'oth:overlap:overlap90')
        >>> cs.sizes.tolist()
        [1, 1, 1, 1, 1, 1]
    """
    premises, hypotheses = _pairs_arguments(premises, hypotheses)
    vocab_size = _checked_vocab_size(vocab_size)
    thresholds = _checked_overlap(overlap)
    n = len(premises)
    lower_pre = [[t.lower() for t in s] for s in premises]
    lower_hyp = [[t.lower() for t in s] for s in hypotheses]

    # Vocabulary: counts in corpus order; a stable sort keeps first occurrence among equals.
    counts = Counter()
    for p, h in zip(lower_pre, lower_hyp):
        counts.update(p)
        counts.update(h)
    ranked = sorted((w for w in counts if w not in SKIPPED_WORDS), key=lambda w: -counts[w])
    vocab = ranked[:vocab_size]
    if not vocab:
        raise ValueError(f"sentence_concepts: the vocabulary is empty: every token is one of the "
                         f"skipped words {sorted(SKIPPED_WORDS)}")

    pre_tags = hyp_tags = None
    if tags:
        pre_tags, hyp_tags = _tag_pairs(premises, hypotheses, tagger)
    tag_names = []
    if pre_tags is not None:
        seen = {}
        for p, h in zip(pre_tags, hyp_tags):
            for t in (*p, *h):
                seen.setdefault(t.lower(), None)
        tag_names = list(seen)

    names, categories = [], []
    for side in ("pre", "hyp"):
        names += [f"{side}:tok:{w}" for w in vocab]
        categories += [f"{side}:tok"] * len(vocab)
        names += [f"{side}:tag:{t}" for t in tag_names]
        categories += [f"{side}:tag"] * len(tag_names)
    overlap_names = [f"oth:overlap:overlap{t * 100:g}" for t in thresholds]
    if len(set(overlap_names)) != len(overlap_names):
        raise ValueError(f"sentence_concepts: overlap thresholds {thresholds} give duplicate "
                         f"concept names {overlap_names}")
    names += overlap_names
    categories += ["oth:overlap"] * len(overlap_names)

    # Concept ids per side: word -> id and tag -> id, offset by the side's first concept.
    side_size = len(vocab) + len(tag_names)
    word_id = {w: j for j, w in enumerate(vocab)}
    tag_id = {t: len(vocab) + j for j, t in enumerate(tag_names)}
    first_overlap = 2 * side_size

    builder = ConceptSetBuilder(n, (1, 1), names, categories)
    # Label v means concept v - 1; 0 pads a pair's row (no concept).
    concept_of_label = np.arange(-1, len(names), dtype=np.int32)
    for start in range(0, n, _CHUNK_PAIRS):
        rows = []
        for k in range(start, min(n, start + _CHUNK_PAIRS)):
            p, h = set(lower_pre[k]), set(lower_hyp[k])
            ids = [word_id[w] for w in p if w in word_id]
            ids += [side_size + word_id[w] for w in h if w in word_id]
            if pre_tags is not None:
                ids += {tag_id[t.lower()] for t in pre_tags[k]}
                ids += {side_size + tag_id[t.lower()] for t in hyp_tags[k]}
            o = len(p & h) / (len(p - h) + len(h - p) + OVERLAP_EPSILON)
            ids += [first_overlap + q for q, t in enumerate(thresholds) if o > t]
            rows.append(ids)
        width = max(1, max(len(r) for r in rows))
        layers = np.zeros((len(rows), width, 1, 1), np.int32)
        for r, ids in enumerate(rows):
            layers[r, :len(ids), 0, 0] = np.asarray(ids, np.int32) + 1
        builder.add_label_maps(layers, concept_of_label, sample_offset=start)
    return builder.build()


def _sentences(values, what: str) -> list:
    if isinstance(values, (str, bytes)):
        raise TypeError(f"sentence_concepts: {what} must be a sequence of token sequences, not a string")
    out = []
    for i, sent in enumerate(values):
        if isinstance(sent, (str, bytes)):
            raise TypeError(f"sentence_concepts: {what}[{i}] is a string; pass its tokens "
                            f"(e.g. text.split())")
        sent = tuple(sent)
        for t in sent:
            if not isinstance(t, str) or not t:
                raise TypeError(f"sentence_concepts: {what}[{i}] must hold non-empty str tokens, "
                                f"got {t!r}")
        out.append(sent)
    return out


def _pairs_arguments(premises, hypotheses) -> tuple:
    if isinstance(premises, SNLIPairs):
        if hypotheses is not None:
            raise TypeError("sentence_concepts: pass either SNLIPairs or premises and hypotheses, not both")
        return list(premises.premises), list(premises.hypotheses)
    if hypotheses is None:
        raise TypeError("sentence_concepts: hypotheses missing (or pass an SNLIPairs as the first argument)")
    premises, hypotheses = _sentences(premises, "premises"), _sentences(hypotheses, "hypotheses")
    if len(premises) != len(hypotheses):
        raise ValueError(f"sentence_concepts: {len(premises)} premises but {len(hypotheses)} hypotheses")
    if not premises:
        raise ValueError("sentence_concepts: no sentence pairs given")
    return premises, hypotheses


def _checked_vocab_size(vocab_size) -> int:
    if isinstance(vocab_size, (bool, np.bool_)) or not isinstance(vocab_size, numbers.Integral):
        raise TypeError(f"sentence_concepts: vocab_size must be an int, got {vocab_size!r}")
    if vocab_size < 1:
        raise ValueError(f"sentence_concepts: vocab_size must be >= 1, got {vocab_size}")
    return int(vocab_size)


def _checked_overlap(overlap) -> tuple:
    if isinstance(overlap, (str, bytes)) or not isinstance(overlap, Sequence):
        raise TypeError(f"sentence_concepts: overlap must be a sequence of thresholds, got {overlap!r}")
    values = []
    for t in overlap:
        if isinstance(t, (bool, np.bool_)) or not isinstance(t, numbers.Real):
            raise TypeError(f"sentence_concepts: overlap thresholds must be numbers, got {t!r}")
        if not 0 < t < 1:
            raise ValueError(f"sentence_concepts: overlap thresholds must lie in (0, 1), got {t!r}")
        values.append(float(t))
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"sentence_concepts: overlap thresholds must be strictly increasing "
                         f"(sorted, no duplicates), got {tuple(overlap)}")
    return tuple(values)


def _tag_pairs(premises: list, hypotheses: list, tagger) -> tuple:
    """Tags of every premise and hypothesis (each distinct sentence tagged once), or
    (None, None) when the default tagger's weights are not installed (with one warning)."""
    if tagger is None:
        try:
            tagger = default_tagger()
        except ImportError:
            warnings.warn(f"sentence_concepts: part-of-speech concepts left out: the tagger's "
                          f"weights are not installed ({TAGGER_INSTALL}); pass tags=False to "
                          f"leave them out silently", stacklevel=3)
            return None, None
    distinct = list(dict.fromkeys([*premises, *hypotheses]))
    tagged = tagger.tag_many(distinct)
    if len(tagged) != len(distinct):
        raise ValueError(f"sentence_concepts: the tagger returned {len(tagged)} tag lists for "
                         f"{len(distinct)} sentences")
    tags_of = {}
    for sent, sent_tags in zip(distinct, tagged):
        sent_tags = list(sent_tags)
        if len(sent_tags) != len(sent) or not all(isinstance(t, str) and t for t in sent_tags):
            raise ValueError(f"sentence_concepts: the tagger returned {sent_tags!r} for the "
                             f"{len(sent)} tokens of {' '.join(sent)!r}")
        tags_of[sent] = sent_tags
    return [tags_of[s] for s in premises], [tags_of[s] for s in hypotheses]
