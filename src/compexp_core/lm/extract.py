"""Token-level activations: language-model neurons and SAE features as units.

:func:`extract_token_activations` runs a language model over tokenized documents, a batch of
documents at a time (right-padded, with an attention mask), takes one layer's output
``[batch, tokens, D]``, keeps the valid tokens only (padding dropped) and writes them to an
activations file as ``[N_tokens, U]``: one row, one cell, per token, which the search treats
as sample-level activations. Each row's document, position, token id and token text go to the
file's ``tokens`` group (a :class:`~compexp_core.io.tokens.TokenTable`, ``docs/FORMAT.md``
§1.2). Writing goes through :class:`~compexp_core.io.activations.ActivationsWriter`, so the
file is chunked and resumable as image extraction's is (:mod:`compexp_core.extract`).

The model is reached through one small internal protocol, an adapter that runs a batch of
input ids and its attention mask and returns the hooked layer's ``[B, T, D]`` output, chosen by
what the model is:

* a TransformerLens model (``HookedTransformer``, or anything with ``hook_dict`` and
  ``run_with_cache``): ``layer`` is a hook name (``"blocks.1.mlp.hook_post"``), read with
  ``run_with_cache(names_filter=[layer])``, stopping after the hook's block;
* any other :class:`torch.nn.Module`, Hugging Face models included: ``layer`` is a module path
  (``"blocks.1.mlp"``, ``"transformer.h.1.mlp"``) captured by a forward hook (a tuple output
  gives its first element); the forward pass stops at the layer. The model is called as
  ``model(input_ids, attention_mask=mask)`` when its ``forward`` takes ``attention_mask``,
  else ``model(input_ids)``.

With ``sae=`` the units are a sparse autoencoder's features instead: an SAELens SAE (its
``encode``, after checking ``sae.cfg.d_in`` against the layer's width) or any callable mapping
``[n, D]`` activations to ``[n, F]`` features, applied to the valid tokens.

torch is imported inside the functions only.

Examples:
    >>> import os, tempfile, torch
    >>> from compexp_core.io import read_activations_metadata
    >>> from compexp_core.io.tokens import read_tokens
    >>> model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.ReLU())
    >>> out = os.path.join(tempfile.mkdtemp(), "tokens.h5")
    >>> path = extract_token_activations(model, [[1, 2, 3], [4, 5]], "1", out,
    ...                                  texts=[["a", "b", "c"], ["d", "e"]], progress=False)
    >>> read_activations_metadata(path)["shape"]      # 5 tokens (padding dropped), 4 units
    (5, 4)
    >>> read_tokens(path).text.tolist()
    ['a', 'b', 'c', 'd', 'e']
"""
from __future__ import annotations

import difflib
import inspect
import os
import re
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from .._optional import require
from ..extract import (_LayersCaptured, _brief, _check_int, _check_output_paths, _check_str,
                       _find_layer, _resolve_device)
from ..io.activations import ActivationsWriter
from ..io.tokens import TokenTable

__all__ = ["extract_token_activations", "sae_features"]

PathLike = Union[str, "os.PathLike[str]"]


# =============================================================================== documents

def _is_int_sequence(value: Any) -> bool:
    a = np.asarray(value)
    return a.ndim == 1 and (a.size == 0 or np.issubdtype(a.dtype, np.integer))


