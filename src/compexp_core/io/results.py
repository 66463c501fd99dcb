"""Results files (``format = "compexp-results"``, ``docs/FORMAT.md`` §3): HDF5 or CSV.

One row per searched unit, in the order the units were requested, holding the fields of an
:class:`~compexp_core.engine.results.Explanation`, plus the search parameters. This module
reads and writes plain data (a list of explanations and a ``params`` dict);
:class:`compexp_core.results.SearchResult` wraps it (``SearchResult.save``,
``load_results``). Both kinds of file are written atomically (a temporary file renamed into
place), and files written before ``threshold`` and ``by_length`` existed still load.

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
import json
import math
import os
from typing import Any, Optional, Sequence

import numpy as np

from ..engine.formula import Formula
from ..engine.results import Explanation
from . import _h5
from ._h5 import FORMAT_VERSION, RESULTS_FORMAT, PathLike

__all__ = ["write_results", "read_results", "results_kind"]

# Datasets every results file has; files written before the others existed lack them.
_REQUIRED = ("unit", "formula", "iou", "score", "primitive", "primitive_iou", "beam_formula",
             "beam_score")
_OPTIONAL = ("threshold", "by_length_formula", "by_length_iou")
_CSV_REQUIRED = ("unit", "formula", "iou", "score", "primitive", "primitive_iou", "beam")


def results_kind(path: PathLike) -> str:
    """``"h5"`` or ``"csv"``, from the extension (ValueError for any other)."""
    ext = os.path.splitext(str(path))[1].lower()
    if ext == ".csv":
        return "csv"
    if ext in (".h5", ".hdf5", ".hdf"):
        return "h5"
    raise ValueError(f"results path {str(path)!r} must end in .h5, .hdf5 or .csv")


def _text(f: Optional[Formula]) -> str:
    return "" if f is None else str(f)


def _parse(text: str) -> Optional[Formula]:
    return None if text == "" else Formula.parse(text)


def _str(x: Any) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


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

def write_results(path: PathLike, explanations: Sequence[Explanation], params: dict) -> None:
    """Write explanations and search parameters to HDF5 (``.h5``, ``.hdf5``) or CSV
    (``.csv``), chosen by the extension, atomically.

    Raises:
        ValueError: another extension.
    """
    kind = results_kind(path)
    explanations = list(explanations)
    if kind == "csv":
        _write_csv(path, explanations, dict(params))
    else:
        _write_h5(path, explanations, dict(params))


def _write_csv(path: PathLike, explanations: list, params: dict) -> None:
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
    } for e in explanations]
    columns = ["unit", "formula", "iou", "score", "primitive", "primitive_iou", "threshold",
               "beam", "by_length"]
    df = pd.DataFrame(rows, columns=columns)
    header = json.dumps({"format": RESULTS_FORMAT, "version": FORMAT_VERSION, "params": params})
    with _h5.atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            fh.write("# " + header + "\n")
            df.to_csv(fh, index=False)


def _write_h5(path: PathLike, explanations: list, params: dict) -> None:
    beam_text, beam_score = _pair_table([e.beam for e in explanations])
    by_length_text, by_length_iou = _pair_table([e.by_length for e in explanations])
    with _h5.writing(path) as h5:
        h5.attrs["format"] = RESULTS_FORMAT
        h5.attrs["version"] = FORMAT_VERSION
        h5.attrs["params"] = json.dumps(params)
        h5["unit"] = np.array([e.unit for e in explanations], np.int64)
        _h5.write_strings(h5, "formula", [_text(e.formula) for e in explanations])
        h5["iou"] = np.array([e.iou for e in explanations], np.float64)
        h5["score"] = np.array([e.score for e in explanations], np.float64)
        _h5.write_strings(h5, "primitive", [_text(e.primitive) for e in explanations])
        h5["primitive_iou"] = np.array([e.primitive_iou for e in explanations], np.float64)
        _h5.write_strings(h5, "beam_formula", beam_text)
        h5["beam_score"] = beam_score
        h5["threshold"] = np.array([np.nan if e.threshold is None else e.threshold
                                    for e in explanations], np.float64)
        _h5.write_strings(h5, "by_length_formula", by_length_text)
        h5["by_length_iou"] = by_length_iou


# =============================================================================== read

def read_results(path: PathLike) -> tuple[list[Explanation], dict]:
    """The explanations and search parameters of a results file written by
    :func:`write_results` (or ``SearchResult.save``).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: another extension; not a readable HDF5 file, or not a results file (the
            message names the file and what is wrong or missing); a CSV file without the
            header line's JSON or without a required column.
    """
    kind = results_kind(path)
    p = os.fspath(path)
    if kind == "csv":
        return _read_csv(p)
    return _read_h5(p)


def _read_csv(path: str) -> tuple[list[Explanation], dict]:
    import pandas as pd

    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
    with open(path) as fh:
        first = fh.readline()
    params: dict[str, Any] = {}
    if first.startswith("# "):
        try:
            params = json.loads(first[2:]).get("params", {})
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: the header line is not valid JSON ({err})") from None
    try:
        df = pd.read_csv(path, comment=None, skiprows=1 if first.startswith("# ") else 0,
                         keep_default_na=False)
    except Exception as err:  # pandas raises several parser error types
        raise ValueError(f"{path} is not a readable results CSV ({err})") from None
    missing = [c for c in _CSV_REQUIRED if c not in df.columns]
    if missing:
        raise ValueError(f"{path} lacks the columns {missing}")
    out = []
    for row in df.itertuples(index=False):
        beam = tuple((Formula.parse(f), float(s)) for f, s in json.loads(row.beam))
        row = row._asdict()
        by_length = tuple((_parse(f), float(v))
                          for f, v in json.loads(row.get("by_length") or "[]"))
        threshold = float(row["threshold"]) if row.get("threshold", "") != "" else None
        out.append(Explanation(int(row["unit"]), _parse(str(row["formula"])), float(row["iou"]),
                               float(row["score"]), _parse(str(row["primitive"])),
                               float(row["primitive_iou"]), beam, threshold, by_length))
    return out, params


def _read_h5(path: str) -> tuple[list[Explanation], dict]:
    import h5py

    with _h5.open_file(path) as h5, _h5.reading(path):
        _h5.check_format(h5, path, RESULTS_FORMAT)
        d = {n: _h5.get(h5, n, path, h5py.Dataset)[()] for n in _REQUIRED}
        for n in _OPTIONAL:
            ds = _h5.get(h5, n, path, h5py.Dataset, required=False)
            d[n] = None if ds is None else ds[()]
        params = json.loads(h5.attrs.get("params", "{}"))
    out = []
    for i in range(len(d["unit"])):
        beam = tuple((Formula.parse(_str(t)), float(s))
                     for t, s in zip(d["beam_formula"][i], d["beam_score"][i])
                     if _str(t) != "" and not math.isnan(s))
        by_length = () if d["by_length_iou"] is None else tuple(
            (_parse(_str(t)), float(v)) for t, v in zip(d["by_length_formula"][i],
                                                       d["by_length_iou"][i]) if not math.isnan(v))
        threshold = (None if d["threshold"] is None or math.isnan(d["threshold"][i])
                     else float(d["threshold"][i]))
        out.append(Explanation(int(d["unit"][i]), _parse(_str(d["formula"][i])),
                               float(d["iou"][i]), float(d["score"][i]),
                               _parse(_str(d["primitive"][i])), float(d["primitive_iou"][i]),
                               beam, threshold, by_length))
    return out, params
