"""Plain tables as CSV files: the analyses' tables saved beside the results (for example the
contributions of units to classes, ``contributions.csv``, and the copy-paste edits,
``adversarial.csv``). One header row, then one row per record; written atomically.

Examples:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "t.csv")
    >>> write_table_csv(path, ["unit", "formula"], [{"unit": 3, "formula": "(a OR b)"}])
    >>> with open(path) as fh:
    ...     print(fh.read().strip())
    unit,formula
    3,(a OR b)
"""
from __future__ import annotations

import csv
import math
import os
from typing import Iterable, Mapping, Sequence, Union

from . import _h5

__all__ = ["write_table_csv"]

PathLike = Union[str, "os.PathLike[str]"]


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def write_table_csv(path: PathLike, columns: Sequence[str],
                    rows: Iterable[Mapping]) -> None:
    """Write ``rows`` (dicts keyed by ``columns``) as a CSV file, atomically (a temporary file
    renamed into place). Floats keep full precision; None and NaN are written empty.

    Args:
        path: the file to write (replaced if it exists); its folder must exist.
        columns: the column names, in order.
        rows: one mapping per row; keys outside ``columns`` are ignored.

    Raises:
        ValueError: ``path`` does not end in ``.csv``; a row lacks a column (named, with the
            row number).
    """
    path = os.fspath(path)
    if not path.endswith(".csv"):
        raise ValueError(f"table path {path!r} must end in .csv")
    rows = list(rows)
    for i, row in enumerate(rows):
        missing = [c for c in columns if c not in row]
        if missing:
            raise ValueError(f"row {i} of the table for {path!r} has no column {missing[0]!r}")
    with _h5.atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(columns)
            for row in rows:
                writer.writerow([_cell(row[c]) for c in columns])
