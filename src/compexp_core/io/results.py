"""Results files (``format = "compexp-results"``, ``docs/FORMAT.md`` §3): HDF5 or CSV.

One row per searched unit, in the order the units were requested, holding the fields of an
:class:`~compexp_core.engine.results.Explanation`, plus the search parameters. This module
reads and writes plain data (a list of explanations and a ``params`` dict);
:class:`compexp_core.results.SearchResult` wraps it (``SearchResult.save``,
``load_results``). Both kinds of file are written atomically (a temporary file renamed into
place), and files written before ``threshold`` and ``by_length`` existed still load.

:func:`write_reference_csv` writes explanations in the reference implementation's NLI result
CSV layout instead (``docs/FORMAT.md`` §3.1), for comparison with its files; it is an export,
not read back.

Examples:
    >>> import os, tempfile
    >>> from compexp_core.engine.formula import Formula
    >>> from compexp_core.engine.results import Explanation
    >>> e = Explanation(unit=3, formula=Formula.parse("(a OR b)"), iou=0.5, score=0.5,
    ...                 primitive=Formula.parse("a"), primitive_iou=0.25)
    >>> d = tempfile.mkdtemp()
    >>> for name in ("r.h5", "r.csv"):
    ...     write_results(os.path.join(d, name), [e], {"max_length": 2})
    ...     back, params = read_results(os.path.join(d, name))
    ...     print(back[0].unit, back[0].formula, params)
    3 (a OR b) {'max_length': 2}
    3 (a OR b) {'max_length': 2}
"""
from __future__ import annotations

import errno
import io
import json
import math
import os
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from ..engine.formula import Formula, reference_length, reference_text
from ..engine.results import Explanation, Optimality
from ..engine.units import is_tensor, tensor_to_numpy
from . import _h5
from ._h5 import FORMAT_VERSION, RESULTS_FORMAT, PathLike

__all__ = ["write_results", "read_results", "results_kind", "check_output_path",
           "check_not_input", "params_json", "write_reference_csv", "REFERENCE_COLUMNS",
           "REFERENCE_CLASS_COLUMNS"]

# Datasets every results file has; files written before the others existed lack them.
_REQUIRED = ("unit", "formula", "iou", "score", "primitive", "primitive_iou", "beam_formula",
             "beam_score")
# The optimal search's record (Explanation.optimality), written only by optimal searches.
_OPTIMALITY = ("upper_bound", "nodes_expanded", "nodes_pruned", "counts_computed",
               "search_seconds")
_OPTIONAL = ("threshold", "by_length_formula", "by_length_iou", "skipped") + _OPTIMALITY
_CSV_REQUIRED = ("unit", "formula", "iou", "score", "primitive", "primitive_iou", "beam")
_CSV_COLUMNS = ["unit", "formula", "iou", "score", "primitive", "primitive_iou", "threshold",
                "beam", "by_length", "skipped", "row"]


def _optimality_columns(explanations: list) -> dict:
    """The optimality record as columns (upper bound NaN and counters -1 where a unit has
    none), or {} when no explanation has one (a beam search)."""
    if all(e.optimality is None for e in explanations):
        return {}
    cols = {n: [] for n in _OPTIMALITY}
    for e in explanations:
        o = e.optimality
        cols["upper_bound"].append(np.nan if o is None else o.upper_bound)
        cols["nodes_expanded"].append(-1 if o is None else o.nodes_expanded)
        cols["nodes_pruned"].append(-1 if o is None else o.nodes_pruned)
        cols["counts_computed"].append(-1 if o is None else o.counts_computed)
        cols["search_seconds"].append(np.nan if o is None else o.seconds)
    return {n: np.array(v, np.float64 if n in ("upper_bound", "search_seconds") else np.int64)
            for n, v in cols.items()}


def _optimality(values: dict, i: int) -> Optional[Optimality]:
    """Row ``i`` of the optimality columns (None where absent: older files, beam searches)."""
    if any(values.get(n) is None for n in _OPTIMALITY):
        return None
    bound = float(values["upper_bound"][i])
    if math.isnan(bound):
        return None
    return Optimality(bound, int(values["nodes_expanded"][i]), int(values["nodes_pruned"][i]),
                      int(values["counts_computed"][i]), float(values["search_seconds"][i]))


