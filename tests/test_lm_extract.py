"""Tests for compexp_core.lm.extract (token-level activations and their adapters), the tokens
group that ActivationsWriter keeps in step with ``acts``, and patch_grid for ViT-style outputs.

Every adapter is checked against a manual forward pass of each document alone (no padding):
a tiny plain-PyTorch transformer hooked by module path, a TransformerLens HookedTransformer by
hook name, an SAELens SAE and a plain callable as feature maps, and a tiny Hugging Face GPT-2.
Models are built from configs with random weights; nothing is downloaded.
"""
import doctest
import functools
import os
import warnings

import h5py
import numpy as np
import pytest
import torch
from torch import nn

import compexp_core.lm
import compexp_core.lm.extract
from compexp_core.extract import PARTIAL_SUFFIX, ImageDataset, extract_activations, patch_grid
from compexp_core.io import load_activations, read_activations_metadata
from compexp_core.io.activations import ActivationsWriter
from compexp_core.io.tokens import TokenTable, append_tokens, read_tokens, tokens_written
from compexp_core.lm import extract_token_activations

os.environ.setdefault("HF_HUB_OFFLINE", "1")

VOCAB, D_MODEL, D_MLP = 20, 8, 12
# Documents of different lengths, so every batch of two is padded.
DOCS = [[1, 2, 3, 4, 5], [6, 7], [8, 9, 10, 11], [12], [13, 14, 15], [3, 3, 3, 3, 3, 3]]
TEXTS = [[f"t{i}" for i in doc] for doc in DOCS]
N_TOKENS = sum(map(len, DOCS))


def close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- a tiny LM

class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln = nn.LayerNorm(D_MODEL)
        self.qkv = nn.Linear(D_MODEL, 3 * D_MODEL)
        self.mlp = nn.Sequential(nn.Linear(D_MODEL, D_MLP), nn.GELU())
        self.out = nn.Linear(D_MLP, D_MODEL)

    def forward(self, x, keep):
        q, k, v = self.qkv(self.ln(x)).chunk(3, dim=-1)
        scores = (q @ k.transpose(1, 2)) / D_MODEL ** 0.5
        scores = scores.masked_fill(~keep, float("-inf"))
        x = x + scores.softmax(-1) @ v
        return x + self.out(self.mlp(x))


class TinyLM(nn.Module):
    """A causal transformer (or a bidirectional one, which needs the attention mask)."""

    def __init__(self, causal=True):
        super().__init__()
        torch.manual_seed(0)
        self.causal = causal
        self.embed = nn.Embedding(VOCAB, D_MODEL)
        self.pos = nn.Embedding(16, D_MODEL)
        self.blocks = nn.ModuleList([Block(), Block()])
        self.calls = 0
        self.fail_at_call = None

    def forward(self, input_ids, attention_mask=None):
        self.calls += 1
        if self.calls == self.fail_at_call:
            raise KeyboardInterrupt   # an interruption in the middle of the run
        b, t = input_ids.shape
        x = self.embed(input_ids) + self.pos(torch.arange(t))[None]
        keep = torch.ones(b, t, t, dtype=torch.bool)
        if self.causal:
            keep = keep & torch.ones(t, t, dtype=torch.bool).tril()[None]
        if attention_mask is not None:
            keep = keep & attention_mask.bool()[:, None, :]
        for block in self.blocks:
            x = block(x, keep)
        return x


def manual_module_acts(model, module, docs):
    """The module's output on each document alone, concatenated: [N_tokens, D]."""
    rows = []
    handle = module.register_forward_hook(lambda m, i, o: rows.append(o[0].detach().clone()))
    with torch.no_grad():
        for doc in docs:
            model(torch.tensor([doc]))
    handle.remove()
    return torch.cat(rows).numpy()


