"""Exports: explanations in the files other tools read (``docs/FORMAT.md`` §3.3).

* ``tally``: Network Dissection's ``tally.csv`` (NetDissect, NetDissect-Lite): one row per
  unit, 1-based ``unit``, ``category``, ``label`` (here the formula), ``score``, then per
  concept category the best single concept with its counts (:func:`write_tally_csv`; the
  counts come from :meth:`compexp_core.results.SearchResult.best_single_concepts`).
* ``clip-dissect``: the ``layer,unit,description,similarity`` table of CLIP-Dissect's
  ``descriptions.csv`` (MILAN's files have the same first three columns)
  (:func:`write_clip_dissect_csv`).
* ``tidy``: one table, ``model, layer, unit, formula, iou, length, primitive, primitive_iou,
  threshold``, as CSV or, with pyarrow, Parquet (:func:`write_tidy`); several layers or
  models go into one table.
* ``jsonl``: one JSON object per unit, with the formula's parse tree
  (:meth:`~compexp_core.engine.formula.Formula.to_tree`), for programs (:func:`write_jsonl`).

Plain data in, files out: the writers take explanations (a
:class:`~compexp_core.results.SearchResult` is a sequence of them) wrapped, with the model and
layer they explain, in :class:`LayerExplanations`. Every file is written atomically (a
temporary file renamed into place), after its path has been checked
(:func:`check_export_path`). None of these files is read back by ``load_results``.

Examples:
    >>> import os, pathlib, tempfile
    >>> from compexp_core.engine.formula import Formula
    >>> from compexp_core.engine.results import Explanation
    >>> e = Explanation(unit=3, formula=Formula.parse("(sky OR sea)"), iou=0.5, score=0.5,
    ...                 primitive=Formula.parse("sky"), primitive_iou=0.25, threshold=1.5)
    >>> layer = LayerExplanations("resnet18", "layer4", [e])
    >>> path = os.path.join(tempfile.mkdtemp(), "descriptions.csv")
    >>> write_clip_dissect_csv(path, [layer])
    >>> print(pathlib.Path(path).read_text().strip())
    layer,unit,description,similarity
    layer4,3,(sky OR sea),0.5
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Iterable, NamedTuple, Optional, Sequence

import numpy as np

from .._optional import require
from ..engine.results import Explanation
from . import _h5
from ._h5 import PathLike
from .results import check_not_input
from .tables import write_table_csv

__all__ = ["EXPORT_FORMATS", "LayerExplanations", "CategoryTally", "TALLY_FIELDS",
           "CLIP_DISSECT_COLUMNS", "TIDY_COLUMNS", "check_export_path", "write_tally_csv",
           "write_clip_dissect_csv", "tidy_columns", "write_tidy", "jsonl_records",
           "write_jsonl"]

#: The export formats, by the name ``compexp export --format`` takes.
EXPORT_FORMATS = ("tally", "clip-dissect", "tidy", "jsonl")
# The file extensions each format may be written with.
_EXTENSIONS = {"tally": (".csv",), "clip-dissect": (".csv",), "tidy": (".csv", ".parquet"),
               "jsonl": (".jsonl",)}
#: The columns of ``tally.csv`` per category ``<cat>``, after ``unit, category, label, score``:
#: ``<cat>-label``, ``<cat>-truth``, ...
TALLY_FIELDS = ("label", "truth", "activation", "intersect", "iou")
#: CLIP-Dissect's ``descriptions.csv`` columns.
CLIP_DISSECT_COLUMNS = ("layer", "unit", "description", "similarity")
#: The tidy table's columns.
TIDY_COLUMNS = ("model", "layer", "unit", "formula", "iou", "length", "primitive",
                "primitive_iou", "threshold")


class LayerExplanations(NamedTuple):
    """One search's explanations with what they explain.

    Attributes:
        model: the model's name (None when unknown).
        layer: the layer's name (None when unknown).
        explanations: the :class:`Explanation` of each unit (a ``SearchResult``, a list).
        names: the concept set's names, in index order (None when unknown); the ``jsonl``
            parse trees then give each concept's index.
    """

    model: Optional[str]
    layer: Optional[str]
    explanations: Sequence[Explanation]
    names: Optional[Sequence[str]] = None


@dataclass(frozen=True)
class CategoryTally:
    """Network Dissection's per-category labels of n units: for each unit (row) and concept
    category (column), the category's concept of highest IoU with the unit alone and its
    counts, in cells of the concepts' grid.

    Attributes:
        categories: the C category names, in the concept set's order.
        labels: n tuples of C concept names (row i: unit i's best concept of each category;
            the category's first concept when none overlaps the unit, with IoU 0).
        truth: int64 ``[n, C]``: the concept's cells, ``|C|``.
        activation: int64 ``[n, C]``: the unit's cells, ``|U|`` (the same in every column).
        intersect: int64 ``[n, C]``: ``|U & C|``.
        iou: float64 ``[n, C]``: ``intersect / (activation + truth - intersect)`` (0 when the
            union is empty).
    """

    categories: tuple
    labels: tuple
    truth: np.ndarray
    activation: np.ndarray
    intersect: np.ndarray
    iou: np.ndarray

    def __post_init__(self) -> None:
        n, c = len(self.labels), len(self.categories)
        for name in ("truth", "activation", "intersect", "iou"):
            if np.shape(getattr(self, name)) != (n, c):
                raise ValueError(f"CategoryTally.{name} must be [n, C] = [{n}, {c}], got shape "
                                 f"{np.shape(getattr(self, name))}")
        if any(len(row) != c for row in self.labels):
            raise ValueError(f"CategoryTally.labels must hold {c} names per unit")

    def best_category(self, i: int) -> int:
        """The index of unit ``i``'s category of highest IoU (the first on ties)."""
        return int(np.argmax(self.iou[i]))


def check_export_path(path: PathLike, format: str, *, inputs: Iterable[Any] = ()) -> str:
    """Check, before any work, that ``format`` can be written to ``path``: a known format, an
    extension it takes (``tally``, ``clip-dissect``: ``.csv``; ``tidy``: ``.csv`` or
    ``.parquet``; ``jsonl``: ``.jsonl``), an existing directory where a file can be created,
    and not one of the ``inputs`` (as :func:`compexp_core.io.results.check_output_path`).

    Returns:
        ``path`` as a str.

    Raises:
        ValueError: an unknown format or another extension; ``path`` is an input or not a
            regular file.
        ImportError: ``.parquet`` without pyarrow installed.
        OSError: as :func:`compexp_core.io._h5.check_writable`.

    Examples:
        >>> check_export_path("out.txt", "tidy")
        Traceback (most recent call last):
        ...
        ValueError: a tidy export is written to .csv or .parquet, got 'out.txt'
    """
    if format not in _EXTENSIONS:
        raise ValueError(f"unknown export format {format!r}; choose from {list(EXPORT_FORMATS)}")
    p = os.fspath(path)
    ext = os.path.splitext(p)[1].lower()
    allowed = _EXTENSIONS[format]
    if ext not in allowed:
        raise ValueError(f"a {format} export is written to {' or '.join(allowed)}, got {p!r}")
    if ext == ".parquet":
        require("pyarrow", "writing Parquet")
    _h5.check_writable(p, probe=True)
    if os.path.exists(p) and not os.path.isfile(p):
        raise ValueError(f"cannot write '{p}': it exists and is not a regular file")
    check_not_input(p, inputs)
    return p


# ----------------------------------------------------------------------------- checks

def _explanations(explanations: Iterable[Any], what: str) -> list:
    out = list(explanations)
    for i, e in enumerate(out):
        if not isinstance(e, Explanation):
            raise TypeError(f"{what}[{i}] is a {type(e).__name__}, not an Explanation")
    return out


def _layers(layers: Iterable[Any]) -> list:
    """``layers`` as checked LayerExplanations: names str or None, explanations
    Explanations, and no two with the same (model, layer) (their rows could not be told
    apart)."""
    if isinstance(layers, LayerExplanations):
        raise TypeError("pass a list of LayerExplanations (one per search), not a single one")
    out = []
    for i, item in enumerate(layers):
        if not isinstance(item, LayerExplanations):
            raise TypeError(f"layers[{i}] is a {type(item).__name__}, not a LayerExplanations")
        for field in ("model", "layer"):
            value = getattr(item, field)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"layers[{i}].{field} must be a str or None, got "
                                f"{type(value).__name__}")
        out.append(item._replace(explanations=_explanations(item.explanations,
                                                             f"layers[{i}].explanations")))
    if not out:
        raise ValueError("nothing to export: no results given")
    seen: dict = {}
    for i, item in enumerate(out):
        key = (item.model, item.layer)
        if key in seen:
            raise ValueError(f"results {seen[key]} and {i} both record model {item.model!r} and "
                             f"layer {item.layer!r}: their rows could not be told apart; set "
                             f"each result's model and layer (SearchResult.model, .layer)")
        seen[key] = i
    return out