def results_kind(path: PathLike) -> str:
    """``"h5"`` or ``"csv"``, from the extension (ValueError for any other)."""
    ext = os.path.splitext(str(path))[1].lower()
    if ext == ".csv":
        return "csv"
    if ext in (".h5", ".hdf5", ".hdf"):
        return "h5"
    raise ValueError(f"results path {str(path)!r} must end in .h5, .hdf5 or .csv")


def check_output_path(path: PathLike, *, inputs: Iterable[Any] = ()) -> str:
    """Check, before a search starts, that its results can be written to ``path``: a known
    extension (``.h5``, ``.hdf5``, ``.csv``), an existing directory in which a file can be
    created, ``path`` not a directory, and not one of the ``inputs`` (paths of the files the
    search reads, compared with :func:`os.path.samefile`, so through symbolic and hard links
    too; anything else in ``inputs`` is ignored).

    Returns:
        ``path`` as a str.

    Raises:
        ValueError: another extension; ``path`` is one of the inputs, or not a regular file.
        IsADirectoryError, FileNotFoundError, NotADirectoryError, PermissionError: as
            :func:`compexp_core.io._h5.check_writable`.

    Examples:
        >>> import os, tempfile
        >>> d = tempfile.mkdtemp()
        >>> check_output_path(os.path.join(d, "out.csv")) == os.path.join(d, "out.csv")
        True
        >>> check_output_path(os.path.join(d, "out.txt"))
        Traceback (most recent call last):
        ...
        ValueError: results path '...out.txt' must end in .h5, .hdf5 or .csv
    """
    p = os.fspath(path)
    results_kind(p)
    _h5.check_writable(p, probe=True)
    if os.path.exists(p) and not os.path.isfile(p):
        raise ValueError(f"cannot write results to '{p}': it exists and is not a regular file")
    check_not_input(p, inputs)
    return p


def check_not_input(path: PathLike, inputs: Iterable[Any]) -> None:
    """Raise ValueError when ``path`` is one of ``inputs`` (compared with
    :func:`os.path.samefile`, so through symbolic and hard links too; entries that are not
    paths, and paths that do not exist, are ignored)."""
    p = os.fspath(path)
    for source in inputs:
        if not isinstance(source, (str, os.PathLike)):
            continue
        try:
            same = os.path.samefile(p, source)
        except OSError:       # either does not exist
            same = False
        if same:
            raise ValueError(f"the output '{p}' is the input file '{os.fspath(source)}': "
                             f"writing the results there would replace it; choose another "
                             f"output path")


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    if isinstance(x, (set, frozenset)):
        return sorted(x, key=repr)
    raise TypeError(f"{type(x).__name__} {x!r} is not JSON serialisable")


def params_json(params: dict) -> str:
    """The search parameters as JSON text: NumPy scalars and arrays become numbers and lists,
    paths strings.

    Raises:
        TypeError: a value that cannot be saved (the message names it)."""
    try:
        return json.dumps(dict(params), default=_json_default)
    except (TypeError, ValueError) as e:
        raise TypeError(f"the search parameters cannot be saved: {e}") from None


def _text(f: Optional[Formula]) -> str:
    return "" if f is None else str(f)


def _parse(text: str) -> Optional[Formula]:
    return None if text == "" else Formula.parse(text)


def _str(x: Any) -> str:
    return x.decode("utf-8") if isinstance(x, (bytes, np.bytes_)) else str(x)


def _pair_table(rows: Sequence[tuple]) -> tuple[np.ndarray, np.ndarray]:
    """``(formula, value)`` pairs per unit as a padded text table and a value table (``""`` and
    NaN where a unit has fewer pairs), the layout of the ``beam_*`` and ``by_length_*``
    datasets."""
    width = max([len(r) for r in rows] + [1])
    text = np.full((len(rows), width), "", dtype=object)
    values = np.full((len(rows), width), np.nan)
    for i, row in enumerate(rows):
        for j, (f, v) in enumerate(row):
            text[i, j] = _text(f)
            values[i, j] = v
    return text, values


# =============================================================================== write

def write_results(path: PathLike, explanations: Sequence[Explanation], params: dict, *,
                  inputs: Iterable[Any] = ()) -> None:
    """Write explanations and search parameters to HDF5 (``.h5``, ``.hdf5``) or CSV
    (``.csv``), chosen by the extension, atomically: into a temporary file renamed onto
    ``path`` when complete, so a failed write leaves any previous file untouched.

    Everything is checked before a file is created: the path (:func:`check_output_path`,
    with ``inputs``) and the parameters (:func:`params_json`).

    Raises:
        ValueError: another extension; ``path`` is one of ``inputs``.
        TypeError: a parameter that cannot be saved.
        OSError: the directory is missing or not writable; the write failed
            (``compexp_core.io._h5.WriteError``: a full disk).
    """
    kind = results_kind(path)
    check_output_path(path, inputs=inputs)
    explanations = list(explanations)
    params_text = params_json(params)
    if kind == "csv":
        _write_csv(path, explanations, params_text)
    else:
        _write_h5(path, explanations, params_text)


