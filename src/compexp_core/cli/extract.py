"""``compexp extract MODEL IMAGES -o OUT --layer L``: a layer's activations over images (see
:mod:`compexp_core.extract`)."""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from .args import (Subcommand, add_index_option, add_weights_options, broden_dataset,
                   image_size, rgb_triple)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a TorchScript file, a torch.export .pt2 file, "
                                      "torchvision:NAME or timm:NAME (e.g. torchvision:resnet18; "
                                      "no weights unless --weights), or module:function / "
                                      "file.py:function that returns a torch.nn.Module")
    parser.add_argument("images", help="a compexp-images HDF5 file, or a Broden-format dataset "
                                       "directory (with index.csv, or --index)")
    add_weights_options(parser)
    add_index_option(parser)
    parser.add_argument("-o", "--output", required=True,
                        help="activations file to write; with several --layer it must contain "
                             "{layer}, e.g. acts_{layer}.h5")
    parser.add_argument("--layer", action="append", required=True, dest="layers",
                        help="module path of a layer (e.g. layer4 or layer4.1.conv2); repeat, "
                             "or separate with commas (layer3,layer4), for several layers")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    parser.add_argument("--float16", action="store_true", help="store float16 (default float32)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted extraction from its .partial file")
    parser.add_argument("--size", type=image_size, default=None,
                        help="resize images to H or H,W before the model (default: as stored)")
    # None: the datasets' own default, ImageNet's mean and std.
    parser.add_argument("--mean", type=rgb_triple, default=None,
                        help="per-channel mean R,G,B of images scaled to 0..1 (default ImageNet)")
    parser.add_argument("--std", type=rgb_triple, default=None,
                        help="per-channel std R,G,B (default ImageNet)")
    parser.add_argument("--workers", type=int, default=0,
                        help="data loading worker processes (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _open_dataset(images: str, args: argparse.Namespace) -> Any:
    normalise = {k: v for k, v in (("mean", args.mean), ("std", args.std)) if v is not None}
    dataset = broden_dataset(images, args.index, "IMAGES", size=args.size, **normalise)
    if dataset is not None:
        return dataset
    from ..extract import ImageDataset

    return ImageDataset(images, size=args.size, **normalise)


def run(args: argparse.Namespace) -> int:
    """Run ``compexp extract``; return the exit status (130 when interrupted)."""
    from ..extract import extract_activations, load_model
    from ..io import read_activations_metadata

    t0 = time.perf_counter()
    # "--layer layer3,layer4" and "--layer layer3 --layer layer4" name the same layers.
    layers = [layer for value in args.layers for layer in value.split(",")]
    dataset = _open_dataset(args.images, args)
    try:
        model = load_model(args.model, weights=args.weights, num_classes=args.num_classes)
    except ImportError as e:  # torchvision or timm is not installed: say so, no traceback
        raise RuntimeError(str(e)) from e
    model_name = args.model
    if args.weights is not None:
        model_name += f" (weights {os.path.abspath(args.weights)})"
    print(f"model: {model_name}; images: {args.images} ({len(dataset)} samples)")
    try:
        paths = extract_activations(
            model, dataset, layers, args.output, batch_size=args.batch_size,
            device=args.device, dtype="float16" if args.float16 else "float32",
            num_workers=args.workers, resume=args.resume, progress=not args.no_progress,
            model_name=model_name)
    except KeyboardInterrupt:
        print("compexp extract: interrupted; run the same command with --resume to continue",
              file=sys.stderr)
        return 130
    elapsed = time.perf_counter() - t0
    for path, layer in zip(paths, layers):
        meta = read_activations_metadata(path)
        print(f"wrote {path}: layer {layer}, shape {meta['shape']}, {meta['dtype']}")
    print(f"{len(dataset)} samples in {elapsed:.1f} s")
    return 0


COMMAND = Subcommand(
    "extract", "run a PyTorch model over images and write a layer's activations",
    add_arguments, run,
    description="Run a PyTorch model over images and write the activations of one or more "
                "layers to activations files (one per layer). An interrupted run continues "
                "with --resume.")
