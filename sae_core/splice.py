"""Spliced evaluation: how much of the model's next-token prediction survives when an SAE's
reconstruction replaces the residual stream at one layer.

The same documents go through the model three times; the runs differ only in what decoder layer
`layer` outputs at the patched positions (a forward hook replaces the layer's output hidden state):

    clean           h                 nothing replaced
    SAE             x̂ = SAE(h)        the SAE's reconstruction, in the model's units
    zero ablation   0                 the layer's output deleted

Each run m gives next-token distributions p_m(· | ≤ t) at every predicting position t, and over the
N predictions (y_{t+1} the true next token):

    CE_m          = (1/N) Σ_t −log p_m(y_{t+1} | ≤ t)                                  (nats)
    CE-loss score = (CE_zero − CE_sae) / (CE_zero − CE_clean)        1: as good as clean, 0: as bad as zero
    KL_m          = (1/N) Σ_t Σ_v p_clean(v | ≤ t) [log p_clean(v | ≤ t) − log p_m(v | ≤ t)]

Which positions. A BOS token is prepended when the tokenizer has one, as `capture.capture_batch`
does, and it is never patched: the first position is the model's attention sink, whose residual
norm is a hundred times a text token's in the middle layers; the SAE was trained on text tokens
only (capture drops BOS), so its reconstruction of the sink would be an extrapolation that measures
nothing about the SAE, and it would swamp every later position through attention. Padding is
never patched either, nor are the positions a caller names as unpatched (the massive tokens of
`sae_core.massive_activations`, a second sink that SAEs are trained without). The patched positions
are thus exactly the tokens the SAE was trained on.
A prediction counts when it is made at a patched position and its target is a real token: every
text token but the first is a target. (With BOS, the first text token is predicted from BOS, where
all three runs agree: it would add the same CE to each and no KL, so it is left out; without BOS,
nothing predicts it.) A document of n tokens therefore contributes n − 1 predictions, less one
for each unpatched position that is not its last.

Logits are computed as the LM head applied to the base model's final states, only at the
predicting positions and in chunks, so the (tokens × vocabulary) logits of a whole batch
(800 MB in float32 for 4,096 SmolLM2 tokens) never exist at once. A probe checks once that this
reproduces the model's own logits (a model with logit soft-capping or scaling would not).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sae_core.capture import LoadedModel, length_sorted_batches, padded_batch

_HEAD_CHUNK_TOKENS = 512
"""Predictions whose logits are materialised at once: 512 × 49,152 × 4 B ≈ 100 MB per run for SmolLM2."""

_PROBE_TOKENS = 8
"""Length of the probe that checks head(base(x)) against the causal LM's own logits."""


@dataclass(frozen=True)
class SplicedMetrics:
    """Next-token loss of the model with an SAE spliced in at one layer, against clean and zero ablation."""

    ce_clean: float
    """Mean next-token cross-entropy (nats) of the unmodified model."""
    ce_sae: float
    """Mean cross-entropy with the layer's output replaced by the SAE's reconstruction."""
    ce_zero_ablation: float
    """Mean cross-entropy with the layer's output replaced by zeros."""
    ce_loss_score: float
    """(ce_zero_ablation − ce_sae) / (ce_zero_ablation − ce_clean): 1 is lossless, 0 no better than zeros."""
    kl_sae: float
    """Mean KL(p_clean ‖ p_sae) per predicted token (nats)."""
    kl_zero: float
    """Mean KL(p_clean ‖ p_zero) per predicted token (nats)."""
    n_tokens: int
    """Number of predicted tokens the means run over."""

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


class SplicedTokenLosses(NamedTuple):
    """Per-prediction losses of one batch of documents, ordered by document, then position."""

    document: Tensor
    """(n,) int64: index of the document within the batch."""
    position: Tensor
    """(n,) int64: position of the predicted token within its document's text (≥ 1; BOS not counted)."""
    ce_clean: Tensor
    """(n,) float32: −log p_clean(target)."""
    ce_sae: Tensor
    """(n,) float32: −log p_sae(target)."""
    ce_zero_ablation: Tensor
    """(n,) float32: −log p_zero(target)."""
    kl_sae: Tensor
    """(n,) float32: KL(p_clean ‖ p_sae)."""
    kl_zero: Tensor
    """(n,) float32: KL(p_clean ‖ p_zero)."""


