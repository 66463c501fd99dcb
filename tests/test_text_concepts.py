"""Token concepts (compexp_core.text): every family checked by hand on small token tables."""
import os
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from compexp_core.engine.concepts import ConceptSet
from compexp_core.io.tokens import TokenTable
from compexp_core import text as text_module
from compexp_core.text import CHAR_CLASSES, token_concepts, token_name, word_starts, words

# GPT-2 byte-level BPE: "Ġ" marks a leading space.
GPT2 = TokenTable.from_documents([["The", "Ġcat", "Ġsat", "Ġon", "Ġthe", "Ġmat", "."],
                                  ["Ġun", "believ", "able", "!", "ĠThe", "ĠCAT", "Ġ2024"]])
# SentencePiece: "▁" marks a leading space.
SPM = TokenTable.from_documents([["▁The", "▁cat", "s", "▁sat", "."], ["▁the", "▁cat"]])
# Plain text with leading spaces.
PLAIN = TokenTable.from_documents([["The", " cat", "'s", " tail", ","], ["\n", "Dogs"]])
# Word-level tokens and WordPiece: no start marker anywhere.
WORDPIECE = TokenTable.from_documents([["the", "un", "##believ", "##able", "cat", "."]])


class FakeTagger:
    """Tags a word by a dict (default NN) and records the sentences it saw."""

    def __init__(self, table=None):
        self.table = table or {}
        self.seen = []

    def tag_many(self, sentences):
        self.seen.extend(list(s) for s in sentences)
        return [[self.table.get(w, "NN") for w in s] for s in sentences]


def concepts(tokens, **kw):
    kw.setdefault("tags", False)
    return token_concepts(tokens, **kw)


def mask(cs, name):
    return cs.concept_mask(name).astype(int).tolist()


def family(cs, category):
    return [n for n, c in zip(cs.names, cs.categories) if c == category]


# ----------------------------------------------------------------------------- words
@pytest.mark.parametrize("tokens, starts, word_text", [
    (GPT2, [1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1],
     ["The", "cat", "sat", "on", "the", "mat", ".", "unbelievable", "!", "The", "CAT", "2024"]),
    (SPM, [1, 1, 0, 1, 1, 1, 1], ["The", "cats", "sat", ".", "the", "cat"]),
    (PLAIN, [1, 1, 0, 1, 1, 1, 1], ["The", "cat's", "tail", ",", "", "Dogs"]),
    (WORDPIECE, [1, 1, 0, 0, 1, 1], ["the", "unbelievable", "cat", "."]),
])
def test_word_starts_and_words(tokens, starts, word_text):
    assert word_starts(tokens).astype(int).tolist() == starts
    index, text = words(tokens)
    assert index.tolist() == (np.cumsum(starts) - 1).tolist()
    assert text == word_text


def test_punctuation_and_space_tokens_are_words_of_their_own():
    # "!" after "so" and "x" after "!" start words; the newline token "Ċ" (GPT-2) and the
    # token after it, too; "'s" continues its word; a document's first token starts one.
    t = TokenTable.from_documents([["Ġso", "!", "x", "Ċ", "The", "'s"], ["ing"]])
    assert word_starts(t).tolist() == [True, True, True, True, True, False, True]
    assert words(t)[1] == ["so", "!", "x", "", "The's", "ing"]


def test_token_name_spelling():
    assert [token_name(s) for s in ("Ġthe", "▁the", " the", "the", "ĠĠ", "\n", "a\tb")] == \
        ["▁the", "▁the", "▁the", "the", "▁▁", "\\n", "a\\tb"]


# ----------------------------------------------------------------------------- families
def test_token_family_gpt2():
    cs = concepts(GPT2, top_words=0, neighbours=0, char_classes=False, positions=None)
    assert family(cs, "token") == list(cs.names)
    # Every token occurs once: first occurrence order.
    assert cs.names[:3] == ("tok:The", "tok:▁cat", "tok:▁sat")
    assert mask(cs, "tok:▁The") == [0] * 11 + [1, 0, 0]
    assert mask(cs, "tok:The") == [1] + [0] * 13
    assert mask(cs, "tok:able") == [0] * 9 + [1] + [0] * 4


def test_token_names_merge_tokenizer_spellings():
    t = TokenTable.from_documents([["Ġthe", " the", "▁the", "the"]])
    cs = concepts(t, top_words=0, neighbours=0, char_classes=False, positions=None)
    assert cs.names == ("tok:▁the", "tok:the")
    assert mask(cs, "tok:▁the") == [1, 1, 1, 0]


