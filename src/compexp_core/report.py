"""HTML report of a search result: one card per unit, plots of the IoU distribution and of mean
IoU against formula length, and the units' top activating images with masks drawn over them.

:func:`write_report` writes a self-contained folder that opens in any browser with no network::

    out_dir/index.html        the page: summary, legend, plots, sort/filter controls, cards
    out_dir/img/iou_hist.png  histogram of the units' IoUs
    out_dir/img/iou_by_length.png   mean IoU against the maximum formula length (1..L)
    out_dir/img/uUUUU_R.png   unit UUUU's R-th top activating image with its masks drawn over it

Each card shows the unit's formula, its IoU, the best single concept (the Network Dissection
label) and its IoU, the threshold, the formula length, the best IoU at each maximum length, the
categories of the formula's concepts, and the unit's top activating images (highest peak
activation first, as :func:`compexp_core.analysis.top_activating_samples`). On each image the
unit's mask (its binarised activations, exactly the cells the search scored) is filled in
translucent orange with an orange outline, and the formula's mask is hatched and outlined in
cyan, as Network Dissection reports draw them; masks live on the concepts' grid and are
scaled to the image with nearest-neighbour sampling.

The page sorts its cards by IoU (descending or ascending) or unit, and filters them by concept
category (a unit matches when one of its formula's concepts has that category), with a few
lines of inline JavaScript and no external resources. The state can be given in the address:
``index.html#sort=unit&category=color`` (sort: ``iou-desc``, ``iou-asc`` or ``unit``). When the
page is ready, ``<body>`` carries ``data-ready="1"``. An image that fails to load is reported
with ``console.error``.

Command line: ``compexp report RESULTS --images IMAGES [--acts ACTS] [--concepts CONCEPTS]
[-o OUT_DIR] [--lengths RESULTS2] [--top-images 6] [--units 0-9,15]``.
"""
from __future__ import annotations

import html
import json
import os
import uuid
from typing import Any, Optional, Sequence, Union

import numpy as np

__all__ = ["write_report", "overlay", "UNIT_COLOR", "FORMULA_COLOR", "THUMB_SIZE", "add_cli_arguments",
           "run_cli"]

#: RGB of the unit's mask: its outline exactly, its fill blended over the image.
UNIT_COLOR = (255, 128, 0)
#: RGB of the formula's mask: its outline exactly, its hatching blended over the image.
FORMULA_COLOR = (0, 229, 255)
#: Longer side, in pixels, of the overlay images.
THUMB_SIZE = 160

_UNIT_ALPHA = 0.45        # opacity of the unit mask's fill
_HATCH_ALPHA = 0.6        # opacity of the formula mask's hatching
_HATCH_PERIOD = 6         # pixels between hatch lines (2 of them drawn)
_EDGE_WIDTH = 2           # outline width in pixels, drawn inside the mask
_EAGER_CARDS = 12         # cards whose images load at once; the rest load lazily
_PLOT_SIZE = (560, 340)   # plot images, pixels
_PLOT_SUPERSAMPLE = 2     # plots are drawn this much larger and scaled down (antialiasing)
_BY_LENGTH_SHOWN = 10     # cards list the IoU at each length up to this many lengths

PathLike = Union[str, "os.PathLike[str]"]


# =============================================================================== inputs

def _is_path(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike))


def _label(x: Any, what: str) -> str:
    """How an input is named in error messages: ``acts 'path'`` or ``acts (array)``."""
    if _is_path(x):
        return f"{what} '{os.fspath(x)}'"
    file = getattr(getattr(x, "file", None), "filename", None)
    if file:
        return f"{what} (from '{file}')"
    return f"{what} ({type(x).__name__})"


def _as_result(x: Any, what: str):
    from .results import SearchResult, load_results

    if _is_path(x):
        return load_results(x)
    if not isinstance(x, SearchResult):
        raise TypeError(f"{what} must be a SearchResult or the path of a results file, got "
                        f"{type(x).__name__}")
    return x


