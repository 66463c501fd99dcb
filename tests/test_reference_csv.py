"""The reference implementation's NLI result CSV: write_reference_csv and
SearchResult.to_reference_csv (columns, values, atomic writes, errors)."""
import csv
import os

import numpy as np
import pandas as pd
import pytest

import compexp_core as cx
from compexp_core.engine.formula import Formula
from compexp_core.engine.results import Explanation
from compexp_core.io.results import read_results, write_reference_csv

HEADER = ["neuron", "feature", "category", "iou", "feature_length", "w_entail", "w_neutral",
          "w_contra"]


def _expl(unit, text, iou=0.5, score=0.5):
    return Explanation(unit, None if text is None else Formula.parse(text), iou, score, None,
                       0.0)


EXPLANATIONS = [
    _expl(2, "((pre:tok:dog OR hyp:tok:cat) AND NOT oth:overlap:overlap50)", 0.5, 0.405),
    _expl(0, None, 0.0, 0.0),                        # skipped (or nothing found)
    _expl(3, "hyp:tag:nn", 0.25, 0.25),
    _expl(1, "(hyp:tok:sleeping OR NOT pre:tok:a,b)", 0.125, 0.1125),   # a comma in a name
]
WEIGHTS = np.array([[0.5, -0.25, 1.0],
                    [0.0, 2.0, -1.5],
                    [1.25, 0.75, -0.5],
                    [-3.0, 0.125, 4.0]])              # [U=4, C=3]


