"""A reference-scale synthetic workload with the statistics of Broden's ADE20k part.

    python benchmarks/broden_workload.py OUT_DIR [--scale 1.0] [--units 512] [--seed 0]

writes OUT_DIR/concepts.h5 (label maps + sample-level scenes, the project's concepts format)
and OUT_DIR/acts.h5 ([N, U, 7, 7] float32 activations). At --scale 1.0:
  * N = 22,210 images at 112x112 (the true count of ../shared/data/broden/index_ade20k.csv);
  * color layer: every pixel one of 11 colors (one per segment);
  * object layer: every pixel one of 580 object labels, ~10 rectangular segments per image
    painted over a background segment, Zipf-like label frequencies;
  * part layers: in the images whose index row names part maps (1 to 3 layers, as in the index),
    part labels (230, Zipf-like, each tied to its object) inside object segments;
  * scene: the image's real scene label from the index (sample-level; 469 scenes, some images
    have none);
  * 512 units: 7x7 maps driven by the area fractions of a few concepts under each cell, by
    small formulas of different kinds (OR, AND, AND NOT, scene-gated, polysemantic, single,
    noise-only), plus Gaussian noise.
--scale s keeps the first round(s * 22,210) images of the index (in order).
Everything is generated in chunks of images; no full-size array is ever held.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import h5py
import numpy as np

from compexp_core.broden import read_index_csv

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "broden"
N_COLORS, N_OBJECTS, N_PARTS = 11, 580, 230
H = W = 112
MAP = 7
CHUNK = 1024


def read_index(index_csv: Path, n: int):
    """Scene label (or -1) and number of part layers of the first n images of the index."""
    rows = read_index_csv(index_csv)[0][:n]
    scene_labels = [r.labels["scene"][0] if r.labels.get("scene") else -1 for r in rows]
    part_layers = [len(r.pixel.get("part", ())) for r in rows]
    return np.array(scene_labels), np.array(part_layers)


def concept_names(scene_values: np.ndarray):
    names = ([f"color{j}" for j in range(N_COLORS)] + [f"object{j}" for j in range(N_OBJECTS)]
             + [f"part{j}" for j in range(N_PARTS)] + [f"scene{v}" for v in scene_values])
    cats = (["color"] * N_COLORS + ["object"] * N_OBJECTS + ["part"] * N_PARTS
            + ["scene"] * len(scene_values))
    return names, cats


def zipf_probs(n: int, s: float) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1) ** s
    return p / p.sum()


def paint_chunk(rng, m: int, part_layers: np.ndarray):
    """Label maps of m images: color [m,H,W], object [m,H,W], parts [m,3,H,W] (label values 1..)."""
    obj = np.zeros((m, H, W), np.uint16)
    col = np.zeros((m, H, W), np.uint16)
    parts = np.zeros((m, 3, H, W), np.uint16)
    p_obj = zipf_probs(N_OBJECTS, 1.05)
    p_part = zipf_probs(N_PARTS, 1.0)
    for i in range(m):
        n_seg = rng.integers(6, 15)
        labels = rng.choice(N_OBJECTS, n_seg, p=p_obj) + 1
        colors = rng.integers(1, N_COLORS + 1, n_seg)
        hs = rng.integers(12, 64, n_seg)
        ws = rng.integers(12, 64, n_seg)
        ys = (rng.random(n_seg) * (H - hs + 1)).astype(int)
        xs = (rng.random(n_seg) * (W - ws + 1)).astype(int)
        hs[0], ws[0], ys[0], xs[0] = H, W, 0, 0          # the background segment
        for s in range(n_seg):
            sl = (i, slice(ys[s], ys[s] + hs[s]), slice(xs[s], xs[s] + ws[s]))
            obj[sl] = labels[s]
            col[sl] = colors[s]
        for layer in range(part_layers[i]):
            # Parts sit inside object segments; a part label is tied to its object's label.
            for s in rng.choice(n_seg, min(n_seg, 4), replace=False):
                ph, pw = max(2, hs[s] // 3), max(2, ws[s] // 3)
                py = ys[s] + rng.integers(0, hs[s] - ph + 1)
                px = xs[s] + rng.integers(0, ws[s] - pw + 1)
                part = (labels[s] * 7 + layer * 3 + rng.choice(N_PARTS, p=p_part)) % N_PARTS + 1
                inside = obj[i, py:py + ph, px:px + pw] == labels[s]
                parts[i, layer, py:py + ph, px:px + pw][inside] = part
    return col, obj, parts


def unit_drivers(rng, n_units: int, n_scenes: int):
    """Per unit: kind and concept slots (indices into the driver fractions)."""
    kinds = ["or", "and", "and_not", "scene", "poly", "single", "part", "noise"]
    out = []
    for u in range(n_units):
        kind = kinds[u % len(kinds)]
        a, b = rng.choice(80, 2, replace=False)          # frequent objects
        out.append((kind, int(a), int(b), int(rng.integers(0, N_COLORS)),
                    int(rng.integers(0, 40)), int(rng.integers(0, max(1, n_scenes)))))
    return out


def coarse_fractions(layer: np.ndarray, n_labels: int) -> np.ndarray:
    """Area fraction of each label under each of the 7x7 cells: [m, 49, n_labels + 1]."""
    m = layer.shape[0]
    cell = (np.arange(H)[:, None] // (H // MAP)) * MAP + (np.arange(W)[None, :] // (W // MAP))
    idx = (np.arange(m)[:, None, None] * (MAP * MAP) + cell[None]) * (n_labels + 1) + layer
    counts = np.bincount(idx.ravel(), minlength=m * MAP * MAP * (n_labels + 1))
    return counts.reshape(m, MAP * MAP, n_labels + 1).astype(np.float32) / ((H // MAP) * (W // MAP))


def unit_acts(drivers, col, obj, parts, scene_idx, rng, noise=0.4) -> np.ndarray:
    m = obj.shape[0]
    fo = coarse_fractions(obj, N_OBJECTS)[:, :, 1:]                    # [m, 49, objects]
    fc = coarse_fractions(col, N_COLORS)[:, :, 1:]
    fp = coarse_fractions(parts[:, 0], N_PARTS)[:, :, 1:]
    out = np.empty((m, len(drivers), MAP, MAP), np.float32)
    for u, (kind, a, b, c, p, s) in enumerate(drivers):
        if kind == "or":
            v = fo[:, :, a] + fo[:, :, b]
        elif kind == "and":
            v = np.minimum(fo[:, :, a], fc[:, :, c]) * 2
        elif kind == "and_not":
            v = fo[:, :, a] - fc[:, :, c]
        elif kind == "scene":
            v = fo[:, :, a] * (scene_idx == s)[:, None] + 0.5 * (scene_idx == s)[:, None]
        elif kind == "poly":
            v = fo[:, :, a] + fc[:, :, c] * 0.7 + fp[:, :, p]
        elif kind == "single":
            v = fo[:, :, a]
        elif kind == "part":
            v = fp[:, :, p] + 0.5 * fo[:, :, b]
        else:
            v = np.zeros((m, MAP * MAP), np.float32)
        out[:, u] = (v + rng.normal(0, noise, v.shape)).reshape(m, MAP, MAP)
    return out


def generate(out_dir: str, scale: float = 1.0, n_units: int = 512, seed: int = 0,
             index_csv: Path = SHARED / "index_ade20k.csv", verbose: bool = True):
    """Write concepts.h5 and acts.h5 to out_dir; returns their paths."""
    t0 = time.perf_counter()
    n = max(1, round(22210 * scale))
    scene_labels, part_layers = read_index(index_csv, n)
    n = scene_labels.size
    scene_values = np.unique(scene_labels[scene_labels >= 0])
    scene_idx = np.searchsorted(scene_values, scene_labels)
    scene_idx[scene_labels < 0] = -1
    names, cats = concept_names(scene_values)
    K = len(names)
    rng = np.random.default_rng(seed)
    drivers = unit_drivers(rng, n_units, scene_values.size)
    os.makedirs(out_dir, exist_ok=True)
    concepts_path = os.path.join(out_dir, "concepts.h5")
    acts_path = os.path.join(out_dir, "acts.h5")
    text = h5py.string_dtype("utf-8")
    # Label values per layer are 1-based category-local labels: one concept_of_label per group.
    with h5py.File(concepts_path, "w") as hc, h5py.File(acts_path, "w") as ha:
        hc.attrs.update({"format": "compexp-concepts", "version": 1, "n_samples": n,
                         "height": H, "width": W})
        hc.create_dataset("concept_names", data=names, dtype=text)
        hc.create_dataset("concept_categories", data=cats, dtype=text)
        groups = {}
        for cat, layers, n_labels, first in (("color", 1, N_COLORS, 0), ("object", 1, N_OBJECTS, N_COLORS),
                                             ("part", 3, N_PARTS, N_COLORS + N_OBJECTS)):
            g = hc.create_group(f"label_maps/{cat}")
            groups[cat] = g.create_dataset("maps", (n, layers, H, W), np.uint16,
                                           chunks=(min(n, 64), layers, H, W))
            g["concept_of_label"] = np.concatenate([[-1], np.arange(first, first + n_labels)]).astype(np.int32)
        present = np.zeros((n, scene_values.size), bool)
        has = scene_idx >= 0
        present[np.flatnonzero(has), scene_idx[has]] = True
        g = hc.create_group("sample_labels")
        g.create_dataset("present", data=present, chunks=(min(n, 4096), scene_values.size))
        g["concepts"] = np.arange(N_COLORS + N_OBJECTS + N_PARTS, K, dtype=np.int32)
        ha.attrs.update({"format": "compexp-activations", "version": 1, "model": "synthetic",
                         "layer": "broden_like", "dataset": f"broden-ade20k-like scale={scale}"})
        acts = ha.create_dataset("acts", (n, n_units, MAP, MAP), np.float32,
                                 chunks=(min(n, 256), n_units, MAP, MAP))
        for s in range(0, n, CHUNK):
            m = min(CHUNK, n - s)
            col, obj, parts = paint_chunk(rng, m, part_layers[s:s + m])
            groups["color"][s:s + m, 0] = col
            groups["object"][s:s + m, 0] = obj
            groups["part"][s:s + m] = parts
            acts[s:s + m] = unit_acts(drivers, col, obj, parts, scene_idx[s:s + m], rng)
            if verbose:
                print(f"\r  generated {s + m}/{n} images", end="", flush=True)
    if verbose:
        print(f"\nwrote {concepts_path} ({K} concepts) and {acts_path} ({n_units} units) in "
              f"{time.perf_counter() - t0:.1f} s")
    return concepts_path, acts_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--units", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    generate(args.out_dir, args.scale, args.units, args.seed)


if __name__ == "__main__":
    main()