class _Images:
    """Uniform access to the images: ``len``, ``get(i) -> uint8 [H, W, 3]``, optional names."""

    def __init__(self, images: Any) -> None:
        self.label = _label(images, "images")
        self.names: Optional[list[str]] = None
        self._close = None
        if _is_path(images):
            from .io import open_images, read_images_metadata

            self.names = read_images_metadata(images)["names"]
            images = open_images(images)
            self._close = images.file.close
        if hasattr(images, "raw_image") and hasattr(images, "__len__") \
                and not hasattr(images, "shape"):
            self._source = images
            self._n = len(images)
            self._get = lambda i: images.raw_image(i)
            return
        if not (hasattr(images, "shape") and hasattr(images, "dtype")
                and hasattr(images, "__getitem__")):
            raise TypeError(f"images must be a compexp-images file, a uint8 array [N, H, W, 3] "
                            f"or a dataset with raw_image(i), got {type(images).__name__}")
        shape = tuple(images.shape)
        if len(shape) != 4 or shape[3] != 3 or any(s < 1 for s in shape):
            raise ValueError(f"{self.label} must be [N, H, W, 3] RGB images, got shape {shape}")
        if np.dtype(images.dtype) != np.uint8:
            raise TypeError(f"{self.label} must be uint8, got dtype {images.dtype}")
        self._n = shape[0]
        self._get = lambda i: images[i]

    def __len__(self) -> int:
        return self._n

    def get(self, i: int) -> np.ndarray:
        img = np.asarray(self._get(int(i)))
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3 or 0 in img.shape:
            raise ValueError(f"{self.label}: image {i} must be uint8 [H, W, 3], got shape "
                             f"{img.shape} dtype {img.dtype}")
        return img

    def close(self) -> None:
        if self._close is not None:
            self._close()


def _check_inputs(result, acts, concepts, images: _Images, units: Sequence[int],
                  labels: dict) -> None:
    """Raise ValueError naming the inputs when they do not fit together."""
    n_acts, n_units = int(acts.shape[0]), int(acts.shape[1])
    if n_acts != concepts.n_samples:
        raise ValueError(f"{labels['acts']} has N={n_acts} samples but {labels['concepts']} has "
                         f"N={concepts.n_samples}: they must describe the same inputs")
    if len(images) != n_acts:
        raise ValueError(f"{images.label} has N={len(images)} images but {labels['acts']} has "
                         f"N={n_acts} samples: they must describe the same inputs, in order")
    known = set(concepts.names)
    for u in units:
        if not 0 <= u < n_units:
            raise ValueError(f"unit {u} of the results is not in {labels['acts']} (it has "
                             f"{n_units} units): are these the activations the search used?")
        e = result.by_unit(u)
        for f in (e.formula, e.primitive):
            missing = [] if f is None else [n for n in f.leaves() if n not in known]
            if missing:
                raise ValueError(f"the formula {str(f)!r} of unit {u} names the concept "
                                 f"{missing[0]!r}, which is not in {labels['concepts']}: are "
                                 f"these the concepts the search used?")


# =============================================================================== overlays

