"""Synthetic datasets with planted formulas, for the demo, tests and benchmarks.

Each sample is a grid of cells carrying segmentation-like labels: an object layer (rectangular
segments of Zipf-distributed object labels over a background), a color layer (each segment and
the background one color), and one sample-level scene. Units are planted: unit u fires on the
cells of a known formula over these concepts (``(dog OR cat)``, ``(car AND red)``,
``((tree OR grass) AND NOT green)``, ...), with a little noise, so a search should recover the
planted formula.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .engine.concepts import ConceptSet, ConceptSetBuilder
from .engine.formula import Formula

__all__ = ["PlantedDataset", "make_planted_dataset"]

OBJECT_NAMES = ["dog", "cat", "car", "tree", "house", "road", "sky", "water", "grass", "person",
                "chair", "table", "boat", "bird", "flower", "window", "door", "lamp", "bed",
                "bottle"]
COLOR_NAMES = ["red", "green", "blue", "yellow", "black", "white", "grey", "orange", "pink",
               "brown", "purple"]
SCENE_NAMES = ["street", "beach", "forest", "kitchen", "office", "park", "bedroom", "harbor",
               "field", "garden"]


@dataclass
class PlantedDataset:
    """A synthetic dataset: concept set, activations and the formulas planted in the units.

    Attributes:
        concepts: the :class:`ConceptSet` (objects, colors, scenes).
        acts: float32 ``[N, U, h, w]`` activations.
        planted: the formula each unit was built to fire on (None for noise-only units).
        label_maps: int32 ``[N, 2, H, W]`` (object layer, color layer) label maps.
        concept_of_label: label value -> concept index for ``label_maps``.
        scene: int ``[N]``, the scene concept index of each sample.
    """

    concepts: ConceptSet
    acts: np.ndarray
    planted: list
    label_maps: np.ndarray
    concept_of_label: np.ndarray
    scene: np.ndarray


def _names(base: list[str], n: int) -> list[str]:
    return [base[i] if i < len(base) else f"{base[i % len(base)]}{i // len(base)}" for i in range(n)]


def make_planted_dataset(n_samples: int = 1000, grid: tuple[int, int] = (28, 28),
                         n_objects: int = 20, n_colors: int = 8, n_scenes: int = 6,
                         n_units: int = 12, map_size: Optional[tuple[int, int]] = None,
                         segments: int = 6, noise: float = 0.02, noise_units: int = 0,
                         seed: int = 0) -> PlantedDataset:
    """Generate a dataset whose units fire on planted formulas.

    Args:
        n_samples: N.
        grid: (H, W) of the concept masks.
        n_objects, n_colors, n_scenes: concepts per category (K = their sum).
        n_units: units with a planted formula.
        map_size: (h, w) of the activation maps (default: the grid). Smaller maps are the
            area average of the planted mask, as a network's coarse feature maps would be.
        segments: object segments per sample (at most).
        noise: fraction of each planted mask's cells flipped off, and as many random cells
            switched on.
        noise_units: extra units that fire on random cells only.
        seed: random seed.

    Returns:
        A :class:`PlantedDataset`.
    """
    rng = np.random.default_rng(seed)
    H, W = grid
    obj_names = _names(OBJECT_NAMES, n_objects)
    col_names = _names(COLOR_NAMES, n_colors)
    scn_names = _names(SCENE_NAMES, n_scenes)
    names = obj_names + col_names + scn_names
    categories = ["object"] * n_objects + ["color"] * n_colors + ["scene"] * n_scenes

    # Object layer: label 0 = background; Zipf-like label frequencies.
    weights = 1.0 / np.arange(1, n_objects + 1)
    weights /= weights.sum()
    objects = np.zeros((n_samples, H, W), np.int32)
    colors = np.zeros((n_samples, H, W), np.int32)
    background_color = rng.integers(0, n_colors, n_samples)
    colors[:] = background_color[:, None, None] + 1
    for s in range(n_samples):
        for _ in range(rng.integers(1, segments + 1)):
            h = rng.integers(max(1, H // 6), max(2, H // 2) + 1)
            w = rng.integers(max(1, W // 6), max(2, W // 2) + 1)
            y, x = rng.integers(0, H - h + 1), rng.integers(0, W - w + 1)
            objects[s, y:y + h, x:x + w] = rng.choice(n_objects, p=weights) + 1
            colors[s, y:y + h, x:x + w] = rng.integers(0, n_colors) + 1
    scene = rng.integers(0, n_scenes, n_samples)

    # Label values: objects 1..n_objects, colors n_objects+1.., so one mapping serves both layers.
    label_maps = np.stack([objects, np.where(colors > 0, colors + n_objects, 0)], axis=1)
    concept_of_label = np.concatenate([[-1], np.arange(n_objects + n_colors)]).astype(np.int32)
    builder = ConceptSetBuilder(n_samples, grid, names, categories)
    builder.add_label_maps(label_maps, concept_of_label)
    scene_onehot = np.zeros((n_samples, n_scenes), bool)
    scene_onehot[np.arange(n_samples), scene] = True
    builder.add_sample_labels(scene_onehot, list(range(n_objects + n_colors, len(names))))
    concepts = builder.build()

    def obj(i):
        return obj_names[i % n_objects]

    def col(i):
        return col_names[i % n_colors]

    templates = [
        lambda i: Formula.parse(f"({obj(i)} OR {obj(i + 1)})"),
        lambda i: Formula.parse(f"({obj(i)} AND {col(i)})"),
        lambda i: Formula.parse(f"({obj(i)} AND NOT {col(i + 2)})"),
        lambda i: Formula.parse(f"(({obj(i)} OR {obj(i + 3)}) AND NOT {col(i + 1)})"),
        lambda i: Formula.parse(f"({obj(i)} AND {scn_names[i % n_scenes]})"),
        # ((A OR B) AND C) is not planted: greedy beam search rarely keeps the weak (A OR B).
        lambda i: Formula.parse(f"(({obj(i)} OR {obj(i + 2)}) OR {obj(i + 5)})"),
    ]
    planted = [templates[u % len(templates)](u // len(templates) + u) for u in range(n_units)]
    planted += [None] * noise_units
    h, w = map_size if map_size is not None else grid
    acts = np.empty((n_samples, len(planted), h, w), np.float32)
    for u, formula in enumerate(planted):
        if formula is None:
            fired = rng.random((n_samples, H, W)) < 0.01
        else:
            fired = formula.evaluate(concepts).copy()
            on = np.flatnonzero(fired)
            n_flip = int(noise * on.size)
            if n_flip:
                fired.ravel()[rng.choice(on, n_flip, replace=False)] = False
                fired.ravel()[rng.integers(0, fired.size, n_flip)] = True
        maps = fired.astype(np.float32)
        if (h, w) != (H, W):
            maps = _area_resize(maps, h, w)
        acts[:, u] = maps + rng.normal(0.0, 0.05, maps.shape).astype(np.float32)
    return PlantedDataset(concepts, acts, planted, label_maps, concept_of_label, scene)


def _area_resize(maps: np.ndarray, h: int, w: int) -> np.ndarray:
    """Average [N, H, W] maps over an h x w grid of (nearly) equal cells."""
    n, H, W = maps.shape
    ys = np.linspace(0, H, h + 1).astype(int)
    xs = np.linspace(0, W, w + 1).astype(int)
    out = np.empty((n, h, w), np.float32)
    for i in range(h):
        for j in range(w):
            out[:, i, j] = maps[:, ys[i]:max(ys[i + 1], ys[i] + 1), xs[j]:max(xs[j + 1], xs[j] + 1)].mean(axis=(1, 2))
    return out
