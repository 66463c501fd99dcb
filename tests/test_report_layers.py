"""Tests for compexp_core.report.layers: several layers in one report.

* the numbers of a layer (units, explained, mean IoU, the Network Dissection count and the
  formulas' count at the threshold, units per category) on a hand-made result;
* a two-layer report of planted units: the folders, the index's table against the results, the
  links (each resolves to a written file), the chart's bars (counts, heights, links to the
  layer's page filtered to the category), the names (recorded, given, folder-safe);
* bad input: no results, duplicate names (given or derived), names not one per result, a
  missing results file, a bad threshold, acts not one per result, results of two metrics;
* the ``compexp report`` command with several results files, and its errors;
* in a real headless Chromium: the index loads with no console errors, and each bar's link
  shows exactly as many cards as the bar counts.
"""
import doctest
import html.parser
import re
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
from PIL import Image

import compexp_core as cx
import compexp_core.report.layers as layers_module
import compexp_core.report.plots as plots_module
from compexp_core.cli import main
from compexp_core.engine.formula import Formula
from compexp_core.engine.results import Explanation
from compexp_core.io import (load_activations, load_concepts, save_activations, save_concepts,
                             save_images)
from compexp_core.report import write_layers_report
from compexp_core.report.layers import summarize_layer
from compexp_core.report.plots import SERIES_COLORS
from compexp_core.results import SearchResult
from compexp_core.synthetic import make_planted_dataset
from test_report import _browse, _console_messages, _images_from_labels

THRESHOLD = 0.4      # leaves some units of the planted layers below it, some above
TOP = 2


# =============================================================================== fixtures

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two layers of planted units over one concept set and one set of images: "layer3" (4
    units) and "layer4" (2 units and a noise unit), each searched and saved with the paths of
    its inputs, as ``compexp search`` records them."""
    d = tmp_path_factory.mktemp("layers_data")
    planted = make_planted_dataset(n_samples=120, grid=(8, 8), n_objects=6, n_colors=4,
                                   n_scenes=3, n_units=6, noise_units=1, map_size=(4, 4), seed=1)
    save_concepts(d / "concepts.h5", planted.concepts)
    save_images(d / "images.h5", _images_from_labels(planted.label_maps, seed=3))
    concepts = load_concepts(d / "concepts.h5")
    results = {}
    for layer, units in (("layer3", slice(0, 4)), ("layer4", slice(4, None))):
        acts = np.ascontiguousarray(planted.acts[:, units])
        save_activations(d / f"acts_{layer}.h5", acts, model="planted", layer=layer)
        r = cx.search_formulas(acts, concepts, threshold=0.5, max_length=3, beam_size=5)
        r.params.update(acts_path=str(d / f"acts_{layer}.h5"),
                        concepts_path=str(d / "concepts.h5"))
        r.save(d / f"r_{layer}.h5")
        results[layer] = r
    return SimpleNamespace(dir=d, concepts=concepts, results=results,
                           files=[d / "r_layer3.h5", d / "r_layer4.h5"])


@pytest.fixture(scope="module")
def report(data, tmp_path_factory):
    """The report of both layers, names taken from the activations files."""
    out = tmp_path_factory.mktemp("layers") / "out"
    index = write_layers_report(data.files, out, images=data.dir / "images.h5",
                                threshold=THRESHOLD, top_images=TOP)
    text = Path(index).read_text(encoding="utf-8")
    return SimpleNamespace(index=Path(index), out=out, html=text, page=_parse(text))


class _IndexParser(html.parser.HTMLParser):
    """The index's table rows (layer, link, cells by class) and chart bars (attributes,
    link)."""

    def __init__(self):
        super().__init__()
        self.rows, self.bars, self.hrefs = [], [], []
        self._row, self._cell, self._href = None, None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a":
            self._href = a.get("href")
            self.hrefs.append(self._href)
        elif tag == "tr" and "data-layer" in a:
            self._row = {"layer": a["data-layer"], "cells": {}, "attrs": {}}
            self.rows.append(self._row)
        elif tag == "td" and self._row is not None:
            self._cell = a["class"]
            self._row["attrs"][self._cell] = a
            self._row["cells"][self._cell] = ""
        elif tag == "rect" and a.get("class") == "bar":
            self.bars.append({**a, "href": self._href})

    def handle_endtag(self, tag):
        if tag == "td":
            self._cell = None
        elif tag == "tr":
            self._row = None
        elif tag == "a":
            self._href = None

    def handle_data(self, text):
        if self._row is not None and self._cell is not None:
            self._row["cells"][self._cell] += text
        if self._row is not None and self._cell is None and self._href is not None:
            self._row["href"] = self._href


def _parse(text: str) -> SimpleNamespace:
    p = _IndexParser()
    p.feed(text)
    return SimpleNamespace(rows=p.rows, bars=p.bars, hrefs=p.hrefs)


def _expected(result: SearchResult, concepts, threshold: float) -> dict:
    """The index's numbers of a layer, computed here from the explanations."""
    category = dict(zip(concepts.names, concepts.categories))
    per_category = {c: 0 for c in concepts.categories}
    for e in result:
        if e.formula is not None:
            for c in {category[n] for n in e.formula.leaves()}:
                per_category[c] += 1
    return {"units": len(result), "explained": sum(e.formula is not None for e in result),
            "mean": float(np.mean([e.iou for e in result])),
            "netdissect": sum(e.primitive is not None and e.primitive_iou >= threshold
                              for e in result),
            "formulas": sum(e.formula is not None and e.iou >= threshold for e in result),
            "categories": per_category}


