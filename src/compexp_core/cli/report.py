"""``compexp report RESULTS --images IMAGES``: the HTML report of a search (see
:mod:`compexp_core.report`)."""
from __future__ import annotations

import argparse
import os
from typing import Any

from .args import Subcommand, unit_list


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", help="results file written by compexp search (.h5 or .csv)")
    parser.add_argument("--images", required=True,
                        help="the input images: a compexp-images file, or a Broden directory "
                             "(with index.csv)")
    parser.add_argument("--acts", default=None,
                        help="activations file (default: the one recorded by compexp search)")
    parser.add_argument("--concepts", default=None,
                        help="concepts file (default: the one recorded by compexp search)")
    parser.add_argument("-o", "--output", default="report",
                        help="output folder (default: ./report)")
    parser.add_argument("--lengths", default=None,
                        help="a second results file (a longer search, e.g. --length 10) for the "
                             "mean-IoU-by-length plot (default: RESULTS)")
    parser.add_argument("--top-images", type=int, default=6,
                        help="top activating images per unit (default 6)")
    parser.add_argument("--units", type=unit_list, default=None,
                        help="units to report, e.g. 0-9,15 (default: all)")
    parser.add_argument("--title", default=None, help="page title")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _recorded_path(args: argparse.Namespace, result, key: str, option: str) -> str:
    """The ``--acts`` or ``--concepts`` given, else the path ``compexp search`` recorded."""
    given = getattr(args, key)
    if given is not None:
        return given
    recorded = result.params.get(f"{key}_path")
    if not recorded:
        raise ValueError(f"{args.results} does not record its {key} file: pass {option}")
    if not os.path.exists(recorded):
        raise FileNotFoundError(f"the {key} file recorded in {args.results} does not exist: "
                                f"{recorded} (pass {option})")
    return recorded


def run(args: argparse.Namespace) -> int:
    """Run ``compexp report``: write the report and print the path of its index page."""
    from ..results import load_results
    from ..report import write_report

    result = load_results(args.results)
    acts = _recorded_path(args, result, "acts", "--acts")
    concepts = _recorded_path(args, result, "concepts", "--concepts")
    images: Any = args.images
    if os.path.isdir(images):
        if not os.path.exists(os.path.join(images, "index.csv")):
            raise ValueError(f"--images {images} is a directory without index.csv (not a Broden "
                             f"directory); pass a compexp-images file or a Broden directory")
        from ..broden import BrodenDataset

        images = BrodenDataset(images)
    path = write_report(result, args.output, acts=acts, concepts=concepts, images=images,
                        lengths=args.lengths, top_images=args.top_images, units=args.units,
                        title=args.title, progress=not args.no_progress)
    print(path)
    return 0


COMMAND = Subcommand("report", "write an HTML report of explanations", add_arguments, run)
