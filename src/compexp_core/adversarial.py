"""Copy-paste adversarial examples read from explanations, measured against controls.

The paper's last claim: if the units that push a model towards class Y are explained by
concepts X, then adding X to an input should push the prediction towards Y, and such edits
can be found by reading explanations rather than by optimisation. This module turns the claim
into an experiment:

1. :func:`propose_edits`: take the units contributing most to the target class Y (a
   contributions matrix ``[U, C]``: read-out weights from
   :func:`compexp_core.analysis.unit_class_weights`, or mean gradient x activation from
   :func:`compexp_core.analysis.gradient_contributions`), read the concepts their formulas use
   positively (:func:`compexp_core.analysis.positive_terms`: a conjunction's leaves not under a
   NOT), and rank them by the summed contribution of the units asking for them;
2. :func:`choose_controls`: for each edit, a control edit of the same shape (as many concepts,
   of the same categories) whose concepts appear in no explanation of Y's units and whose
   frequency is as close as possible;
3. :func:`evaluate_edits`: apply each edit and its control, with the same sizes and positions,
   to inputs the model predicts as other classes, and count how many move to Y.

An edit is domain specific; a *renderer* applies it. A renderer has ``domain`` (a name for
the results table) and three methods:

* ``check(term) -> Optional[str]``: why the term (a tuple of concept names, a region where all
  of them hold) cannot be rendered, or None;
* ``frequency(term) -> float``: the share of the probing data the term covers (for matching
  controls); ``candidates() -> list[(name, category)]``: concepts controls may use;
* ``apply(inputs, term, seed) -> edited inputs``: the edited copies; input i's edit is drawn
  from a generator seeded by ``(seed, i)``, so an edit and its control share their geometry.

:class:`RegionPaste` is the vision renderer: it pastes the term's region, cut from images whose
segmentations are known (the procedural world's, :func:`world_region_paste`, or a Broden
dataset's), at several sizes and positions.

Statistics: the flip rate of an edit is the share of edited inputs predicted as Y, with a 95%
Wilson interval; ``p_value`` is the exact one-sided paired permutation p-value (McNemar's
exact test) of "the edit moves more inputs to Y than its control": under the null, each input
flipped by exactly one of the two is equally likely to be flipped by either.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from .analysis import _class_names, _contribution_matrix, explained_units, positive_terms
from .engine.concepts import ConceptSet
from .engine.formula import Formula, Leaf
from .results import SearchResult

__all__ = ["Edit", "EditOutcome", "propose_edits", "choose_controls", "evaluate_edits",
           "RegionPaste", "world_region_paste", "wilson_interval", "paired_p_value",
           "ADVERSARIAL_COLUMNS", "outcome_rows", "headline", "choose_targets", "run_experiment",
           "image_examples", "save_tables", "term_text", "torch_classifier",
           "image_tensor", "WordInsert", "FINAL_PUNCTUATION"]

#: Columns of ``adversarial.csv`` (:func:`outcome_rows`).
ADVERSARIAL_COLUMNS = ("domain", "target", "concept", "units", "n_inputs", "flip_rate",
                       "flip_ci_low", "flip_ci_high", "control", "control_flip_rate",
                       "control_ci_low", "control_ci_high", "unedited_rate", "p_value")


def term_text(term: Sequence[str]) -> str:
    """A term as text: its concepts joined by ``+``."""
    return "+".join(term)


@dataclass(frozen=True)
class Edit:
    """An edit that adds concepts to inputs, proposed for a target class.

    Attributes:
        target: the target class index.
        target_name: its name.
        concepts: the term: the concepts the added region has, all at once.
        units: the units whose formulas ask for the term, most contributing first.
        contribution: the summed contribution of those units to the target.
    """
    target: int
    target_name: str
    concepts: tuple
    units: tuple
    contribution: float

    @property
    def name(self) -> str:
        return term_text(self.concepts)


def _target_index(target, names: tuple) -> int:
    if isinstance(target, str):
        if target not in names:
            shown = ", ".join(repr(n) for n in names[:8]) + (", ..." if len(names) > 8 else "")
            raise ValueError(f"target class {target!r} is not one of the model's {len(names)} "
                             f"classes ({shown})")
        return names.index(target)
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)):
        raise TypeError(f"target must be a class index or name, got {target!r}")
    if not 0 <= int(target) < len(names):
        raise ValueError(f"target class {int(target)} is out of range: the model has "
                         f"{len(names)} classes (0..{len(names) - 1})")
    return int(target)


def _explained(result: SearchResult) -> list:
    if not isinstance(result, SearchResult):
        raise TypeError(f"result must be a SearchResult, got {type(result).__name__}")
    return explained_units(result, "there is nothing to read edits from",
                           empty_hint=": search the layer's units first")


def _default_names(c: np.ndarray, class_names) -> tuple:
    if class_names is None:
        return tuple(str(j) for j in range(c.shape[1]))
    return _class_names(class_names, c.shape[1])


def propose_edits(result: SearchResult, contributions, target, *,
                  class_names: Optional[Sequence[str]] = None, top_units: int = 5,
                  max_edits: int = 3, renderer=None) -> list:
    """Edits that should move inputs to ``target``, read from the explanations of the units
    contributing most to it.

    The ``top_units`` explained units with the largest positive contribution to the target
    are read; each positive term of each formula (:func:`~compexp_core.analysis.
    positive_terms`) scores the unit's contribution, and terms are ranked by their summed
    score (ties: first seen). With a ``renderer``, terms it cannot render (an image-level
    scene, a part-of-speech tag) are skipped.

    Args:
        result: a search result over the layer's units.
        contributions: float ``[U, C]``, row u = unit u (read-out weights or gradient x
            activation).
        target: the target class, an index or a name in ``class_names``.
        class_names: the C class names (default ``"0".."C-1"``).
        top_units: explained units read (>= 1).
        max_edits: at most this many edits.
        renderer: optional; only terms it can render are proposed.

    Returns:
        A list of :class:`Edit`, best first (empty when no read unit's formula uses a
        renderable concept positively).

    Raises:
        ValueError: the target is not a class of ``contributions``; the result has no
            explanations; no explained unit contributes positively to the target.

    Examples:
        >>> from compexp_core.engine.results import Explanation
        >>> result = SearchResult([
        ...     Explanation(0, Formula.parse("(red AND NOT circle)"), 0.5, 0.3, None, 0.0),
        ...     Explanation(1, Formula.parse("(sky OR red)"), 0.4, 0.3, None, 0.0)])
        >>> contributions = np.array([[2.0, 0.0], [1.0, 0.5]])        # [U=2, C=2]
        >>> [(e.name, e.units, e.contribution)
        ...  for e in propose_edits(result, contributions, "cat", class_names=["cat", "dog"])]
        [('red', (0, 1), 3.0), ('sky', (1,), 1.0)]
    """
    explained = _explained(result)
    c = _contribution_matrix(contributions, result)
    names = _default_names(c, class_names)
    t = _target_index(target, names)
    for what, v in (("top_units", top_units), ("max_edits", max_edits)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{what} must be an integer >= 1, got {v!r}")
    ranked = sorted((e for e in explained if c[e.unit, t] > 0),
                    key=lambda e: (-c[e.unit, t], e.unit))[:top_units]
    if not ranked:
        raise ValueError(f"no explained unit contributes positively to class {names[t]!r}: "
                         f"there are no explanations to read edits from")
    scores: dict = {}
    units: dict = {}
    for e in ranked:
        for term in positive_terms(e.formula):
            if renderer is not None and renderer.check(term) is not None:
                continue
            scores[term] = scores.get(term, 0.0) + float(c[e.unit, t])
            units.setdefault(term, []).append(e.unit)
    order = sorted(scores, key=lambda k: -scores[k])     # stable: ties keep first seen
    return [Edit(t, names[t], k, tuple(units[k]), scores[k]) for k in order[:max_edits]]


def _concepts_of_target_units(result: SearchResult, c: np.ndarray, t: int) -> set:
    """Every concept (plain or negated) in the formulas of the units that push most towards
    class ``t`` (their largest contribution is to ``t``)."""
    out = set()
    for e in result:
        if e.formula is not None and int(np.argmax(c[e.unit])) == t:
            out.update(e.formula.leaves())
    return out


def choose_controls(result: SearchResult, contributions, edits: Sequence[Edit], renderer, *,
                    per_position: int = 4) -> list:
    """A frequency-matched control for each edit.

    A control has as many concepts as its edit, of the same categories position by position
    (when the renderer gives categories), none of them in any formula of the target's units
    (the units whose largest contribution is to the target) nor in the edit's units' formulas;
    it must be renderable, and its frequency (``renderer.frequency``) is the closest to the
    edit's on a log scale among the combinations of the ``per_position`` concepts closest in
    frequency at each position.

    Args:
        result, contributions: as for :func:`propose_edits`.
        edits: the edits (from :func:`propose_edits`).
        renderer: the renderer the edits will be applied with.
        per_position: candidate concepts per position.

    Returns:
        One term (a tuple of concept names) per edit, or None where no concept qualifies.
    """
    c = _contribution_matrix(contributions, result)
    category = dict(renderer.candidates())
    out = []
    for edit in edits:
        excluded = _concepts_of_target_units(result, c, edit.target) | set(edit.concepts)
        for u in edit.units:
            excluded.update(result.by_unit(u).formula.leaves())
        goal = renderer.frequency(edit.concepts)
        pools = []
        for name in edit.concepts:
            f = renderer.frequency((name,))
            pool = [n for n, cat in category.items()
                    if n not in excluded and cat == category.get(name, cat)
                    and renderer.check((n,)) is None]
            pool.sort(key=lambda n: abs(math.log((renderer.frequency((n,)) + 1e-12)
                                                 / (f + 1e-12))))
            pools.append(pool[:per_position])
        best, best_gap = None, math.inf
        for combo in _products(pools):
            if len(set(combo)) < len(combo):
                continue
            term = tuple(sorted(combo))
            if renderer.check(term) is not None:
                continue
            gap = abs(math.log((renderer.frequency(term) + 1e-12) / (goal + 1e-12)))
            if gap < best_gap:
                best, best_gap = term, gap
        out.append(best)
    return out


def _products(pools: list) -> list:
    combos = [()]
    for pool in pools:
        combos = [c + (p,) for c in combos for p in pool]
    return combos


# ------------------------------------------------------------------------------ statistics

def wilson_interval(k: int, n: int, z: float = 1.959963984540054) -> tuple:
    """The Wilson score interval of a binomial proportion ``k / n`` (95% by default);
    ``(nan, nan)`` when ``n`` is 0.

    Examples:
        >>> [round(v, 3) for v in wilson_interval(8, 10)]
        [0.49, 0.943]
    """
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # The bounds are exactly 0 and 1 at k = 0 and k = n (rounding would leave ~1e-18).
    return (0.0 if k == 0 else max(0.0, centre - half), 1.0 if k == n else min(1.0, centre + half))


def paired_p_value(edit_flipped, control_flipped) -> float:
    """Exact one-sided paired permutation p-value that the edit flips more inputs than its
    control (McNemar's exact test): with b inputs flipped by the edit only and c by the control
    only, the probability of at least b successes in b + c fair coin tosses (1.0 when none
    differ).

    Examples:
        >>> paired_p_value([1, 1, 1, 1, 0], [0, 0, 0, 0, 0])        # 4 of 4 discordant: 1/16
        0.0625
    """
    e = np.asarray(edit_flipped, bool)
    k = np.asarray(control_flipped, bool)
    b, c = int((e & ~k).sum()), int((~e & k).sum())
    n = b + c
    if n == 0:
        return 1.0
    return float(sum(math.comb(n, i) for i in range(b, n + 1)) / 2 ** n)


# ------------------------------------------------------------------------------ evaluation

@dataclass
class EditOutcome:
    """What an edit and its control did.

    Attributes:
        domain: the renderer's domain (``"vision"``, ``"nli"``).
        edit: the :class:`Edit`.
        control: the control term (None: no control could be chosen).
        inputs: indices of the edited inputs (predicted as another class unedited).
        flipped, control_flipped: bool per edited input: predicted as the target after the
            edit / after the control edit.
        predicted, control_predicted: the predictions after each edit.
        original_predicted: the predictions before.
        unedited_rate: the share of all given inputs the model predicts as the target.
        p_value: :func:`paired_p_value` (NaN without a control).
        examples: a few ``(original, edited, control_edited)`` inputs (flipped ones first),
            with their positions in ``inputs`` (``example_rows``), for reports.
    """
    domain: str
    edit: Edit
    control: Optional[tuple]
    inputs: np.ndarray
    flipped: np.ndarray
    control_flipped: np.ndarray
    predicted: np.ndarray
    control_predicted: np.ndarray
    original_predicted: np.ndarray
    unedited_rate: float
    p_value: float
    examples: list = field(default_factory=list)
    example_rows: list = field(default_factory=list)

    @property
    def flip_rate(self) -> float:
        return float(self.flipped.mean()) if self.flipped.size else float("nan")

    @property
    def control_flip_rate(self) -> float:
        if self.control is None or not self.control_flipped.size:
            return float("nan")
        return float(self.control_flipped.mean())

    @property
    def beats_control(self) -> bool:
        """The edit flips more inputs than its control, at p < 0.05."""
        return self.control is not None and self.flip_rate > self.control_flip_rate \
            and self.p_value < 0.05


def _take(inputs, idx: np.ndarray):
    if hasattr(inputs, "shape"):
        return inputs[idx]
    return [inputs[int(i)] for i in idx]


def _classify(model: Callable, inputs, batch_size: int) -> np.ndarray:
    n = len(inputs)
    out = []
    for s in range(0, n, batch_size):
        idx = np.arange(s, min(n, s + batch_size))
        pred = np.asarray(model(_take(inputs, idx)))
        if pred.shape != (idx.size,) or pred.dtype.kind not in "iu":
            raise ValueError(f"the model must return one integer class per input, got shape "
                             f"{pred.shape} dtype {pred.dtype} for {idx.size} inputs")
        out.append(pred.astype(np.int64))
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def evaluate_edits(model: Callable, inputs, edits: Sequence[Edit], controls: Sequence,
                   renderer, *, max_inputs: int = 200, examples: int = 3, seed: int = 0,
                   batch_size: int = 256, predictions=None) -> list:
    """Apply each edit and its control to inputs predicted as other classes and measure how
    many move to the edit's target.

    For each edit, up to ``max_inputs`` of the inputs the model predicts as another class
    than the target (chosen at random with ``seed``) are edited with the edit's term and,
    separately, with its control term, both by ``renderer.apply`` with the same seed (so input
    i gets the same size and position in both).

    Args:
        model: ``model(batch) -> int [B]``: the predicted class of each input of a batch
            (a slice of ``inputs``: an array slice, or a list for list inputs).
        inputs: the inputs (vision: uint8 images ``[N, H, W, 3]``).
        edits: from :func:`propose_edits`.
        controls: one control term (or None) per edit, from :func:`choose_controls`.
        renderer: applies the terms.
        max_inputs: edited inputs per edit (>= 1).
        examples: edited inputs kept per edit for reports.
        seed: seed of the input choice and of the edits' geometry.
        batch_size: inputs per model call.
        predictions: the model's predictions on ``inputs`` when already known (int ``[N]``);
            default: computed.

    Returns:
        One :class:`EditOutcome` per edit.

    Raises:
        ValueError: ``controls`` and ``edits`` differ in length; an edit or control the
            renderer cannot render (``renderer.check`` says why); no input is predicted as
            another class; the model's output is not one class per input.

    Examples:
        A rule-based "model" that says contradiction (class 2) when the hypothesis has
        "sleeping", and the sentence-pair renderer:

        >>> from compexp_core.nli.concepts import sentence_concepts
        >>> from compexp_core.engine.results import Explanation
        >>> pairs = [(("A", "man", w, "."), ("He", v, ".")) for w in ("runs", "sits")
        ...          for v in ("sleeping", "eats", "runs", "walks", "sits")]
        >>> words = WordInsert(sentence_concepts(*zip(*pairs), tags=False))
        >>> def model(batch):
        ...     return np.array([2 if "sleeping" in h else 0 for _, h in batch])
        >>> result = SearchResult([Explanation(0, Formula.parse("hyp:tok:sleeping"), 0.9, 0.9,
        ...                                    None, 0.0)])
        >>> edits = propose_edits(result, np.array([[0.0, 0.0, 2.0]]), 2, renderer=words)
        >>> controls = choose_controls(result, np.array([[0.0, 0.0, 2.0]]), edits, words)
        >>> edits[0].name, controls
        ('hyp:tok:sleeping', [('hyp:tok:runs',)])
        >>> outcome, = evaluate_edits(model, pairs, edits, controls, words)
        >>> outcome.flip_rate, outcome.control_flip_rate, outcome.flipped.size
        (1.0, 0.0, 8)
    """
    if len(controls) != len(edits):
        raise ValueError(f"controls must give one term (or None) per edit: {len(edits)} edits, "
                         f"{len(controls)} controls")
    if isinstance(max_inputs, bool) or not isinstance(max_inputs, (int, np.integer)) \
            or max_inputs < 1:
        raise ValueError(f"max_inputs must be an integer >= 1, got {max_inputs!r}")
    for edit, control in zip(edits, controls):
        for term in (edit.concepts, control):
            if term is None:
                continue
            reason = renderer.check(tuple(term))
            if reason is not None:
                raise ValueError(f"cannot render the edit {term_text(term)!r}: {reason}")
    if len(inputs) == 0:
        raise ValueError("inputs is empty")
    if predictions is None:
        before = _classify(model, inputs, batch_size)
    else:
        before = np.asarray(predictions)
        if before.shape != (len(inputs),) or before.dtype.kind not in "iu":
            raise ValueError(f"predictions must be one integer class per input ({len(inputs)}), "
                             f"got shape {before.shape} dtype {before.dtype}")
        before = before.astype(np.int64)
    outcomes = []
    for k, (edit, control) in enumerate(zip(edits, controls)):
        pool = np.flatnonzero(before != edit.target)
        if pool.size == 0:
            raise ValueError(f"the model predicts every input as {edit.target_name!r}: there "
                             f"is no input of another class to edit")
        rng = np.random.default_rng([seed, k])
        chosen = np.sort(rng.choice(pool, size=min(max_inputs, pool.size), replace=False))
        originals = _take(inputs, chosen)
        edited = renderer.apply(originals, edit.concepts, seed)
        predicted = _classify(model, edited, batch_size)
        flipped = predicted == edit.target
        if control is not None:
            control_edited = renderer.apply(originals, tuple(control), seed)
            control_predicted = _classify(model, control_edited, batch_size)
        else:
            control_edited, control_predicted = None, np.zeros(0, np.int64)
        control_flipped = control_predicted == edit.target
        p = paired_p_value(flipped, control_flipped) if control is not None else float("nan")
        rows = sorted(range(chosen.size), key=lambda i: (not flipped[i], i))[:examples]
        kept = [(originals[i], edited[i], None if control_edited is None else control_edited[i])
                for i in rows]
        outcomes.append(EditOutcome(renderer.domain, edit, None if control is None
                                    else tuple(control), chosen, flipped, control_flipped,
                                    predicted, control_predicted, before[chosen],
                                    float((before == edit.target).mean()), p, kept, rows))
    return outcomes


def outcome_rows(outcomes: Sequence[EditOutcome]) -> list:
    """The rows of ``adversarial.csv`` (:data:`ADVERSARIAL_COLUMNS`), one per outcome."""
    rows = []
    for o in outcomes:
        n = int(o.flipped.size)
        lo, hi = wilson_interval(int(o.flipped.sum()), n)
        m = int(o.control_flipped.size)
        clo, chi = wilson_interval(int(o.control_flipped.sum()), m)
        rows.append({"domain": o.domain, "target": o.edit.target_name, "concept": o.edit.name,
                     "units": " ".join(str(u) for u in o.edit.units), "n_inputs": n,
                     "flip_rate": o.flip_rate, "flip_ci_low": lo, "flip_ci_high": hi,
                     "control": "" if o.control is None else term_text(o.control),
                     "control_flip_rate": o.control_flip_rate, "control_ci_low": clo,
                     "control_ci_high": chi, "unedited_rate": o.unedited_rate,
                     "p_value": o.p_value})
    return rows


def headline(outcomes: Sequence[EditOutcome], *, adding: str = "adding") -> list:
    """One line per outcome, and a last line saying how many edits beat their controls.

    Examples:
        >>> e = Edit(0, "red circle", ("red",), (3,), 1.0)
        >>> o = EditOutcome("vision", e, ("blue",), np.arange(4), np.array([1, 1, 1, 0], bool),
        ...                 np.zeros(4, bool), np.zeros(4, int), np.zeros(4, int),
        ...                 np.ones(4, int), 0.1, 0.125)
        >>> print("\\n".join(headline([o], adding="pasting")))
        pasting red moves 75% of 4 inputs predicted as other classes to 'red circle'
        (95% CI 30-95%); frequency-matched control blue: 0% (p = 0.125)
        0 of 1 edits beat their frequency-matched controls (more flips, p < 0.05)
    """
    lines = []
    for o in outcomes:
        lo, hi = wilson_interval(int(o.flipped.sum()), int(o.flipped.size))
        text = (f"{adding} {o.edit.name} moves {o.flip_rate:.0%} of {o.flipped.size} inputs "
                f"predicted as other classes to {o.edit.target_name!r} (95% CI "
                f"{lo:.0%}-{hi:.0%})".replace("%-", "-"))
        if o.control is None:
            text += "; no frequency-matched control concept was available"
        else:
            p = "< 0.001" if o.p_value < 0.001 else f"= {o.p_value:.3g}"
            text += (f"; frequency-matched control {term_text(o.control)}: "
                     f"{o.control_flip_rate:.0%} (p {p})")
        lines.append(text)
    beat = sum(o.beats_control for o in outcomes)
    lines.append(f"{beat} of {len(outcomes)} edits beat their frequency-matched controls "
                 f"(more flips, p < 0.05)")
    return lines


# ------------------------------------------------------------------------------ vision

def _and_formula(term: Sequence[str]) -> Formula:
    f: Formula = Leaf(term[0])
    for name in term[1:]:
        f = f.and_(name)
    return f


class RegionPaste:
    """The vision renderer: pastes a term's region, cut from labelled images, into images.

    Regions come from ``images`` and their segmentations ``concepts`` (sample i of one is
    sample i of the other; the concepts' grid may be coarser than the images: masks are scaled
    up with nearest-neighbour sampling). A term's region in a source image is the largest
    connected (4-neighbour) area where all its concepts hold; its bounding box is cut out, scaled so that its longer side is a fraction
    (one of ``scales``) of the edited image's shorter side, placed at a random position, and
    its region's pixels replace the image's.

    Args:
        concepts: the segmentations (a :class:`~compexp_core.ConceptSet`).
        images: the source images: uint8 ``[N, H, W, 3]``, or a dataset with ``__len__``
            and ``raw_image(i)`` (a :class:`~compexp_core.broden.BrodenDataset`).
        scales: sizes of the pasted region, as fractions of the edited image's side.
        max_sources: at most this many source images per term (chosen with ``seed``).
        min_cells: a source image needs at least this many cells of the term.
        seed: seed of the source choice.

    Raises:
        ValueError: the images and concepts differ in number; bad scales.
    """
    domain = "vision"

    def __init__(self, concepts: ConceptSet, images, *, scales=(0.35, 0.5, 0.65),
                 max_sources: int = 40, min_cells: int = 4, seed: int = 0) -> None:
        if not isinstance(concepts, ConceptSet):
            raise TypeError(f"concepts must be a ConceptSet, got {type(concepts).__name__}")
        n = len(images)
        if n != concepts.n_samples:
            raise ValueError(f"the region source has {n} images but its concepts describe "
                             f"{concepts.n_samples} samples: they must be the same inputs")
        scales = tuple(float(s) for s in scales)
        if not scales or not all(0 < s <= 1 for s in scales):
            raise ValueError(f"scales must be fractions in (0, 1], got {scales}")
        self.concepts = concepts
        self.images = images
        self.scales = scales
        self.max_sources = int(max_sources)
        self.min_cells = int(min_cells)
        self.seed = seed
        self._stats: dict = {}
        self._regions: dict = {}

    def _image(self, i: int) -> np.ndarray:
        img = self.images.raw_image(i) if hasattr(self.images, "raw_image") \
            else np.asarray(self.images[i])
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"region source image {i} must be uint8 [H, W, 3], got shape "
                             f"{img.shape} dtype {img.dtype}")
        return img

    def candidates(self) -> list:
        """(name, category) of every concept."""
        return list(zip(self.concepts.names, self.concepts.categories))

    def _term_stats(self, term: tuple):
        """(frequency, sample ids with a region, covers whole images) of a term, cached."""
        if term not in self._stats:
            from .engine.driver import materialize_formulas

            cells = materialize_formulas(self.concepts, [_and_formula(term)]).cells(0)
            per = self.concepts.grid[0] * self.concepts.grid[1]
            counts = np.bincount(cells // per, minlength=self.concepts.n_samples)
            present = counts > 0
            whole = bool(present.any() and (counts[present] == per).all())
            sources = np.flatnonzero(counts >= self.min_cells)
            self._stats[term] = (cells.size / self.concepts.n_cells, sources, whole)
        return self._stats[term]

    def check(self, term) -> Optional[str]:
        """Why ``term`` cannot be pasted, or None."""
        term = tuple(term)
        if not term:
            return "an edit needs at least one concept"
        unknown = [t for t in term if t not in self.concepts.names]
        if unknown:
            return f"{unknown[0]!r} is not a concept of the region source"
        _, sources, whole = self._term_stats(term)
        if whole:
            return (f"{term_text(term)} covers whole images (an image-level concept such as a "
                    f"scene): there is no region to paste")
        if sources.size == 0:
            return (f"no source image has a region of {term_text(term)} (at least "
                    f"{self.min_cells} cells)")
        return None

    def frequency(self, term) -> float:
        """The share of the source's cells where all of the term's concepts hold."""
        term = tuple(term)
        if any(t not in self.concepts.names for t in term):
            return 0.0
        return float(self._term_stats(term)[0])

    def _region_list(self, term: tuple) -> list:
        if term not in self._regions:
            from .analysis import formula_mask_images

            _, sources, _ = self._term_stats(term)
            rng = np.random.default_rng(self.seed)
            if sources.size > self.max_sources:
                sources = np.sort(rng.choice(sources, self.max_sources, replace=False))
            masks = formula_mask_images(self.concepts, _and_formula(term), sources)
            regions = []
            for s, mask in zip(sources, masks):
                img = self._image(int(s))
                mask = _largest_component(_resize_nearest(mask, img.shape[:2]))
                ys, xs = np.nonzero(mask)
                if ys.size == 0:
                    continue
                box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
                regions.append((img[box].copy(), mask[box].copy()))
            self._regions[term] = regions
        return self._regions[term]

    def apply(self, images, term, seed: int = 0) -> np.ndarray:
        """Copies of ``images`` (uint8 ``[n, H, W, 3]``) with the term's region pasted in.

        Input i's scale, position and source region are drawn from a generator seeded by
        ``(seed, i)``, so two terms applied with the same seed share sizes and positions.

        Raises:
            ValueError: the term cannot be rendered (:meth:`check` says why); images that are
                not uint8 ``[n, H, W, 3]``.
        """
        from PIL import Image

        term = tuple(term)
        reason = self.check(term)
        if reason is not None:
            raise ValueError(f"cannot render the edit {term_text(term)!r}: {reason}")
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
            raise ValueError(f"images must be uint8 [n, H, W, 3], got shape {images.shape} "
                             f"dtype {images.dtype}")
        regions = self._region_list(term)
        out = images.copy()
        h, w = images.shape[1:3]
        for i in range(images.shape[0]):
            rng = np.random.default_rng([int(seed), i])
            scale = self.scales[int(rng.integers(len(self.scales)))]
            fy, fx = rng.random(2)
            rgb, mask = regions[int(rng.integers(len(regions)))]
            side = max(2, int(round(scale * min(h, w))))
            factor = side / max(mask.shape)
            ph = max(1, min(h, int(round(mask.shape[0] * factor))))
            pw = max(1, min(w, int(round(mask.shape[1] * factor))))
            patch = np.asarray(Image.fromarray(rgb).resize((pw, ph), Image.BILINEAR))
            pmask = _resize_nearest(mask, (ph, pw))
            y, x = int(fy * (h - ph + 1)), int(fx * (w - pw + 1))
            view = out[i, y:y + ph, x:x + pw]
            view[pmask] = patch[pmask]
        return out


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a bool mask (the first found on a tie): one
    object, not every region of the concept in the image."""
    from collections import deque

    seen = np.zeros_like(mask)
    best: list = []
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        queue, pixels = deque([(y0, x0)]), []
        while queue:
            y, x = queue.popleft()
            pixels.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        if len(pixels) > len(best):
            best = pixels
    out = np.zeros_like(mask)
    if best:
        ys, xs = zip(*best)
        out[list(ys), list(xs)] = True
    return out


def _resize_nearest(mask: np.ndarray, shape: tuple) -> np.ndarray:
    h, w = mask.shape
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * h / shape[0]).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * w / shape[1]).astype(np.int64), w - 1)
    return mask[np.ix_(rows, cols)]