def test_top_n_ties_keep_first_occurrence():
    # counts: b 3, a 2, c 2, d 1 -> b, a, c (a before c: first seen earlier), then d
    t = TokenTable.from_documents([["d", "a", "b", "c"], ["c", "b", "a", "b"]])
    cs = concepts(t, top_tokens=3, top_words=0, neighbours=0, char_classes=False, positions=None)
    assert cs.names == ("tok:b", "tok:a", "tok:c")
    cs = concepts(t, top_tokens=10, top_words=0, neighbours=0, char_classes=False,
                  positions=None, min_count=2)
    assert cs.names == ("tok:b", "tok:a", "tok:c")


def test_word_family_lowercases_and_covers_every_piece():
    cs = concepts(GPT2, top_tokens=0, char_classes=False, positions=None)
    assert family(cs, "word") == list(cs.names)
    # Ranked by tokens covered: "the" (The, Ġthe, ĠThe) and "unbelievable" (3 pieces) tie and
    # keep first occurrence; then "cat" (2).
    assert cs.names[:3] == ("word:the", "word:unbelievable", "word:cat")
    assert mask(cs, "word:the") == [1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0]
    assert mask(cs, "word:unbelievable") == [0] * 7 + [1, 1, 1] + [0] * 4
    cs = concepts(SPM, top_tokens=0, char_classes=False, positions=None)
    assert mask(cs, "word:cats") == [0, 1, 1, 0, 0, 0, 0]
    assert mask(cs, "word:cat") == [0, 0, 0, 0, 0, 0, 1]


def test_word_family_leaves_out_space_words():
    cs = concepts(PLAIN, top_tokens=0, char_classes=False, positions=None)
    assert cs.names == ("word:cat's", "word:the", "word:tail", "word:,", "word:dogs")
    assert mask(cs, "word:cat's") == [0, 1, 1, 0, 0, 0, 0]


def test_control_characters_are_escaped_in_names():
    t = TokenTable.from_documents([["Ġa\x00b", "Ġc\x07"]])
    cs = concepts(t, char_classes=False, positions=None)
    assert cs.names[:4] == ("tok:▁a\\x00b", "tok:▁c\\x07", "word:a\\x00b", "word:c\\x07")


def test_prev_and_next_stay_inside_documents():
    # Document 0 ends with "c", document 1 starts with "a": no neighbour across.
    t = TokenTable.from_documents([["a", "b", "c"], ["a", "c", "b"]])
    cs = concepts(t, top_words=0, char_classes=False, positions=None)
    assert family(cs, "prev") == ["prev:tok:a", "prev:tok:b", "prev:tok:c"]
    assert family(cs, "next") == ["next:tok:b", "next:tok:c"]   # nothing precedes an "a"
    assert mask(cs, "prev:tok:a") == [0, 1, 0, 0, 1, 0]
    assert mask(cs, "prev:tok:c") == [0, 0, 0, 0, 0, 1]
    assert mask(cs, "next:tok:c") == [0, 1, 0, 1, 0, 0]
    assert mask(cs, "next:tok:b") == [1, 0, 0, 0, 1, 0]


def test_neighbours_only_for_the_most_frequent_kept_tokens():
    t = TokenTable.from_documents([["x", "x", "y", "x", "z"]])
    cs = concepts(t, top_tokens=2, top_words=0, neighbours=1, char_classes=False, positions=None)
    assert cs.names == ("tok:x", "tok:y", "prev:tok:x", "next:tok:x")
    assert mask(cs, "prev:tok:x") == [0, 1, 1, 0, 1]
    # neighbours above top_tokens means every kept token
    cs = concepts(t, top_tokens=1, top_words=0, neighbours=50, char_classes=False, positions=None)
    assert cs.names == ("tok:x", "prev:tok:x", "next:tok:x")


def test_neighbours_across_a_gap_in_positions():
    # Position 2 was dropped (padding): token at position 3 has no previous token.
    t = TokenTable([0, 0, 0], [0, 1, 3], [-1, -1, -1], ["a", "b", "c"])
    cs = concepts(t, top_words=0, char_classes=False, positions=None)
    assert mask(cs, "next:tok:b") == [1, 0, 0]
    assert "prev:tok:b" not in cs.names


