"""Argument types and options that several subcommands share.

The types turn an option's text into a value or raise :class:`argparse.ArgumentTypeError`, which
argparse reports as ``compexp <command>: error: argument --x: <message>`` with exit status 2.
"""
from __future__ import annotations

import argparse
from typing import Callable, NamedTuple, Optional

__all__ = ["Subcommand", "unit_list", "positive_int", "image_size", "grid_size", "rgb_triple",
           "add_search_options", "search_kwargs"]


class Subcommand(NamedTuple):
    """A subcommand, as each subcommand module describes itself in ``COMMAND``."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]     # returns the exit status
    description: Optional[str] = None


def unit_list(text: str) -> list[int]:
    """Parse '0-9,15,20-22' into unit indices (``--units``)."""
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = part.split("-", 1)
                out.extend(range(int(lo), int(hi) + 1))
            elif part:
                out.append(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--units takes indices and ranges like 0-9,15; got "
                                         f"{text!r}")
    if not out:
        raise argparse.ArgumentTypeError("--units is empty")
    return out


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
    return values * 2 if len(values) == 1 else values


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
                device=args.device)
