"""A report of several layers: :func:`write_layers_report` writes each layer's report (the cards
page of :func:`~compexp_core.report.write_report`, or of
:func:`~compexp_core.report.write_token_report` for units on tokens) into a folder of its own
and, above them, an index page across the layers::

    out_dir/index.html            the table and the chart across layers
    out_dir/<layer>/index.html    each layer's report (with its img/ folder)

The index has a row per layer (its name links to the layer's cards): units, explained units
(those with a formula), the mean score over all units, and Network Dissection's summary "N of M
units have IoU >= t", counted twice: by each unit's best single concept (Network Dissection's
own count of detectors) and by its best formula. Under the table, a bar chart (inline SVG)
counts each layer's explained units per concept category: a unit counts in a category when a
concept of its formula has that category (once per category, so a unit whose formula mixes an
object and a color counts in both). That is the rule of the layer page's category filter, and
each bar (of a non-zero count) links to the layer's page filtered to its category, where the
same number of cards is shown.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import numpy as np

from ..engine.concepts import ConceptSet
from ..results import SearchResult
from .build import formula_categories, write_report
from .inputs import as_concepts, as_result, is_path, recorded_path
from .page import layers_page, metric_label, write_html
from .plots import category_bars_svg
from .tokens import token_categories, write_token_report

__all__ = ["write_layers_report", "LayerSummary", "summarize_layer", "NETDISSECT_THRESHOLD"]

PathLike = Union[str, "os.PathLike[str]"]

#: Network Dissection's IoU threshold for counting a unit as a detector of its concept.
NETDISSECT_THRESHOLD = 0.04


@dataclass
class LayerSummary:
    """The numbers of one layer on the index page.

    Attributes:
        name: the layer's name; href: its cards page, relative to the index.
        units: units in the result; explained: those with a formula.
        mean_iou: the mean score of the formulas over all units (0 for a unit without one).
        primitive_at_threshold: units whose best single concept scores >= the threshold.
        formula_at_threshold: units whose best formula scores >= the threshold.
        category_units: category -> explained units with a concept of that category in their
            formula, for every category of the concepts (zeros included), in the concepts'
            order; concepts without a category ("") count in none.
    """

    name: str
    href: str
    units: int
    explained: int
    mean_iou: float
    primitive_at_threshold: int
    formula_at_threshold: int
    category_units: dict = field(default_factory=dict)


def summarize_layer(result: SearchResult, concepts: ConceptSet, threshold: float, *,
                    name: str = "", href: str = "",
                    category_of: Optional[dict] = None) -> LayerSummary:
    """The index page's numbers of one layer's result (see :class:`LayerSummary`).

    Args:
        result: the layer's search result (at least one unit).
        concepts: the concepts the search used (their categories).
        threshold: the score a unit's best single concept (or formula) must reach to count.
        name, href: copied into the summary.
        category_of: concept name -> category, for every concept (default: the concepts' own
            categories; a token report passes :func:`~compexp_core.report.tokens.token_categories`,
            the categories its page filters by).

    Returns:
        A :class:`LayerSummary`.

    Raises:
        ValueError: the result is empty, or a formula names a concept missing from ``concepts``.

    Examples:
        >>> import numpy as np, compexp_core as cx
        >>> masks = np.zeros((6, 2, 4, 4), bool); masks[:3, 0, :2] = True; masks[2:, 1] = True
        >>> concepts = cx.ConceptSet.from_dense(masks, names=["sky", "grass"],
        ...                                     categories=["object", "color"])
        >>> result = cx.search_formulas(masks.astype(np.float32), concepts, threshold=0.5,
        ...                             max_length=1)
        >>> s = summarize_layer(result, concepts, 0.04)
        >>> s.units, s.explained, round(s.mean_iou, 3), s.primitive_at_threshold
        (2, 2, 1.0, 2)
        >>> s.category_units
        {'object': 1, 'color': 1}
    """
    if len(result) == 0:
        raise ValueError(f"the result of layer {name!r} has no explanations")
    if category_of is None:
        category_of = dict(zip(concepts.names, concepts.categories))
    counts = {c: 0 for c in dict.fromkeys(category_of.values()) if c}
    for e in result:
        if e.formula is None:
            continue
        leaves = list(e.formula.leaves())
        missing = [n for n in leaves if n not in category_of]
        if missing:
            raise ValueError(f"the formula {str(e.formula)!r} of unit {e.unit} of layer {name!r} "
                             f"names the concept {missing[0]!r}, which is not in its concepts: "
                             f"are these the concepts the search used?")
        for category in formula_categories(e.formula, category_of):
            counts[category] += 1
    explanations = list(result)
    return LayerSummary(
        name=name, href=href, units=len(explanations),
        explained=sum(e.formula is not None for e in explanations),
        mean_iou=float(sum(e.iou for e in explanations) / len(explanations)),
        primitive_at_threshold=sum(e.primitive is not None and e.primitive_iou >= threshold
                                   for e in explanations),
        formula_at_threshold=sum(e.formula is not None and e.iou >= threshold
                                 for e in explanations),
        category_units=counts)


def _layer_name(result: SearchResult, source: Any, acts: Any, i: int) -> str:
    """A layer's name when none is given: the one recorded with the result, else in its
    activations file, else the result file's name without extension, else "layer <i+1>"."""
    for name in (getattr(result, "layer", None), result.params.get("layer")):
        if name:
            return str(name)
    if is_path(acts) and os.path.isfile(acts):
        from ..io.activations import read_activations_metadata

        try:
            name = read_activations_metadata(acts)["layer"]
        except (OSError, ValueError, TypeError):   # a bad file: write_report names the problem
            name = None
        if name:
            return str(name)
    if is_path(source):
        stem = os.path.splitext(os.path.basename(os.fspath(source)))[0]
        if stem:
            return stem
    return f"layer {i + 1}"