def world_region_paste(n: int = 200, *, size: int = 64, seed: int = 0, **kwargs) -> RegionPaste:
    """A :class:`RegionPaste` whose regions are rendered by the procedural world
    (:mod:`compexp_core.world`): ``n`` freshly generated images and their exact label maps
    (its scenes are image-level, so they cannot be pasted).

    Examples:
        >>> paste = world_region_paste(20, seed=1)
        >>> paste.check(("red",)) is None, paste.check(("beach",)) is not None
        (True, True)
        >>> bool(paste.apply(np.zeros((2, 64, 64, 3), np.uint8), ("red",), seed=0).any())
        True
    """
    from .world import CATEGORIES, concept_names, make_world

    world = make_world(n, size=size, seed=seed)
    names = concept_names()
    masks = np.zeros((n, len(names), size, size), bool)
    for k, (name, cat) in enumerate(names):
        value = CATEGORIES[cat].index(name)
        if cat == "scene":
            masks[world.labels["scene"] == value, k] = True
        else:
            masks[:, k] = world.labels[cat] == value + 1
    concepts = ConceptSet.from_dense(masks, [nm for nm, _ in names], [c for _, c in names])
    return RegionPaste(concepts, world.images, seed=seed, **kwargs)


# ------------------------------------------------------------------------------ experiment

