"""The SNLI classifier (compexp_core.nli.model): shapes, extraction of the probed layer,
determinism, the premise split, unlabelled pairs, errors, the hypothesis-only baseline and
the weight cache. Tiny sizes throughout; one slow test trains on SNLI dev."""
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from compexp_core.io import open_activations, read_activations_metadata  # noqa: E402
from compexp_core.nli import model as nm  # noqa: E402
from compexp_core.nli.data import SNLIPairs, read_snli  # noqa: E402

TINY = dict(embedding_dim=6, hidden_dim=5, mlp_dim=7)

WORDS = ["a", "dog", "cat", "man", "runs", "sleeps", "outside", "the", "woman", "eats"]


def snli_dir():
    folder = os.environ.get("COMPEXP_SNLI_DIR") or (
        Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "snli")
    if not Path(folder).is_dir():
        pytest.skip(f"SNLI data not found at {folder}")
    return folder


def random_pairs(n, seed=0, unlabelled=0):
    rng = np.random.default_rng(seed)

    def sentence():
        return [WORDS[i] for i in rng.integers(0, len(WORDS), rng.integers(1, 7))]

    labels = rng.integers(0, 3, n)
    labels[:unlabelled] = -1
    return SNLIPairs([sentence() for _ in range(n)], [sentence() for _ in range(n)], labels)


def tiny_model(vocab, seed=0):
    torch.manual_seed(seed)
    return nm.build_classifier(len(vocab), **TINY).eval()


# ------------------------------------------------------------------------------- model

def test_forward_shapes_and_the_probed_layer():
    pairs = random_pairs(5)
    vocab = nm.build_vocab(pairs, 1)
    model = nm.build_classifier(len(vocab), **TINY)
    p, pl, h, hl = nm._collate_pairs([(vocab.encode(a), vocab.encode(b))
                                      for a, b in zip(pairs.premises, pairs.hypotheses)])
    assert p.shape == (5, max(len(s) for s in pairs.premises)) and pl.tolist() == [
        len(s) for s in pairs.premises]
    assert model(p, pl, h, hl).shape == (5, 3)
    assert dict(model.named_modules())[nm.PROBED_LAYER] is model.mlp.relu


def test_full_size_architecture():
    model = nm.build_classifier(100)
    assert model.encoder.embedding.embedding_dim == 300
    assert model.encoder.lstm.hidden_size == 512
    assert model.batch_norm.num_features == 2048
    assert (model.mlp.hidden.in_features, model.mlp.hidden.out_features) == (2048, 1024)
    assert model.mlp.out.out_features == 3


def test_padding_does_not_change_a_sentence_vector():
    """The sentence vector is the last *valid* state: padding a batch changes nothing."""
    pairs = random_pairs(6)
    vocab = nm.build_vocab(pairs, 1)
    model = tiny_model(vocab)
    one = [model.encoder(*vocab.pad([s])) for s in pairs.premises]
    batch = model.encoder(*vocab.pad(pairs.premises))
    torch.testing.assert_close(torch.cat(one), batch)


def test_vocab_lowercases_counts_and_maps_unknowns():
    pairs = SNLIPairs([["A", "Dog"], ["a", "cat"]], [["The", "dog"], ["a", "DOG"]], [0, 1])
    vocab = nm.build_vocab(pairs, min_count=2)
    assert vocab.tokens == (nm.PAD, nm.UNK, "a", "dog")
    assert vocab.encode(["A", "cat", "dog", "zebra"]).tolist() == [2, 1, 3, 1]
    ids, lengths = vocab.pad([["a"], ["a", "dog", "x"]])
    assert ids.tolist() == [[2, 0, 0], [2, 3, 1]] and lengths.tolist() == [1, 3]


# ------------------------------------------------------------------------------- extraction

def test_extraction_equals_a_manual_forward_hook(tmp_path):
    pairs = random_pairs(23, unlabelled=3)
    vocab = nm.build_vocab(pairs, 1)
    model = tiny_model(vocab)
    model.train()                                   # extraction must switch to eval mode
    acts = nm.nli_activations(model, vocab, pairs, batch_size=4)
    assert model.training                           # and restore the mode afterwards
    captured = []
    handle = model.mlp.relu.register_forward_hook(lambda m, i, o: captured.append(o.clone()))
    try:
        model.eval()
        with torch.no_grad():
            model(*nm._collate_pairs([(vocab.encode(a), vocab.encode(b))
                                      for a, b in zip(pairs.premises, pairs.hypotheses)]))
    finally:
        handle.remove()
    assert acts.shape == (23, 7) and acts.dtype == np.float32
    np.testing.assert_allclose(acts, captured[0].numpy(), rtol=1e-5, atol=1e-6)
    # the file variant writes the same rows, with provenance
    path = nm.extract_nli_activations(model, vocab, pairs, tmp_path / "a.h5", batch_size=5,
                                      model_name="tiny nli")
    f = open_activations(path)
    try:
        np.testing.assert_allclose(f[...], acts, rtol=1e-5, atol=1e-6)  # other batches
    finally:
        f.file.close()
    meta = read_activations_metadata(path)
    assert meta["layer"] == nm.PROBED_LAYER and meta["model"] == "tiny nli"


