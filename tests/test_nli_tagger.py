"""The part-of-speech tagger: the restricted weights loader, the predictor's feature rules on toy
weights, and (when textblob-aptagger is installed) the real weights against the package's own
tagger."""
import os
import pickle
import subprocess
import sys
import types
import warnings
from pathlib import Path

import pytest

from compexp_core.nli import read_snli
from compexp_core.nli import tagger as tagger_module
from compexp_core.nli.tagger import (PosTagger, default_tagger, find_tagger_weights, load_tagger_weights,
                                     normalize_word)

SNLI_DIR = Path(os.environ.get("COMPEXP_SNLI_DIR",
                               Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "snli"))
needs_snli = pytest.mark.skipif(not (SNLI_DIR / "snli_1.0_dev.tok").is_file(),
                                reason=f"SNLI data not found at {SNLI_DIR}")
WEIGHTS = find_tagger_weights()
needs_weights = pytest.mark.skipif(WEIGHTS is None, reason="textblob-aptagger (the tagger weights) not installed")


def write_pickle(path: Path, obj, protocol: int = 2) -> Path:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return path


def toy(tmp_path, weights, tagdict=None, classes=("NN", "VB", "DT")) -> PosTagger:
    return PosTagger(write_pickle(tmp_path / "toy.pickle", (weights, tagdict or {}, set(classes))))


# ------------------------------------------------------------------------- the restricted loader

class _Evil:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_a_pickle_that_would_run_a_command_is_refused(tmp_path, protocol):
    marker = tmp_path / "ran"
    path = write_pickle(tmp_path / "evil.pickle", ({"bias": {"NN": 1.0}}, {}, _Evil(f"touch {marker}")),
                        protocol)
    with pytest.raises(ValueError, match=r"evil\.pickle is not the tagger weights file we expect: "
                                         r"it asks for (os|posix)\.system"):
        load_tagger_weights(path)
    assert not marker.exists()


def test_other_builtins_are_refused_too(tmp_path):
    class CallsEval:
        def __reduce__(self):
            return (eval, ("1 + 1",))

    with pytest.raises(ValueError, match=r"asks for _*builtins?_*\.eval"):
        load_tagger_weights(write_pickle(tmp_path / "e.pickle", CallsEval()))
    with pytest.raises(ValueError, match=r"asks for _*builtins?_*\.frozenset"):
        load_tagger_weights(write_pickle(tmp_path / "f.pickle", ({}, {}, frozenset({"NN"}))))


def test_truncated_and_foreign_files(tmp_path):
    good = pickle.dumps(({"bias": {"NN": 1.0}, "i word dog": {"NN": 2.0}}, {"the": "DT"}, {"NN", "DT"}),
                        protocol=2)
    for cut in (1, len(good) // 2, len(good) - 1):
        (tmp_path / "cut.pickle").write_bytes(good[:cut])
        with pytest.raises(ValueError, match=r"cut\.pickle is not the tagger weights file we expect"):
            load_tagger_weights(tmp_path / "cut.pickle")
    (tmp_path / "text.pickle").write_text("weights = {}\n")
    with pytest.raises(ValueError, match="not the tagger weights file we expect"):
        load_tagger_weights(tmp_path / "text.pickle")
    (tmp_path / "empty.pickle").write_bytes(b"")
    with pytest.raises(ValueError, match="not a complete pickle"):
        load_tagger_weights(tmp_path / "empty.pickle")
    with pytest.raises(FileNotFoundError, match="tagger weights file not found"):
        load_tagger_weights(tmp_path / "absent.pickle")
    with pytest.raises(FileNotFoundError):
        PosTagger(tmp_path / "absent.pickle")


@needs_weights
def test_a_truncated_real_weights_file_is_refused(tmp_path):
    data = WEIGHTS.read_bytes()
    (tmp_path / "w.pickle").write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match="not a complete pickle"):
        load_tagger_weights(tmp_path / "w.pickle")