def _text(formula) -> str:
    return "" if formula is None else str(formula)


# ----------------------------------------------------------------------------- tally.csv

def write_tally_csv(path: PathLike, explanations: Sequence[Explanation],
                    tally: CategoryTally, *, inputs: Iterable[Any] = ()) -> None:
    """Write Network Dissection's ``tally.csv`` with the formulas as labels, atomically.

    Columns: ``unit`` (1-based: the explanation's unit + 1, as NetDissect numbers units),
    ``category`` (the category of the unit's best single concept, over all categories: the
    one NetDissect would label the unit with), ``label`` (the formula's text; empty when the
    unit has none), ``score`` (the explanation's ``iou``: its metric value; 0 without a
    formula), then for each category ``<cat>`` of ``tally`` the columns ``<cat>-label``,
    ``<cat>-truth``, ``<cat>-activation``, ``<cat>-intersect``, ``<cat>-iou`` (see
    :class:`CategoryTally`). Rows are sorted by ``score``, highest first, as NetDissect sorts
    them (ties by unit). Counts are integers, floats written at full precision.

    Args:
        path: the ``.csv`` file (replaced if it exists).
        explanations: n explanations.
        tally: their per-category counts, row i for ``explanations[i]``.
        inputs: paths the file must not replace.

    Raises:
        ValueError: another extension; ``path`` is an input; ``tally`` has another number of
            rows.
        TypeError: an explanation is not an :class:`Explanation`.
        OSError: the directory is missing or not writable; the write failed.

    Examples:
        >>> import os, pathlib, tempfile
        >>> from compexp_core.engine.formula import Formula
        >>> e = Explanation(unit=0, formula=Formula.parse("(sky OR sea)"), iou=0.75,
        ...                 score=0.75, primitive=Formula.parse("sky"), primitive_iou=0.5)
        >>> tally = CategoryTally(("scene",), (("sky",),), truth=np.array([[4]]),
        ...                       activation=np.array([[6]]), intersect=np.array([[4]]),
        ...                       iou=np.array([[4 / 6]]))
        >>> path = os.path.join(tempfile.mkdtemp(), "tally.csv")
        >>> write_tally_csv(path, [e], tally)
        >>> print(pathlib.Path(path).read_text().strip())
        unit,category,label,score,scene-label,scene-truth,scene-activation,scene-intersect,scene-iou
        1,scene,(sky OR sea),0.75,sky,4,6,4,0.6666666666666666
    """
    p = check_export_path(path, "tally", inputs=inputs)
    explanations = _explanations(explanations, "explanations")
    if not isinstance(tally, CategoryTally):
        raise TypeError(f"tally must be a CategoryTally, got {type(tally).__name__}")
    if len(tally.labels) != len(explanations):
        raise ValueError(f"the tally has {len(tally.labels)} rows but there are "
                         f"{len(explanations)} explanations")
    columns = ["unit", "category", "label", "score"] + [
        f"{cat}-{field}" for cat in tally.categories for field in TALLY_FIELDS]
    rows = []
    for i, e in enumerate(explanations):
        row = {"unit": e.unit + 1, "category": tally.categories[tally.best_category(i)],
               "label": _text(e.formula), "score": float(e.iou)}
        for c, cat in enumerate(tally.categories):
            row[f"{cat}-label"] = tally.labels[i][c]
            row[f"{cat}-truth"] = int(tally.truth[i, c])
            row[f"{cat}-activation"] = int(tally.activation[i, c])
            row[f"{cat}-intersect"] = int(tally.intersect[i, c])
            row[f"{cat}-iou"] = float(tally.iou[i, c])
        rows.append(row)
    rows.sort(key=lambda r: (-r["score"], r["unit"]))
    write_table_csv(p, columns, rows)