def test_tags_inherited_by_subword_tokens_and_tagged_per_document():
    tagger = FakeTagger({"The": "DT", "the": "DT", ".": ".", "!": ".", "2024": "CD", "sat": "VBD",
                         "on": "IN"})
    cs = concepts(GPT2, top_tokens=0, top_words=0, tags=True, tagger=tagger, char_classes=False,
                  positions=None)
    assert tagger.seen == [["The", "cat", "sat", "on", "the", "mat", "."],
                           ["unbelievable", "!", "The", "CAT", "2024"]]
    assert family(cs, "tag") == list(cs.names)
    # NN: cat, mat, the three pieces of "unbelievable", CAT (6); DT 3; "." 2; then first seen.
    assert cs.names == ("tag:NN", "tag:DT", "tag:.", "tag:VBD", "tag:IN", "tag:CD")
    assert mask(cs, "tag:NN") == [0, 1, 0, 0, 0, 1, 0, 1, 1, 1, 0, 0, 1, 0]


def test_space_words_are_not_tagged():
    tagger = FakeTagger()
    cs = concepts(PLAIN, top_tokens=0, top_words=0, tags=True, tagger=tagger, char_classes=False,
                  positions=None)
    assert tagger.seen == [["The", "cat's", "tail", ","], ["Dogs"]]
    assert mask(cs, "tag:NN") == [1, 1, 1, 1, 1, 0, 1]


def test_real_tagger():
    tagger = pytest.importorskip("compexp_core.nli.tagger")
    if tagger.find_tagger_weights() is None:
        pytest.skip("textblob-aptagger not installed")
    t = TokenTable.from_documents([["ĠThe", "Ġdog", "s", "Ġrun", "Ġquick", "ly", "."]])
    cs = concepts(t, top_tokens=0, top_words=0, tags=True, char_classes=False, positions=None)
    expected = tagger.default_tagger().tag(["The", "dogs", "run", "quickly", "."])
    token_tags = [expected[w] for w in words(t)[0]]
    for tag in set(expected):
        assert mask(cs, f"tag:{tag}") == [int(x == tag) for x in token_tags]


def test_missing_tagger_warns_once_and_leaves_tags_out(monkeypatch):
    def absent():
        raise ImportError("no weights")
    monkeypatch.setattr(text_module, "default_tagger", absent)
    with pytest.warns(UserWarning, match="part-of-speech concepts left out") as record:
        cs = token_concepts(SPM, top_words=0)
    assert len(record) == 1
    assert not family(cs, "tag")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        token_concepts(SPM, tags=False)


def test_bad_tagger_output_is_named():
    class Short:
        def tag_many(self, sentences):
            return [s[:-1] for s in sentences]
    with pytest.raises(ValueError, match="3 tags for the 4 words of document 0"):
        token_concepts(SPM, tagger=Short())


def test_character_classes():
    t = TokenTable.from_documents([["ĠThe", "ĠNASA", "Ġok", "42", "Ġ", ".", "ĠI", "Ġx1", "$"]])
    cs = concepts(t, top_tokens=0, top_words=0, neighbours=0, positions=None)
    assert family(cs, "class") == [f"is:{c}" for c in CHAR_CLASSES]
    assert mask(cs, "is:capitalized") == [1, 1, 0, 0, 0, 0, 1, 0, 0]
    assert mask(cs, "is:upper") == [0, 1, 0, 0, 0, 0, 0, 0, 0]        # "I": one letter only
    assert mask(cs, "is:lower") == [0, 0, 1, 0, 0, 0, 0, 1, 0]
    assert mask(cs, "is:alpha") == [1, 1, 1, 0, 0, 0, 1, 0, 0]
    assert mask(cs, "is:digit") == [0, 0, 0, 1, 0, 0, 0, 0, 0]
    assert mask(cs, "is:punct") == [0, 0, 0, 0, 0, 1, 0, 0, 1]
    assert mask(cs, "is:space") == [0, 0, 0, 0, 1, 0, 0, 0, 0]
    assert mask(cs, "is:word_start") == [1, 1, 1, 0, 1, 1, 1, 1, 1]
    assert mask(cs, "is:subword") == [0, 0, 0, 1, 0, 0, 0, 0, 0]
    assert set(cs.categories) == {"class"}


def test_character_class_subset_and_empty_classes_dropped():
    cs = concepts(SPM, top_tokens=0, top_words=0, positions=None, char_classes=["subword", "digit"])
    assert cs.names == ("is:subword",)       # no digit token: left out; CHAR_CLASSES order
    assert mask(cs, "is:subword") == [0, 0, 1, 0, 0, 0, 0]