def choose_targets(result: SearchResult, contributions, n: int = 3) -> list:
    """The ``n`` classes whose most contributing explained unit contributes most (ties by
    class index): the classes whose explanations have the most to say.

    Raises:
        ValueError: the result has no explanations.
    """
    explained = _explained(result)
    c = _contribution_matrix(contributions, result)
    units = np.array([e.unit for e in explained], np.int64)
    best = c[units].max(axis=0)
    order = np.argsort(-best, kind="stable")
    return [int(j) for j in order[:n] if best[j] > 0]


def run_experiment(model: Callable, inputs, result: SearchResult, contributions, renderer, *,
                   class_names: Optional[Sequence[str]] = None,
                   targets: Optional[Sequence] = None, n_targets: int = 3,
                   top_units: int = 5, max_edits: int = 2, max_inputs: int = 150,
                   seed: int = 0, predictions=None,
                   log: Callable[[str], None] = print) -> list:
    """The whole experiment for a few target classes: propose edits, choose their controls,
    evaluate both. A target whose units ask for nothing the renderer can render, or that the
    model predicts for every input, is reported through ``log`` and skipped.

    Args:
        model, inputs, renderer: as for :func:`evaluate_edits`.
        result, contributions, class_names: as for :func:`propose_edits`.
        targets: target classes (indices or names); default :func:`choose_targets`.
        n_targets: how many targets :func:`choose_targets` picks.
        top_units, max_edits: as for :func:`propose_edits`.
        max_inputs, seed, predictions: as for :func:`evaluate_edits` (pass ``predictions``
            when known: they are otherwise computed once here).
        log: where notes go.

    Returns:
        The :class:`EditOutcome` of every edit, target by target.
    """
    if targets is None:
        targets = choose_targets(result, contributions, n_targets)
    if predictions is None:
        predictions = _classify(model, inputs, 256)
    outcomes = []
    for target in targets:
        edits = propose_edits(result, contributions, target, class_names=class_names,
                              top_units=top_units, max_edits=max_edits, renderer=renderer)
        if edits and not (predictions != edits[0].target).any():
            log(f"class {edits[0].target_name!r}: the model predicts every input as this "
                f"class; no input to edit")
            continue
        if not edits:
            log(f"class {target!r}: the formulas of its top units use no concept that can be "
                f"rendered; no edit to try")
            continue
        controls = choose_controls(result, contributions, edits, renderer)
        outcomes.extend(evaluate_edits(model, inputs, edits, controls, renderer,
                                       max_inputs=max_inputs, seed=seed,
                                       predictions=predictions))
    return outcomes