def _id_rows(documents: Any) -> list[np.ndarray]:
    """Token-id lists (lists, arrays, 1-D tensors, or the rows of a 2-D array/tensor) as int64
    arrays, each checked to be a non-empty 1-D list of integers >= 0."""
    if hasattr(documents, "detach"):          # a tensor: its rows
        documents = documents.detach().cpu().numpy()
    if isinstance(documents, np.ndarray) and documents.ndim == 2:
        documents = list(documents)
    if isinstance(documents, (str, bytes)) or not isinstance(documents, (Sequence, np.ndarray)):
        raise TypeError(f"documents must be a TokenTable or a list of token-id lists, got "
                        f"{type(documents).__name__}")
    rows = []
    for d, ids in enumerate(documents):
        if hasattr(ids, "detach"):
            ids = ids.detach().cpu().numpy()
        if isinstance(ids, str) or not _is_int_sequence(ids):
            raise TypeError(f"document {d} must be a list of integer token ids, got "
                            f"{type(ids).__name__}"
                            + (" (text: tokenize it first)" if isinstance(ids, str) else ""))
        a = np.asarray(ids, dtype=np.int64)
        if a.size == 0:
            raise ValueError(f"document {d} has no tokens; drop empty documents")
        if a.min() < 0:
            raise ValueError(f"document {d} has a negative token id {int(a.min())} at position "
                             f"{int(np.argmin(a))}")
        rows.append(a)
    if not rows:
        raise ValueError("documents is empty: give at least one document of token ids")
    return rows


def _default_decode(model: Any) -> Optional[Callable]:
    tokenizer = getattr(model, "tokenizer", None)
    convert = getattr(tokenizer, "convert_ids_to_tokens", None)
    return None if convert is None else (lambda ids: convert([int(i) for i in ids]))


def _token_table(documents: Any, texts: Any, decode: Any, model: Any) -> tuple:
    """(list of int64 id arrays, one per document; the TokenTable of their rows)."""
    if isinstance(documents, TokenTable):
        if texts is not None or decode is not None:
            raise ValueError("texts= and decode= apply to lists of token ids; a TokenTable "
                             "has its texts already")
        table = documents
        if len(table) == 0:
            raise ValueError("documents is an empty TokenTable: give at least one token")
        bad = np.flatnonzero(table.token_id < 0)
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"TokenTable row {i} (document {table.doc[i]}, position "
                             f"{table.position[i]}) has token_id {table.token_id[i]}: running "
                             f"a model needs every token's vocabulary id")
        starts = np.flatnonzero(np.r_[True, table.doc[1:] != table.doc[:-1]])
        bounds = np.r_[starts, len(table)]
        for a, b in zip(bounds[:-1], bounds[1:]):
            if not np.array_equal(table.position[a:b], np.arange(b - a)):
                raise ValueError(f"TokenTable document {table.doc[a]} has positions "
                                 f"{table.position[a:b][:8].tolist()}...; a model runs whole "
                                 f"documents, positions 0, 1, 2, ...")
        return [table.token_id[a:b] for a, b in zip(bounds[:-1], bounds[1:])], table
    rows = _id_rows(documents)
    if texts is not None and decode is not None:
        raise ValueError("give texts= or decode=, not both")
    if texts is None:
        decode = decode if decode is not None else _default_decode(model)
        if decode is None:
            raise ValueError("token texts are needed for the tokens group: pass texts= (a list "
                             "of token-string lists, one per document) or decode= (a function "
                             "from a document's token ids to its token strings, such as a "
                             "tokenizer's convert_ids_to_tokens)")
        if not callable(decode):
            raise TypeError(f"decode must be callable, got {type(decode).__name__}")
        texts = []
        for d, ids in enumerate(rows):
            spelled = list(decode(ids.tolist()))
            if len(spelled) != ids.size:
                raise ValueError(f"decode gave {len(spelled)} token strings for the {ids.size} "
                                 f"token ids of document {d}; it must spell each id as one "
                                 f"token (convert_ids_to_tokens, not decode)")
            texts.append(spelled)
    else:
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise TypeError(f"texts must be a list of token-string lists, got "
                            f"{type(texts).__name__}")
        if len(texts) != len(rows):
            raise ValueError(f"texts has {len(texts)} documents but documents has {len(rows)}")
        for d, (ids, spelled) in enumerate(zip(rows, texts)):
            if isinstance(spelled, str):
                raise TypeError(f"texts[{d}] must be a list of token strings, got a string")
            if len(spelled) != ids.size:
                raise ValueError(f"document {d} has {ids.size} token ids but {len(spelled)} "
                                 f"token texts; the tokenizer's tokens must match the ids one "
                                 f"to one")
    for d, spelled in enumerate(texts):
        for p, s in enumerate(spelled):
            if not isinstance(s, str):
                raise TypeError(f"the text of document {d}, position {p} is "
                                f"{type(s).__name__}, not a string")
    return rows, TokenTable.from_documents(texts, token_ids=rows)