# =============================================================================== numbers

def _explanation(unit, formula, iou, primitive, primitive_iou):
    f = None if formula is None else Formula.parse(formula)
    p = None if primitive is None else Formula.parse(primitive)
    return Explanation(unit=unit, formula=f, iou=iou, score=iou, primitive=p,
                       primitive_iou=primitive_iou)


def test_summary_of_a_hand_made_layer():
    concepts = cx.ConceptSet.from_dense(np.zeros((2, 4, 2, 2), bool),
                                        names=["sky", "blue", "beach", "x"],
                                        categories=["object", "color", "scene", ""])
    result = SearchResult([
        _explanation(0, "(sky OR blue)", 0.5, "sky", 0.3),
        _explanation(1, "(blue AND NOT x)", 0.03, "blue", 0.05),     # x has no category
        _explanation(2, "sky", 0.04, "sky", 0.039),                  # exactly at the threshold
        _explanation(7, None, 0.0, None, 0.0),                        # unexplained
    ])
    s = summarize_layer(result, concepts, 0.04, name="conv", href="conv/index.html")
    assert (s.name, s.href, s.units, s.explained) == ("conv", "conv/index.html", 4, 3)
    assert s.mean_iou == pytest.approx((0.5 + 0.03 + 0.04) / 4)
    assert s.primitive_at_threshold == 2          # 0.3 and 0.05; 0.039 is below
    assert s.formula_at_threshold == 2            # 0.5 and 0.04 (>=); 0.03 is below
    assert s.category_units == {"object": 2, "color": 2, "scene": 0}
    assert list(s.category_units) == ["object", "color", "scene"]      # the concepts' order
    assert summarize_layer(result, concepts, 0.5).formula_at_threshold == 1
    assert summarize_layer(result, concepts, 0.0).primitive_at_threshold == 3   # not the None

    unknown = SearchResult([_explanation(0, "(sky OR cloud)", 0.5, "sky", 0.3)])
    with pytest.raises(ValueError, match="layer 'conv' names the concept 'cloud'"):
        summarize_layer(unknown, concepts, 0.04, name="conv")
    with pytest.raises(ValueError, match="no explanations"):
        summarize_layer(SearchResult([]), concepts, 0.04)


# =============================================================================== report

def test_writes_a_folder_per_layer_and_the_index(report):
    assert report.index == (report.out / "index.html").resolve()
    assert sorted(p.name for p in report.out.iterdir()) == ["index.html", "layer3", "layer4"]
    for layer, units in (("layer3", 4), ("layer4", 3)):
        page = (report.out / layer / "index.html").read_text(encoding="utf-8")
        assert page.count('<article class="card"') == units
        assert f"<h1>Compositional explanations of {layer}</h1>" in page
        assert '<a href="../index.html">all layers</a>' in page
        assert (report.out / layer / "img" / "iou_hist.png").is_file()