def test_position_buckets():
    t = TokenTable.from_documents([list("abcdefghij"), list("xyz")])
    cs = concepts(t, top_tokens=0, top_words=0, char_classes=False)
    assert cs.names == ("pos:0", "pos:1-3", "pos:4-7", "pos:8-15")
    assert set(cs.categories) == {"position"}
    assert mask(cs, "pos:1-3") == [0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1]
    assert mask(cs, "pos:8-15") == [0] * 8 + [1, 1, 0, 0, 0]
    cs = concepts(t, top_tokens=0, top_words=0, char_classes=False, positions=(2, 5))
    assert cs.names == ("pos:2-4", "pos:5+")
    assert mask(cs, "pos:2-4") == [0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1]


def test_patterns_on_words_and_on_tokens():
    pats = {"neg": r"^(not|never)$", "cap": re.compile(r"^[A-Z]"), "none": "zzz"}
    t = TokenTable.from_documents([["ĠI", "Ġdo", "Ġnot", "Ġnev", "er", "ĠNo"]])
    cs = concepts(t, top_tokens=0, top_words=0, char_classes=False, positions=None, patterns=pats)
    assert cs.names == ("re:neg", "re:cap")     # re:none matches nothing: left out
    assert set(cs.categories) == {"pattern"}
    assert mask(cs, "re:neg") == [0, 0, 1, 1, 1, 0]     # both pieces of "never"
    assert mask(cs, "re:cap") == [1, 0, 0, 0, 0, 1]
    cs = concepts(t, top_tokens=0, top_words=0, char_classes=False, positions=None,
                  patterns={"start": "^▁", "er": "er$"}, pattern_target="token")
    assert mask(cs, "re:start") == [1, 1, 1, 1, 0, 1]
    assert mask(cs, "re:er") == [0, 0, 0, 0, 1, 0]


def test_spans():
    t = TokenTable.from_documents([list("abcde"), list("fgh")])
    spans = [(0, 1, 3, "ent"), (1, 0, 1, "ent"), (0, 2, 5, "quote"), (0, 0, 2, "ent")]
    cs = concepts(t, top_tokens=0, top_words=0, char_classes=False, positions=None, spans=spans)
    assert cs.names == ("span:ent", "span:quote")
    assert set(cs.categories) == {"span"}
    assert mask(cs, "span:ent") == [1, 1, 1, 0, 0, 1, 0, 0]
    assert mask(cs, "span:quote") == [0, 0, 1, 1, 1, 0, 0, 0]
    cs = concepts(t, top_tokens=0, top_words=0, char_classes=False, positions=None, spans=spans,
                  min_count=4)
    assert cs.names == ("span:ent",)                  # overlapping spans count once: 4 tokens


def test_family_order_and_categories():
    cs = token_concepts(GPT2, tagger=FakeTagger(), patterns={"p": "a"}, spans=[(0, 0, 1, "x")])
    order = [c for i, c in enumerate(cs.categories) if i == 0 or cs.categories[i - 1] != c]
    assert order == ["token", "word", "prev", "next", "tag", "class", "position", "pattern", "span"]
    assert isinstance(cs, ConceptSet) and cs.grid == (1, 1) and cs.n_samples == len(GPT2)


def test_concepts_match_their_definitions_on_a_mixed_table():
    # Each token concept is checked against a direct per-token reading of its name.
    cs = token_concepts(GPT2, tags=False, positions=None, char_classes=False)
    prev_row, next_row = GPT2.previous_row(), GPT2.next_row()
    names = [token_name(s) for s in GPT2.text]
    for name in cs.names:
        kind, _, x = name.partition(":")
        if kind == "tok":
            want = [n == x for n in names]
        elif kind in ("prev", "next"):
            row = prev_row if kind == "prev" else next_row
            want = [r >= 0 and names[r] == x.removeprefix("tok:") for r in row]
        else:
            index, text = words(GPT2)
            want = [text[w].lower() == x for w in index]
        assert mask(cs, name) == [int(v) for v in want], name


# ----------------------------------------------------------------------------- chunking
@settings(max_examples=25, deadline=None)
@given(st.integers(1, 40), st.integers(0, 2**31 - 1))
def test_chunked_build_equals_one_chunk(chunk, seed):
    rng = np.random.default_rng(seed)
    pieces = ["Ġa", "Ġb", "c", "ĠD", ".", "Ġ", "12"]
    docs = [[pieces[i] for i in rng.integers(0, len(pieces), rng.integers(1, 9))]
            for _ in range(rng.integers(1, 8))]
    t = TokenTable.from_documents(docs)
    kw = dict(tagger=FakeTagger({".": "."}), patterns={"a": "a|b"}, positions=(0, 2, 5),
              spans=[(0, 0, 1, "s")])
    one = token_concepts(t, chunk_tokens=len(t), **kw)
    many = token_concepts(t, chunk_tokens=chunk, **kw)
    assert one.names == many.names and one.categories == many.categories
    for a, b in zip(one.arrays.__dict__.values(), many.arrays.__dict__.values()):
        np.testing.assert_array_equal(a, b)