class ResidualPatch:
    """A forward hook on one decoder layer that replaces its output hidden state at chosen positions.

    output'[b, t] = replace(output[positions])[i] at the i-th True entry of positions (B, W),
    output[b, t] elsewhere. `replace` maps (n, d_model) to (n, d_model).
    """

    def __init__(self, layer: nn.Module, positions: Tensor, replace: Callable[[Tensor], Tensor]):
        self.layer = layer
        self.positions = positions
        self.replace = replace
        self._handle = None

    def __enter__(self) -> ResidualPatch:
        self._handle = self.layer.register_forward_hook(self._patch)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _patch(self, _module, _inputs, output):
        # Decoder layers return a tensor (transformers >= 5) or a tuple whose first item is the hidden state.
        hidden = output[0] if isinstance(output, tuple) else output
        positions = self.positions.to(hidden.device)
        original = hidden[positions]
        replacement = self.replace(original)
        if replacement.shape != original.shape:
            raise ValueError(
                f"the replacement of the residual stream has shape {tuple(replacement.shape)}, "
                f"expected {tuple(original.shape)} (n_tokens, d_model)"
            )
        patched = hidden.clone()
        patched[positions] = replacement.to(hidden.dtype)
        return (patched, *output[1:]) if isinstance(output, tuple) else patched


def _check_layer(model: LoadedModel, layer: int) -> None:
    if not isinstance(layer, int) or not 0 <= layer < model.n_layers:
        raise ValueError(f"layer must be an integer in 0..{model.n_layers - 1} for model {model.name!r}, got {layer!r}")


def _check_documents(model: LoadedModel, token_ids: Sequence[Sequence[int]]) -> None:
    """Every document non-empty and in the vocabulary; at least one prediction to make."""
    if len(token_ids) == 0:
        raise ValueError("token_ids is empty: spliced evaluation needs at least one document")
    vocab_size = model.causal_lm.get_input_embeddings().num_embeddings
    for index, ids in enumerate(token_ids):
        if len(ids) == 0:
            raise ValueError(f"document {index} has no tokens")
        ids = torch.as_tensor(ids)
        if ids.is_floating_point() or ids.ndim != 1 or int(ids.min()) < 0 or int(ids.max()) >= vocab_size:
            raise ValueError(f"document {index} must be a list of token ids in 0..{vocab_size - 1}")
    if all(len(ids) < 2 for ids in token_ids):
        raise ValueError("every document has a single token: there is no next token to predict")


def _checked_unpatched(
    unpatched: Sequence[Sequence[int]] | None, token_ids: Sequence[Sequence[int]]
) -> list[list[int]]:
    """One list of text positions per document (empty when `unpatched` is None), each inside its document."""
    if unpatched is None:
        return [[] for _ in token_ids]
    if len(unpatched) != len(token_ids):
        raise ValueError(f"unpatched has {len(unpatched)} entries for {len(token_ids)} documents")
    for number, (positions, ids) in enumerate(zip(unpatched, token_ids)):
        if any(not 0 <= position < len(ids) for position in positions):
            raise ValueError(f"unpatched[{number}] = {list(positions)} names positions outside 0..{len(ids) - 1}")
    return [list(positions) for positions in unpatched]


def _lm_head(model: LoadedModel, device: str) -> nn.Module:
    """The model's output projection, moved (in place) to `device`, where `wrap_model` put the base model."""
    if model.causal_lm is None:
        raise ValueError(
            f"model {model.name!r} has no causal LM attached (LoadedModel.causal_lm is None): "
            "build it with load_model or wrap_model, which keep the LM head"
        )
    head = model.causal_lm.get_output_embeddings()
    if head is None:
        raise ValueError(f"model {model.name!r} has no LM head (get_output_embeddings() returned None)")
    return head.to(device)