# ----------------------------------------------------------------------------- CLIP-Dissect

def write_clip_dissect_csv(path: PathLike, layers: Sequence[LayerExplanations], *,
                           inputs: Iterable[Any] = ()) -> None:
    """Write CLIP-Dissect's ``descriptions.csv`` layout, ``layer,unit,description,similarity``,
    atomically: one row per explanation, layer after layer in the order given, units in each
    layer's order; ``unit`` is 0-based (as CLIP-Dissect writes it), ``description`` the
    formula's text (empty when the unit has none), ``similarity`` the explanation's ``iou``
    (0 without a formula), ``layer`` the layer's name (empty when unknown). Fields holding a
    comma or a quote are quoted as CSV does (pandas writes CLIP-Dissect's file the same way).

    Args:
        path: the ``.csv`` file (replaced if it exists).
        layers: one :class:`LayerExplanations` per search.
        inputs: paths the file must not replace.

    Raises:
        ValueError: another extension; ``path`` is an input; no layers; two with the same model
            and layer.
        TypeError: ``layers`` of the wrong kind.
        OSError: the directory is missing or not writable; the write failed.
    """
    p = check_export_path(path, "clip-dissect", inputs=inputs)
    rows = [{"layer": item.layer or "", "unit": e.unit, "description": _text(e.formula),
             "similarity": float(e.iou)}
            for item in _layers(layers) for e in item.explanations]
    write_table_csv(p, CLIP_DISSECT_COLUMNS, rows)


