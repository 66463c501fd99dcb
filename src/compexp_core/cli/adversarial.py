"""``compexp adversarial MODEL RESULTS --images IMAGES --layer L``: copy-paste edits read
from the explanations of a user's own model, measured against frequency-matched controls (see
:mod:`compexp_core.adversarial`).

Vision: the images (a compexp-images file or a Broden directory) are both the inputs that are
edited and, with their segmentations (the concepts file the search used), the source of the
pasted regions. Writes ``contributions.csv`` and ``adversarial.csv`` into the output folder and
prints the headline.

Sentence pairs (``--snli PAIRS``): MODEL is an NLI classifier checkpoint as
:func:`compexp_core.nli.model.load_or_train_nli` writes it, PAIRS the SNLI pairs the search
used (in order); the words the explanations ask for are inserted into hypotheses, and the
contributions are the read-out weights of the probed layer.
"""
from __future__ import annotations

import argparse
import os

from .args import (Subcommand, add_index_option, add_weights_options, broden_dataset,
                   image_size, positive_int, rgb_triple)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a TorchScript file, a torch.export .pt2 file, "
                                 "torchvision:NAME or timm:NAME (with --weights), or "
                                 "module:function / file.py:function returning the model "
                                 "(its output: logits [B, K]); with --snli, an NLI classifier "
                                 "checkpoint (.pt, as compexp demo nli caches it)")
    p.add_argument("results", help="the explanations of the layer (compexp search output)")
    p.add_argument("--images", default=None,
                   help="the images the search used: a compexp-images file or a Broden "
                        "directory (with index.csv, or --index); vision only, required there")
    add_index_option(p)
    add_weights_options(p)
    p.add_argument("--layer", default=None,
                   help="module path of the layer the results explain (e.g. layer4); vision "
                        "only, required there")
    p.add_argument("--snli", default=None,
                   help="sentence pairs instead of images: the SNLI pairs the search used, in "
                        "order (a folder or file read_snli reads); MODEL is then an NLI "
                        "checkpoint and the layer is its probed layer (mlp.relu)")
    p.add_argument("--concepts", default=None,
                   help="the concepts file the search used (its segmentations supply the "
                        "pasted regions; default: the one recorded in RESULTS)")
    p.add_argument("-o", "--output", default="adversarial",
                   help="output folder for contributions.csv and adversarial.csv "
                        "(default ./adversarial)")
    p.add_argument("--target", action="append", default=None,
                   help="target class (name or index); repeat for several (default: the 3 "
                        "classes whose top unit contributes most)")
    p.add_argument("--class-names", default=None,
                   help="a text file with one class name per line, in output order (default: "
                        "the images file's label names when they match, else indices)")
    p.add_argument("--max-images", type=positive_int, default=1000,
                   help="images loaded as inputs to edit (the first ones; default 1000)")
    p.add_argument("--contribution-images", type=positive_int, default=200,
                   help="images the gradient x activation contributions average over "
                        "(default 200)")
    p.add_argument("--n-inputs", type=positive_int, default=200,
                   help="images (or pairs) edited per edit (default 200)")
    p.add_argument("--top-units", type=positive_int, default=5)
    p.add_argument("--max-edits", type=positive_int, default=2)
    p.add_argument("--size", type=image_size, default=None,
                   help="resize images to H or H,W (needed when a Broden directory's images "
                        "differ in size)")
    p.add_argument("--mean", type=rgb_triple, default=(0.485, 0.456, 0.406),
                   help="per-channel mean R,G,B of images scaled to 0..1 (default ImageNet)")
    p.add_argument("--std", type=rgb_triple, default=(0.229, 0.224, 0.225),
                   help="per-channel std R,G,B (default ImageNet)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--seed", type=int, default=0)


def _class_names(args: argparse.Namespace, label_names, k: int) -> list:
    if args.class_names:
        if not os.path.isfile(args.class_names):
            raise FileNotFoundError(f"--class-names file not found: {args.class_names}")
        with open(args.class_names, encoding="utf-8") as fh:
            names = [line.strip() for line in fh if line.strip()]
        if len(names) != k:
            raise ValueError(f"--class-names {args.class_names} has {len(names)} names but the "
                             f"model has K={k} outputs")
        return names
    if label_names is not None and len(label_names) == k:
        return list(label_names)
    return [str(j) for j in range(k)]


def _images(args: argparse.Namespace):
    """(source with raw_image and len, label names or None)."""
    import numpy as np

    dataset = broden_dataset(args.images, args.index, size=args.size)
    if dataset is not None:
        return dataset, None
    from ..io import open_images, read_images_metadata

    meta = read_images_metadata(args.images)
    ds = open_images(args.images)
    try:
        array = np.asarray(ds[:])
    finally:
        ds.file.close()
    if args.size is not None and tuple(array.shape[1:3]) != tuple(args.size):
        from PIL import Image

        array = np.stack([np.asarray(Image.fromarray(a).resize((args.size[1], args.size[0]),
                                                               Image.BILINEAR)) for a in array])
    return array, meta["label_names"]


