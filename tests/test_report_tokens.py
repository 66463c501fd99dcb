"""Tests for compexp_core.report.write_token_report: the HTML report of units explained on
tokens (language-model neurons, SAE features).

A planted token dataset: 36 short documents of byte-level BPE tokens (``Ġ`` marks a word
start; odd tokens ``Ġ<``, ``Ġ&``, ``Ġ"`` and ``Ġa<b&"c``), sample-level concepts over them
(``tok:X`` for every token, ``prev:tok:Ġif``, ``pos:0``), and three units: unit 0 fires exactly
where ``((tok:Ġnot OR tok:Ġnever) AND NOT prev:tok:Ġif)`` holds (the issue's example), unit 1
on ``Ġ<`` and ``Ġ&`` tokens but one ``Ġ&`` (and on one ``Ġ"``), so that some tokens are
marked as firing only and some as formula-only, unit 2 never fires. Checked against hand
computation from the documents: which contexts (top tokens, ties in row order, windows cut at
document edges), which tokens are marked firing / formula-true / top, the escaping of odd
tokens, the card's facts; the command line (a tokens group in the activations file, --tokens,
the errors), a report of token layers, and in headless Chromium: no console errors, sorting,
and visible highlights in a screenshot.
"""
import doctest
import html
import re
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

import compexp_core as cx
from compexp_core.cli.main import main
from compexp_core.io import save_activations, save_concepts
from compexp_core.io.tokens import TokenTable, append_tokens
from compexp_core.report import write_layers_report, write_token_report
from compexp_core.report import tokens as token_report

WORDS = ["the", "cat", "not", "never", "if", "sat", "<", "&", '"', "dog", 'a<b&"c', "ran"]
UNIT0 = "((tok:Ġnot OR tok:Ġnever) AND NOT prev:tok:Ġif)"
UNIT1 = "(tok:Ġ< OR tok:Ġ&)"
TOP, WINDOW = 4, 2


def _documents() -> list[list[str]]:
    """36 documents of 4 to 9 tokens; a word-start marker on every token but the first."""
    rng = np.random.default_rng(7)
    docs = []
    for d in range(36):
        words = [WORDS[i] for i in rng.integers(0, len(WORDS), rng.integers(4, 10))]
        if d % 6 == 0:                    # make sure "if not" (and "if never") occur
            words[1:3] = ["if", "not" if d % 12 == 0 else "never"]
        docs.append([words[0].capitalize()] + ["Ġ" + w for w in words[1:]])
    return docs


DOCS = _documents()
TOKENS = TokenTable.from_documents(DOCS)
N = len(TOKENS)
TEXT = list(TOKENS.text)
PREV = [TEXT[r - 1] if TOKENS.position[r] > 0 else None for r in range(N)]


def _concepts() -> cx.ConceptSet:
    vocab = sorted(set(TEXT))
    names = [f"tok:{t}" for t in vocab] + ["prev:tok:Ġif", "pos:0"]
    columns = [[t == v for t in TEXT] for v in vocab]
    columns.append([p == "Ġif" for p in PREV])
    columns.append(list(TOKENS.position == 0))
    return cx.ConceptSet.from_dense(np.array(columns).T, names=names)


# The formulas' masks, by hand from the tokens.
HOLDS0 = {r for r in range(N) if TEXT[r] in ("Ġnot", "Ġnever") and PREV[r] != "Ġif"}
HOLDS1 = {r for r in range(N) if TEXT[r] in ("Ġ<", "Ġ&")}


def _acts() -> np.ndarray:
    acts = np.zeros((N, 3), np.float32)
    acts[:, 0] = 0.001 * np.arange(N)                     # below the threshold 0.5
    for rank, r in enumerate(sorted(HOLDS0)):
        acts[r, 0] = 2.0 - 0.01 * rank
    first, second = sorted(HOLDS0)[3:5]
    acts[[first, second], 0] = 3.0                        # a tie: row order decides
    amp = sorted(r for r in HOLDS1 if TEXT[r] == "Ġ&")
    quote = next(r for r in range(N) if TEXT[r] == 'Ġ"')
    for rank, r in enumerate(sorted((HOLDS1 - {amp[0]}) | {quote})):
        acts[r, 1] = 1.0 + 0.02 * rank
    acts[:, 2] = 0.002 * (np.arange(N) % 50)              # never fires
    return acts


