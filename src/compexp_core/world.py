"""A procedural image world with exact segmentations: the data of the built-in example.

Each image is a scene (meadow, beach, lake, desert, room) made of background materials (sky,
grass, water, sand, wall, floor), with one to three coloured shapes (circle, square, triangle,
diamond, cross) in six colours drawn over it; shapes have parts (their edge and their
corners). Every pixel's material, shape, colour and part is known exactly, so the concept
set is built from the generator's own label maps, as Broden's are from its annotations.

The task a network learns on it: name the colour and shape of the largest shape in the image
(30 classes), and the scene (5 classes).

Examples:
    >>> world = make_world(4, seed=0)
    >>> world.images.shape, world.images.dtype, world.labels["color"].shape
    ((4, 64, 64, 3), dtype('uint8'), (4, 64, 64))
    >>> sorted(CATEGORIES)
    ['color', 'material', 'object', 'part', 'scene']
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SCENES", "MATERIALS", "SHAPES", "COLORS", "PARTS", "CATEGORIES", "World",
           "make_world", "concept_names", "task_class_names", "write_world_files"]

SCENES = ("meadow", "beach", "lake", "desert", "room")
MATERIALS = ("sky", "grass", "water", "sand", "wall", "floor")
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
COLORS = ("red", "green", "blue", "yellow", "purple", "white")
PARTS = ("edge", "corner")
# Pixel-level categories (label maps: 0 = none, v = the (v-1)-th name) and the image-level one.
CATEGORIES = {"color": COLORS, "object": SHAPES, "part": PARTS, "material": MATERIALS,
              "scene": SCENES}

_RGB = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (40, 70, 230),
        "yellow": (240, 215, 40), "purple": (150, 50, 200), "white": (245, 245, 245)}
_MATERIAL_RGB = {"sky": (135, 190, 235), "grass": (70, 140, 55), "water": (35, 85, 165),
                 "sand": (210, 180, 120), "wall": (175, 165, 155), "floor": (115, 75, 45)}
# Each scene's materials from top to bottom.
_SCENE_LAYERS = {"meadow": ("sky", "grass"), "beach": ("sky", "water", "sand"),
                 "lake": ("grass", "water"), "desert": ("sky", "sand"),
                 "room": ("wall", "floor")}


@dataclass
class World:
    """Images with their exact labels.

    Attributes:
        images: uint8 ``[N, S, S, 3]``.
        labels: per category, the label map ``[N, S, S]`` (uint8; 0 = none, v = name v-1 of
            that category) for the pixel-level categories, and ``[N]`` scene indices for
            ``"scene"``.
        target: int64 ``[N]``: the task's class, ``color * len(SHAPES) + shape`` of the
            largest shape.
        scene: int64 ``[N]``: the scene index (the second task).
    """
    images: np.ndarray
    labels: dict
    target: np.ndarray
    scene: np.ndarray

    def __len__(self) -> int:
        return self.images.shape[0]


def concept_names() -> list[tuple[str, str]]:
    """(name, category) of every concept of the world, in concept-set order."""
    return [(name, cat) for cat, names in CATEGORIES.items() for name in names]


def task_class_names() -> list[str]:
    """Names of the 30 task classes: ``"<color> <shape>"``."""
    return [f"{c} {s}" for c in COLORS for s in SHAPES]


def _shape_mask(shape: str, cy: float, cx: float, r: float, yy: np.ndarray, xx: np.ndarray):
    """The shape's pixels and its corner points."""
    dy, dx = yy - cy, xx - cx
    if shape == "circle":
        return dy * dy + dx * dx <= r * r, []
    if shape == "square":
        s = r * 0.85
        return (np.abs(dy) <= s) & (np.abs(dx) <= s), [(cy + a * s, cx + b * s)
                                                          for a in (-1, 1) for b in (-1, 1)]
    if shape == "diamond":
        return np.abs(dy) + np.abs(dx) <= r, [(cy - r, cx), (cy + r, cx), (cy, cx - r),
                                              (cy, cx + r)]
    if shape == "triangle":
        # Apex up: inside when below the two slanted sides and above the base.
        top, base = cy - r, cy + r * 0.8
        half = (yy - top) / (base - top) * r
        return (yy >= top) & (yy <= base) & (np.abs(dx) <= half), [(top, cx), (base, cx - r),
                                                                  (base, cx + r)]
    # cross
    w = r * 0.35
    return ((np.abs(dy) <= w) & (np.abs(dx) <= r)) | ((np.abs(dx) <= w) & (np.abs(dy) <= r)), []


def _erode(mask: np.ndarray, steps: int) -> np.ndarray:
    """4-neighbour erosion, `steps` times (pixels outside the image count as outside)."""
    out = mask.copy()
    for _ in range(steps):
        inner = out.copy()
        inner[1:] &= out[:-1]
        inner[:-1] &= out[1:]
        inner[:, 1:] &= out[:, :-1]
        inner[:, :-1] &= out[:, 1:]
        inner[0, :] = inner[-1, :] = inner[:, 0] = inner[:, -1] = False
        out = inner
    return out