def test_index_numbers_match_the_results(data, report):
    rows = report.page.rows
    assert [r["layer"] for r in rows] == ["layer3", "layer4"]
    tested_threshold = False
    for row in rows:
        want = _expected(data.results[row["layer"]], data.concepts, THRESHOLD)
        cells, attrs = row["cells"], row["attrs"]
        assert int(cells["units"]) == want["units"]
        assert int(cells["explained"]) == want["explained"]
        assert float(attrs["mean"]["data-value"]) == pytest.approx(want["mean"], abs=1e-12)
        assert cells["mean"] == f"{want['mean']:.4f}"
        for key in ("netdissect", "formulas"):
            n, m = want[key], want["units"]
            assert int(attrs[key]["data-count"]) == n
            assert cells[key] == f"{n} of {m} ({100 * n / m:.0f}%)"
            tested_threshold |= 0 < n < m
    assert tested_threshold, "the threshold should split some layer's units"
    # The planted layers, by hand: layer3's best single concepts dog .46, cat .16, car .36,
    # dog .40; layer4's formulas .38 and .59 and the noise unit's none.
    assert [int(r["attrs"]["netdissect"]["data-count"]) for r in rows] == [1, 1]
    assert [int(r["attrs"]["formulas"]["data-count"]) for r in rows] == [4, 1]
    assert [int(r["cells"]["explained"]) for r in rows] == [4, 2]
    assert f"&ge; {THRESHOLD:g}" in report.html and "Network Dissection" in report.html


def test_links_resolve_to_written_files(report):
    assert report.page.hrefs, "the index should link to the layers"
    for href in report.page.hrefs:
        target = report.out / unquote(urlsplit(href).path)
        assert target.is_file(), href
    assert [r["href"] for r in report.page.rows] == ["layer3/index.html", "layer4/index.html"]


def test_chart_bars_count_explained_units_per_category(data, report):
    bars = report.page.bars
    categories = list(dict.fromkeys(data.concepts.categories))
    assert [(b["data-series"], b["data-category"]) for b in bars] == \
        [(layer, c) for c in categories for layer in ("layer3", "layer4")]
    for b in bars:
        want = _expected(data.results[b["data-series"]], data.concepts, THRESHOLD)
        assert int(b["data-count"]) == want["categories"][b["data-category"]]
        # A bar links to its layer's page filtered to its category; a zero bar to nothing
        # (the page offers only the categories its formulas use).
        link = f"{b['data-series']}/index.html#sort=iou-desc&category={b['data-category']}"
        assert b["href"] == (link if int(b["data-count"]) else None)
    counts = {(b["data-series"], b["data-category"]): int(b["data-count"]) for b in bars}
    # By hand: layer3's formulas use objects in all 4 units, colours in 3 (green, red, red),
    # no scene; layer4's "(house AND beach) AND NOT green" and "(cat OR road) OR house".
    assert counts == {("layer3", "object"): 4, ("layer3", "color"): 3, ("layer3", "scene"): 0,
                      ("layer4", "object"): 2, ("layer4", "color"): 1, ("layer4", "scene"): 1}
    # Heights are proportional to the counts (a zero count has no height).
    heights = {(b["data-series"], b["data-category"]): float(b["height"]) for b in bars}
    unit = heights[("layer3", "object")] / 4
    for key, count in counts.items():
        assert heights[key] == pytest.approx(count * unit, abs=0.11)
    # Layers have their own colour.
    assert len({b["fill"] for b in bars if b["data-series"] == "layer3"}) == 1
    assert {b["fill"] for b in bars if b["data-series"] == "layer3"} != \
        {b["fill"] for b in bars if b["data-series"] == "layer4"}


def test_names_given_and_folder_safe(data, tmp_path):
    names = ['conv/1 <b>', 'conv 1 "b"']          # the same folder name once made safe
    index = write_layers_report(data.files, tmp_path, images=data.dir / "images.h5",
                                names=names, top_images=0, title="Two & more")
    text = Path(index).read_text(encoding="utf-8")
    page = _parse(text)
    assert [r["layer"] for r in page.rows] == names
    assert [r["href"] for r in page.rows] == ["conv_1_b/index.html", "conv_1_b_2/index.html"]
    assert "<b>" not in text and "&lt;b&gt;" in text
    assert "<title>Two &amp; more</title>" in text
    for href in page.hrefs:
        assert (tmp_path / unquote(urlsplit(href).path)).is_file(), href


def test_default_names(data, tmp_path):
    """The layer recorded with the result first, then the activations file's, then the
    results file's name; in-memory results without any are numbered."""
    r3, r4 = data.results["layer3"], data.results["layer4"]
    named = SearchResult(list(r3), {**r3.params, "layer": "block3"})
    bare = SearchResult(list(r4), {k: v for k, v in r4.params.items() if k != "acts_path"})
    bare.save(tmp_path / "my_layer.h5")
    index = write_layers_report([named, tmp_path / "my_layer.h5"], tmp_path / "a",
                                images=data.dir / "images.h5", top_images=0,
                                acts=[r3.params["acts_path"], np.zeros((120, 3, 4, 4))])
    assert [r["layer"] for r in _parse(Path(index).read_text()).rows] == ["block3", "my_layer"]
    index = write_layers_report([SearchResult(list(r3)), SearchResult(list(r4))],
                                tmp_path / "b", images=data.dir / "images.h5", top_images=0,
                                acts=[load_activations(r3.params["acts_path"]),
                                      load_activations(r4.params["acts_path"])],
                                concepts=data.concepts)
    rows = _parse(Path(index).read_text()).rows
    assert [(r["layer"], r["href"]) for r in rows] == [("layer 1", "layer_1/index.html"),
                                                        ("layer 2", "layer_2/index.html")]


