"""Exports other tools read (docs/FORMAT.md §3.3): tally.csv, CLIP-Dissect CSV, tidy CSV and
Parquet, jsonl with parse trees; results recording their model and layer; `compexp export`."""
import csv
import json
import sys

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import compexp_core as cx
from compexp_core.cli import main
from compexp_core.engine.formula import And, Formula, Leaf, Not, Or
from compexp_core.engine.results import Explanation
from compexp_core.io.exports import (CLIP_DISSECT_COLUMNS, TIDY_COLUMNS, CategoryTally,
                                     LayerExplanations, check_export_path, jsonl_records,
                                     tidy_columns, write_jsonl, write_tally_csv, write_tidy)
from compexp_core.results import SearchResult, export_results

# ------------------------------------------------------------------------------ a small case
# Six sentences (one cell each), four concepts in two categories:
#   cat {0,1}  dog {1,2,3}  (animal)      sky {3,4}  sea {5}  (scene)
# Unit 0 fires on {0,1,2}, unit 1 on {3,4,5}, unit 2 never.
NAMES = ["cat", "dog", "sky", "sea"]
CATEGORIES = ["animal", "animal", "scene", "scene"]
CELLS = {"cat": [0, 1], "dog": [1, 2, 3], "sky": [3, 4], "sea": [5]}
FIRES = [[0, 1, 2], [3, 4, 5], []]


def _masks():
    masks = np.zeros((6, 4), bool)
    for j, name in enumerate(NAMES):
        masks[CELLS[name], j] = True
    return masks


def _acts():
    acts = np.zeros((6, 3), bool)
    for u, cells in enumerate(FIRES):
        acts[cells, u] = True
    return acts


@pytest.fixture
def small():
    cs = cx.ConceptSet.from_dense(_masks(), names=NAMES, categories=CATEGORIES)
    acts = _acts()
    return acts, cs, cx.search_formulas(acts, cs, max_length=2, beam_size=5)


# By hand. Unit 0: cat I=2 |C|=2 |U|=3 -> 2/3, dog I=2 -> 2/(3+3-2) = 1/2; sky, sea I=0.
# Unit 1: cat 0, dog I=1 -> 1/5; sky I=2 -> 2/3, sea I=1 -> 1/3. Unit 2: all 0 (first
# concept of each category). Formulas (length 2): unit 0 (cat OR dog) = {0,1,2,3}: 3/4;
# unit 1 (sky OR sea) = {3,4,5}: 1; unit 2: none. Rows by score, highest first.
EXPECTED_TALLY = [
    {"unit": 2, "category": "scene", "label": "(sky OR sea)", "score": 1.0,
     "animal-label": "dog", "animal-truth": 3, "animal-activation": 3, "animal-intersect": 1,
     "animal-iou": 0.2,
     "scene-label": "sky", "scene-truth": 2, "scene-activation": 3, "scene-intersect": 2,
     "scene-iou": 2 / 3},
    {"unit": 1, "category": "animal", "label": "(cat OR dog)", "score": 0.75,
     "animal-label": "cat", "animal-truth": 2, "animal-activation": 3, "animal-intersect": 2,
     "animal-iou": 2 / 3,
     "scene-label": "sky", "scene-truth": 2, "scene-activation": 3, "scene-intersect": 0,
     "scene-iou": 0.0},
    {"unit": 3, "category": "animal", "label": "", "score": 0.0,
     "animal-label": "cat", "animal-truth": 2, "animal-activation": 0, "animal-intersect": 0,
     "animal-iou": 0.0,
     "scene-label": "sky", "scene-truth": 2, "scene-activation": 0, "scene-intersect": 0,
     "scene-iou": 0.0},
]
TALLY_HEADER = ["unit", "category", "label", "score"] + [
    f"{c}-{f}" for c in ("animal", "scene")
    for f in ("label", "truth", "activation", "intersect", "iou")]


