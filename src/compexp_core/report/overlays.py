"""The overlay images of the report: a unit's mask and a formula's mask drawn over an image.

The unit's mask (its binarised activations, exactly the cells the search scored) is filled in
translucent :data:`UNIT_COLOR` with a solid outline; the formula's mask is hatched and outlined
in :data:`FORMULA_COLOR`, as Network Dissection reports draw them. Masks live on the concepts'
grid and are scaled to the image with nearest-neighbour sampling. Pillow is imported inside the
functions that need it.
"""
from __future__ import annotations

import numpy as np

__all__ = ["overlay", "thumbnail", "save_png", "UNIT_COLOR", "FORMULA_COLOR", "THUMB_SIZE",
           "UNIT_ALPHA"]

#: RGB of the unit's mask: its outline exactly, its fill blended over the image.
UNIT_COLOR = (255, 128, 0)
#: RGB of the formula's mask: its outline exactly, its hatching blended over the image.
FORMULA_COLOR = (0, 229, 255)
#: Longer side, in pixels, of the overlay images.
THUMB_SIZE = 160

UNIT_ALPHA = 0.45         # opacity of the unit mask's fill
_HATCH_ALPHA = 0.6        # opacity of the formula mask's hatching
_HATCH_PERIOD = 6         # pixels between hatch lines (2 of them drawn)
_EDGE_WIDTH = 2           # outline width in pixels, drawn inside the mask


def _thumb_shape(h: int, w: int, limit: int = THUMB_SIZE) -> tuple[int, int]:
    """(height, width) of an image scaled so that its longer side is ``limit``."""
    scale = limit / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def _resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a bool [h, w] mask (cell centres sampled)."""
    h, w = mask.shape
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * h / shape[0]).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * w / shape[1]).astype(np.int64), w - 1)
    return mask[np.ix_(rows, cols)]


def _inner_edge(mask: np.ndarray, width: int = _EDGE_WIDTH) -> np.ndarray:
    """The pixels of ``mask`` within ``width`` pixels of its border (image borders count)."""
    inner = mask.copy()
    for _ in range(width):
        padded = np.pad(inner, 1, constant_values=False)
        inner = (padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1]
                 & padded[1:-1, :-2] & padded[1:-1, 2:])
    return mask & ~inner


def thumbnail(image: np.ndarray) -> np.ndarray:
    """uint8 ``[H, W, 3]`` scaled so that its longer side is :data:`THUMB_SIZE`."""
    from PIL import Image

    shape = _thumb_shape(*image.shape[:2])
    if shape == image.shape[:2]:
        return image
    # Small images are blown up with visible pixels, larger ones smoothly.
    resample = Image.NEAREST if shape[0] >= 2 * image.shape[0] else Image.BILINEAR
    return np.asarray(Image.fromarray(image).resize((shape[1], shape[0]), resample))


def overlay(thumb: np.ndarray, unit_mask: np.ndarray, formula_mask: np.ndarray) -> np.ndarray:
    """Draw a unit's and a formula's masks over an image.

    Args:
        thumb: uint8 ``[h, w, 3]``, the (scaled) image.
        unit_mask, formula_mask: bool masks on the concepts' grid, any size; resized to
            ``h x w`` by nearest-neighbour sampling.

    Returns:
        uint8 ``[h, w, 3]``: the unit's mask filled translucent :data:`UNIT_COLOR` with a solid
        outline, the formula's mask hatched translucent :data:`FORMULA_COLOR` with a solid
        outline drawn last; pixels outside both masks are the image's.

    Examples:
        >>> import numpy as np
        >>> img = np.zeros((4, 4, 3), np.uint8)
        >>> unit = np.zeros((2, 2), bool); unit[0, 0] = True
        >>> out = overlay(img, unit, np.zeros((2, 2), bool))
        >>> out[0, 0].tolist() == list(UNIT_COLOR), out[3, 3].tolist()
        (True, [0, 0, 0])
    """
    shape = thumb.shape[:2]
    unit = _resize_mask(np.asarray(unit_mask, bool), shape)
    formula = _resize_mask(np.asarray(formula_mask, bool), shape)
    out = thumb.astype(np.float32)
    out[unit] = out[unit] * (1 - UNIT_ALPHA) + np.float32(UNIT_ALPHA) * np.array(UNIT_COLOR, np.float32)
    yy, xx = np.indices(shape)
    hatch = formula & ((yy + xx) % _HATCH_PERIOD < 2)
    out[hatch] = out[hatch] * (1 - _HATCH_ALPHA) + np.float32(_HATCH_ALPHA) * np.array(FORMULA_COLOR, np.float32)
    out = np.rint(out).astype(np.uint8)
    out[_inner_edge(unit)] = UNIT_COLOR
    out[_inner_edge(formula)] = FORMULA_COLOR
    return out


def save_png(array: np.ndarray, path: str) -> None:
    """Write a uint8 ``[h, w, 3]`` image as a PNG."""
    from PIL import Image

    # Level 1: these are small images; heavier compression costs time and saves little.
    Image.fromarray(array).save(path, format="PNG", compress_level=1)
