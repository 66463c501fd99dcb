"""Tests for compexp_core.report.write_text_report: the HTML report of units explained on
sentence pairs (NLI).

A hand-made set of 20 pairs, concepts built from their words (``pre:tok:W``, ``hyp:tok:W``,
a tag and an overlap concept), and three units: unit 0 fires on ``dog`` in the premise without
``sleeping`` in the hypothesis (plus one pair with both, so that a negated word shows up among
its top pairs), unit 1 on ``cat`` in the hypothesis or ``R&B`` or ``a<b&"c`` in the premise,
unit 2 never fires. Checked: the cards (formula, IoU, best concept, weights bars), highlighted
words (case-insensitive, negated leaves marked apart), the confusion matrices and accuracies
(hand computed), escaping, the sampled pairs, skipped units, the errors (raised before anything
is written), and in headless Chromium: no console errors, sorting and filtering.
"""
import dataclasses
import doctest
import html
import os
import re
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import numpy as np
import pytest

import compexp_core as cx
from compexp_core.engine.results import Explanation
from compexp_core.report import highlight_words, write_text_report
from compexp_core.results import SearchResult

# (premise, hypothesis, gold, predicted); classes 0 entailment, 1 neutral, 2 contradiction.
PAIRS = [
    ("A dog runs in the park", "An animal is outside", 0, 0),          # 0
    ("A dog sleeps on a mat", "A dog is sleeping", 0, 0),              # 1
    ("The Dog chases a ball", "A cat is playing", 2, 2),               # 2
    ("A man plays R&B music", "A man is singing", 1, 0),               # 3
    ("A woman walks a dog", "The woman is sleeping", 2, 1),            # 4
    ("Two dogs play", "Animals play", 0, 0),                           # 5
    ("A cat sits on a wall", "A cat is outside", 1, 1),                # 6
    ("A dog swims", "The dog is wet", 0, 1),                           # 7
    ("Children play soccer", "Kids are outside", 0, 0),                # 8
    ("A dog barks loudly", "The cat is sleeping", 2, 2),               # 9
    ("A band plays R&B", "A band performs", 0, 0),                     # 10
    ("A man reads", "A man is sleeping", 2, 2),                        # 11
    ("A DOG eats", "An animal eats", -1, 0),                           # 12 (unlabelled)
    ('A girl holds a<b&"c sign', "A girl holds a sign", 0, 0),         # 13
    ("A dog runs", "A cat runs", 2, 0),                                # 14
    ("People dance to R&B", "People are dancing", 0, 1),               # 15
    ("A bird flies", "A cat is flying", 2, 2),                         # 16
    ("A man sleeps", "A man is sleeping", 0, 0),                       # 17
    ("A dog jumps", "The dog is happy", 1, 1),                         # 18
    ("A cat eats", "A dog eats", 2, 2),                                # 19
]
PREMISES = [p.split() for p, _, _, _ in PAIRS]
HYPOTHESES = [h.split() for _, h, _, _ in PAIRS]
GOLD = np.array([g for _, _, g, _ in PAIRS])
PREDICTED = np.array([p for _, _, _, p in PAIRS])
N = len(PAIRS)
ODD = 'a<b&"c'
ODD_CATEGORY = 'odd <"&>'
WEIGHTS = np.array([[0.5, -1.0, 0.0], [-0.25, 0.2, 0.1], [0.0, 0.8, -0.3]])

UNIT0 = "(pre:tok:dog AND NOT hyp:tok:sleeping)"
UNIT1 = '((hyp:tok:cat OR pre:tok:r&b) OR "pre:tok:a<b&\\"c")'
HOLDS0 = [0, 2, 7, 12, 14, 18]
HOLDS1 = [2, 3, 6, 9, 10, 13, 14, 15, 16]
# Rows gold, columns predicted, over the labelled pairs where the formula holds.
CM0 = [[1, 1, 0],     # 0 E->E, 7 E->N            (12 is unlabelled)
       [0, 1, 0],     # 18 N->N
       [1, 0, 1]]     # 14 C->E, 2 C->C
CM1 = [[2, 1, 0],     # 10, 13 E->E, 15 E->N
       [1, 1, 0],     # 3 N->E, 6 N->N
       [1, 0, 3]]     # 14 C->E; 2, 9, 16 C->C
OVERALL = "0.737 (14 of 19)"     # wrong: 3, 4, 7, 14, 15; 12 unlabelled
TOP_K = 3
SAMPLES = 2


