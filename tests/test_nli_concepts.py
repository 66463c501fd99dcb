"""Sentence-pair concepts: every rule on hand-made pairs, the real dev set, and bad input."""
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from compexp_core.nli import SNLIPairs, read_snli, sentence_concepts
from compexp_core.nli import tagger as tagger_module
from compexp_core.nli.tagger import find_tagger_weights

SNLI_DIR = Path(os.environ.get("COMPEXP_SNLI_DIR",
                               Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "snli"))
needs_snli = pytest.mark.skipif(not (SNLI_DIR / "snli_1.0_dev.tok").is_file(),
                                reason=f"SNLI data not found at {SNLI_DIR}")
needs_weights = pytest.mark.skipif(find_tagger_weights() is None,
                                   reason="textblob-aptagger (the tagger weights) not installed")


class TableTagger:
    """Tags by a word -> tag table (NN otherwise); records what it was asked to tag."""

    def __init__(self, table):
        self.table = table
        self.calls = []

    def tag_many(self, sentences):
        sentences = [tuple(s) for s in sentences]
        self.calls.append(sentences)
        return [[self.table.get(w, "NN") for w in s] for s in sentences]


def split(*sentences):
    return [s.split() for s in sentences]


def members(cs, name):
    return np.flatnonzero(cs.concept_mask(name)).tolist()


# ------------------------------------------------------------------------------------ the rules

def test_words_ranked_by_count_ties_by_first_occurrence_stop_words_removed():
    premises = split("The dog sees a cat .", "Dog , dog of dogs")
    hypotheses = split("An animal sees the Cat", "cat dog")
    cs = sentence_concepts(premises, hypotheses, tags=False, overlap=())
    # counts: dog 4 (every occurrence, case folded), cat 3, sees 2, then animal, dogs, each 1:
    # "dogs" occurs before "animal" in pair order (premise 1 comes after hypothesis 0)
    words = ["dog", "cat", "sees", "animal", "dogs"]
    assert cs.names == tuple([f"pre:tok:{w}" for w in words] + [f"hyp:tok:{w}" for w in words])
    assert set(cs.categories) == {"pre:tok", "hyp:tok"}
    assert members(cs, "pre:tok:dog") == [0, 1] and members(cs, "hyp:tok:dog") == [1]
    assert members(cs, "hyp:tok:cat") == [0, 1] and members(cs, "pre:tok:cat") == [0]
    assert members(cs, "pre:tok:dogs") == [1] and members(cs, "hyp:tok:animal") == [0]
    assert members(cs, "hyp:tok:dogs") == [] and members(cs, "pre:tok:animal") == []
    # vocab_size keeps the first words of that ranking
    small = sentence_concepts(premises, hypotheses, vocab_size=2, tags=False, overlap=())
    assert small.names == ("pre:tok:dog", "pre:tok:cat", "hyp:tok:dog", "hyp:tok:cat")


def test_ties_follow_first_occurrence_not_alphabet():
    cs = sentence_concepts(split("zebra yak"), split("xylophone ant"), tags=False, overlap=())
    assert cs.names[:4] == ("pre:tok:zebra", "pre:tok:yak", "pre:tok:xylophone", "pre:tok:ant")


def test_tag_concepts_and_the_full_order():
    tagger = TableTagger({"A": "DT", "runs": "VBZ", ".": ".", "Two": "CD", "sleep": "VBP"})
    premises = split("A dog runs .", "Two cats sleep")
    hypotheses = split("dog runs", "A cat")
    cs = sentence_concepts(premises, hypotheses, tagger=tagger)
    words = ["dog", "runs", "two", "cats", "sleep", "cat"]
    tags = ["dt", "nn", "vbz", ".", "cd", "vbp"]        # first appearance, pair by pair
    expected = ([f"pre:tok:{w}" for w in words] + [f"pre:tag:{t}" for t in tags]
                + [f"hyp:tok:{w}" for w in words] + [f"hyp:tag:{t}" for t in tags]
                + ["oth:overlap:overlap25", "oth:overlap:overlap50", "oth:overlap:overlap75"])
    assert cs.names == tuple(expected)
    assert cs.categories.count("pre:tag") == 6 and cs.categories[-1] == "oth:overlap"
    assert members(cs, "pre:tag:dt") == [0] and members(cs, "hyp:tag:dt") == [1]
    assert members(cs, "pre:tag:vbp") == [1] and members(cs, "hyp:tag:vbp") == []
    assert members(cs, "pre:tag:.") == [0] and members(cs, "hyp:tag:.") == []
    assert members(cs, "hyp:tag:nn") == [0, 1]
    # the tagger saw each distinct sentence once, with its case kept
    assert sorted(tagger.calls[0]) == sorted({tuple(s) for s in premises + hypotheses})


def test_tags_false_asks_no_tagger():
    tagger = TableTagger({})
    cs = sentence_concepts(split("a dog"), split("a cat"), tags=False, tagger=tagger)
    assert not tagger.calls and not any(":tag:" in n for n in cs.names)


