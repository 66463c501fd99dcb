"""The built-in example: explain the units of a small CNN trained on a procedural world.

``compexp demo`` runs the paper's whole vision pipeline with no download:

1. generate the world (:mod:`compexp_core.world`): images with exact segmentations;
2. train a small CNN on the CPU to name the colour and shape of the largest shape and the
   scene (weights cached after the first run);
3. extract its last convolutional layer (:mod:`compexp_core.extract`);
4. build the concept set from the world's segmentations;
5. search formulas (length 3, and length 10 for the length curve), correlate explanation
   IoU with accuracy;
6. measure each unit's contribution to each class (mean gradient x activation) and run the
   copy-paste experiment (:mod:`compexp_core.adversarial`): paste the concepts that the
   explanations of a class's top units ask for into images predicted as other classes, against
   frequency-matched controls;
7. write the HTML report (with its contributions page).

The findings are the trained network's own, not planted.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import numpy as np

from ._optional import require
from .world import COLORS, SCENES, SHAPES, make_world, task_class_names, write_world_files

__all__ = ["DemoConfig", "build_demo_model", "train_demo_model", "load_or_train",
           "run_demo", "cache_dir"]

LAYER = "block4"          # the layer the demo explains
# Input normalisation of the demo CNN (ImageNet's, as extraction's default).
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the example. The defaults take a few minutes on 2 cores."""
    train_images: int = 5000
    eval_images: int = 2000
    image_size: int = 64
    epochs: int = 6
    batch_size: int = 64
    learning_rate: float = 3e-3
    seed: int = 0

    def key(self) -> str:
        """Cache key of the trained weights: everything that changes them."""
        text = json.dumps({**asdict(self), "eval_images": None, "model": _MODEL_VERSION},
                          sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


_MODEL_VERSION = 1


def build_demo_model():
    """The demo CNN: four 3x3 conv blocks (24, 48, 64, 96 channels; BatchNorm, ReLU; two
    2x2 max-pools), global max pooling and two linear heads (30 shape-colour classes and 5
    scenes). Its ``block4`` output is ``[N, 96, S/4, S/4]``."""
    import torch
    from torch import nn

    def block(cin, cout, pool):
        layers = [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
        if pool:
            layers.append(nn.MaxPool2d(2))
        return nn.Sequential(*layers)

    class DemoNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.block1 = block(3, 24, True)
            self.block2 = block(24, 48, True)
            self.block3 = block(48, 64, False)
            self.block4 = block(64, 96, False)
            self.target_head = nn.Linear(96, len(COLORS) * len(SHAPES))
            self.scene_head = nn.Linear(96, len(SCENES))

        def forward(self, x):
            h = self.block4(self.block3(self.block2(self.block1(x))))
            pooled = torch.amax(h, dim=(2, 3))
            return torch.cat([self.target_head(pooled), self.scene_head(pooled)], dim=1)

    return DemoNet()


def _to_tensor(images: np.ndarray):
    import torch

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _split_logits(logits):
    n_target = len(COLORS) * len(SHAPES)
    return logits[:, :n_target], logits[:, n_target:]


def train_demo_model(config: DemoConfig, log: Callable[[str], None] = print):
    """Train the demo CNN on a freshly generated training world. Returns the model (eval
    mode) and the final training accuracy on the shape-colour task."""
    import torch
    from torch import nn

    torch.manual_seed(config.seed)
    world = make_world(config.train_images, size=config.image_size, seed=config.seed + 1000)
    x = _to_tensor(world.images)
    target = torch.from_numpy(world.target)
    scene = torch.from_numpy(world.scene)
    model = build_demo_model()
    steps = config.epochs * -(-len(world) // config.batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.learning_rate,
                                                total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(config.seed)
    acc = 0.0
    for epoch in range(config.epochs):
        model.train()
        order = torch.randperm(len(world), generator=gen)
        correct = total = 0
        t0 = time.perf_counter()
        for s in range(0, len(world), config.batch_size):
            idx = order[s:s + config.batch_size]
            out_target, out_scene = _split_logits(model(x[idx]))
            loss = loss_fn(out_target, target[idx]) + loss_fn(out_scene, scene[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            correct += int((out_target.argmax(1) == target[idx]).sum())
            total += idx.numel()
        acc = correct / total
        log(f"  epoch {epoch + 1}/{config.epochs}: loss {loss.item():.3f}, training accuracy "
            f"{acc:.3f} ({time.perf_counter() - t0:.1f} s)")
    model.eval()
    return model, acc


def cache_dir() -> str:
    """Where trained demo weights are kept: ``$COMPEXP_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/compexp-core``, else ``~/.cache/compexp-core``."""
    if os.environ.get("COMPEXP_CACHE_DIR"):
        return os.environ["COMPEXP_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "compexp-core")


def load_or_train(config: DemoConfig, *, retrain: bool = False,
                  log: Callable[[str], None] = print):
    """The trained demo model: from the cache when there, else trained and cached.

    A cached file that cannot be loaded (truncated, garbage, another model's weights) is not
    fatal: ``log`` names the file and why, and the model is trained again and re-cached. The
    cache is written atomically (a temporary file in the cache folder, flushed, then renamed
    over the old one), so an interrupted save leaves no corrupt file; a cache folder that
    cannot be written is reported through ``log`` and the trained model is still returned.
    """
    import torch

    path = os.path.join(cache_dir(), f"demo-cnn-{config.key()}.pt")
    model = build_demo_model()
    if not retrain and os.path.exists(path):
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            model.eval()
            log(f"loaded the trained CNN from {path}")
            return model
        except Exception as err:   # noqa: BLE001 - any unreadable cache means: train again
            reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
            log(f"the cached weights {path} are unreadable ({type(err).__name__}"
                f"{': ' + reason[:200] if reason else ''}); training the CNN again and "
                f"replacing the file")
            model = build_demo_model()      # a failed load may have left some weights set
    log(f"training the CNN on {config.train_images} images ({config.epochs} epochs, CPU)")
    model, _ = train_demo_model(config, log=log)
    try:
        _save_atomically(torch, model.state_dict(), path)
    except OSError as err:
        log(f"could not cache the weights in {path} ({err}); they will be trained again next "
            f"time")
    else:
        log(f"cached the weights in {path}")
    return model


def _save_atomically(torch, state: dict, path: str) -> None:
    """torch.save to a temporary file beside ``path``, flushed to disk, then renamed over it."""
    import tempfile

    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def predict(model, images: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The model's shape-colour class and scene for each image."""
    import torch

    target, scene = [], []
    with torch.no_grad():
        for s in range(0, images.shape[0], batch_size):
            out_target, out_scene = _split_logits(model(_to_tensor(images[s:s + batch_size])))
            target.append(out_target.argmax(1).numpy())
            scene.append(out_scene.argmax(1).numpy())
    return np.concatenate(target), np.concatenate(scene)


@dataclass
class DemoSummary:
    """What the demo found and where it wrote it."""
    out_dir: str
    report: Optional[str]
    accuracy: float
    n_units: int
    n_compositional: int          # units whose formula clearly beats their best single concept
    mean_iou_by_length: np.ndarray
    pearson: float
    p_value: float
    seconds: dict
    adversarial: Optional[list] = None     # the copy-paste experiment: EditOutcome list


def _clearly_better(e) -> bool:
    """The formula beats the unit's best single concept by 20% and by 0.05 IoU."""
    return e.formula is not None and e.iou >= 1.2 * e.primitive_iou and \
        e.iou - e.primitive_iou >= 0.05


def run_demo(out_dir: str = "compexp-demo", config: DemoConfig = DemoConfig(), *,
             retrain: bool = False, progress: bool = True, report: bool = True,
             log: Callable[[str], None] = print) -> DemoSummary:
    """Run the built-in example end to end and write its files into ``out_dir``.

    Files: ``images.h5`` (evaluation images and task labels), ``concepts.h5`` (the world's
    segmentations), ``acts.h5`` (the CNN's ``block4``), ``explanations.h5`` (length 3),
    ``by_length.h5`` (one search at length 10 for the IoU-against-length curve),
    ``contributions.csv`` (each class's most contributing units and their formulas),
    ``adversarial.csv`` (the copy-paste edits against their controls), and
    ``report/index.html`` (with ``report/contributions.html``).

    Args:
        out_dir: folder for the files (created if needed).
        config: sizes of the example.
        retrain: train the CNN even when cached weights exist.
        progress: progress bars.
        report: write the HTML report.
        log: where progress lines go.

    Returns:
        A :class:`DemoSummary`.
    """
    require("torch", "the built-in example (training its CNN)")
    from .analysis import iou_accuracy_correlation, mean_iou_by_length
    from .extract import ImageDataset, extract_activations
    from .io import load_concepts, open_activations
    from .search import search_formulas

    seconds = {}
    os.makedirs(out_dir, exist_ok=True)
    paths = {name: os.path.join(out_dir, f"{name}.h5")
             for name in ("images", "concepts", "acts", "explanations", "by_length")}

    t = time.perf_counter()
    model = load_or_train(config, retrain=retrain, log=log)
    seconds["train"] = time.perf_counter() - t

    t = time.perf_counter()
    world = make_world(config.eval_images, size=config.image_size, seed=config.seed + 2000)
    write_world_files(world, paths["images"], paths["concepts"])
    predicted, predicted_scene = predict(model, world.images)
    correct = predicted == world.target
    accuracy = float(correct.mean())
    log(f"evaluation world: {len(world)} new images; the CNN names the largest shape's colour "
        f"and shape right on {accuracy:.1%} of them (scene: "
        f"{float((predicted_scene == world.scene).mean()):.1%})")
    seconds["world"] = time.perf_counter() - t

    t = time.perf_counter()
    extract_activations(model, ImageDataset(paths["images"], mean=MEAN, std=STD), LAYER,
                        paths["acts"], batch_size=250, progress=progress,
                        model_name=f"compexp demo CNN ({config.key()})",
                        dataset_name=f"procedural world, {len(world)} images, seed "
                                     f"{config.seed + 2000}")
    seconds["extract"] = time.perf_counter() - t

    t = time.perf_counter()
    concepts = load_concepts(paths["concepts"])
    acts = open_activations(paths["acts"])
    log(f"searching formulas for {acts.shape[1]} units of {LAYER} {tuple(acts.shape[1:])} over "
        f"{concepts.n_concepts} concepts on a {concepts.grid[0]}x{concepts.grid[1]} grid")
    result = search_formulas(acts, concepts, max_length=3, beam_size=5, progress=progress)
    result.params.update(acts_path=os.path.abspath(paths["acts"]),
                         concepts_path=os.path.abspath(paths["concepts"]))
    result.save(paths["explanations"])
    lengths = search_formulas(acts, concepts, max_length=10, beam_size=5, progress=False)
    lengths.save(paths["by_length"])
    seconds["search"] = time.perf_counter() - t

    curve = mean_iou_by_length(lengths)
    stats = iou_accuracy_correlation(result, acts, correct, concepts, permutations=2000)
    n_better = sum(_clearly_better(e) for e in result)

    t = time.perf_counter()
    table, outcomes, verdict = _copy_paste_experiment(model, world, predicted, result,
                                                      out_dir, config, log)
    seconds["adversarial"] = time.perf_counter() - t

    index = None
    if report:
        from .adversarial import image_examples, outcome_rows
        from .report import write_contributions_page, write_report

        t = time.perf_counter()
        report_dir = os.path.join(out_dir, "report")
        index = write_report(result, report_dir, acts=acts,
                             concepts=concepts, images=paths["images"], lengths=lengths,
                             title="compexp demo: a small CNN on a procedural world",
                             links=[("contributions.html", "contributions of units to classes "
                                                           "and copy-paste edits")])
        write_contributions_page(
            report_dir, table, adversarial=outcome_rows(outcomes), verdict=verdict,
            examples=image_examples(outcomes, task_class_names()),
            title="compexp demo: contributions and copy-paste edits",
            method=f"Contribution: mean over {_CONTRIBUTION_IMAGES} evaluation images of the "
                   f"gradient of the class's logit with respect to the unit's {LAYER} "
                   f"activations times those activations, summed over positions.")
        seconds["report"] = time.perf_counter() - t
    acts.file.close()

    log("")
    log(f"{'unit':>4}  {'iou':>5}  {'formula':<44} {'best single':<12} {'iou':>5}")
    for e in sorted(result, key=lambda e: -e.iou)[:12]:
        log(f"{e.unit:>4}  {e.iou:5.3f}  {str(e.formula):<44} {str(e.primitive):<12} "
            f"{e.primitive_iou:5.3f}")
    log("")
    log(f"{n_better} of {len(result)} units have a formula that clearly beats their best single "
        f"concept (IoU at least 1.2x and 0.05 higher)")
    log("mean IoU by maximum formula length: " +
        ", ".join(f"{i + 1}: {v:.3f}" for i, v in enumerate(curve)))
    p_text = "< 0.001" if stats.p_value < 0.001 else f"= {stats.p_value:.3f}"
    log(f"explanation IoU against the CNN's accuracy on the images where the unit fires: "
        f"Pearson r = {stats.pearson:.3f} (permutation p {p_text}, {stats.units.size} units)")
    log("")
    for line in verdict:
        log(line)
    if index:
        log(f"report: {index}")
    return DemoSummary(out_dir, index, accuracy, len(result), n_better, curve, stats.pearson,
                       stats.p_value, seconds, outcomes)


_CONTRIBUTION_IMAGES = 200     # evaluation images the contributions are averaged over
_EDITED_IMAGES = 100           # images edited per edit (and per control)


def _copy_paste_experiment(model, world, predicted, result, out_dir: str, config: DemoConfig,
                           log: Callable[[str], None]):
    """Contributions of the units to the 30 shape-colour classes, the contribution table,
    and the copy-paste experiment for the 3 classes whose top unit contributes most; writes
    ``contributions.csv`` and ``adversarial.csv``. Returns (table, outcomes, headline lines).
    """
    from .adversarial import headline, run_experiment, save_tables, world_region_paste
    from .analysis import contribution_table, gradient_contributions

    names = task_class_names()
    contributions = gradient_contributions(model, _to_tensor(world.images[:_CONTRIBUTION_IMAGES]),
                                           LAYER, classes=range(len(names)), batch_size=250)
    table = contribution_table(result, contributions, names, top=5)
    # Regions to paste, rendered by a fresh world of the same kind.
    renderer = world_region_paste(200, size=config.image_size, seed=config.seed + 3000)
    outcomes = run_experiment(lambda images: predict(model, images)[0], world.images, result,
                              contributions, renderer, class_names=names, n_targets=3,
                              max_edits=2, max_inputs=_EDITED_IMAGES, seed=config.seed,
                              predictions=predicted, log=log)
    save_tables(out_dir, table, outcomes)
    verdict = headline(outcomes, adding="pasting")
    if not outcomes:
        verdict = ["copy-paste edits: no target class had an edit to try (see above)"]
    elif not any(o.beats_control for o in outcomes):
        verdict.append("on this run, edits read from the explanations do not beat "
                       "frequency-matched controls")
    return table, outcomes, verdict