def _model_limits(model: Any) -> tuple:
    """(vocabulary size, context length) of a TransformerLens or Hugging Face model, None
    where unknown."""
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        cfg = getattr(model, "config", None)

    def first(*keys: str) -> Optional[int]:
        values = (getattr(cfg, k, None) for k in keys)
        return next((v for v in values if isinstance(v, int) and not isinstance(v, bool)
                     and v > 0), None)
    return first("d_vocab", "vocab_size"), first("n_ctx", "n_positions",
                                                 "max_position_embeddings")


def _check_fits(rows: list, model: Any, pad_id: int) -> None:
    vocab, ctx = _model_limits(model)
    for d, ids in enumerate(rows):
        if vocab is not None and int(ids.max()) >= vocab:
            p = int(np.argmax(ids >= vocab))
            raise ValueError(f"document {d} has token id {int(ids[p])} at position {p}, outside "
                             f"the model's vocabulary of {vocab}")
        if ctx is not None and ids.size > ctx:
            raise ValueError(f"document {d} has {ids.size} tokens, more than the model's "
                             f"context of {ctx}; split it into shorter documents")
    if vocab is not None and pad_id >= vocab:
        raise ValueError(f"pad_id {pad_id} is outside the model's vocabulary of {vocab}")


# =============================================================================== adapters
# Each adapter is a callable (input_ids [B, T] long, attention_mask [B, T] long) -> the hooked
# layer's output [B, T, D], with close() removing whatever it installed.

def _first_tensor(output: Any) -> Any:
    """A layer's output; a tuple/list (or Hugging Face ModelOutput) gives its first element."""
    if hasattr(output, "to_tuple"):
        output = output.to_tuple()
    if isinstance(output, (tuple, list)) and output:
        return output[0]
    return output


def _takes_attention_mask(model: Any) -> bool:
    try:
        return "attention_mask" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


class _ModuleAdapter:
    """A forward hook at a module path; the forward pass stops once the layer has run."""

    def __init__(self, model: Any, layer: str) -> None:
        self.model = model
        self.layer = layer
        module = _find_layer(model, layer)     # ValueError with the near matches
        self.output: Any = None
        self.masked = _takes_attention_mask(model)

        def hook(mod: Any, inputs: Any, output: Any) -> None:
            if self.output is None:
                self.output = _first_tensor(output)
                raise _LayersCaptured()

        self.handle = module.register_forward_hook(hook)

    def __call__(self, input_ids: Any, attention_mask: Any) -> Any:
        self.output = None
        try:
            if self.masked:
                self.model(input_ids, attention_mask=attention_mask)
            else:
                self.model(input_ids)
        except _LayersCaptured:
            pass
        if self.output is None:
            raise RuntimeError(f"layer '{self.layer}' was not called during the model's "
                               f"forward pass, so it has no output to capture")
        return self.output

    def close(self) -> None:
        self.handle.remove()


def _is_lens(model: Any) -> bool:
    return hasattr(model, "hook_dict") and hasattr(model, "run_with_cache")


class _LensAdapter:
    """A TransformerLens hook point read with ``run_with_cache``."""

    def __init__(self, model: Any, layer: str) -> None:
        names = list(model.hook_dict)
        if layer not in names:
            close = difflib.get_close_matches(layer, names, n=5, cutoff=0.5)
            hint = (f"; did you mean {', '.join(repr(c) for c in close)}?" if close else
                    f" (hook names look like {', '.join(repr(n) for n in names[:3])})")
            raise ValueError(f"hook '{layer}' does not exist in the TransformerLens model "
                             f"({len(names)} hook points){hint}")
        self.model = model
        self.layer = layer
        found = re.match(r"blocks\.(\d+)\.", layer)
        # run the blocks up to the hook's own only (embedding hooks: none)
        self.stop = (int(found.group(1)) + 1 if found
                     else 0 if layer in ("hook_embed", "hook_pos_embed", "hook_tokens") else None)

    def __call__(self, input_ids: Any, attention_mask: Any) -> Any:
        kwargs = {"names_filter": [self.layer], "attention_mask": attention_mask}
        if self.stop is not None:
            kwargs["stop_at_layer"] = self.stop
        _, cache = self.model.run_with_cache(input_ids, **kwargs)
        return cache[self.layer]

    def close(self) -> None:
        pass