def _check_head_reproduces_logits(model: LoadedModel, head: nn.Module, ids: Sequence[int], device: str) -> None:
    """Raise unless head(base(x)) equals the causal LM's own logits on a short probe."""
    prefix = [] if model.bos_token_id is None else [model.bos_token_id]
    probe = torch.tensor([[*prefix, *ids[:_PROBE_TOKENS]]], device=device)
    reference = model.causal_lm(input_ids=probe, use_cache=False).logits.float()
    ours = head(model.base(input_ids=probe, use_cache=False).last_hidden_state).float()
    tolerance = 1e-3 * float(reference.abs().max()) + 1e-5
    if ours.shape != reference.shape or not torch.allclose(ours, reference, rtol=1e-3, atol=tolerance):
        raise ValueError(
            f"model {model.name!r}: its LM head applied to the base model's output does not reproduce the "
            "model's logits (logit soft-capping or scaling?); spliced evaluation does not support it"
        )


def _reconstruct_with(sae: nn.Module, layer: int) -> Callable[[Tensor], Tensor]:
    def reconstruct(x: Tensor) -> Tensor:
        x_hat = sae(x).sae_out
        if not torch.isfinite(x_hat).all():
            raise ValueError(f"the SAE's reconstruction at layer {layer} contains NaN/inf")
        return x_hat

    return reconstruct


class _Batch(NamedTuple):
    """One right-padded batch of documents and the predictions it scores (module docstring)."""

    input_ids: Tensor  # (B, W) on the device
    attention_mask: Tensor  # (B, W) bool on the device
    patched: Tensor  # (B, W) bool: text tokens, the positions a splice replaces
    predicting: Tensor  # (B, W-1) bool on the device: position t predicts the token at t+1
    targets: Tensor  # (n,) int64 on the device
    document: Tensor  # (n,) int64: the document (within the batch) of each prediction
    position: Tensor  # (n,) int64: the predicted token's position in its document's text


def _prepare_batch(
    model: LoadedModel,
    token_ids: Sequence[Sequence[int]],
    device: str,
    unpatched: Sequence[Sequence[int]] | None = None,
) -> _Batch:
    input_ids, attention_mask, n_prefix = padded_batch(model, token_ids)  # (B, W) each
    patched = attention_mask.clone()
    patched[:, :n_prefix] = False  # BOS is the attention sink; see the module docstring
    for row, positions in enumerate(unpatched or ()):
        patched[row, [n_prefix + position for position in positions]] = False
    predicting = patched[:, :-1] & attention_mask[:, 1:]
    document, position = predicting.nonzero(as_tuple=True)
    return _Batch(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        patched=patched,
        predicting=predicting.to(device),
        targets=input_ids[:, 1:][predicting].to(device),
        document=document,
        position=position + 1 - n_prefix,
    )


def _predicting_states(model: LoadedModel, batch: _Batch, patch: ResidualPatch | None) -> Tensor:
    """Final hidden states (n, d_model) at the predicting positions, with `patch` hooked in when given."""
    with patch if patch is not None else contextlib.nullcontext():
        states = model.base(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
        ).last_hidden_state
    return states[:, :-1][batch.predicting]


def _token_losses(
    head: nn.Module, targets: Tensor, clean: Tensor, runs: Mapping[str, Tensor]
) -> tuple[Tensor, dict[str, tuple[Tensor, Tensor]]]:
    """CE of the clean run, and (CE, KL to clean) of every run, per prediction: tensors of shape (n,).

    clean and each run are final states (n, d_model); logits are formed `_HEAD_CHUNK_TOKENS` rows at a time.
    """
    n = len(targets)
    ce_clean = torch.empty(n, device=clean.device)
    losses = {name: (torch.empty(n, device=clean.device), torch.empty(n, device=clean.device)) for name in runs}
    for start in range(0, n, _HEAD_CHUNK_TOKENS):
        rows = slice(start, start + _HEAD_CHUNK_TOKENS)
        chunk_targets = targets[rows, None]
        log_p_clean = F.log_softmax(head(clean[rows]).float(), dim=-1)  # (chunk, vocab)
        p_clean = log_p_clean.exp()
        ce_clean[rows] = -log_p_clean.gather(1, chunk_targets)[:, 0]
        for name, states in runs.items():
            log_p = F.log_softmax(head(states[rows]).float(), dim=-1)
            ce, kl = losses[name]
            ce[rows] = -log_p.gather(1, chunk_targets)[:, 0]
            kl[rows] = (p_clean * (log_p_clean - log_p)).sum(dim=-1)
    return ce_clean, losses