# ----------------------------------------------------------------------------- tidy

def tidy_columns(layers: Sequence[LayerExplanations]) -> dict:
    """The tidy table as columns (lists, one entry per explanation, layer after layer):
    ``model``, ``layer`` (str or None), ``unit`` (0-based), ``formula`` (text, None when the
    unit has none), ``iou``, ``length`` (leaves; 0 without a formula), ``primitive`` (None
    when none), ``primitive_iou``, ``threshold`` (None for bool activations).

    Examples:
        >>> from compexp_core.engine.formula import Formula
        >>> e = Explanation(unit=3, formula=Formula.parse("(sky OR sea)"), iou=0.5,
        ...                 score=0.5, primitive=Formula.parse("sky"), primitive_iou=0.25)
        >>> tidy_columns([LayerExplanations("vgg", "conv5", [e])])["length"]
        [2]
    """
    layers = _layers(layers)
    cols: dict = {c: [] for c in TIDY_COLUMNS}
    for item in layers:
        for e in item.explanations:
            cols["model"].append(item.model)
            cols["layer"].append(item.layer)
            cols["unit"].append(int(e.unit))
            cols["formula"].append(None if e.formula is None else str(e.formula))
            cols["iou"].append(float(e.iou))
            cols["length"].append(e.length)
            cols["primitive"].append(None if e.primitive is None else str(e.primitive))
            cols["primitive_iou"].append(float(e.primitive_iou))
            cols["threshold"].append(None if e.threshold is None else float(e.threshold))
    return cols