def _concepts() -> cx.ConceptSet:
    words = {"pre": ["dog", "cat", "man", "r&b", ODD], "hyp": ["dog", "cat", "sleeping", "outside"]}
    names, columns, categories = [], [], []
    for side, sentences in (("pre", PREMISES), ("hyp", HYPOTHESES)):
        for w in words[side]:
            names.append(f"{side}:tok:{w}")
            columns.append([w in {t.lower() for t in s} for s in sentences])
            categories.append(ODD_CATEGORY if w == ODD else "")
    names += ["hyp:tag:vbg", "oth:overlap:overlap50"]
    columns.append([any(t.endswith("ing") for t in s) for s in HYPOTHESES])
    columns.append([i % 3 == 0 for i in range(N)])
    categories += ["", ""]
    return cx.ConceptSet.from_dense(np.array(columns).T, names=names, categories=categories)


def _acts() -> np.ndarray:
    acts = np.zeros((N, 3), np.float32)
    acts[:, 0] = 0.01 * np.arange(N)                               # below the threshold 0.5
    for i, v in {7: 2.0, 4: 1.95, 0: 1.9, 14: 1.8, 18: 1.7, 2: 1.6, 12: 1.5}.items():
        acts[i, 0] = v
    acts[:, 1] = 0.02 * np.arange(N)[::-1]
    for rank, i in enumerate([3, 10, 15, 13, 2, 6, 9, 14, 16]):
        acts[i, 1] = 2.0 - 0.1 * rank
    acts[:, 2] = 0.01 * np.arange(N)
    acts[13, 2] = 0.4                                              # its top pair, never firing
    return acts


@pytest.fixture(scope="module")
def data():
    concepts = _concepts()
    acts = _acts()
    result = cx.search_formulas(acts, concepts, threshold=0.5, max_length=3, device="cpu")
    return SimpleNamespace(concepts=concepts, acts=acts, result=result,
                           kw=dict(acts=acts, concepts=concepts, premises=PREMISES,
                                   hypotheses=HYPOTHESES, gold=GOLD, predicted=PREDICTED))


def _read(path) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def _cards(text: str) -> dict[int, str]:
    """Each card's HTML by unit, in page order."""
    out = {}
    for chunk in text.split('<article class="card"')[1:]:
        unit = int(re.search(r'data-unit="(\d+)"', chunk).group(1))
        out[unit] = chunk[:chunk.index("</article>")]
    return out


def _pairs(card: str, which: str) -> list[int]:
    """The pair indices of a card's top list ("top") or of its formula samples ("holds")."""
    section = (card.split('class="pairs top">')[1].split("</ol>")[0] if which == "top"
               else card.split('<details class="holds">')[1].split("</details>")[0])
    return [int(i) for i in re.findall(r'data-pair="(\d+)"', section)]


def _pair_html(card: str, i: int) -> str:
    return card.split(f'data-pair="{i}">')[1].split("</li>")[0]


def _matrix(card: str) -> list[list[int]]:
    table = card.split('<table class="cm">')[1].split("</table>")[0]
    body = table.split("<tbody>")[1]
    return [[int(v) for v in re.findall(r"<td[^>]*>(\d+)</td>", row)]
            for row in body.split("</tr>") if "<td" in row]


