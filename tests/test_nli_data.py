"""Reading SNLI pairs: the tokenized dev set, SNLI's jsonl, and every malformed input."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from compexp_core.nli import LABELS, SNLIPairs, read_snli, simple_tokenize

SNLI_DIR = Path(os.environ.get("COMPEXP_SNLI_DIR",
                               Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "snli"))
needs_snli = pytest.mark.skipif(not (SNLI_DIR / "snli_1.0_dev.tok").is_file(),
                                reason=f"SNLI data not found at {SNLI_DIR}")


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def tok_pair(tmp_path, tok: str, labels: str, stem: str = "d"):
    write(tmp_path / f"{stem}.labels", labels)
    return write(tmp_path / f"{stem}.tok", tok)


# ----------------------------------------------------------------------------- the real dev set

@needs_snli
def test_dev_set_counts_match_the_readme():
    pairs = read_snli(SNLI_DIR)
    assert len(pairs) == 10_000
    counts = {name: int((pairs.labels == i).sum()) for i, name in enumerate(LABELS)}
    assert counts == {"entailment": 3329, "neutral": 3235, "contradiction": 3278}
    assert int((pairs.labels == -1).sum()) == 158
    assert pairs.labels.dtype == np.int8
    assert pairs.premises[0] == tuple("Two women are embracing while holding to go packages .".split())
    assert pairs.hypotheses[0][:2] == ("The", "sisters")          # case kept
    assert all(pairs.premises) and all(pairs.hypotheses)
    # the .tok file itself, and an explicit labels file, give the same pairs
    assert read_snli(SNLI_DIR / "snli_1.0_dev.tok",
                     labels=SNLI_DIR / "snli_1.0_dev.labels") == pairs


# ------------------------------------------------------------------------------- tokenized files

def test_tok_file_directory_and_explicit_labels(tmp_path):
    tok = tok_pair(tmp_path, "A dog runs .\nAn animal moves .\nA cat\nCats\n", "gt\nneutral\n-\n")
    for source in (tmp_path, tok, str(tok)):
        pairs = read_snli(source)
        assert pairs.premises == (("A", "dog", "runs", "."), ("A", "cat"))
        assert pairs.hypotheses == (("An", "animal", "moves", "."), ("Cats",))
        assert pairs.labels.tolist() == [1, -1]
    other = write(tmp_path / "other.txt", "gt\ncontradiction\nentailment\n")
    assert read_snli(tok, labels=other).labels.tolist() == [2, 0]


def test_whitespace_and_crlf_are_token_separators(tmp_path):
    tok = tok_pair(tmp_path, "  A\tdog  runs \r\nIt moves\r\n", "gt\r\nUNK\r\n")
    pairs = read_snli(tok)
    assert pairs.premises == (("A", "dog", "runs"),) and pairs.labels.tolist() == [-1]


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_snli(tmp_path / "nothing.tok")
    with pytest.raises(FileNotFoundError, match=r"holds no snli_1\.0_dev\.tok"):
        read_snli(tmp_path)
    tok = write(tmp_path / "d.tok", "a\nb\n")
    with pytest.raises(FileNotFoundError, match=r"labels file of .*d\.tok not found: .*d\.labels"):
        read_snli(tok)
    with pytest.raises(FileNotFoundError, match="not found"):
        read_snli(tok, labels=tmp_path / "x.labels")


def test_several_tok_files_in_a_directory_are_ambiguous(tmp_path):
    tok_pair(tmp_path, "a\nb\n", "gt\nneutral\n", stem="one")
    tok_pair(tmp_path, "a\nb\n", "gt\nneutral\n", stem="two")
    with pytest.raises(ValueError, match=r"several \*\.tok files \(one\.tok, two\.tok\)"):
        read_snli(tmp_path)
    # the default name wins over the others
    tok_pair(tmp_path, "c\nd\n", "gt\nentailment\n", stem="snli_1.0_dev")
    assert read_snli(tmp_path).premises == (("c",),)


def test_odd_number_of_lines(tmp_path):
    tok = tok_pair(tmp_path, "a\nb\nc\n", "gt\nneutral\n")
    with pytest.raises(ValueError, match=r"d\.tok: 3 lines, an odd number"):
        read_snli(tok)


@pytest.mark.parametrize("text, line", [("a\n\nc\nd\n", 2), ("a\nb\n   \nd\n", 3)])
def test_empty_sentence_names_file_and_line(tmp_path, text, line):
    tok = tok_pair(tmp_path, text, "gt\nneutral\nneutral\n")
    with pytest.raises(ValueError, match=rf"d\.tok, line {line}: empty sentence"):
        read_snli(tok)


def test_labels_header_must_be_gt(tmp_path):
    tok = tok_pair(tmp_path, "a\nb\n", "label\nneutral\n")
    with pytest.raises(ValueError, match=r"d\.labels, line 1: header 'label', expected 'gt'"):
        read_snli(tok)


def test_unknown_label_names_file_and_line(tmp_path):
    tok = tok_pair(tmp_path, "a\nb\nc\nd\n", "gt\nneutral\nEntailment\n")
    with pytest.raises(ValueError, match=r"d\.labels, line 3: unknown label 'Entailment'"):
        read_snli(tok)


def test_pair_and_label_counts_must_agree(tmp_path):
    tok = tok_pair(tmp_path, "a\nb\nc\nd\n", "gt\nneutral\n")
    with pytest.raises(ValueError, match=r"holds 2 pairs but .*d\.labels holds 1 labels"):
        read_snli(tok)


@pytest.mark.parametrize("which", ["tok", "labels"])
def test_empty_files(tmp_path, which):
    tok = tok_pair(tmp_path, "" if which == "tok" else "a\nb\n", "" if which == "labels" else "gt\nneutral\n")
    with pytest.raises(ValueError, match=rf"d\.{which}: the file is empty"):
        read_snli(tok)


def test_not_utf8(tmp_path):
    tok = tok_pair(tmp_path, "a\nb\n", "gt\nneutral\n")
    tok.write_bytes(b"caf\xe9\nb\n")
    with pytest.raises(ValueError, match="not UTF-8"):
        read_snli(tok)


# ------------------------------------------------------------------------------------------ jsonl

def jsonl_records():
    return [
        {"gold_label": "entailment", "sentence1": "A dog runs (fast).", "sentence2": "An animal moves.",
         "sentence1_binary_parse": "( ( A dog ) ( ( runs ( -LRB- fast -RRB- ) ) . ) )",
         "sentence2_binary_parse": "( ( An animal ) ( moves . ) )"},
        {"gold_label": "-", "sentence1": "Two well-dressed men don't sit.", "sentence2": "Men stand"},
        {"gold_label": "contradiction", "sentence1": "x", "sentence2": "y",
         "sentence1_binary_parse": "", "sentence2_binary_parse": "( z )"},
    ]


def write_jsonl(path: Path, records, extra: str = "") -> Path:
    return write(path, "\n".join(json.dumps(r) for r in records) + "\n" + extra)


def test_jsonl_sample(tmp_path):
    path = write_jsonl(tmp_path / "snli_1.0_dev.jsonl", jsonl_records(), extra="\n")
    for source in (path, tmp_path):
        pairs = read_snli(source)
        assert pairs.premises == (("A", "dog", "runs", "-LRB-", "fast", "-RRB-", "."),
                                  ("Two", "well-dressed", "men", "don't", "sit", "."),
                                  ("x",))
        assert pairs.hypotheses == (("An", "animal", "moves", "."), ("Men", "stand"), ("z",))
        assert pairs.labels.tolist() == [0, -1, 2]
    with pytest.raises(ValueError, match="labels are inline"):
        read_snli(path, labels=path)


@pytest.mark.parametrize("line, message", [
    ('{"sentence1": "a", "sentence2": "b", "gold_label": "neutral"', "malformed JSON"),
    ('[1, 2]', "expected a JSON object, got list"),
    ('{"sentence2": "b", "gold_label": "neutral"}', "'sentence1' missing"),
    ('{"sentence1": "a", "sentence2": "b"}', "'gold_label' missing"),
    ('{"sentence1": "a", "sentence2": "b", "gold_label": "maybe"}', "unknown label 'maybe'"),
    ('{"sentence1": "a", "sentence2": " ", "gold_label": "neutral"}', "empty sentence in 'sentence2'"),
])
def test_jsonl_errors_name_file_and_line(tmp_path, line, message):
    path = write(tmp_path / "s.jsonl", json.dumps(jsonl_records()[0]) + "\n" + line + "\n")
    with pytest.raises(ValueError, match=rf"s\.jsonl, line 2: .*{message}"):
        read_snli(path)


def test_empty_jsonl(tmp_path):
    with pytest.raises(ValueError, match="the file is empty"):
        read_snli(write(tmp_path / "s.jsonl", ""))
    with pytest.raises(ValueError, match="holds no records"):
        read_snli(write(tmp_path / "s.jsonl", "\n  \n"))


def test_simple_tokenize():
    assert simple_tokenize("A man's hat, 3.5 feet-high!") == ("A", "man's", "hat", ",", "3", ".", "5",
                                                              "feet-high", "!")
    assert simple_tokenize("   ") == ()


# -------------------------------------------------------------------------------------- SNLIPairs

def test_pairs_subset_and_checks():
    pairs = SNLIPairs([["a"], ["b"], ["c"]], [["x"], ["y"], ["z"]], [0, 1, -1])
    assert pairs.subset([2, 0]).premises == (("c",), ("a",))
    assert pairs.subset(np.array([True, False, True])).labels.tolist() == [0, -1]
    assert len(pairs.subset([])) == 0
    assert pairs.subset([-1]).hypotheses == (("z",),)
    with pytest.raises(ValueError, match=r"in \[-3, 3\)"):
        pairs.subset([3])
    with pytest.raises(ValueError, match=r"shape \[3\]"):
        pairs.subset([True, False])
    with pytest.raises(TypeError, match="ints or a bool mask"):
        pairs.subset([0.5])
    with pytest.raises(ValueError, match="2 premises but 1 hypotheses"):
        SNLIPairs([["a"], ["b"]], [["x"]], [0, 0])
    with pytest.raises(ValueError, match=r"labels must have shape \[1\]"):
        SNLIPairs([["a"]], [["x"]], [0, 1])
    with pytest.raises(ValueError, match="integers in -1..2"):
        SNLIPairs([["a"]], [["x"]], [3])
    with pytest.raises(ValueError, match="read-only"):
        pairs.labels[0] = 2
    assert pairs == SNLIPairs((("a",), ("b",), ("c",)), (("x",), ("y",), ("z",)), np.array([0, 1, -1]))
    assert pairs != pairs.subset([0, 1, 1])


def test_importing_the_nli_package_loads_neither_torch_nor_the_tagger_package():
    import subprocess
    import sys
    code = ("import sys, compexp_core.nli\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'textblob', 'textblob_aptagger', 'nltk')))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
