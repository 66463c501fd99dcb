"""The report's plots. Drawn with Pillow: the histogram of the units' IoUs and the mean IoU
against the maximum formula length, and :func:`report_plots`, which draws both for a report
(Pillow is imported inside the functions). Written as inline SVG: the bar chart of explained
units per concept category and layer of the index across layers (:func:`category_bars_svg`),
whose bars are links."""
from __future__ import annotations

import html
import os
from typing import Optional, Sequence

import numpy as np

__all__ = ["plot_histogram", "plot_by_length", "report_plots", "category_bars_svg",
           "PLOT_SIZE", "SERIES_COLORS"]

PLOT_SIZE = (560, 340)    # plot images, pixels
_PLOT_SUPERSAMPLE = 2     # plots are drawn this much larger and scaled down (antialiasing)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1 or no FreeType: bitmap font
        return ImageFont.load_default()


def _nice_ticks(hi: float, count: int = 5, integer: bool = False) -> list[float]:
    """Ticks 0, s, 2s, ... covering [0, hi], s a 1/2/2.5/5 times a power of ten."""
    hi = max(hi, 1.0 if integer else 1e-9)
    raw = hi / count
    power = 10.0 ** np.floor(np.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    if integer:
        step = max(1.0, float(np.ceil(step)))
    n = int(np.ceil(hi / step - 1e-9))
    return [i * step for i in range(n + 1)]


def _tick_text(v: float, step: float) -> str:
    """A tick label with as many decimals as the step needs (0.25 steps: two)."""
    decimals = next((d for d in range(7) if abs(step * 10 ** d - round(step * 10 ** d)) < 1e-6),
                    6)
    return f"{v:.{decimals}f}"


class _Plot:
    """A blank plot with axes, ticks and labels, drawn at a supersampled size."""

    def __init__(self, title: str, xlabel: str, ylabel: str, xlim: tuple[float, float],
                 yticks: list[float], xticks: list[float], xtick_text=None) -> None:
        from PIL import Image, ImageDraw

        s = _PLOT_SUPERSAMPLE
        self.s = s
        self.image = Image.new("RGB", (PLOT_SIZE[0] * s, PLOT_SIZE[1] * s), "white")
        self.draw = ImageDraw.Draw(self.image)
        self.left, self.top = 70 * s, 40 * s
        self.right, self.bottom = (PLOT_SIZE[0] - 20) * s, (PLOT_SIZE[1] - 55) * s
        self.xlim, self.ylim = xlim, (0.0, yticks[-1])
        font, small = _font(15 * s), _font(12 * s)
        d = self.draw
        d.text((self.image.width // 2, 8 * s), title, fill="black", font=font, anchor="ma")
        ystep = yticks[1] - yticks[0] if len(yticks) > 1 else 1.0
        for v in yticks:
            y = self.y(v)
            d.line([(self.left, y), (self.right, y)], fill=(225, 225, 225), width=s)
            d.line([(self.left - 5 * s, y), (self.left, y)], fill="black", width=s)
            d.text((self.left - 8 * s, y), _tick_text(v, ystep), fill="black", font=small,
                   anchor="rm")
        xstep = xticks[1] - xticks[0] if len(xticks) > 1 else 1.0
        for i, v in enumerate(xticks):
            x = self.x(v)
            d.line([(x, self.bottom), (x, self.bottom + 5 * s)], fill="black", width=s)
            text = xtick_text[i] if xtick_text else _tick_text(v, xstep)
            d.text((x, self.bottom + 8 * s), text, fill="black", font=small, anchor="ma")
        d.line([(self.left, self.top), (self.left, self.bottom), (self.right, self.bottom)],
               fill="black", width=s)
        d.text(((self.left + self.right) // 2, self.image.height - 8 * s), xlabel, fill="black",
               font=font, anchor="md")
        # The y label, written horizontally on its own image and turned a quarter.
        box = d.textbbox((0, 0), ylabel, font=font)
        label = Image.new("RGB", (box[2] + 4 * s, box[3] + 4 * s), "white")
        ImageDraw.Draw(label).text((2 * s, 2 * s), ylabel, fill="black", font=font)
        label = label.rotate(90, expand=True)
        self.image.paste(label, (6 * s, (self.top + self.bottom - label.height) // 2))

    def x(self, v: float) -> float:
        lo, hi = self.xlim
        return self.left + (v - lo) / (hi - lo) * (self.right - self.left)

    def y(self, v: float) -> float:
        lo, hi = self.ylim
        return self.bottom - (v - lo) / (hi - lo) * (self.bottom - self.top)

    def save(self, path: str) -> None:
        from PIL import Image

        self.image.resize(PLOT_SIZE, Image.LANCZOS).save(path, format="PNG")


def plot_histogram(values: np.ndarray, metric: str, path: str) -> None:
    """Histogram of the units' scores: 20 bins from 0 to a round upper bound."""
    top = float(values.max()) if values.size else 0.0
    upper = next(u for u in (0.05, 0.1, 0.2, 0.25, 0.4, 0.5, 0.6, 0.8, 1.0, np.inf) if u >= top)
    upper = max(top, 1.0) if np.isinf(upper) else upper
    counts, edges = np.histogram(values, bins=20, range=(0.0, upper))
    xticks = _nice_ticks(upper, 5)
    xticks = [v for v in xticks if v <= upper + 1e-12]
    plot = _Plot(f"{metric} of the units' explanations ({values.size} units)", metric,
                 "units", (0.0, upper), _nice_ticks(float(counts.max(initial=0)), 5, True),
                 xticks)
    s = plot.s
    for c, a, b in zip(counts, edges[:-1], edges[1:]):
        if c:
            plot.draw.rectangle([plot.x(a) + s, plot.y(c), plot.x(b) - s, plot.bottom - s],
                                fill=(66, 133, 204), outline=(31, 84, 140), width=s)
    plot.save(path)


def plot_by_length(means: np.ndarray, metric: str, n_units: int, path: str) -> None:
    """Mean score against the maximum formula length 1..L: a line with labelled points."""
    L = means.size
    xticks = list(range(1, L + 1)) if L <= 12 else [1] + _nice_ticks(L, 6, True)[1:]
    yticks = _nice_ticks(max(float(means.max()) * 1.15, 0.05), 5)
    plot = _Plot(f"Mean {metric} by maximum formula length ({n_units} units)",
                 "maximum formula length", f"mean {metric}",
                 (0.5, L + 0.5), yticks, [float(v) for v in xticks],
                 [str(int(v)) for v in xticks])
    s, d = plot.s, plot.draw
    points = [(plot.x(i + 1), plot.y(float(m))) for i, m in enumerate(means)]
    if len(points) > 1:
        d.line(points, fill=(204, 85, 0), width=3 * s, joint="curve")
    small = _font(11 * s)
    for (x, y), m in zip(points, means):
        r = 5 * s
        d.ellipse([x - r, y - r, x + r, y + r], fill=(204, 85, 0), outline="white", width=s)
        if L <= 12:
            d.text((x, y - 9 * s), f"{m:.3f}", fill="black", font=small, anchor="md")
    plot.save(path)


def report_plots(ious: np.ndarray, means: Optional[np.ndarray], metric: str, img_dir: str, *,
                 n_length_units: int, same_result: bool) -> list[tuple[str, str, str]]:
    """Draw a report's plots into ``img_dir``: ``iou_hist.png`` (the units' scores ``ious``)
    and, when ``means`` is given, ``iou_by_length.png`` (mean score by maximum length, over the
    ``n_length_units`` units of this result or, if not ``same_result``, of a second search).

    Returns:
        (src relative to the page, alt text, caption) of each plot drawn, in page order.
    """
    plots = []
    plot_histogram(ious, metric, os.path.join(img_dir, "iou_hist.png"))
    plots.append(("img/iou_hist.png", f"histogram of the units' {metric}",
                  f"{metric} of the best formula of each of the {len(ious)} units."))
    if means is not None:
        plot_by_length(means, metric, n_length_units, os.path.join(img_dir, "iou_by_length.png"))
        source = "this result" if same_result else "a second search (lengths)"
        plots.append(("img/iou_by_length.png", f"mean {metric} by maximum formula length",
                      f"Mean {metric} of the best formula found with a maximum length of "
                      f"1 to {means.size}, over the {n_length_units} units of {source}."))
    return plots


#: Bar colours of the layers in :func:`category_bars_svg`, in order (repeated past ten).
SERIES_COLORS = ("#3b75af", "#ef8636", "#519e3e", "#c53a32", "#8d69b8", "#84584e", "#d57dbf",
                 "#7f7f7f", "#bcbc45", "#58bbcc")


def category_bars_svg(categories: Sequence[str],
                      series: Sequence[tuple[str, Sequence[int], Sequence[str]]],
                      *, title: str, ylabel: str) -> str:
    """A grouped bar chart as inline SVG: one group per category, one bar per series in it.

    Each bar is a ``<rect class="bar">`` that carries ``data-series``, ``data-category`` and
    ``data-count``, inside a link (``<a href>``) unless its count is 0; its count is written
    above it and in its tooltip. Bars are drawn for zero counts too (no height, count "0").

    Args:
        categories: the groups, in order.
        series: (name, count per category, link per category) of each series, in order.
        title: the chart's title; ylabel: the y axis label.

    Returns:
        The ``<svg>`` element's text.

    Examples:
        >>> svg = category_bars_svg(["color", "object"], [("layer4", [2, 5], ["a", "b"])],
        ...                         title="t", ylabel="units")
        >>> svg.count('class="bar"'), 'data-count="5"' in svg
        (2, True)
    """
    e = lambda x: html.escape(str(x), quote=True)   # noqa: E731
    n_series = max(len(series), 1)
    bar, gap = (22 if n_series <= 4 else 14), 28
    group = n_series * bar + gap
    left, top, right, bottom = 56, 64, 16, 46
    width = max(left + len(categories) * group + right, left + n_series * 150 + right, 420)
    plot_h = 220
    height = top + plot_h + bottom
    top_count = max((max(c, default=0) for _, c, _ in series), default=0)
    ticks = _nice_ticks(float(top_count), 5, integer=True)
    y_max = ticks[-1]

    def y(v: float) -> float:
        return top + plot_h - v / y_max * plot_h

    out = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="{e(title)}">',
           f'<text x="{width / 2:.1f}" y="18" text-anchor="middle" class="title">{e(title)}'
           f'</text>']
    for i, (name, _, _) in enumerate(series):        # the legend, in one row under the title
        x = left + i * 150
        color = SERIES_COLORS[i % len(SERIES_COLORS)]
        out.append(f'<rect x="{x}" y="30" width="12" height="12" fill="{color}"/>'
                   f'<text x="{x + 16}" y="40" class="legend">{e(name)}</text>')
    for v in ticks:
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
                   f'class="grid"/><text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">'
                   f'{int(v)}</text>')
    out.append(f'<text transform="translate(14 {top + plot_h / 2:.1f}) rotate(-90)" '
               f'text-anchor="middle">{e(ylabel)}</text>')
    for j, category in enumerate(categories):
        x0 = left + j * group + gap / 2
        for i, (name, counts, links) in enumerate(series):
            count = int(counts[j])
            x = x0 + i * bar
            color = SERIES_COLORS[i % len(SERIES_COLORS)]
            tip = f"{name}: {count} explained units with a {category} concept"
            rect = (f'<rect class="bar" x="{x:.1f}" y="{y(count):.1f}" width="{bar - 2}" '
                    f'height="{y(0) - y(count):.1f}" fill="{color}" data-series="{e(name)}" '
                    f'data-category="{e(category)}" data-count="{count}">'
                    f'<title>{e(tip)}</title></rect>')
            if count:
                rect = f'<a href="{e(links[j])}">{rect}</a>'
            out.append(f'{rect}<text x="{x + (bar - 2) / 2:.1f}" y="{y(count) - 3:.1f}" '
                       f'text-anchor="middle" class="count">{count}</text>')
        out.append(f'<text x="{x0 + n_series * bar / 2:.1f}" y="{top + plot_h + 18}" '
                   f'text-anchor="middle">{e(category)}</text>')
    out.append(f'<line x1="{left}" x2="{width - right}" y1="{y(0):.1f}" y2="{y(0):.1f}" '
               f'class="axis"/></svg>')
    return "".join(out)
