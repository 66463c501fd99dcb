"""Tests for compexp_core.report: the HTML report of a search result.

* the files: index page, one card per unit (formula, IoU, best primitive, threshold, length,
  per-length IoUs, categories), overlays and plots as PNGs;
* HTML escaping of a concept and a category whose names hold ``<``, ``"`` and ``&``;
* overlays: the right size, the unit's colour only where the unit's mask is, the formula's only
  where the formula's mask is, the image untouched elsewhere; top images as
  ``top_activating_samples``; the three kinds of image source give the same overlays;
* the mean-IoU-by-length plot from a second, longer search;
* errors naming the inputs that do not fit together; the ``compexp report`` command;
* in a real headless Chromium: the page loads with no console errors (and the detector does
  catch a page that throws, logs an error or misses an image), the script sorts and filters
  the cards (also from the address's ``#sort=...&category=...``), and a screenshot shows them.
"""
import doctest
import html.parser
import json
import os
import shutil
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

import compexp_core as cx
import compexp_core.report as report
from compexp_core.analysis import formula_mask_images, top_activating_samples, unit_mask_images
from compexp_core.cli import main
from compexp_core.io import load_concepts, save_activations, save_images, write_concept_sources
from compexp_core.report import FORMULA_COLOR, THUMB_SIZE, UNIT_COLOR, overlay, write_report
from compexp_core.report.page import _e
from compexp_core.engine.results import Explanation
from compexp_core.results import SearchResult
from compexp_core.synthetic import make_planted_dataset

ODD_CONCEPT = 'dog<"&'           # replaces "dog", which unit 0's planted formula uses
ODD_CATEGORY = 'scene <&> "x"'   # replaces "scene"
GRID = (8, 8)
TOP = 6


# =============================================================================== fixtures

def _images_from_labels(label_maps: np.ndarray, seed: int) -> np.ndarray:
    """Images 2x the grid that look like their segmentation: a colour per colour label, a bit
    darker on objects, plus noise."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(40, 230, (label_maps.max() + 1, 3))
    img = palette[label_maps[:, 1]].astype(np.float64)
    img[label_maps[:, 0] > 0] *= 0.75
    img += rng.normal(0, 8, img.shape)
    img = np.clip(img, 0, 255).astype(np.uint8)
    return img.repeat(2, axis=1).repeat(2, axis=2)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Planted units on an 8x8 grid (4x4 maps), concepts with categories written to a file and
    loaded back, images 16x16, a search at length 3 and one at length 10."""
    d = tmp_path_factory.mktemp("report_data")
    planted = make_planted_dataset(n_samples=120, grid=GRID, n_objects=6, n_colors=4,
                                   n_scenes=3, n_units=6, noise_units=1, map_size=(4, 4), seed=1)
    # A dead unit (never fires): its explanation has no formula.
    acts = np.concatenate([planted.acts, np.zeros_like(planted.acts[:, :1])], axis=1)
    names = list(planted.concepts.names)
    names[names.index("dog")] = ODD_CONCEPT
    categories = [ODD_CATEGORY if c == "scene" else c for c in planted.concepts.categories]
    scenes = [j for j, c in enumerate(categories) if c == ODD_CATEGORY]
    present = np.zeros((acts.shape[0], len(scenes)), bool)
    present[np.arange(acts.shape[0]), planted.scene] = True            # scene number 0..2
    write_concept_sources(d / "concepts.h5", n_samples=acts.shape[0], grid=GRID, names=names,
                          categories=categories,
                          label_maps={"segments": (planted.label_maps, planted.concept_of_label)},
                          sample_labels=(present, scenes))
    concepts = load_concepts(d / "concepts.h5")
    save_activations(d / "acts.h5", acts, model="planted", layer="layer<4>")
    images = _images_from_labels(planted.label_maps, seed=3)
    save_images(d / "images.h5", images, names=[f"img{i}.jpg" for i in range(len(images))])
    r3 = cx.search_formulas(acts, concepts, threshold=0.5, max_length=3, beam_size=5)
    r10 = cx.search_formulas(acts, concepts, threshold=0.5, max_length=10, beam_size=5)
    r3.params.update(acts_path=str(d / "acts.h5"), concepts_path=str(d / "concepts.h5"))
    r3.save(d / "r3.h5")
    r10.save(d / "r10.h5")
    return SimpleNamespace(dir=d, acts=acts, concepts=concepts, images=images, r3=r3, r10=r10)


