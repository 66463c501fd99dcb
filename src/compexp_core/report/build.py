"""Assembling the report: :func:`write_report` checks the inputs, draws the plots and the
overlays, and writes the page (see :mod:`compexp_core.report` for what the folder holds)."""
from __future__ import annotations

import os
from typing import Optional, Sequence, Union

import numpy as np

from ..analysis import formula_mask_images, top_activating_samples, unit_mask_images
from ..inputs import activations_input
from .inputs import (Images, as_concepts, as_result, check_inputs, file_attr, input_label,
                     is_path, length_means, provenance, select_units)
from .overlays import overlay, save_png, thumbnail
from .page import card, figure, metric_label, page, summary_line, write_html
from .plots import report_plots

__all__ = ["write_report", "formula_categories"]

_EAGER_CARDS = 12         # cards whose images load at once; the rest load lazily

PathLike = Union[str, "os.PathLike[str]"]


def formula_categories(formula, category_of: dict) -> list[str]:
    """The categories of a formula's concepts, sorted, without the empty category: what a card
    lists and the page's category filter matches (none for no formula).

    Args:
        formula: a :class:`~compexp_core.Formula` or None.
        category_of: concept name -> category (every concept of the formula must be in it).

    Returns:
        The distinct categories, sorted.

    Examples:
        >>> from compexp_core import Formula
        >>> formula_categories(Formula.parse("((sky OR sea) AND NOT blue)"),
        ...                    {"sky": "object", "sea": "object", "blue": "color"})
        ['color', 'object']
    """
    if formula is None:
        return []
    return sorted({category_of[n] for n in formula.leaves()} - {""})


def write_report(result, out_dir: PathLike, *, acts, concepts, images, lengths=None,
                 top_images: int = 6, units: Optional[Sequence[int]] = None,
                 title: Optional[str] = None, progress: bool = False,
                 links: Sequence[tuple[str, str]] = ()) -> str:
    """Write an HTML report of a search result: an index page with one card per unit.

    Args:
        result: a :class:`~compexp_core.SearchResult` or the path of a results file.
        out_dir: the folder to write (created if needed): ``index.html`` and ``img/*.png``.
            Files of an earlier report there are overwritten.
        acts: the activations the search used: path, array or h5py dataset, ``[N, U, h, w]``
            or ``[N, U]``.
        concepts: the :class:`~compexp_core.ConceptSet` the search used, or its path.
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
        links: (href, text) of other pages of the report to link from the index (such as
            the contributions page of :func:`write_contributions_page`).

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
    labels = {"acts": input_label(acts, "acts"), "concepts": input_label(concepts, "concepts")}
    result = as_result(result, "result")
    explicit_lengths = lengths is not None
    lengths = result if lengths is None else as_result(lengths, "lengths")
    if isinstance(top_images, bool) or not isinstance(top_images, (int, np.integer)) \
            or top_images < 0:
        raise ValueError(f"top_images must be an integer >= 0, got {top_images!r}")
    concepts = as_concepts(concepts)
    units = select_units(result, units)
    opened = is_path(acts)
    acts = activations_input(acts)
    source = None
    try:
        source = Images(images)
        if len(acts.shape) not in (2, 4):
            raise ValueError(f"{labels['acts']} must be [N, U, h, w] or [N, U], got shape "
                             f"{tuple(acts.shape)}")
        check_inputs(result, acts, concepts, source, units, labels)
        means = length_means(lengths, explicit_lengths)

        out_dir = os.fspath(out_dir)
        img_dir = os.path.join(out_dir, "img")
        os.makedirs(img_dir, exist_ok=True)
        metric = metric_label(result.params)
        explanations = [result.by_unit(u) for u in units]
        ious = np.array([e.iou for e in explanations])
        order = sorted(range(len(units)), key=lambda i: (-ious[i], units[i]))
        plots = report_plots(ious, means, metric, img_dir, n_length_units=len(lengths),
                             same_result=lengths is result)

        category_of = dict(zip(concepts.names, concepts.categories))
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
            categories = formula_categories(e.formula, category_of)
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
                    thumbs[s] = thumbnail(source.get(s))
                picture = overlay(thumbs[s], umask[r], fmask[r])
                name = f"u{unit:04d}_{r}.png"
                save_png(picture, os.path.join(img_dir, name))
                figures.append(figure(s, f"img/{name}", picture.shape[1], picture.shape[0],
                                      unit, peaks[i, r],
                                      None if source.names is None else source.names[s]))
            cards.append(card(e, categories, figures, metric, lazy=len(cards) >= _EAGER_CARDS))
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()

        subtitle = [summary_line(explanations, metric, result.params)]
        origin = provenance(acts)
        if origin:
            subtitle.insert(0, origin)
        subtitle.append(f"Images: the {top_images} inputs with the highest peak activation of "
                        f"each unit (caption: input index and peak activation).")
        if title is None:
            title = "Compositional explanations"
            layer = file_attr(acts, "layer")
            if layer:
                title += f" of {layer}"
        text = page(title, subtitle, plots, sorted(category_set), cards, len(units),
                    links=links)
        index = os.path.join(out_dir, "index.html")
        write_html(index, text)
        return os.path.abspath(index)
    finally:
        if source is not None:
            source.close()
        if opened:
            acts.file.close()
