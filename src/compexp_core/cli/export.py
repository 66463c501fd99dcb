"""``compexp export RESULT [RESULT ...] --format FORMAT -o OUT``: results in the files other
tools read (Network Dissection's ``tally.csv``, CLIP-Dissect's CSV, a tidy CSV or Parquet
table, JSON lines; ``docs/FORMAT.md`` §3.3)."""
from __future__ import annotations

import argparse

from .args import Subcommand

# The names of compexp_core.io.exports.EXPORT_FORMATS (not imported: the parser stays light).
FORMATS = ("tally", "clip-dissect", "tidy", "jsonl")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", nargs="+",
                   help="results files written by compexp search (.h5 or .csv); several go "
                        "into one file (not for tally)")
    p.add_argument("--format", required=True, choices=FORMATS,
                   help="tally: Network Dissection's tally.csv (.csv); clip-dissect: "
                        "layer,unit,description,similarity (.csv); tidy: one table (.csv or "
                        ".parquet); jsonl: one JSON object per unit with the parse tree (.jsonl)")
    p.add_argument("-o", "--output", required=True, help="output file")
    p.add_argument("--acts", default=None,
                   help="tally: the activations file (default: the one the result records)")
    p.add_argument("--concepts", default=None,
                   help="tally: the concepts file (default: the one the result records)")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"],
                   help="tally: the backend that counts (default cpu)")


def run(args: argparse.Namespace) -> int:
    """Run ``compexp export``: write the file and say what it holds."""
    from ..io.exports import check_export_path
    from ..results import export_results, load_results

    if args.format != "tally" and (args.acts is not None or args.concepts is not None):
        raise ValueError(f"--acts and --concepts are for --format tally, not {args.format}")
    try:
        # Before reading anything: the output must fit the format and not replace an input.
        given = [x for x in (args.acts, args.concepts) if x is not None]
        check_export_path(args.output, args.format, inputs=[*args.results, *given])
        results = [load_results(path) for path in args.results]
        export_results(results, args.output, args.format, acts=args.acts,
                       concepts=args.concepts, device=args.device)
    except ImportError as err:          # .parquet without pyarrow
        raise RuntimeError(str(err)) from None
    units = sum(len(r) for r in results)
    print(f"wrote {args.output} ({args.format}: {units} units from {len(results)} "
          f"result{'s' if len(results) > 1 else ''})")
    return 0


COMMAND = Subcommand("export", "write results in the formats other tools read "
                               "(tally.csv, CLIP-Dissect, tidy CSV/Parquet, jsonl)",
                     add_arguments, run)