def _read(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def test_columns_and_values_by_hand(tmp_path):
    path = tmp_path / "result.csv"
    write_reference_csv(path, EXPLANATIONS, weights=WEIGHTS)
    assert _read(path) == [
        HEADER,
        ["2", "((NOT oth:overlap:overlap50) AND (hyp:tok:cat OR pre:tok:dog))",
         "((NOT oth) AND (hyp OR pre))", "0.405", "4", "1.25", "0.75", "-0.5"],
        ["0", "", "", "0.0", "0", "0.5", "-0.25", "1.0"],
        ["3", "hyp:tag:nn", "hyp", "0.25", "1", "-3.0", "0.125", "4.0"],
        ["1", "((NOT pre:tok:a,b) OR hyp:tok:sleeping)", "((NOT pre) OR hyp)", "0.1125", "3",
         "0.0", "2.0", "-1.5"],
    ]
    # pandas (as the reference's analysis reads it) sees the same table.
    df = pd.read_csv(path, keep_default_na=False)
    assert list(df.columns) == HEADER and df["feature_length"].tolist() == [4, 0, 1, 3]


def test_without_weights_and_custom_class_columns(tmp_path):
    path = tmp_path / "r.csv"
    write_reference_csv(path, EXPLANATIONS[:2])
    assert _read(path)[0] == HEADER[:5] and len(_read(path)) == 3
    write_reference_csv(path, EXPLANATIONS[2:3], weights=WEIGHTS[:, :2],
                        class_columns=["w_pos", "w_neg"])
    assert _read(path) == [HEADER[:5] + ["w_pos", "w_neg"],
                           ["3", "hyp:tag:nn", "hyp", "0.25", "1", "-3.0", "0.125"]]
    write_reference_csv(path, [])
    assert _read(path) == [HEADER[:5]]


def test_weight_precision_and_inputs(tmp_path):
    path = tmp_path / "r.csv"
    # float32 weights are written in float32 (as the reference, which reads them from torch).
    write_reference_csv(path, EXPLANATIONS[2:3], weights=np.full((4, 3), 0.1, np.float32))
    assert _read(path)[1][5:] == ["0.1"] * 3
    write_reference_csv(path, EXPLANATIONS[2:3], weights=np.arange(12).reshape(4, 3))
    assert _read(path)[1][5:] == ["9.0", "10.0", "11.0"]
    torch = pytest.importorskip("torch")
    write_reference_csv(path, EXPLANATIONS, weights=torch.from_numpy(WEIGHTS))
    expected = tmp_path / "e.csv"
    write_reference_csv(expected, EXPLANATIONS, weights=WEIGHTS)
    assert path.read_bytes() == expected.read_bytes()


@pytest.mark.parametrize("weights, error, match", [
    (WEIGHTS[0], ValueError, r"\[U, C\] with C = 3.*shape \(3,\)"),
    (WEIGHTS[:, :2], ValueError, r"C = 3.*shape \(4, 2\)"),
    (WEIGHTS.T, ValueError, r"shape \(3, 4\)"),
    (WEIGHTS[:3], ValueError, "weights has 3 rows .* of unit 3"),
    (np.where(np.eye(4, 3) > 0, np.nan, WEIGHTS), ValueError, r"nan at \[0, 0\]"),
    (WEIGHTS > 0, TypeError, "numeric"),
    (WEIGHTS.astype(str), TypeError, "numeric"),
])
def test_bad_weights(tmp_path, weights, error, match):
    path = tmp_path / "r.csv"
    path.write_text("previous")
    with pytest.raises(error, match=match):
        write_reference_csv(path, EXPLANATIONS, weights=weights)
    assert path.read_text() == "previous" and os.listdir(tmp_path) == ["r.csv"]


def test_other_errors(tmp_path):
    with pytest.raises(ValueError, match="must end in .csv"):
        write_reference_csv(tmp_path / "r.h5", EXPLANATIONS)
    with pytest.raises(FileNotFoundError):
        write_reference_csv(tmp_path / "missing" / "r.csv", EXPLANATIONS)
    with pytest.raises(TypeError, match=r"explanations\[1\] is a str"):
        write_reference_csv(tmp_path / "r.csv", [EXPLANATIONS[0], "unit 1"])
    for columns, match in [(["a", "a", "b"], "distinct"), (["a", "iou", "b"], "fixed columns"),
                           (["a", "", "b"], "non-empty"), ("abc", "sequence")]:
        with pytest.raises((ValueError, TypeError), match=match):
            write_reference_csv(tmp_path / "r.csv", EXPLANATIONS, weights=WEIGHTS,
                                class_columns=columns)
    src = tmp_path / "acts.csv"
    src.write_text("x")
    with pytest.raises(ValueError, match="is the input file"):
        write_reference_csv(src, EXPLANATIONS, inputs=[str(src)])
    assert src.read_text() == "x" and sorted(os.listdir(tmp_path)) == ["acts.csv"]


def test_atomic_write(tmp_path, monkeypatch):
    path = tmp_path / "r.csv"
    write_reference_csv(path, EXPLANATIONS, weights=WEIGHTS)
    before = path.read_bytes()

    def fail_midway(self, fh, **kwargs):
        fh.write("neuron,feature\n2,(half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", fail_midway)
    with pytest.raises(OSError, match="disk is full"):
        write_reference_csv(path, EXPLANATIONS[:1])
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["r.csv"]


def test_search_result_to_reference_csv(tmp_path):
    masks = np.eye(3, dtype=bool)[np.arange(30) % 3]
    acts = np.stack([masks[:, 0] | masks[:, 1], masks[:, 2] & (np.arange(30) < 15)], 1)
    names = ["pre:tok:dog", "hyp:tok:cat", "oth:overlap:overlap50"]
    result = cx.search_formulas(acts, masks, names=names, max_length=2,
                                complexity_penalty=0.75)
    path = tmp_path / "result.csv"
    result.to_reference_csv(path, weights=WEIGHTS[:2])
    rows = _read(path)
    assert rows[0] == HEADER
    assert rows[1] == ["0", "(hyp:tok:cat OR pre:tok:dog)", "(hyp OR pre)", "0.75", "2",
                       "0.5", "-0.25", "1.0"]   # iou 1, penalised by 0.75: the score
    assert rows[2][:5] == ["1", "oth:overlap:overlap50", "oth", "0.5", "1"]
    assert result[0].iou == 1.0 and result[0].score == 0.75
    result.to_reference_csv(path, None)
    assert _read(path)[0] == HEADER[:5]
    with pytest.raises(ValueError, match="lacks the columns"):
        read_results(path)
    # The search's input files are never replaced.
    acts_csv = tmp_path / "acts.csv"
    acts_csv.write_text("x")
    recorded = cx.SearchResult(list(result), {"acts_path": str(acts_csv)})
    with pytest.raises(ValueError, match="is the input file"):
        recorded.to_reference_csv(acts_csv)
    with pytest.raises(ValueError, match="weights has 1 rows"):
        result.to_reference_csv(path, weights=WEIGHTS[:1])