def test_one_layer_and_no_categories(data, tmp_path):
    plain = cx.ConceptSet.from_dense(np.zeros((120, 2, 8, 8), bool), names=["a", "b"])
    r = data.results["layer3"]
    index = write_layers_report([r], tmp_path, images=data.dir / "images.h5", top_images=0)
    assert "of 1 layer<" in Path(index).read_text()
    assert len(_parse(Path(index).read_text()).bars) == 3
    unexplained = SearchResult([_explanation(0, None, 0.0, None, 0.0)], r.params)
    index = write_layers_report([unexplained], tmp_path / "x", images=data.dir / "images.h5",
                                concepts=plain, top_images=0)
    text = Path(index).read_text()
    assert "<svg" not in text and "no categories" in text


# =============================================================================== bad input

def test_bad_input_is_named(data, tmp_path):
    kw = dict(images=data.dir / "images.h5", top_images=0)
    with pytest.raises(ValueError, match="results is empty"):
        write_layers_report([], tmp_path, **kw)
    with pytest.raises(TypeError, match="list of results"):
        write_layers_report(data.files[0], tmp_path, **kw)
    with pytest.raises(ValueError, match="same layer name 'a'"):
        write_layers_report(data.files, tmp_path, names=["a", "a"], **kw)
    with pytest.raises(ValueError, match="same layer name 'layer3'.*pass names"):
        write_layers_report([data.files[0], data.files[0]], tmp_path, **kw)
    with pytest.raises(ValueError, match="names has 1 entries for 2 results"):
        write_layers_report(data.files, tmp_path, names=["a"], **kw)
    with pytest.raises(TypeError, match="names must be a list"):
        write_layers_report(data.files, tmp_path, names="a,b", **kw)
    with pytest.raises(ValueError, match="non-empty strings"):
        write_layers_report(data.files, tmp_path, names=["a", " "], **kw)
    missing = tmp_path / "nope.h5"
    with pytest.raises(FileNotFoundError, match="results file 2 does not exist.*nope.h5"):
        write_layers_report([data.files[0], missing], tmp_path, **kw)
    for bad in (-0.1, 1.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="threshold must be a number in"):
            write_layers_report(data.files, tmp_path, threshold=bad, **kw)
    for bad in (True, "0.04", None):
        with pytest.raises(TypeError, match="threshold must be a number"):
            write_layers_report(data.files, tmp_path, threshold=bad, **kw)
    with pytest.raises(TypeError, match="one entry per result"):
        write_layers_report(data.files, tmp_path, acts=str(data.dir / "acts_layer3.h5"), **kw)
    with pytest.raises(ValueError, match="acts has 1 entries for 2 results"):
        write_layers_report(data.files, tmp_path, acts=[data.dir / "acts_layer3.h5"], **kw)
    with pytest.raises(ValueError, match="concepts has 3 entries"):
        write_layers_report(data.files, tmp_path, concepts=[data.concepts] * 3, **kw)
    r3 = data.results["layer3"]
    precision = SearchResult(list(r3), {**r3.params, "metric": "precision"})
    with pytest.raises(ValueError, match="different metrics"):
        write_layers_report([data.files[0], precision], tmp_path, names=["a", "b"], **kw)
    no_paths = SearchResult(list(r3))
    with pytest.raises(ValueError, match=r"results\[1\] does not record its acts file"):
        write_layers_report([data.files[0], no_paths], tmp_path, names=["a", "b"], **kw)
    # What write_report refuses is named with the layer: layer4's acts (3 units) for layer3's
    # result (4 units).
    with pytest.raises(ValueError, match="layer 'layer3': unit 3 of the results"):
        write_layers_report(data.files, tmp_path,
                            acts=[data.dir / "acts_layer4.h5"] * 2, names=["layer3", "layer4"],
                            **kw)


# =============================================================================== command line