@pytest.mark.parametrize("causal", [True, False])
def test_module_path_values_padding_and_tokens(tmp_path, causal):
    model = TinyLM(causal=causal)
    out = extract_token_activations(model, DOCS, "blocks.1.mlp", tmp_path / "a.h5",
                                    texts=TEXTS, batch_size=2, progress=False,
                                    model_name="tiny")
    acts = load_activations(out)
    assert acts.shape == (N_TOKENS, D_MLP)           # padding dropped
    close(acts, manual_module_acts(model, model.blocks[1].mlp, DOCS))
    table = read_tokens(out)
    assert table == TokenTable.from_documents(TEXTS, token_ids=DOCS)
    assert table.doc.tolist()[:7] == [0, 0, 0, 0, 0, 1, 1]
    meta = read_activations_metadata(out)
    assert (meta["model"], meta["layer"], meta["dataset"]) == (
        "tiny", "blocks.1.mlp", f"{len(DOCS)} documents, {N_TOKENS} tokens")
    assert not os.path.exists(str(out) + PARTIAL_SUFFIX)
    assert model.training          # train mode restored


def test_inputs_as_tensor_decode_and_token_table(tmp_path):
    model = TinyLM()
    square = torch.tensor([[1, 2, 3], [4, 5, 6]])
    out = extract_token_activations(model, square, "blocks.0", tmp_path / "a.h5",
                                    decode=lambda ids: [f"<{i}>" for i in ids], progress=False)
    assert read_tokens(out).text.tolist() == ["<1>", "<2>", "<3>", "<4>", "<5>", "<6>"]
    close(load_activations(out), manual_module_acts(model, model.blocks[0], square.tolist()))
    # A TokenTable is written as it is (its document numbers included).
    table = TokenTable.from_documents([["a", "b"], ["c"]], token_ids=[[1, 2], [3]], first_doc=7)
    out = extract_token_activations(model, table, "blocks.0", tmp_path / "b.h5", progress=False)
    assert read_tokens(out) == table
    close(load_activations(out), manual_module_acts(model, model.blocks[0], [[1, 2], [3]]))


def test_resume_after_an_interruption_gives_the_same_file(tmp_path):
    full = extract_token_activations(TinyLM(), DOCS, "blocks.1.mlp", tmp_path / "full.h5",
                                     texts=TEXTS, batch_size=2, progress=False)
    model = TinyLM()
    model.fail_at_call = 3                      # the third batch (documents 4, 5)
    out = tmp_path / "resumed.h5"
    with pytest.raises(KeyboardInterrupt):
        extract_token_activations(model, DOCS, "blocks.1.mlp", out, texts=TEXTS,
                                  batch_size=2, progress=False)
    with h5py.File(str(out) + PARTIAL_SUFFIX, "r") as f:
        assert int(f.attrs["n_done"]) == 12 == tokens_written(f)      # documents 0..3
    model.fail_at_call, model.calls = None, 0
    extract_token_activations(model, DOCS, "blocks.1.mlp", out, texts=TEXTS, batch_size=2,
                              progress=False, resume=True)
    assert model.calls == 1                     # only the last batch was run again
    assert np.array_equal(load_activations(out), load_activations(full))
    assert read_tokens(out) == read_tokens(full)
    assert read_activations_metadata(out) == read_activations_metadata(full)
    # Another model name does not resume a partial file of the first.
    model.fail_at_call, model.calls = 2, 0
    with pytest.raises(KeyboardInterrupt):
        extract_token_activations(model, DOCS, "blocks.1.mlp", out, texts=TEXTS,
                                  batch_size=2, progress=False)
    with pytest.raises(ValueError, match="written for model 'TinyLM'"):
        extract_token_activations(model, DOCS, "blocks.1.mlp", out, texts=TEXTS,
                                  progress=False, resume=True, model_name="other")
    # It resumes with another batch size too (other padding: equal up to float rounding).
    model.fail_at_call = None
    extract_token_activations(model, DOCS, "blocks.1.mlp", out, texts=TEXTS, batch_size=3,
                              progress=False, resume=True)
    close(load_activations(out), load_activations(full))
    assert read_tokens(out) == read_tokens(full)