class _EvalMode:
    """Put modules in eval mode for the duration of a block, then restore their training flags."""

    def __init__(self, *modules: nn.Module):
        self.flags = [(module, module.training) for module in modules]

    def __enter__(self) -> None:
        for module, _ in self.flags:
            module.eval()

    def __exit__(self, *exc) -> None:
        for module, was_training in self.flags:
            module.train(was_training)


class SplicedEvaluator:
    """Spliced evaluation of many SAEs on the same documents, sharing the runs they have in common.

    Comparing R regimes over L layers naively costs L·R·3 forward passes; here the clean run is done
    once per batch for all layers and the zero ablation once per layer, so it costs 1 + L·(1 + R).
    The clean final states kept between layers are small: (predictions, d_model) per batch.

    Documents are batched by length, at most `batch_tokens` padded tokens a batch, which changes no
    result. Pass held-out documents (see `token_split.holdout_documents`): the SAEs should not have trained on them.

    `unpatched`: per document, text positions (0 = the first token after BOS) left as they are, like
    BOS, and not scored: the massive tokens the SAEs were trained without (`sae_core.massive_activations`).
    """

    def __init__(
        self,
        model: LoadedModel,
        token_ids: Sequence[Sequence[int]],
        batch_tokens: int = 4096,
        device: str = "cpu",
        unpatched: Sequence[Sequence[int]] | None = None,
    ):
        if not isinstance(batch_tokens, int) or batch_tokens < 1:
            raise ValueError(f"batch_tokens must be a positive integer, got {batch_tokens!r}")
        self.model, self.device = model, device
        self.head = _lm_head(model, device)
        _check_documents(model, token_ids)
        unpatched = _checked_unpatched(unpatched, token_ids)
        with torch.inference_mode():
            _check_head_reproduces_logits(model, self.head, token_ids[0], device)
        prefix = int(model.bos_token_id is not None)
        self.batches = [
            _prepare_batch(model, [token_ids[i] for i in batch], device, [unpatched[i] for i in batch])
            for batch in length_sorted_batches([prefix + len(ids) for ids in token_ids], batch_tokens)
        ]
        self._clean_states: list[Tensor | None] = [None] * len(self.batches)

    @property
    def n_predictions(self) -> int:
        return sum(len(batch.targets) for batch in self.batches)

    def _clean(self, number: int) -> Tensor:
        if self._clean_states[number] is None:
            self._clean_states[number] = _predicting_states(self.model, self.batches[number], None)
        return self._clean_states[number]

    @torch.inference_mode()
    def evaluate(
        self, layer: int, saes: Mapping[str, nn.Module], log: Callable[[str], None] | None = None
    ) -> dict[str, SplicedMetrics]:
        """CE-loss score and KL of each SAE in `saes` (name → SAE) spliced in at `layer`.

        CE-loss score = (CE_zero − CE_sae) / (CE_zero − CE_clean); KL_m = mean_t KL(p_clean ‖ p_m), the
        means over every predicted token of every document (module docstring). Each SAE maps
        (n, d_model) activations of `layer` to `sae(x).sae_out` in the model's units.
        Raises ValueError for a layer out of range, no SAEs, or when CE_zero equals CE_clean (to float32
        precision), where the score is undefined.
        """
        _check_layer(self.model, layer)
        if not saes:
            raise ValueError("saes is empty: name at least one SAE to splice in")
        if "zero" in saes:
            raise ValueError("'zero' names the zero-ablation run; give the SAE another name")
        decoder_layer = self.model.layers[layer]
        sums = {name: 0.0 for name in ("ce_clean", "ce_zero", "kl_zero")}
        sums |= {f"{kind}_{name}": 0.0 for name in saes for kind in ("ce", "kl")}
        with _EvalMode(*saes.values()):
            for number, batch in enumerate(self.batches):
                runs = {"zero": ResidualPatch(decoder_layer, batch.patched, torch.zeros_like)}
                runs |= {name: ResidualPatch(decoder_layer, batch.patched, _reconstruct_with(sae, layer)) for name, sae in saes.items()}
                states = {name: _predicting_states(self.model, batch, patch) for name, patch in runs.items()}
                ce_clean, losses = _token_losses(self.head, batch.targets, self._clean(number), states)
                sums["ce_clean"] += float(ce_clean.double().sum())
                for name, (ce, kl) in losses.items():
                    sums[f"ce_{name}"] += float(ce.double().sum())
                    sums[f"kl_{name}"] += float(kl.double().sum())
                if log is not None:
                    log(f"spliced evaluation at layer {layer}: batch {number + 1}/{len(self.batches)}")

        n = self.n_predictions
        means = {name: total / n for name, total in sums.items()}
        if not all(math.isfinite(value) for value in means.values()):
            raise ValueError(f"spliced evaluation at layer {layer} produced non-finite losses: {means}")
        if math.isclose(means["ce_zero"], means["ce_clean"], rel_tol=1e-7, abs_tol=0.0):
            raise ValueError(
                f"CE-loss score is undefined at layer {layer}: zero ablation leaves the cross-entropy unchanged "
                f"(CE_clean = CE_zero = {means['ce_clean']:.6g})"
            )
        ablation_gap = means["ce_zero"] - means["ce_clean"]
        return {
            name: SplicedMetrics(
                ce_clean=means["ce_clean"],
                ce_sae=means[f"ce_{name}"],
                ce_zero_ablation=means["ce_zero"],
                ce_loss_score=(means["ce_zero"] - means[f"ce_{name}"]) / ablation_gap,
                kl_sae=means[f"kl_{name}"],
                kl_zero=means["kl_zero"],
                n_tokens=n,
            )
            for name in saes
        }