def _adapter(model: Any, layer: str) -> Any:
    if _is_lens(model):
        return _LensAdapter(model, layer)
    return _ModuleAdapter(model, layer)


class _Features:
    """SAE features (``sae.encode``) or a callable's outputs, from ``[n, D]`` activations."""

    def __init__(self, sae: Any) -> None:
        encode = getattr(sae, "encode", None)
        if callable(encode):
            self.function = encode
        elif callable(sae):
            self.function = sae
        else:
            raise TypeError(f"sae must be an SAE with an encode method or a callable mapping "
                            f"[n, D] activations to [n, F] features, got {type(sae).__name__}")
        self.sae = sae
        self.d_in = getattr(getattr(sae, "cfg", None), "d_in", None)
        self.name = (type(sae).__name__ if callable(encode)
                     else getattr(sae, "__name__", type(sae).__name__))

    def check_width(self, width: int, layer: str) -> None:
        if self.d_in is not None and int(self.d_in) != width:
            raise ValueError(f"the SAE's input width (cfg.d_in = {self.d_in}) differs from the "
                             f"width of layer '{layer}' ({width}); use the SAE trained on "
                             f"that layer")

    def __call__(self, x: Any) -> Any:
        import torch

        params = getattr(self.sae, "parameters", None)
        first = next(iter(params()), None) if callable(params) else None
        if first is not None:
            x = x.to(device=first.device, dtype=first.dtype)
        try:
            out = self.function(x)
        except Exception as e:
            raise RuntimeError(f"the SAE ({self.name}) failed on activations of shape "
                               f"{tuple(x.shape)}: {_brief(e)}") from e
        if isinstance(out, np.ndarray):
            out = torch.from_numpy(out)
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != x.shape[0]:
            shape = tuple(out.shape) if hasattr(out, "shape") else type(out).__name__
            raise ValueError(f"the SAE ({self.name}) must map [n, D] activations to [n, F] "
                             f"features; for {tuple(x.shape)} it gave {shape}")
        return out


# =============================================================================== extraction

def _hooked_block(output: Any, layer: str, ids: Any, lo: int, hi: int) -> Any:
    """The adapter's output checked to be a float ``[B, T, D]`` for ids ``[B, T]``."""
    import torch

    if not isinstance(output, torch.Tensor):
        raise ValueError(f"layer '{layer}' returns a {type(output).__name__}, not a tensor; "
                         f"choose a layer whose output is a tensor [batch, tokens, units]")
    if not output.is_floating_point():
        raise TypeError(f"layer '{layer}' returns a {output.dtype} tensor; activations must "
                        f"be floating point")
    if output.ndim != 3 or tuple(output.shape[:2]) != tuple(ids.shape):
        raise ValueError(f"layer '{layer}' gives shape {tuple(output.shape)} for documents "
                         f"{lo}..{hi - 1} of token ids {tuple(ids.shape)}: token-level "
                         f"extraction needs one vector per token, [batch, tokens, units], "
                         f"with as many tokens as the input")
    return output


def _check_finite(block: np.ndarray, table: TokenTable, what: str) -> None:
    finite = np.isfinite(block)
    if not finite.all():
        r, u = (int(i) for i in np.argwhere(~finite)[0])
        raise ValueError(f"{what} gives a non-finite value ({block[r, u]}) at document "
                         f"{table.doc[r]}, position {table.position[r]} (token "
                         f"{table.text[r]!r}), unit {u}"
                         + (" (float16 overflows beyond +-65504: use float32)"
                            if block.dtype == np.float16 else ""))