def _write_csv(path: PathLike, explanations: list, params_text: str) -> None:
    import pandas as pd

    rows = [{
        "unit": e.unit,
        "formula": None if e.formula is None else str(e.formula),
        "iou": e.iou,
        "score": e.score,
        "primitive": None if e.primitive is None else str(e.primitive),
        "primitive_iou": e.primitive_iou,
        "threshold": e.threshold,
        "beam": json.dumps([(str(f), s) for f, s in e.beam]),
        "by_length": json.dumps([(_text(f), v) for f, v in e.by_length]),
        "skipped": e.skipped or "",
        "row": i,
    } for i, e in enumerate(explanations)]
    optimality = _optimality_columns(explanations)
    for name, values in optimality.items():
        for row, v in zip(rows, values.tolist()):
            row[name] = v
    df = pd.DataFrame(rows, columns=_CSV_COLUMNS[:-1] + list(optimality) + ["row"])
    header = ('{"format": %s, "version": %d, "rows": %d, "params": %s}'
              % (json.dumps(RESULTS_FORMAT), FORMAT_VERSION, len(rows), params_text))
    with _h5.atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            fh.write("# " + header + "\n")
            df.to_csv(fh, index=False)


def _write_h5(path: PathLike, explanations: list, params_text: str) -> None:
    beam_text, beam_score = _pair_table([e.beam for e in explanations])
    by_length_text, by_length_iou = _pair_table([e.by_length for e in explanations])
    with _h5.writing(path, RESULTS_FORMAT) as h5:
        h5.attrs["n_units"] = np.int64(len(explanations))
        _h5.write_array(h5, "params", np.frombuffer(params_text.encode("utf-8"), np.uint8))
        _h5.write_array(h5, "unit", np.array([e.unit for e in explanations], np.int64))
        _h5.write_strings(h5, "formula", [_text(e.formula) for e in explanations])
        _h5.write_array(h5, "iou", np.array([e.iou for e in explanations], np.float64))
        _h5.write_array(h5, "score", np.array([e.score for e in explanations], np.float64))
        _h5.write_strings(h5, "primitive", [_text(e.primitive) for e in explanations])
        _h5.write_array(h5, "primitive_iou",
                        np.array([e.primitive_iou for e in explanations], np.float64))
        _h5.write_strings(h5, "beam_formula", beam_text)
        _h5.write_array(h5, "beam_score", beam_score)
        _h5.write_array(h5, "threshold", np.array([np.nan if e.threshold is None else e.threshold
                                                   for e in explanations], np.float64))
        _h5.write_strings(h5, "by_length_formula", by_length_text)
        _h5.write_array(h5, "by_length_iou", by_length_iou)
        _h5.write_strings(h5, "skipped", [e.skipped or "" for e in explanations])
        for name, values in _optimality_columns(explanations).items():
            _h5.write_array(h5, name, values)


# =============================================================================== reference CSV

#: The columns of the reference implementation's NLI result CSV (its ``search_feats``) that
#: every file has, in order; the class weight columns follow.
REFERENCE_COLUMNS = ("neuron", "feature", "category", "iou", "feature_length")
#: Its class weight columns: the three SNLI classes, in the classifier's order.
REFERENCE_CLASS_COLUMNS = ("w_entail", "w_neutral", "w_contra")


def _reference_category(name: str) -> str:
    """A concept's category as the reference names it: its name up to the first ':'."""
    return name.split(":")[0]