def _thumb_shape(h: int, w: int, limit: int = THUMB_SIZE) -> tuple[int, int]:
    """(height, width) of an image scaled so that its longer side is ``limit``."""
    scale = limit / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def _resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a bool [h, w] mask (cell centres sampled)."""
    h, w = mask.shape
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * h / shape[0]).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * w / shape[1]).astype(np.int64), w - 1)
    return mask[np.ix_(rows, cols)]


def _inner_edge(mask: np.ndarray, width: int = _EDGE_WIDTH) -> np.ndarray:
    """The pixels of ``mask`` within ``width`` pixels of its border (image borders count)."""
    inner = mask.copy()
    for _ in range(width):
        padded = np.pad(inner, 1, constant_values=False)
        inner = (padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1]
                 & padded[1:-1, :-2] & padded[1:-1, 2:])
    return mask & ~inner


def _thumbnail(image: np.ndarray) -> np.ndarray:
    from PIL import Image

    shape = _thumb_shape(*image.shape[:2])
    if shape == image.shape[:2]:
        return image
    # Small images are blown up with visible pixels, larger ones smoothly.
    resample = Image.NEAREST if shape[0] >= 2 * image.shape[0] else Image.BILINEAR
    return np.asarray(Image.fromarray(image).resize((shape[1], shape[0]), resample))


def overlay(thumb: np.ndarray, unit_mask: np.ndarray, formula_mask: np.ndarray) -> np.ndarray:
    """Draw a unit's and a formula's masks over an image.

    Args:
        thumb: uint8 ``[h, w, 3]``, the (scaled) image.
        unit_mask, formula_mask: bool masks on the concepts' grid, any size; resized to
            ``h x w`` by nearest-neighbour sampling.

    Returns:
        uint8 ``[h, w, 3]``: the unit's mask filled translucent :data:`UNIT_COLOR` with a solid
        outline, the formula's mask hatched translucent :data:`FORMULA_COLOR` with a solid
        outline drawn last; pixels outside both masks are the image's.

    Examples:
        >>> img = np.zeros((4, 4, 3), np.uint8)
        >>> unit = np.zeros((2, 2), bool); unit[0, 0] = True
        >>> out = overlay(img, unit, np.zeros((2, 2), bool))
        >>> out[0, 0].tolist() == list(UNIT_COLOR), out[3, 3].tolist()
        (True, [0, 0, 0])
    """
    shape = thumb.shape[:2]
    unit = _resize_mask(np.asarray(unit_mask, bool), shape)
    formula = _resize_mask(np.asarray(formula_mask, bool), shape)
    out = thumb.astype(np.float32)
    out[unit] = out[unit] * (1 - _UNIT_ALPHA) + np.float32(_UNIT_ALPHA) * np.array(UNIT_COLOR, np.float32)
    yy, xx = np.indices(shape)
    hatch = formula & ((yy + xx) % _HATCH_PERIOD < 2)
    out[hatch] = out[hatch] * (1 - _HATCH_ALPHA) + np.float32(_HATCH_ALPHA) * np.array(FORMULA_COLOR, np.float32)
    out = np.rint(out).astype(np.uint8)
    out[_inner_edge(unit)] = UNIT_COLOR
    out[_inner_edge(formula)] = FORMULA_COLOR
    return out


def _save_png(array: np.ndarray, path: str) -> None:
    from PIL import Image

    # Level 1: these are small images; heavier compression costs time and saves little.
    Image.fromarray(array).save(path, format="PNG", compress_level=1)


# =============================================================================== plots

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
        self.image = Image.new("RGB", (_PLOT_SIZE[0] * s, _PLOT_SIZE[1] * s), "white")
        self.draw = ImageDraw.Draw(self.image)
        self.left, self.top = 70 * s, 40 * s
        self.right, self.bottom = (_PLOT_SIZE[0] - 20) * s, (_PLOT_SIZE[1] - 55) * s
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

        self.image.resize(_PLOT_SIZE, Image.LANCZOS).save(path, format="PNG")


def _plot_histogram(values: np.ndarray, metric: str, path: str) -> None:
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


def _plot_by_length(means: np.ndarray, metric: str, n_units: int, path: str) -> None:
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


# =============================================================================== HTML

_CSS = """
:root { --unit: rgb%s; --formula: rgb%s; }
* { box-sizing: border-box; }
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
       color: #1d2430; background: #eef1f5; }
