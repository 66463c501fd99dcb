"""The report's contributions page: each class's most contributing units with their
explanations (the reference code's "contributions" page), and, when given, the copy-paste
edits read from them with their measured effect and a few edited inputs before and after.

:func:`write_contributions_page` takes plain data (a
:class:`~compexp_core.analysis.ContributionTable`, the rows of ``adversarial.csv``, example
images with captions), so any domain's experiment can fill it.
"""
from __future__ import annotations

import math
import os
from string import Template
from typing import Optional, Sequence

import numpy as np

from ..analysis import ContributionTable
from .overlays import save_png, thumbnail
from .page import _e, _template, write_html

__all__ = ["write_contributions_page", "CONTRIBUTIONS_PAGE"]

#: File name of the page inside the report folder.
CONTRIBUTIONS_PAGE = "contributions.html"

_EXTRA_STYLE = """
table.plain { border-collapse: collapse; background: white; margin: 0 0 16px; font-size: 13px; }
table.plain th, table.plain td { border-bottom: 1px solid #dde3ea; padding: 3px 10px;
  text-align: left; vertical-align: top; }
table.plain td.num { text-align: right; font-variant-numeric: tabular-nums; }
section.block { background: white; border-radius: 8px; padding: 12px 14px; margin: 0 0 16px;
  box-shadow: 0 1px 3px rgba(0,0,0,.15); }
.verdict { font-weight: 600; }
.examples { display: flex; flex-wrap: wrap; gap: 14px; }
.examples figure { margin: 0; }
.examples figcaption { font-size: 12px; color: #445; max-width: 170px; }
"""