def test_writer_keeps_tokens_in_step(tmp_path):
    table = TokenTable.from_documents(TEXTS, token_ids=DOCS)
    acts = np.arange(N_TOKENS * 2, dtype=np.float32).reshape(N_TOKENS, 2)
    path = str(tmp_path / "w.h5")
    w = ActivationsWriter(path, n_samples=N_TOKENS, dtype="float32", resumable=True,
                          tokens=True)
    with pytest.raises(ValueError, match="token rows must come"):
        w.write(0, acts[:5])
    with pytest.raises(ValueError, match="came with 4 token rows"):
        w.write(0, acts[:5], tokens=table.rows(0, 4))
    w.write(0, acts[:5], tokens=table.rows(0, 5))
    with pytest.raises(ValueError, match="would leave a gap"):
        w.write(7, acts[7:9], tokens=table.rows(7, 9))
    w.close()
    # A batch whose tokens were appended before the interruption, but not recorded as done.
    with h5py.File(path + PARTIAL_SUFFIX, "a") as f:
        append_tokens(f, table.rows(5, 7))
        assert tokens_written(f) == 7 and int(f.attrs["n_done"]) == 5
    w = ActivationsWriter(path, n_samples=N_TOKENS, dtype="float32", resumable=True,
                          tokens=True)
    assert w.resume() == 5
    w.write(5, acts[5:], tokens=table.rows(5, N_TOKENS))
    w.finish()
    assert read_tokens(path) == table and np.array_equal(load_activations(path), acts)
    with pytest.raises(ValueError, match="without tokens=True"):
        ActivationsWriter(path, n_samples=2, dtype="float32").write(0, acts[:2],
                                                                     tokens=table.rows(0, 2))


# ----------------------------------------------------------------------------- bad input

class NanAt(nn.Module):
    """Embeddings that are NaN for one token id."""

    def __init__(self, bad_id):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 3)
        with torch.no_grad():
            self.embed.weight[bad_id] = float("nan")

    def forward(self, input_ids):
        return self.embed(input_ids)


class Pooled(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 3)

    def forward(self, input_ids):
        return self.embed(input_ids).mean(1)


@pytest.mark.parametrize("kwargs, err, text", [
    (dict(documents=[]), ValueError, "documents is empty"),
    (dict(documents=[[1, 2], []], texts=None), ValueError, "document 1 has no tokens"),
    (dict(documents=["the cat"]), TypeError, "tokenize it first"),
    (dict(texts=[["a", "b"], ["c"]]), ValueError, "document 1 has 2 token ids but 1 token"),
    (dict(texts=[["a", "b"]]), ValueError, "texts has 1 documents but documents has 2"),
    (dict(texts=None, decode=lambda ids: ["x"]), ValueError,
     "decode gave 1 token strings for the 2 token ids of document 0"),
    (dict(texts=None), ValueError, "pass texts= .* or decode="),
    (dict(layer="blocks.1.mpl"), ValueError, "did you mean 'blocks.1.mlp'"),
    (dict(sae=object()), TypeError, "encode method or a callable"),
    (dict(sae=lambda x: x[:1]), ValueError, r"must map \[n, D\] activations to \[n, F\]"),
    (dict(batch_size=0), ValueError, "batch_size must be >= 1"),
    (dict(dtype="int8"), ValueError, "dtype must be"),
])
def test_bad_input_is_named(tmp_path, kwargs, err, text):
    args = dict(documents=[[1, 2], [3, 4]], texts=[["a", "b"], ["c", "d"]], layer="blocks.1.mlp")
    args.update(kwargs)
    with pytest.raises(err, match=text):
        extract_token_activations(TinyLM(), args.pop("documents"), args.pop("layer"),
                                  tmp_path / "x.h5", progress=False, **args)
    assert not os.listdir(tmp_path)            # nothing left behind