@pytest.fixture(scope="module")
def page(data, tmp_path_factory):
    """The report of the length-3 search, with the length-10 search for the length plot."""
    out = tmp_path_factory.mktemp("report") / "out"
    index = write_report(data.dir / "r3.h5", out, acts=data.dir / "acts.h5",
                         concepts=data.dir / "concepts.h5", images=data.dir / "images.h5",
                         lengths=data.dir / "r10.h5", top_images=TOP)
    with open(index, encoding="utf-8") as fh:
        text = fh.read()
    return SimpleNamespace(index=index, out=out, html=text, cards=_parse_cards(text))


class _CardParser(html.parser.HTMLParser):
    """Collects each card's attributes, formula text, figures, tags and facts, in page order."""

    VOID = {"img", "br", "meta", "link", "input", "hr"}

    def __init__(self):
        super().__init__()
        self.cards, self._card, self._open = [], None, []    # _open: (tag, role) stack

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "article" and "card" in a.get("class", "").split():
            self._card = {"attrs": a, "formula": "", "samples": [], "srcs": [], "tags": [],
                          "facts": ""}
            self.cards.append(self._card)
            self._open = []
        if self._card is None:
            return
        role = self._open[-1][1] if self._open else None
        if tag == "p" and a.get("class") == "formula":
            role = "formula"
        elif tag == "dl":
            role = "facts"
        elif tag == "span" and a.get("class") == "tag":
            role = "tag"
            self._card["tags"].append("")
        elif tag == "figure":
            self._card["samples"].append(int(a["data-sample"]))
        elif tag == "img":
            self._card["srcs"].append(a["src"])
        if tag not in self.VOID:
            self._open.append((tag, role))

    def handle_endtag(self, tag):
        if self._card is None:
            return
        if tag == "article":
            self._card = None
            return
        while self._open:
            if self._open.pop()[0] == tag:
                break

    def handle_data(self, text):
        if self._card is None or not self._open:
            return
        role = self._open[-1][1]
        if role == "formula":
            self._card["formula"] += text
        elif role == "tag":
            self._card["tags"][-1] += text
        elif role == "facts":
            self._card["facts"] += text


def _parse_cards(text: str) -> list[dict]:
    parser = _CardParser()
    parser.feed(text)
    return parser.cards


def _card_of(cards, unit: int) -> dict:
    return next(c for c in cards if int(c["attrs"]["data-unit"]) == unit)


