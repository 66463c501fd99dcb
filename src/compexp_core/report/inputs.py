"""The report's inputs: results, images and the checks that they fit the activations and the
concepts, with error messages that name each input."""
from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import numpy as np

from ..analysis import mean_iou_by_length
from ..engine.concepts import ConceptSet
from ..results import SearchResult, load_results

__all__ = ["is_path", "input_label", "as_result", "as_concepts", "recorded_path", "select_units",
           "unit_ranges", "length_means", "file_attr", "provenance", "Images", "check_inputs"]


def is_path(x: Any) -> bool:
    """Whether an input is given as a file path (rather than as an object)."""
    return isinstance(x, (str, os.PathLike))


def input_label(x: Any, what: str) -> str:
    """How an input is named in error messages: ``acts 'path'`` or ``acts (array)``."""
    if is_path(x):
        return f"{what} '{os.fspath(x)}'"
    file = getattr(getattr(x, "file", None), "filename", None)
    if file:
        return f"{what} (from '{file}')"
    return f"{what} ({type(x).__name__})"


def as_result(x: Any, what: str) -> SearchResult:
    """A result, or the result read from a path; TypeError naming ``what`` otherwise."""
    if is_path(x):
        return load_results(x)
    if not isinstance(x, SearchResult):
        raise TypeError(f"{what} must be a SearchResult or the path of a results file, got "
                        f"{type(x).__name__}")
    return x


def as_concepts(x: Any) -> ConceptSet:
    """A concept set, or the one read from a path; TypeError otherwise."""
    if is_path(x):
        from ..io import load_concepts

        return load_concepts(x)
    if not isinstance(x, ConceptSet):
        raise TypeError(f"concepts must be a ConceptSet or the path of a concepts file, got "
                        f"{type(x).__name__}")
    return x


def recorded_path(result: SearchResult, key: str, source: str, hint: str) -> str:
    """The path of the ``key`` input (``"acts"`` or ``"concepts"``) that ``compexp search``
    recorded in ``result.params[key + "_path"]``.

    Raises:
        ValueError: the result records none (``source`` names the result, ``hint`` says what to
            pass instead).
        FileNotFoundError: the recorded file does not exist.
    """
    recorded = result.params.get(f"{key}_path")
    if not recorded:
        raise ValueError(f"{source} does not record its {key} file: {hint}")
    if not os.path.exists(recorded):
        raise FileNotFoundError(f"the {key} file recorded in {source} does not exist: "
                                f"{recorded} ({hint})")
    return str(recorded)


def select_units(result: SearchResult, units: Optional[Sequence[int]]) -> list[int]:
    """The units to report: all of the result's (``units`` None) or those named, each of which
    must be in the result; ValueError when one is not, or when there are none."""
    if units is None:
        chosen = list(result.units)
    else:
        chosen = [int(u) for u in units]
        searched = set(result.units)
        missing = [u for u in chosen if u not in searched]
        if missing:
            raise ValueError(f"unit {missing[0]} is not in the result (it explains units "
                             f"{unit_ranges(result.units)})")
    if not chosen:
        raise ValueError("there are no units to report")
    return chosen


def unit_ranges(units: Sequence[int]) -> str:
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


def length_means(lengths: SearchResult, explicit: bool) -> Optional[np.ndarray]:
    """The mean score by maximum length of ``lengths`` (see
    :func:`compexp_core.analysis.mean_iou_by_length`), or None when it carries no per-length
    scores; that is a ValueError only when the caller passed ``lengths`` ``explicit``-ly."""
    try:
        return mean_iou_by_length(lengths)
    except ValueError:
        if explicit:
            raise ValueError("lengths: the result carries no per-length IoUs (by_length); "
                             "it was written by an older version: search again") from None
        return None


def file_attr(acts, key: str) -> Optional[str]:
    """An attribute of the file an activations dataset belongs to (``model``, ``layer``...),
    as text, or None."""
    attrs = getattr(getattr(acts, "file", None), "attrs", None)
    if attrs is None or key not in attrs:
        return None
    value = attrs[key]
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def provenance(acts) -> str:
    """"model M · layer L · dataset D" from the activations file's attributes ("" if none)."""
    parts = [f"{k} {v}" for k in ("model", "layer", "dataset") if (v := file_attr(acts, k))]
    return " \u00b7 ".join(parts)


class Images:
    """Uniform access to the images: ``len``, ``get(i) -> uint8 [H, W, 3]``, optional names."""

    def __init__(self, images: Any) -> None:
        if type(images).__module__.startswith("h5py"):
            from ..io._h5 import check_open

            check_open(images, "images")
        self.label = input_label(images, "images")
        self.names: Optional[list[str]] = None
        self._close = None
        if is_path(images):
            from ..io import open_images, read_images_metadata

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


def check_inputs(result, acts, concepts, images: Images, units: Sequence[int],
                  labels: dict) -> None:
    """Raise ValueError naming the inputs when they do not fit together."""
    n_acts, n_units = int(acts.shape[0]), int(acts.shape[1])
    if n_acts != concepts.n_samples:
        raise ValueError(f"{labels['acts']} has N={n_acts} samples but {labels['concepts']} has "
                         f"N={concepts.n_samples}: they must describe the same inputs")
    if len(images) != n_acts:
        raise ValueError(f"{images.label} has N={len(images)} images but {labels['acts']} has "
                         f"N={n_acts} samples: they must describe the same inputs, in order")
    check_units(units, [result.by_unit(u) for u in units], n_units, concepts, labels)


def check_units(units: Sequence[int], explanations: Sequence, n_units: int, concepts,
                labels: dict) -> None:
    """Raise ValueError when a unit of the results is not in the activations (``n_units``) or
    its formula names a concept the concept set lacks (every report checks this)."""
    known = set(concepts.names)
    for u, e in zip(units, explanations):
        if not 0 <= u < n_units:
            raise ValueError(f"unit {u} of the results is not in {labels['acts']} (it has "
                             f"{n_units} units): are these the activations the search used?")
        for f in (e.formula, e.primitive):
            missing = [] if f is None else [c for c in f.leaves() if c not in known]
            if missing:
                raise ValueError(f"the formula {str(f)!r} of unit {u} names the concept "
                                 f"{missing[0]!r}, which is not in {labels['concepts']}: are "
                                 f"these the concepts the search used?")