@pytest.mark.parametrize("obj, message", [
    ({"bias": {"NN": 1.0}}, "expected a tuple"),
    (({"bias": {"NN": 1.0}}, {}), "expected a tuple"),
    (({"bias": {"NN": 1.0}}, {}, ["NN"]), "classes must be a non-empty set"),
    (({"bias": {"NN": 1.0}}, {}, set()), "classes must be a non-empty set"),
    (({"bias": {"NN": 1.0}}, {}, {1}), "classes must be a non-empty set"),
    (({"bias": {"NN": 1.0}}, ["the"], {"NN"}), "tagdict must be a dict"),
    (({"bias": {"NN": 1.0}}, {"the": "DT"}, {"NN"}), r"tagdict entry 'the': 'DT'"),
    (({}, {}, {"NN"}), "weights must be a non-empty dict"),
    (({"bias": [1.0]}, {}, {"NN"}), "weights entry 'bias'"),
    (({"bias": {"VB": 1.0}}, {}, {"NN"}), r"weights\['bias'\] has 'VB'"),
    (({"bias": {"NN": "1"}}, {}, {"NN"}), r"weights\['bias'\] has 'NN': '1'"),
    (({"bias": {"NN": float("nan")}}, {}, {"NN"}), r"weights\['bias'\] has 'NN': nan"),
])
def test_wrong_structure_is_named(tmp_path, obj, message):
    with pytest.raises(ValueError, match=message):
        load_tagger_weights(write_pickle(tmp_path / "w.pickle", obj))


