"""Argument types and options that several subcommands share.

The types turn an option's text into a value or raise :class:`argparse.ArgumentTypeError`, which
argparse reports as ``compexp <command>: error: argument --x: <message>`` with exit status 2.
"""
from __future__ import annotations

import argparse
import operator
from typing import Callable, Iterator, NamedTuple, Optional, Sequence

__all__ = ["Subcommand", "UnitSelection", "MAX_UNITS", "unit_list", "positive_int", "image_size",
           "grid_size", "rgb_triple", "add_search_options", "search_kwargs"]


class Subcommand(NamedTuple):
    """A subcommand, as each subcommand module describes itself in ``COMMAND``."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]     # returns the exit status
    description: Optional[str] = None


#: The most unit indices one ``--units`` may name (far more than any layer has units): a
#: larger selection, such as ``0-999999999999``, is refused when the option is parsed.
MAX_UNITS = 1 << 24
_MAX_INDEX = 2 ** 63 - 1
#: The most pixels per image ``--size`` may ask for (8192x8192; the same bound as
#: ``compexp_core.broden.MAX_GRID_CELLS``, not imported here to keep the parser light).
MAX_IMAGE_PIXELS = 1 << 26


class UnitSelection(Sequence[int]):
    """The unit indices of a ``--units`` option, kept as ranges: nothing is materialised until
    the indices are used (iteration, indexing, ``np.asarray``), and :meth:`resolve` checks them
    against the activations' unit count before it builds an array.

    Examples:
        >>> units = unit_list("0-3,7")
        >>> len(units), list(units), units == [0, 1, 2, 3, 7], units[-1]
        (5, [0, 1, 2, 3, 7], True, 7)
        >>> units.resolve(5)
        Traceback (most recent call last):
        ...
        ValueError: --units 0-3,7 names unit 7, but the activations have 5 units (0-4)
    """

    def __init__(self, ranges: Sequence[tuple], text: str = "") -> None:
        self.ranges = tuple((int(lo), int(hi)) for lo, hi in ranges)   # [lo, hi) each
        self.text = text or ",".join(f"{lo}" if hi == lo + 1 else f"{lo}-{hi - 1}"
                                     for lo, hi in self.ranges)

    def __len__(self) -> int:
        return sum(hi - lo for lo, hi in self.ranges)

    def __iter__(self) -> Iterator[int]:
        for lo, hi in self.ranges:
            yield from range(lo, hi)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        i = operator.index(i)
        if not -n <= i < n:
            raise IndexError(f"unit selection index {i} out of range for {n} units")
        i %= n
        for lo, hi in self.ranges:
            if i < hi - lo:
                return lo + i
            i -= hi - lo
        raise AssertionError("unreachable")

    def __eq__(self, other) -> bool:
        if isinstance(other, UnitSelection):
            return list(self._runs()) == list(other._runs())
        try:
            return len(other) == len(self) and all(a == b for a, b in zip(self, other))
        except TypeError:
            return NotImplemented

    __hash__ = None     # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"UnitSelection({self.text!r})"

    def _runs(self):
        return ((lo, hi) for lo, hi in self.ranges if hi > lo)

    def max(self) -> int:
        """The largest index (without materialising the selection)."""
        return max(hi - 1 for lo, hi in self._runs())

    def __array__(self, dtype=None, copy=None):
        import numpy as np

        out = np.concatenate([np.arange(lo, hi, dtype=np.int64) for lo, hi in self.ranges])
        return out if dtype is None else out.astype(dtype)

    def resolve(self, n_units: int):
        """The indices as an int64 array, after checking (before building it) that every one
        is below ``n_units``.

        Raises:
            ValueError: an index ``>= n_units``, naming it and the unit count.
        """
        import numpy as np

        top = self.max()
        if top >= n_units:
            raise ValueError(f"--units {self.text} names unit {top}, but the activations have "
                             f"{n_units} units (0-{n_units - 1})")
        return np.asarray(self)


def _index(text: str, option_text: str) -> int:
    t = text.strip()
    if not (t.isascii() and t.isdigit()):
        raise argparse.ArgumentTypeError(f"--units takes indices and ranges like 0-9,15; got "
                                         f"{option_text!r}")
    if len(t.lstrip("0")) > 19 or int(t) > _MAX_INDEX:
        raise argparse.ArgumentTypeError(f"--units: {t[:20]}{'...' if len(t) > 20 else ''} is "
                                         f"not a unit index (too large)")
    return int(t)


def unit_list(text: str) -> UnitSelection:
    """Parse '0-9,15,20-22' into a :class:`UnitSelection` (``--units``), lazily: a range is
    kept as its two ends. Refused here: malformed text, ranges that run backwards, and more
    than :data:`MAX_UNITS` indices in all (such as ``0-999999999999``)."""
    ranges = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo_text, hi_text = part.split("-", 1)
            lo, hi = _index(lo_text, text), _index(hi_text, text)
            if hi < lo:
                raise argparse.ArgumentTypeError(f"--units: the range {part} runs backwards "
                                                 f"(write {hi}-{lo})")
        else:
            lo = hi = _index(part, text)
        ranges.append((lo, hi + 1))
    if not ranges:
        raise argparse.ArgumentTypeError("--units is empty")
    count = sum(hi - lo for lo, hi in ranges)
    if count > MAX_UNITS:
        raise argparse.ArgumentTypeError(f"--units {text} names {count:,} units, more than the "
                                         f"{MAX_UNITS:,} one selection may name; name the units "
                                         f"the activations have (leave --units out for all)")
    return UnitSelection(ranges, text.strip())


def positive_int(text: str) -> int:
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def image_size(text: str) -> tuple:
    """An image size ``H`` or ``H,W`` (``--size``) -> ``(H, W)``."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) not in (1, 2) or min(values) < 1:
        raise argparse.ArgumentTypeError(f"--size takes H or H,W (positive integers), got "
                                         f"{text!r}")
    values = values * 2 if len(values) == 1 else values
    if values[0] * values[1] > MAX_IMAGE_PIXELS:
        raise argparse.ArgumentTypeError(f"--size {values[0]},{values[1]} has "
                                         f"{values[0] * values[1]:,} pixels per image, more "
                                         f"than the {MAX_IMAGE_PIXELS:,} allowed")
    return values