def _run_nli(args: argparse.Namespace) -> int:
    """The sentence-pair path of ``compexp adversarial`` (``--snli``)."""
    from ..adversarial import run_experiment, save_tables
    from ..analysis import contribution_table, unit_class_weights
    from ..io import load_concepts
    from ..nli.concepts import sentence_concepts
    from ..nli.data import LABELS, read_snli
    from ..nli.demo import nli_headline
    from ..nli.model import (HypothesisInsert, load_nli_checkpoint, pair_classifier, predict,
                             readout_weight)
    from ..results import load_results

    if args.images is not None or args.layer is not None:
        raise ValueError("--snli takes neither --images nor --layer (the layer is the NLI "
                         "model's probed layer, mlp.relu)")
    image_only = [flag for flag, value in (("--index", args.index), ("--weights", args.weights),
                                           ("--num-classes", args.num_classes))
                  if value is not None]
    if image_only:
        raise ValueError(f"--snli does not take {', '.join(image_only)} (MODEL is an NLI "
                         f"checkpoint as compexp demo nli caches it)")
    result = load_results(args.results)
    model, vocab = load_nli_checkpoint(args.model)
    pairs = read_snli(args.snli)
    concepts_path = args.concepts or result.params.get("concepts_path")
    concepts = None
    if concepts_path and os.path.exists(concepts_path):
        concepts = load_concepts(concepts_path)
        if concepts.n_samples != len(pairs):
            print(f"note: {concepts_path} describes {concepts.n_samples} pairs but --snli "
                  f"{args.snli} has {len(pairs)}: word frequencies are counted on the given "
                  f"pairs instead")
            concepts = None
    elif args.concepts:
        raise FileNotFoundError(f"concepts file not found: {args.concepts}")
    if concepts is None:
        concepts = sentence_concepts(pairs, tags=False)
    n = min(len(pairs), args.max_images)
    pairs = pairs.subset(list(range(n)))
    weight = readout_weight(model)
    if weight.shape[1] != len(result):
        raise ValueError(f"{args.results} explains {len(result)} units but the model's probed "
                         f"layer has {weight.shape[1]}: they must belong together")
    contributions = unit_class_weights(weight)
    table = contribution_table(result, contributions, LABELS)
    predictions, _ = predict(model, vocab, pairs)
    targets = None
    if args.target:
        targets = [int(t) if t.isdigit() else t for t in args.target]
    os.makedirs(args.output, exist_ok=True)
    outcomes = run_experiment(pair_classifier(model, vocab),
                              list(zip(pairs.premises, pairs.hypotheses)), result, contributions,
                              HypothesisInsert(concepts), class_names=LABELS, targets=targets,
                              top_units=args.top_units, max_edits=args.max_edits,
                              max_inputs=args.n_inputs, seed=args.seed, predictions=predictions)
    for path in save_tables(args.output, table, outcomes):
        print(f"wrote {path}")
    for line in nli_headline(outcomes):
        print(line)
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``compexp adversarial``; print the headline and the files written."""
    import numpy as np

    if args.snli is not None:
        return _run_nli(args)
    missing = [flag for flag, value in (("--images", args.images), ("--layer", args.layer))
               if value is None]
    if missing:
        raise ValueError(f"compexp adversarial needs {' and '.join(missing)} for images (or "
                         f"--snli for sentence pairs)")

    from ..adversarial import (RegionPaste, headline, image_tensor, run_experiment,
                               save_tables, torch_classifier)
    from ..analysis import contribution_table, gradient_contributions
    from ..extract import load_model
    from ..io import load_concepts
    from ..results import load_results

    result = load_results(args.results)
    concepts_path = args.concepts or result.params.get("concepts_path")
    if not concepts_path:
        raise ValueError(f"{args.results} does not record its concepts file: pass --concepts")
    if not os.path.exists(concepts_path):
        raise FileNotFoundError(f"concepts file not found: {concepts_path} (pass --concepts)")
    concepts = load_concepts(concepts_path)
    source, label_names = _images(args)
    if len(source) != concepts.n_samples:
        raise ValueError(f"--images {args.images} has {len(source)} images but the concepts "
                         f"file {concepts_path} describes {concepts.n_samples}: they must be "
                         f"the inputs the search used, in order")
    n = min(len(source), args.max_images)
    inputs = source[:n] if hasattr(source, "shape") else np.stack(
        [source.raw_image(i) for i in range(n)])
    try:
        model = load_model(args.model, weights=args.weights, num_classes=args.num_classes)
    except ImportError as e:  # torchvision or timm is not installed: say so, no traceback
        raise RuntimeError(str(e)) from e
    classify = torch_classifier(model, mean=args.mean, std=args.std, device=args.device)
    x = image_tensor(inputs[:args.contribution_images], mean=args.mean, std=args.std)
    contributions = gradient_contributions(model, x, args.layer, device=args.device)
    names = _class_names(args, label_names, contributions.shape[1])
    predictions = np.concatenate([classify(inputs[i:i + 256]) for i in range(0, n, 256)])
    os.makedirs(args.output, exist_ok=True)
    table = contribution_table(result, contributions, names)
    targets = None
    if args.target:
        targets = [int(t) if t.isdigit() and t not in names else t for t in args.target]
    renderer = RegionPaste(concepts, source, seed=args.seed)
    outcomes = run_experiment(classify, inputs, result, contributions, renderer,
                              class_names=names, targets=targets, top_units=args.top_units,
                              max_edits=args.max_edits, max_inputs=args.n_inputs,
                              seed=args.seed, predictions=predictions)
    for path in save_tables(args.output, table, outcomes):
        print(f"wrote {path}")
    for line in headline(outcomes, adding="pasting"):
        print(line)
    return 0


COMMAND = Subcommand(
    "adversarial", "copy-paste edits read from explanations, against frequency-matched controls",
    add_arguments, run,
    description="For a target class, paste the concepts that the explanations of its most "
                "contributing units ask for into images predicted as other classes, and measure "
                "how many move to the target against frequency-matched control concepts.")