def test_dense_columns_split_into_row_blocks(monkeypatch):
    # With a tiny byte budget every dense family is handed on a few rows at a time.
    t = TokenTable.from_documents([["ĠA", "b", "Ġc", "."] * 40])
    one = concepts(t, spans=[(0, 3, 90, "s")])
    monkeypatch.setattr(text_module, "_DENSE_BYTES", 7)
    small = concepts(t, spans=[(0, 3, 90, "s")], chunk_tokens=50)
    np.testing.assert_array_equal(one.to_dense(), small.to_dense())


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kw, error, match", [
    (dict(char_classes=["capitalized", "shouting"]), ValueError, "unknown char_classes.*shouting"),
    (dict(char_classes="upper"), TypeError, "char_classes"),
    (dict(patterns={"bad": "(unclosed"}), ValueError, "pattern 'bad' is not a valid regular"),
    (dict(patterns={"n": 3}), TypeError, "pattern 'n'"),
    (dict(patterns=["a"]), TypeError, "patterns must be a dict"),
    (dict(pattern_target="doc"), ValueError, "pattern_target"),
    (dict(spans=[(0, 0, 9, "x")]), ValueError, r"spans\[0\].*out of range.*positions 0..4"),
    (dict(spans=[(5, 0, 1, "x")]), ValueError, r"spans\[0\].*document 5 has no tokens"),
    (dict(spans=[(0, 2, 2, "x")]), ValueError, "out of range"),
    (dict(spans=[(0, 0, 1)]), ValueError, r"spans\[0\].*is not \(doc"),
    (dict(spans=[(0, 0, 1, "")]), TypeError, "label"),
    (dict(top_tokens=-1), ValueError, "top_tokens must be >= 0"),
    (dict(top_words=2.5), TypeError, "top_words must be an int"),
    (dict(chunk_tokens=0), ValueError, "chunk_tokens"),
    (dict(positions=(0, 4, 4)), ValueError, "strictly increasing"),
    (dict(positions=(0, "1")), TypeError, "bucket starts must be ints"),
    (dict(top_tokens=0, top_words=0, char_classes=False, positions=None), ValueError,
     "no concept left"),
])
def test_bad_input(kw, error, match):
    with pytest.raises(error, match=match):
        concepts(SPM, **kw)


def test_bad_tokens():
    with pytest.raises(TypeError, match="TokenTable"):
        token_concepts([["a", "b"]])
    with pytest.raises(ValueError, match="empty"):
        token_concepts(TokenTable.from_documents([]))
    with pytest.raises(TypeError, match="TokenTable"):
        word_starts(["a"])


# ----------------------------------------------------------------------------- memory at scale
_SCALE_SCRIPT = textwrap.dedent("""
    import sys, time
    import numpy as np
    from compexp_core.io.tokens import TokenTable
    from compexp_core.text import token_concepts
    n = 1_000_000
    rng = np.random.default_rng(0)
    words = [f"w{i}" if i % 7 else f"W{i}" for i in range(20000)]
    pieces = ["Ġ" + w for w in words] + words[:5000] + [".", ",", "Ġ(", "123"]
    p = 1.0 / np.arange(1, len(pieces) + 1) ** 1.1
    ids = rng.choice(len(pieces), size=n, p=p / p.sum())
    table = TokenTable(np.arange(n) // 128, np.arange(n) % 128, ids, [pieces[i] for i in ids.tolist()])
    def hwm():
        return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))
    open("/proc/self/clear_refs", "w").write("5")      # reset the peak to the current size
    base = hwm()
    t0 = time.perf_counter()
    cs = token_concepts(table, top_tokens=2000, top_words=2000, neighbours=500, tags=False)
    print(cs.n_concepts, hwm() - base, time.perf_counter() - t0)
""")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak reset")
def test_one_million_tokens_stay_far_below_dense_memory():
    # The subprocess imports compexp_core as this process does (an installed build, or the
    # tree on PYTHONPATH): a bare src/ holds no compiled module after a non-editable install.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", _SCALE_SCRIPT], capture_output=True, text=True,
                         env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    k, extra, seconds = out.stdout.split()
    k, extra = int(k), int(extra)
    assert k > 4500
    # A dense [N, K] bool matrix would be N*K bytes (~4.7 GiB); the build stays under a fifth.
    assert extra < 1_000_000 * k / 5, (extra, seconds)