def test_finding_the_weights_does_not_import_the_package():
    code = ("import sys\nfrom compexp_core.nli.tagger import find_tagger_weights\n"
            "p = find_tagger_weights()\n"
            "print(p is None or p.name, sorted(m for m in sys.modules if m.split('.')[0] in "
            "('textblob', 'textblob_aptagger', 'nltk')))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split(" ", 1)[1].strip() == "[]"


def test_without_the_package_the_tagger_says_what_to_install(monkeypatch):
    monkeypatch.setattr(tagger_module, "find_tagger_weights", lambda: None)
    for make in (PosTagger, default_tagger):
        with pytest.raises(ImportError, match=r'pip install "compexp-core\[nli\]"'):
            make()


# ------------------------------------------------------------------- the predictor on toy weights

def test_normalize_word():
    assert [normalize_word(w) for w in ("well-dressed", "-LRB-", "1999", "12", "3rd", "Dog", "'s")] == \
        ["!HYPHEN", "-lrb-", "!YEAR", "!DIGITS", "!DIGITS", "dog", "'s"]


def test_tagdict_words_skip_the_perceptron_and_are_case_sensitive(tmp_path):
    t = toy(tmp_path, {"bias": {"VB": 1.0}}, tagdict={"the": "DT"})
    assert t.tag(["the", "The", "dog"]) == ["DT", "VB", "VB"]


def test_ties_go_to_the_alphabetically_last_tag(tmp_path):
    t = toy(tmp_path, {"bias": {"DT": 1.0, "VB": 1.0, "NN": 0.5}})
    assert t.tag(["x"]) == ["VB"]
    t = toy(tmp_path, {"bias": {"DT": -1.0}})            # NN and VB score 0: VB
    assert t.tag(["x"]) == ["VB"]


@pytest.mark.parametrize("feature, tokens, expected", [
    ("i suffix ogs", ["Dogs"], ["VB"]),                          # raw word, case kept
    ("i pref1 D", ["Dogs", "dogs"], ["VB", "NN"]),
    ("i word !YEAR", ["in", "1999"], ["NN", "VB"]),
    ("i word !HYPHEN", ["well-dressed"], ["VB"]),
    ("i word dogs", ["Dogs"], ["VB"]),                           # context words lower-cased
    ("i-1 word -START2-", ["a", "b"], ["VB", "NN"]),             # padding: -START- -START2- a b
    ("i-2 word -START-", ["a", "b"], ["VB", "NN"]),
    ("i-2 word -START2-", ["a", "b"], ["NN", "VB"]),
    ("i-1 word a", ["A", "b"], ["NN", "VB"]),
    ("i+1 word -END-", ["a", "b", "c"], ["NN", "NN", "VB"]),     # a b c -END- -END2-
    ("i+2 word -END-", ["a", "b", "c"], ["NN", "VB", "NN"]),
    ("i+2 word -END2-", ["a", "b", "c"], ["NN", "NN", "VB"]),
    ("i+1 suffix ND-", ["a", "b"], ["NN", "VB"]),                # suffix of "-END-"
    ("i-1 suffix T2-", ["a", "b"], ["VB", "NN"]),                # suffix of "-START2-"
    ("i+1 word !digits", ["a", "3rd"], ["NN", "NN"]),             # normalised: !DIGITS
    ("i+1 word !DIGITS", ["a", "3rd"], ["VB", "NN"]),
    ("i-1 tag -START-", ["a", "b"], ["VB", "NN"]),
    ("i-2 tag -START2-", ["a", "b"], ["VB", "NN"]),
    ("i-2 tag -START-", ["a", "b", "c"], ["NN", "VB", "NN"]),
    ("i tag+i-2 tag -START- -START2-", ["a", "b"], ["VB", "NN"]),
    ("i-1 tag+i word -START- a", ["a", "a"], ["VB", "NN"]),
    ("bias", ["a", "b"], ["VB", "VB"]),
])
def test_feature_strings(tmp_path, feature, tokens, expected):
    # A bias to NN; the one feature under test pushes VB above it.
    weights = {"bias": {"NN": 1.0}}
    weights[feature] = {**weights.get(feature, {}), "VB": 2.0}
    assert toy(tmp_path, weights).tag(tokens) == expected


def test_previous_tags_are_the_predicted_ones(tmp_path):
    # x -> VB by its word; after a VB, the next word is DT; after VB DT, NN (the default).
    t = toy(tmp_path, {"bias": {"NN": 1.0}, "i word x": {"VB": 5.0}, "i-1 tag VB": {"DT": 3.0},
                       "i tag+i-2 tag DT VB": {"VB": 9.0}})
    assert t.tag(["x", "y", "z", "w"]) == ["VB", "DT", "VB", "DT"]
    # a batch tags each sentence from its own start, whatever the other sentences are
    assert t.tag_many([["y", "x"], ["x", "y", "z"], [], ["q"]]) == \
        [["NN", "VB"], ["VB", "DT", "VB"], [], ["NN"]]


def test_tag_many_checks_its_input(tmp_path):
    t = toy(tmp_path, {"bias": {"NN": 1.0}})
    with pytest.raises(TypeError, match="not a string"):
        t.tag_many("a dog")
    with pytest.raises(TypeError, match="sentence 1 is a string"):
        t.tag_many([["a"], "a dog"])
    with pytest.raises(ValueError, match="sentence 0: tokens must be non-empty strings, got ''"):
        t.tag(["a", ""])
    with pytest.raises(ValueError, match="got 3"):
        t.tag(["a", 3])
    assert t.tag_many([]) == []


# --------------------------------------------------------------------------------- real weights

@needs_weights
def test_real_weights_tag_simple_sentences():
    t = default_tagger()
    assert t is default_tagger()
    assert len(t.tags) == 45 and "NN" in t.tags
    assert t.tag("The dog runs .".split()) == ["DT", "NN", "VBZ", "."]
    assert t.tag("Two women are embracing while holding to go packages .".split()) == \
        ["CD", "NNS", "VBP", "VBG", "IN", "VBG", "TO", "VB", "NNS", "."]
    assert t.tag("A man is playing a guitar on the street".split()) == \
        ["DT", "NN", "VBZ", "VBG", "DT", "NN", "IN", "DT", "NN"]


def _reference_tagger(monkeypatch):
    """The package's own tagger, or None. textblob 0.18+ dropped ``textblob.packages``, which
    the package imports (for NLTK's tokenizers, unused when tokenize=False): supply it."""
    try:
        import textblob.packages  # noqa: F401
    except ImportError:
        try:
            import nltk
        except ImportError:
            return None
        shim = types.ModuleType("textblob.packages")
        shim.nltk = nltk
        monkeypatch.setitem(sys.modules, "textblob.packages", shim)
    try:
        from textblob_aptagger import PerceptronTagger
    except ImportError:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)      # it never closes the weights file
        return PerceptronTagger()


@needs_weights
@needs_snli
def test_real_weights_agree_exactly_with_the_package_on_snli(monkeypatch):
    reference = _reference_tagger(monkeypatch)
    if reference is None:
        pytest.skip("textblob_aptagger is not importable here")
    pairs = read_snli(SNLI_DIR)
    step = len(pairs) // 200
    sentences = [s for k in range(0, len(pairs), step) for s in (pairs.premises[k], pairs.hypotheses[k])]
    assert len(sentences) == 400
    ours = default_tagger().tag_many(sentences)
    theirs = [[tag for _, tag in reference.tag(" ".join(s), tokenize=False)] for s in sentences]
    disagree = [(s, a, b) for s, a, b in zip(sentences, ours, theirs) if a != b]
    assert not disagree, disagree[:3]


@needs_weights
@needs_snli
def test_tagging_the_dev_set_tags_every_word():
    # Its speed (3.5 s for these 20,000 sentences on the idle VM) is measured, not asserted:
    # a wall-clock bound fails on a loaded machine without anything being wrong.
    pairs = read_snli(SNLI_DIR)
    sentences = [*pairs.premises, *pairs.hypotheses]
    tags = default_tagger().tag_many(sentences)
    assert [len(t) for t in tags] == [len(s) for s in sentences]