def write_tidy(path: PathLike, layers: Sequence[LayerExplanations], *,
               inputs: Iterable[Any] = ()) -> None:
    """Write the tidy table (:func:`tidy_columns`) as CSV (``.csv``: one header row, missing
    values empty, floats at full precision) or Parquet (``.parquet``, needs pyarrow: string,
    int64 and float64 columns, missing values null), atomically.

    Args:
        path: the ``.csv`` or ``.parquet`` file (replaced if it exists).
        layers: one :class:`LayerExplanations` per search; all go into one table.
        inputs: paths the file must not replace.

    Raises:
        ValueError: another extension; ``path`` is an input; no layers; two with the same model
            and layer.
        ImportError: ``.parquet`` without pyarrow (the message says how to install it).
        OSError: the directory is missing or not writable; the write failed.
    """
    p = check_export_path(path, "tidy", inputs=inputs)
    cols = tidy_columns(layers)
    if p.lower().endswith(".csv"):
        n = len(cols["unit"])
        write_table_csv(p, TIDY_COLUMNS, ({c: cols[c][i] for c in TIDY_COLUMNS}
                                          for i in range(n)))
        return
    pa = require("pyarrow", "writing Parquet")
    import pyarrow.parquet as pq

    types = {"model": pa.string(), "layer": pa.string(), "unit": pa.int64(),
             "formula": pa.string(), "iou": pa.float64(), "length": pa.int64(),
             "primitive": pa.string(), "primitive_iou": pa.float64(),
             "threshold": pa.float64()}
    table = pa.table({c: pa.array(cols[c], type=types[c]) for c in TIDY_COLUMNS})
    with _h5.atomic_path(p) as tmp:
        pq.write_table(table, tmp)


# ----------------------------------------------------------------------------- jsonl

def jsonl_records(item: LayerExplanations) -> list:
    """The ``jsonl`` objects of one search's explanations, one per unit, in order: ``model``,
    ``layer``, ``unit`` (0-based), ``formula`` (text, or None), ``tree`` (the formula's parse
    tree, :meth:`~compexp_core.engine.formula.Formula.to_tree`, with each concept's
    ``index`` in ``item.names`` when known; None without a formula), ``iou``, ``score``,
    ``length``, ``primitive``, ``primitive_iou``, ``threshold`` (None for bool activations),
    ``skipped`` (why the unit was not searched, else None).

    Raises:
        ValueError: a formula's concept is not in ``item.names``.

    Examples:
        >>> from compexp_core.engine.formula import Formula
        >>> e = Explanation(unit=3, formula=Formula.parse("(sky AND NOT sea)"), iou=0.5,
        ...                 score=0.5, primitive=Formula.parse("sky"), primitive_iou=0.25)
        >>> record = jsonl_records(LayerExplanations(None, "fc", [e], ["sea", "sky"]))[0]
        >>> record["tree"] == {"op": "and", "args": [{"concept": "sky", "index": 1},
        ...                    {"op": "not", "args": [{"concept": "sea", "index": 0}]}]}
        True
    """
    index_of = None
    if item.names is not None:
        positions = {name: j for j, name in enumerate(item.names)}

        def index_of(name: str) -> int:
            if name not in positions:
                raise ValueError(f"the formula's concept {name!r} is not one of the result's "
                                 f"{len(positions)} concept names")
            return positions[name]
    return [{
        "model": item.model,
        "layer": item.layer,
        "unit": int(e.unit),
        "formula": None if e.formula is None else str(e.formula),
        "tree": None if e.formula is None else e.formula.to_tree(index_of),
        "iou": float(e.iou),
        "score": float(e.score),
        "length": e.length,
        "primitive": None if e.primitive is None else str(e.primitive),
        "primitive_iou": float(e.primitive_iou),
        "threshold": None if e.threshold is None else float(e.threshold),
        "skipped": e.skipped,
    } for e in _explanations(item.explanations, "explanations")]


def write_jsonl(path: PathLike, layers: Sequence[LayerExplanations], *,
                inputs: Iterable[Any] = ()) -> None:
    """Write one JSON object per line and unit (:func:`jsonl_records`), layer after layer,
    atomically. Strict JSON: a NaN or infinite value raises ValueError before the file is
    replaced.

    Args:
        path: the ``.jsonl`` file (replaced if it exists).
        layers: one :class:`LayerExplanations` per search.
        inputs: paths the file must not replace.

    Raises:
        ValueError: another extension; ``path`` is an input; no layers; two with the same model
            and layer; a value JSON cannot hold.
        OSError: the directory is missing or not writable; the write failed.
    """
    p = check_export_path(path, "jsonl", inputs=inputs)
    lines = [json.dumps(record, allow_nan=False, ensure_ascii=False)
             for item in _layers(layers) for record in jsonl_records(item)]
    with _h5.atomic_path(p) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            for line in lines:
                fh.write(line + "\n")
