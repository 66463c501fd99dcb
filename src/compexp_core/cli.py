"""The ``compexp`` command line: ``search``, ``info``, ``demo``, ``extract``, ``convert-broden``
and ``report``.

Subcommands that live with their feature (extraction, Broden conversion, the report) are
registered from their module's ``add_cli_arguments(parser)`` and run by its
``run_cli(args) -> int``; those modules import torch and other heavy packages only inside
their functions, so ``compexp --help`` stays fast."""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional, Sequence

__all__ = ["main"]


def _units_arg(text: str) -> list[int]:
    """Parse '0-9,15,20-22' into unit indices."""
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
        raise argparse.ArgumentTypeError(f"--units takes indices and ranges like 0-9,15; got {text!r}")
    if not out:
        raise argparse.ArgumentTypeError("--units is empty")
    return out


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _add_search_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--length", type=int, default=3, help="maximum formula length (default 3)")
    p.add_argument("--beam", type=int, default=5, help="beam size (default 5)")
    p.add_argument("--ops", default="or,and,and_not",
                   help="operators, comma-separated, among or,and,and_not,or_not")
    p.add_argument("--metric", default="iou", choices=["iou", "precision", "recall"])
    p.add_argument("--allow-repeats", action="store_true",
                   help="also form candidates that repeat a concept (as the reference code)")
    p.add_argument("--candidate-limit", type=int, default=None,
                   help="extend only with the K best single concepts")
    p.add_argument("--penalty", type=float, default=1.0, help="complexity penalty per extra leaf")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--top", type=int, default=15, help="rows in the summary table")


def _search_kwargs(args) -> dict:
    return dict(max_length=args.length, beam_size=args.beam,
                ops=tuple(o.strip() for o in args.ops.split(",") if o.strip()),
                metric=args.metric, allow_repeats=args.allow_repeats,
                candidate_limit=args.candidate_limit, complexity_penalty=args.penalty,
                device=args.device)


def _cmd_search(args) -> int:
    from .io import load_concepts, open_activations
    from .search import search_formulas

    t0 = time.perf_counter()
    concepts = load_concepts(args.concepts)
    acts = open_activations(args.acts)
    print(f"concepts: {concepts}")
    print(f"activations: {args.acts} {tuple(acts.shape)} {acts.dtype}")
    threshold = args.threshold
    result = search_formulas(acts, concepts, quantile=args.quantile, threshold=threshold,
                             units=args.units, progress=not args.no_progress,
                             **_search_kwargs(args))
    elapsed = time.perf_counter() - t0
    # Where the inputs were, so that `compexp report` finds them by default.
    result.params["acts_path"] = os.path.abspath(args.acts)
    result.params["concepts_path"] = os.path.abspath(args.concepts)
    result.save(args.output)
    print(result.summary(args.top))
    print(f"{len(result)} units in {elapsed:.2f} s ({1000 * elapsed / len(result):.1f} ms/unit); "
          f"wrote {args.output}")
    return 0


def _cmd_info(args) -> int:
    from .io import describe

    print(describe(args.file))
    return 0


def _cmd_demo(args) -> int:
    from .demo import DemoConfig, run_demo

    config = DemoConfig(train_images=args.train_images, eval_images=args.eval_images,
                        epochs=args.epochs)
    t0 = time.perf_counter()
    print(f"compexp demo: explaining a small CNN trained on a procedural image world "
          f"(files in {os.path.abspath(args.out)})")
    summary = run_demo(args.out, config, retrain=args.retrain, progress=not args.no_progress,
                       report=not args.no_report)
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return 0 if summary.n_units else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compexp", description="Explain neurons with logical formulas over concepts.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("search", help="search formulas for the units of an activations file")
    p.add_argument("acts", help="activations HDF5 file (see docs/FORMAT.md)")
    p.add_argument("concepts", help="concepts HDF5 file (see docs/FORMAT.md)")
    p.add_argument("-o", "--output", required=True, help="output file: .h5/.hdf5 or .csv")
    p.add_argument("--quantile", type=float, default=0.005,
                   help="fraction of each unit's activations above its threshold (default 0.005)")
    p.add_argument("--threshold", type=float, default=None,
                   help="one explicit activation threshold for all units (overrides --quantile)")
    p.add_argument("--units", type=_units_arg, default=None, help="units to explain, e.g. 0-9,15")
    _add_search_options(p)
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("info", help="describe an activations, concepts or results file")
    p.add_argument("file")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("demo", help="run the built-in example end to end: train a small CNN on "
                                    "a procedural world, explain its units, write a report")
    p.add_argument("--out", default="compexp-demo",
                   help="folder for the demo files (default: ./compexp-demo)")
    p.add_argument("--retrain", action="store_true",
                   help="train the CNN again even if cached weights exist")
    p.add_argument("--train-images", type=_positive, default=5000, help=argparse.SUPPRESS)
    p.add_argument("--eval-images", type=_positive, default=2000, help=argparse.SUPPRESS)
    p.add_argument("--epochs", type=_positive, default=6, help=argparse.SUPPRESS)
    p.add_argument("--no-report", action="store_true", help="skip the HTML report")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_demo)

    import importlib

    for name, module, help_text in _FEATURE_COMMANDS:
        mod = importlib.import_module(f".{module}", __package__)
        p = sub.add_parser(name, help=help_text)
        mod.add_cli_arguments(p)
        p.set_defaults(func=mod.run_cli)
    return parser


# (subcommand, module of compexp_core, help): registered by build_parser.
_FEATURE_COMMANDS = (
    ("extract", "extract", "run a PyTorch model over images and write a layer's activations"),
    ("convert-broden", "broden", "convert a Broden-format dataset directory to a concepts file"),
    ("report", "report", "write an HTML report of explanations"),
)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError, RuntimeError, KeyError) as err:
        # Users get the message that names the problem, not a traceback.
        print(f"compexp {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