def test_nan_and_layer_shape_errors_name_the_token(tmp_path):
    with pytest.raises(ValueError, match=r"non-finite value \(nan\) at document 1, position 2 "
                                         r"\(token 't7'\), unit 0"):
        extract_token_activations(NanAt(7), [[1, 2], [5, 6, 7]], "embed", tmp_path / "n.h5",
                                  decode=lambda ids: [f"t{i}" for i in ids], progress=False)
    with pytest.raises(ValueError, match=r"gives shape \(2, 3\) .*one vector per token"):
        extract_token_activations(nn.Sequential(Pooled()), [[1, 2], [5]], "0",
                                  tmp_path / "p.h5", texts=[["a", "b"], ["c"]], progress=False)
    bad = TokenTable([0, 0], [0, 1], [1, -1], ["a", "b"])
    with pytest.raises(ValueError, match="row 1 .* has token_id -1"):
        extract_token_activations(TinyLM(), bad, "blocks.0", tmp_path / "t.h5", progress=False)


# ----------------------------------------------------------------------------- SAEs, callables

def test_sae_features_and_callables(tmp_path):
    sae_lens = pytest.importorskip("sae_lens", minversion="6")   # StandardSAE
    sae = sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=D_MLP, d_sae=24))
    with torch.no_grad():
        sae.b_enc.fill_(0.1)                    # some features fire
    model = TinyLM()
    out = extract_token_activations(model, DOCS, "blocks.1.mlp", tmp_path / "s.h5",
                                    texts=TEXTS, sae=sae, batch_size=4, progress=False)
    hooked = torch.from_numpy(manual_module_acts(model, model.blocks[1].mlp, DOCS))
    with torch.no_grad():
        want = sae.encode(hooked).numpy()
    acts = load_activations(out)
    assert acts.shape == (N_TOKENS, 24) and (acts > 0).any()
    close(acts, want)
    assert read_activations_metadata(out)["layer"] == "blocks.1.mlp -> StandardSAE"
    assert read_tokens(out) == TokenTable.from_documents(TEXTS, token_ids=DOCS)

    wrong = sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=D_MODEL, d_sae=24))
    with pytest.raises(ValueError, match=r"input width \(cfg.d_in = 8\) differs from the "
                                         r"width of layer 'blocks.1.mlp' \(12\)"):
        extract_token_activations(model, DOCS, "blocks.1.mlp", tmp_path / "w.h5",
                                  texts=TEXTS, sae=wrong, progress=False)

    def halves(x):                              # a callable returning a NumPy array
        return x[:, ::2].numpy() * 2
    out = extract_token_activations(model, DOCS, "blocks.1.mlp", tmp_path / "c.h5",
                                    texts=TEXTS, sae=halves, progress=False)
    close(load_activations(out), hooked[:, ::2].numpy() * 2)
    assert read_activations_metadata(out)["layer"] == "blocks.1.mlp -> halves"


# ----------------------------------------------------------------------------- TransformerLens

@pytest.fixture(scope="module")
def lens_model():
    tl = pytest.importorskip("transformer_lens")
    cfg = tl.HookedTransformerConfig(n_layers=2, d_model=D_MODEL, n_ctx=16, d_head=4, n_heads=2,
                                     d_mlp=D_MLP, d_vocab=VOCAB, act_fn="gelu", seed=0)
    with warnings.catch_warnings():
        # transformer_lens 3 deprecates HookedTransformer in favour of TransformerBridge
        warnings.simplefilter("ignore", DeprecationWarning)
        return tl.HookedTransformer(cfg)


@pytest.mark.parametrize("hook", ["blocks.1.mlp.hook_post", "blocks.0.hook_resid_post",
                                  "hook_embed"])