def test_any_module_and_layer_name():
    class BagOfWords(torch.nn.Module):
        """Sums the hypothesis's word vectors (padding masked) and applies tanh."""

        def __init__(self, n):
            super().__init__()
            self.emb = torch.nn.Embedding(n, 4)
            self.act = torch.nn.Tanh()

        def forward(self, p, pl, h, hl):
            mask = (torch.arange(h.shape[1])[None] < hl[:, None]).float()
            return self.act((self.emb(h) * mask[..., None]).sum(1))

    pairs = random_pairs(9)
    vocab = nm.build_vocab(pairs, 1)
    torch.manual_seed(0)
    model = BagOfWords(len(vocab))
    acts = nm.nli_activations(model, vocab, pairs, layer="act", batch_size=2)
    expected = np.stack([np.tanh(model.emb.weight.detach().numpy()[vocab.encode(h)].sum(0))
                         for h in pairs.hypotheses])
    np.testing.assert_allclose(acts, expected, rtol=1e-5, atol=1e-6)


def test_extraction_resumes(tmp_path):
    pairs = random_pairs(12)
    vocab = nm.build_vocab(pairs, 1)
    model = tiny_model(vocab)
    calls = []

    def fail_third_batch(module, inputs, output):
        calls.append(1)
        if len(calls) == 3:
            raise ValueError("boom")

    handle = model.mlp.hidden.register_forward_hook(fail_third_batch)
    with pytest.raises(RuntimeError, match=r"samples 8..11 \(input shape .*ValueError: boom"):
        nm.extract_nli_activations(model, vocab, pairs, tmp_path / "a.h5", batch_size=4)
    handle.remove()
    path = nm.extract_nli_activations(model, vocab, pairs, tmp_path / "a.h5", batch_size=4,
                                      resume=True)
    f = open_activations(path)
    try:
        np.testing.assert_allclose(f[...], nm.nli_activations(model, vocab, pairs), atol=1e-6)
    finally:
        f.file.close()


# ------------------------------------------------------------------------------- training

def train_tiny(pairs, seed=0, **kw):
    return nm.train_classifier(pairs, epochs=2, batch_size=6, lr=1e-2, seed=seed, min_count=1,
                               log=None, **TINY, **kw)


def same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_training_is_deterministic_given_the_seed():
    pairs = random_pairs(16)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    m1, v1, h1 = train_tiny(pairs, seed=3)
    assert torch.equal(torch.get_rng_state(), before)    # the caller's RNG is untouched
    m2, v2, h2 = train_tiny(pairs, seed=3)
    m3, _, _ = train_tiny(pairs, seed=4)
    assert v1 == v2 and h1[-1]["loss"] == h2[-1]["loss"]
    assert same_state(m1, m2)
    assert not same_state(m1, m3)


def test_unlabelled_pairs_are_excluded():
    labelled = random_pairs(20, seed=1)
    extra = SNLIPairs([["zebra", "zebra"]] * 5, [["unseen", "words"]] * 5, [-1] * 5)
    mixed = SNLIPairs(extra.premises + labelled.premises, extra.hypotheses + labelled.hypotheses,
                      np.concatenate([extra.labels, labelled.labels]))
    m1, v1, h1 = train_tiny(labelled)
    m2, v2, h2 = train_tiny(mixed)
    assert v1 == v2 and "zebra" not in v2.tokens
    assert same_state(m1, m2) and h1 == [{**h, "seconds": r["seconds"]} for h, r in zip(h2, h1)]
    pred, logits = nm.predict(m2, v2, mixed)
    assert pred.shape == (25,) and logits.shape == (25, 3)
    assert nm.accuracy(pred, mixed) == nm.accuracy(pred[5:], labelled)


