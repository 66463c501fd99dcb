"""SearchResult: indexing, to_pandas, saving to and loading from HDF5 and CSV."""
import h5py
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
                                "primitive_iou", "threshold", "beam", "by_length", "skipped"]
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


def test_files_written_before_threshold_and_by_length_still_load(result, tmp_path):
    path = tmp_path / "old.h5"
    result.save(path)
    with h5py.File(path, "a") as f:                     # the layout before those fields existed
        for name in ("threshold", "by_length_formula", "by_length_iou"):
            del f[name]
    back = cx.load_results(path)
    assert [e.formula for e in back] == [e.formula for e in result]
    assert all(e.threshold is None and e.by_length == () for e in back)
    csv = tmp_path / "old.csv"
    result.save(csv)
    lines = csv.read_text().splitlines()
    df = pd.read_csv(csv, skiprows=1, keep_default_na=False).drop(columns=["threshold",
                                                                           "by_length"])
    csv.write_text(lines[0] + "\n" + df.to_csv(index=False))
    back = cx.load_results(csv)
    assert back.params == result.params
    assert all(e.threshold is None and e.by_length == () for e in back)


def test_results_file_errors_name_the_file_and_dataset(result, tmp_path):
    path = tmp_path / "r.h5"
    result.save(path)
    with h5py.File(path, "a") as f:
        del f["beam_score"]
    with pytest.raises(ValueError, match="has no dataset 'beam_score'") as e:
        cx.load_results(path)
    assert str(path) in str(e.value)
    cx.save_concepts(tmp_path / "c.h5", cx.ConceptSet.from_dense(np.ones((2, 1), bool)))
    with pytest.raises(ValueError, match="is not a compexp-results file"):
        cx.load_results(tmp_path / "c.h5")
    with pytest.raises(FileNotFoundError) as e:
        cx.load_results(tmp_path / "missing.csv")
    assert e.value.filename == str(tmp_path / "missing.csv")
