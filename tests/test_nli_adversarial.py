"""Copy-paste edits on sentence pairs: a hand-wired NLI classifier whose unit 0 fires on
"sleeping" in the hypothesis and pushes towards contradiction, through the whole path (search,
read-out contributions, proposed edit, control, evaluation) and the ``compexp adversarial
--snli`` command; and the clear errors."""
import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from compexp_core.adversarial import (Edit, choose_controls, evaluate_edits,  # noqa: E402
                                      propose_edits, run_experiment)
from compexp_core.analysis import unit_class_weights  # noqa: E402
from compexp_core.cli.main import main  # noqa: E402
from compexp_core.io import save_concepts  # noqa: E402
from compexp_core.nli.concepts import sentence_concepts  # noqa: E402
from compexp_core.nli.data import SNLIPairs  # noqa: E402
from compexp_core.nli.model import (HypothesisInsert, Vocab, build_classifier,  # noqa: E402
                                    load_nli_checkpoint, nli_activations, pair_classifier,
                                    readout_weight)
from compexp_core.search import search_formulas  # noqa: E402

SUBJECTS = ["man", "woman", "dog", "child", "girl", "boy"]
VERBS = ["runs", "eats", "sits", "walks", "swims", "sleeping", "jumps", "reads"]
TOKENS = ("<pad>", "<unk>", "sleeping") + tuple(sorted(set(SUBJECTS + VERBS) - {"sleeping"})) \
    + ("a", "the", ".")


def wired_model():
    """Embedding 1 = "is the token 'sleeping'"; a 1-unit LSTM remembers whether it was seen;
    unit 0 = 10 * (hypothesis saw it) -> contradiction; unit 1 = 10 * (premise saw it) ->
    neutral; bias -> entailment otherwise."""
    m = build_classifier(len(TOKENS), embedding_dim=1, hidden_dim=1, mlp_dim=2, dropout=0.0)
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        m.encoder.embedding.weight[2, 0] = 1.0
        lstm = m.encoder.lstm
        lstm.bias_ih_l0[:] = torch.tensor([10.0, 10.0, 0.0, 10.0])    # gates i, f, g, o
        lstm.weight_ih_l0[2, 0] = 10.0                                # g: the token itself
        bn = m.batch_norm
        bn.weight.fill_(1.0)
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0)
        m.mlp.hidden.weight[0, 1] = 10.0                              # v: hypothesis
        m.mlp.hidden.weight[1, 0] = 10.0                              # u: premise
        m.mlp.out.weight[2, 0] = 6.0        # beats neutral when both fire
        m.mlp.out.weight[1, 1] = 5.0
        m.mlp.out.bias[0] = 1.0
    return m.eval(), Vocab(TOKENS, 1)


def pairs(n=240, seed=0):
    rng = np.random.default_rng(seed)
    pre, hyp = [], []
    for _ in range(n):
        pre.append(["a", str(rng.choice(SUBJECTS)), str(rng.choice([v for v in VERBS
                                                                    if v != "sleeping"])), "."])
        hyp.append(["the", str(rng.choice(SUBJECTS)), str(rng.choice(VERBS)), "."])
    for k in range(0, n, 10):          # some premises say "sleeping" (unit 1, neutral)
        pre[k][2] = "sleeping"
    return SNLIPairs(pre, hyp, np.full(n, -1, np.int64))


@pytest.fixture(scope="module")
def wired():
    model, vocab = wired_model()
    p = pairs()
    acts = nli_activations(model, vocab, p)
    concepts = sentence_concepts(p, tags=False)
    result = search_formulas(acts, concepts, max_length=1, beam_size=5, threshold=0.0)
    return model, vocab, p, concepts, result


def test_wired_model_behaves_as_designed(wired):
    model, vocab, p, _, result = wired
    classify = pair_classifier(model, vocab)
    pred = classify(list(zip(p.premises, p.hypotheses)))
    has_sleeping = np.array(["sleeping" in h for h in p.hypotheses])
    assert (pred[has_sleeping] == 2).all() and not (pred[~has_sleeping] == 2).any()
    assert str(result[0].formula) == "hyp:tok:sleeping" and result[0].iou == 1.0
    assert str(result[1].formula) == "pre:tok:sleeping"
    w = readout_weight(model)
    assert w.shape == (3, 2) and w[2, 0] == 6.0


def test_inserting_the_explained_word_flips_and_the_control_does_not(wired):
    model, vocab, p, concepts, result = wired
    contributions = unit_class_weights(readout_weight(model))
    renderer = HypothesisInsert(concepts)
    edits = propose_edits(result, contributions, "contradiction",
                          class_names=("entailment", "neutral", "contradiction"),
                          renderer=renderer)
    assert [e.concepts for e in edits] == [("hyp:tok:sleeping",)]
    controls = choose_controls(result, contributions, edits, renderer)
    assert controls[0] and controls[0][0].startswith("hyp:tok:")
    inputs = list(zip(p.premises, p.hypotheses))
    outcome, = evaluate_edits(pair_classifier(model, vocab), inputs, edits, controls, renderer,
                              max_inputs=100)
    assert outcome.flip_rate == 1.0 and outcome.control_flip_rate == 0.0
    assert outcome.beats_control and outcome.domain == "nli"
    # The inserted word goes before the final full stop of the hypothesis.
    (orig, edited, _), = outcome.examples[:1]
    assert edited[1][-2:] == ("sleeping", ".") and edited[0] == orig[0]