def image_examples(outcomes: Sequence[EditOutcome], class_names: Sequence[str],
                   per_outcome: int = 2) -> list:
    """Examples for :func:`compexp_core.report.write_contributions_page`: for each outcome,
    a few inputs before, after the edit and after the control, with the predictions."""
    out = []
    for o in outcomes:
        for (orig, edited, control), row in list(zip(o.examples, o.example_rows))[:per_outcome]:
            images = [(orig, f"before: {class_names[o.original_predicted[row]]}"),
                      (edited, f"+ {o.edit.name}: {class_names[o.predicted[row]]}")]
            if control is not None:
                images.append((control, f"+ {term_text(o.control)} (control): "
                                        f"{class_names[o.control_predicted[row]]}"))
            out.append({"title": f"target {o.edit.target_name}: adding {o.edit.name}",
                        "images": images})
    return out


def save_tables(out_dir: str, table=None, outcomes: Optional[Sequence[EditOutcome]] = None
                ) -> list:
    """Write ``contributions.csv`` (a :class:`~compexp_core.analysis.ContributionTable`) and
    ``adversarial.csv`` (the outcomes) into ``out_dir``; returns the paths written."""
    from .io.tables import write_table_csv

    paths = []
    if table is not None:
        paths.append(os.path.join(out_dir, "contributions.csv"))
        write_table_csv(paths[-1], table.COLUMNS, table.rows)
    if outcomes is not None:
        paths.append(os.path.join(out_dir, "adversarial.csv"))
        write_table_csv(paths[-1], ADVERSARIAL_COLUMNS, outcome_rows(outcomes))
    return paths


