"""``compexp report RESULTS --images IMAGES``: the HTML report of a search (see
:mod:`compexp_core.report`). Without ``--images``, units on tokens: when the activations file
has a ``tokens`` group (or ``--tokens FILE`` is given), the token report
(:func:`compexp_core.report.write_token_report`). With several results files (one per layer),
or ``--names``, the reports of the layers and an index page across them
(:func:`compexp_core.report.write_layers_report`)."""
from __future__ import annotations

import argparse
import os
from typing import Any

from .args import Subcommand, add_index_option, broden_dataset, unit_list


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", nargs="+",
                        help="results file written by compexp search (.h5 or .csv); several "
                             "files (one per layer) write a report per layer and an index "
                             "page across them")
    parser.add_argument("--images", default=None,
                        help="the input images (units on images): a compexp-images file, or a "
                             "Broden directory (with index.csv, or --index)")
    parser.add_argument("--tokens", default=None,
                        help="units on tokens: a file with a tokens group (default: the "
                             "activations file's, when it has one)")
    add_index_option(parser)
    parser.add_argument("--acts", action="append", default=None,
                        help="activations file (default: the one recorded by compexp search); "
                             "with several results files, give it once per file, in order")
    parser.add_argument("--concepts", action="append", default=None,
                        help="concepts file (default: the one recorded by compexp search); "
                             "with several results files, once for all or once per file")
    parser.add_argument("-o", "--output", default="report",
                        help="output folder (default: ./report)")
    parser.add_argument("--lengths", default=None,
                        help="a second results file (a longer search, e.g. --length 10) for the "
                             "mean-IoU-by-length plot (default: RESULTS)")
    parser.add_argument("--top-images", type=int, default=6,
                        help="top activating images per unit (default 6)")
    parser.add_argument("--top-contexts", type=int, default=8,
                        help="token units: top activating tokens per unit (default 8)")
    parser.add_argument("--window", type=int, default=5,
                        help="token units: tokens shown either side of each (default 5)")
    parser.add_argument("--units", type=unit_list, default=None,
                        help="units to report, e.g. 0-9,15 (default: all)")
    parser.add_argument("--title", default=None, help="page title")
    parser.add_argument("--names", type=_name_list, default=None,
                        help="the layers' names, comma-separated, one per results file "
                             "(default: the layer each records, else the file's name)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="with several layers: the IoU at which the index counts a unit "
                             "in 'N of M units have IoU >= t' (default 0.04, Network "
                             "Dissection's)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _name_list(text: str) -> list[str]:
    """``--names a,b``: the comma-separated names, each non-empty."""
    names = [n.strip() for n in text.split(",")]
    if any(not n for n in names):
        raise argparse.ArgumentTypeError(f"an empty name in {text!r} (give names as a,b,c)")
    return names


def _recorded_path(given, path: str, result, key: str, option: str) -> str:
    """The ``--acts`` or ``--concepts`` given, else the path ``compexp search`` recorded."""
    if given is not None:
        return given
    from ..report.inputs import recorded_path

    return recorded_path(result, key, path, f"pass {option}")


def _one(values, option: str):
    """The value of an option given at most once (None when not given)."""
    if values is None:
        return None
    if len(values) > 1:
        raise ValueError(f"{option} is given {len(values)} times for one results file")
    return values[0]


def _images(args: argparse.Namespace) -> Any:
    """The --images path, or the Broden dataset of a Broden directory."""
    dataset = broden_dataset(args.images, args.index)
    return args.images if dataset is None else dataset


def run(args: argparse.Namespace) -> int:
    """Run ``compexp report``: write the report and print the path of its index page."""
    if len(args.results) > 1 or args.names is not None:
        return _run_layers(args)
    from ..results import load_results
    from ..report import write_report, write_token_report

    _check_kind(args)
    if args.threshold is not None:
        raise ValueError("--threshold is for the index across layers: give several results "
                         "files (or --names)")
    path = args.results[0]
    result = load_results(path)
    acts = _recorded_path(_one(args.acts, "--acts"), path, result, "acts", "--acts")
    concepts = _recorded_path(_one(args.concepts, "--concepts"), path, result, "concepts",
                              "--concepts")
    if args.images is None:
        index = write_token_report(result, args.output, tokens=_token_table(args, acts),
                                   acts=acts, concepts=concepts, top_contexts=args.top_contexts,
                                   window=args.window, lengths=args.lengths, units=args.units,
                                   title=args.title, progress=not args.no_progress)
        print(index)
        return 0
    images = _images(args)
    index = write_report(result, args.output, acts=acts, concepts=concepts, images=images,
                         lengths=args.lengths, top_images=args.top_images, units=args.units,
                         title=args.title, progress=not args.no_progress)
    print(index)
    return 0


def _check_kind(args: argparse.Namespace) -> None:
    """--images (units on images) and --tokens (units on tokens) exclude each other."""
    if args.images is not None and args.tokens is not None:
        raise ValueError("--images (units on images) and --tokens (units on tokens) exclude "
                         "each other: give one")


def _token_table(args: argparse.Namespace, acts: str):
    """The token table of --tokens, else of the activations file; a clear error when there is
    none (then the units are on images: --images is needed)."""
    from ..io.tokens import read_tokens

    path = args.tokens if args.tokens is not None else acts
    if not os.path.exists(path):
        raise FileNotFoundError(f"{'--tokens' if args.tokens else 'activations'} file does "
                                f"not exist: {path}")
    table = read_tokens(path)
    if table is None:
        where = (f"--tokens {path} has no tokens group" if args.tokens is not None else
                 f"no --images given, and the activations file {path} has no tokens group")
        raise ValueError(f"{where}: pass --images IMAGES for units on images, or --tokens "
                         f"FILE (a file with a tokens group) for units on tokens")
    return table


def _run_layers(args: argparse.Namespace) -> int:
    """``compexp report`` of several layers: their reports and the index across them."""
    from ..report import write_layers_report

    n = len(args.results)
    for option, value in (("--lengths", args.lengths), ("--units", args.units)):
        if value is not None:
            raise ValueError(f"{option} applies to one results file, not to a report of "
                             f"several layers")
    if args.acts is not None and len(args.acts) != n:
        raise ValueError(f"--acts is given {len(args.acts)} times for {n} results files: give "
                         f"it once per file, in order (or not at all)")
    concepts = args.concepts
    if concepts is not None and len(concepts) not in (1, n):
        raise ValueError(f"--concepts is given {len(concepts)} times for {n} results files: "
                         f"give it once for all, once per file, or not at all")
    if concepts is not None and len(concepts) == 1:
        concepts = concepts[0]
    if args.names is not None and len(args.names) != n:
        raise ValueError(f"--names has {len(args.names)} names for {n} results files: give "
                         f"one per file, in order")
    given = {} if args.threshold is None else {"threshold": args.threshold}
    _check_kind(args)
    images = None if args.images is None else _images(args)
    index = write_layers_report(args.results, args.output, images=images, tokens=args.tokens,
                                names=args.names, acts=args.acts, concepts=concepts,
                                top_images=args.top_images, top_contexts=args.top_contexts,
                                window=args.window, title=args.title,
                                progress=not args.no_progress, **given)
    print(index)
    return 0


COMMAND = Subcommand("report", "write an HTML report of explanations", add_arguments, run)