header.page { background: #1d2f4a; color: white; padding: 16px 24px; }
header.page h1 { margin: 0 0 4px; font-size: 22px; }
header.page p { margin: 2px 0; color: #c9d5e6; }
main { padding: 16px 24px; }
.legend { display: flex; gap: 18px; flex-wrap: wrap; margin: 8px 0 0; }
.swatch { display: inline-block; width: 14px; height: 14px; vertical-align: -2px;
          margin-right: 6px; border: 2px solid; }
.swatch.unit { border-color: var(--unit); background: rgba%s; }
.swatch.formula { border-color: var(--formula);
  background: repeating-linear-gradient(45deg, var(--formula) 0 2px, transparent 2px 6px); }
.plots { display: flex; flex-wrap: wrap; gap: 16px; margin-bottom: 16px; }
.plots figure { margin: 0; background: white; padding: 8px; border-radius: 8px;
                box-shadow: 0 1px 3px rgba(0,0,0,.15); }
.plots img { display: block; max-width: 100%%; height: auto; }
.plots figcaption { color: #556; font-size: 12px; max-width: 560px; }
.controls { display: flex; gap: 16px; align-items: center; flex-wrap: wrap; margin: 0 0 12px;
            background: white; padding: 10px 14px; border-radius: 8px; }
.controls select { font: inherit; padding: 2px 4px; }
#count { color: #556; }
#cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr));
         gap: 14px; }
.card { background: white; border-radius: 8px; padding: 12px 14px;
        box-shadow: 0 1px 3px rgba(0,0,0,.15); }
.card[hidden] { display: none; }
.card header { display: flex; justify-content: space-between; align-items: baseline; }
.card h2 { margin: 0; font-size: 17px; }
.card h2 a { color: inherit; text-decoration: none; }
.card .score { font-size: 18px; font-weight: 600; color: #1d5fa8; }
.card .formula { font-size: 15px; margin: 6px 0; word-break: break-word; }
.card .formula code { background: #f3f5f9; padding: 2px 6px; border-radius: 4px; }
.card .none { color: #889; font-style: italic; }
.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; margin: 6px 0;
         font-size: 13px; }
.facts dt { color: #667; }
.facts dd { margin: 0; }
.bylen { list-style: none; padding: 0; margin: 0; display: flex; flex-wrap: wrap; gap: 2px 10px; }
.bylen li span { color: #889; }
.tag { display: inline-block; background: #e4ecf7; color: #1d4f8a; border-radius: 9px;
       padding: 0 8px; margin-right: 4px; font-size: 12px; }
.thumbs { display: grid; grid-template-columns: repeat(auto-fill, minmax(84px, 1fr)); gap: 6px;
          margin-top: 8px; }
.thumbs figure { margin: 0; }
.thumbs img { display: block; width: 100%%; height: auto; border-radius: 3px;
              background: #dde; }
.thumbs figcaption { font-size: 11px; color: #667; text-align: center; }
"""

# Runs first, so that an image that fails to load is reported in the console.
_HEAD_JS = """document.addEventListener("error", function (event) {
  var t = event.target;
  if (t && t.tagName === "IMG") {
    console.error("compexp report: image failed to load: " + t.getAttribute("src"));
  }
}, true);"""

# Sorting and filtering: reorders and hides the server-rendered cards.
_BODY_JS = """(function () {
  "use strict";
  var container = document.getElementById("cards");
  var cards = Array.prototype.slice.call(container.querySelectorAll("article.card"));
  var sortSelect = document.getElementById("sort");
  var categorySelect = document.getElementById("category");
  var count = document.getElementById("count");
  var info = cards.map(function (card) {
    return {card: card, unit: Number(card.getAttribute("data-unit")),
            iou: Number(card.getAttribute("data-iou")),
            categories: JSON.parse(card.getAttribute("data-categories"))};
  });
  var orders = {
    "iou-desc": function (a, b) { return b.iou - a.iou || a.unit - b.unit; },
    "iou-asc": function (a, b) { return a.iou - b.iou || a.unit - b.unit; },
    "unit": function (a, b) { return a.unit - b.unit; }
  };
  function hasOption(select, value) {
    return Array.prototype.some.call(select.options, function (o) { return o.value === value; });
  }
  function readHash() {
    var state = {};
    location.hash.replace(/^#/, "").split("&").forEach(function (part) {
      var i = part.indexOf("=");
      if (i > 0) {
        try {
          state[decodeURIComponent(part.slice(0, i))] = decodeURIComponent(part.slice(i + 1));
        } catch (e) { /* a malformed hash is ignored */ }
      }
    });
    if (state.sort && hasOption(sortSelect, state.sort)) { sortSelect.value = state.sort; }
    if (state.category !== undefined && hasOption(categorySelect, state.category)) {
      categorySelect.value = state.category;
    }
  }
  function apply(updateHash) {
    var order = orders[sortSelect.value] || orders["iou-desc"];
    var category = categorySelect.value;
    var shown = 0;
    info.slice().sort(order).forEach(function (item) {
      var match = category === "" || item.categories.indexOf(category) >= 0;
      item.card.hidden = !match;
      shown += match ? 1 : 0;
      container.appendChild(item.card);
    });
    count.textContent = "showing " + shown + " of " + info.length + " units";
    if (updateHash) {
      var hash = "#sort=" + encodeURIComponent(sortSelect.value) +
                 (category ? "&category=" + encodeURIComponent(category) : "");
      try { history.replaceState(null, "", hash); } catch (e) { location.hash = hash; }
    }
    document.body.setAttribute("data-ready", "1");
  }
  sortSelect.addEventListener("change", function () { apply(true); });
  categorySelect.addEventListener("change", function () { apply(true); });
  window.addEventListener("hashchange", function () { readHash(); apply(false); });
  readHash();
  apply(false);
})();"""


def _e(x: Any) -> str:
    """HTML-escape text or an attribute value (quotes included)."""
    return html.escape(str(x), quote=True)


def _fmt(v: Optional[float], digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _card(e, categories: list[str], figures: list[str], metric: str, lazy: bool) -> str:
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


def _page(title: str, subtitle: list[str], plots: list[tuple[str, str, str]],
          category_options: list[str], cards: list[str], n_units: int) -> str:
    unit_fill = UNIT_COLOR + (_UNIT_ALPHA,)
    css = _CSS % (UNIT_COLOR, FORMULA_COLOR, unit_fill)
    sub = "".join(f"<p>{_e(s)}</p>" for s in subtitle)
    figs = "".join(f'<figure><img src="{_e(src)}" width="{_PLOT_SIZE[0]}" '
                   f'height="{_PLOT_SIZE[1]}" alt="{_e(alt)}"><figcaption>{_e(cap)}</figcaption>'
                   f'</figure>' for src, alt, cap in plots)
    options = "".join(f'<option value="{_e(c)}">{_e(c)}</option>' for c in category_options)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{css}</style>
<script>{_HEAD_JS}</script>
</head>
<body>
<header class="page">
<h1>{_e(title)}</h1>
{sub}
<div class="legend">
<span><span class="swatch unit"></span>unit mask (activation above the unit's threshold)</span>
<span><span class="swatch formula"></span>formula mask (the explanation's concepts)</span>
</div>
</header>
<main>
<section class="plots">{figs}</section>
<section class="controls">
<label>Sort by <select id="sort">
<option value="iou-desc">IoU, highest first</option>
<option value="iou-asc">IoU, lowest first</option>
<option value="unit">unit</option>
</select></label>
<label>Concept category <select id="category"><option value="">all</option>{options}</select>
</label>
<span id="count">{n_units} units</span>
</section>
<section id="cards">
{chr(10).join(cards)}
</section>
</main>
<script>{_BODY_JS}</script>
</body>
</html>
"""


def _write_text(path: str, text: str) -> None:
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


# =============================================================================== report

def write_report(result, out_dir: PathLike, *, acts, concepts, images, lengths=None,
                 top_images: int = 6, units: Optional[Sequence[int]] = None,
                 title: Optional[str] = None, progress: bool = False) -> str:
    """Write an HTML report of a search result: an index page with one card per unit.

    Args:
        result: a :class:`~compexp_core.results.SearchResult` or the path of a results file.
        out_dir: the folder to write (created if needed): ``index.html`` and ``img/*.png``.
            Files of an earlier report there are overwritten.
        acts: the activations the search used: path, array or h5py dataset, ``[N, U, h, w]``
            or ``[N, U]``.
        concepts: the :class:`~compexp_core.concepts.ConceptSet` the search used, or its path.
        images: the N input images, in the order of ``acts``: a ``compexp-images`` file, a
            uint8 array ``[N, H, W, 3]``, or a dataset with ``__len__`` and
            ``raw_image(i) -> uint8 [H, W, 3]``. Any size; masks are scaled to it.
        lengths: the result whose per-length IoUs make the mean-IoU-against-length plot
            (a result or a path; typically a search at ``max_length=10``). Default: ``result``.
        top_images: top activating images shown per unit (>= 0).
        units: the units (activation indices) to report, all searched (default: every unit of
            ``result``).
        title: the page title (default: "Compositional explanations", with the layer when the
            activations file records it).
        progress: show a progress bar over the units.

    Returns:
        The absolute path of ``index.html``.

    Raises:
        ValueError: the activations, concepts and images disagree on N; a unit of the result
            is not in the activations; a formula names a concept missing from the concepts;
            ``units`` names a unit not in the result; ``lengths`` has no per-length IoUs.
        TypeError: an argument of the wrong kind (images that are not uint8, say).
        FileNotFoundError: an input path does not exist.

    Examples:
        >>> import os, tempfile
        >>> import numpy as np, compexp_core as cx
        >>> masks = np.zeros((6, 2, 4, 4), bool); masks[:3, 0, :2] = True; masks[2:, 1] = True
        >>> concepts = cx.ConceptSet.from_dense(masks, names=["sky", "grass"],
        ...                                     categories=["object", "object"])
        >>> acts = masks[:, :1].astype(np.float32)             # a unit firing on sky
        >>> result = cx.search_formulas(acts, concepts, threshold=0.5, max_length=2)
        >>> images = np.full((6, 8, 8, 3), 90, np.uint8)
        >>> path = write_report(result, tempfile.mkdtemp(), acts=acts, concepts=concepts,
        ...                     images=images, top_images=2)
        >>> os.path.basename(path), sorted(os.listdir(os.path.join(os.path.dirname(path), "img")))
        ('index.html', ['iou_by_length.png', 'iou_hist.png', 'u0000_0.png', 'u0000_1.png'])
    """
    from .analysis import (formula_mask_images, mean_iou_by_length, top_activating_samples,
                           unit_mask_images)
    from .engine.concepts import ConceptSet
    from .io import load_concepts
    from .engine.units import as_activations

    labels = {"acts": _label(acts, "acts"), "concepts": _label(concepts, "concepts")}
    result = _as_result(result, "result")
    explicit_lengths = lengths is not None
    lengths = result if lengths is None else _as_result(lengths, "lengths")
    if isinstance(top_images, bool) or not isinstance(top_images, (int, np.integer)) \
            or top_images < 0:
        raise ValueError(f"top_images must be an integer >= 0, got {top_images!r}")
    if _is_path(concepts):
        concepts = load_concepts(concepts)
    elif not isinstance(concepts, ConceptSet):
        raise TypeError(f"concepts must be a ConceptSet or the path of a concepts file, got "
                        f"{type(concepts).__name__}")
    if units is None:
        units = result.units
    else:
        units = [int(u) for u in units]
        searched = set(result.units)
        missing = [u for u in units if u not in searched]
        if missing:
            raise ValueError(f"unit {missing[0]} is not in the result (it explains units "
                             f"{_ranges(result.units)})")
    if not units:
        raise ValueError("there are no units to report")
    opened = _is_path(acts)
    acts = as_activations(acts)
    source = None
    try:
        source = _Images(images)
        if len(acts.shape) not in (2, 4):
            raise ValueError(f"{labels['acts']} must be [N, U, h, w] or [N, U], got shape "
                             f"{tuple(acts.shape)}")
        _check_inputs(result, acts, concepts, source, units, labels)
        means = None
        try:
            means = mean_iou_by_length(lengths)
        except ValueError:
            if explicit_lengths:
                raise ValueError("lengths: the result carries no per-length IoUs (by_length); "
                                 "it was written by an older version: search again") from None

        out_dir = os.fspath(out_dir)
        img_dir = os.path.join(out_dir, "img")
        os.makedirs(img_dir, exist_ok=True)
        metric = {"precision": "precision", "recall": "recall"}.get(
            str(result.params.get("metric", "iou")), "IoU")
        explanations = [result.by_unit(u) for u in units]
        ious = np.array([e.iou for e in explanations])
        order = sorted(range(len(units)), key=lambda i: (-ious[i], units[i]))

        plots = []
        _plot_histogram(ious, metric, os.path.join(img_dir, "iou_hist.png"))
        plots.append(("img/iou_hist.png", f"histogram of the units' {metric}",
                      f"{metric} of the best formula of each of the {len(units)} units."))
        if means is not None:
            _plot_by_length(means, metric, len(lengths),
                            os.path.join(img_dir, "iou_by_length.png"))
            source_text = ("this result" if lengths is result
                           else "a second search (lengths)")
            plots.append(("img/iou_by_length.png", f"mean {metric} by maximum formula length",
                          f"Mean {metric} of the best formula found with a maximum length of "
                          f"1 to {means.size}, over the {len(lengths)} units of {source_text}."))

        index_of = {name: j for j, name in enumerate(concepts.names)}
        samples, peaks = top_activating_samples(acts, units, top_images, return_peaks=True)
        grid = concepts.grid
        thumbs: dict[int, np.ndarray] = {}       # a few recent thumbnails: units share images
        cards = []
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(units), desc="report", unit="unit")
        category_set: set[str] = set()
        for i in order:
            e, unit = explanations[i], units[i]
            categories = [] if e.formula is None else sorted(
                {concepts.categories[index_of[n]] for n in e.formula.leaves()} - {""})
            category_set.update(categories)
            rows = samples[i]
            umask = unit_mask_images(acts, unit, rows, grid, e.threshold)
            fmask = (formula_mask_images(concepts, e.formula, rows) if e.formula is not None
                     else np.zeros_like(umask))
            figures = []
            for r, s in enumerate(rows):
                s = int(s)
                if s not in thumbs:
                    if len(thumbs) >= 256:
                        thumbs.pop(next(iter(thumbs)))
                    thumbs[s] = _thumbnail(source.get(s))
                picture = overlay(thumbs[s], umask[r], fmask[r])
                name = f"u{unit:04d}_{r}.png"
                _save_png(picture, os.path.join(img_dir, name))
                name_attr = (f' title="{_e(source.names[s])}"' if source.names is not None
                             else "")
                figures.append(f'<figure data-sample="{s}"{name_attr}><img src="img/{name}" '
                               f'width="{picture.shape[1]}" height="{picture.shape[0]}" '
                               f'alt="unit {unit}, image {s}"><figcaption>#{s} &middot; '
                               f'{peaks[i, r]:.3g}</figcaption></figure>')
            cards.append(_card(e, categories, figures, metric, lazy=len(cards) >= _EAGER_CARDS))
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()

        subtitle = [_summary_line(explanations, metric, result.params)]
        provenance = _provenance(acts)
        if provenance:
            subtitle.insert(0, provenance)
        subtitle.append(f"Images: the {top_images} inputs with the highest peak activation of "
                        f"each unit (caption: input index and peak activation).")
        if title is None:
            title = "Compositional explanations"
            layer = _attr(acts, "layer")
            if layer:
                title += f" of {layer}"
        page = _page(title, subtitle, plots, sorted(category_set), cards, len(units))
        index = os.path.join(out_dir, "index.html")
        _write_text(index, page)
        return os.path.abspath(index)
    finally:
        if source is not None:
            source.close()
        if opened:
            acts.file.close()


def _attr(acts, key: str) -> Optional[str]:
    attrs = getattr(getattr(acts, "file", None), "attrs", None)
    if attrs is None or key not in attrs:
        return None
    value = attrs[key]
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _provenance(acts) -> str:
    parts = [f"{k} {v}" for k in ("model", "layer", "dataset") if (v := _attr(acts, k))]
    return " \u00b7 ".join(parts)


def _summary_line(explanations, metric: str, params: dict) -> str:
    ious = np.array([e.iou for e in explanations])
    explained = sum(e.formula is not None for e in explanations)
    line = (f"{len(explanations)} units, {explained} explained; mean {metric} "
            f"{ious.mean():.4f}, median {np.median(ious):.4f}")
    settings = [f"{label} {params[key]}" for key, label in
                (("max_length", "max length"), ("beam_size", "beam"), ("quantile", "quantile"))
                if key in params]
    return line + (" (" + ", ".join(settings) + ")" if settings else "")


def _ranges(units: Sequence[int]) -> str:
    """'0-9,15' style text of unit indices."""
    values = sorted(set(int(u) for u in units))
    parts, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            parts.append(str(start) if start == v else f"{start}-{v}")
            start = None
    return ",".join(parts)


# =============================================================================== command line

def add_cli_arguments(parser) -> None:
    """Options of ``compexp report``."""
    from .cli import _units_arg

    parser.add_argument("results", help="results file written by compexp search (.h5 or .csv)")
    parser.add_argument("--images", required=True,
                        help="the input images: a compexp-images file, or a Broden directory "
                             "(with index.csv)")
    parser.add_argument("--acts", default=None,
                        help="activations file (default: the one recorded by compexp search)")
    parser.add_argument("--concepts", default=None,
                        help="concepts file (default: the one recorded by compexp search)")
    parser.add_argument("-o", "--output", default="report",
                        help="output folder (default: ./report)")
    parser.add_argument("--lengths", default=None,
                        help="a second results file (a longer search, e.g. --length 10) for the "
                             "mean-IoU-by-length plot (default: RESULTS)")
    parser.add_argument("--top-images", type=int, default=6,
                        help="top activating images per unit (default 6)")
    parser.add_argument("--units", type=_units_arg, default=None,
                        help="units to report, e.g. 0-9,15 (default: all)")
    parser.add_argument("--title", default=None, help="page title")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _recorded_path(args, result, key: str, option: str) -> str:
    given = getattr(args, key)
    if given is not None:
        return given
    recorded = result.params.get(f"{key}_path")
    if not recorded:
        raise ValueError(f"{args.results} does not record its {key} file: pass {option}")
    if not os.path.exists(recorded):
        raise FileNotFoundError(f"the {key} file recorded in {args.results} does not exist: "
                                f"{recorded} (pass {option})")
    return recorded


def run_cli(args) -> int:
    """Run ``compexp report``: write the report and print the path of its index page."""
    from .results import load_results

    result = load_results(args.results)
    acts = _recorded_path(args, result, "acts", "--acts")
    concepts = _recorded_path(args, result, "concepts", "--concepts")
    images: Any = args.images
    if os.path.isdir(images):
        if not os.path.exists(os.path.join(images, "index.csv")):
            raise ValueError(f"--images {images} is a directory without index.csv (not a Broden "
                             f"directory); pass a compexp-images file or a Broden directory")
        from .broden import BrodenDataset

        images = BrodenDataset(images)
    path = write_report(result, args.output, acts=acts, concepts=concepts, images=images,
                        lengths=args.lengths, top_images=args.top_images, units=args.units,
                        title=args.title, progress=not args.no_progress)
    print(path)
    return 0