def _folder_names(names: Sequence[str]) -> list[str]:
    """A distinct, portable folder name for each layer name (letters, digits, - and _)."""
    folders: list[str] = []
    taken: set[str] = set()
    for name in names:
        base = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "layer"
        folder, k = base, 2
        while folder.lower() in taken:          # case-insensitive file systems
            folder, k = f"{base}_{k}", k + 1
        taken.add(folder.lower())
        folders.append(folder)
    return folders


def _per_layer(value: Any, n: int, what: str, shared_ok: bool) -> list:
    """``value`` as one entry per layer: a list or tuple of ``n`` entries, else (when
    ``shared_ok``) the same value for every layer."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{what} has {len(value)} entries for {n} results: give one per "
                             f"result, in the same order")
        return list(value)
    if not shared_ok:
        raise TypeError(f"{what} must be a list with one entry per result (each layer has its "
                        f"own), or None for the paths the results record; got "
                        f"{type(value).__name__}")
    return [value] * n


def write_layers_report(results: Sequence[Any], out_dir: PathLike, *, images=None,
                        tokens=None, names: Optional[Sequence[str]] = None,
                        acts: Optional[Sequence] = None,
                        concepts=None, threshold: float = NETDISSECT_THRESHOLD,
                        top_images: int = 6, top_contexts: int = 8, window: int = 5,
                        title: Optional[str] = None, progress: bool = False) -> str:
    """Write the reports of several layers and an index page across them (see the module's
    documentation for what the page holds).

    Args:
        results: the layers' search results, in the order of the index: each a
            :class:`~compexp_core.SearchResult` or the path of a results file.
        out_dir: the folder to write (created if needed): ``index.html`` and one folder per
            layer with that layer's report. Files of an earlier report there are overwritten.
        images: the N input images, shared by the layers (as for :func:`write_report`), for
            units on images.
        tokens: for units on tokens (when ``images`` is None): each layer's page is a token
            report (:func:`~compexp_core.report.write_token_report`); its token table is
            ``tokens`` (a :class:`~compexp_core.io.tokens.TokenTable` or a file with a
            ``tokens`` group; one for all layers or a list with one per result), by default
            the ``tokens`` group of each layer's activations file.
        names: the layers' names, one per result, distinct (default: the layer recorded with
            each result or in its activations file, else the result file's name without
            extension). A layer's folder is its name with characters other than letters,
            digits, ``-`` and ``_`` replaced by ``_``.
        acts: each layer's activations, one per result (paths, arrays or datasets); default:
            the activations files the results record (``compexp search`` records them).
        concepts: the concepts, one :class:`~compexp_core.ConceptSet` or path for every layer,
            or a list with one per result; default: the concepts files the results record.
            Each file is read once.
        threshold: the score at which a unit counts in "N of M units have IoU >= t"
            (Network Dissection's 0.04 by default), in [0, 1].
        top_images: top activating images per unit on the layers' pages (>= 0).
        top_contexts, window: the token reports' top activating tokens per unit and tokens
            shown either side of each (>= 0).
        title: the index page's title (default: "Compositional explanations of N layers").
        progress: show a progress bar over each layer's units.

    Returns:
        The absolute path of the index page, ``out_dir/index.html``.

    Raises:
        ValueError: no results; names that are not one per result or not distinct (given or
            derived: then pass ``names``); ``acts`` or ``concepts`` lists of the wrong length;
            a result that records no activations or concepts file when none is given; results
            of different metrics; a threshold outside [0, 1]; both ``images`` and ``tokens``;
            without ``images``, a layer with no token table; and whatever :func:`write_report`
            (or :func:`~compexp_core.report.write_token_report`) refuses of a layer (the
            message names the layer).
        TypeError: an argument of the wrong kind.
        FileNotFoundError: a results, activations, concepts or images path does not exist.

    Examples:
        >>> import os, tempfile
        >>> import numpy as np, compexp_core as cx
        >>> masks = np.zeros((6, 2, 4, 4), bool); masks[:3, 0, :2] = True; masks[2:, 1] = True
        >>> concepts = cx.ConceptSet.from_dense(masks, names=["sky", "grass"],
        ...                                     categories=["object", "color"])
        >>> acts1 = masks[:, :1].astype(np.float32)              # a unit firing on sky
        >>> acts2 = masks.astype(np.float32)                     # sky and grass
        >>> results = [cx.search_formulas(a, concepts, threshold=0.5, max_length=2)
        ...            for a in (acts1, acts2)]
        >>> out = tempfile.mkdtemp()
        >>> path = write_layers_report(results, out, names=["conv1", "conv2"],
        ...                            acts=[acts1, acts2], concepts=concepts,
        ...                            images=np.full((6, 8, 8, 3), 90, np.uint8), top_images=1)
        >>> sorted(os.listdir(out))
        ['conv1', 'conv2', 'index.html']
    """
    if isinstance(results, (str, os.PathLike, SearchResult)) or not isinstance(
            results, Sequence):
        raise TypeError(f"results must be a list of results or results files (one per layer), "
                        f"got {type(results).__name__}")
    n = len(results)
    if n == 0:
        raise ValueError("results is empty: give at least one layer's result")
    if images is not None and tokens is not None:
        raise ValueError("give images (units on images) or tokens (units on tokens), not both")
    tokens_of = _per_layer(tokens, n, "tokens", shared_ok=True)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.integer,
                                                                 np.floating)):
        raise TypeError(f"threshold must be a number in [0, 1], got {threshold!r}")
    if not math.isfinite(threshold) or not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")
    if names is not None:
        if isinstance(names, str) or not isinstance(names, Sequence):
            raise TypeError(f"names must be a list of strings, one per result, got "
                            f"{type(names).__name__}")
        if len(names) != n:
            raise ValueError(f"names has {len(names)} entries for {n} results: give one name "
                             f"per result")
        bad = [x for x in names if not isinstance(x, str) or not x.strip()]
        if bad:
            raise ValueError(f"names must be non-empty strings, got {bad[0]!r}")
    for i, r in enumerate(results):
        if is_path(r) and not os.path.exists(r):
            raise FileNotFoundError(f"results file {i + 1} does not exist: {os.fspath(r)}")
    loaded = [as_result(r, f"results[{i}]") for i, r in enumerate(results)]
    sources = [os.fspath(r) if is_path(r) else f"results[{i}]" for i, r in enumerate(results)]

    acts_of = (_per_layer(acts, n, "acts", shared_ok=False) if acts is not None else
               [recorded_path(r, "acts", s, "pass acts=[...], one per result")
                for r, s in zip(loaded, sources)])
    if concepts is None:
        concepts_of = [recorded_path(r, "concepts", s, "pass concepts=")
                       for r, s in zip(loaded, sources)]
    else:
        concepts_of = _per_layer(concepts, n, "concepts", shared_ok=True)
    read: dict[str, ConceptSet] = {}              # each concepts file is read once
    for i, c in enumerate(concepts_of):
        if is_path(c):
            key = os.path.abspath(os.fspath(c))
            if key not in read:
                read[key] = as_concepts(c)
            concepts_of[i] = read[key]
        else:
            concepts_of[i] = as_concepts(c)

    if names is None:
        names = [_layer_name(r, s, a, i)
                 for i, (r, s, a) in enumerate(zip(loaded, results, acts_of))]
        hint = ": pass names (--names) to tell them apart"
    else:
        names = [str(x) for x in names]
        hint = ""
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise ValueError(f"results {seen[name] + 1} and {i + 1} have the same layer name "
                             f"{name!r}; layer names must be distinct{hint}")
        seen[name] = i
    metrics = {metric_label(r.params) for r in loaded}
    if len(metrics) > 1:
        raise ValueError(f"the results score with different metrics ({', '.join(sorted(metrics))})"
                         f": an index across layers compares one metric")
    metric = metrics.pop()

    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    folders = _folder_names(names)
    summaries = []
    for name, folder, result, a, c, t in zip(names, folders, loaded, acts_of, concepts_of,
                                             tokens_of):
        summary = summarize_layer(result, c, threshold, name=name,
                                  href=f"{folder}/index.html",
                                  category_of=None if images is not None else
                                  token_categories(c))
        page_of = dict(title=f"Compositional explanations of {name}", progress=progress,
                       links=[("../index.html", "all layers")])
        try:
            if images is not None:
                write_report(result, os.path.join(out_dir, folder), acts=a, concepts=c,
                             images=images, top_images=top_images, **page_of)
            else:
                write_token_report(result, os.path.join(out_dir, folder), acts=a, concepts=c,
                                   tokens=t, top_contexts=top_contexts, window=window,
                                   **page_of)
        except (ValueError, TypeError) as err:
            hint = ("; for units on images, pass images=" if images is None
                    and "no tokens group" in str(err) else "")
            raise type(err)(f"layer {name!r}: {err}{hint}") from err
        summaries.append(summary)

    categories = list(dict.fromkeys(c for s in summaries for c in s.category_units))
    series = [(s.name, [s.category_units.get(c, 0) for c in categories],
               [f"{s.href}#sort=iou-desc&category={_quote(c)}" for c in categories])
              for s in summaries]
    if categories:
        chart = category_bars_svg(categories, series, ylabel="explained units",
                                  title="Explained units per concept category")
        chart_note = ("A unit counts in a category when a concept of its formula has that "
                      "category (once per category): the rule of each layer page's category "
                      "filter. A bar opens the layer's page filtered to its category.")
    else:
        chart = ""
        chart_note = "The concepts have no categories: no chart of units per category."
    if title is None:
        title = f"Compositional explanations of {n} layer{'s' if n != 1 else ''}"
    subtitle = [f"{n} layer{'s' if n != 1 else ''}: " + ", ".join(names) + "."]
    text = layers_page(title, subtitle, summaries, metric, float(threshold), chart, chart_note)
    index = os.path.join(out_dir, "index.html")
    write_html(index, text)
    return os.path.abspath(index)


def _quote(text: str) -> str:
    """``text`` for the address's fragment, as the page's script decodes it."""
    from urllib.parse import quote

    return quote(text, safe="")