def image_tensor(images, *, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                 device: str = "cpu"):
    """uint8 images ``[B, H, W, 3]`` as the float tensor ``[B, 3, H, W]`` a model reads:
    scaled to [0, 1] and normalised with ``mean``/``std`` per channel."""
    import torch

    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1).to(device)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1).to(device)
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    return (x.permute(0, 3, 1, 2).float().div_(255) - m) / s


def torch_classifier(model, *, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                     device: str = "cpu") -> Callable:
    """``model`` as the ``model`` argument of :func:`evaluate_edits` for images: uint8
    ``[B, H, W, 3]`` go through :func:`image_tensor` and the model (eval mode, no gradients),
    and the argmax of its logits ``[B, K]`` is returned.

    Raises:
        ValueError: (when called) the model's output is not logits ``[B, K]``.
    """
    import torch

    model.eval()

    def classify(images) -> np.ndarray:
        with torch.no_grad():
            out = model(image_tensor(images, mean=mean, std=std, device=device))
        if not torch.is_tensor(out) or out.ndim != 2:
            raise ValueError(f"the model's output must be logits [B, K], got "
                             f"{getattr(out, 'shape', type(out).__name__)}")
        return out.argmax(1).cpu().numpy()

    return classify


# ------------------------------------------------------------------------------ text

