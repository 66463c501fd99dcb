"""Seeded, Broden-like workloads for the benchmarks.

Each sample is an image on an H x W grid with two label layers, as Broden's ADE20k part has:
an object layer (rectangular segments of Zipf-distributed object labels painted over each other
on a background object, ~`segments` per image) and a color layer (each segment and the
background one of the colors); plus one sample-level scene label per image. Units are
activation maps of h x w cells driven by the presence of a few concepts in each cell (the area
fraction of a concept under the cell), by small formulas of different kinds (OR, AND, AND NOT,
scene-gated, single, noise-only), plus Gaussian noise, so that after the default threshold
(top 0.5%) and bilinear upsampling they have realistic masks and IoUs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from compexp_core import ConceptSet, ConceptSetBuilder


@dataclass
class Workload:
    label_maps: np.ndarray        # uint16 [N, 2, H, W]: object labels, color labels (0 = none)
    concept_of_label: np.ndarray  # int32: label value -> concept index
    scene: np.ndarray             # int [N]: scene concept offset (0..n_scenes-1)
    names: list
    categories: list
    acts: np.ndarray              # float32 [N, U, h, w]
    n_objects: int
    n_colors: int
    n_scenes: int

    @property
    def n_concepts(self) -> int:
        return len(self.names)

    def concept_set(self) -> ConceptSet:
        n = self.label_maps.shape[0]
        b = ConceptSetBuilder(n, self.label_maps.shape[2:], self.names, self.categories)
        step = 2048
        for s in range(0, n, step):
            b.add_label_maps(self.label_maps[s:s + step], self.concept_of_label, sample_offset=s)
        onehot = np.zeros((n, self.n_scenes), bool)
        onehot[np.arange(n), self.scene] = True
        first_scene = self.n_objects + self.n_colors
        b.add_sample_labels(onehot, list(range(first_scene, first_scene + self.n_scenes)))
        return b.build()


def broden_like(n_samples: int = 1000, grid=(56, 56), n_objects: int = 250, n_colors: int = 11,
                n_scenes: int = 39, n_units: int = 64, map_size=(7, 7), segments: int = 10,
                noise: float = 0.15, seed: int = 0) -> Workload:
    rng = np.random.default_rng(seed)
    H, W = grid
    h, w = map_size
    if H % h or W % w:
        raise ValueError(f"grid {grid} must be a multiple of map_size {map_size}")
    # Object labels 1..n_objects (Zipf-like frequencies), color labels after them.
    zipf = 1.0 / np.arange(1, n_objects + 1) ** 1.1
    zipf /= zipf.sum()
    objects = np.zeros((n_samples, H, W), np.uint16)
    colors = np.zeros((n_samples, H, W), np.uint16)
    n_seg = rng.integers(max(1, segments // 2), segments + segments // 2 + 1, n_samples)
    total = int(n_seg.sum())
    seg_label = rng.choice(n_objects, total, p=zipf) + 1
    seg_color = rng.integers(0, n_colors, total) + 1
    seg_h = rng.integers(max(1, H // 10), max(2, H // 2), total)
    seg_w = rng.integers(max(1, W // 10), max(2, W // 2), total)
    seg_y = (rng.random(total) * (H - seg_h + 1)).astype(int)
    seg_x = (rng.random(total) * (W - seg_w + 1)).astype(int)
    # The first segment of each image is its background: it covers the whole image.
    first = np.concatenate([[0], np.cumsum(n_seg)[:-1]])
    seg_h[first], seg_w[first], seg_y[first], seg_x[first] = H, W, 0, 0
    image = np.repeat(np.arange(n_samples), n_seg)
    for i in range(total):
        n, y, x = image[i], seg_y[i], seg_x[i]
        objects[n, y:y + seg_h[i], x:x + seg_w[i]] = seg_label[i]
        colors[n, y:y + seg_h[i], x:x + seg_w[i]] = seg_color[i]
    label_maps = np.stack([objects, np.where(colors > 0, colors + n_objects, 0).astype(np.uint16)], 1)
    concept_of_label = np.concatenate([[-1], np.arange(n_objects + n_colors)]).astype(np.int32)
    scene = rng.integers(0, n_scenes, n_samples)
    names = ([f"object{j}" for j in range(n_objects)] + [f"color{j}" for j in range(n_colors)]
             + [f"scene{j}" for j in range(n_scenes)])
    categories = ["object"] * n_objects + ["color"] * n_colors + ["scene"] * n_scenes

    # Unit drivers: concepts among the 60 most frequent objects and all colors.
    frequent = np.arange(min(60, n_objects))
    kinds = ["or", "and_color", "and_not_color", "scene", "single", "noise"]
    drivers = []
    for u in range(n_units):
        kind = kinds[u % len(kinds)]
        a, b = rng.choice(frequent, 2, replace=False)
        drivers.append((kind, int(a), int(b), int(rng.integers(0, n_colors)), int(rng.integers(0, n_scenes))))

    acts = np.empty((n_samples, n_units, h, w), np.float32)
    cy, cx = H // h, W // w
    for s in range(0, n_samples, 1024):
        obj = objects[s:s + 1024]
        col = colors[s:s + 1024]
        m = obj.shape[0]

        def coarse(mask):
            return mask.reshape(m, h, cy, w, cx).mean(axis=(2, 4), dtype=np.float32)

        for u, (kind, a, b, c, sc) in enumerate(drivers):
            fa = coarse(obj == a + 1)
            if kind == "or":
                val = fa + coarse(obj == b + 1)
            elif kind == "and_color":
                val = coarse((obj == a + 1) & (col == c + 1))
            elif kind == "and_not_color":
                val = fa - coarse((obj == a + 1) & (col == c + 1))
            elif kind == "scene":
                val = fa * (scene[s:s + m] == sc)[:, None, None]
            elif kind == "single":
                val = fa
            else:
                val = np.zeros_like(fa)
            acts[s:s + m, u] = val + rng.normal(0.0, noise, val.shape).astype(np.float32)
    return Workload(label_maps, concept_of_label, scene, names, categories, acts, n_objects,
                    n_colors, n_scenes)


def add_workload_arguments(ap) -> None:
    """The command-line options of broden_like's size (shared by the benchmark scripts)."""
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--grid", type=int, default=56)
    ap.add_argument("--objects", type=int, default=250)
    ap.add_argument("--colors", type=int, default=11)
    ap.add_argument("--scenes", type=int, default=39)
    ap.add_argument("--seed", type=int, default=0)


def workload_from_arguments(args, n_units: int) -> Workload:
    return broden_like(args.samples, (args.grid, args.grid), args.objects, args.colors, args.scenes,
                       n_units, seed=args.seed)
