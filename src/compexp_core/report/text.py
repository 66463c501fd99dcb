"""The report of units explained on text pairs (NLI): :func:`write_text_report`.

The units of a sentence-pair classifier (one activation per premise/hypothesis pair, so one
cell per pair) are explained by formulas over concepts named ``side:kind:value``:
``pre:tok:dog`` (the word "dog" is in the premise), ``hyp:tag:vbg`` (a part-of-speech tag occurs
in the hypothesis), ``oth:overlap:overlap50`` (word overlap of the two sentences) and so on.
The folder it writes::

    out_dir/index.html              the page: summary, legend, plots, sort/filter controls, cards
    out_dir/img/iou_hist.png        histogram of the units' IoUs
    out_dir/img/iou_by_length.png   mean IoU against the maximum formula length

Each card shows the unit's formula, its IoU, the best single concept and its IoU, the unit's
weight to each class (when the read-out layer's weights are given: a bar to the right for a
positive weight, to the left for a negative one, scaled by the largest magnitude among the
reported units), the top activating pairs with their gold and predicted labels, a few other
pairs where the formula holds, and the model's accuracy and confusion matrix (rows: gold,
columns: predicted) on the labelled pairs where the formula holds, next to its accuracy on all
labelled pairs.

Highlighting: a leaf ``pre:tok:W`` marks the premise's tokens equal to W (case-insensitive), a
leaf ``hyp:tok:W`` the hypothesis's. A leaf under a NOT (``AND NOT pre:tok:W``) is marked
differently (struck through, red): the formula asks for that word's absence, so where it shows
up the word works against the formula. Other concepts (tags, overlap) are in the formula text
but mark no words: the report is given tokens, not tags.

Filtering: a card's categories are its formula's concepts' categories from the
:class:`~compexp_core.ConceptSet`, or, for a concept without one, the first two fields of its
name (``pre:tok``, ``hyp:tag``, ``oth:overlap``). The page's sorting, filtering, address state
(``#sort=unit&category=pre:tok``) and ``data-ready`` are those of the images report
(:mod:`compexp_core.report`), whose templates it shares.

Size: with the defaults a card holds about 6.5 kB of HTML on SNLI's sentences, so 1,024 units
make a page of about 7 MB (one file, like the images report); cards are laid out only when
they scroll into view (CSS ``content-visibility``), which keeps the page quick to open, and the
pairs where the formula holds sit in a closed ``<details>``.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Optional, Sequence, Union

import numpy as np

from ..analysis import top_activating_samples
from ..engine.driver import materialize_formulas
from ..engine.formula import Formula
from ..engine.units import is_tensor, tensor_to_numpy
from ..inputs import activations_input
from .inputs import (as_concepts, as_result, check_units, file_attr, input_label, is_path,
                     length_means, provenance, select_units)
from .page import (_BY_LENGTH_SHOWN, _e, _fmt, card_shell, facts_list, metric_label,
                   optimality_facts, page,
                   primitive_text, summary_line, write_html)
from .plots import report_plots

__all__ = ["write_text_report", "CLASS_NAMES", "highlight_words"]

CLASS_NAMES = ("entailment", "neutral", "contradiction")

PathLike = Union[str, "os.PathLike[str]"]


def write_text_report(result, out_dir: PathLike, *, acts, concepts, premises, hypotheses,
                      gold, predicted, class_names: Sequence[str] = CLASS_NAMES, weights=None,
                      units: Optional[Sequence[int]] = None, top_k: int = 8,
                      formula_samples: int = 4, lengths=None,
                      title: Optional[str] = None,
                      links: Sequence[tuple] = ()) -> str:
    """Write an HTML report of units explained on sentence pairs: one card per unit.

    Args:
        result: a :class:`~compexp_core.SearchResult` or the path of a results file.
        out_dir: the folder to write (created if needed): ``index.html`` and ``img/*.png``.
        acts: the activations the search used, ``[N, U]`` (one value per pair): an array,
            tensor, h5py dataset or activations file.
        concepts: the :class:`~compexp_core.ConceptSet` the search used (grid 1 x 1), or its
            path.
        premises: N premises, each a sequence of tokens (str).
        hypotheses: N hypotheses, each a sequence of tokens (str).
        gold: int ``[N]``, the gold class of each pair (index into ``class_names``; -1 for an
            unlabelled pair).
        predicted: int ``[N]``, the model's predicted class of each pair.
        class_names: the C class names, in the order of the classes' indices.
        weights: the read-out layer's weights ``[C, U]`` (unit u's weight to class c), or None
            for no weight bars.
        units: the units (activation indices) to report, all in the result (default: every
            unit of ``result``).
        top_k: top activating pairs shown per unit (>= 0).
        formula_samples: further pairs shown where the formula holds (>= 0), drawn without
            the top pairs by a generator seeded with the unit's index (the same report every
            time), in pair order.
        lengths: the result whose per-length IoUs make the mean-IoU-against-length plot
            (default: ``result``).
        title: the page title (default: "Compositional explanations of text units", with the
            layer when the activations file records it).
        links: (href, text) of other pages of the report to link from the index (such as
            the contributions page).

    Returns:
        The absolute path of ``index.html``.

    Raises:
        ValueError: (before anything is written) the activations, pairs, labels and concepts
            disagree on N; weights are not ``[C, U]``; a unit out of range or not in the
            result; NaN activations; labels out of range; a formula names a concept missing
            from the concepts; concepts not on a 1 x 1 grid.
        TypeError: an argument of the wrong kind (a sentence given as one str, float labels).
        FileNotFoundError: an input path does not exist.

    Examples:
        >>> import os, pathlib, tempfile
        >>> import numpy as np, compexp_core as cx
        >>> premises = [["A", "dog", "runs"], ["A", "cat", "sleeps"]] * 3
        >>> hypotheses = [["An", "animal", "moves"], ["A", "dog", "sleeps"]] * 3
        >>> masks = np.array([[1, 0], [0, 1]] * 3, bool)       # pre:tok:dog, pre:tok:cat
        >>> concepts = cx.ConceptSet.from_dense(masks, names=["pre:tok:dog", "pre:tok:cat"])
        >>> acts = masks[:, :1].astype(np.float32)              # a unit firing on "dog"
        >>> result = cx.search_formulas(acts, concepts, threshold=0.5, max_length=2)
        >>> path = write_text_report(result, tempfile.mkdtemp(), acts=acts, concepts=concepts,
        ...                          premises=premises, hypotheses=hypotheses,
        ...                          gold=[0, 2] * 3, predicted=[0, 1] * 3, top_k=2)
        >>> text = pathlib.Path(path).read_text(encoding="utf-8")
        >>> "<mark>dog</mark> runs" in text, sorted(os.listdir(os.path.dirname(path) + "/img"))
        (True, ['iou_by_length.png', 'iou_hist.png'])
    """
    labels = {"acts": input_label(acts, "acts"), "concepts": input_label(concepts, "concepts")}
    result = as_result(result, "result")
    explicit_lengths = lengths is not None
    lengths = result if lengths is None else as_result(lengths, "lengths")
    top_k = _count(top_k, "top_k")
    formula_samples = _count(formula_samples, "formula_samples")
    class_names = _class_names(class_names)
    concepts = as_concepts(concepts)
    if concepts.grid != (1, 1):
        raise ValueError(f"{labels['concepts']} has a {concepts.grid} grid per sample; a text "
                         f"report needs one cell per pair (grid (1, 1))")
    units = select_units(result, units)

    opened = is_path(acts)
    source = activations_input(acts)
    try:
        values = _read_acts(source, labels["acts"])
        layer = file_attr(source, "layer")
        origin = provenance(source)
    finally:
        if opened:
            source.file.close()
    n, n_units = values.shape
    premises = _sentences(premises, "premises", n, labels["acts"])
    hypotheses = _sentences(hypotheses, "hypotheses", n, labels["acts"])
    gold = _labels(gold, "gold", n, labels["acts"], len(class_names), unlabelled=True)
    predicted = _labels(predicted, "predicted", n, labels["acts"], len(class_names),
                        unlabelled=False)
    if concepts.n_samples != n:
        raise ValueError(f"{labels['acts']} has N={n} pairs but {labels['concepts']} has "
                         f"N={concepts.n_samples}: they must describe the same pairs")
    if weights is not None:
        weights = _weights(weights, len(class_names), n_units)
    explanations = [result.by_unit(u) for u in units]
    check_units(units, explanations, n_units, concepts, labels)
    bad = np.isnan(values[:, units]) if values.dtype.kind == "f" else None
    if bad is not None and bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(f"{labels['acts']} has NaN activations ({int(bad.sum())} values), "
                         f"first at pair {int(row)} of unit {units[int(col)]}")
    means = length_means(lengths, explicit_lengths)

    # Everything is checked: compute, then write.
    with_formula = [i for i, e in enumerate(explanations) if e.formula is not None]
    masks = materialize_formulas(concepts, [explanations[i].formula for i in with_formula])
    holds = {i: masks.cells(j) for j, i in enumerate(with_formula)}   # cell = pair (1x1 grid)
    top = top_activating_samples(values, units, top_k)
    labelled = gold >= 0
    overall = _accuracy(gold[labelled], predicted[labelled])
    scale = float(np.abs(weights[:, units]).max()) if weights is not None else 0.0
    kinds = _categories(concepts)

    metric = metric_label(result.params)
    order = sorted(range(len(units)), key=lambda i: (-explanations[i].iou, units[i]))
    cards, category_set = [], set()
    for i in order:
        e, u = explanations[i], units[i]
        categories = [] if e.formula is None else sorted({kinds[c] for c in e.formula.leaves()}
                                                         - {""})
        category_set.update(categories)
        cards.append(_card(e, categories, metric, values[:, u], holds.get(i), top[i],
                           formula_samples, premises, hypotheses, gold, predicted, class_names,
                           None if weights is None else weights[:, u], scale, overall))

    out_dir = os.fspath(out_dir)
    img_dir = os.path.join(out_dir, "img")
    os.makedirs(img_dir, exist_ok=True)
    ious = np.array([e.iou for e in explanations])
    plots = report_plots(ious, means, metric, img_dir, n_length_units=len(lengths),
                         same_result=lengths is result)
    subtitle = [summary_line(explanations, metric, result.params),
                f"Model accuracy on the {overall[2]} labelled pairs of {n}: "
                f"{_fmt(overall[0], 3)}.",
                f"Pairs: the {top_k} with the highest activation of each unit, then up to "
                f"{formula_samples} other pairs where its formula holds (caption: pair index "
                f"and activation; gold and predicted class)."]
    if origin:
        subtitle.insert(0, origin)
    if title is None:
        title = "Compositional explanations of text units" + (f" of {layer}" if layer else "")
    text = page(title, subtitle, plots, sorted(category_set), cards, len(units),
                legend="legend_text.html", extra_css="text.css", links=links)
    index = os.path.join(out_dir, "index.html")
    write_html(index, text)
    return os.path.abspath(index)


def highlight_words(formula: Optional[Formula]) -> dict[str, tuple[frozenset, frozenset]]:
    """The words a formula marks in each sentence: ``{"pre": (words, negated_words), "hyp":
    (...)}``, case-folded, from its ``pre:tok:W`` and ``hyp:tok:W`` leaves (a leaf under an odd
    number of NOTs is negated).

    Args:
        formula: a formula, or None (no words).

    Returns:
        For "pre" and "hyp", the frozensets of (case-folded) words and of negated words.

    Examples:
        >>> from compexp_core import Formula
        >>> f = Formula.parse("((pre:tok:Dog OR hyp:tag:nn) AND NOT hyp:tok:sleeping)")
        >>> w = highlight_words(f)
        >>> sorted(w["pre"][0]), sorted(w["hyp"][0]), sorted(w["hyp"][1])
        (['dog'], [], ['sleeping'])
    """
    words: dict[str, tuple[set, set]] = {"pre": (set(), set()), "hyp": (set(), set())}
    stack: list[tuple[Any, bool]] = [] if formula is None else [(formula, False)]
    while stack:                        # no recursion: formulas can be deep
        node, negated = stack.pop()
        if hasattr(node, "name"):
            parts = node.name.split(":", 2)
            if len(parts) == 3 and parts[0] in words and parts[1] == "tok":
                words[parts[0]][int(negated)].add(parts[2].casefold())
        elif hasattr(node, "operand"):
            stack.append((node.operand, not negated))
        else:
            stack.extend(((node.left, negated), (node.right, negated)))
    return {side: (frozenset(pos), frozenset(neg)) for side, (pos, neg) in words.items()}


# ------------------------------------------------------------------------------ checks

def _count(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{what} must be an integer >= 0, got {value!r}")
    return int(value)


def _class_names(names) -> tuple[str, ...]:
    if isinstance(names, str) or not hasattr(names, "__iter__"):
        raise TypeError(f"class_names must be a sequence of str, got {type(names).__name__}")
    names = tuple(names)
    if not names or not all(isinstance(c, str) for c in names) or len(set(names)) != len(names):
        raise ValueError(f"class_names must be one or more distinct str, got {names!r}")
    return names


def _read_acts(source, label: str) -> np.ndarray:
    """The activations as a NumPy array [N, U] (read whole: one value per pair is small)."""
    if len(source.shape) != 2:
        raise ValueError(f"{label} must be [N, U] (one activation per pair), got shape "
                         f"{tuple(source.shape)}")
    values = np.asarray(source[()] if hasattr(source, "file") else source)
    if values.dtype.kind not in "biuf":
        raise TypeError(f"{label} must hold numbers, got dtype {values.dtype}")
    if values.shape[0] == 0 or values.shape[1] == 0:
        raise ValueError(f"{label} is empty (shape {values.shape})")
    return values


def _sentences(x, what: str, n: int, acts_label: str) -> list[list[str]]:
    if isinstance(x, (str, bytes)) or not hasattr(x, "__len__"):
        raise TypeError(f"{what} must be a sequence of token sequences, got {type(x).__name__}")
    if len(x) != n:
        raise ValueError(f"{what} has {len(x)} sentences but {acts_label} has N={n} pairs: "
                         f"they must describe the same pairs, in order")
    out = []
    for i, tokens in enumerate(x):
        if isinstance(tokens, (str, bytes)) or not hasattr(tokens, "__iter__"):
            raise TypeError(f"{what}[{i}] must be a sequence of tokens (str), got "
                            f"{type(tokens).__name__}")
        tokens = list(tokens)
        for t in tokens:
            if not isinstance(t, str):
                raise TypeError(f"{what}[{i}] holds a token of type {type(t).__name__}, not str")
        out.append(tokens)
    return out


def _labels(x, what: str, n: int, acts_label: str, n_classes: int, unlabelled: bool
            ) -> np.ndarray:
    x = tensor_to_numpy(x, what) if is_tensor(x) else np.asarray(x)
    if x.ndim != 1 or x.shape[0] != n:
        raise ValueError(f"{what} must be [N] with N={n} (the pairs of {acts_label}), got "
                         f"shape {x.shape}")
    if x.dtype.kind not in "iu":
        raise TypeError(f"{what} must hold integer class indices, got dtype {x.dtype}")
    x = x.astype(np.int64)
    lo = -1 if unlabelled else 0
    bad = (x < lo) | (x >= n_classes)
    if bad.any():
        i = int(np.argmax(bad))
        allowed = f"-1 (unlabelled) or 0..{n_classes - 1}" if unlabelled else \
            f"0..{n_classes - 1}"
        raise ValueError(f"{what}[{i}] is {int(x[i])}: must be {allowed} ({n_classes} classes)")
    return x


def _weights(w, n_classes: int, n_units: int) -> np.ndarray:
    w = tensor_to_numpy(w, "weights") if is_tensor(w) else np.asarray(w)
    if w.dtype.kind not in "iuf":
        raise TypeError(f"weights must hold numbers, got dtype {w.dtype}")
    if w.shape != (n_classes, n_units):
        raise ValueError(f"weights must be [C, U] = [{n_classes}, {n_units}] (classes x units "
                         f"of acts), got shape {w.shape}")
    w = w.astype(np.float64)
    if not np.isfinite(w).all():
        raise ValueError("weights must be finite (they hold NaN or infinity)")
    return w


def _categories(concepts) -> dict[str, str]:
    """Each concept's category: its own, else the first two fields of its name."""
    out = {}
    for name, category in zip(concepts.names, concepts.categories):
        parts = name.split(":")
        out[name] = category or (":".join(parts[:2]) if len(parts) >= 3 else "")
    return out


# ------------------------------------------------------------------------------ statistics

def _accuracy(gold: np.ndarray, predicted: np.ndarray) -> tuple[Optional[float], int, int]:
    """(accuracy or None when there are no pairs, correct, pairs)."""
    total = int(gold.size)
    correct = int(np.count_nonzero(gold == predicted))
    return (correct / total if total else None), correct, total


def _confusion(gold: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts [gold, predicted] of labelled pairs."""
    return np.bincount(gold * n_classes + predicted, minlength=n_classes * n_classes
                       ).reshape(n_classes, n_classes)


# ------------------------------------------------------------------------------ HTML

def _tokens(tokens: list[str], words: tuple[frozenset, frozenset]) -> str:
    """A sentence's tokens, escaped, those of ``words`` (marked, negated) marked."""
    pos, neg = words
    if not pos and not neg:
        return _escaped(" ".join(tokens))
    out = []
    for t in tokens:
        key = t.casefold()
        if key in pos:
            out.append(f"<mark>{_escaped(t)}</mark>")
        elif key in neg:
            out.append(f'<mark class="not">{_escaped(t)}</mark>')
        else:
            out.append(_escaped(t))
    return " ".join(out)


_escaped = functools.lru_cache(maxsize=1 << 16)(_e)     # tokens repeat across pairs and cards


def _class_label(c: int, class_names: tuple[str, ...], extra: str = "") -> str:
    if c < 0:
        return '<span class="lab">unlabelled</span>'
    return f'<span class="lab c{c}{extra}">{_e(class_names[c])}</span>'


def _pair(i: int, act: float, words, premises, hypotheses, gold, predicted,
          class_names) -> str:
    g, p = int(gold[i]), int(predicted[i])
    verdict = "" if g < 0 else (" right" if g == p else " wrong")
    return (f'<li data-pair="{i}"><p class="pre"><b>P</b> '
            f'{_tokens(premises[i], words["pre"])}</p><p class="hyp"><b>H</b> '
            f'{_tokens(hypotheses[i], words["hyp"])}</p><p class="meta">#{i} \u00b7 '
            f'{act:.3g} \u00b7 gold {_class_label(g, class_names)} \u00b7 predicted '
            f'{_class_label(p, class_names, verdict)}</p></li>')


def _weight_bars(w: np.ndarray, scale: float, class_names) -> str:
    rows = []
    for c, v in enumerate(w):
        width = 0.0 if scale == 0 else abs(v) / scale * 50
        sign = "pos" if v > 0 else "neg" if v < 0 else "zero"
        left = 50 if v >= 0 else 50 - width
        rows.append(f'<div class="wrow"><span class="wname">{_e(class_names[c])}</span>'
                    f'<span class="wtrack"><span class="wbar {sign}" style="left:{left:.2f}%;'
                    f'width:{width:.2f}%"></span></span><span class="wval">{v:+.3f}</span></div>')
    return f'<div class="weights" title="weight to each class">{"".join(rows)}</div>'


def _confusion_table(cm: np.ndarray, class_names) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in class_names)
    rows = "".join(f"<tr><th>{_e(class_names[g])}</th>" +
                   "".join(f'<td{" class=diag" if g == p else ""}>{int(cm[g, p])}</td>'
                           for p in range(len(class_names))) + "</tr>"
                   for g in range(len(class_names)))
    return (f'<table class="cm"><thead><tr><th>gold \\ predicted</th>{head}</tr></thead>'
            f'<tbody>{rows}</tbody></table>')


def _card(e, categories, metric, column, holds, top, formula_samples, premises, hypotheses,
          gold, predicted, class_names, w, scale, overall) -> str:
    """The card of explanation ``e`` of a unit whose activations are ``column`` [N]; ``holds``:
    the pairs where its formula holds (None without a formula), ``top``: its top pairs."""
    n = column.shape[0]
    fires = int(np.count_nonzero(column if e.threshold is None else column > e.threshold))
    skipped = getattr(e, "skipped", None)
    if skipped:
        formula = f'<span class="none">skipped: {_e(skipped)}</span>'
    elif e.formula is None:
        formula = '<span class="none">none (no concept overlaps the unit)</span>'
    else:
        formula = f"<code>{_e(e.formula)}</code>"
    threshold = "n/a (boolean activations)" if e.threshold is None else f"{e.threshold:.6g}"
    facts = [("best primitive", primitive_text(e, metric)), ("formula length", str(e.length)),
             ("threshold", f"{_e(threshold)} (fires on {fires} of {n} pairs)")] \
        + optimality_facts(e, metric)
    if 1 < len(e.by_length) <= _BY_LENGTH_SHOWN:
        items = "".join(f"<li><span>{i + 1}:</span> {v:.3f}</li>"
                        for i, (_, v) in enumerate(e.by_length))
        facts.append((f"{metric} by max length", f'<ol class="bylen">{items}</ol>'))
    tags = "".join(f'<span class="tag">{_e(c)}</span>' for c in categories)
    facts.append(("categories", tags or '<span class="none">none</span>'))
    if holds is not None:
        facts.append(("formula holds on", f"{holds.size} of {n} pairs"))
    body = [f'<p class="formula">{formula}</p>', facts_list(facts)]
    if w is not None:
        body.append(_weight_bars(w, scale, class_names))

    words = highlight_words(e.formula)
    if len(top):
        body.append(f'<h3>Top {len(top)} activating pairs</h3><ol class="pairs top">' +
                    "".join(_pair(int(i), float(column[i]), words, premises, hypotheses, gold,
                                  predicted, class_names) for i in top) + "</ol>")
    if holds is not None and formula_samples:
        chosen = _sample(holds, top, formula_samples, e.unit)
        body.append(f'<details class="holds"><summary>{chosen.size} other pairs where the '
                    f'formula holds (of {holds.size})</summary><ol class="pairs">' +
                    "".join(_pair(int(i), float(column[i]), words, premises, hypotheses, gold,
                                  predicted, class_names) for i in chosen)
                    + "</ol></details>")
    if holds is not None:
        body.append(_accuracy_section(holds, gold, predicted, class_names, overall))
    return card_shell(e, categories, metric, "".join(body))


def _sample(holds: np.ndarray, top: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Up to ``k`` of the pairs ``holds`` that are not in ``top``, drawn by a generator seeded
    with ``seed`` (the unit: the same pairs in every report), in pair order."""
    rest = np.setdiff1d(holds, top)
    if rest.size <= k:
        return rest
    return np.sort(np.random.default_rng(seed).choice(rest, k, replace=False))


def _accuracy_section(holds: np.ndarray, gold: np.ndarray, predicted: np.ndarray, class_names,
                      overall) -> str:
    """Accuracy and confusion matrix on the labelled pairs of ``holds``, beside ``overall``."""
    where = np.zeros(gold.size, bool)
    where[holds] = True
    where &= gold >= 0
    acc = _accuracy(gold[where], predicted[where])
    cm = _confusion(gold[where], predicted[where], len(class_names))
    return (f'<div class="accuracy"><p>Accuracy where the formula holds: '
            f'<b class="acc-holds">{_fmt(acc[0], 3)}</b> ({acc[1]} of {acc[2]} labelled '
            f'pairs); on all labelled pairs: <b class="acc-all">{_fmt(overall[0], 3)}</b>'
            f' ({overall[1]} of {overall[2]}).</p>{_confusion_table(cm, class_names)}</div>')