def _read(path) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def _png(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def _upsample(mask: np.ndarray, factor: int) -> np.ndarray:
    return mask.repeat(factor, axis=0).repeat(factor, axis=1)


# =============================================================================== files and cards

def test_writes_index_overlays_and_plots(data, page):
    assert os.path.isabs(page.index) and os.path.basename(page.index) == "index.html"
    assert page.html.startswith("<!DOCTYPE html>")
    units = data.r3.units
    assert sorted(int(c["attrs"]["data-unit"]) for c in page.cards) == sorted(units)
    for name, size in (("iou_hist.png", (560, 340)), ("iou_by_length.png", (560, 340))):
        with Image.open(page.out / "img" / name) as im:
            assert im.format == "PNG" and im.size == size
            assert len(im.convert("RGB").getcolors(1 << 16)) > 10       # not a blank image
        assert f'src="img/{name}"' in page.html
    for card in page.cards:
        assert len(card["srcs"]) == TOP
        for src in card["srcs"]:
            with Image.open(page.out / src) as im:
                assert im.format == "PNG" and im.size == (THUMB_SIZE, THUMB_SIZE)
    # No network resources: everything is inline or under img/.
    assert "http://" not in page.html and "https://" not in page.html


def test_cards_show_each_explanation_in_iou_order(data, page):
    ious = [float(c["attrs"]["data-iou"]) for c in page.cards]
    assert ious == sorted(ious, reverse=True)
    for e in data.r3:
        card = _card_of(page.cards, e.unit)
        assert float(card["attrs"]["data-iou"]) == e.iou
        assert f"IoU {e.iou:.4f}" in page.html
        if e.formula is None:
            assert card["formula"].startswith("none")
            assert "categories" in card["facts"] and card["tags"] == []
            continue
        assert card["formula"] == str(e.formula)
        assert str(e.primitive) in card["facts"] and f"{e.primitive_iou:.4f}" in card["facts"]
        assert f"{e.threshold:.6g}" in card["facts"] and str(e.length) in card["facts"]
        # IoU at each maximum length 1..3.
        for i, (_, v) in enumerate(e.by_length):
            assert f"{i + 1}: {v:.3f}" in card["facts"]
        names = data.concepts.names
        expected = sorted({data.concepts.categories[names.index(n)] for n in e.formula.leaves()})
        assert card["tags"] == expected
        assert json.loads(card["attrs"]["data-categories"]) == expected
    assert any(e.formula is None for e in data.r3)                 # the dead unit has a card
    assert "layer&lt;4&gt;" in page.html                          # provenance, escaped


def test_text_is_escaped(data, page):
    with_odd = [e for e in data.r3 if e.formula is not None and ODD_CONCEPT in e.formula.leaves()]
    assert with_odd, "the fixture should explain a unit with the odd concept name"
    assert 'dog<"' not in page.html and '<&>' not in page.html
    assert "dog&lt;\\&quot;&amp;" in page.html                     # "dog<\"&" as formula text
    assert "scene &lt;&amp;&gt; &quot;x&quot;" in page.html        # category tag and option
    card = _card_of(page.cards, with_odd[0].unit)
    assert card["formula"] == str(with_odd[0].formula)             # the parser reads it back
    scene_units = [c for c in page.cards if ODD_CATEGORY in c["tags"]]
    assert scene_units, "the fixture should explain a unit with a scene concept"
    assert f'<option value="{_e(ODD_CATEGORY)}">' in page.html


def test_top_images_are_the_top_activating_samples(data, page):
    for u in data.r3.units:
        card = _card_of(page.cards, u)
        assert card["samples"] == top_activating_samples(data.acts, u, TOP).tolist()
        assert card["srcs"] == [f"img/u{u:04d}_{r}.png" for r in range(TOP)]
    # The images file's names are the figures' tooltips.
    assert 'title="img' in page.html


def test_by_length_plot_caption_uses_the_longer_search(page):
    assert "maximum length of 1 to 10" in page.html and "second search" in page.html


# =============================================================================== overlays

def test_overlay_draws_both_masks_in_their_colours():
    img = np.full((40, 40, 3), 100, np.uint8)
    unit = np.zeros((4, 4), bool)
    unit[:2, :2] = True                       # the top-left 20x20 pixels
    formula = np.zeros((4, 4), bool)
    formula[2:, 2:] = True                    # the bottom-right 20x20 pixels
    out = overlay(img, unit, formula)
    assert out.shape == img.shape and out.dtype == np.uint8
    is_unit = (out == UNIT_COLOR).all(axis=2)
    is_formula = (out == FORMULA_COLOR).all(axis=2)
    edge = np.zeros((20, 20), bool)
    edge[:2], edge[-2:], edge[:, :2], edge[:, -2:] = True, True, True, True
    assert (is_unit[:20, :20] == edge).all() and not is_unit[20:].any() and not is_unit[:, 20:].any()
    assert (is_formula[20:, 20:] == edge).all() and not is_formula[:20].any()
    # Inside the unit's mask the image is tinted; the formula's is hatched; the rest untouched.
    assert (out[5:15, 5:15] != 100).any(axis=2).all()
    inner = out[25:35, 25:35]
    assert (inner != 100).any(axis=2).any() and (inner == 100).all(axis=2).any()
    assert (out[:20, 20:] == 100).all() and (out[20:, :20] == 100).all()


def test_report_overlays_follow_the_masks(data, tmp_path):
    """Flat-coloured images: outside both masks the overlay is the image's colour; the unit's
    colour lies only on the unit's mask, the formula's only on the formula's."""
    rng = np.random.default_rng(7)
    colours = rng.integers(30, 200, (data.acts.shape[0], 3)).astype(np.uint8)
    flat = np.broadcast_to(colours[:, None, None, :], (len(colours), 16, 16, 3)).copy()
    index = write_report(data.r3, tmp_path, acts=data.acts, concepts=data.concepts, images=flat,
                         top_images=3)
    cards = _parse_cards(_read(index))
    factor = THUMB_SIZE // GRID[0]
    seen_unit = seen_formula = 0
    for e in data.r3:
        card = _card_of(cards, e.unit)
        samples = card["samples"]
        umask = unit_mask_images(data.acts, e.unit, samples, GRID, e.threshold)
        fmask = (formula_mask_images(data.concepts, e.formula, samples) if e.formula is not None
                 else np.zeros_like(umask))
        for r, (s, src) in enumerate(zip(samples, card["srcs"])):
            pic = _png(tmp_path / src)
            assert pic.shape == (THUMB_SIZE, THUMB_SIZE, 3)
            u_up, f_up = _upsample(umask[r], factor), _upsample(fmask[r], factor)
            is_unit = (pic == UNIT_COLOR).all(axis=2)
            is_formula = (pic == FORMULA_COLOR).all(axis=2)
            assert not (is_unit & ~u_up).any() and not (is_formula & ~f_up).any()
            outside = ~(u_up | f_up)
            assert (np.abs(pic[outside].astype(int) - colours[s]) <= 1).all()
            assert is_unit.any() == umask[r].any() or f_up[u_up].all()
            assert is_formula.any() == fmask[r].any()
            seen_unit += int(is_unit.any())
            seen_formula += int(is_formula.any())
    assert seen_unit > 5 and seen_formula > 5


def test_image_sources_give_the_same_overlays(data, tmp_path):
    class Dataset:                      # like BrodenDataset: __len__ and raw_image(i)
        def __len__(self):
            return len(data.images)

        def raw_image(self, i):
            return data.images[i]

    pictures = []
    for name, images in (("array", data.images), ("file", data.dir / "images.h5"),
                         ("dataset", Dataset())):
        write_report(data.r3, tmp_path / name, acts=data.acts, concepts=data.concepts,
                     images=images, units=[0, 2], top_images=2)
        pictures.append([_png(tmp_path / name / "img" / f"u{u:04d}_{r}.png")
                         for u in (0, 2) for r in range(2)])
    for other in pictures[1:]:
        assert all((a == b).all() for a, b in zip(pictures[0], other))


def test_units_subset_default_lengths_and_options(data, tmp_path):
    index = write_report(data.r3, tmp_path, acts=data.acts, concepts=data.concepts,
                         images=data.images, units=[2, 0], top_images=0, title='My <"report">')
    text = _read(index)
    cards = _parse_cards(text)
    assert sorted(int(c["attrs"]["data-unit"]) for c in cards) == [0, 2]
    assert all(c["samples"] == [] for c in cards)
    assert "<title>My &lt;&quot;report&quot;&gt;</title>" in text
    assert "maximum length of 1 to 3" in text and "this result" in text


def test_result_without_per_length_ious(data, tmp_path):
    old = SearchResult([Explanation(e.unit, e.formula, e.iou, e.score, e.primitive,
                                    e.primitive_iou, e.beam, e.threshold) for e in data.r3])
    index = write_report(old, tmp_path, acts=data.acts, concepts=data.concepts,
                         images=data.images, top_images=1)
    assert "iou_by_length.png" not in _read(index)
    with pytest.raises(ValueError, match="lengths.*by_length"):
        write_report(data.r3, tmp_path, acts=data.acts, concepts=data.concepts,
                     images=data.images, lengths=old)


def test_progress_bar(data, tmp_path, capsys):
    write_report(data.r3, tmp_path, acts=data.acts, concepts=data.concepts,
                 images=data.images, units=[0], top_images=1, progress=True)
    assert "report" in capsys.readouterr().err


# =============================================================================== errors

def test_mismatched_inputs_are_named(data, tmp_path):
    kw = dict(acts=data.acts, concepts=data.concepts, images=data.images)
    with pytest.raises(ValueError, match=r"acts \(ndarray\) has N=100 samples but concepts"):
        write_report(data.r3, tmp_path, **{**kw, "acts": data.acts[:100]})
    with pytest.raises(ValueError, match=r"images \(ndarray\) has N=50 images but acts"):
        write_report(data.r3, tmp_path, **{**kw, "images": data.images[:50]})
    other = cx.ConceptSet.from_dense(np.ones((7, 1, 8, 8), bool), names=["x"])
    with pytest.raises(ValueError, match="N=7"):
        write_report(data.r3, tmp_path, **{**kw, "concepts": other})
    with pytest.raises(ValueError, match=r"unit 3 of the results is not in acts .* 3 units"):
        write_report(data.r3, tmp_path, **{**kw, "acts": data.acts[:, :3]})
    path = str(data.dir / "acts.h5")
    renamed = cx.ConceptSet.from_dense(np.zeros((120, 1, 8, 8), bool), names=["cat"])
    with pytest.raises(ValueError, match="names the concept .* not in concepts"):
        write_report(data.r3, tmp_path, **{**kw, "concepts": renamed})
    with pytest.raises(ValueError, match=f"acts '{path}' has N=120 samples but concepts"):
        write_report(data.r3, tmp_path, **{**kw, "acts": path, "concepts": other})


def test_bad_arguments(data, tmp_path):
    kw = dict(acts=data.acts, concepts=data.concepts, images=data.images)
    with pytest.raises(TypeError, match="uint8"):
        write_report(data.r3, tmp_path, **{**kw, "images": data.images.astype(np.float32)})
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        write_report(data.r3, tmp_path, **{**kw, "images": data.images[..., 0]})
    with pytest.raises(TypeError, match="images must be"):
        write_report(data.r3, tmp_path, **{**kw, "images": 5})

    class Gray:
        def __len__(self):
            return 120

        def raw_image(self, i):
            return np.zeros((16, 16), np.uint8)

    with pytest.raises(ValueError, match=r"image \d+ must be uint8 \[H, W, 3\]"):
        write_report(data.r3, tmp_path, **{**kw, "images": Gray()}, units=[0])
    with pytest.raises(ValueError, match="unit 99 is not in the result"):
        write_report(data.r3, tmp_path, **kw, units=[99])
    with pytest.raises(ValueError, match="top_images"):
        write_report(data.r3, tmp_path, **kw, top_images=-1)
    with pytest.raises(TypeError, match="SearchResult"):
        write_report([1, 2], tmp_path, **kw)
    with pytest.raises(TypeError, match="ConceptSet"):
        write_report(data.r3, tmp_path, **{**kw, "concepts": np.zeros((120, 3), bool)})
    with pytest.raises(FileNotFoundError):
        write_report(data.r3, tmp_path, **{**kw, "images": tmp_path / "missing.h5"})


# =============================================================================== command line

def test_cli_report(data, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["report", str(data.dir / "r3.h5"), "--images", str(data.dir / "images.h5"),
                 "-o", str(out), "--lengths", str(data.dir / "r10.h5"), "--units", "0-2",
                 "--top-images", "2", "--no-progress"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == str(out / "index.html")
    cards = _parse_cards(_read(printed))
    assert sorted(int(c["attrs"]["data-unit"]) for c in cards) == [0, 1, 2]
    assert all(len(c["samples"]) == 2 for c in cards)


def test_cli_report_errors(data, tmp_path, capsys):
    bare = tmp_path / "bare.h5"
    SearchResult(list(data.r3)).save(bare)          # records no input paths
    assert main(["report", str(bare), "--images", str(data.dir / "images.h5"),
                 "-o", str(tmp_path / "x"), "--no-progress"]) == 2
    assert "pass --acts" in capsys.readouterr().err
    assert main(["report", str(bare), "--images", str(data.dir / "images.h5"),
                 "--acts", str(data.dir / "acts.h5"), "-o", str(tmp_path / "x")]) == 2
    assert "pass --concepts" in capsys.readouterr().err
    assert main(["report", str(data.dir / "r3.h5"), "--images", str(tmp_path),
                 "-o", str(tmp_path / "x")]) == 2
    assert "index.csv" in capsys.readouterr().err
    assert main(["report", str(data.dir / "r3.h5"), "--images", str(data.dir / "acts.h5"),
                 "-o", str(tmp_path / "x")]) == 2
    assert "compexp-images" in capsys.readouterr().err


def test_docstring_examples():
    assert doctest.testmod(report, raise_on_error=False).failed == 0


# =============================================================================== browser

def _chromium() -> str:
    exe = shutil.which("chromium")
    if exe is None:
        message = "chromium is not installed (apt-get install chromium)"
        if os.environ.get("COMPEXP_REQUIRE_BROWSER") == "1":
            pytest.fail(message + ", and COMPEXP_REQUIRE_BROWSER=1")
        pytest.skip(message)
    return exe


def _browse(url: str, profile, *options: str) -> subprocess.CompletedProcess:
    """Run headless Chromium on a page (root-safe, no network use), console on stderr."""
    args = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--disable-default-apps", "--hide-scrollbars",
            f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *options, url]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _console_messages(stderr: str) -> list[str]:
    """Console output and uncaught exceptions, as Chromium logs them to stderr."""
    return [line for line in stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]


def _dom_cards(dom: str) -> list[tuple[int, bool]]:
    """(unit, hidden) of each card, in DOM order."""
    cards = _parse_cards(dom)
    return [(int(c["attrs"]["data-unit"]), "hidden" in c["attrs"]) for c in cards]


def test_browser_detects_console_errors_and_missing_images(page, tmp_path):
    """The detector used below is not blind: it catches a throw, a console.error and (through
    the page's own error listener) an overlay that fails to load."""
    broken = tmp_path / "broken.html"
    broken.write_text("<!DOCTYPE html><html><body><script>console.error('bad thing');"
                      "throw new Error('kaboom');</script></body></html>")
    messages = _console_messages(_browse(broken.as_uri(), tmp_path / "p1", "--dump-dom").stderr)
    assert any("bad thing" in m for m in messages)
    assert any("Uncaught" in m and "kaboom" in m for m in messages)

    copy = tmp_path / "copy"
    shutil.copytree(page.out, copy)
    first = page.cards[0]["srcs"][0]          # an eagerly loaded image of the first card
    os.unlink(copy / first)
    messages = _console_messages(_browse((copy / "index.html").as_uri(), tmp_path / "p2",
                                         "--dump-dom").stderr)
    assert any("image failed to load" in m and first in m for m in messages), messages


def test_browser_page_loads_cleanly_and_sorts(data, page, tmp_path):
    proc = _browse(page.out.joinpath("index.html").as_uri(), tmp_path / "p", "--dump-dom")
    assert _console_messages(proc.stderr) == []
    dom = proc.stdout
    assert 'data-ready="1"' in dom
    by_iou = sorted(data.r3, key=lambda e: (-e.iou, e.unit))
    assert _dom_cards(dom) == [(e.unit, False) for e in by_iou]
    assert f"showing {len(data.r3)} of {len(data.r3)} units" in dom


def test_browser_sorts_and_filters_from_the_address(data, page, tmp_path):
    url = page.out.joinpath("index.html").as_uri() + "#sort=unit&category=color"
    proc = _browse(url, tmp_path / "p", "--dump-dom")
    assert _console_messages(proc.stderr) == []
    assert 'data-ready="1"' in proc.stdout
    names, cats = data.concepts.names, data.concepts.categories
    has_color = {e.unit: e.formula is not None and any(cats[names.index(n)] == "color"
                                                        for n in e.formula.leaves())
                 for e in data.r3}
    assert 0 < sum(has_color.values()) < len(data.r3)          # the filter has work to do
    assert _dom_cards(proc.stdout) == [(u, not has_color[u]) for u in sorted(data.r3.units)]
    assert f"showing {sum(has_color.values())} of {len(data.r3)} units" in proc.stdout

    url = page.out.joinpath("index.html").as_uri() + "#sort=iou-asc"
    order = [u for u, _ in _dom_cards(_browse(url, tmp_path / "p2", "--dump-dom").stdout)]
    assert order == [e.unit for e in sorted(data.r3, key=lambda e: (e.iou, e.unit))]


def test_browser_screenshot_shows_the_cards(page, tmp_path):
    shot = tmp_path / "shot.png"
    proc = _browse(page.out.joinpath("index.html").as_uri(), tmp_path / "p",
                   f"--screenshot={shot}", "--window-size=1280,2000")
    assert _console_messages(proc.stderr) == []
    with Image.open(shot) as im:
        assert im.size == (1280, 2000)
        pixels = np.asarray(im.convert("RGB"))
    # The page header's background (CSS applied) and many colours (plots and images drawn).
    assert tuple(pixels[5, 5]) == (29, 47, 74)
    packed = (pixels.astype(np.int32) * [1 << 16, 1 << 8, 1]).sum(axis=2)
    assert np.unique(packed).size > 2000
    # The card area, below the plots, is not uniform: cards with their images.
    assert np.unique(packed[900:]).size > 1000 and pixels[900:].std() > 20
    shutil.copy(shot, page.out / "screenshot.png")    # kept with the report, for a look