def test_transformer_lens_hook_names(tmp_path, lens_model, hook):
    out = extract_token_activations(lens_model, DOCS, hook, tmp_path / "l.h5", texts=TEXTS,
                                    batch_size=4, progress=False)
    with torch.no_grad():
        want = torch.cat([lens_model.run_with_cache(torch.tensor([doc]),
                                                    names_filter=[hook])[1][hook][0]
                          for doc in DOCS]).numpy()
    close(load_activations(out), want)
    assert read_tokens(out) == TokenTable.from_documents(TEXTS, token_ids=DOCS)
    assert read_activations_metadata(out)["model"] == "HookedTransformer"


def test_transformer_lens_errors(tmp_path, lens_model):
    with pytest.raises(ValueError, match=r"hook 'blocks.1.mlp.hook_pots' does not exist .* "
                                         r"did you mean 'blocks.1.mlp.hook_post'"):
        extract_token_activations(lens_model, DOCS, "blocks.1.mlp.hook_pots", tmp_path / "x.h5",
                                  texts=TEXTS, progress=False)
    with pytest.raises(ValueError, match="token id 25 at position 1, outside the model's "
                                         "vocabulary of 20"):
        extract_token_activations(lens_model, [[1, 25]], "hook_embed", tmp_path / "x.h5",
                                  texts=[["a", "b"]], progress=False)
    with pytest.raises(ValueError, match="17 tokens, more than the model's context of 16"):
        extract_token_activations(lens_model, [[1] * 17], "hook_embed", tmp_path / "x.h5",
                                  texts=[["a"] * 17], progress=False)


def test_transformer_lens_with_sae(tmp_path, lens_model):
    sae_lens = pytest.importorskip("sae_lens", minversion="6")   # StandardSAE
    sae = sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=D_MODEL, d_sae=16))
    hook = "blocks.0.hook_resid_post"
    out = extract_token_activations(lens_model, DOCS, hook, tmp_path / "ls.h5", texts=TEXTS,
                                    sae=sae, batch_size=3, progress=False)
    with torch.no_grad():
        resid = torch.cat([lens_model.run_with_cache(torch.tensor([doc]),
                                                     names_filter=[hook])[1][hook][0]
                           for doc in DOCS])
        close(load_activations(out), sae.encode(resid).numpy())


# ----------------------------------------------------------------------------- Hugging Face