def test_training_learns_a_planted_rule():
    # the label is which of three words the hypothesis holds
    rng = np.random.default_rng(0)
    key = ["yes", "maybe", "no"]
    labels = rng.integers(0, 3, 60)
    hyps = [[WORDS[rng.integers(10)], key[y], WORDS[rng.integers(10)]] for y in labels]
    pairs = SNLIPairs([["a", "dog"]] * 60, hyps, labels)
    model, vocab, history = nm.train_classifier(pairs, epochs=6, batch_size=10, lr=2e-2,
                                                min_count=1, log=None, eval_pairs=pairs, **TINY)
    assert history[-1]["eval_accuracy"] > 0.9, history


# ------------------------------------------------------------------------------- split

def test_split_by_premise_on_toy_pairs():
    pairs = SNLIPairs([["p", str(i // 3)] for i in range(30)], [["h"]] * 30, [0] * 30)
    train, test = nm.split_by_premise(pairs, 0.3, seed=5)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(30))
    assert len(test) == 9
    assert not {pairs.premises[i] for i in train} & {pairs.premises[i] for i in test}
    again = nm.split_by_premise(pairs, 0.3, seed=5)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], test)
    assert not np.array_equal(nm.split_by_premise(pairs, 0.3, seed=6)[1], test)


def test_split_by_premise_on_snli():
    pairs = read_snli(snli_dir())
    train, test = nm.split_by_premise(pairs, 0.35, seed=0)
    assert len(train) + len(test) == len(pairs) == 10_000
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(len(pairs)))
    lower = [tuple(t.lower() for t in p) for p in pairs.premises]
    assert not {lower[i] for i in train} & {lower[i] for i in test}
    assert 3450 <= len(test) <= 3520


# ------------------------------------------------------------------------------- errors

def test_bad_inputs_raise_clear_errors(tmp_path):
    pairs = random_pairs(6)
    vocab = nm.build_vocab(pairs, 1)
    model = tiny_model(vocab)
    empty = SNLIPairs((), (), np.zeros(0, np.int8))
    for call in (lambda: nm.train_classifier(empty, log=None),
                 lambda: nm.predict(model, vocab, empty),
                 lambda: nm.nli_activations(model, vocab, empty),
                 lambda: nm.split_by_premise(empty),
                 lambda: nm.train_hypothesis_baseline(empty),
                 lambda: nm.build_vocab(empty)):
        with pytest.raises(ValueError, match="empty"):
            call()
    with pytest.raises(ValueError, match=r"layer 'mlp\.relu2' does not exist.*did you mean "
                                         r"'mlp\.relu'"):
        nm.nli_activations(model, vocab, pairs, layer="mlp.relu2")
    with pytest.raises(ValueError, match=r"predictions must have shape \[6\]"):
        nm.accuracy([0, 1, 2], pairs)
    unlabelled = SNLIPairs(pairs.premises, pairs.hypotheses, [-1] * 6)
    with pytest.raises(ValueError, match="no labelled pairs"):
        nm.train_classifier(unlabelled, log=None)
    with pytest.raises(ValueError, match="no labelled pairs"):
        nm.accuracy(np.zeros(6), unlabelled)
    with pytest.raises(ValueError, match="the hypothesis of pair 1 has no tokens"):
        nm.predict(model, vocab, SNLIPairs([["a"], ["b"]], [["a"], []], [0, 0]))
    with pytest.raises(TypeError, match="must be SNLIPairs"):
        nm.predict(model, vocab, [(["a"], ["b"])])
    with pytest.raises(ValueError, match="fraction"):
        nm.split_by_premise(pairs, 1.0)
    with pytest.raises(ValueError, match="one premise"):
        nm.split_by_premise(SNLIPairs([["a"]] * 3, [["b"]] * 3, [0] * 3), 0.5)
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        nm.train_classifier(pairs, epochs=0, log=None)
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        nm.train_classifier(pairs, lr=float("nan"), log=None)
    with pytest.raises(ValueError, match="at least 2 labelled pairs"):
        nm.train_classifier(pairs.subset([0]), log=None, **TINY)
    with pytest.raises(ValueError, match="dropout must be < 1"):
        nm.build_classifier(10, dropout=1.0)
    # a model that does not follow the four-input convention: the error names the inputs
    with pytest.raises(RuntimeError, match=r"model failed on samples 0..5 \(input shape "
                                           r"\(6, \d+\), \(6,\), \(6, \d+\), \(6,\)\)"):
        nm.nli_activations(torch.nn.Sequential(torch.nn.ReLU()), vocab, pairs, layer="0")


# ------------------------------------------------------------------------------- baseline