def test_cli_several_layers(data, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["report", *map(str, data.files), "--images", str(data.dir / "images.h5"),
                 "-o", str(out), "--names", "early,late", "--threshold", "0.4",
                 "--top-images", "1", "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == str(out / "index.html")
    page = _parse((out / "index.html").read_text())
    assert [(r["layer"], r["href"]) for r in page.rows] == [("early", "early/index.html"),
                                                             ("late", "late/index.html")]
    assert [int(r["attrs"]["netdissect"]["data-count"]) for r in page.rows] == [1, 1]
    # One name makes the layers' layout for one file too; --acts once per file.
    out2 = tmp_path / "rep2"
    assert main(["report", str(data.files[1]), "--images", str(data.dir / "images.h5"),
                 "-o", str(out2), "--names", "late", "--acts",
                 str(data.dir / "acts_layer4.h5"), "--top-images", "0", "--no-progress"]) == 0
    assert (out2 / "late" / "index.html").is_file()


def test_cli_several_layers_errors(data, tmp_path, capsys):
    files, images = list(map(str, data.files)), str(data.dir / "images.h5")
    out = str(tmp_path / "x")

    def error(*argv):
        assert main(["report", *argv, "--images", images, "-o", out, "--no-progress"]) == 2
        return capsys.readouterr().err

    assert "--names has 1 names for 2 results files" in error(*files, "--names", "a")
    assert "same layer name 'a'" in error(*files, "--names", "a,a")
    assert "results file 2 does not exist" in error(files[0], str(tmp_path / "no.h5"))
    assert "--lengths applies to one results file" in error(*files, "--lengths", files[0])
    assert "--units applies to one results file" in error(*files, "--units", "0")
    assert "--acts is given 1 times for 2" in error(*files, "--acts", "a.h5")
    assert "--concepts is given 3 times" in error(*files, *["--concepts", "c.h5"] * 3)
    assert "--threshold is for the index across layers" in error(files[0], "--threshold", "0.1")
    assert "--acts is given 2 times for one results file" in \
        error(files[0], "--acts", "a.h5", "--acts", "b.h5")
    with pytest.raises(SystemExit):
        main(["report", *files, "--images", images, "--names", "a,,b"])
    assert "empty name" in capsys.readouterr().err


def test_docstring_examples():
    for module in (layers_module, plots_module):
        assert doctest.testmod(module, raise_on_error=False).failed == 0


# =============================================================================== browser

def test_browser_index_loads_cleanly(report, tmp_path):
    proc = _browse(report.index.as_uri(), tmp_path / "p", "--dump-dom")
    assert _console_messages(proc.stderr) == []
    dom = _parse(proc.stdout)
    assert [r["layer"] for r in dom.rows] == ["layer3", "layer4"]
    assert len(dom.bars) == len(report.page.bars)


def test_browser_bar_links_show_as_many_cards_as_the_bar_counts(report, tmp_path):
    """Each bar (of a non-zero count) opens its layer's page filtered to its category: the
    page shows exactly the bar's count of cards (the chart and the page's filter count
    alike)."""
    linked = [bar for bar in report.page.bars if bar["href"] is not None]
    assert len(linked) == 5
    for i, bar in enumerate(linked):
        url = (report.out / bar["href"].split("#")[0]).as_uri() + "#" + bar["href"].split("#")[1]
        proc = _browse(url, tmp_path / f"p{i}", "--dump-dom")
        assert _console_messages(proc.stderr) == []
        shown = re.search(r"showing (\d+) of (\d+) units", proc.stdout)
        assert shown is not None and int(shown.group(1)) == int(bar["data-count"]), bar


def test_browser_screenshot_shows_the_chart(report, tmp_path):
    shot = tmp_path / "shot.png"
    proc = _browse(report.index.as_uri(), tmp_path / "p", f"--screenshot={shot}",
                   "--window-size=1100,800")
    assert _console_messages(proc.stderr) == []
    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("RGB")).astype(np.int32)
    assert tuple(pixels[5, 5]) == (29, 47, 74)            # the header: the CSS applied
    # Each layer's bars are drawn in its colour, their areas in proportion to the counts
    # (layer3: 4 + 3 + 0 units, layer4: 2 + 1 + 1; plus a legend swatch each).
    areas = []
    for color in SERIES_COLORS[:2]:
        rgb = np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)])
        areas.append(int((np.abs(pixels - rgb).sum(axis=2) <= 6).sum()))
    assert min(areas) > 500
    assert areas[0] / areas[1] == pytest.approx(7 / 4, rel=0.15)
