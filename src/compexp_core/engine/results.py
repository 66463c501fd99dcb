"""Search results: one :class:`Explanation` per searched unit, gathered in a :class:`SearchResult`.

A result saves to HDF5 (``.h5``/``.hdf5``) or CSV (``.csv``) and loads back unchanged.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from .formula import Formula

__all__ = ["Explanation", "SearchResult", "load_results"]

RESULTS_FORMAT = "compexp-results"
RESULTS_VERSION = 1


@dataclass(frozen=True)
class Explanation:
    """The explanation of one unit.

    Attributes:
        unit: the unit's index in the activations.
        formula: the best formula found, or None when no concept overlaps the unit.
        iou: the raw metric value of ``formula`` (IoU by default; precision or recall if the
            search used that metric). 0.0 when ``formula`` is None.
        score: ``iou`` times the complexity penalty ``penalty ** (len(formula) - 1)``.
        primitive: the best single concept (the unit's Network Dissection label), or None.
        primitive_iou: its metric value.
        beam: the final beam as ``(formula, score)`` pairs, best first.
        threshold: the activation threshold that binarised the unit (None for bool
            activations).
        by_length: ``(formula, iou)`` per maximum length 1..max_length: the best formula of
            the beam after that many steps, which is exactly what a search with that
            ``max_length`` returns (beam search never revisits earlier steps), so one search
            at the longest length gives the whole IoU-against-length curve.
    """

    unit: int
    formula: Optional[Formula]
    iou: float
    score: float
    primitive: Optional[Formula]
    primitive_iou: float
    beam: tuple = field(default=())
    threshold: Optional[float] = None
    by_length: tuple = field(default=())

    @property
    def length(self) -> int:
        """Number of leaves of ``formula`` (0 when None)."""
        return 0 if self.formula is None else len(self.formula)

    def __str__(self) -> str:
        return (f"unit {self.unit}: {self.formula} (iou {self.iou:.4f}; best single "
                f"{self.primitive} {self.primitive_iou:.4f})")


class SearchResult(Sequence):
    """Explanations of the searched units, in the order they were requested.

    ``result[i]`` is the :class:`Explanation` of the i-th searched unit (``result[i].unit``
    is its index in the activations).

    Examples:
        >>> import numpy as np, compexp_core as cx
        >>> masks = np.zeros((4, 2), bool); masks[:2, 0] = True; masks[1:3, 1] = True
        >>> acts = masks[:, :1].copy()                  # a unit firing exactly on concept 0
        >>> result = cx.search_formulas(acts, masks, names=["cat", "dog"], max_length=2)
        >>> str(result[0].formula), result[0].iou
        ('cat', 1.0)
        >>> result.to_pandas()[["unit", "formula", "iou"]].to_dict("records")
        [{'unit': 0, 'formula': 'cat', 'iou': 1.0}]
    """

    def __init__(self, explanations: Sequence[Explanation], params: Optional[dict] = None) -> None:
        self._explanations = list(explanations)
        self.params = dict(params or {})
        #: Timings and kernel work of the search that produced this result (not saved).
        self.stats: dict = {}

    def __getitem__(self, i):
        if isinstance(i, slice):
            return SearchResult(self._explanations[i], self.params)
        return self._explanations[i]

    def __len__(self) -> int:
        return len(self._explanations)

    def __iter__(self) -> Iterator[Explanation]:
        return iter(self._explanations)

    def __repr__(self) -> str:
        found = sum(e.formula is not None for e in self)
        mean = float(np.mean([e.iou for e in self])) if len(self) else 0.0
        return f"SearchResult({len(self)} units, {found} explained, mean iou {mean:.4f})"

    @property
    def units(self) -> list[int]:
        """Unit indices, one per explanation."""
        return [e.unit for e in self]

    def by_unit(self, unit: int) -> Explanation:
        """The explanation of the unit with index ``unit`` in the activations."""
        for e in self:
            if e.unit == unit:
                return e
        raise KeyError(f"unit {unit} was not searched")

    def to_pandas(self):
        """One row per unit: unit, formula, iou, score, length, primitive, primitive_iou,
        threshold, beam, by_length (lists of ``(formula text, value)`` pairs)."""
        import pandas as pd

        rows = [{
            "unit": e.unit,
            "formula": None if e.formula is None else str(e.formula),
            "iou": e.iou,
            "score": e.score,
            "length": e.length,
            "primitive": None if e.primitive is None else str(e.primitive),
            "primitive_iou": e.primitive_iou,
            "threshold": e.threshold,
            "beam": [(str(f), s) for f, s in e.beam],
            "by_length": [(_text(f), v) for f, v in e.by_length],
        } for e in self]
        columns = ["unit", "formula", "iou", "score", "length", "primitive", "primitive_iou",
                   "threshold", "beam", "by_length"]
        return pd.DataFrame(rows, columns=columns)

    def summary(self, top: int = 10) -> str:
        """A text table of the ``top`` units by IoU."""
        best = sorted(self, key=lambda e: -e.iou)[:top]
        lines = [f"{'unit':>6}  {'iou':>7}  {'single':>7}  formula"]
        for e in best:
            lines.append(f"{e.unit:>6}  {e.iou:7.4f}  {e.primitive_iou:7.4f}  {e.formula}")
        return "\n".join(lines)

    # ------------------------------------------------------------------------------ saving
    def save(self, path: str | os.PathLike) -> None:
        """Write to HDF5 (``.h5``, ``.hdf5``) or CSV (``.csv``), chosen by the extension."""
        kind = _kind_of(path)
        if kind == "csv":
            df = self.to_pandas()
            df["beam"] = [json.dumps(b) for b in df["beam"]]
            df["by_length"] = [json.dumps(b) for b in df["by_length"]]
            df = df.drop(columns=["length"])
            with open(path, "w", newline="") as fh:
                fh.write("# " + json.dumps({"format": RESULTS_FORMAT, "version": RESULTS_VERSION,
                                            "params": self.params}) + "\n")
                df.to_csv(fh, index=False)
            return
        import h5py

        beam_text, beam_score = _pair_table([e.beam for e in self])
        by_length_text, by_length_iou = _pair_table([e.by_length for e in self])
        text = h5py.string_dtype("utf-8")
        with h5py.File(path, "w") as h5:
            h5.attrs["format"] = RESULTS_FORMAT
            h5.attrs["version"] = RESULTS_VERSION
            h5.attrs["params"] = json.dumps(self.params)
            h5["unit"] = np.array([e.unit for e in self], np.int64)
            h5.create_dataset("formula", data=[_text(e.formula) for e in self], dtype=text)
            h5["iou"] = np.array([e.iou for e in self], np.float64)
            h5["score"] = np.array([e.score for e in self], np.float64)
            h5.create_dataset("primitive", data=[_text(e.primitive) for e in self], dtype=text)
            h5["primitive_iou"] = np.array([e.primitive_iou for e in self], np.float64)
            h5.create_dataset("beam_formula", data=beam_text, dtype=text)
            h5["beam_score"] = beam_score
            h5["threshold"] = np.array([np.nan if e.threshold is None else e.threshold
                                        for e in self], np.float64)
            h5.create_dataset("by_length_formula", data=by_length_text, dtype=text)
            h5["by_length_iou"] = by_length_iou

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SearchResult":
        """Read a result written by :meth:`save`."""
        kind = _kind_of(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"results file not found: {path}")
        if kind == "csv":
            return _load_csv(path)
        return _load_h5(path)


def load_results(path: str | os.PathLike) -> SearchResult:
    """Read a :class:`SearchResult` from an HDF5 or CSV file written by ``save``."""
    return SearchResult.load(path)


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


def _text(f: Optional[Formula]) -> str:
    return "" if f is None else str(f)


def _parse(text: str) -> Optional[Formula]:
    return None if text == "" else Formula.parse(text)


def _kind_of(path) -> str:
    ext = os.path.splitext(str(path))[1].lower()
    if ext == ".csv":
        return "csv"
    if ext in (".h5", ".hdf5", ".hdf"):
        return "h5"
    raise ValueError(f"results path {str(path)!r} must end in .h5, .hdf5 or .csv")


def _load_csv(path) -> SearchResult:
    import pandas as pd

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
    required = ["unit", "formula", "iou", "score", "primitive", "primitive_iou", "beam"]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"{path} lacks the columns {missing}")
    out = []
    for row in df.itertuples(index=False):
        beam = tuple((Formula.parse(f), float(s)) for f, s in json.loads(row.beam))
        row = row._asdict()
        by_length = tuple((_parse(f), float(v)) for f, v in json.loads(row.get("by_length") or "[]"))
        threshold = float(row["threshold"]) if row.get("threshold", "") != "" else None
        out.append(Explanation(int(row["unit"]), _parse(str(row["formula"])), float(row["iou"]),
                               float(row["score"]), _parse(str(row["primitive"])),
                               float(row["primitive_iou"]), beam, threshold, by_length))
    return SearchResult(out, params)


def _load_h5(path) -> SearchResult:
    import h5py

    try:
        h5 = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{path} is not a readable HDF5 file ({err})") from None
    with h5:
        found = h5.attrs.get("format")
        if found != RESULTS_FORMAT:
            raise ValueError(f"{path} is not a compexp results file (format attribute "
                             f"{found!r}, expected {RESULTS_FORMAT!r})")
        names = ["unit", "formula", "iou", "score", "primitive", "primitive_iou", "beam_formula",
                 "beam_score"]
        missing = [n for n in names if n not in h5]
        if missing:
            raise ValueError(f"{path} lacks the datasets {missing}")
        d = {n: h5[n][()] for n in names}
        # Files written before these fields existed lack them.
        for n in ("threshold", "by_length_formula", "by_length_iou"):
            d[n] = h5[n][()] if n in h5 else None
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
        out.append(Explanation(int(d["unit"][i]), _parse(_str(d["formula"][i])), float(d["iou"][i]),
                               float(d["score"][i]), _parse(_str(d["primitive"][i])),
                               float(d["primitive_iou"][i]), beam, threshold, by_length))
    return SearchResult(out, params)


def _str(x) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)