def _background(scene: str, size: int, rng: np.random.Generator, yy, xx):
    """RGB float background and its material label map."""
    layers = _SCENE_LAYERS[scene]
    cuts = np.sort(rng.integers(int(size * 0.3), int(size * 0.75), len(layers) - 1))
    if len(layers) == 3:    # keep the middle band visible
        cuts[1] = max(cuts[1], cuts[0] + size // 6)
    wobble = np.round(2.0 * np.sin(xx[0] / size * 2 * np.pi * rng.uniform(0.5, 2)
                                   + rng.uniform(0, 6.3))).astype(int)
    material = np.zeros((size, size), np.uint8)
    img = np.zeros((size, size, 3), np.float32)
    bounds = [0, *cuts.tolist(), size]
    for i, name in enumerate(layers):
        lo = bounds[i] + (wobble if i > 0 else 0)
        hi = bounds[i + 1] + (wobble if i + 1 < len(layers) else 0)
        inside = (yy >= lo[None, :] if i > 0 else True) & (yy < hi[None, :] if i + 1 < len(layers) else True)
        inside = np.broadcast_to(inside, (size, size))
        material[inside] = MATERIALS.index(name) + 1
        base = np.array(_MATERIAL_RGB[name], np.float32)
        shade = np.ones((size, size), np.float32)
        if name == "sky":
            shade = 0.85 + 0.25 * (yy / size)
        elif name == "water":
            shade = 0.9 + 0.15 * np.sin(yy * 1.3 + 0.4 * np.sin(xx * 0.3))
        elif name == "sand":
            shade = 0.92 + 0.08 * np.sin(xx * 0.25 + yy * 0.5)
        elif name == "grass":
            shade = 0.85 + 0.3 * rng.random((size, size), np.float32)
        elif name == "wall":
            shade = np.where(xx % 16 == 0, 0.8, 1.0)
        elif name == "floor":
            shade = np.where(yy % 6 == 0, 0.75, 1.0)
        img[inside] = (base[None, :] * shade[inside][:, None])
    return img, material


def make_world(n: int, *, size: int = 64, seed: int = 0) -> World:
    """Generate ``n`` images of the world with their labels.

    Args:
        n: number of images (>= 1).
        size: image side in pixels (>= 32).
        seed: random seed; the same seed gives the same images.

    Returns:
        A :class:`World`.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 32:
        raise ValueError(f"size must be an integer >= 32, got {size!r}")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = np.zeros((n, size, size, 3), np.uint8)
    labels = {c: np.zeros((n, size, size), np.uint8) for c in ("color", "object", "part",
                                                                 "material")}
    scene = rng.integers(0, len(SCENES), n)
    target = np.zeros(n, np.int64)
    for i in range(n):
        img, material = _background(SCENES[scene[i]], size, rng, yy, xx)
        labels["material"][i] = material
        shape_map = labels["object"][i]
        color_map = labels["color"][i]
        part_map = labels["part"][i]
        owner = np.full((size, size), -1, np.int16)
        drawn = []
        for k in range(int(rng.integers(1, 4))):
            shape = SHAPES[rng.integers(len(SHAPES))]
            color = COLORS[rng.integers(len(COLORS))]
            r = float(rng.uniform(size * 0.11, size * 0.22))
            cy, cx = rng.uniform(r, size - r, 2)
            mask, corners = _shape_mask(shape, cy, cx, r, yy, xx)
            rgb = np.array(_RGB[color], np.float32) * (0.9 + 0.1 * (1 - np.abs(yy - cy) / size))[..., None]
            img[mask] = rgb[mask]
            owner[mask] = k
            shape_map[mask] = SHAPES.index(shape) + 1
            color_map[mask] = COLORS.index(color) + 1
            part_map[mask] = 0
            part_map[mask & ~_erode(mask, 2)] = PARTS.index("edge") + 1
            for py, px in corners:
                near = (yy - py) ** 2 + (xx - px) ** 2 <= (0.3 * r) ** 2
                part_map[near & mask] = PARTS.index("corner") + 1
            drawn.append((shape, color))
        # The task: the shape with the most visible pixels (ties: the first drawn).
        visible = np.bincount(owner[owner >= 0].ravel(), minlength=len(drawn))
        shape, color = drawn[int(np.argmax(visible))]
        target[i] = COLORS.index(color) * len(SHAPES) + SHAPES.index(shape)
        noise = rng.normal(0, 6, (size, size, 3))
        images[i] = np.clip(img + noise, 0, 255).astype(np.uint8)
    return World(images, {**labels, "scene": scene.astype(np.int64)}, target,
                 scene.astype(np.int64))


def write_world_files(world: World, images_path: str, concepts_path: str, *,
                      dataset: str = "procedural world") -> None:
    """Write the world's images (with task labels) and its concept set.

    The concept set holds one label-map layer per pixel-level category and the scenes as
    image-level labels, on the image grid.
    """
    from .io import save_images, write_concept_sources

    save_images(images_path, world.images, labels=world.target,
                label_names=task_class_names(), dataset=dataset)
    names = [name for name, _ in concept_names()]
    categories = [cat for _, cat in concept_names()]
    n, size = world.images.shape[0], world.images.shape[1]
    label_maps = {cat: (world.labels[cat], [None, *CATEGORIES[cat]])
                  for cat in ("color", "object", "part", "material")}
    scene_present = np.zeros((n, len(SCENES)), bool)
    scene_present[np.arange(n), world.scene] = True
    write_concept_sources(concepts_path, n_samples=n, grid=(size, size), names=names,
                          categories=categories, label_maps=label_maps,
                          sample_labels=(scene_present, list(SCENES)), compression="gzip")