#: Tokens a sentence may end with: inserted words go before them.
FINAL_PUNCTUATION = frozenset({".", "!", "?"})


class WordInsert:
    """The sentence-pair renderer (NLI): inserts a term's words into the pairs.

    A ``hyp:tok:W`` concept inserts W into the hypothesis, a ``pre:tok:W`` concept into the
    premise, before the sentence's final punctuation (``.``, ``!``, ``?``) or at its end;
    a term's words go in in its order. Part-of-speech (``*:tag:*``) and overlap concepts are
    not inserted (:meth:`check` says so). Frequencies come from the pairs' concept set
    (:func:`compexp_core.nli.concepts.sentence_concepts`). Inputs are sequences of
    ``(premise_tokens, hypothesis_tokens)`` pairs; ``seed`` is not used (an insertion is
    deterministic).

    Examples:
        >>> from compexp_core.nli.concepts import sentence_concepts
        >>> cs = sentence_concepts([["A", "dog", "runs", "."]], [["A", "cat", "sleeps", "."]],
        ...                        tags=False)
        >>> words = WordInsert(cs)
        >>> words.apply([(("A", "dog", "."), ("Nobody", "runs", "."))], ("hyp:tok:sleeps",))
        [(('A', 'dog', '.'), ('Nobody', 'runs', 'sleeps', '.'))]
        >>> words.check(("oth:overlap:overlap25",))
        'oth:overlap:overlap25 is not a word (part-of-speech and overlap concepts are not inserted)'
    """
    domain = "nli"

    def __init__(self, concepts: ConceptSet) -> None:
        if not isinstance(concepts, ConceptSet):
            raise TypeError(f"concepts must be a ConceptSet, got {type(concepts).__name__}")
        self.concepts = concepts
        self._freq: dict = {}

    def candidates(self) -> list:
        return list(zip(self.concepts.names, self.concepts.categories))

    @staticmethod
    def _word(name: str) -> Optional[tuple]:
        side, _, rest = name.partition(":")
        kind, _, word = rest.partition(":")
        if side in ("pre", "hyp") and kind == "tok" and word:
            return side, word
        return None

    def check(self, term) -> Optional[str]:
        term = tuple(term)
        if not term:
            return "an edit needs at least one concept"
        for name in term:
            if name not in self.concepts.names:
                return f"{name!r} is not a concept of the pairs"
            if self._word(name) is None:
                return (f"{name} is not a word (part-of-speech and overlap concepts are not "
                        f"inserted)")
        return None

    def frequency(self, term) -> float:
        term = tuple(term)
        if any(t not in self.concepts.names for t in term):
            return 0.0
        if term not in self._freq:
            mask = np.ones(self.concepts.n_samples, bool)
            for name in term:
                mask &= self.concepts.concept_mask(name).reshape(self.concepts.n_samples, -1).any(1)
            self._freq[term] = float(mask.mean())
        return self._freq[term]

    def apply(self, inputs, term, seed: int = 0) -> list:
        """The pairs with the term's words inserted (new tuples; the inputs are unchanged).

        Raises:
            ValueError: the term cannot be inserted (:meth:`check` says why).
        """
        term = tuple(term)
        reason = self.check(term)
        if reason is not None:
            raise ValueError(f"cannot render the edit {term_text(term)!r}: {reason}")
        words = [self._word(name) for name in term]
        out = []
        for premise, hypothesis in inputs:
            sides = {"pre": list(premise), "hyp": list(hypothesis)}
            for side, word in words:
                tokens = sides[side]
                at = len(tokens) - 1 if tokens and tokens[-1] in FINAL_PUNCTUATION \
                    else len(tokens)
                tokens.insert(at, word)
            out.append((tuple(sides["pre"]), tuple(sides["hyp"])))
        return out