def grid_size(text: str) -> tuple:
    """A mask grid ``H,W``, ``HxW`` or one size (``--grid``) -> ``(H, W)``."""
    try:
        parts = [int(p) for p in text.replace("x", ",").split(",") if p.strip()]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"--grid takes H,W (or one size), e.g. 112,112; got "
                                         f"{text!r}")
    return tuple(parts)


def rgb_triple(text: str) -> tuple:
    """Three comma-separated numbers, one per RGB channel."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected 3 comma-separated numbers (R,G,B), got "
                                         f"{text!r}")
    return values


def add_search_options(p: argparse.ArgumentParser) -> None:
    """The beam search's options (read back with :func:`search_kwargs`) and ``--top``."""
    p.add_argument("--length", type=int, default=3, help="maximum formula length (default 3)")
    p.add_argument("--beam", type=int, default=5, help="beam size (default 5)")
    p.add_argument("--ops", default="or,and,and_not",
                   help="operators, comma-separated, among or,and,and_not,or_not")
    p.add_argument("--metric", default="iou", choices=["iou", "precision", "recall"])
    p.add_argument("--allow-repeats", action="store_true",
                   help="also form candidates that repeat a concept (as the reference code)")
    p.add_argument("--candidate-limit", type=int, default=None,
                   help="extend only with the K best single concepts")
    p.add_argument("--penalty", type=float, default=1.0,
                   help="complexity penalty: scores are multiplied by PENALTY ** (length - 1) "
                        "(default 1; below 1 favours shorter formulas)")
    p.add_argument("--semantics", default="default",
                   choices=["default", "reference-vision", "reference-nli"],
                   help="default (DESIGN.md) or an exact reproduction of the reference code's "
                        "vision / NLI search")
    p.add_argument("--min-firing", type=int, default=0,
                   help="skip units firing on fewer cells than this (default 0)")
    p.add_argument("--optimal", action="store_true",
                   help="prove each unit's formula optimal by branch and bound over every "
                        "formula of the same grammar (seeded with the beam's answer; "
                        "default semantics only); the summary says how many beam "
                        "explanations were suboptimal")
    p.add_argument("--node-budget", type=positive_int, default=None,
                   help="with --optimal: most prefixes expanded per unit (then the best found "
                        "and a proven upper bound are reported)")
    p.add_argument("--time-budget", type=float, default=None,
                   help="with --optimal: most seconds of branch and bound per unit")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--top", type=int, default=15, help="rows in the summary table")


def search_kwargs(args: argparse.Namespace) -> dict:
    """The keyword arguments of :func:`~compexp_core.search_formulas` given by the options of
    :func:`add_search_options`."""
    return dict(max_length=args.length, beam_size=args.beam,
                ops=tuple(o.strip() for o in args.ops.split(",") if o.strip()),
                metric=args.metric, allow_repeats=args.allow_repeats,
                candidate_limit=args.candidate_limit, complexity_penalty=args.penalty,
                semantics=args.semantics, min_firing=args.min_firing, device=args.device,
                method="optimal" if args.optimal else "beam", node_budget=args.node_budget,
                time_budget=args.time_budget)


def add_index_option(p: argparse.ArgumentParser) -> None:
    """``--index FILE``: a Broden directory's subset index (the same one for every command)."""
    p.add_argument("--index", default=None, metavar="FILE",
                   help="for a Broden directory: an index file to read instead of index.csv, "
                        "e.g. index_ade20k.csv (use the same one with convert-broden, extract, "
                        "report and adversarial, so that samples line up)")


def add_weights_options(p: argparse.ArgumentParser) -> None:
    """``--weights FILE`` and ``--num-classes N`` for models built from code or a package."""
    p.add_argument("--weights", default=None, metavar="FILE",
                   help="a checkpoint to load into a torchvision:/timm:/module:function model: "
                        "a state dict, or {'state_dict': ...} as the Places365 models ship (a "
                        "'module.' prefix is removed); read with torch.load(weights_only=True)")
    p.add_argument("--num-classes", type=positive_int, default=None,
                   help="outputs of the model's final layer (default: the checkpoint's, e.g. "
                        "365 for resnet18_places365.pth.tar, else the model's own)")


def broden_dataset(images: str, index: Optional[str], option: str = "--images", **kwargs):
    """The Broden dataset of the directory ``images`` (read through ``index`` when given), or
    None when ``images`` is not a directory (a compexp-images file). ``kwargs`` go to
    :class:`~compexp_core.broden.BrodenDataset` (size, mean, std)."""
    import os

    if not os.path.isdir(images):
        if index is not None:
            raise ValueError(f"--index applies to a Broden directory, but {option} '{images}' "
                             f"is not a directory")
        return None
    if index is None and not os.path.isfile(os.path.join(images, "index.csv")):
        raise ValueError(f"{option} '{images}' is a directory without index.csv: give a "
                         f"compexp-images HDF5 file or a Broden-format dataset directory (or "
                         f"its index file with --index)")
    from ..broden import BrodenDataset

    return BrodenDataset(images, index=index, **kwargs)
