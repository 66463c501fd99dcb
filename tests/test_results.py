"""SearchResult: indexing, to_pandas, saving to and loading from HDF5 and CSV."""
import numpy as np
import pandas as pd
import pytest

import compexp_core as cx


@pytest.fixture(scope="module")
def result():
    rng = np.random.default_rng(0)
    masks = rng.random((40, 5, 4, 4)) < 0.3
    acts = np.zeros((40, 3, 4, 4), bool)
    acts[:, 0] = masks[:, 0] & ~masks[:, 1]
    acts[:, 2] = masks[:, 3] | masks[:, 4]            # unit 1 never fires
    names = ["water", "blue sky", "AND", 'say "hi"', "tree"]  # names that need quoting
    return cx.search_formulas(acts, masks, names=names, max_length=3, beam_size=4)


def test_fields_and_indexing(result):
    assert len(result) == 3 and result.units == [0, 1, 2]
    e = result[0]
    assert str(e.formula) == '(water AND NOT "blue sky")' and e.iou == 1.0 and e.score == 1.0
    assert str(e.primitive) == "water" and 0 < e.primitive_iou < 1
    assert e.beam[0] == (e.formula, e.score) and len(e.beam) == 4
    assert [s for _, s in e.beam] == sorted((s for _, s in e.beam), reverse=True)
    never = result[1]
    assert never.formula is None and never.primitive is None and never.iou == 0.0 and never.beam == ()
    assert isinstance(result[1:], cx.SearchResult) and len(result[1:]) == 2


def test_to_pandas(result):
    df = result.to_pandas()
    assert list(df.columns) == ["unit", "formula", "iou", "score", "length", "primitive",
                                "primitive_iou", "threshold", "beam", "by_length"]
    assert df.loc[0, "formula"] == '(water AND NOT "blue sky")' and df.loc[0, "length"] == 2
    assert pd.isna(df.loc[1, "formula"])   # missing formula: pandas' missing-value marker
    assert df.loc[2, "formula"] in ('(\"say \\"hi\\"\" OR tree)', '(tree OR "say \\"hi\\"")')


@pytest.mark.parametrize("ext", [".h5", ".hdf5", ".csv"])
def test_save_load_round_trip(result, tmp_path, ext):
    path = tmp_path / f"out{ext}"
    result.save(path)
    back = cx.load_results(path)
    assert list(back) == list(result)
    assert back.params["max_length"] == 3 and back.params["names"][1] == "blue sky"


def test_save_rejects_unknown_extension(result, tmp_path):
    with pytest.raises(ValueError, match=r"must end in \.h5, \.hdf5 or \.csv"):
        result.save(tmp_path / "out.txt")


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        cx.load_results(tmp_path / "missing.h5")
    bad = tmp_path / "bad.h5"
    bad.write_text("not hdf5")
    with pytest.raises(ValueError, match="not a readable HDF5 file"):
        cx.load_results(bad)
    csv = tmp_path / "bad.csv"
    csv.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="lacks the columns"):
        cx.load_results(csv)


def test_summary_lists_best_units(result):
    text = result.summary(2)
    assert "water AND NOT" in text and text.count("\n") == 2
