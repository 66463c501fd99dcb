"""Search results: one :class:`Explanation` per searched unit, gathered in a :class:`SearchResult`.

A result saves to HDF5 (``.h5``/``.hdf5``) or CSV (``.csv``) and loads back unchanged
(:func:`load_results`); the file formats live in :mod:`compexp_core.io.results`. It also
exports to the files other tools read (Network Dissection's ``tally.csv``, CLIP-Dissect's
``descriptions.csv``, a tidy CSV or Parquet table, JSON lines with parse trees:
:meth:`SearchResult.export`, :func:`export_results`; formats in
:mod:`compexp_core.io.exports`).
"""
from __future__ import annotations

import os
from typing import Iterator, Optional, Sequence

import numpy as np

from .engine.formula import Formula
from .engine.results import Explanation

__all__ = ["Explanation", "SearchResult", "load_results", "export_results"]


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

    # ------------------------------------------------------------------------ provenance
    # Kept in params (saved with them in HDF5 and CSV files; absent from older files).
    @property
    def model(self) -> Optional[str]:
        """The explained model's name (``params["model"]``), or None when not recorded.
        ``compexp search`` and :func:`~compexp_core.search_formulas` (given an activations
        file's path) record the activations file's ``model``; assign to set it."""
        return self.params.get("model")

    @model.setter
    def model(self, value: Optional[str]) -> None:
        self._set_provenance("model", value)

    @property
    def layer(self) -> Optional[str]:
        """The explained layer's name (``params["layer"]``), or None when not recorded;
        recorded and set like :attr:`model`."""
        return self.params.get("layer")

    @layer.setter
    def layer(self, value: Optional[str]) -> None:
        self._set_provenance("layer", value)

    def _set_provenance(self, key: str, value: Optional[str]) -> None:
        if value is None:
            self.params.pop(key, None)
        elif isinstance(value, str):
            self.params[key] = value
        else:
            raise TypeError(f"SearchResult.{key} must be a str or None, got "
                            f"{type(value).__name__}")

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

    # ------------------------------------------------------------------------------ exports
    def best_single_concepts(self, acts=None, concepts=None, *, device: str = "cpu",
                             unit_batch_size: int = 64):
        """Network Dissection's labels of the units: for each unit and concept category, the
        category's single concept of highest IoU with the unit, with the counts behind it.

        The unit masks are those of the search: the units' recorded thresholds (none for
        bool activations) and the same resize to the concepts' grid; the counts come from
        the engine (the backend's primitive counts, exact integers). Concepts without a
        category (an empty ``ConceptSet.categories`` entry) form the category
        ``"uncategorized"``.

        Args:
            acts: the activations the result was computed from (a path, array, tensor or
                h5py dataset); default: the file recorded in ``params["acts_path"]``.
            concepts: its concept set (a ``ConceptSet`` or a concepts file path); default:
                ``params["concepts_path"]``.
            device: the backend that counts (``"cpu"``, ``"cuda"``, ...).
            unit_batch_size: units counted together (bounds memory).

        Returns:
            A :class:`compexp_core.io.exports.CategoryTally`, row i for ``self[i]``.

        Raises:
            ValueError: acts or concepts neither given nor recorded, or not matching the result
                (another concept set than the search's, too few units, a unit without a
                recorded threshold for float activations).
            FileNotFoundError: a recorded or given file does not exist.

        Examples:
            >>> import numpy as np, compexp_core as cx
            >>> masks = np.zeros((4, 3), bool); masks[:2, 0] = masks[1:3, 1] = masks[3, 2] = True
            >>> cs = cx.ConceptSet.from_dense(masks, names=["cat", "dog", "sky"],
            ...                               categories=["animal", "animal", "scene"])
            >>> acts = masks[:, :1] | masks[:, 2:]            # fires on cat or sky
            >>> result = cx.search_formulas(acts, cs, max_length=2)
            >>> tally = result.best_single_concepts(acts, cs)
            >>> tally.categories, tally.labels[0], tally.intersect[0].tolist()
            (('animal', 'scene'), ('cat', 'sky'), [2, 1])
        """
        from .inputs import activations_input, concepts_input

        acts = activations_input(self._input_path("acts") if acts is None else acts)
        cs = concepts_input(self._input_path("concepts") if concepts is None else concepts)
        return _category_tally(self, acts, cs, device, unit_batch_size)

    def _input_path(self, key: str) -> str:
        """The ``acts`` / ``concepts`` file recorded in params (``compexp search`` records
        them), which must exist."""
        recorded = self.params.get(f"{key}_path")
        if not recorded:
            raise ValueError(f"the result does not record its {key} file (params"
                             f"[{key + '_path'!r}]): pass {key} (compexp export: --{key})")
        if not os.path.exists(recorded):
            raise FileNotFoundError(f"the {key} file recorded in the result does not exist: "
                                    f"{recorded} (pass {key}; compexp export: --{key})")
        return recorded

    def export(self, path: str | os.PathLike, format: str, *, acts=None, concepts=None,
               device: str = "cpu") -> None:
        """Write the result in one of the formats other tools read (``docs/FORMAT.md`` §3.3):
        ``"tally"`` (Network Dissection's ``tally.csv``; counts units' masks, see
        :meth:`to_tally_csv`), ``"clip-dissect"`` (:meth:`to_clip_dissect_csv`), ``"tidy"``
        (:meth:`to_tidy`) or ``"jsonl"`` (:meth:`to_jsonl`). The same as
        ``export_results([self], path, format, ...)``.

        Args:
            path: the output file (its extension must fit the format).
            format: one of ``compexp_core.io.exports.EXPORT_FORMATS``.
            acts, concepts, device: for ``"tally"`` only (see :meth:`best_single_concepts`).

        Raises:
            ValueError, TypeError, ImportError, OSError: as :func:`export_results`.
        """
        export_results([self], path, format, acts=acts, concepts=concepts, device=device)

    def to_tally_csv(self, path: str | os.PathLike, acts=None, concepts=None, *,
                     device: str = "cpu") -> None:
        """Write Network Dissection's ``tally.csv``: 1-based ``unit``, ``category`` (of the
        unit's best single concept), ``label`` (the formula), ``score`` (its IoU), and per
        category the best single concept's ``label, truth, activation, intersect, iou``
        (:meth:`best_single_concepts`; columns in
        :func:`compexp_core.io.exports.write_tally_csv`), rows by score, highest first.

        Args:
            path: the ``.csv`` file.
            acts, concepts, device: as :meth:`best_single_concepts` (by default the files
                recorded by ``compexp search``).

        Examples:
            >>> import os, tempfile, numpy as np, pandas as pd, compexp_core as cx
            >>> masks = np.zeros((4, 2), bool); masks[:2, 0] = True; masks[1:3, 1] = True
            >>> cs = cx.ConceptSet.from_dense(masks, names=["cat", "dog"],
            ...                               categories=["animal", "animal"])
            >>> unit = masks[:, :1] | masks[:, 1:]              # fires on cat or dog
            >>> result = cx.search_formulas(unit, cs)
            >>> path = os.path.join(tempfile.mkdtemp(), "tally.csv")
            >>> result.to_tally_csv(path, unit, cs)
            >>> pd.read_csv(path).to_dict("records")
            [{'unit': 1, 'category': 'animal', 'label': '(cat OR dog)', 'score': 1.0,
              'animal-label': 'cat', 'animal-truth': 2, 'animal-activation': 3,
              'animal-intersect': 2, 'animal-iou': 0.6666666666666666}]
        """
        self.export(path, "tally", acts=acts, concepts=concepts, device=device)

    def to_clip_dissect_csv(self, path: str | os.PathLike) -> None:
        """Write CLIP-Dissect's ``layer,unit,description,similarity`` CSV: the result's
        :attr:`layer`, 0-based units, the formulas as descriptions, their IoU as similarity
        (:func:`compexp_core.io.exports.write_clip_dissect_csv`).

        Examples:
            >>> import os, pathlib, tempfile, numpy as np, compexp_core as cx
            >>> masks = np.zeros((4, 2), bool); masks[:2, 0] = True; masks[1:3, 1] = True
            >>> result = cx.search_formulas(masks[:, :1].copy(), masks, names=["cat", "dog"])
            >>> result.layer = "fc"
            >>> path = os.path.join(tempfile.mkdtemp(), "descriptions.csv")
            >>> result.to_clip_dissect_csv(path)
            >>> print(pathlib.Path(path).read_text().strip())
            layer,unit,description,similarity
            fc,0,cat,1.0
        """
        self.export(path, "clip-dissect")

    def to_tidy(self, path: str | os.PathLike) -> None:
        """Write the tidy table, ``model, layer, unit, formula, iou, length, primitive,
        primitive_iou, threshold``, as CSV (``.csv``) or Parquet (``.parquet``, needs
        pyarrow) (:func:`compexp_core.io.exports.write_tidy`); :func:`export_results` puts
        several results into one table.

        Examples:
            >>> import os, tempfile, numpy as np, pandas as pd, compexp_core as cx
            >>> masks = np.zeros((4, 2), bool); masks[:2, 0] = True; masks[1:3, 1] = True
            >>> result = cx.search_formulas(masks[:, :1].copy(), masks, names=["cat", "dog"])
            >>> result.model, result.layer = "toy", "fc"
            >>> path = os.path.join(tempfile.mkdtemp(), "explanations.csv")
            >>> result.to_tidy(path)
            >>> pd.read_csv(path)[["model", "layer", "unit", "formula", "iou", "length"]]
              model layer  unit formula  iou  length
            0   toy    fc     0     cat  1.0       1
        """
        self.export(path, "tidy")

    def to_jsonl(self, path: str | os.PathLike) -> None:
        """Write one JSON object per unit and line, with the formula's parse tree ``tree``
        (:func:`compexp_core.io.exports.jsonl_records`; :meth:`Formula.from_tree
        <compexp_core.engine.formula.Formula.from_tree>` rebuilds the formula).

        Examples:
            >>> import json, os, tempfile, numpy as np, compexp_core as cx
            >>> masks = np.zeros((4, 2), bool); masks[:2, 0] = True; masks[1:3, 1] = True
            >>> result = cx.search_formulas(masks[:, :1].copy(), masks, names=["cat", "dog"])
            >>> path = os.path.join(tempfile.mkdtemp(), "explanations.jsonl")
            >>> result.to_jsonl(path)
            >>> with open(path) as fh:
            ...     record = json.loads(fh.readline())
            >>> record["unit"], record["formula"], record["tree"]
            (0, 'cat', {'concept': 'cat', 'index': 0})
        """
        self.export(path, "jsonl")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SearchResult":
        """Read a result written by :meth:`save`."""
        from .io.results import read_results

        explanations, params = read_results(path)
        return cls(explanations, params)


