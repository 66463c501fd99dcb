"""Plain NumPy reference implementation of compexp-core (see /work/shared/DESIGN.md).

This module is the test oracle: the compiled engine (CPU and CUDA backends) is tested
against it result for result.  It is also the "NumPy reference" opponent timed by the
benchmarks, so its counting is vectorised: for every beam formula and every operator,
one pass over ALL concepts at once on packed bits (uint64 words, ``np.bitwise_count``).
Only the pool bookkeeping (candidate list, stable sort, dedup) is plain Python.

It imports nothing from ``compexp_core`` and deliberately does not use the counting
identity of DESIGN.md: every candidate mask ``op(F, C)`` is formed explicitly (for all
concepts at once) and counted directly, so the identity the engine relies on is checked
rather than shared.

Public functions
----------------
format_name(name) -> str
formula_text(op, f_text, c_text) -> str
pil_resize_bilinear(img, out_h, out_w, *, pass_order="pillow13") -> float32 [out_h, out_w]
pillow_vertical_first(h, w, out_h, out_w) -> bool
reference_thresholds(acts, quantile=0.005) -> float64 [U]
reference_unit_masks(acts, grid_hw, quantile=0.005, threshold=None, *, pass_order="pillow13")
    -> bool [U, N*H*W]
pack_masks(masks) -> uint64 [M, n_words]
reference_primitive_counts(unit_masks, concept_masks) -> (inter [U, K], unit_sizes [U], concept_sizes [K])
reference_metric(metric, inter, size, unit_size) -> float64 ndarray (0-d for scalar inputs)
reference_search(unit_masks, concept_masks, names=None, *, max_length=3, beam_size=10,
                 ops=("or", "and", "and_not"), metric="iou", allow_repeats=False,
                 candidate_limit=None, complexity_penalty=1.0) -> list[dict]
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "CANONICAL_OPS",
    "METRICS",
    "format_name",
    "formula_text",
    "pil_resize_bilinear",
    "pillow_vertical_first",
    "reference_thresholds",
    "reference_unit_masks",
    "pack_masks",
    "reference_primitive_counts",
    "reference_metric",
    "reference_search",
]

#: Operators in the canonical generation order.
CANONICAL_OPS = ("or", "and", "and_not", "or_not")
METRICS = ("iou", "precision", "recall")

_OP_TEXT = {"or": " OR ", "and": " AND ", "and_not": " AND NOT ", "or_not": " OR NOT "}
_RESERVED = {"AND", "OR", "NOT"}

# Bound on the temporary [k_chunk, n_words] arrays of one vectorised pass (in words).
_CHUNK_WORDS = 1 << 22


# --------------------------------------------------------------------------------------
# Formula text
# --------------------------------------------------------------------------------------
def format_name(name) -> str:
    """A concept name as it appears in formula text.

    Quoted (``"..."``, with ``\\`` -> ``\\\\`` and ``"`` -> ``\\"``) when it is empty,
    contains whitespace, ``(``, ``)``, ``"`` or ``\\``, or equals AND / OR / NOT in any
    case; otherwise written as is.
    """
    name = str(name)
    needs_quotes = (
        name == ""
        or any(ch.isspace() or ch in '()"\\' for ch in name)
        or name.upper() in _RESERVED
    )
    if not needs_quotes:
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def formula_text(op: str, f_text: str, c_text: str) -> str:
    """Text of ``op(F, C)`` given the texts of F and of the (already formatted) leaf C."""
    return "(" + f_text + _OP_TEXT[op] + c_text + ")"


# --------------------------------------------------------------------------------------
# Pillow-compatible bilinear resize
# --------------------------------------------------------------------------------------
def _bilinear_coeffs(in_size: int, out_size: int):
    """Pillow's precompute_coeffs for the bilinear filter (libImaging/Resample.c).

    Returns (xmin [out], xmax [out] (number of taps), k [out, ksize] float64 normalised
    weights, zero beyond xmax).
    """
    scale = float(in_size) / out_size
    filterscale = scale if scale >= 1.0 else 1.0
    support = 1.0 * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    xmins = np.zeros(out_size, dtype=np.int64)
    xmaxs = np.zeros(out_size, dtype=np.int64)
    kk = np.zeros((out_size, ksize), dtype=np.float64)
    ss = 1.0 / filterscale
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = int(center - support + 0.5)  # C (int): truncation toward zero
        if xmin < 0:
            xmin = 0
        xmax = int(center + support + 0.5)
        if xmax > in_size:
            xmax = in_size
        xmax -= xmin
        ww = 0.0
        ws = []
        for x in range(xmax):
            t = (x + xmin - center + 0.5) * ss
            if t < 0.0:
                t = -t
            w = 1.0 - t if t < 1.0 else 0.0
            ws.append(w)
            ww += w
        for x in range(xmax):
            kk[xx, x] = ws[x] / ww if ww != 0.0 else ws[x]
        xmins[xx] = xmin
        xmaxs[xx] = xmax
    return xmins, xmaxs, kk


def _resample_axis(data: np.ndarray, out_size: int, axis: int, dtype=np.float32) -> np.ndarray:
    """One Pillow pass along ``axis`` (0 = vertical, 1 = horizontal) of a float32 image
    (``dtype=np.float64``: the same pass with the result kept in float64).

    Accumulates in float64 in tap order x = 0..xmax-1 (as Pillow's loop does), vectorised
    over output pixels; taps beyond xmax are not added at all (not even as 0 * value).
    """
    in_size = data.shape[axis]
    xmins, xmaxs, kk = _bilinear_coeffs(in_size, out_size)
    src = np.moveaxis(data, axis, 0)  # [in_size, other]
    acc = np.zeros((out_size,) + src.shape[1:], dtype=np.float64)
    for x in range(kk.shape[1]):
        active = x < xmaxs  # [out_size]
        if not active.any():
            break
        idx = np.where(active, xmins + x, 0)
        term = src[idx].astype(np.float64) * kk[:, x].reshape((-1,) + (1,) * (src.ndim - 1))
        acc = np.where(active.reshape((-1,) + (1,) * (src.ndim - 1)), acc + term, acc)
    out = acc.astype(dtype)
    return np.moveaxis(out, 0, axis)


def pillow_vertical_first(h: int, w: int, out_h: int, out_w: int) -> bool:
    """Whether Pillow >= 13 runs the vertical pass first (when both passes are needed).

    Pillow 13 (python-pillow/Pillow#9549, "if height is scaled down significantly more
    than width, resize vertically first") resizes vertically first when the height
    shrinks and ``h - out_h > 2 * (w - out_w)``.  Determined empirically against
    Pillow 13.0.0 (about 95,000 shape combinations, including every downscale with
    sides < 25, no exception); earlier Pillow versions always go horizontal first.
    Upsampling in both directions (the usual activation-map case) is horizontal first
    in every version.
    """
    return out_h < h and (h - out_h) > 2 * (w - out_w)


def pil_resize_bilinear(img: np.ndarray, out_h: int, out_w: int, *, pass_order: str = "pillow13") -> np.ndarray:
    """Pillow's ``Image.fromarray(img, "F").resize((out_w, out_h), Image.BILINEAR)``, bit for bit.

    Separable: two passes with float64 accumulation, each stored as float32; a pass
    whose size does not change is skipped (identity), as in Pillow.  ``pass_order``:
    ``"pillow13"`` (default: Pillow >= 13, see :func:`pillow_vertical_first`) or
    ``"horizontal_first"`` (Pillow < 13: always horizontal first).
    """
    img = np.asarray(img, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError("pil_resize_bilinear expects a 2-D image")
    return _pil_resize_batch(img[None], int(out_h), int(out_w), pass_order=pass_order)[0]


def _pil_resize_batch(maps: np.ndarray, out_h: int, out_w: int, pass_order: str = "pillow13",
                      dtype=np.float32) -> np.ndarray:
    """pil_resize_bilinear applied to every map of ``maps[..., h, w]`` (same arithmetic).

    ``dtype=np.float64``: the float64 variant (maps and each pass's result kept in float64,
    the same operations in the same order; Pillow itself has no float64 mode)."""
    if pass_order not in ("pillow13", "horizontal_first"):
        raise ValueError(f"unknown pass_order {pass_order!r}")
    if out_h <= 0 or out_w <= 0:
        raise ValueError("output size must be positive")
    maps = np.asarray(maps, dtype=dtype)
    lead = maps.shape[:-2]
    h, w = maps.shape[-2:]
    out = maps.reshape((-1, h, w))

    def horizontal(a):
        t = np.moveaxis(a, 2, 0)  # [w, B, rows]
        return np.moveaxis(_resample_axis(t, out_w, axis=0, dtype=dtype), 0, 2)

    def vertical(a):
        t = np.moveaxis(a, 1, 0)  # [h, B, cols]
        return np.moveaxis(_resample_axis(t, out_h, axis=0, dtype=dtype), 0, 1)

    need_h = out_w != w
    need_v = out_h != h
    if need_h and need_v and pass_order == "pillow13" and pillow_vertical_first(h, w, out_h, out_w):
        out = horizontal(vertical(out))
    else:
        if need_h:
            out = horizontal(out)
        if need_v:
            out = vertical(out)
    return np.ascontiguousarray(out, dtype=dtype).reshape(lead + (out_h, out_w))


# --------------------------------------------------------------------------------------
# Thresholds and unit masks
# --------------------------------------------------------------------------------------
def reference_thresholds(acts, quantile: float = 0.005) -> np.ndarray:
    """t_u = np.quantile(acts[:, u] (float64, all values), 1 - quantile), linear method."""
    acts = np.asarray(acts)
    if acts.ndim not in (2, 4):
        raise ValueError("acts must be [N, U] or [N, U, h, w]")
    n_units = acts.shape[1]
    q = 1 - quantile
    out = np.empty(n_units, dtype=np.float64)
    for u in range(n_units):
        out[u] = np.quantile(acts[:, u].astype(np.float64).ravel(), q)
    return out


def reference_unit_masks(acts, grid_hw, quantile: float = 0.005, threshold=None, *,
                         pass_order: str = "pillow13") -> np.ndarray:
    """Unit masks ``bool [U, N*H*W]`` (sample-major cells: n*H*W + y*W + x).

    * bool acts ``[N, U, H, W]`` are used as given; bool ``[N, U]`` / ``[N, U, 1, 1]``
      cover whole samples of the H x W grid.
    * float ``[N, U]`` acts: ``acts (float64) > t_u``, covering whole samples.
    * float ``[N, U, h, w]`` acts are converted to float32 (float64 acts stay float64 and
      are resized with the same operations in double precision),
      each map is resized with :func:`pil_resize_bilinear` to ``grid_hw`` and the mask is
      ``upsampled.astype(float64) > t_u``; t_u from :func:`reference_thresholds` on the raw
      acts unless ``threshold`` (scalar or per-unit) is given.
    """
    acts = np.asarray(acts)
    H, W = (int(v) for v in grid_hw)
    if acts.ndim == 2:
        acts4 = acts[:, :, None, None]
    elif acts.ndim == 4:
        acts4 = acts
    else:
        raise ValueError("acts must be [N, U] or [N, U, h, w]")
    N, U, h, w = acts4.shape
    if acts.dtype == np.bool_:
        if (h, w) == (H, W):
            grid = acts4
        elif (h, w) == (1, 1):
            grid = np.broadcast_to(acts4, (N, U, H, W))
        else:
            raise ValueError("boolean acts must be on the grid or per sample")
        return np.ascontiguousarray(grid.transpose(1, 0, 2, 3)).reshape(U, N * H * W).copy()
    if not np.issubdtype(acts.dtype, np.floating):
        raise ValueError("acts must be float or bool")
    if threshold is None:
        t = reference_thresholds(acts, quantile)
    else:
        t = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (U,))
    if acts.ndim == 2:
        # [N, U] values (DESIGN.md: U_u = {acts > t_u}): compared raw, no float32 image involved.
        fired = acts.astype(np.float64) > t[None, :]
        return np.ascontiguousarray(np.broadcast_to(fired.T[:, :, None], (U, N, H * W))).reshape(U, N * H * W)
    out = np.empty((U, N, H, W), dtype=bool)
    step = max(1, (1 << 22) // max(U * H * W, 1))  # bound the temporaries; same arithmetic
    for lo in range(0, N, step):
        dt = np.float64 if acts.dtype == np.float64 else np.float32
        maps = acts4[lo:lo + step].astype(dt)
        if (h, w) != (H, W):
            maps = _pil_resize_batch(maps, H, W, pass_order=pass_order, dtype=dt)
        masks = maps.astype(np.float64) > t[None, :, None, None]
        out[:, lo:lo + step] = masks.transpose(1, 0, 2, 3)
    return out.reshape(U, N * H * W)


# --------------------------------------------------------------------------------------
# Packed bits and counts
# --------------------------------------------------------------------------------------
def pack_masks(masks) -> np.ndarray:
    """bool ``[M, P]`` -> uint64 ``[M, ceil(P/64)]``; cell c is bit c%64 of word c//64.

    Padding bits (cells >= P) are zero.
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 2:
        raise ValueError("masks must be 2-D [M, P]")
    M, P = masks.shape
    n_words = (P + 63) // 64
    padded = np.zeros((M, n_words * 64), dtype=bool)
    padded[:, :P] = masks
    by = np.packbits(padded, axis=1, bitorder="little")  # [M, n_words*8] uint8
    return np.ascontiguousarray(by).view("<u8").astype(np.uint64, copy=False).reshape(M, n_words)


def _valid_words(P: int) -> np.ndarray:
    """uint64 [n_words] with the bits of the P valid cells set."""
    n_words = (P + 63) // 64
    valid = np.full(n_words, np.uint64(0xFFFFFFFFFFFFFFFF), dtype=np.uint64)
    rem = P % 64
    if n_words and rem:
        valid[-1] = np.uint64((1 << rem) - 1)
    return valid


def _popcount_rows(words: np.ndarray) -> np.ndarray:
    """Exact int64 popcount of each row of a uint64 [..., n_words] array."""
    return np.bitwise_count(words).sum(axis=-1, dtype=np.int64)


def reference_primitive_counts(unit_masks, concept_masks):
    """(|U_u & C_j| int64 [U, K], |U_u| int64 [U], |C_j| int64 [K])."""
    uw = pack_masks(unit_masks)
    cw = pack_masks(concept_masks)
    inter = np.empty((uw.shape[0], cw.shape[0]), dtype=np.int64)
    for u in range(uw.shape[0]):
        inter[u] = _popcount_rows(cw & uw[u])
    return inter, _popcount_rows(uw), _popcount_rows(cw)


def reference_metric(metric: str, inter, size, unit_size):
    """Metric from exact counts, in float64 (0.0 where the denominator is 0).

    iou = I / (|U| + S - I); precision = I / S; recall = I / |U|.
    """
    inter = np.asarray(inter, dtype=np.int64)
    size = np.asarray(size, dtype=np.int64)
    unit_size = np.asarray(unit_size, dtype=np.int64)
    if metric == "iou":
        denom = unit_size + size - inter
    elif metric == "precision":
        denom = size
    elif metric == "recall":
        denom = np.broadcast_to(unit_size, np.broadcast(inter, size).shape)
    else:
        raise ValueError(f"unknown metric {metric!r}")
    inter, denom = np.broadcast_arrays(inter, denom)
    out = np.zeros(inter.shape, dtype=np.float64)
    nz = denom != 0
    out[nz] = inter[nz].astype(np.float64) / denom[nz].astype(np.float64)
    return out


def _apply_op(op: str, f_words: np.ndarray, c_words: np.ndarray, valid: np.ndarray) -> np.ndarray:
    if op == "or":
        return f_words | c_words
    if op == "and":
        return f_words & c_words
    if op == "and_not":
        return f_words & ~c_words
    if op == "or_not":
        return (f_words | ~c_words) & valid
    raise ValueError(f"unknown op {op!r}")


def _op_counts(op, f_words, concept_words, u_words, valid):
    """(I [K], S [K]) of op(F, C_j) for every concept j: one vectorised pass (chunked over
    concepts only to bound the temporary)."""
    K, n_words = concept_words.shape
    inter = np.empty(K, dtype=np.int64)
    size = np.empty(K, dtype=np.int64)
    step = max(1, _CHUNK_WORDS // max(n_words, 1))
    for lo in range(0, K, step):
        g = _apply_op(op, f_words, concept_words[lo:lo + step], valid)
        size[lo:lo + step] = _popcount_rows(g)
        g &= u_words
        inter[lo:lo + step] = _popcount_rows(g)
    return inter, size


# --------------------------------------------------------------------------------------
# Beam search
# --------------------------------------------------------------------------------------
class _Entry:
    __slots__ = ("text", "leaves", "score", "metric", "words", "src", "op", "concept")

    def __init__(self, text, leaves, score, metric, words=None, src=None, op=None, concept=None):
        self.text = text
        self.leaves = leaves  # frozenset of leaf names
        self.score = score
        self.metric = metric
        self.words = words  # packed mask, materialised only for beam members
        self.src = src
        self.op = op
        self.concept = concept


def _validate(max_length, beam_size, ops, metric, candidate_limit, K, names):
    for op in ops:
        if op not in CANONICAL_OPS:
            raise ValueError(f"unknown op {op!r}; expected one of {CANONICAL_OPS}")
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")
    if int(max_length) < 1:
        raise ValueError("max_length must be >= 1")
    if int(beam_size) < 1:
        raise ValueError("beam_size must be >= 1")
    if candidate_limit is not None and int(candidate_limit) < 0:
        raise ValueError("candidate_limit must be >= 0 or None")
    if len(names) != K:
        raise ValueError("names must have one entry per concept")


def reference_search(
    unit_masks,
    concept_masks,
    names=None,
    *,
    max_length: int = 3,
    beam_size: int = 10,
    ops=("or", "and", "and_not"),
    metric: str = "iou",
    allow_repeats: bool = False,
    candidate_limit=None,
    complexity_penalty: float = 1.0,
) -> list:
    """Beam search of DESIGN.md for every unit.

    ``unit_masks`` bool [U, P], ``concept_masks`` bool [K, P]; ``names`` defaults to
    ``str(j)``.  Returns one dict per unit with keys unit, formula, iou, score, primitive,
    primitive_iou, beam (list of (text, score), best first).
    """
    unit_masks = np.asarray(unit_masks, dtype=bool)
    concept_masks = np.asarray(concept_masks, dtype=bool)
    if unit_masks.ndim != 2 or concept_masks.ndim != 2:
        raise ValueError("unit_masks and concept_masks must be 2-D")
    if unit_masks.shape[1] != concept_masks.shape[1]:
        raise ValueError("unit_masks and concept_masks must have the same number of cells")
    n_units, P = unit_masks.shape
    K = concept_masks.shape[0]
    if names is None:
        names = [str(j) for j in range(K)]
    names = [str(n) for n in names]
    ops = tuple(ops)
    _validate(max_length, beam_size, ops, metric, candidate_limit, K, names)
    max_length = int(max_length)
    beam_size = int(beam_size)
    op_order = [op for op in CANONICAL_OPS if op in ops]
    leaf_text = [format_name(n) for n in names]
    penalty = float(complexity_penalty)

    uw_all = pack_masks(unit_masks)  # [U, n_words]
    cw = pack_masks(concept_masks)  # [K, n_words]
    valid = _valid_words(P)
    c_sizes = _popcount_rows(cw)  # [K]

    results = []
    for u in range(n_units):
        uw = uw_all[u]
        u_size = int(_popcount_rows(uw))
        # Step 1: every concept alone, one vectorised pass.
        prim_inter = _popcount_rows(cw & uw)
        prim_metric = reference_metric(metric, prim_inter, c_sizes, u_size)
        prim_score = prim_metric * (penalty ** 0)
        ranking = [int(j) for j in np.argsort(-prim_score, kind="stable") if prim_score[j] > 0]

        beam = []
        for j in ranking[:beam_size]:
            beam.append(_Entry(leaf_text[j], frozenset([names[j]]), float(prim_score[j]),
                               float(prim_metric[j]), words=cw[j].copy()))
        if beam:
            primitive = beam[0].text
            primitive_iou = beam[0].metric
        else:
            primitive = None
            primitive_iou = 0.0

        if candidate_limit is None:
            candidates = list(range(K))
        else:
            candidates = ranking[: int(candidate_limit)]
        cand_idx = np.asarray(candidates, dtype=np.int64)
        cand_words = cw[cand_idx] if len(candidates) else np.zeros((0, cw.shape[1]), np.uint64)

        for length in range(2, max_length + 1):
            if not beam:
                break
            factor = penalty ** (length - 1)
            # Counts: per beam formula and operator, one pass over all candidate concepts.
            counts = []
            for entry in beam:
                per_op = {}
                for op in op_order:
                    inter, size = _op_counts(op, entry.words, cand_words, uw, valid)
                    m = reference_metric(metric, inter, size, u_size)
                    per_op[op] = (m, m * factor)
                counts.append(per_op)
            # Pool bookkeeping.
            pool = list(beam)
            seen = {e.text for e in beam}
            for bi, entry in enumerate(beam):
                per_op = counts[bi]
                for ci, j in enumerate(candidates):
                    if not allow_repeats and names[j] in entry.leaves:
                        continue
                    for op in op_order:
                        text = formula_text(op, entry.text, leaf_text[j])
                        if text in seen:
                            continue
                        seen.add(text)
                        m, s = per_op[op]
                        pool.append(_Entry(text, entry.leaves | {names[j]}, float(s[ci]),
                                           float(m[ci]), src=entry, op=op, concept=j))
            pool.sort(key=lambda e: -e.score)  # stable
            new_beam = pool[:beam_size]
            for e in new_beam:
                if e.words is None:
                    e.words = _apply_op(e.op, e.src.words, cw[e.concept], valid)
            beam = new_beam

        if beam:
            best = beam[0]
            formula, iou, score = best.text, best.metric, best.score
        else:
            formula, iou, score = None, 0.0, 0.0
        results.append({
            "unit": u,
            "formula": formula,
            "iou": float(iou),
            "score": float(score),
            "primitive": primitive,
            "primitive_iou": float(primitive_iou),
            "beam": [(e.text, float(e.score)) for e in beam],
        })
    return results