def test_hypothesis_baseline_finds_a_planted_word_and_ignores_the_premise():
    rng = np.random.default_rng(1)
    key = ["yes", "maybe", "no"]

    def make(n, noise):
        labels = rng.integers(0, 3, n)
        hyps = [[WORDS[rng.integers(10)], key[y], WORDS[rng.integers(10)]] for y in labels]
        # premises carry the label of another pair: no information
        prems = [[key[rng.integers(3)]] for _ in range(n)]
        flip = rng.random(n) < noise
        labels = np.where(flip, rng.integers(0, 3, n), labels)
        return SNLIPairs(prems, hyps, labels)

    train, test = make(300, 0.1), make(200, 0.0)
    baseline = nm.train_hypothesis_baseline(train)
    assert nm.accuracy(baseline.predict(test), test) == 1.0
    assert baseline.weights.shape == (len(baseline.vocab), 3)
    shuffled = SNLIPairs(test.premises[::-1], test.hypotheses, test.labels)
    assert np.array_equal(baseline.predict(shuffled), baseline.predict(test))
    # a label independent of the hypothesis: near chance on new pairs
    noise = SNLIPairs(test.premises, test.hypotheses, rng.integers(0, 3, len(test)))
    assert nm.accuracy(baseline.predict(noise), noise) < 0.5


# ------------------------------------------------------------------------------- cache

SMALL = nm.NLIConfig(epochs=1, batch_size=4, lr=1e-2, min_count=1, **TINY)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("COMPEXP_CACHE_DIR", str(folder))
    trained = []
    real = nm.train_classifier

    def counted(*args, **kwargs):
        trained.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(nm, "train_classifier", counted)
    return folder, trained


def test_cache_round_trip(cache):
    folder, trained = cache
    pairs = random_pairs(16)
    lines = []
    m1, v1 = nm.load_or_train_nli(pairs, SMALL, log=lines.append)
    files = list(folder.iterdir())
    assert len(trained) == 1 and len(files) == 1
    assert files[0].name == f"nli-classifier-{SMALL.key()}-{nm.training_data_hash(pairs)}.pt"
    m2, v2 = nm.load_or_train_nli(pairs, SMALL, log=lines.append)
    assert len(trained) == 1 and v1 == v2 and same_state(m1, m2) and not m2.training
    assert "loaded the trained NLI classifier" in lines[-1]
    # other data or another config: another file, trained again
    nm.load_or_train_nli(random_pairs(16, seed=9), SMALL, log=lines.append)
    nm.load_or_train_nli(pairs, nm.NLIConfig(**{**SMALL.__dict__, "seed": 1}), log=lines.append)
    assert len(trained) == 3 and len(list(folder.iterdir())) == 3
    nm.load_or_train_nli(pairs, SMALL, retrain=True, log=lines.append)
    assert len(trained) == 4


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty", "other tensors", "a list"])
def test_corrupt_cache_is_retrained_with_a_warning(cache, kind):
    folder, trained = cache
    pairs = random_pairs(16)
    nm.load_or_train_nli(pairs, SMALL, log=lambda line: None)
    (path,) = folder.iterdir()
    good = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "garbage":
        path.write_bytes(b"\x80\x04 not a checkpoint" * 40)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "other tensors":
        torch.save({"state_dict": {"w": torch.zeros(2)}, "vocab": ["<pad>", "<unk>", "a"],
                    "min_count": 1}, path)
    else:
        torch.save([1, 2, 3], path)
    lines = []
    model, vocab = nm.load_or_train_nli(pairs, SMALL, log=lines.append)
    assert len(trained) == 2
    assert any(f"the cached NLI classifier {path} is unreadable" in line for line in lines), lines
    assert f"cached the NLI classifier in {path}" in lines[-1]
    lines = []
    again, _ = nm.load_or_train_nli(pairs, SMALL, log=lines.append)
    assert len(trained) == 2 and same_state(model, again)


# ------------------------------------------------------------------------------- SNLI

@pytest.mark.slow
def test_small_model_beats_chance_on_snli():
    pairs = read_snli(snli_dir())
    train_idx, test_idx = nm.split_by_premise(pairs, 0.35, seed=0)
    train, test = pairs.subset(train_idx), pairs.subset(test_idx)
    model, vocab, history = nm.train_classifier(train, epochs=2, batch_size=64, lr=3e-3,
                                                embedding_dim=64, hidden_dim=64, mlp_dim=128,
                                                eval_pairs=test, log=None)
    assert history[-1]["eval_accuracy"] > 0.45, history
    baseline = nm.train_hypothesis_baseline(train)
    assert nm.accuracy(baseline.predict(test), test) > 0.45