def test_hugging_face_gpt2_by_module_path(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.GPT2Model(transformers.GPT2Config(
        n_layer=2, n_embd=D_MODEL, n_head=2, vocab_size=VOCAB, n_positions=16))
    for layer in ("h.1.mlp", "h.1"):
        out = extract_token_activations(model, DOCS, layer, tmp_path / f"{layer}.h5",
                                        texts=TEXTS, batch_size=4, progress=False)
        module = model.get_submodule(layer)
        rows = []
        handle = module.register_forward_hook(
            lambda m, i, o: rows.append((o[0] if isinstance(o, tuple) else o)[0].clone()))
        with torch.no_grad():
            model.eval()
            for doc in DOCS:
                model(input_ids=torch.tensor([doc]))
        handle.remove()
        close(load_activations(out), torch.cat(rows).numpy())
    with pytest.raises(ValueError, match="did you mean 'h.1.mlp'"):
        extract_token_activations(model, DOCS, "h.1.mpl", tmp_path / "x.h5", texts=TEXTS,
                                  progress=False)


# ----------------------------------------------------------------------------- ViT patches

class TinyViT(nn.Module):
    """Conv patches of 4x4 pixels, a CLS token, one linear block: tokens [B, 1 + h*w, D]."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.patch = nn.Conv2d(3, 5, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, 5))
        self.blocks = nn.Sequential(nn.Linear(5, 5))

    def forward(self, x):
        p = self.patch(x).flatten(2).transpose(1, 2)          # [B, h*w, D], row-major
        return self.blocks(torch.cat([self.cls.expand(len(x), -1, -1), p], 1))


def test_patch_grid_with_extract_activations(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 12, 3), dtype=np.uint8)
    model = TinyViT()
    grid = functools.partial(patch_grid, grid=(2, 3))
    [out] = extract_activations(model, ImageDataset(images), "blocks", tmp_path / "v.h5",
                                batch_size=2, progress=False, output_transform=grid)
    acts = load_activations(out)
    assert acts.shape == (3, 5, 2, 3)
    with torch.no_grad():
        tokens = model(torch.stack([ImageDataset(images)[i] for i in range(3)]))
    # unit u at patch (row 1, column 2) is token 1 + 1 * 3 + 2
    close(acts[:, :, 1, 2], tokens[:, 1 + 5].numpy())
    close(acts, patch_grid(tokens, grid=(2, 3)).numpy())
    with pytest.raises(ValueError, match="do not form a square grid"):
        extract_activations(model, ImageDataset(images), "blocks", tmp_path / "w.h5",
                            progress=False, output_transform=patch_grid)
    with pytest.raises(TypeError, match="output_transform must be callable"):
        extract_activations(model, ImageDataset(images), "blocks", tmp_path / "w.h5",
                            progress=False, output_transform="patch_grid")


@pytest.mark.parametrize("kwargs, text", [
    (dict(output=torch.zeros(2, 5)), r"needs patch tokens \[batch, tokens, channels\]"),
    (dict(prefix_tokens=5), "leave no patch tokens"),
    (dict(grid=(2, 3)), r"grid 2x3 = 6 patches, but there are 4"),
    (dict(grid="2x2"), r"grid must be \(h, w\)"),
    (dict(prefix_tokens=-1), "prefix_tokens must be >= 0"),
])
def test_patch_grid_errors(kwargs, text):
    args = dict(output=torch.zeros(2, 5, 3))
    args.update(kwargs)
    with pytest.raises(ValueError, match=text):
        patch_grid(args.pop("output"), **args)
    # registers or distillation tokens: prefix_tokens=2
    assert patch_grid(torch.zeros(1, 6, 3), prefix_tokens=2).shape == (1, 3, 2, 2)


@pytest.mark.parametrize("module", [compexp_core.lm.extract, compexp_core.lm])
def test_module_doctests(module):
    failures, tried = doctest.testmod(module,
                                      optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert tried > 0 and failures == 0


# ------------------------------------------------------------- SAELens SAEs as lazy features

def test_sae_features_of_an_saelens_sae_match_encode_and_search_alike():
    """sae_features computes an SAELens SAE's features without materialising them: its values
    equal sae.encode's (float32 rounding aside), and a search over it equals the search over
    the materialised features it reads."""
    sae_lens = pytest.importorskip("sae_lens", minversion="6")
    import compexp_core as cx
    from compexp_core.lm import sae_features

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    resid = rng.standard_normal((600, 8)).astype(np.float32)
    for sae in (sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=8, d_sae=24)),
                sae_lens.JumpReLUSAE(sae_lens.JumpReLUSAEConfig(d_in=8, d_sae=24))):
        with torch.no_grad():
            for p in sae.parameters():
                p.normal_(0, 0.5)
            if hasattr(sae, "threshold"):
                sae.threshold.uniform_(0.0, 0.5)
            want = sae.encode(torch.from_numpy(resid)).numpy()
        lazy = sae_features(sae, resid)
        assert lazy.shape == (600, 24)
        got = np.asarray(lazy[:, np.arange(24)])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        masks = rng.random((600, 5)) < 0.3
        a = cx.search_formulas(lazy, masks, threshold=0, max_length=2, device="cpu")
        b = cx.search_formulas(got, masks, threshold=0, max_length=2, device="cpu")
        assert list(a) == list(b)
    with pytest.raises(ValueError, match="input width 8 differs from resid's width D = 3"):
        sae_features(sae, resid[:, :3])
    with pytest.raises(TypeError, match="must be an SAELens SAE"):
        sae_features(lambda x: x, resid)
