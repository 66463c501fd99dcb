"""The built-in NLI example: explain the units of an SNLI sentence-pair classifier.

``compexp demo nli`` runs the paper's NLI pipeline on this machine, with SNLI's development
set as the only data (SNLI's training set is not available offline):

1. read SNLI (:func:`~compexp_core.nli.data.read_snli`) and split it by premise, so that no
   premise is in both parts;
2. train the reference architecture (:mod:`compexp_core.nli.model`) on the CPU on one part
   (weights cached after the first run) and, for context, a hypothesis-only bag-of-words
   baseline;
3. extract the 1,024 post-ReLU units on the held-out part (the probe set);
4. build the sentence-pair concepts (:func:`~compexp_core.nli.concepts.sentence_concepts`:
   words, part-of-speech tags and overlap of premise and hypothesis);
5. search formulas (length 5, beam 10, OR / AND / AND NOT: the reference's NLI settings),
   and run the paper's analyses: mean IoU by maximum length, explanation IoU against the
   model's accuracy where each unit fires, the concepts of the explanations against the class
   each unit pushes towards;
6. copy-paste edits (:mod:`compexp_core.adversarial`): for each class, insert the hypothesis
   words that the explanations of its most contributing units (read-out weights) ask for
   into pairs predicted as other classes, against frequency-matched control words;
7. write the results (the project's HDF5, and a CSV in the reference code's columns) and the
   HTML report (with its contributions page).

The findings are this small model's own, whatever they are: nothing here is tuned to match
the paper.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from .._optional import require
from .data import LABELS

__all__ = ["NLIDemoConfig", "NLIDemoSummary", "run_nli_demo", "snli_location", "SNLI_URL",
           "nli_headline"]

SNLI_URL = "https://nlp.stanford.edu/projects/snli/"


@dataclass(frozen=True)
class NLIDemoConfig:
    """Settings of the NLI example. The defaults take a few minutes on 2 cores.

    Attributes:
        pairs: use only the first ``pairs`` pairs of the SNLI file (None: all).
        test_fraction: share of the pairs held out (split by premise) as the probe set.
        epochs: training epochs of the classifier.
        seed: seed of the split and the training.
        vocab_size: words per sentence side in the concepts (the reference's 2,000).
        max_length, beam_size: the search (the reference's NLI settings: 5 and 10).
        unit_masks: ``"quantile"``: a unit fires on the ``quantile`` share of probe pairs where
            it is most active; ``"positive"``: wherever its activation is > 0 (the
            reference's rule).
        quantile: see ``unit_masks``.
        min_firing_share: with ``unit_masks="positive"``, units firing on fewer than this share
            of the probe pairs are skipped (the reference: 500 of 10,000 pairs, 5%). (With
            quantile masks every unit fires on about the same share.)

    Examples:
        >>> config = NLIDemoConfig(pairs=900, epochs=1)      # a quick run
        >>> config.max_length, config.beam_size, config.unit_masks, config.quantile
        (5, 10, 'quantile', 0.1)
        >>> NLIDemoConfig(unit_masks="median")
        Traceback (most recent call last):
        ...
        ValueError: unit_masks must be 'quantile' or 'positive', got 'median'
    """
    pairs: Optional[int] = None
    test_fraction: float = 0.35
    epochs: int = 1
    seed: int = 0
    vocab_size: int = 2000
    max_length: int = 5
    beam_size: int = 10
    unit_masks: str = "quantile"
    quantile: float = 0.1
    min_firing_share: float = 0.05

    def __post_init__(self):
        if self.unit_masks not in ("quantile", "positive"):
            raise ValueError(f"unit_masks must be 'quantile' or 'positive', got "
                             f"{self.unit_masks!r}")


@dataclass
class NLIDemoSummary:
    """What the NLI example found and where it wrote it."""
    out_dir: str
    report: Optional[str]
    n_train: int
    n_probe: int
    accuracy: float                 # the classifier, on the labelled probe pairs
    baseline_accuracy: float        # hypothesis-only bag of words, same pairs
    majority_accuracy: float        # always the most frequent training label
    n_units: int
    n_skipped: int
    mean_iou_by_length: np.ndarray
    pearson: float
    spearman: float
    p_value: float
    top_concepts: dict = field(default_factory=dict)   # class -> [(concept, units)]
    # The same correlation with the other unit-mask rule (activation > 0 when the example
    # uses quantile masks), so that the choice of rule is visible in the finding.
    other_rule: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    adversarial: list = field(default_factory=list)    # the copy-paste experiment: EditOutcomes
    edits_beating_controls: int = 0                    # outcomes with more flips, p < 0.05
    headline: list = field(default_factory=list)       # the experiment's summary lines


def snli_location(path: Optional[str] = None) -> str:
    """Where the SNLI files are: ``path`` when given, else ``$COMPEXP_SNLI_DIR``.

    Raises:
        FileNotFoundError: neither is set, or the path does not exist; the message says where
            to get SNLI.
    """
    source = "--snli" if path else "$COMPEXP_SNLI_DIR"
    path = path or os.environ.get("COMPEXP_SNLI_DIR")
    if not path:
        raise FileNotFoundError(
            "the NLI example needs the SNLI corpus: pass --snli DIR (or set "
            "$COMPEXP_SNLI_DIR) to a folder with snli_1.0_dev.tok and snli_1.0_dev.labels, or "
            f"to SNLI's snli_1.0_dev.jsonl (download SNLI 1.0 from {SNLI_URL})")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{source} names {path!r}, which does not exist (SNLI 1.0 is at "
                                f"{SNLI_URL})")
    return path


def run_nli_demo(snli: str, out_dir: str = "compexp-demo-nli",
                 config: NLIDemoConfig = NLIDemoConfig(), *, retrain: bool = False,
                 progress: bool = True, report: bool = True,
                 log: Callable[[str], None] = print) -> NLIDemoSummary:
    """Run the NLI example end to end and write its files into ``out_dir``.

    Files: ``acts.h5`` (the probed layer on the probe pairs), ``concepts.h5``,
    ``explanations.h5`` (the project's results), ``result.csv`` (the reference code's columns:
    ``neuron, feature, category, iou, feature_length, w_entail, w_neutral, w_contra``),
    ``concept_classes.csv`` (concepts of the explanations against the class their units push
    towards), ``contributions.csv`` (each class's most contributing units and their formulas),
    ``adversarial.csv`` (the word insertions against their controls) and
    ``report/index.html`` (with ``report/contributions.html``).

    Args:
        snli: the SNLI files (see :func:`~compexp_core.nli.data.read_snli`).
        out_dir: folder for the files (created if needed).
        config: an :class:`NLIDemoConfig`.
        retrain: train the classifier even when cached weights exist.
        progress: progress bars.
        report: write the HTML report.
        log: where progress lines go.

    Returns:
        An :class:`NLIDemoSummary`.
    """
    require("torch", "the NLI example (training its classifier)")
    from ..analysis import (concept_class_table, iou_accuracy_correlation, mean_iou_by_length,
                            unit_class_weights)
    from ..io import open_activations, save_concepts
    from ..search import search_formulas
    from .concepts import sentence_concepts
    from .data import read_snli
    from .model import (NLIConfig, PROBED_LAYER, accuracy, extract_nli_activations,
                        load_or_train_nli, predict, readout_weight, split_by_premise,
                        train_hypothesis_baseline)

    if not isinstance(config, NLIDemoConfig):
        raise TypeError(f"config must be an NLIDemoConfig, got {type(config).__name__}")
    seconds = {}
    t = time.perf_counter()
    pairs = read_snli(snli)
    if config.pairs is not None and config.pairs < len(pairs):
        pairs = pairs.subset(np.arange(config.pairs))
    train_idx, probe_idx = split_by_premise(pairs, config.test_fraction, seed=config.seed)
    train, probe = pairs.subset(train_idx), pairs.subset(probe_idx)
    log(f"SNLI: {len(pairs)} pairs; training on {len(train)}, probing {len(probe)} held-out "
        f"pairs (split by premise: no premise in both parts)")
    os.makedirs(out_dir, exist_ok=True)
    paths = {name: os.path.join(out_dir, f"{name}.h5")
             for name in ("acts", "concepts", "explanations")}
    seconds["data"] = time.perf_counter() - t

    t = time.perf_counter()
    model, vocab = load_or_train_nli(train, NLIConfig(epochs=config.epochs, seed=config.seed),
                                     retrain=retrain, log=log)
    predicted, _ = predict(model, vocab, probe)
    acc = accuracy(predicted, probe)
    baseline = train_hypothesis_baseline(train)
    base_acc = accuracy(baseline.predict(probe), probe)
    train_labels = train.labels[train.labels >= 0]
    majority = int(np.bincount(train_labels, minlength=len(LABELS)).argmax())
    labelled = probe.labels >= 0
    majority_acc = float((probe.labels[labelled] == majority).mean())
    log(f"accuracy on the {int(labelled.sum())} labelled probe pairs: classifier {acc:.1%}; "
        f"hypothesis-only bag of words {base_acc:.1%}; always '{LABELS[majority]}' "
        f"{majority_acc:.1%}")
    seconds["train"] = time.perf_counter() - t

    t = time.perf_counter()
    extract_nli_activations(model, vocab, probe, paths["acts"], progress=progress,
                            model_name=f"SNLI classifier ({NLIConfig(epochs=config.epochs, seed=config.seed).key()})",
                            dataset_name=f"SNLI, {len(probe)} held-out pairs")
    concepts = sentence_concepts(probe, vocab_size=config.vocab_size)
    save_concepts(paths["concepts"], concepts)
    seconds["extract"] = time.perf_counter() - t

    t = time.perf_counter()
    acts = open_activations(paths["acts"])
    try:
        values = np.asarray(acts[...], np.float32)
    finally:
        acts.file.close()
    min_firing = int(np.ceil(config.min_firing_share * len(probe))) \
        if config.unit_masks == "positive" else 0
    masks_rule = (dict(threshold=0.0) if config.unit_masks == "positive"
                  else dict(quantile=config.quantile))
    log(f"searching formulas for {values.shape[1]} units of {PROBED_LAYER} over "
        f"{concepts.n_concepts} concepts ({len(probe)} pairs; length {config.max_length}, beam "
        f"{config.beam_size}; unit masks: "
        + ("activation > 0" if config.unit_masks == "positive"
           else f"the top {config.quantile:.0%} of each unit's activations")
        + (f"; units firing on fewer than {min_firing} pairs skipped)" if min_firing else ")"))
    result = search_formulas(values, concepts, max_length=config.max_length,
                             beam_size=config.beam_size, min_firing=min_firing,
                             progress=progress, **masks_rule)
    result.params.update(acts_path=os.path.abspath(paths["acts"]),
                         concepts_path=os.path.abspath(paths["concepts"]))
    result.save(paths["explanations"])
    weight = readout_weight(model)                                 # the read-out: [3, U]
    result.to_reference_csv(os.path.join(out_dir, "result.csv"),
                            weights=unit_class_weights(weight))
    seconds["search"] = time.perf_counter() - t

    curve = mean_iou_by_length(result)
    correct = predicted == probe.labels
    stats = iou_accuracy_correlation(result, values[labelled], correct[labelled], (1, 1),
                                     permutations=2000, seed=config.seed)
    table = concept_class_table(result, weight, LABELS)
    table.to_pandas().to_csv(os.path.join(out_dir, "concept_classes.csv"), index=False)
    t = time.perf_counter()
    other = _other_rule(values, concepts, config, len(probe), labelled, correct, search_formulas,
                        iou_accuracy_correlation)
    seconds["other_rule"] = time.perf_counter() - t

    t = time.perf_counter()
    contributions, outcomes, verdict = _word_edit_experiment(model, vocab, probe, predicted,
                                                             concepts, result, out_dir, config,
                                                             log)
    seconds["adversarial"] = time.perf_counter() - t

    index = None
    if report:
        from ..adversarial import outcome_rows
        from ..report import write_contributions_page, write_text_report

        t = time.perf_counter()
        report_dir = os.path.join(out_dir, "report")
        index = write_text_report(result, report_dir, acts=values,
                                  concepts=concepts, premises=probe.premises,
                                  hypotheses=probe.hypotheses, gold=probe.labels,
                                  predicted=predicted, class_names=LABELS, weights=weight,
                                  title="compexp demo nli: an SNLI sentence-pair classifier",
                                  links=[("contributions.html", "contributions of units to "
                                                                "classes and word insertions")])
        write_contributions_page(
            report_dir, contributions, adversarial=outcome_rows(outcomes),
            verdict=verdict + _text_examples(outcomes),
            title="compexp demo nli: contributions and word insertions",
            method=f"Contribution: the read-out weight from the unit ({PROBED_LAYER}, which "
                   f"feeds the classifier's last linear layer through dropout only) to the "
                   f"class.")
        seconds["report"] = time.perf_counter() - t

    top = _top_concepts(table)
    summary = NLIDemoSummary(out_dir, index, len(train), len(probe), acc, base_acc, majority_acc,
                             len(result), sum(1 for e in result if e.skipped), curve,
                             stats.pearson, stats.spearman, stats.p_value, top, other, seconds,
                             outcomes, sum(o.beats_control for o in outcomes), verdict)
    _log_findings(summary, result, table, stats, log)
    return summary


def _other_rule(values, concepts, config: NLIDemoConfig, n_pairs: int, labelled, correct,
                search_formulas, iou_accuracy_correlation) -> dict:
    """The IoU-accuracy correlation under the other unit-mask rule (same search settings)."""
    if config.unit_masks == "quantile":
        rule, kw = "activation > 0", dict(threshold=0.0, min_firing=int(
            np.ceil(config.min_firing_share * n_pairs)))
    else:
        rule, kw = f"top {config.quantile:.0%}", dict(quantile=config.quantile)
    result = search_formulas(values, concepts, max_length=config.max_length,
                             beam_size=config.beam_size, **kw)
    stats = iou_accuracy_correlation(result, values[labelled], correct[labelled], (1, 1),
                                     permutations=2000, seed=config.seed)
    explained = [e for e in result if e.formula is not None]
    return {"rule": rule, "pearson": stats.pearson, "spearman": stats.spearman,
            "p_value": stats.p_value, "units": int(stats.units.size),
            "mean_iou": float(np.mean([e.iou for e in explained])) if explained else float("nan"),
            "mean_primitive_iou": float(np.mean([e.primitive_iou for e in explained]))
            if explained else float("nan")}


_EDITED_PAIRS = 150    # pairs edited per edit (and per control): 6 edits x 300 forward passes


def _word_edit_experiment(model, vocab, probe, predicted, concepts, result, out_dir: str,
                          config: NLIDemoConfig, log: Callable[[str], None]):
    """The copy-paste experiment for the three classes: the words the explanations of each
    class's top units ask for, inserted into hypotheses of pairs predicted as other classes,
    against frequency-matched control words; writes ``contributions.csv`` and
    ``adversarial.csv``. Returns (contribution table, outcomes, headline lines)."""
    from ..adversarial import headline, run_experiment, save_tables
    from ..analysis import contribution_table, unit_class_weights
    from .model import HypothesisInsert, pair_classifier, readout_weight

    contributions = unit_class_weights(readout_weight(model))
    table = contribution_table(result, contributions, LABELS, top=5)
    inputs = list(zip(probe.premises, probe.hypotheses))
    outcomes = run_experiment(pair_classifier(model, vocab), inputs, result, contributions,
                              HypothesisInsert(concepts), class_names=LABELS,
                              targets=range(len(LABELS)), max_edits=2,
                              max_inputs=_EDITED_PAIRS, seed=config.seed, predictions=predicted,
                              log=log)
    save_tables(out_dir, table, outcomes)
    return table, outcomes, nli_headline(outcomes)


def nli_headline(outcomes) -> list:
    """The experiment's summary lines for sentence pairs: per edit, "adding 'W' to
    hypotheses moves N% of <other classes> pairs to <target>; frequency-matched controls
    M%", then the count of edits that beat their controls (or that none did).

    Examples:
        >>> import numpy as np
        >>> from compexp_core.adversarial import Edit, EditOutcome
        >>> e = Edit(2, "contradiction", ("hyp:tok:sleeping",), (7,), 1.0)
        >>> o = EditOutcome("nli", e, ("hyp:tok:tall",), np.arange(4),
        ...                 np.array([1, 1, 1, 0], bool), np.zeros(4, bool), np.zeros(4, int),
        ...                 np.zeros(4, int), np.array([0, 1, 0, 1]), 0.3, 0.125)
        >>> print("\\n".join(nli_headline([o])))
        adding 'sleeping' to hypotheses moves 75% of 4 entailment/neutral pairs to
        contradiction (95% CI 30-95%); frequency-matched control 'tall': 0% (p = 0.125): not
        beaten
        0 of 1 word insertions beat their frequency-matched controls (more flips, p < 0.05):
        on this run, words read from the explanations do not move predictions more than
        control words
    """
    from ..adversarial import wilson_interval

    lines = []
    for o in outcomes:
        words = " ".join(n.split(":", 2)[-1] for n in o.edit.concepts)
        others = "/".join(LABELS[c] for c in sorted(set(o.original_predicted.tolist())))
        lo, hi = wilson_interval(int(o.flipped.sum()), int(o.flipped.size))
        text = (f"adding '{words}' to hypotheses moves {o.flip_rate:.0%} of {o.flipped.size} "
                f"{others} pairs to {o.edit.target_name} (95% CI {lo:.0%}-{hi:.0%})"
                .replace("%-", "-"))
        if o.control is None:
            text += "; no frequency-matched control word was available"
        else:
            control = " ".join(n.split(":", 2)[-1] for n in o.control)
            p = "< 0.001" if o.p_value < 0.001 else f"= {o.p_value:.3g}"
            text += (f"; frequency-matched control '{control}': {o.control_flip_rate:.0%} "
                     f"(p {p})" + ("" if o.beats_control else ": not beaten"))
        lines.append(text)
    beat = sum(o.beats_control for o in outcomes)
    if not outcomes:
        lines.append("word insertions: no class had a word to insert (see above)")
    else:
        last = (f"{beat} of {len(outcomes)} word insertions beat their frequency-matched "
                f"controls (more flips, p < 0.05)")
        if not beat:
            last += (": on this run, words read from the explanations do not move predictions "
                     "more than control words")
        lines.append(last)
    return lines


def _text_examples(outcomes, per_outcome: int = 2) -> list:
    """A few edited hypotheses before/after, with the predictions, as lines of text."""
    lines = []
    for o in outcomes:
        for (orig, edited, control), row in list(zip(o.examples, o.example_rows))[:per_outcome]:
            text = (f"example: {' '.join(orig[0])} / {' '.join(orig[1])} "
                    f"[{LABELS[o.original_predicted[row]]}] -> {' '.join(edited[1])} "
                    f"[{LABELS[o.predicted[row]]}]")
            if control is not None:
                text += f"; control {' '.join(control[1])} [{LABELS[o.control_predicted[row]]}]"
            lines.append(text)
    return lines


def _top_concepts(table, per_class: int = 6) -> dict:
    """The concepts used plainly (not negated) by most units pushing towards each class."""
    out = {}
    for c, name in enumerate(table.class_names):
        rows = [(table.concepts[r], int(table.counts[r, c])) for r in range(len(table.concepts))
                if not table.negated[r] and table.counts[r, c] > 0]
        out[name] = sorted(rows, key=lambda x: (-x[1], x[0]))[:per_class]
    return out


def _log_findings(s: NLIDemoSummary, result, table, stats, log) -> None:
    explained = [e for e in result if e.formula is not None]
    log("")
    log(f"{'unit':>4}  {'iou':>5}  {'formula':<60} {'best single':<22} {'iou':>5}")
    for e in sorted(explained, key=lambda e: -e.iou)[:12]:
        log(f"{e.unit:>4}  {e.iou:5.3f}  {str(e.formula):<60} {str(e.primitive):<22} "
            f"{e.primitive_iou:5.3f}")
    log("")
    lexical = sum(1 for e in explained
                  if all(":tok:" in str(leaf) for leaf in e.formula.leaves()))
    log(f"{len(explained)} of {s.n_units} units explained ({s.n_skipped} skipped: they fire on "
        f"too few pairs); {lexical} of them by words alone (no tag or overlap concept)")
    for name, rows in s.top_concepts.items():
        words = ", ".join(f"{c} ({n})" for c, n in rows) or "none"
        log(f"  units pushing towards {name}: most used concepts {words}")
    log("mean IoU by maximum formula length: " +
        ", ".join(f"{i + 1}: {v:.3f}" for i, v in enumerate(s.mean_iou_by_length)))
    p_text = "< 0.001" if stats.p_value < 0.001 else f"= {stats.p_value:.3f}"
    sign = ("undefined (too few units)" if not np.isfinite(stats.pearson) else
            "negative, as in the paper" if stats.pearson < 0 else
            "not negative here (the paper reports a negative one)")
    log(f"explanation IoU against the classifier's accuracy on the pairs where the unit fires: "
        f"Pearson r = {stats.pearson:.3f}, Spearman {stats.spearman:.3f} (permutation p "
        f"{p_text}, {stats.units.size} units): {sign}")
    o = s.other_rule
    if o:
        p_other = "< 0.001" if o["p_value"] < 0.001 else f"= {o['p_value']:.3f}"
        log(f"  the same with the other unit masks ({o['rule']}): Pearson r = {o['pearson']:.3f} "
            f"(p {p_other}, {o['units']} units); there mean IoU {o['mean_iou']:.3f}, and the best "
            f"single concept alone already reaches {o['mean_primitive_iou']:.3f}")
    log(f"classifier accuracy {s.accuracy:.1%} vs hypothesis-only baseline "
        f"{s.baseline_accuracy:.1%} and majority class {s.majority_accuracy:.1%}")
    log("")
    for line in s.headline:
        log(line)
    if s.report:
        log(f"report: {s.report}")