def load_results(path: str | os.PathLike) -> SearchResult:
    """Read a :class:`SearchResult` from an HDF5 or CSV file written by ``save``."""
    return SearchResult.load(path)


def export_results(results: Sequence[SearchResult], path: str | os.PathLike, format: str, *,
                   acts=None, concepts=None, device: str = "cpu") -> None:
    """Write one or several results in a format other tools read (``docs/FORMAT.md`` §3.3).

    ``"clip-dissect"``, ``"tidy"`` and ``"jsonl"`` take several results (the layers of a
    model, several models) into one file, each row or record naming its result's
    :attr:`~SearchResult.model` and :attr:`~SearchResult.layer`, which must then differ
    between results. ``"tally"`` (Network Dissection's ``tally.csv``, one layer) takes one
    result and counts its units' masks against ``acts`` and ``concepts`` (default: the files
    the result records; :meth:`SearchResult.best_single_concepts`). The output path is
    checked before any work; it must not be an input of any result.

    Args:
        results: the results (a single :class:`SearchResult` is taken as one).
        path: the output file: ``.csv`` (tally, clip-dissect, tidy), ``.parquet`` (tidy,
            with pyarrow) or ``.jsonl`` (jsonl).
        format: ``"tally"``, ``"clip-dissect"``, ``"tidy"`` or ``"jsonl"``.
        acts, concepts, device: for ``"tally"`` only.

    Raises:
        ValueError: an unknown format; an extension the format does not take; no results;
            several results for ``"tally"`` or two with the same model and layer;
            ``acts``/``concepts`` given for another format; the output is an input file.
        TypeError: ``results`` holds something other than a SearchResult.
        ImportError: ``.parquet`` without pyarrow.
        FileNotFoundError, OSError: a missing input file; an output that cannot be written.

    Examples:
        >>> import os, tempfile, numpy as np, pandas as pd, compexp_core as cx
        >>> masks = np.zeros((4, 2), bool); masks[:2, 0] = True; masks[1:3, 1] = True
        >>> a = cx.search_formulas(masks[:, :1].copy(), masks, names=["cat", "dog"])
        >>> b = cx.search_formulas(masks[:, 1:].copy(), masks, names=["cat", "dog"])
        >>> a.layer, b.layer = "layer3", "layer4"
        >>> path = os.path.join(tempfile.mkdtemp(), "all.csv")
        >>> export_results([a, b], path, "tidy")
        >>> pd.read_csv(path)[["layer", "unit", "formula"]].values.tolist()
        [['layer3', 0, 'cat'], ['layer4', 0, 'dog']]
    """
    from .io import exports

    if isinstance(results, SearchResult):
        results = [results]
    results = list(results)
    for i, r in enumerate(results):
        if not isinstance(r, SearchResult):
            raise TypeError(f"results[{i}] is a {type(r).__name__}, not a SearchResult")
    inputs = [r.params.get(key) for r in results for key in ("acts_path", "concepts_path")]
    if format == "tally":
        inputs += [x for x in (acts, concepts) if isinstance(x, (str, os.PathLike))]
    # Before any work: the path (format, extension, directory, not an input).
    p = exports.check_export_path(path, format, inputs=inputs)
    if not results:
        raise ValueError("nothing to export: no results given")
    if format != "tally":
        if acts is not None or concepts is not None:
            raise ValueError(f"acts and concepts are used by the tally export only, not by "
                             f"{format!r}")
        layers = [exports.LayerExplanations(r.model, r.layer, list(r), r.params.get("names"))
                  for r in results]
        write = {"clip-dissect": exports.write_clip_dissect_csv, "tidy": exports.write_tidy,
                 "jsonl": exports.write_jsonl}[format]
        write(p, layers, inputs=inputs)
        return
    if len(results) != 1:
        raise ValueError(f"a tally.csv describes one layer: export one result, not "
                         f"{len(results)}")
    result = results[0]
    tally = result.best_single_concepts(acts, concepts, device=device)
    exports.write_tally_csv(p, list(result), tally, inputs=inputs)