@torch.inference_mode()
def spliced_token_losses(
    model: LoadedModel, sae: nn.Module, layer: int, token_ids: Sequence[Sequence[int]], device: str = "cpu"
) -> SplicedTokenLosses:
    """Per-prediction CE and KL of the clean, SAE-spliced and zero-ablated runs, for one padded batch.

    `sae(x).sae_out` must map (n, d_model) activations of `layer` to their reconstruction in the
    model's units. The documents are run as one batch; use `spliced_evaluation` for many.
    """
    _check_layer(model, layer)
    head = _lm_head(model, device)
    _check_documents(model, token_ids)
    _check_head_reproduces_logits(model, head, token_ids[0], device)
    batch = _prepare_batch(model, token_ids, device)
    with _EvalMode(sae):
        states = {
            name: _predicting_states(model, batch, ResidualPatch(model.layers[layer], batch.patched, replace))
            for name, replace in (("sae", _reconstruct_with(sae, layer)), ("zero", torch.zeros_like))
        }
        ce_clean, losses = _token_losses(head, batch.targets, _predicting_states(model, batch, None), states)
    return SplicedTokenLosses(
        document=batch.document,
        position=batch.position,
        ce_clean=ce_clean.cpu(),
        ce_sae=losses["sae"][0].cpu(),
        ce_zero_ablation=losses["zero"][0].cpu(),
        kl_sae=losses["sae"][1].cpu(),
        kl_zero=losses["zero"][1].cpu(),
    )


def spliced_evaluation(
    model: LoadedModel,
    sae: nn.Module,
    layer: int,
    token_ids: Sequence[Sequence[int]],
    batch_tokens: int = 4096,
    device: str = "cpu",
    log: Callable[[str], None] | None = None,
) -> SplicedMetrics:
    """CE-loss score and KL of one `sae` spliced into `model` at `layer`, on the documents `token_ids`.

    CE-loss score = (CE_zero − CE_sae) / (CE_zero − CE_clean); KL_m = mean_t KL(p_clean ‖ p_m).
    See `SplicedEvaluator`, which scores many SAEs and layers on the same documents more cheaply.
    """
    _check_layer(model, layer)
    evaluator = SplicedEvaluator(model, token_ids, batch_tokens=batch_tokens, device=device)
    return evaluator.evaluate(layer, {"sae": sae}, log=log)["sae"]