@pytest.mark.parametrize("premise, hypothesis, expected", [
    # o = |P & H| / (|P - H| + |H - P| + 1e-5), over sets of lower-cased tokens
    ("a b c", "a b d", [25, 50, 75]),        # 2 / 2 = 1 (2 / 4 = 0.5 over the union: not > 0.75)
    ("a b c d e", "a b c d f g h", [25, 50, 75]),   # 4 / (1 + 3)
    ("a b", "c d", []),                      # nothing shared
    ("a b c", "a d e", []),                  # 1 / 4 - eps: not > 0.25
    ("a b", "a c", [25]),                    # 1 / 2 - eps: not > 0.5
    ("Dog dog , cat", "dog CAT ,", [25, 50, 75]),   # identical sets (case folded, repeats): o huge
    ("the dog", "the cat", [25]),            # skipped words still count in the overlap: 1 / 2
])
def test_overlap_over_the_symmetric_difference(premise, hypothesis, expected):
    cs = sentence_concepts([premise.split()], [hypothesis.split()], tags=False)
    got = [t for t in (25, 50, 75) if members(cs, f"oth:overlap:overlap{t}") == [0]]
    assert got == expected


def test_overlap_hand_computed_values():
    pairs = [("a b c", "a b d"), ("a b c", "a d e"), ("a b", "a c"), ("x y", "x y"), ("The dog", "the cat"),
             ("a b c d", "a b c e f")]
    cs = sentence_concepts(*zip(*[(p.split(), h.split()) for p, h in pairs]), tags=False)
    # union-based overlap would give 0.5, 0.2, 0.33, 1, 0.33, 0.5: only the 4th above 0.75
    assert members(cs, "oth:overlap:overlap25") == [0, 2, 3, 4, 5]
    assert members(cs, "oth:overlap:overlap50") == [0, 3, 5]          # 3 / (1 + 2)
    assert members(cs, "oth:overlap:overlap75") == [0, 3, 5]


def test_overlap_thresholds_name_their_concepts():
    cs = sentence_concepts(split("a b c"), split("a b d"), tags=False, overlap=(0.1, 0.333, 0.9, 0.99))
    assert cs.names[-4:] == ("oth:overlap:overlap10", "oth:overlap:overlap33.3", "oth:overlap:overlap90",
                             "oth:overlap:overlap99")
    assert cs.sizes[-4:].tolist() == [1, 1, 1, 1]
    cs = sentence_concepts(split("a b c"), split("a b d"), tags=False, overlap=[])
    assert not any(n.startswith("oth:") for n in cs.names)


def test_snli_pairs_and_token_lists_give_the_same_concepts():
    premises, hypotheses = split("A dog runs", "Two cats"), split("A dog", "cats sleep")
    a = sentence_concepts(SNLIPairs(premises, hypotheses, [0, -1]), tags=False)
    b = sentence_concepts(premises, hypotheses, tags=False)
    c = sentence_concepts(tuple(map(tuple, premises)), (h for h in [hypotheses[0], hypotheses[1]]), tags=False)
    assert a.names == b.names == c.names
    assert np.array_equal(a.to_dense(), b.to_dense()) and np.array_equal(a.to_dense(), c.to_dense())
    assert a.n_samples == 2 and a.grid == (1, 1)


def test_chunks_give_the_same_concepts_as_one_chunk(monkeypatch):
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(30)] + ["a", "the", "."]
    premises = [list(rng.choice(words, rng.integers(1, 8))) for _ in range(50)]
    hypotheses = [list(rng.choice(words, rng.integers(1, 8))) for _ in range(50)]
    whole = sentence_concepts(premises, hypotheses, tags=False, vocab_size=20)
    from compexp_core.nli import concepts as concepts_module
    monkeypatch.setattr(concepts_module, "_CHUNK_PAIRS", 7)
    chunked = sentence_concepts(premises, hypotheses, tags=False, vocab_size=20)
    assert whole.names == chunked.names
    dense = chunked.to_dense()
    assert np.array_equal(whole.to_dense(), dense)
    # and against a direct computation of the rule
    for k, (p, h) in enumerate(zip(premises, hypotheses)):
        for j, name in enumerate(chunked.names):
            side, kind, value = name.split(":", 2)
            if kind == "tok":
                assert dense[k, j] == (value in (p if side == "pre" else h))


# ------------------------------------------------------------------------------ missing tagger

def test_without_the_tagger_package_tags_are_left_out_with_one_warning(monkeypatch):
    monkeypatch.setattr(tagger_module, "find_tagger_weights", lambda: None)
    with pytest.warns(UserWarning, match=r'part-of-speech concepts left out.*pip install "compexp-core\[nli\]"') as rec:
        cs = sentence_concepts(split("a dog", "a cat"), split("the dog", "two cats"))
    assert len(rec) == 1
    assert not any(":tag:" in n for n in cs.names) and "pre:tok:dog" in cs.names
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sentence_concepts(split("a dog"), split("the dog"), tags=False)      # silent