def write_reference_csv(path: PathLike, explanations: Sequence[Explanation], *,
                        weights: Any = None,
                        class_columns: Sequence[str] = REFERENCE_CLASS_COLUMNS,
                        inputs: Iterable[Any] = ()) -> None:
    """Write explanations as the reference implementation's NLI result CSV, atomically.

    One row per explanation, in order, with the columns ``neuron, feature, category, iou,
    feature_length`` and then ``class_columns`` (``w_entail, w_neutral, w_contra`` by
    default): ``neuron`` is the unit; ``feature`` the formula in the reference's print style
    (:func:`~compexp_core.engine.formula.reference_text`, operands sorted); ``category`` the
    same with each concept replaced by its category, the name up to its first ``:`` (``pre``,
    ``hyp``, ``oth``); ``iou`` the explanation's ``score`` (the IoU times the complexity
    penalty, which is what the reference writes); ``feature_length`` the reference's length
    (:func:`~compexp_core.engine.formula.reference_length`: leaves plus NOTs); the class
    columns the unit's read-out weights, ``weights[unit]``. A unit without a formula (none
    found, or skipped by the search) has an empty feature and category, iou 0 and length 0.
    No header line precedes the column names (as in the reference's files); the file is
    not a results file (:func:`read_results` refuses it).

    Args:
        path: the ``.csv`` file to write (replaced if it exists).
        explanations: the explanations (a :class:`~compexp_core.results.SearchResult` or a
            list of :class:`~compexp_core.engine.results.Explanation`).
        weights: ``[U, C]`` per-unit class weights (NumPy array or torch tensor), row ``u``
            for unit ``u``, with ``C = len(class_columns)``; for a classifier whose last layer
            is ``nn.Linear(U, C)``, ``compexp_core.analysis.unit_class_weights(layer.weight)``
            (the transpose of ``layer.weight``). None: no class columns. Float values are
            written in their own precision.
        class_columns: the names of the class columns.
        inputs: paths the file must not replace (as :func:`check_output_path`).

    Raises:
        ValueError: ``path`` does not end in ``.csv`` or is one of ``inputs``; ``weights`` is
            not 2-D, has another number of columns than ``class_columns``, too few rows for
            an explanation's unit, or NaN or infinite values (the message gives the first
            position); ``class_columns`` are not distinct names, or repeat a fixed column.
        TypeError: an explanation is not an :class:`Explanation`; ``weights`` is not numeric.
        OSError: the directory is missing or not writable; the write failed.

    Examples:
        >>> import os, pathlib, tempfile
        >>> import numpy as np
        >>> f = Formula.parse("(pre:tok:dog AND NOT hyp:tok:sleeping)")
        >>> found = Explanation(unit=1, formula=f, iou=0.5, score=0.25, primitive=None,
        ...                     primitive_iou=0.0)
        >>> skipped = Explanation(unit=0, formula=None, iou=0.0, score=0.0, primitive=None,
        ...                       primitive_iou=0.0)
        >>> weights = np.array([[0.5, 0.25, -1.0], [0.0, -0.5, 2.0]], np.float32)  # [U, C]
        >>> path = os.path.join(tempfile.mkdtemp(), "result.csv")
        >>> write_reference_csv(path, [found, skipped], weights=weights)
        >>> print(pathlib.Path(path).read_text())
        neuron,feature,category,iou,feature_length,w_entail,w_neutral,w_contra
        1,((NOT hyp:tok:sleeping) AND pre:tok:dog),((NOT hyp) AND pre),0.25,3,0.0,-0.5,2.0
        0,,,0.0,0,0.5,0.25,-1.0
        <BLANKLINE>
    """
    p = os.fspath(path)
    if results_kind(p) != "csv":
        raise ValueError(f"the reference results path {p!r} must end in .csv")
    check_output_path(p, inputs=inputs)
    explanations = list(explanations)
    for i, e in enumerate(explanations):
        if not isinstance(e, Explanation):
            raise TypeError(f"explanations[{i}] is a {type(e).__name__}, not an Explanation")
    class_columns = _class_columns(class_columns)
    units = np.array([e.unit for e in explanations], np.int64)
    columns: dict = {
        "neuron": units,
        "feature": [_reference_or_empty(e.formula) for e in explanations],
        "category": [_reference_or_empty(e.formula, _reference_category)
                     for e in explanations],
        "iou": np.array([0.0 if e.formula is None else e.score for e in explanations],
                        np.float64),
        "feature_length": np.array([0 if e.formula is None else reference_length(e.formula)
                                    for e in explanations], np.int64),
    }
    if weights is not None:
        w = _unit_weights(weights, len(class_columns), units)
        for j, name in enumerate(class_columns):
            columns[name] = w[units, j]
    import pandas as pd

    df = pd.DataFrame(columns, columns=list(columns))
    with _h5.atomic_path(p) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            df.to_csv(fh, index=False)


def _reference_or_empty(formula: Optional[Formula], namer=str) -> str:
    return "" if formula is None else reference_text(formula, namer, sort=True)