@pytest.fixture(scope="module")
def data():
    concepts, acts = _concepts(), _acts()
    result = cx.search_formulas(acts, concepts, threshold=0.5, max_length=3, device="cpu")
    return SimpleNamespace(concepts=concepts, acts=acts, result=result,
                           kw=dict(tokens=TOKENS, acts=acts, concepts=concepts))


def _read(path) -> str:
    return Path(path).read_text(encoding="utf-8")


def _cards(text: str) -> dict[int, str]:
    """Each card's HTML by unit, in page order."""
    out = {}
    for chunk in text.split('<article class="card"')[1:]:
        unit = int(re.search(r'data-unit="(\d+)"', chunk).group(1))
        out[unit] = chunk[:chunk.index("</article>")]
    return out


def _contexts(card: str) -> list[tuple[int, list[tuple[set, str, str]]]]:
    """(top row, [(classes, title, token html)]) of each context of a card, in order."""
    out = []
    for row, body in re.findall(r'<li data-row="(\d+)"><p class="ctx">(.*?)</p>', card):
        spans = re.findall(r'<span class="tok([^"]*)" title="([^"]*)">(.*?)</span>', body)
        out.append((int(row), [(set(c.split()), t, s) for c, t, s in spans]))
    return out


@pytest.fixture(scope="module")
def report(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("token_report") / "out"
    index = write_token_report(data.result, out, **data.kw, top_contexts=TOP, window=WINDOW)
    text = _read(index)
    return SimpleNamespace(index=index, out=out, html=text, cards=_cards(text))


def _expected_top(column: np.ndarray, k: int) -> list[int]:
    """The k highest rows, ties in row order."""
    return sorted(range(column.size), key=lambda r: (-column[r], r))[:k]


def _window(row: int) -> list[int]:
    """The rows shown around ``row``: up to WINDOW either side, within its document."""
    doc = TOKENS.doc[row]
    return [r for r in range(row - WINDOW, row + WINDOW + 1)
            if 0 <= r < N and TOKENS.doc[r] == doc]


# =============================================================================== the data

def test_fixture_search_finds_the_planted_formulas(data):
    e0, e1, e2 = (data.result.by_unit(u) for u in range(3))
    assert str(e0.formula) == UNIT0 and e0.iou == 1.0
    assert str(e1.formula) == UNIT1 and 0.5 < e1.iou < 1
    assert e2.formula is None
    assert len(HOLDS0) >= 6 and any(PREV[r] == "Ġif" for r in range(N) if TEXT[r] == "Ġnot")


# =============================================================================== the cards

def test_writes_page_and_plots(report):
    assert Path(report.index) == report.out / "index.html"
    assert sorted(p.name for p in (report.out / "img").iterdir()) == ["iou_by_length.png",
                                                                     "iou_hist.png"]
    assert list(report.cards) == [0, 1, 2]                        # by IoU, highest first
    assert f"{N} tokens in 36 documents" in report.html
    assert "3 units, 2 explained" in report.html


def test_cards_show_formula_iou_primitive_and_counts(data, report):
    card = report.cards[1]
    e = data.result.by_unit(1)
    assert f"<code>{html.escape(UNIT1)}</code>" in card
    assert f'IoU {e.iou:.4f}' in card
    assert f"<code>{html.escape(str(e.primitive))}</code> (IoU {e.primitive_iou:.4f})" in card
    fires = int((data.acts[:, 1] > 0.5).sum())
    assert f"(fires on {fires} of {N} tokens)" in card
    assert f"<dt>formula holds on</dt><dd>{len(HOLDS1)} of {N} tokens</dd>" in card
    assert "none (no concept overlaps the unit)" in report.cards[2]
    assert "formula holds on" not in report.cards[2]


@pytest.mark.parametrize("unit, holds", [(0, HOLDS0), (1, HOLDS1), (2, set())])
def test_contexts_and_highlights_match_hand_computation(data, report, unit, holds):
    column = data.acts[:, unit]
    contexts = _contexts(report.cards[unit])
    assert [row for row, _ in contexts] == _expected_top(column, TOP)
    for row, spans in contexts:
        rows = _window(row)
        assert len(spans) == len(rows)
        for r, (classes, title, text) in zip(rows, spans):
            assert ("u" in classes) == bool(column[r] > 0.5), (row, r)
            assert ("f" in classes) == (r in holds), (row, r)
            assert ("top" in classes) == (r == row), (row, r)
            assert float(title) == pytest.approx(float(f"{column[r]:.3g}"))
            assert html.unescape(text) == TEXT[r].replace("Ġ", " ")


def test_ties_in_row_order_and_first_context_by_hand(data, report):
    contexts = _contexts(report.cards[0])
    first, second = sorted(HOLDS0)[3:5]
    assert [row for row, _ in contexts[:2]] == [first, second]     # both at 3.0
    row, spans = contexts[0]
    shown = "".join(html.unescape(s) for _, _, s in spans)
    doc = DOCS[TOKENS.doc[row]]
    p = int(TOKENS.position[row])
    assert shown == "".join(doc[max(0, p - WINDOW):p + WINDOW + 1]).replace("Ġ", " ")
    context = report.cards[0].split(f'<li data-row="{row}">')[1].split("</li>")[0]
    assert context.count('<span class="more">') == (p - WINDOW > 0) + (p + WINDOW + 1 < len(doc))
    assert f"doc {TOKENS.doc[row]} \u00b7 position {p} \u00b7 3</p>" in context


def test_odd_tokens_are_escaped_and_markers_shown_as_spaces(report):
    ctx = "".join(re.findall(r'<p class="ctx">(.*?)</p>', report.html))
    assert "Ġ" not in ctx
    assert "> &lt;</span>" in ctx and "> &amp;</span>" in ctx
    assert "> &quot;</span>" in ctx and "> a&lt;b&amp;&quot;c</span>" in ctx
    stripped = re.sub(r"<[^>]*>", "", ctx)
    assert "<" not in stripped and '"' not in stripped
    assert "tok:Ġ&lt;" in report.cards[1]                          # concept names as they are


def test_categories_are_the_name_families(report):
    assert 'data-categories="[&quot;prev:tok&quot;, &quot;tok&quot;]"' in report.cards[0]
    options = re.findall(r'<option value="([^"]*)">', report.html.split('id="category"')[1]
                         .split("</select>")[0])
    assert options == ["", "prev:tok", "tok"]


def test_word_tokens_are_joined_with_spaces(tmp_path):
    words = [["A", "dog", "runs"], ["No", "cat", "&", "dog"]]
    table = TokenTable.from_documents(words)
    masks = np.array([[t == "dog" for t in table.text]]).T
    concepts = cx.ConceptSet.from_dense(masks, names=["tok:dog"])
    acts = masks.astype(np.float32)
    result = cx.search_formulas(acts, concepts, threshold=0.5, max_length=1)
    text = _read(write_token_report(result, tmp_path, tokens=table, acts=acts,
                                    concepts=concepts, top_contexts=1, window=5))
    assert ('<span class="tok" title="0">A</span> <span class="tok u f top" title="1">dog'
            '</span> <span class="tok" title="0">runs</span>') in text


def test_boolean_activations_are_the_unit_mask(tmp_path):
    table = TokenTable.from_documents([["Ġa", "Ġb", "Ġa"], ["Ġb", "Ġa"]])
    masks = np.array([[t == "Ġa" for t in table.text]]).T
    concepts = cx.ConceptSet.from_dense(masks, names=["tok:Ġa"])
    acts = np.array([[1], [0], [0], [0], [1]], bool)
    result = cx.search_formulas(acts, concepts, max_length=1)
    assert result.by_unit(0).threshold is None
    card = _cards(_read(write_token_report(result, tmp_path, tokens=table, acts=acts,
                                           concepts=concepts, top_contexts=2, window=0)))[0]
    assert [r for r, _ in _contexts(card)] == [0, 4]
    assert _contexts(card)[0][1] == [({"u", "f", "top"}, "1", " a")]
    assert "n/a (boolean activations) (fires on 2 of 5 tokens)" in card
    assert "formula holds on</dt><dd>3 of 5 tokens" in card


def test_batches_give_the_same_cards(data, report, tmp_path, monkeypatch):
    """Reading a few hundred bytes at a time (many batches of units, many blocks of rows,
    units in any order) changes nothing."""
    path = tmp_path / "acts.h5"
    save_activations(path, data.acts)
    monkeypatch.setattr(token_report, "_BATCH_BYTES", 2 * N * 4)   # two units a batch
    monkeypatch.setattr(token_report, "_READ_BYTES", 700)
    index = write_token_report(data.result, tmp_path / "out", tokens=TOKENS, acts=path,
                               concepts=data.concepts, top_contexts=TOP, window=WINDOW,
                               units=[2, 0, 1])
    assert _cards(_read(index)) == report.cards


def test_top_rows_match_top_activating_samples():
    from compexp_core.analysis import top_activating_samples

    rng = np.random.default_rng(0)
    acts = rng.integers(0, 5, (300, 4)).astype(np.float32)         # many ties
    expected = top_activating_samples(acts, [0, 1, 2, 3], 17)
    for u in range(4):
        assert token_report._top_rows(acts[:, u].astype(np.float64), 17).tolist() == \
            expected[u].tolist()
    assert token_report._top_rows(np.ones(3), 10).tolist() == [0, 1, 2]
    assert token_report._top_rows(np.ones(3), 0).tolist() == []


def test_docstring_examples():
    assert doctest.testmod(token_report, raise_on_error=False).failed == 0


# =============================================================================== files, errors

@pytest.fixture(scope="module")
def files(data, tmp_path_factory):
    """The activations file with its tokens group, a plain one, the concepts file and the
    result recording both."""
    d = tmp_path_factory.mktemp("token_files")
    save_activations(d / "acts.h5", data.acts, model="tiny-lm", layer="blocks.0.mlp")
    with h5py.File(d / "acts.h5", "a") as f:
        append_tokens(f, TOKENS)
    save_activations(d / "plain.h5", data.acts)
    save_concepts(d / "concepts.h5", data.concepts)
    result = cx.search_formulas(data.acts, data.concepts, threshold=0.5, max_length=3)
    result.params.update(acts_path=str(d / "acts.h5"), concepts_path=str(d / "concepts.h5"))
    result.save(d / "r.h5")
    plain = cx.search_formulas(data.acts, data.concepts, threshold=0.5, max_length=3)
    plain.params.update(acts_path=str(d / "plain.h5"), concepts_path=str(d / "concepts.h5"))
    plain.save(d / "plain_r.h5")
    return d


def test_defaults_read_the_recorded_files_and_tokens_group(files, report, tmp_path):
    index = write_token_report(files / "r.h5", tmp_path, top_contexts=TOP, window=WINDOW)
    text = _read(index)
    assert _cards(text) == report.cards
    assert "<title>Compositional explanations of token units of blocks.0.mlp</title>" in text
    assert "model tiny-lm \u00b7 layer blocks.0.mlp" in text


@pytest.mark.parametrize("change, error, match", [
    (dict(tokens=TOKENS.rows(0, N - 3)), ValueError,
     rf"token table has {N - 3} tokens but acts \(ndarray\) has N={N} rows"),
    (dict(tokens=None), ValueError, r"acts \(ndarray\) has no tokens group: pass tokens="),
    (dict(tokens=[["a"]]), TypeError, "tokens must be a TokenTable"),
    (dict(acts=np.zeros((N, 3, 1, 1), np.float32)), ValueError, r"\[N_tokens, U\]"),
    (dict(acts=np.zeros((N, 2), np.float32)), ValueError, "unit 2 of the results is not in"),
    (dict(acts=np.where(np.arange(N)[:, None] == 9, np.nan, _acts())), ValueError,
     "NaN activations .* first at token row 9"),
    (dict(concepts=cx.ConceptSet.from_dense(np.ones((N, 1, 2, 2), bool), names=["x"])),
     ValueError, r"grid \(1, 1\)"),
    (dict(concepts=cx.ConceptSet.from_dense(np.ones((N, 1), bool), names=["x"])), ValueError,
     "names the concept"),
    (dict(window=-1), ValueError, "window must be an integer >= 0"),
    (dict(top_contexts=1.5), ValueError, "top_contexts must be an integer >= 0"),
    (dict(units=[7]), ValueError, "unit 7 is not in the result"),
])
def test_bad_inputs_raise_before_writing(data, tmp_path, change, error, match):
    out = tmp_path / "out"
    with pytest.raises(error, match=match):
        write_token_report(data.result, out, **{**data.kw, **change})
    assert not out.exists()


def test_bad_files(data, files, tmp_path):
    with pytest.raises(ValueError, match="plain.h5' has no tokens group"):
        write_token_report(files / "plain_r.h5", tmp_path / "a")
    with pytest.raises(ValueError, match="tokens '.*plain.h5' has no tokens group"):
        write_token_report(data.result, tmp_path / "b", acts=data.acts, concepts=data.concepts,
                           tokens=files / "plain.h5")
    with pytest.raises(FileNotFoundError, match="tokens file does not exist"):
        write_token_report(data.result, tmp_path / "c", acts=data.acts, concepts=data.concepts,
                           tokens=tmp_path / "missing.h5")
    with pytest.raises(ValueError, match="does not record its acts file: pass acts="):
        write_token_report(data.result, tmp_path / "d")
    assert not any((tmp_path / x).exists() for x in "abcd")


# =============================================================================== command line

def test_cli_token_report_from_the_tokens_group(files, report, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["report", str(files / "r.h5"), "-o", str(out), "--top-contexts", str(TOP),
                 "--window", str(WINDOW), "--no-progress"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == str(out / "index.html")
    assert _cards(_read(printed)) == report.cards
    out2 = tmp_path / "rep2"
    assert main(["report", str(files / "plain_r.h5"), "--tokens", str(files / "acts.h5"),
                 "-o", str(out2), "--units", "0", "--top-contexts", "1", "--no-progress"]) == 0
    assert list(_cards(_read(out2 / "index.html"))) == [0]


def test_cli_errors(files, tmp_path, capsys):
    assert main(["report", str(files / "plain_r.h5"), "-o", str(tmp_path / "x"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no --images given" in err and "has no tokens group" in err
    assert "pass --images IMAGES" in err and "--tokens FILE" in err
    assert main(["report", str(files / "r.h5"), "--tokens", str(files / "plain.h5"),
                 "-o", str(tmp_path / "x")]) == 2
    assert "--tokens" in capsys.readouterr().err
    assert main(["report", str(files / "r.h5"), "--tokens", str(files / "acts.h5"),
                 "--images", str(files / "acts.h5"), "-o", str(tmp_path / "x")]) == 2
    assert "exclude each other" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_token_layers_report(files, tmp_path, capsys):
    out = tmp_path / "layers"
    assert main(["report", str(files / "r.h5"), str(files / "plain_r.h5"), "--names",
                 "mlp0,mlp1", "--tokens", str(files / "acts.h5"), "-o", str(out),
                 "--top-contexts", "2", "--no-progress"]) == 0
    index = _read(out / "index.html")
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "mlp0", "mlp1"]
    assert 'href="mlp0/index.html#sort=iou-desc&amp;category=prev%3Atok"' in index
    layer = _read(out / "mlp1" / "index.html")
    assert 'href="../index.html"' in layer and len(_cards(layer)) == 3
    # Without --tokens, a layer whose activations have no tokens group is named.
    with pytest.raises(ValueError, match="layer 'b'.*no tokens group.*pass images="):
        write_layers_report([files / "r.h5", files / "plain_r.h5"], tmp_path / "y",
                            names=["a", "b"])
    with pytest.raises(ValueError, match="not both"):
        write_layers_report([files / "r.h5"], tmp_path / "z", images=np.zeros((1, 2, 2, 3)),
                            tokens=TOKENS)


# =============================================================================== browser

def _browser():
    from test_report import _browse, _console_messages

    return _browse, _console_messages


def test_browser_page_loads_cleanly_and_sorts(report, tmp_path):
    browse, console = _browser()
    proc = browse(report.out.joinpath("index.html").as_uri() + "#sort=unit&category=prev%3Atok",
                  tmp_path / "p", "--dump-dom")
    assert console(proc.stderr) == []
    assert 'data-ready="1"' in proc.stdout
    dom = [(int(u), "hidden" in a) for a, u in
           re.findall(r'<article class="card"([^>]*data-unit="(\d+)"[^>]*)>', proc.stdout)]
    assert dom == [(0, False), (1, True), (2, True)]
    assert "showing 1 of 3 units" in proc.stdout


def test_browser_screenshot_shows_the_highlights(report, tmp_path):
    from PIL import Image

    browse, console = _browser()
    shot = tmp_path / "shot.png"
    proc = browse(report.out.joinpath("index.html").as_uri(), tmp_path / "p",
                  f"--screenshot={shot}", "--window-size=1280,1600")
    assert console(proc.stderr) == []
    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("RGB")).astype(int)
    body = pixels[200:]                                             # below the header's legend

    def share(rgb, tol=6):
        return float((np.abs(body - np.array(rgb)).max(axis=2) <= tol).mean())

    assert share((255, 198, 140)) > 1e-4         # the unit's fill: orange 45% over white
    assert share((0, 229, 255)) > 1e-5           # the formula's underline: cyan
    assert share((192, 57, 43)) > 1e-5           # the top token's outline
    Image.fromarray(pixels.astype(np.uint8)).save(report.out / "screenshot.png")