def _read_csv_rows(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def _typed(row: dict) -> dict:
    out = {}
    for k, v in row.items():
        if k == "unit" or k.endswith(("-truth", "-activation", "-intersect")):
            out[k] = int(v)
        elif k == "score" or k.endswith("-iou"):
            out[k] = float(v)
        else:
            out[k] = v
    return out


# ------------------------------------------------------------------------------ tally.csv

def test_tally_csv_matches_the_hand_worked_counts(small, tmp_path):
    acts, cs, result = small
    assert [str(e.formula) for e in result] == ["(cat OR dog)", "(sky OR sea)", "None"]
    path = tmp_path / "tally.csv"
    result.to_tally_csv(path, acts, cs)
    rows = _read_csv_rows(path)
    assert rows[0] == TALLY_HEADER
    got = [_typed(dict(zip(rows[0], r))) for r in rows[1:]]
    assert len(got) == len(EXPECTED_TALLY)
    # Exact: floats are written at full precision, and the IoUs are the quotients above.
    assert got == EXPECTED_TALLY


def test_best_single_concepts_are_the_engine_counts_of_each_category(small):
    acts, cs, result = small
    tally = result.best_single_concepts(acts, cs)
    assert tally.categories == ("animal", "scene")
    assert tally.labels == (("cat", "sky"), ("dog", "sky"), ("cat", "sky"))
    assert tally.intersect.tolist() == [[2, 0], [1, 2], [0, 0]]
    assert tally.truth.tolist() == [[2, 2], [3, 2], [2, 2]]
    assert tally.activation.tolist() == [[3, 3], [3, 3], [0, 0]]
    np.testing.assert_array_equal(tally.iou, [[2 / 3, 0], [0.2, 2 / 3], [0, 0]])
    # In the result's order, whatever it is (and with a repeated unit).
    again = cx.search_formulas(acts, cs, max_length=2, units=[2, 0, 2])
    assert again.best_single_concepts(acts, cs).labels == (("cat", "sky"), ("cat", "sky"),
                                                           ("cat", "sky"))
    assert again.best_single_concepts(acts, cs).intersect.tolist() == [[0, 0], [2, 0], [0, 0]]


def test_tally_uses_the_recorded_thresholds_on_feature_maps(tmp_path):
    # Float maps on the concepts' grid, explicit per-unit thresholds: the tally's unit masks
    # must be acts > threshold, checked against NumPy.
    rng = np.random.default_rng(3)
    masks = rng.random((20, 5, 4, 4)) < 0.3
    acts = rng.random((20, 3, 4, 4)).astype(np.float32)
    thresholds = [0.5, 0.8, 0.95]
    cs = cx.ConceptSet.from_dense(masks, names=list("abcde"), categories=list("xxyyx"))
    result = cx.search_formulas(acts, cs, threshold=thresholds, max_length=2)
    tally = result.best_single_concepts(acts, cs)
    assert tally.categories == ("x", "y")
    for u, t in enumerate(thresholds):
        unit = acts[:, u] > t
        for c, members in enumerate([[0, 1, 4], [2, 3]]):
            inter = [int((unit & masks[:, j]).sum()) for j in members]
            sizes = [int(masks[:, j].sum()) for j in members]
            ious = [i / (unit.sum() + s - i) for i, s in zip(inter, sizes)]
            best = int(np.argmax(ious))
            assert tally.labels[u][c] == "abcde"[members[best]]
            assert tally.intersect[u, c] == inter[best]
            assert tally.truth[u, c] == sizes[best]
            assert tally.activation[u, c] == unit.sum()
            assert tally.iou[u, c] == pytest.approx(ious[best], rel=1e-15)


def test_concepts_without_a_category_are_uncategorized(small):
    acts, _, result = small
    cs = cx.ConceptSet.from_dense(_masks(), names=NAMES)
    assert result.best_single_concepts(acts, cs).categories == ("uncategorized",)


def test_tally_refuses_inputs_that_do_not_fit(small, tmp_path):
    acts, cs, result = small
    with pytest.raises(ValueError, match="does not record its acts file"):
        result.to_tally_csv(tmp_path / "t.csv")
    other = cx.ConceptSet.from_dense(_masks(), names=["a", "b", "c", "d"])
    with pytest.raises(ValueError, match="not the one the result was searched with"):
        result.best_single_concepts(acts, other)
    with pytest.raises(ValueError, match="acts has 2 units"):
        result.best_single_concepts(acts[:, :2], cs)
    # Bool-mask results carry no thresholds: float activations cannot be binarised.
    with pytest.raises(ValueError, match="records no threshold for unit 0"):
        result.best_single_concepts(acts.astype(np.float32), cs)
    with pytest.raises(ValueError, match="one result, not 2"):
        export_results([result, result[:1]], tmp_path / "t.csv", "tally", acts=acts,
                       concepts=cs)
    with pytest.raises(ValueError, match="written to .csv"):
        result.to_tally_csv(tmp_path / "t.parquet", acts, cs)
    result.params["acts_path"] = str(tmp_path / "gone.h5")
    with pytest.raises(FileNotFoundError, match="gone.h5"):
        result.to_tally_csv(tmp_path / "t.csv", concepts=cs)
    assert not (tmp_path / "t.csv").exists()


def test_write_tally_csv_checks_its_data(tmp_path):
    e = Explanation(0, Leaf("a"), 1.0, 1.0, Leaf("a"), 1.0)
    with pytest.raises(ValueError, match=r"\[n, C\] = \[1, 1\]"):
        CategoryTally(("x",), (("a",),), np.zeros((1, 2)), np.zeros((1, 1)), np.zeros((1, 1)),
                      np.zeros((1, 1)))
    tally = CategoryTally(("x",), (("a",), ("a",)), *(np.zeros((2, 1)),) * 4)
    with pytest.raises(ValueError, match="2 rows but there are 1 explanations"):
        write_tally_csv(tmp_path / "t.csv", [e], tally)
    with pytest.raises(TypeError, match="not an Explanation"):
        write_tally_csv(tmp_path / "t.csv", ["a"], tally)


# ------------------------------------------------------------------------------ CLIP-Dissect

def test_clip_dissect_csv_has_its_layout(small, tmp_path):
    _, _, result = small
    result.layer = "layer4"
    other = SearchResult([Explanation(7, Formula.parse('(a OR "b c,d")'), 0.25, 0.25,
                                      Leaf("a"), 0.125)], {"layer": "fc"})
    path = tmp_path / "descriptions.csv"
    export_results([result, other], path, "clip-dissect")
    rows = _read_csv_rows(path)
    assert rows == [list(CLIP_DISSECT_COLUMNS),
                    ["layer4", "0", "(cat OR dog)", "0.75"],
                    ["layer4", "1", "(sky OR sea)", "1.0"],
                    ["layer4", "2", "", "0.0"],
                    ["fc", "7", '(a OR "b c,d")', "0.25"]]
    # Quoted as pandas quotes CLIP-Dissect's own file.
    assert pd.read_csv(path, keep_default_na=False)["description"].tolist()[3] == \
        '(a OR "b c,d")'
    assert '"(a OR ""b c,d"")"' in path.read_text()


def test_results_of_one_file_must_be_told_apart(small, tmp_path):
    _, _, result = small
    for fmt, name in (("clip-dissect", "d.csv"), ("tidy", "t.csv"), ("jsonl", "j.jsonl")):
        with pytest.raises(ValueError, match="could not be told apart"):
            export_results([result, result], tmp_path / name, fmt)
        assert not (tmp_path / name).exists()


# ------------------------------------------------------------------------------ tidy

def _expected_tidy(*results):
    rows = []
    for r in results:
        for e in r:
            rows.append({"model": r.model, "layer": r.layer, "unit": e.unit,
                         "formula": None if e.formula is None else str(e.formula),
                         "iou": e.iou, "length": e.length,
                         "primitive": None if e.primitive is None else str(e.primitive),
                         "primitive_iou": e.primitive_iou, "threshold": e.threshold})
    return pd.DataFrame(rows, columns=list(TIDY_COLUMNS))


def _two_layers():
    rng = np.random.default_rng(0)
    masks = rng.random((50, 4, 3, 3)) < 0.3
    cs = cx.ConceptSet.from_dense(masks, names=["sky", "sea, blue", "007", "NA"])
    a = cx.search_formulas(rng.random((50, 3, 3, 3)).astype(np.float32), cs, quantile=0.1)
    units = np.concatenate([masks[:, :2] | masks[:, 2:], masks[:, 1:2]], axis=1)
    b = cx.search_formulas(units, cs)                                 # bool: no thresholds
    a.model, a.layer = "net", "layer3"
    b.model, b.layer = "net", "layer4"
    return a, b


def test_tidy_csv_reads_back_equal(tmp_path):
    a, b = _two_layers()
    path = tmp_path / "all.csv"
    export_results([a, b], path, "tidy")
    back = pd.read_csv(path, dtype={"formula": str, "primitive": str}, keep_default_na=False,
                       na_values={"formula": [""], "primitive": [""], "threshold": [""]})
    want = _expected_tidy(a, b)
    assert list(back.columns) == list(TIDY_COLUMNS) and len(back) == 6
    assert back["threshold"].isna().tolist() == [False] * 3 + [True] * 3
    want["threshold"] = want["threshold"].astype(float)
    pd.testing.assert_frame_equal(back, want, check_dtype=False, check_exact=True)
    assert tidy_columns([LayerExplanations(a.model, a.layer, list(a))])["unit"] == [0, 1, 2]


def test_tidy_parquet_reads_back_equal(tmp_path):
    pytest.importorskip("pyarrow")
    a, b = _two_layers()
    path = tmp_path / "all.parquet"
    export_results([a, b], path, "tidy")
    back = pd.read_parquet(path)
    want = _expected_tidy(a, b)
    assert back["threshold"].isna().tolist() == [False] * 3 + [True] * 3
    assert back["unit"].dtype == np.int64 and back["iou"].dtype == np.float64
    pd.testing.assert_frame_equal(back.astype(object).where(back.notna(), None),
                                  want.astype(object).where(want.notna(), None),
                                  check_exact=True)


def test_parquet_without_pyarrow_says_how_to_install_it(small, tmp_path, monkeypatch):
    _, _, result = small
    monkeypatch.setitem(sys.modules, "pyarrow", None)        # import pyarrow fails
    with pytest.raises(ImportError, match="writing Parquet needs pyarrow.*pip install pyarrow"):
        result.to_tidy(tmp_path / "t.parquet")
    assert not (tmp_path / "t.parquet").exists()


def test_tidy_of_an_empty_result_is_a_header(tmp_path):
    write_tidy(tmp_path / "e.csv", [LayerExplanations(None, None, [])])
    assert _read_csv_rows(tmp_path / "e.csv") == [list(TIDY_COLUMNS)]


# ------------------------------------------------------------------------------ jsonl

def test_jsonl_records_rebuild_the_formulas(tmp_path):
    a, b = _two_layers()
    a._explanations.append(Explanation(9, None, 0.0, 0.0, None, 0.0, skipped="fires on 1 cell"))
    path = tmp_path / "all.jsonl"
    export_results([a, b], path, "jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(a) + len(b)
    records = [json.loads(line) for line in lines]
    for record, (r, e) in zip(records, [(r, e) for r in (a, b) for e in r]):
        assert set(record) == {"model", "layer", "unit", "formula", "tree", "iou", "score",
                               "length", "primitive", "primitive_iou", "threshold", "skipped"}
        assert (record["model"], record["layer"], record["unit"]) == (r.model, r.layer, e.unit)
        assert (record["iou"], record["score"], record["length"]) == (e.iou, e.score, e.length)
        assert record["threshold"] == e.threshold and record["skipped"] == e.skipped
        if e.formula is None:
            assert record["formula"] is None and record["tree"] is None
            continue
        assert Formula.from_tree(record["tree"]) == e.formula
        assert Formula.parse(record["formula"]) == e.formula
        leaves = _leaves(record["tree"])
        assert [leaf["concept"] for leaf in leaves] == list(e.formula.leaves())
        assert all(r.params["names"][leaf["index"]] == leaf["concept"] for leaf in leaves)
    assert records[3]["skipped"] == "fires on 1 cell"


def _leaves(tree):
    if "concept" in tree:
        return [tree]
    return [leaf for arg in tree["args"] for leaf in _leaves(arg)]


def test_jsonl_without_names_has_no_indices_and_checks_names(tmp_path):
    e = Explanation(0, Formula.parse("(a AND NOT b)"), 0.5, 0.5, Leaf("a"), 0.25)
    record = jsonl_records(LayerExplanations(None, None, [e]))[0]
    assert record["tree"] == {"op": "and", "args": [{"concept": "a"},
                                                   {"op": "not", "args": [{"concept": "b"}]}]}
    with pytest.raises(ValueError, match="'b' is not one of the result's 1 concept names"):
        jsonl_records(LayerExplanations(None, None, [e], ["a"]))
    with pytest.raises(ValueError, match="written to .jsonl"):
        write_jsonl(tmp_path / "x.json", [LayerExplanations(None, None, [e])])


# ------------------------------------------------------------------------------ parse trees

_names = st.text(min_size=0, max_size=6)


def _formulas():
    return st.recursive(_names.map(Leaf),
                        lambda sub: st.one_of(sub.map(Not), st.tuples(sub, sub).map(
                            lambda lr: And(*lr)), st.tuples(sub, sub).map(lambda lr: Or(*lr))),
                        max_leaves=12)


@settings(max_examples=200, deadline=None)
@given(_formulas())
def test_tree_round_trips_through_json(f):
    tree = json.loads(json.dumps(f.to_tree()))
    assert Formula.from_tree(tree) == f


def test_deep_trees_need_no_recursion():
    f = Formula.parse("a")
    for i in range(5000):
        f = f.and_not(f"c{i}") if i % 2 else f.or_(f"c{i}")
    assert Formula.from_tree(f.to_tree()) == f


@pytest.mark.parametrize("tree, message", [
    ([], r"at tree: expected a dict node, got list"),
    ({"op": "and", "args": [{"concept": "a"}]}, r"at tree: op 'and' needs a list of 2 args"),
    ({"op": "not", "args": [{"concept": 3}]}, r"at tree.args\[0\]: 'concept' must be a str"),
    ({"op": "or", "args": [{"concept": "a"}, {"op": "nand", "args": []}]},
     r"at tree.args\[1\]: unknown op 'nand'"),
    ({"concept": "a", "op": "not"}, r"either 'concept' or 'op'"),
    ({"op": "not", "args": "a"}, r"op 'not' needs a list of 1 args"),
])
def test_from_tree_names_the_bad_node(tree, message):
    with pytest.raises(ValueError, match=message):
        Formula.from_tree(tree)


def test_to_tree_checks_index_of():
    with pytest.raises(TypeError, match="index_of must return an int"):
        Leaf("a").to_tree(lambda name: "0")


# ------------------------------------------------------------------------------ model, layer

@pytest.mark.parametrize("ext", [".h5", ".csv"])
def test_model_and_layer_are_saved_and_optional(small, tmp_path, ext):
    _, _, result = small
    assert result.model is None and result.layer is None
    result.save(tmp_path / f"old{ext}")                       # as files from before them
    back = cx.load_results(tmp_path / f"old{ext}")
    assert back.model is None and back.layer is None
    result.model, result.layer = "resnet18", "layer4"
    result.save(tmp_path / f"new{ext}")
    back = cx.load_results(tmp_path / f"new{ext}")
    assert (back.model, back.layer) == ("resnet18", "layer4")
    back.layer = None
    assert "layer" not in back.params
    with pytest.raises(TypeError, match="must be a str or None"):
        back.model = 3


def test_search_records_the_activations_files_model_and_layer(tmp_path):
    cs = cx.ConceptSet.from_dense(_masks(), names=NAMES)
    cx.save_activations(tmp_path / "acts.h5", _acts(), model="bert", layer="encoder.11")
    result = cx.search_formulas(str(tmp_path / "acts.h5"), cs, max_length=1)
    assert (result.model, result.layer) == ("bert", "encoder.11")
    cx.save_activations(tmp_path / "bare.h5", _acts())
    bare = cx.search_formulas(tmp_path / "bare.h5", cs, max_length=1)
    assert (bare.model, bare.layer) == (None, None) and "model" not in bare.params
    # The files' paths too, the defaults of reports and exports (none for objects).
    assert result.params["acts_path"] == str(tmp_path / "acts.h5")
    assert "concepts_path" not in result.params
    cx.save_concepts(tmp_path / "c.h5", cs)
    from_files = cx.search_formulas(tmp_path / "bare.h5", tmp_path / "c.h5", max_length=1)
    assert from_files.params["concepts_path"] == str(tmp_path / "c.h5")
    assert "acts_path" not in cx.search_formulas(_acts(), cs, max_length=1).params


# ------------------------------------------------------------------------------ command line

@pytest.fixture
def searched(tmp_path):
    cs = cx.ConceptSet.from_dense(_masks(), names=NAMES, categories=CATEGORIES)
    cx.save_concepts(tmp_path / "concepts.h5", cs)
    cx.save_activations(tmp_path / "acts.h5", _acts(), model="toy", layer="fc")
    out = tmp_path / "r.h5"
    assert main(["search", str(tmp_path / "acts.h5"), str(tmp_path / "concepts.h5"), "-o",
                 str(out), "--length", "2", "--beam", "5", "--no-progress"]) == 0
    return tmp_path, out


def test_cli_search_records_model_and_layer_and_export_writes_a_tally(searched, capsys):
    d, out = searched
    result = cx.load_results(out)
    assert (result.model, result.layer) == ("toy", "fc")
    # The tally finds the inputs the search recorded.
    assert main(["export", str(out), "--format", "tally", "-o", str(d / "tally.csv")]) == 0
    assert "wrote" in capsys.readouterr().out
    rows = _read_csv_rows(d / "tally.csv")
    assert rows[0] == TALLY_HEADER
    got = [_typed(dict(zip(rows[0], r))) for r in rows[1:]]
    assert [g["unit"] for g in got] == [2, 1, 3]
    assert got == EXPECTED_TALLY


def test_cli_exports_several_results_into_one_tidy_table(searched, tmp_path):
    d, out = searched
    second = cx.load_results(out)
    second.layer = "fc2"
    second.save(d / "r2.csv")
    for fmt, name in (("tidy", "all.csv"), ("tidy", "all.parquet"), ("jsonl", "all.jsonl"),
                      ("clip-dissect", "d.csv")):
        if name.endswith(".parquet"):
            pytest.importorskip("pyarrow")
        assert main(["export", str(out), str(d / "r2.csv"), "--format", fmt, "-o",
                     str(d / name)]) == 0
    table = pd.read_csv(d / "all.csv")
    assert table["layer"].tolist() == ["fc"] * 3 + ["fc2"] * 3
    assert table["model"].tolist() == ["toy"] * 6
    assert len((d / "all.jsonl").read_text().splitlines()) == 6
    assert pd.read_csv(d / "d.csv")["layer"].tolist() == ["fc"] * 3 + ["fc2"] * 3


def test_cli_export_errors_name_the_problem(searched, capsys):
    d, out = searched
    cases = [
        (["export", str(d / "missing.h5"), "--format", "tidy", "-o", str(d / "t.csv")],
         "missing.h5"),
        (["export", str(out), "--format", "tidy", "-o", str(d / "t.txt")],
         "written to .csv or .parquet"),
        (["export", str(out), str(out), "--format", "tally", "-o", str(d / "t.csv")],
         "one result, not 2"),
        (["export", str(out), "--format", "tidy", "-o", str(d / "t.csv"), "--acts",
          str(d / "acts.h5")], "--acts and --concepts are for --format tally"),
        (["export", str(out), "--format", "tidy", "-o", str(d / "nodir" / "t.csv")],
         "does not exist"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    # The output must not replace an input: a results CSV, or the recorded activations.
    cx.load_results(out).save(d / "r.csv")
    before = (d / "r.csv").read_bytes()
    assert main(["export", str(d / "r.csv"), "--format", "tidy", "-o", str(d / "r.csv")]) == 2
    assert "is the input file" in capsys.readouterr().err
    assert (d / "r.csv").read_bytes() == before
    # A result that records no activations file (searched from arrays): the tally asks for it.
    cs = cx.ConceptSet.from_dense(_masks(), names=NAMES, categories=CATEGORIES)
    cx.search_formulas(_acts(), cs, max_length=1).save(d / "arrays.h5")
    assert main(["export", str(d / "arrays.h5"), "--format", "tally", "-o",
                 str(d / "t.csv")]) == 2
    assert "--acts" in capsys.readouterr().err
    assert main(["export", str(d / "arrays.h5"), "--format", "tally", "-o", str(d / "t.csv"),
                 "--acts", str(d / "acts.h5"), "--concepts", str(d / "concepts.h5")]) == 0
    with pytest.raises(SystemExit):
        main(["export", str(out), "--format", "netdissect", "-o", str(d / "t.csv")])
    assert "invalid choice" in capsys.readouterr().err


def test_check_export_path_refuses_unknown_formats(tmp_path):
    with pytest.raises(ValueError, match="unknown export format 'html'"):
        check_export_path(tmp_path / "x.csv", "html")
    (tmp_path / "d.jsonl").mkdir()
    with pytest.raises(IsADirectoryError):
        check_export_path(tmp_path / "d.jsonl", "jsonl")


def test_cli_parquet_without_pyarrow_is_an_error_message(searched, capsys, monkeypatch):
    d, out = searched
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    assert main(["export", str(out), "--format", "tidy", "-o", str(d / "t.parquet")]) == 2
    assert "writing Parquet needs pyarrow" in capsys.readouterr().err


def test_tally_best_overall_is_the_searchs_primitive():
    # The engine's counts behind the tally agree with the search's own first step: the best
    # single concept over all categories is the unit's primitive, with the same IoU.
    from compexp_core.synthetic import make_planted_dataset

    data = make_planted_dataset(n_samples=200, grid=(16, 16), n_units=6, seed=2)
    result = cx.search_formulas(data.acts, data.concepts, max_length=2, beam_size=3)
    tally = result.best_single_concepts(data.acts, data.concepts)
    assert len(tally.categories) > 1
    for i, e in enumerate(result):
        c = tally.best_category(i)
        assert tally.labels[i][c] == str(e.primitive)
        assert tally.iou[i, c] == e.primitive_iou
