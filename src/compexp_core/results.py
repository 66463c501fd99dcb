"""Search results: one :class:`Explanation` per searched unit, gathered in a :class:`SearchResult`.

A result saves to HDF5 (``.h5``/``.hdf5``) or CSV (``.csv``) and loads back unchanged
(:func:`load_results`); the file formats live in :mod:`compexp_core.io.results`.
"""
from __future__ import annotations

import os
from typing import Iterator, Optional, Sequence

import numpy as np

from .engine.formula import Formula
from .engine.results import Explanation

__all__ = ["Explanation", "SearchResult", "load_results"]


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
        threshold, beam, by_length (lists of ``(formula text, value)`` pairs), skipped (the
        reason a unit was not searched, else None)."""
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
            "skipped": e.skipped,
        } for e in self]
        columns = ["unit", "formula", "iou", "score", "length", "primitive", "primitive_iou",
                   "threshold", "beam", "by_length", "skipped"]
        return pd.DataFrame(rows, columns=columns)

    def summary(self, top: int = 10) -> str:
        """A text table of the ``top`` units by IoU (and how many units were skipped; for an
        optimal search, how many units are proven optimal and how many beam explanations
        were suboptimal)."""
        best = sorted(self, key=lambda e: -e.iou)[:top]
        lines = [f"{'unit':>6}  {'iou':>7}  {'single':>7}  formula"]
        for e in best:
            lines.append(f"{e.unit:>6}  {e.iou:7.4f}  {e.primitive_iou:7.4f}  {e.formula}")
        searched = [e for e in self if e.optimality is not None]
        if searched:
            proven = sum(bool(e.optimal) for e in searched)
            worse = [e for e in searched if e.beam_suboptimal]
            gaps = [e.score - (e.beam[0][1] if e.beam else 0.0) for e in worse]
            by = f", by {np.mean(gaps):.4f} on average" if worse else ""
            lines.append(f"optimal search: {proven} of {len(searched)} units proven optimal; "
                         f"the beam's explanation was suboptimal for {len(worse)} of "
                         f"{len(searched)}{by}")
        skipped = [e for e in self if e.skipped]
        if skipped:
            lines.append(f"{len(skipped)} of {len(self)} units skipped (no formula): "
                         f"{skipped[0].skipped}" + (", ..." if len(skipped) > 1 else ""))
        return "\n".join(lines)

    # ------------------------------------------------------------------------------ saving
    def save(self, path: str | os.PathLike) -> None:
        """Write to HDF5 (``.h5``, ``.hdf5``) or CSV (``.csv``), chosen by the extension.

        The file (``docs/FORMAT.md`` §3) is written into a temporary file beside ``path`` and
        renamed into place when complete, so a failed save leaves any previous file at
        ``path`` as it was; :attr:`stats` is not saved. The path and the parameters are
        checked before anything is written: ``path`` must have a known extension, be in an
        existing, writable directory, and not be one of the search's input files (the
        ``acts_path`` and ``concepts_path`` of :attr:`params`, when recorded).

        Raises:
            ValueError: an unknown extension; ``path`` is an input file.
            TypeError: a parameter that cannot be saved as JSON.
            OSError: a missing or read-only directory; a failed write (a full disk).
        """
        from .io.results import write_results

        inputs = [self.params.get(key) for key in ("acts_path", "concepts_path")]
        write_results(path, list(self), self.params, inputs=inputs)

    def to_reference_csv(self, path: str | os.PathLike, weights=None, *,
                         class_columns: Sequence[str] = ("w_entail", "w_neutral", "w_contra")
                         ) -> None:
        """Write the result as the reference implementation's NLI result CSV (columns
        ``neuron, feature, category, iou, feature_length`` and, with ``weights``, the class
        weight columns; ``docs/FORMAT.md`` §3.1), atomically. An export for comparison with
        the reference's files: :func:`load_results` does not read it.

        Args:
            path: the ``.csv`` file.
            weights: per-unit class weights ``[U, C]``, row u for unit u (for an ``nn.Linear``
                read-out, ``compexp_core.analysis.unit_class_weights(layer.weight)``), or
                None for no weight columns.
            class_columns: the names of the C weight columns.

        Raises:
            ValueError, TypeError, OSError: as
                :func:`compexp_core.io.results.write_reference_csv` (a path not ending in
                ``.csv`` or naming an input file of the search, weights of the wrong shape).

        Examples:
            >>> import os, pathlib, tempfile
            >>> import numpy as np, compexp_core as cx
            >>> masks = np.zeros((4, 2), bool); masks[:2, 0] = True; masks[1:3, 1] = True
            >>> result = cx.search_formulas(masks[:, :1].copy(), masks,
            ...                             names=["pre:tok:cat", "hyp:tok:dog"])
            >>> path = os.path.join(tempfile.mkdtemp(), "result.csv")
            >>> result.to_reference_csv(path, weights=np.array([[1.0, 0.0, -1.0]]))
            >>> print(pathlib.Path(path).read_text().strip())
            neuron,feature,category,iou,feature_length,w_entail,w_neutral,w_contra
            0,pre:tok:cat,pre,1.0,1,1.0,0.0,-1.0
        """
        from .io.results import write_reference_csv

        inputs = [self.params.get(key) for key in ("acts_path", "concepts_path")]
        write_reference_csv(path, list(self), weights=weights, class_columns=class_columns,
                            inputs=inputs)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SearchResult":
        """Read a result written by :meth:`save`."""
        from .io.results import read_results

        explanations, params = read_results(path)
        return cls(explanations, params)


def load_results(path: str | os.PathLike) -> SearchResult:
    """Read a :class:`SearchResult` from an HDF5 or CSV file written by ``save``."""
    return SearchResult.load(path)


def _text(f: Optional[Formula]) -> str:
    return "" if f is None else str(f)