def _class_columns(names: Sequence[str]) -> list:
    if isinstance(names, str):
        raise TypeError(f"class_columns must be a sequence of column names, got the str "
                        f"{names!r}")
    names = list(names)
    for name in names:
        if not isinstance(name, str) or name == "":
            raise ValueError(f"class_columns must be non-empty str names, got {name!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"class_columns must be distinct, got {names}")
    clash = [n for n in names if n in REFERENCE_COLUMNS]
    if clash:
        raise ValueError(f"class_columns {clash} repeat fixed columns {list(REFERENCE_COLUMNS)}")
    return names


def _unit_weights(weights: Any, n_classes: int, units: np.ndarray) -> np.ndarray:
    """``weights`` checked as ``[U, n_classes]`` finite numbers covering ``units``."""
    if is_tensor(weights):
        weights = tensor_to_numpy(weights, "weights")
    w = np.asarray(weights)
    if w.dtype == bool or w.dtype.kind not in "iuf":
        raise TypeError(f"weights must be numeric [U, C] per-unit class weights, got dtype "
                        f"{w.dtype}")
    if w.ndim != 2 or w.shape[1] != n_classes:
        raise ValueError(f"weights must be [U, C] with C = {n_classes} (one column per class "
                         f"column), got shape {w.shape}; for an nn.Linear read-out pass "
                         f"analysis.unit_class_weights(layer.weight), its transpose")
    finite = np.isfinite(w) if w.dtype.kind == "f" else np.ones(w.shape, bool)
    if not finite.all():
        u, c = np.argwhere(~finite)[0]
        raise ValueError(f"weights holds {w[u, c]} at [{u}, {c}] (unit {u}): weights must be "
                         f"finite")
    if units.size and (units.min() < 0 or units.max() >= w.shape[0]):
        bad = int(units.max() if units.max() >= w.shape[0] else units.min())
        raise ValueError(f"weights has {w.shape[0]} rows (units 0..{w.shape[0] - 1}) but an "
                         f"explanation is of unit {bad}")
    return w if w.dtype.kind == "f" else w.astype(np.float64)


# =============================================================================== read

def read_results(path: PathLike) -> tuple[list[Explanation], dict]:
    """The explanations and search parameters of a results file written by
    :func:`write_results` (or ``SearchResult.save``).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: another extension; not a readable HDF5 file, or not a results file (the
            message names the file and what is wrong or missing); a CSV file without the
            header line's JSON or without a required column; an incomplete file (fewer rows
            than its header or ``n_units`` records: a truncated copy, say); a corrupt one.
    """
    kind = results_kind(path)
    p = os.fspath(path)
    if kind == "csv":
        return _read_csv(p)
    return _read_h5(p)


def _explanation(unit: Any, formula: str, iou: Any, score: Any, primitive: str,
                 primitive_iou: Any, beam: tuple, threshold: Optional[float],
                 by_length: tuple, skipped: Any = None,
                 optimality: Optional[Optimality] = None) -> Explanation:
    skipped = None if skipped is None or (isinstance(skipped, float) and math.isnan(skipped)) \
        else (_str(skipped) or None)
    return Explanation(int(unit), _parse(formula), float(iou), float(score), _parse(primitive),
                       float(primitive_iou), beam, threshold, by_length, skipped, optimality)


def _read_csv(path: str) -> tuple[list[Explanation], dict]:
    import pandas as pd

    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            text = fh.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"'{path}' is not a readable results CSV: it is not UTF-8 text ({e}); "
                         f"it may be corrupt") from None
    header: dict = {}
    if text.startswith("# "):
        first, _, text = text.partition("\n")
        try:
            header = json.loads(first[2:])
        except json.JSONDecodeError as err:
            raise ValueError(f"'{path}': the header line is not valid JSON ({err}); the file "
                             f"may be truncated or corrupt") from None
        if not isinstance(header, dict) or not isinstance(header.get("params", {}), dict):
            raise ValueError(f"'{path}': the header line is not a JSON object with 'params'")
        if header.get("format", RESULTS_FORMAT) != RESULTS_FORMAT:
            raise ValueError(f"'{path}' is not a {RESULTS_FORMAT} file: its header has format "
                             f"{header.get('format')!r}")
        if header.get("version", FORMAT_VERSION) != FORMAT_VERSION:
            raise ValueError(f"'{path}': {RESULTS_FORMAT} version {header.get('version')!r} is "
                             f"not supported (this version of compexp-core reads version "
                             f"{FORMAT_VERSION})")
    try:
        # Every column as text, exactly as written: names such as 007, 1e5, NA or None are
        # concept names, not numbers or missing values.
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_filter=False)
    except Exception as err:  # pandas raises several parser error types
        raise ValueError(f"'{path}' is not a readable results CSV ({err}); it may be "
                         f"truncated or corrupt") from None
    missing = [c for c in _CSV_REQUIRED if c not in df.columns]
    if missing:
        raise ValueError(f"{path} lacks the columns {missing}")
    if "rows" in header:
        # Files written since the row count exists: all rows, each ending in its row number.
        n = header["rows"]
        rows = df["row"].tolist() if "row" in df.columns else []
        if len(df) != n or rows != [str(i) for i in range(len(rows))]:
            raise ValueError(f"'{path}' is incomplete: its header records {n} rows, found "
                             f"{len(df)} complete rows; it may be truncated (an interrupted "
                             f"copy or write)")
    out = []
    has_optimality = all(n in df.columns for n in _OPTIMALITY)
    for i, row in enumerate(df.to_dict("records")):
        try:
            beam = tuple((Formula.parse(f), float(s)) for f, s in json.loads(row["beam"]))
            by_length = tuple((_parse(f), float(v))
                              for f, v in json.loads(row.get("by_length") or "[]"))
            threshold = float(row["threshold"]) if row.get("threshold", "") != "" else None
            out.append(_explanation(row["unit"], row["formula"], row["iou"], row["score"],
                                    row["primitive"], row["primitive_iou"], beam, threshold,
                                    by_length, row.get("skipped"),
                                    _optimality({n: [float(row[n])] for n in _OPTIMALITY}, 0)
                                    if has_optimality else None))
        except (ValueError, TypeError, KeyError) as e:
            raise ValueError(f"'{path}', data row {i + 1}: {e}; the file may be corrupt") \
                from None
    return out, header.get("params", {})