# ------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs, error, message", [
    (dict(premises=split("a b", "c"), hypotheses=split("a")), ValueError, "2 premises but 1 hypotheses"),
    (dict(premises=[], hypotheses=[]), ValueError, "no sentence pairs"),
    (dict(premises=split("a b"), hypotheses=None), TypeError, "hypotheses missing"),
    (dict(premises=SNLIPairs([["a"]], [["b"]], [0]), hypotheses=split("b")), TypeError, "not both"),
    (dict(premises="a dog", hypotheses="a cat"), TypeError, "not a string"),
    (dict(premises=["a dog"], hypotheses=["a cat"]), TypeError, r"premises\[0\] is a string"),
    (dict(premises=[["a", 1]], hypotheses=[["b"]]), TypeError, r"premises\[0\] must hold non-empty str"),
    (dict(premises=[["a"]], hypotheses=[["b", ""]]), TypeError, r"hypotheses\[0\] must hold non-empty str"),
    (dict(vocab_size=0), ValueError, "vocab_size must be >= 1, got 0"),
    (dict(vocab_size=-3), ValueError, "vocab_size must be >= 1"),
    (dict(vocab_size=2.5), TypeError, "vocab_size must be an int"),
    (dict(vocab_size=True), TypeError, "vocab_size must be an int"),
    (dict(vocab_size="10"), TypeError, "vocab_size must be an int"),
    (dict(overlap=(0.5, 0.25)), ValueError, "strictly increasing"),
    (dict(overlap=(0.5, 0.5)), ValueError, "strictly increasing"),
    (dict(overlap=(0.0, 0.5)), ValueError, r"in \(0, 1\), got 0.0"),
    (dict(overlap=(0.5, 1.0)), ValueError, r"in \(0, 1\), got 1.0"),
    (dict(overlap=(float("nan"),)), ValueError, r"in \(0, 1\), got nan"),
    (dict(overlap=0.5), TypeError, "sequence of thresholds"),
    (dict(overlap=("0.5",)), TypeError, "must be numbers"),
    (dict(overlap=(0.12345671, 0.12345672)), ValueError, "duplicate concept names"),
    (dict(premises=split("a the", ". of"), hypotheses=split("An ,", "THE")), ValueError,
     "the vocabulary is empty"),
])
def test_bad_input(kwargs, error, message):
    args = dict(premises=split("a dog"), hypotheses=split("a cat"), tags=False)
    args.update(kwargs)
    with pytest.raises(error, match=message):
        sentence_concepts(**args)


def test_a_tagger_that_returns_the_wrong_shape_is_named():
    class Short:
        def tag_many(self, sentences):
            return [["NN"] for _ in sentences]

    with pytest.raises(ValueError, match="the tagger returned"):
        sentence_concepts(split("a dog"), split("a cat"), tagger=Short())


# ----------------------------------------------------------------------------------- the dev set

@needs_snli
def test_dev_set_words_and_overlap():
    pairs = read_snli(SNLI_DIR)
    cs = sentence_concepts(pairs, tags=False)
    assert cs.n_samples == 10_000 and cs.n_concepts == 2 * 2000 + 3
    words = [n[len("pre:tok:"):] for n in cs.names[:2000]]
    assert words[:3] == ["in", "is", "man"]          # the most frequent after the skipped words
    assert not set(words) & {"a", "an", "the", "of", ".", ","}
    assert all(w == w.lower() for w in words)
    sizes = dict(zip(cs.names, cs.sizes.tolist()))
    # checked directly on the text
    for side, sents in (("pre", pairs.premises), ("hyp", pairs.hypotheses)):
        for w in ("man", "dog", "sleeping"):
            assert sizes[f"{side}:tok:{w}"] == sum(w in {t.lower() for t in s} for s in sents)
    assert 0 < sizes["oth:overlap:overlap75"] < sizes["oth:overlap:overlap50"] < sizes["oth:overlap:overlap25"] < 10_000
    o25, o75 = cs.concept_mask("oth:overlap:overlap25"), cs.concept_mask("oth:overlap:overlap75")
    assert not (o75 & ~o25).any()
    # every vocabulary word occurs in some premise or hypothesis; no word in every pair
    assert (cs.sizes[:2000] + cs.sizes[2000:4000] > 0).all() and cs.sizes.max() < 10_000


@needs_snli
@needs_weights
def test_dev_set_with_tags():
    pairs = read_snli(SNLI_DIR)
    cs = sentence_concepts(pairs)
    tags = [n for n in cs.names if n.startswith("pre:tag:")]
    assert 30 <= len(tags) <= 45
    assert cs.n_concepts == 2 * (2000 + len(tags)) + 3
    assert cs.names[2000:2000 + len(tags)] == tuple(tags)
    assert cs.names[-3:] == ("oth:overlap:overlap25", "oth:overlap:overlap50", "oth:overlap:overlap75")
    assert tags[:3] == ["pre:tag:cd", "pre:tag:nns", "pre:tag:vbp"]   # "Two women are ..." first
    sizes = dict(zip(cs.names, cs.sizes.tolist()))
    assert sizes["pre:tag:nn"] > 9000 and sizes["hyp:tag:dt"] > 5000
    assert all(name.split(":")[2] == name.split(":")[2].lower() for name in tags)
