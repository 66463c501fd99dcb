"""The report's HTML: cards, figures and the index page, filled into the templates.

The page is one self-contained file. Its markup, style and scripts are package data in
``templates/`` (read with :mod:`importlib.resources`) and are inlined into it:

* ``index.html``: the page, a :class:`string.Template` (``$title``, ``$style``, ``$errors_js``,
  ``$subtitle``, ``$links``, ``$plots``, ``$category_options``, ``$n_units``, ``$cards``, ``$report_js``);
* ``style.css``: the style sheet, a template too (``$unit_rgb``, ``$formula_rgb``,
  ``$unit_fill``: the overlay colours, so that the legend matches the images);
* ``errors.js``: runs first, so that an image that fails to load is reported with
  ``console.error``;
* ``report.js``: sorting and filtering, which reorders and hides the server-rendered cards.

A template file's final newline is not part of what is inlined. Every text that comes from the
data (titles, concept and category names, image names) is escaped with :func:`_e`; values are
substituted once, so a ``$`` in them stays as it is.
"""
from __future__ import annotations

import functools
import html
import json
from importlib import resources
from string import Template
from typing import Any, Optional, Sequence

from .overlays import FORMULA_COLOR, UNIT_ALPHA, UNIT_COLOR
from .plots import PLOT_SIZE

__all__ = ["card", "figure", "page", "links_html"]

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


def card(e, categories: list[str], figures: list[str], metric: str, lazy: bool) -> str:
    """The card of an explanation ``e``: its formula and facts, and its ``figures``, whose
    images load lazily when ``lazy``. ``data-*`` attributes carry what the script sorts and
    filters by."""
    formula = (f'<code>{_e(e.formula)}</code>' if e.formula is not None
               else '<span class="none">none (no concept overlaps the unit)</span>')
    primitive = ("<span class=\"none\">none</span>" if e.primitive is None
                 else f"<code>{_e(e.primitive)}</code> ({metric} {_fmt(e.primitive_iou)})")
    threshold = ("n/a (boolean activations)" if e.threshold is None
                 else f"{e.threshold:.6g}")
    facts = [("best primitive", primitive), ("formula length", str(e.length)),
             ("threshold", _e(threshold))]
    if 1 < len(e.by_length) <= _BY_LENGTH_SHOWN:
        items = "".join(f"<li><span>{i + 1}:</span> {v:.3f}</li>"
                        for i, (_, v) in enumerate(e.by_length))
        facts.append((f"{metric} by max length", f'<ol class="bylen">{items}</ol>'))
    tags = "".join(f'<span class="tag">{_e(c)}</span>' for c in categories)
    facts.append(("categories", tags or '<span class="none">none</span>'))
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    loading = ' loading="lazy"' if lazy else ""
    thumbs = "".join(f.replace("<img ", f"<img{loading} ", 1) for f in figures)
    return (f'<article class="card" id="unit-{e.unit}" data-unit="{e.unit}" '
            f'data-iou="{e.iou!r}" data-categories="{_e(json.dumps(categories))}">'
            f'<header><h2><a href="#unit-{e.unit}">Unit {e.unit}</a></h2>'
            f'<span class="score">{metric} {e.iou:.4f}</span></header>'
            f'<p class="formula">{formula}</p><dl class="facts">{dl}</dl>'
            f'<div class="thumbs">{thumbs}</div></article>')


def links_html(links: Sequence[tuple[str, str]]) -> str:
    """A paragraph of links to the report's pages (empty without links)."""
    if not links:
        return ""
    return ('<p class="links">' + " &middot; ".join(
        f'<a href="{_e(href)}">{_e(text)}</a>' for href, text in links) + "</p>")


def page(title: str, subtitle: list[str], plots: list[tuple[str, str, str]],
         category_options: list[str], cards: list[str], n_units: int,
         links: Sequence[tuple[str, str]] = ()) -> str:
    """The index page: ``plots`` are (src, alt, caption) of the plot images, ``cards`` the
    cards in their initial order, ``links`` (href, text) of the report's other pages."""
    style = Template(_template("style.css")).substitute(
        unit_rgb=f"rgb{UNIT_COLOR}", formula_rgb=f"rgb{FORMULA_COLOR}",
        unit_fill=f"rgba{UNIT_COLOR + (UNIT_ALPHA,)}")
    figs = "".join(f'<figure><img src="{_e(src)}" width="{PLOT_SIZE[0]}" '
                   f'height="{PLOT_SIZE[1]}" alt="{_e(alt)}"><figcaption>{_e(cap)}</figcaption>'
                   f'</figure>' for src, alt, cap in plots)
    return Template(_template("index.html") + "\n").substitute(
        title=_e(title), style=style, errors_js=_template("errors.js"),
        subtitle="".join(f"<p>{_e(s)}</p>" for s in subtitle), plots=figs,
        links=links_html(links),
        category_options="".join(f'<option value="{_e(c)}">{_e(c)}</option>'
                                 for c in category_options),
        n_units=n_units, cards="\n".join(cards), report_js=_template("report.js"))