def extract_token_activations(model: Any, documents: Any, layer: str, output: PathLike, *,
                              sae: Any = None, texts: Optional[Sequence[Sequence[str]]] = None,
                              decode: Optional[Callable[[list], Sequence[str]]] = None,
                              batch_size: int = 16, device: str = "cpu", resume: bool = False,
                              progress: bool = True, model_name: Optional[str] = None,
                              dataset_name: Optional[str] = None, pad_id: int = 0,
                              dtype: str = "float32") -> str:
    """Run a language model over tokenized documents and write one layer's token activations.

    Documents are run ``batch_size`` at a time, right-padded with ``pad_id`` to the longest
    in the batch, with an attention mask (1 on tokens, 0 on padding); only the valid tokens'
    rows are kept. The file (``docs/FORMAT.md`` §1, §1.2) holds ``acts`` ``[N_tokens, U]``
    (rows document by document, in order) and the ``tokens`` group, whose row i says which
    token row i is. It is written as ``<output>.partial`` and renamed when complete; an
    interrupted run continues with ``resume=True`` (from the first document not yet written)
    and gives the same file.

    Args:
        model: a :class:`torch.nn.Module`: a TransformerLens model (``layer`` is a hook name),
            or any other module, Hugging Face models included (``layer`` is a module path). It
            runs in eval mode under ``torch.no_grad()`` on ``device``; its modules' train/eval
            modes are restored afterwards.
        documents: the token ids: a list of token-id lists (lists, arrays or 1-D tensors; or a
            2-D array/tensor, one document per row), with their texts from ``texts`` or
            ``decode``; or a :class:`~compexp_core.io.tokens.TokenTable` with token ids
            (>= 0) and positions 0, 1, 2, ... in each document, whose rows are written as they
            are (document numbers included). Documents are numbered 0, 1, ... otherwise.
        layer: a module path (``"blocks.1.mlp"``) or, for a TransformerLens model, a hook
            name (``"blocks.1.mlp.hook_post"``). Its output must be ``[B, T, D]``; a tuple
            output gives its first element.
        output: the activations file to write.
        sae: optional: the units are then features: an SAELens SAE (``sae.encode``; its
            ``cfg.d_in`` must equal D) or any callable mapping ``[n, D]`` activations (a
            float tensor) to ``[n, F]`` features (tensor or array), applied to valid tokens.
        texts: with token-id lists: each document's token strings as the tokenizer spells
            them (``"Ġthe"``), one per id.
        decode: instead of ``texts``: a function from one document's token ids (a list of
            ints) to its token strings, e.g. ``tokenizer.convert_ids_to_tokens``. Default:
            the model's ``tokenizer.convert_ids_to_tokens`` when it has a tokenizer.
        batch_size: documents per forward pass.
        device: ``"cpu"``, ``"cuda"`` (``"cuda:N"``) or ``"auto"``.
        resume: continue the partial file of an interrupted run (the same documents, model
            name, layer and dtype); without it a partial file is overwritten. With the same
            ``batch_size`` (the same padding) the result is identical to an uninterrupted
            run's; another batch size pads differently, which may change the last bits.
        progress: show a progress bar over tokens (tqdm).
        model_name: the ``model`` attribute (default: the model's class name).
        dataset_name: the ``dataset`` attribute (default: ``"<D> documents, <N> tokens"``).
        pad_id: the token id padding is filled with (its outputs are dropped).
        dtype: ``"float32"`` or ``"float16"`` for the stored activations.

    Returns:
        ``output``. Its ``layer`` attribute is ``layer``, or ``"<layer> -> <SAE name>"`` (the
        SAE's class name, or the callable's ``__name__``) with ``sae``.

    Raises:
        ValueError: a layer or hook name that does not exist (near matches listed); texts
            whose token count differs from a document's ids; an SAE whose ``d_in`` differs
            from the layer's width; no documents, or an empty one; a layer whose output is not
            ``[B, T, D]`` for ids ``[B, T]``; NaN or infinite activations (naming the
            document, position and token); token ids outside the model's vocabulary or
            documents longer than its context (when its config tells them); a partial file
            that does not match (``resume``).
        TypeError: documents that are not token ids; a bad argument.
        RuntimeError: the model or the SAE fails on a batch (naming the documents).
        FileNotFoundError: the output directory does not exist.

    Examples:
        >>> import os, tempfile, torch
        >>> from compexp_core.io import load_activations
        >>> model = torch.nn.Sequential(torch.nn.Embedding(10, 4))
        >>> def top2(x):                      # a "dictionary" of 2 features
        ...     return x[:, :2] * 10
        >>> out = os.path.join(tempfile.mkdtemp(), "features.h5")
        >>> path = extract_token_activations(model, [[1, 2], [3]], "0", out, sae=top2,
        ...                                  decode=lambda ids: [f"t{i}" for i in ids],
        ...                                  progress=False)
        >>> acts = load_activations(path)
        >>> acts.shape, bool(torch.allclose(torch.from_numpy(acts[2]),
        ...                                 model[0].weight[3, :2].detach() * 10))
        ((3, 2), True)
    """
    torch = require("torch", "token activation extraction")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(layer, str) or not layer:
        raise TypeError(f"layer must be a module path or hook name string, got {layer!r}")
    output = _check_output_paths(output, [layer])[0]
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
    batch_size = _check_int(batch_size, "batch_size", 1)
    pad_id = _check_int(pad_id, "pad_id", 0)
    rows, table = _token_table(documents, texts, decode, model)
    _check_fits(rows, model, pad_id)
    features = None if sae is None else _Features(sae)
    model_name = _check_str(model_name, "model_name") or type(model).__name__
    dataset_name = (_check_str(dataset_name, "dataset_name")
                    or f"{len(rows)} documents, {len(table)} tokens")
    layer_attr = layer if features is None else f"{layer} -> {features.name}"
    device = _resolve_device(device)

    adapter = _adapter(model, layer)
    sizes = np.array([r.size for r in rows], np.int64)
    starts = np.r_[0, np.cumsum(sizes)]                 # row of each document's first token
    n = int(starts[-1])
    writer = ActivationsWriter(output, n_samples=n, dtype=dtype, model=model_name,
                               layer=layer_attr, dataset=dataset_name, resumable=True,
                               tokens=True)
    modules = [*model.modules(), *(sae.modules() if isinstance(sae, torch.nn.Module) else ())]
    modes = [(m, m.training) for m in modules]
    bar = None
    try:
        done = writer.resume() if resume else 0
        # Restart at the document holding row `done` (a batch boundary, unless the
        # batch size changed): its rows are written again, with the same values.
        first = int(np.searchsorted(starts, done, side="right")) - 1
        model.eval()
        model.to(device)
        if features is not None and isinstance(sae, torch.nn.Module):
            sae.eval()
            sae.to(device)
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, initial=int(starts[first]), unit="tok",
                       desc=f"extract {layer_attr}")
        with torch.no_grad():
            for d0 in range(first, len(rows), batch_size):
                d1 = min(len(rows), d0 + batch_size)
                lo, hi = int(starts[d0]), int(starts[d1])
                longest = int(sizes[d0:d1].max())
                ids = torch.full((d1 - d0, longest), pad_id, dtype=torch.long)
                mask = torch.zeros((d1 - d0, longest), dtype=torch.long)
                for b, r in enumerate(rows[d0:d1]):
                    ids[b, :r.size] = torch.as_tensor(r.tolist())
                    mask[b, :r.size] = 1
                try:
                    hooked = adapter(ids.to(device), mask.to(device))
                except Exception as e:
                    raise RuntimeError(f"model failed on documents {d0}..{d1 - 1} (token ids "
                                       f"{tuple(ids.shape)}): {_brief(e)}") from e
                hooked = _hooked_block(hooked, layer, ids, d0, d1)
                valid = hooked[mask.to(hooked.device).bool()]   # [n, D], document-major
                what = f"layer '{layer}'"
                if features is not None:
                    if d0 == first:
                        features.check_width(int(valid.shape[1]), layer)
                    valid = features(valid.float())
                    what = f"the SAE features of layer '{layer}'"
                block = valid.detach().to("cpu", torch.float32).numpy().astype(dtype)
                batch_tokens = table.rows(lo, hi)
                _check_finite(block, batch_tokens, what)
                writer.write(lo, block, tokens=batch_tokens)
                if bar is not None:
                    bar.update(hi - lo)
        writer.finish()
    finally:
        if bar is not None:
            bar.close()
        writer.close()      # an unfinished partial file stays on disk, ready for resume
        adapter.close()
        for m, training in modes:
            m.train(training)
    return output


