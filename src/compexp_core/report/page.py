"""The report's HTML: cards, figures and the index page, filled into the templates.

The page is one self-contained file. Its markup, style and scripts are package data in
``templates/`` (read with :mod:`importlib.resources`) and are inlined into it:

* ``index.html``: the page, a :class:`string.Template` (``$title``, ``$style``, ``$errors_js``,
  ``$subtitle``, ``$links``, ``$legend``, ``$plots``, ``$category_options``, ``$n_units``, ``$cards``,
  ``$report_js``); every report (images, text, tokens) fills it;
* ``style.css``: the style sheet, a template too (``$unit_rgb``, ``$formula_rgb``,
  ``$unit_fill``: the overlay colours, so that the legend matches the images);
* ``legend_images.html`` / ``legend_text.html`` / ``legend_tokens.html``: the legend under the
  title of each report; ``text.css`` / ``tokens.css``: the text and token reports' further
  style rules;
* ``errors.js``: runs first, so that an image that fails to load is reported with
  ``console.error``;
* ``report.js``: sorting and filtering, which reorders and hides the server-rendered cards;
* ``layers.html`` / ``layers.css``: the index page across layers (:func:`layers_page`, ``$title``,
  ``$style``, ``$errors_js``, ``$subtitle``, ``$table``, ``$table_note``, ``$chart``,
  ``$chart_note``), with ``style.css`` before its own rules.

A template file's final newline is not part of what is inlined. Every text that comes from the
data (titles, concept and category names, image names) is escaped with :func:`_e`; values are
substituted once, so a ``$`` in them stays as it is.
"""
from __future__ import annotations

import functools
import html
import json
import os
import uuid
from importlib import resources
from string import Template
from typing import Any, Optional, Sequence

import numpy as np

from .overlays import FORMULA_COLOR, UNIT_ALPHA, UNIT_COLOR
from .plots import PLOT_SIZE

__all__ = ["card", "card_shell", "formula_text", "unit_facts", "facts_list", "primitive_text",
           "figure", "page",
           "optimality_facts", "metric_label", "summary_line", "write_html", "links_html",
           "style_sheet", "layers_page"]

_BY_LENGTH_SHOWN = 10     # cards list the IoU at each length up to this many lengths


@functools.lru_cache(maxsize=None)
def _template(name: str) -> str:
    """The text of ``templates/<name>`` without its final newline."""
    text = (resources.files(__package__) / "templates" / name).read_text(encoding="utf-8")
    return text[:-1] if text.endswith("\n") else text


def _e(x: Any) -> str:
    """HTML-escape text or an attribute value (quotes included)."""
    return html.escape(str(x), quote=True)