def _num(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def _pct(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.0%}"


def _contribution_tables(table: ContributionTable) -> str:
    parts = []
    for name in table.class_names:
        rows = table.for_class(name)
        if not rows:
            body = '<tr><td colspan="4" class="none">no unit contributes positively</td></tr>'
        else:
            body = "".join(
                f'<tr><td class="num">{r["rank"]}</td><td><a href="index.html#unit-{r["unit"]}">'
                f'unit {r["unit"]}</a></td><td class="num">{_num(r["contribution"])}</td>'
                f'<td>{"<code>" + _e(r["formula"]) + "</code>" if r["formula"] else "none"}'
                f' <span class="none">(IoU {r["iou"]:.3f})</span></td></tr>' for r in rows)
        parts.append(f'<section class="block" id="class-{_e(name)}"><h3>{_e(name)}</h3>'
                     f'<table class="plain"><tr><th>rank</th><th>unit</th><th>contribution</th>'
                     f'<th>explanation</th></tr>{body}</table></section>')
    return "".join(parts)


def _adversarial_table(rows: Sequence[dict]) -> str:
    head = ("<tr><th>target</th><th>edit adds</th><th>units</th><th>inputs</th>"
            "<th>flip rate (95% CI)</th><th>control</th><th>control flip rate (95% CI)</th>"
            "<th>unedited</th><th>p</th></tr>")
    body = "".join(
        f'<tr><td>{_e(r["target"])}</td><td><code>{_e(r["concept"])}</code></td>'
        f'<td>{_e(r["units"])}</td><td class="num">{r["n_inputs"]}</td>'
        f'<td class="num">{_pct(r["flip_rate"])} ({_pct(r["flip_ci_low"])}&ndash;'
        f'{_pct(r["flip_ci_high"])})</td><td><code>{_e(r["control"] or "none")}</code></td>'
        f'<td class="num">{_pct(r["control_flip_rate"])} ({_pct(r["control_ci_low"])}&ndash;'
        f'{_pct(r["control_ci_high"])})</td><td class="num">{_pct(r["unedited_rate"])}</td>'
        f'<td class="num">{_num(r["p_value"])}</td></tr>' for r in rows)
    return f'<table class="plain">{head}{body}</table>'


def write_contributions_page(out_dir, table: ContributionTable, *,
                             adversarial: Optional[Sequence[dict]] = None,
                             verdict: Sequence[str] = (), examples: Sequence[dict] = (),
                             title: str = "Contributions of units to classes",
                             method: str = "") -> str:
    """Write ``contributions.html`` (and its example images under ``img/``) into a report
    folder.

    Args:
        out_dir: the report folder (created if needed); link the page from the index with
            ``write_report(..., links=[("contributions.html", "contributions")])``.
        table: the contribution table.
        adversarial: the rows of ``adversarial.csv``
            (:data:`compexp_core.adversarial.ADVERSARIAL_COLUMNS`), or None for no section.
        verdict: lines that sum the experiment up (shown above its table).
        examples: dicts with ``title`` and ``images``, a list of (uint8 ``[H, W, 3]`` image,
            caption) shown side by side (an input before, after the edit, after the control).
        title: the page title.
        method: a sentence saying how contributions were computed.

    Returns:
        The absolute path of the page.

    Examples:
        >>> import tempfile
        >>> import numpy as np
        >>> from compexp_core.analysis import contribution_table
        >>> from compexp_core.engine.formula import Formula
        >>> from compexp_core.engine.results import Explanation
        >>> from compexp_core.results import SearchResult
        >>> result = SearchResult([Explanation(0, Formula.parse("red"), 0.5, 0.5, None, 0.0)])
        >>> table = contribution_table(result, np.array([[1.0, -1.0]]), ["red thing", "other"])
        >>> path = write_contributions_page(tempfile.mkdtemp(), table)
        >>> with open(path, encoding="utf-8") as fh:
        ...     "unit 0" in fh.read()
        True
    """
    out_dir = os.fspath(out_dir)
    os.makedirs(os.path.join(out_dir, "img"), exist_ok=True)
    style = Template(_template("style.css")).safe_substitute(
        unit_rgb="#f80", formula_rgb="#0ef", unit_fill="#f80")
    sections = []
    if adversarial is not None:
        figs = []
        for k, ex in enumerate(examples):
            cells = []
            for j, (image, caption) in enumerate(ex["images"]):
                name = f"adv_{k:02d}_{j}.png"
                picture = thumbnail(np.asarray(image, np.uint8))
                save_png(picture, os.path.join(out_dir, "img", name))
                cells.append(f'<figure><img src="img/{name}" width="{picture.shape[1]}" '
                             f'height="{picture.shape[0]}" alt="{_e(caption)}">'
                             f'<figcaption>{_e(caption)}</figcaption></figure>')
            figs.append(f'<h4>{_e(ex["title"])}</h4><div class="examples">{"".join(cells)}</div>')
        sections.append(
            '<section class="block" id="adversarial"><h2>Copy-paste edits read from the '
            'explanations</h2>'
            + "".join(f'<p class="verdict">{_e(v)}</p>' for v in verdict)
            + "<p>Each edit adds the concepts that the formulas of the units contributing most "
              "to the target ask for (leaves not under a NOT) to inputs the model predicts as "
              "other classes; the control adds concepts of similar frequency that appear in no "
              "explanation of the target's units, at the same sizes and positions. Flip rate: "
              "share of edited inputs now predicted as the target (95% Wilson interval). "
              "Unedited: share of all inputs predicted as the target without an edit. p: exact "
              "one-sided paired permutation test (McNemar) of edit against control.</p>"
            + _adversarial_table(adversarial) + "".join(figs) + "</section>")
    sections.append('<h2>Most contributing units per class</h2>'
                    + (f"<p>{_e(method)}</p>" if method else "")
                    + _contribution_tables(table))
    text = (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<title>{_e(title)}</title>\n<style>\n{style}\n{_EXTRA_STYLE}</style>\n</head>\n'
            f'<body>\n<header class="page"><h1>{_e(title)}</h1>'
            f'<p><a href="index.html">back to the units</a></p></header>\n<main>\n'
            + "\n".join(sections) + "\n</main>\n</body>\n</html>\n")
    path = os.path.join(out_dir, CONTRIBUTIONS_PAGE)
    write_html(path, text)
    return os.path.abspath(path)