def test_premise_words_are_not_proposed_and_the_class_is_skipped(wired):
    model, vocab, p, concepts, result = wired
    contributions = unit_class_weights(readout_weight(model))
    notes = []
    outcomes = run_experiment(pair_classifier(model, vocab), list(zip(p.premises, p.hypotheses)),
                              result, contributions, HypothesisInsert(concepts),
                              class_names=("entailment", "neutral", "contradiction"),
                              targets=["neutral"], log=notes.append)
    assert outcomes == [] and "no edit to try" in notes[0]


@pytest.mark.parametrize("concept, reason", [
    ("hyp:tag:nn", "hyp:tag:nn is not a word"),
    ("oth:overlap:overlap25", "oth:overlap:overlap25 is not a word"),
    ("pre:tok:sleeping", "pre:tok:sleeping is a premise word"),
])
def test_tags_overlap_and_premise_words_are_refused(wired, concept, reason):
    model, vocab, p, _, _ = wired
    concepts = sentence_concepts(p, tags=True)          # with part-of-speech concepts
    assert concept in concepts.names
    edit = Edit(2, "contradiction", (concept,), (0,), 1.0)
    with pytest.raises(ValueError, match=reason):
        evaluate_edits(pair_classifier(model, vocab), list(zip(p.premises, p.hypotheses)),
                       [edit], [None], HypothesisInsert(concepts))


def _write_checkpoint(path, model):
    torch.save({"state_dict": model.state_dict(), "vocab": list(TOKENS), "min_count": 1,
                "config": {"embedding_dim": 1, "hidden_dim": 1, "mlp_dim": 2, "dropout": 0.0}},
               path)


def _write_tok(folder, p):
    folder.mkdir()
    with open(folder / "snli_1.0_dev.tok", "w") as fh:
        for a, b in zip(p.premises, p.hypotheses):
            fh.write(" ".join(a) + "\n" + " ".join(b) + "\n")
    with open(folder / "snli_1.0_dev.labels", "w") as fh:
        fh.write("gt\n" + "entailment\n" * len(p))


def test_checkpoint_round_trip_and_bad_checkpoints(wired, tmp_path):
    model, vocab, *_ = wired
    path = tmp_path / "c.pt"
    _write_checkpoint(path, model)
    loaded, v = load_nli_checkpoint(path)
    assert v.tokens == TOKENS
    assert torch.equal(loaded.mlp.out.weight, model.mlp.out.weight)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="garbage.pt is not an NLI classifier checkpoint"):
        load_nli_checkpoint(garbage)
    other = tmp_path / "other.pt"
    torch.save({"weights": [1, 2]}, other)
    with pytest.raises(ValueError, match="other.pt is not an NLI classifier checkpoint"):
        load_nli_checkpoint(other)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_nli_checkpoint(tmp_path / "missing.pt")


def test_cli_snli_path(wired, tmp_path, capsys):
    model, vocab, p, concepts, result = wired
    ckpt = tmp_path / "c.pt"
    _write_checkpoint(ckpt, model)
    save_concepts(tmp_path / "concepts.h5", concepts)
    result.params.update(concepts_path=str(tmp_path / "concepts.h5"))
    result.save(tmp_path / "explanations.h5")
    _write_tok(tmp_path / "snli", p)
    out = tmp_path / "adv"
    assert main(["adversarial", str(ckpt), str(tmp_path / "explanations.h5"),
                 "--snli", str(tmp_path / "snli"), "-o", str(out), "--n-inputs", "50"]) == 0
    text = capsys.readouterr().out
    assert "adding 'sleeping' to hypotheses moves 100% of 50" in text
    assert "1 of 1 word insertions beat their frequency-matched controls" in text
    table = pd.read_csv(out / "adversarial.csv", keep_default_na=False)
    assert table["concept"].tolist() == ["hyp:tok:sleeping"] and table["flip_rate"][0] == 1.0
    assert (out / "contributions.csv").exists()
    # A checkpoint that is not one, and vision flags mixed in, are clear errors.
    bad = tmp_path / "bad.pt"
    bad.write_text("hello")
    assert main(["adversarial", str(bad), str(tmp_path / "explanations.h5"),
                 "--snli", str(tmp_path / "snli"), "-o", str(out)]) != 0
    assert "is not an NLI classifier checkpoint" in capsys.readouterr().err
    assert main(["adversarial", str(ckpt), str(tmp_path / "explanations.h5"),
                 "--snli", str(tmp_path / "snli"), "--layer", "x", "-o", str(out)]) != 0
    assert "neither --images nor --layer" in capsys.readouterr().err
    assert main(["adversarial", str(ckpt), str(tmp_path / "explanations.h5"), "-o",
                 str(out)]) != 0
    assert "needs --images and --layer" in capsys.readouterr().err