def _fmt(v: Optional[float], digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def figure(sample: int, src: str, width: int, height: int, unit: int, peak: float,
           name: Optional[str] = None) -> str:
    """One top activating image of a unit: the overlay at ``src`` with its input index and peak
    activation as caption, and the input's name (if known) as tooltip."""
    name_attr = f' title="{_e(name)}"' if name is not None else ""
    return (f'<figure data-sample="{sample}"{name_attr}><img src="{src}" width="{width}" '
            f'height="{height}" alt="unit {unit}, image {sample}"><figcaption>#{sample} '
            f'&middot; {peak:.3g}</figcaption></figure>')


def metric_label(params: dict) -> str:
    """How the search's metric is named on the page: "IoU", "precision" or "recall"."""
    return {"precision": "precision", "recall": "recall"}.get(str(params.get("metric", "iou")),
                                                               "IoU")


def primitive_text(e, metric: str) -> str:
    """The best single concept of an explanation and its score, as HTML."""
    return ("<span class=\"none\">none</span>" if e.primitive is None
            else f"<code>{_e(e.primitive)}</code> ({metric} {_fmt(e.primitive_iou)})")


def facts_list(facts: Sequence[tuple[str, str]]) -> str:
    """A card's facts, (label, HTML value) pairs, as a ``<dl class="facts">``."""
    return '<dl class="facts">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts) + "</dl>"


def card_shell(e, categories: list[str], metric: str, body: str) -> str:
    """The frame every card shares: the unit's heading and score, and ``data-*`` attributes
    that the script sorts and filters by; ``body`` is the rest of the card's HTML."""
    return (f'<article class="card" id="unit-{e.unit}" data-unit="{e.unit}" '
            f'data-iou="{e.iou!r}" data-categories="{_e(json.dumps(categories))}">'
            f'<header><h2><a href="#unit-{e.unit}">Unit {e.unit}</a></h2>'
            f'<span class="score">{metric} {e.iou:.4f}</span></header>{body}</article>')


def optimality_facts(e, metric: str) -> list[tuple[str, str]]:
    """Facts of an optimal search (``method="optimal"``): proven or the gap, and the beam
    search's formula when it differs from the optimal one; none for a beam search."""
    o = getattr(e, "optimality", None)
    if o is None:
        return []
    status = ("proven optimal" if e.optimal else
              f"best found; upper bound {o.upper_bound:.4f} (gap {e.gap:.4f})")
    facts = [("optimal search", f"{status}; {o.nodes_expanded} prefixes expanded, "
                                f"{o.seconds:.1f} s")]
    if e.beam_suboptimal:
        beam = (f"<code>{_e(e.beam[0][0])}</code> (score {e.beam[0][1]:.4f})" if e.beam
                else '<span class="none">none</span>')
        facts.append(("beam search found", beam))
    return facts


def formula_text(e) -> str:
    """A card's formula line content, as HTML: the formula, or why there is none."""
    skipped = getattr(e, "skipped", None)
    if skipped:
        return f'<span class="none">skipped: {_e(skipped)}</span>'
    if e.formula is None:
        return '<span class="none">none (no concept overlaps the unit)</span>'
    return f"<code>{_e(e.formula)}</code>"


def unit_facts(e, categories: list[str], metric: str, fires: str = "") -> list[tuple[str, str]]:
    """The facts every card lists, (label, HTML value) pairs: best primitive, formula length,
    threshold (followed by ``fires``, HTML such as " (fires on 3 of 40 tokens)"), the optimal
    search's facts, the score at each maximum length and the formula's categories."""
    threshold = ("n/a (boolean activations)" if e.threshold is None
                 else f"{e.threshold:.6g}")
    facts = [("best primitive", primitive_text(e, metric)), ("formula length", str(e.length)),
             ("threshold", _e(threshold) + fires)] + optimality_facts(e, metric)
    if 1 < len(e.by_length) <= _BY_LENGTH_SHOWN:
        items = "".join(f"<li><span>{i + 1}:</span> {v:.3f}</li>"
                        for i, (_, v) in enumerate(e.by_length))
        facts.append((f"{metric} by max length", f'<ol class="bylen">{items}</ol>'))
    tags = "".join(f'<span class="tag">{_e(c)}</span>' for c in categories)
    facts.append(("categories", tags or '<span class="none">none</span>'))
    return facts


def card(e, categories: list[str], figures: list[str], metric: str, lazy: bool) -> str:
    """The card of an explanation ``e``: its formula and facts, and its ``figures``, whose
    images load lazily when ``lazy``."""
    formula = (f'<code>{_e(e.formula)}</code>' if e.formula is not None
               else '<span class="none">none (no concept overlaps the unit)</span>')
    facts = unit_facts(e, categories, metric)
    loading = ' loading="lazy"' if lazy else ""
    thumbs = "".join(f.replace("<img ", f"<img{loading} ", 1) for f in figures)
    return card_shell(e, categories, metric,
                      f'<p class="formula">{formula}</p>{facts_list(facts)}'
                      f'<div class="thumbs">{thumbs}</div>')


def links_html(links: Sequence[tuple[str, str]]) -> str:
    """A paragraph of links to the report's pages (empty without links)."""
    if not links:
        return ""
    return ('<p class="links">' + " &middot; ".join(
        f'<a href="{_e(href)}">{_e(text)}</a>' for href, text in links) + "</p>")


def style_sheet(extra_css: Optional[str] = None) -> str:
    """``style.css`` with the overlay colours filled in, followed by the rules of the template
    ``extra_css`` when given."""
    style = Template(_template("style.css")).substitute(
        unit_rgb=f"rgb{UNIT_COLOR}", formula_rgb=f"rgb{FORMULA_COLOR}",
        unit_fill=f"rgba{UNIT_COLOR + (UNIT_ALPHA,)}")
    if extra_css is not None:
        style += "\n" + _template(extra_css)
    return style


def page(title: str, subtitle: list[str], plots: list[tuple[str, str, str]],
         category_options: list[str], cards: list[str], n_units: int, *,
         legend: str = "legend_images.html", extra_css: Optional[str] = None,
         links: Sequence[tuple[str, str]] = ()) -> str:
    """The index page: ``plots`` are (src, alt, caption) of the plot images, ``cards`` the
    cards in their initial order; ``legend`` names the legend's template and ``extra_css``
    a template of style rules added after ``style.css``; ``links`` are (href, text) of the
    report's other pages."""
    style = style_sheet(extra_css)
    figs = "".join(f'<figure><img src="{_e(src)}" width="{PLOT_SIZE[0]}" '
                   f'height="{PLOT_SIZE[1]}" alt="{_e(alt)}"><figcaption>{_e(cap)}</figcaption>'
                   f'</figure>' for src, alt, cap in plots)
    return Template(_template("index.html") + "\n").substitute(
        title=_e(title), style=style, errors_js=_template("errors.js"),
        subtitle="".join(f"<p>{_e(s)}</p>" for s in subtitle), legend=_template(legend),
        plots=figs, links=links_html(links),
        category_options="".join(f'<option value="{_e(c)}">{_e(c)}</option>'
                                 for c in category_options),
        n_units=n_units, cards="\n".join(cards), report_js=_template("report.js"))


def summary_line(explanations, metric: str, params: dict) -> str:
    """The page's summary: how many units, how many explained, the mean and median score and
    the search's main settings."""
    ious = np.array([e.iou for e in explanations])
    explained = sum(e.formula is not None for e in explanations)
    line = (f"{len(explanations)} units, {explained} explained; mean {metric} "
            f"{ious.mean():.4f}, median {np.median(ious):.4f}")
    settings = [f"{label} {params[key]}" for key, label in
                (("max_length", "max length"), ("beam_size", "beam"), ("quantile", "quantile"))
                if key in params]
    return line + (" (" + ", ".join(settings) + ")" if settings else "")


def write_html(path: str, text: str) -> None:
    """Write a text file atomically (a temporary file renamed into place)."""
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{uuid.uuid4().hex[:12]}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _count_cell(css: str, count: int, total: int) -> str:
    share = f" ({100 * count / total:.0f}%)" if total else ""
    return f'<td class="{css}" data-count="{count}">{count} of {total}{share}</td>'


def layers_page(title: str, subtitle: list[str], layers, metric: str, threshold: float,
                chart: str, chart_note: str) -> str:
    """The index page across layers: a table with a row per layer (name linking to its cards
    page, units, explained units, mean score, the Network Dissection count and the formulas'
    count at ``threshold``) and the bar chart ``chart`` (SVG) with ``chart_note`` under it.

    ``layers`` are :class:`~compexp_core.report.layers.LayerSummary` objects, in table order.
    """
    t = f"{threshold:g}"
    head = ("<tr><th>layer</th><th>units</th><th>explained</th>"
            f"<th>mean {metric}</th><th>best single concept {metric} &ge; {t}</th>"
            f"<th>formula {metric} &ge; {t}</th></tr>")
    rows = [f'<tr data-layer="{_e(s.name)}"><th scope="row"><a href="{_e(s.href)}">'
            f'{_e(s.name)}</a></th><td class="units">{s.units}</td>'
            f'<td class="explained">{s.explained}</td>'
            f'<td class="mean" data-value="{s.mean_iou!r}">{s.mean_iou:.4f}</td>'
            + _count_cell("netdissect", s.primitive_at_threshold, s.units)
            + _count_cell("formulas", s.formula_at_threshold, s.units) + "</tr>"
            for s in layers]
    table = (f'<table class="layers"><thead>{head}</thead><tbody>{"".join(rows)}</tbody>'
             f'</table>')
    table_note = (
        f"Explained: units with a formula (some concept overlaps them). Mean {metric}: over all "
        f"of the layer's units, the formula's {metric} (0 for a unit without one), as on the "
        f"layer's page. Best single concept {metric} &ge; {t}: Network Dissection's count of "
        f"detector units, by the {metric} of each unit's best single concept (its Network "
        f"Dissection label). Formula {metric} &ge; {t}: the same count by the {metric} of the "
        f"unit's best formula.")
    return Template(_template("layers.html") + "\n").substitute(
        title=_e(title), style=style_sheet("layers.css"), errors_js=_template("errors.js"),
        subtitle="".join(f"<p>{_e(s)}</p>" for s in subtitle), table=table,
        table_note=table_note, chart=chart, chart_note=_e(chart_note))