def _read_h5(path: str) -> tuple[list[Explanation], dict]:
    import h5py

    with _h5.reading(path), _h5.open_file(path) as h5:
        _h5.check_format(h5, path, RESULTS_FORMAT)
        d = {n: _h5.read_array(_h5.get(h5, n, path, h5py.Dataset), path, n) for n in _REQUIRED}
        for n in _OPTIONAL:
            ds = _h5.get(h5, n, path, h5py.Dataset, required=False)
            d[n] = None if ds is None else _h5.read_array(ds, path, n)
        stored = _h5.get(h5, "params", path, h5py.Dataset, required=False)
        if stored is not None:
            params_text = bytes(np.asarray(_h5.read_array(stored, path, "params"), np.uint8)
                                .reshape(-1)).decode("utf-8")
        else:   # files written before the parameters moved into a dataset
            params_text = _str(h5.attrs.get("params", "{}"))
        n_units = (_h5.attr_int(h5, "n_units", path, minimum=0) if "n_units" in h5.attrs
                   else len(d["unit"]))
    n = len(d["unit"])
    for name, values in d.items():
        if values is not None and (np.ndim(values) == 0 or len(values) != n_units):
            raise ValueError(f"'{path}' is incomplete or corrupt: dataset '{name}' has "
                             f"{np.shape(values)[:1] or 'no'} rows, expected {n_units} (one per "
                             f"unit)")
    try:
        params = json.loads(params_text)
        if not isinstance(params, dict):
            raise ValueError("the parameters are not a JSON object")
        out = []
        for i in range(n):
            beam = tuple((Formula.parse(_str(t)), float(s))
                         for t, s in zip(d["beam_formula"][i], d["beam_score"][i])
                         if _str(t) != "" and not math.isnan(s))
            by_length = () if d["by_length_iou"] is None else tuple(
                (_parse(_str(t)), float(v)) for t, v in zip(d["by_length_formula"][i],
                                                           d["by_length_iou"][i])
                if not math.isnan(v))
            threshold = (None if d["threshold"] is None or math.isnan(d["threshold"][i])
                         else float(d["threshold"][i]))
            out.append(_explanation(d["unit"][i], _str(d["formula"][i]), d["iou"][i],
                                    d["score"][i], _str(d["primitive"][i]), d["primitive_iou"][i],
                                    beam, threshold, by_length,
                                    None if d["skipped"] is None else d["skipped"][i],
                                    _optimality(d, i)))
    except (ValueError, TypeError, IndexError, UnicodeDecodeError) as e:
        raise ValueError(f"'{path}' is not a readable results file: {e}; it may be "
                         f"corrupt") from None
    return out, params