# ======================================================================== SAE features, lazily

def sae_features(sae: Any, resid: Any, **options: Any):
    """The features of an SAELens SAE over a stored residual stream, computed only for the
    features and tokens a search reads (:class:`~compexp_core.engine.units.SAEFeatures`): a
    dictionary of F features over N tokens is searched without its ``[N, F]`` activations ever
    existing (``search_formulas(sae_features(sae, resid), concepts, threshold=0)``).

    Reads the SAE's ``W_enc``, ``b_enc``, ``b_dec`` (subtracted from the input when
    ``cfg.apply_b_dec_to_input``) and, for JumpReLU SAEs, ``threshold``. Other architectures
    (TopK, gated) and SAEs that normalise their input are refused: extract their features with
    ``extract_token_activations(..., sae=sae)`` instead.

    Args:
        sae: an SAELens SAE (standard/ReLU or JumpReLU).
        resid: ``[N_tokens, D]`` activations of the SAE's layer (array, h5py dataset, tensor;
            e.g. the ``acts`` of ``extract_token_activations`` at that layer).
        options: passed to :class:`~compexp_core.engine.units.SAEFeatures` (``rows_per_step``,
            ``feature_group``).

    Returns:
        An :class:`~compexp_core.engine.units.SAEFeatures` (``[N_tokens, F]``).

    Raises:
        ValueError: an architecture or input normalisation that the lazy features cannot
            reproduce; an SAE whose input width differs from ``resid``'s.
        TypeError: ``sae`` lacks the SAE's weights.
    """
    from ..engine.units import SAEFeatures

    cfg = getattr(sae, "cfg", None)
    missing = [n for n in ("W_enc", "b_enc") if getattr(sae, n, None) is None]
    if cfg is None or missing:
        raise TypeError(f"sae must be an SAELens SAE (with cfg, W_enc, b_enc), got "
                        f"{type(sae).__name__}")
    arch = cfg.architecture() if callable(getattr(cfg, "architecture", None)) else "standard"
    if arch not in ("standard", "jumprelu"):
        raise ValueError(f"sae_features computes standard (ReLU) and JumpReLU SAEs; this SAE is "
                         f"{arch!r}: extract its features with extract_token_activations(..., "
                         f"sae=sae)")
    norm = getattr(cfg, "normalize_activations", "none")
    if norm not in (None, "none"):
        raise ValueError(f"the SAE normalises its input (normalize_activations={norm!r}), which "
                         f"sae_features does not reproduce: extract its features with "
                         f"extract_token_activations(..., sae=sae)")

    def host(t):
        return t.detach().to("cpu").numpy() if hasattr(t, "detach") else np.asarray(t)

    b_dec = host(sae.b_dec) if getattr(cfg, "apply_b_dec_to_input", False) else None
    if arch == "jumprelu":
        return SAEFeatures(resid, host(sae.W_enc), host(sae.b_enc), b_dec, activation="jumprelu",
                           jump_threshold=host(sae.threshold), **options)
    return SAEFeatures(resid, host(sae.W_enc), host(sae.b_enc), b_dec, **options)