def _category_tally(result: SearchResult, acts, cs, device: str, unit_batch_size: int):
    """The counts of :meth:`SearchResult.best_single_concepts`, from engine inputs."""
    from .engine.backends import get_backend
    from .engine.beam import metric_values, positive_int
    from .engine.units import check_activations, unit_batches
    from .io.exports import CategoryTally

    unit_batch_size = positive_int(unit_batch_size, "unit_batch_size")
    check_activations(acts, cs.n_samples, cs.grid)
    names = result.params.get("names")
    if names is not None and tuple(names) != cs.names:
        raise ValueError(f"the concept set is not the one the result was searched with: it has "
                         f"{cs.n_concepts} concepts ({', '.join(cs.names[:3])}, ...), the "
                         f"result records {len(names)} ({', '.join(map(str, names[:3]))}, ...)")
    n_units = acts.shape[1]
    ids = np.unique(np.asarray(result.units, np.int64))
    if ids.size and (ids[0] < 0 or ids[-1] >= n_units):
        raise ValueError(f"the result explains unit {int(ids[-1])} but acts has {n_units} "
                         f"units: these are not the result's activations")
    thresholds = None
    if np.dtype(acts.dtype) != bool:
        recorded = {e.unit: e.threshold for e in result}
        missing = [int(u) for u in ids if recorded[int(u)] is None]
        if missing:
            raise ValueError(f"the result records no threshold for unit {missing[0]} but acts "
                             f"are float activations: pass the bool unit masks the search used, "
                             f"or search again to record thresholds")
        thresholds = np.array([recorded[int(u)] for u in ids], np.float64)
    # Concepts by category, categories in order of first appearance.
    categories = tuple(dict.fromkeys(c or "uncategorized" for c in cs.categories))
    members = [np.array([j for j, c in enumerate(cs.categories)
                         if (c or "uncategorized") == cat], np.int64) for cat in categories]
    sizes = np.asarray(cs.sizes, np.int64)
    n, k = ids.size, len(categories)
    best = np.zeros((n, k), np.int64)
    unit_cells = np.zeros(n, np.int64)
    inter = np.zeros((n, k), np.int64)
    iou = np.zeros((n, k))
    backend = get_backend(device)
    index = backend.prepare(cs)
    for batch in unit_batches(ids, acts, unit_batch_size):
        pos = np.searchsorted(ids, batch)
        masks, size = backend.unit_masks(index, acts, batch, cs.grid,
                                         None if thresholds is None else thresholds[pos])
        counts = np.asarray(backend.primitive_counts(index, masks), np.int64)   # |U & C_j|
        size = np.asarray(size, np.int64)
        unit_cells[pos] = size
        for c, cols in enumerate(members):
            values = metric_values("iou", counts[:, cols], sizes[cols], size[:, None])
            j = np.argmax(values, axis=1)                   # the first concept on ties
            best[pos, c] = cols[j]
            inter[pos, c] = counts[np.arange(len(batch)), cols[j]]
            iou[pos, c] = values[np.arange(len(batch)), j]
    rows = np.searchsorted(ids, np.asarray(result.units, np.int64))
    return CategoryTally(
        categories=categories,
        labels=tuple(tuple(cs.names[j] for j in best[r]) for r in rows),
        truth=sizes[best[rows]],
        activation=np.repeat(unit_cells[rows, None], k, axis=1),
        intersect=inter[rows], iou=iou[rows])


def _text(f: Optional[Formula]) -> str:
    return "" if f is None else str(f)