@pytest.fixture(scope="module")
def report(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("text_report") / "out"
    index = write_text_report(data.result, out, **data.kw, weights=WEIGHTS, top_k=TOP_K,
                              formula_samples=SAMPLES)
    text = _read(index)
    return SimpleNamespace(index=index, out=out, html=text, cards=_cards(text))


# =============================================================================== the data

def test_fixture_search_finds_the_planted_formulas(data):
    e0, e1, e2 = (data.result.by_unit(u) for u in range(3))
    assert str(e0.formula) == UNIT0 and e0.iou == pytest.approx(6 / 7)
    assert str(e1.formula) == UNIT1 and e1.iou == 1.0
    assert e2.formula is None
    for e, holds in ((e0, HOLDS0), (e1, HOLDS1)):
        mask = e.formula.evaluate(data.concepts)
        assert np.flatnonzero(mask).tolist() == holds


# =============================================================================== the cards

def test_writes_page_and_plots(data, report):
    assert report.html.startswith("<!DOCTYPE html>")
    assert sorted(report.cards) == [0, 1, 2]
    assert list(report.cards) == [1, 0, 2]                         # IoU order: 1.0, 6/7, 0
    for name in ("iou_hist.png", "iou_by_length.png"):
        assert (report.out / "img" / name).is_file()
        assert f'src="img/{name}"' in report.html
    assert "http://" not in report.html and "https://" not in report.html


def test_cards_show_formula_iou_primitive(data, report):
    for u in (0, 1):
        e = data.result.by_unit(u)
        card = report.cards[u]
        assert f"<code>{html.escape(str(e.formula))}</code>" in card
        assert f"IoU {e.iou:.4f}" in card and f'data-iou="{e.iou!r}"' in card
        assert f"<code>{html.escape(str(e.primitive))}</code> (IoU {e.primitive_iou:.4f})" in card
    assert "formula holds on</dt><dd>6 of 20 pairs" in report.cards[0]
    assert "fires on 7 of 20 pairs" in report.cards[0]
    assert "none (no concept overlaps the unit)" in report.cards[2]
    assert '<table class="cm">' not in report.cards[2]             # no formula: no matrix


def test_top_pairs_and_highlighted_words(report):
    card0, card1 = report.cards[0], report.cards[1]
    assert _pairs(card0, "top") == [7, 4, 0]
    assert _pairs(card1, "top") == [3, 10, 15]
    # pre:tok:dog marks the premise's "dog" only; NOT hyp:tok:sleeping is marked apart.
    pair4 = _pair_html(card0, 4)
    assert "A woman walks a <mark>dog</mark>" in pair4
    assert 'The woman is <mark class="not">sleeping</mark>' in pair4
    assert "The dog is wet" in _pair_html(card0, 7)                # hyp:tok:dog is not a leaf
    # Case-insensitive, and escaped: token "R&B" under the leaf pre:tok:r&b.
    assert "A man plays <mark>R&amp;B</mark> music" in _pair_html(card1, 3)
    # Labels: gold and predicted, right or wrong.
    assert ('gold <span class="lab c1">neutral</span> \u00b7 predicted '
            '<span class="lab c0 wrong">entailment</span>') in _pair_html(card1, 3)
    assert 'predicted <span class="lab c0 right">entailment</span>' in _pair_html(card1, 10)


def test_formula_samples_are_deterministic_holding_pairs(data, report, tmp_path):
    assert _pairs(report.cards[0], "holds") == sorted(_pairs(report.cards[0], "holds"))
    for u, holds in ((0, HOLDS0), (1, HOLDS1)):
        shown = _pairs(report.cards[u], "holds")
        assert len(shown) == SAMPLES
        assert set(shown) <= set(holds) - set(_pairs(report.cards[u], "top"))
    assert f"other pairs where the formula holds (of {len(HOLDS1)})" in report.cards[1]
    again = _cards(_read(write_text_report(data.result, tmp_path, **data.kw, top_k=TOP_K,
                                          formula_samples=SAMPLES)))
    assert all(_pairs(again[u], "holds") == _pairs(report.cards[u], "holds") for u in (0, 1))
    # Fewer holding pairs than asked for: all of them.
    many = _cards(_read(write_text_report(data.result, tmp_path / "b", **data.kw, top_k=TOP_K,
                                         formula_samples=50)))
    assert _pairs(many[0], "holds") == [2, 12, 14, 18]
    assert "The <mark>Dog</mark> chases" in _pair_html(many[0], 2)          # any case
    assert "A <mark>DOG</mark> eats" in _pair_html(many[0], 12)


def test_confusion_matrices_and_accuracy(report):
    assert _matrix(report.cards[0]) == CM0
    assert _matrix(report.cards[1]) == CM1
    assert 'acc-holds">0.600</b> (3 of 5 labelled pairs)' in report.cards[0]
    assert 'acc-holds">0.667</b> (6 of 9 labelled pairs)' in report.cards[1]
    for u in (0, 1):
        assert f'acc-all">{OVERALL.split()[0]}</b> {OVERALL.split(" ", 1)[1]}' in report.cards[u]
    assert "Model accuracy on the 19 labelled pairs of 20: 0.737." in report.html
    head = report.cards[0].split('<table class="cm">')[1].split("</thead>")[0]
    assert re.findall(r"<th>([^<]*)</th>", head)[1:] == ["entailment", "neutral", "contradiction"]


def test_weight_bars(report):
    card0 = report.cards[0]
    bars = re.findall(r'<span class="wbar (\w+)" style="left:([\d.]+)%;width:([\d.]+)%">'
                      r'</span></span><span class="wval">([^<]+)</span>', card0)
    # Unit 0's weights 0.5, -0.25, 0.0, scaled by the largest magnitude of all units (1.0).
    assert bars == [("pos", "50.00", "25.00", "+0.500"), ("neg", "37.50", "12.50", "-0.250"),
                    ("zero", "50.00", "0.00", "+0.000")]
    assert 'class="wbar neg" style="left:0.00%;width:50.00%"' in report.cards[1]   # -1.0


def test_without_weights_there_are_no_bars(data, tmp_path):
    text = _read(write_text_report(data.result, tmp_path, **data.kw, top_k=1))
    assert 'class="weights"' not in text and "wbar" not in text.split("<main>")[1]


def test_text_is_escaped(report):
    assert ODD not in report.html and 'odd <"' not in report.html
    assert "A girl holds a&lt;b&amp;&quot;c sign" in report.cards[2]           # a token
    assert "pre:tok:a&lt;b&amp;\\&quot;c" in report.cards[1]                   # a formula
    assert f'<span class="tag">{html.escape(ODD_CATEGORY)}</span>' in report.cards[1]
    assert f'<option value="{html.escape(ODD_CATEGORY)}">' in report.html
    # The parser reads the formula back.
    code = re.search(r'<p class="formula"><code>(.*?)</code>', report.cards[1]).group(1)
    assert html.unescape(code) == UNIT1


def test_categories_come_from_the_concepts_or_the_names(report):
    assert 'data-categories="[&quot;hyp:tok&quot;, &quot;pre:tok&quot;]"' in report.cards[0]
    cats = re.search(r'data-categories="([^"]*)"', report.cards[1]).group(1)
    assert cats == html.escape('["hyp:tok", "odd <\\"&>", "pre:tok"]')


def test_zero_pairs_and_no_labels(data, tmp_path):
    text = _read(write_text_report(data.result, tmp_path, **{**data.kw, "gold": np.full(N, -1)},
                                   top_k=0, formula_samples=0))
    cards = _cards(text)
    assert "data-pair" not in text and "<details" not in text
    assert 'acc-holds">n/a</b> (0 of 0 labelled pairs)' in cards[0]
    assert _matrix(cards[0]) == [[0] * 3] * 3
    assert "Model accuracy on the 0 labelled pairs of 20: n/a." in text


def test_docstring_examples():
    import compexp_core.report.text as module

    failed, tried = doctest.testmod(module)
    assert tried > 0 and failed == 0


def test_highlight_words():
    f = cx.Formula.parse('(((pre:tok:Dog OR NOT NOT hyp:tok:x) AND NOT (hyp:tok:cat OR '
                         'pre:tag:nn)) OR oth:tok:y)')
    words = highlight_words(f)
    assert words == {"pre": (frozenset({"dog"}), frozenset()),
                     "hyp": (frozenset({"x"}), frozenset({"cat"}))}
    assert highlight_words(None) == {"pre": (frozenset(), frozenset()),
                                     "hyp": (frozenset(), frozenset())}


def test_skipped_unit_gets_a_card_that_says_so(data, tmp_path):
    @dataclasses.dataclass(frozen=True)
    class Skipped(Explanation):          # Explanation.skipped, as the search will record it
        skipped: Optional[str] = None

    e2 = data.result.by_unit(2)
    skipped = Skipped(2, None, 0.0, 0.0, None, 0.0, threshold=e2.threshold,
                      skipped="fires on 0 pairs, fewer than min_firing=5")
    result = SearchResult([data.result.by_unit(0), skipped])
    cards = _cards(_read(write_text_report(result, tmp_path, **data.kw, top_k=2)))
    assert "skipped: fires on 0 pairs, fewer than min_firing=5" in cards[2]
    assert _pairs(cards[2], "top") == [13, 19]


def test_units_lengths_title_and_paths(data, tmp_path):
    data.result.save(tmp_path / "r.h5")
    cx.io.save_activations(tmp_path / "acts.h5", data.acts, model="bowman", layer="mlp<0>")
    long = cx.search_formulas(data.acts, data.concepts, threshold=0.5, max_length=5,
                              device="cpu")
    index = write_text_report(tmp_path / "r.h5", tmp_path / "out", **{
        **data.kw, "acts": tmp_path / "acts.h5"}, units=[1], lengths=long, top_k=1)
    text = _read(index)
    assert list(_cards(text)) == [1]
    assert "text units of mlp&lt;0&gt;</title>" in text and "model bowman" in text
    assert "maximum length of 1 to 5" in text and "a second search" in text
    index = write_text_report(data.result, tmp_path / "t", **data.kw, title="<My & report>")
    assert "<title>&lt;My &amp; report&gt;</title>" in _read(index)


# =============================================================================== errors

@pytest.mark.parametrize("change, error, match", [
    (dict(premises=PREMISES[:-1]), ValueError, r"premises has 19 sentences but acts .* N=20"),
    (dict(hypotheses=HYPOTHESES + [["x"]]), ValueError, "hypotheses has 21 sentences"),
    (dict(gold=GOLD[:-1]), ValueError, r"gold must be \[N\] with N=20.*\(19,\)"),
    (dict(predicted=PREDICTED[:5]), ValueError, r"predicted must be \[N\] with N=20"),
    (dict(acts="rows"), ValueError, r"premises has 20 sentences but acts \(ndarray\) has N=19"),
    (dict(weights=WEIGHTS[:, :2]), ValueError, r"weights must be \[C, U\] = \[3, 3\].*\(3, 2\)"),
    (dict(weights=WEIGHTS[:2]), ValueError, r"weights must be \[C, U\] = \[3, 3\]"),
    (dict(weights=np.full((3, 3), np.nan)), ValueError, "weights must be finite"),
    (dict(acts="units", weights=None), ValueError,
     r"unit 2 of the results is not in acts .* 2 units"),
    (dict(units=[5]), ValueError, r"unit 5 is not in the result \(it explains units 0-2\)"),
    (dict(acts="nan"), ValueError, "NaN activations .* first at pair 4 of unit 1"),
    (dict(acts="4d"), ValueError, r"\[N, U\] \(one activation per pair\)"),
    (dict(gold=GOLD.astype(float)), TypeError, "gold must hold integer class indices"),
    (dict(gold=np.where(GOLD == 2, 3, GOLD)), ValueError, r"gold\[2\] is 3: must be -1"),
    (dict(predicted=np.where(GOLD < 0, -1, PREDICTED)), ValueError,
     r"predicted\[12\] is -1: must be 0..2"),
    (dict(premises=[" ".join(p) for p in PREMISES]), TypeError,
     r"premises\[0\] must be a sequence of tokens"),
    (dict(hypotheses=[[1, 2]] * N), TypeError, r"hypotheses\[0\] holds a token of type int"),
    (dict(class_names=("yes", "yes")), ValueError, "distinct"),
    (dict(class_names=("yes", "no")), ValueError, r"gold\[2\] is 2: must be -1 .*\(2 classes\)"),
    (dict(top_k=-1), ValueError, "top_k must be an integer >= 0"),
    (dict(concepts="grid"), ValueError, r"grid \(1, 1\)"),
    (dict(concepts="renamed"), ValueError, "names the concept .* not in concepts"),
    (dict(concepts="short"), ValueError, r"acts \(ndarray\) has N=20 pairs but concepts .* N=19"),
    (dict(concepts=np.zeros((N, 3), bool)), TypeError, "ConceptSet"),
])
def test_bad_inputs_raise_before_writing(data, tmp_path, change, error, match):
    kw = {**data.kw, "weights": WEIGHTS}
    acts = {"rows": data.acts[:-1], "units": data.acts[:, :2], "4d": data.acts[:, :, None, None]}
    if change.get("acts") == "nan":
        bad = data.acts.copy()
        bad[[4, 9], 1] = np.nan
        acts["nan"] = bad
    if isinstance(change.get("acts"), str):
        change = {**change, "acts": acts[change["acts"]]}
    concepts = {"grid": cx.ConceptSet.from_dense(np.zeros((N, 1, 2, 2), bool), ["x"]),
                "renamed": cx.ConceptSet.from_dense(np.zeros((N, 1), bool), ["x"]),
                "short": cx.ConceptSet.from_dense(np.zeros((N - 1, 1), bool), ["x"])}
    if isinstance(change.get("concepts"), str):
        change = {"concepts": concepts[change["concepts"]]}
    out = tmp_path / "out"
    with pytest.raises(error, match=match):
        write_text_report(data.result, out, **{**kw, **change})
    assert not out.exists()


def test_missing_file(data, tmp_path):
    with pytest.raises(FileNotFoundError):
        write_text_report(tmp_path / "missing.h5", tmp_path / "out", **data.kw)
    assert not (tmp_path / "out").exists()


# =============================================================================== size

SNLI = Path(os.environ.get("COMPEXP_SNLI_DIR")
            or Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "snli")


@pytest.mark.slow
def test_page_size_for_1024_units_on_snli(tmp_path):
    """1,024 units with length-3 formulas on the 10,000 pairs of SNLI dev (real sentences,
    real labels): the page stays a few MB (6.7 MB measured), well under 12 kB a card."""
    tok = SNLI / "snli_1.0_dev.tok"
    if not tok.is_file():
        pytest.skip(f"SNLI data not found at {SNLI}")
    lines = _read(tok).splitlines()
    premises, hypotheses = [x.split() for x in lines[0::2]], [x.split() for x in lines[1::2]]
    classes = ["entailment", "neutral", "contradiction"]
    gold = np.array([classes.index(g) if g in classes else -1
                     for g in _read(SNLI / "snli_1.0_dev.labels").split()[1:]])
    n, units = len(premises), 1024
    assert len(gold) == n == 10_000
    names, columns = [], []
    for side, sentences in (("pre", premises), ("hyp", hypotheses)):
        sets = [{t.lower() for t in s} for s in sentences]
        for w, _ in Counter(w for s in sets for w in s).most_common(50):
            names.append(f"{side}:tok:{w}")
            columns.append([w in s for s in sets])
    concepts = cx.ConceptSet.from_dense(np.array(columns).T, names=names)
    explanations = [Explanation(u, cx.Formula.from_steps(names[u % 100], [
        ("or", names[(u + 1) % 100]), ("and_not", names[(u + 7) % 100])]), 0.1, 0.1,
        cx.Formula.parse(names[u % 100]), 0.05, threshold=0.9) for u in range(units)]
    rng = np.random.default_rng(0)
    acts = rng.random((n, units), dtype=np.float32)
    index = write_text_report(SearchResult(explanations), tmp_path, acts=acts, concepts=concepts,
                              premises=premises, hypotheses=hypotheses, gold=gold,
                              predicted=rng.integers(0, 3, n), weights=rng.normal(size=(3, units)))
    text = _read(index)
    assert len(_cards(text)) == units and text.count("<mark>") > units
    size = (tmp_path / "index.html").stat().st_size
    assert size < 12 * 1024 * units, size


# =============================================================================== browser

def _browser():
    from test_report import _browse, _console_messages

    return _browse, _console_messages


def _dom_units(dom: str) -> list[tuple[int, bool]]:
    """(unit, hidden) of each card, in DOM order."""
    return [(int(u), "hidden" in attrs) for attrs, u in
            re.findall(r'<article class="card"([^>]*data-unit="(\d+)"[^>]*)>', dom)]


def test_browser_page_loads_cleanly_and_sorts(report, tmp_path):
    browse, console = _browser()
    proc = browse(report.out.joinpath("index.html").as_uri(), tmp_path / "p", "--dump-dom")
    assert console(proc.stderr) == []
    assert 'data-ready="1"' in proc.stdout
    assert _dom_units(proc.stdout) == [(1, False), (0, False), (2, False)]
    assert "showing 3 of 3 units" in proc.stdout


def test_browser_sorts_and_filters_from_the_address(report, tmp_path):
    from urllib.parse import quote

    browse, console = _browser()
    url = (report.out.joinpath("index.html").as_uri() + "#sort=unit&category="
           + quote(ODD_CATEGORY, safe=""))
    proc = browse(url, tmp_path / "p", "--dump-dom")
    assert console(proc.stderr) == []
    assert _dom_units(proc.stdout) == [(0, True), (1, False), (2, True)]
    assert "showing 1 of 3 units" in proc.stdout
    url = report.out.joinpath("index.html").as_uri() + "#sort=iou-asc&category=pre%3Atok"
    proc = browse(url, tmp_path / "p2", "--dump-dom")
    assert _dom_units(proc.stdout) == [(2, True), (0, False), (1, False)]


def test_browser_screenshot(report, tmp_path):
    from PIL import Image

    browse, console = _browser()
    shot = tmp_path / "shot.png"
    proc = browse(report.out.joinpath("index.html").as_uri(), tmp_path / "p",
                  f"--screenshot={shot}", "--window-size=1280,1800")
    assert console(proc.stderr) == []
    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("RGB"))
    assert tuple(pixels[5, 5]) == (29, 47, 74)                     # the page's header, styled
    assert pixels[900:].std() > 20                                 # cards drawn below the plots
    Image.fromarray(pixels).save(report.out / "screenshot.png")
