"""``compexp convert-broden DIR OUT``: a Broden-format dataset to a concepts file (see
:mod:`compexp_core.broden`)."""
from __future__ import annotations

import argparse

from .args import Subcommand, grid_size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", help="Broden-format directory (index.csv, label.csv, "
                                          "category.csv, images/)")
    parser.add_argument("output", help="concepts HDF5 file to write")
    parser.add_argument("--categories", default=None,
                        help="comma-separated categories, e.g. color,object,part,scene "
                             "(default: every category column with data)")
    parser.add_argument("--index", default=None, metavar="FILE",
                        help="an index file to read instead of index.csv, with its columns, "
                             "e.g. index_ade20k.csv (relative to DIRECTORY, or a path)")
    parser.add_argument("--split", default=None, help="keep only this split (train, val)")
    parser.add_argument("--grid", type=grid_size, default=None,
                        help="mask grid H,W; label maps are resized with nearest neighbour "
                             "(default: the segmentation size)")
    parser.add_argument("--min-frequency", type=float, default=0,
                        help="drop labels whose label.csv frequency is below this")
    parser.add_argument("--compression", choices=["gzip", "lzf"], default=None,
                        help="compress the label maps in the output")
    parser.add_argument("--with-index", action="store_true",
                        help="also store the built concept index (faster loading)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run ``compexp convert-broden`` and print the summary."""
    from ..broden import convert_broden

    categories = None
    if args.categories is not None:
        categories = [c.strip() for c in args.categories.split(",") if c.strip()]
    summary = convert_broden(args.directory, args.output, categories=categories,
                             split=args.split, grid=args.grid,
                             min_frequency=args.min_frequency, compression=args.compression,
                             with_index=args.with_index, progress=not args.no_progress,
                             index=args.index)
    print(summary)
    return 0


COMMAND = Subcommand("convert-broden",
                     "convert a Broden-format dataset directory to a concepts file",
                     add_arguments, run)
