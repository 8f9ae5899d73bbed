"""Load SAEs that SAELens and EleutherAI's sparsify saved, as sae_core SAEs.

The other direction needs no converter: `io.save_sae` writes the SAELens layout, which
`sae_lens.SAE.load_from_disk` opens and runs to the same reconstruction (tests/test_interop.py).

Every SAE here computes, on raw activations x (n, d_in),

    pre = (x − b_dec) W_enc + b_enc,    z = σ(pre),    x̂ = z W_dec + b_dec,

which is sae_core's formula with input_scale 1, so the loaders only have to map tensors and pick σ.
They return a float32 CPU SAE in eval mode (a bf16 or fp16 save is upcast exactly).

SAELens (v6, and the legacy v5 cfg spelling), a folder with cfg.json + sae_weights.safetensors:

    cfg "architecture"   σ                               loaded as
    "topk"               ReLU(TopK_k(pre))               TopKSae
    "standard"           ReLU(pre)                       ReluSae
    "jumprelu"           ReLU(pre) · 1[pre > θ_j]        BatchTopKSae, whose inference code is exactly
                                                         this JumpReLU with θ its `threshold` buffer

and what SAELens's forward does beyond that formula:
  - apply_b_dec_to_input = false: pre = x W_enc + b_enc, so b_enc ← b_enc + b_dec W_enc.
  - "topk" with rescale_acts_by_decoder_norm (its TopK trainer's default, kept by `save_model`):
    pre' = pre ⊙ n and x̂ = (z ⊘ n) W_dec + b_dec, n_j = ‖W_dec[j]‖. Folding the norms,
    W_enc[:, j] ← W_enc[:, j]·n_j, b_enc_j ← b_enc_j·n_j, W_dec[j] ← W_dec[j] / n_j, gives the plain
    formula with the same z and x̂.
  - normalize_activations: "constant_norm_rescale" and "layer_norm" renormalise each token at run
    time, which no sae_core SAE does: refused. "expected_average_only_in" and
    "covariance_whitening" are folded into the weights by SAELens's trainer and do nothing in its
    forward, so such SAEs load as they are.
A BatchTopKSae needs k, the mean L0 its training targeted. SAELens's BatchTopK (and Matryoshka
BatchTopK) saves keep it in metadata.training_architecture_details; a JumpReLU SAE trained as one has
none and is refused. sae_core also needs d_sae to be a multiple of d_in.

sparsify (`SparseCoder.save_to_disk`), a folder with cfg.json + sae.safetensors:

    encoder.weight (d_sae, d_in), encoder.bias (d_sae,), W_dec (d_sae, d_in), b_dec (d_in,)
    z = TopK_k(ReLU(pre)) with W_enc = encoder.weightᵀ, b_enc = encoder.bias    → TopKSae

ReLU before TopK keeps the same non-zero code as our TopK before ReLU: the two choices differ only
in which zero activations pad a token with fewer than k positive pre-activations. Refused: the
"groupmax" activation, transcoders and skip connections (they are not autoencoders of x alone).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from sae_core.architectures import build_sae
from sae_core.config import SaeConfig
from sae_core.io import CFG_FILENAME, SAELENS_ARCHITECTURES, THRESHOLD_NAME, WEIGHTS_FILENAME, copy_checked, read_json_object
from sae_core.sae import SparseAutoencoder

SPARSIFY_WEIGHTS_FILENAME = "sae.safetensors"
_FROM_SAELENS_ARCHITECTURE = {theirs: ours for ours, theirs in SAELENS_ARCHITECTURES.items()}
# SAELens normalisations that its SAE.forward does not apply (the trainer folds them into the weights).
_INERT_SAELENS_NORMALIZATIONS = ("none", "expected_average_only_in", "covariance_whitening")


class SaelensFormat(NamedTuple):
    """What a SAELens cfg.json says about computing x̂, in sae_core's terms."""

    sae_cfg: SaeConfig
    """Shape, architecture and k of the equivalent sae_core SAE."""

    apply_b_dec_to_input: bool
    """Whether SAELens subtracts b_dec from x before encoding (sae_core always does)."""

    rescale_acts_by_decoder_norm: bool
    """Whether SAELens's TopK multiplies pre-activations by the decoder row norms (and divides the
    code by them before decoding); only ever true for "topk"."""


def load_saelens_sae(folder: str | Path) -> SparseAutoencoder:
    """Load the SAE SAELens saved to `folder` (`SAE.save_model` or `TrainingSAE.save_inference_model`).

    Returns a TopKSae, ReluSae or BatchTopKSae (see the module docstring) in eval mode whose
    `forward(x).sae_out` and `dense_latents(x)` equal SAELens's `sae(x)` and `sae.encode(x)` for
    x (n, d_in). Our own `io.save_sae` folders load too, identically to `io.load_sae`.
    Raises FileNotFoundError for a missing folder or file and ValueError for a configuration
    sae_core cannot compute exactly or weights that do not match it.
    """
    cfg_path, weights_path = _require_files(Path(folder), CFG_FILENAME, WEIGHTS_FILENAME)
    layout = saelens_format(read_json_object(cfg_path), cfg_path)
    tensors = _read_tensors(weights_path)
    # SAELens < 6 saved an all-ones "scaling_factor" for a while; SAELens itself drops it.
    scaling_factor = tensors.pop("scaling_factor", None)
    if scaling_factor is not None and not bool((scaling_factor == 1).all()):
        raise ValueError(
            f"{weights_path}: a 'scaling_factor' other than 1 (legacy SAELens fine-tuning scale) "
            "is not supported"
        )
    sae = _sae_from_tensors(layout.sae_cfg, tensors, weights_path)
    with torch.no_grad():
        if not layout.apply_b_dec_to_input:
            # Their pre-activation is x W_enc + b_enc; ours subtracts b_dec first, so add it back.
            sae.b_enc += sae.b_dec @ sae.W_enc
        if layout.rescale_acts_by_decoder_norm:
            _fold_decoder_norms(sae)
    return sae


def load_sparsify_sae(folder: str | Path) -> SparseAutoencoder:
    """Load the SAE sparsify saved to `folder` (`SparseCoder.save_to_disk`) as a TopKSae in eval mode.

    Its `forward(x).sae_out` equals sparsify's `forward(x).sae_out` for x (n, d_in).
    Raises FileNotFoundError for a missing folder or file and ValueError for a configuration that is
    not a TopK autoencoder or weights that do not match it.
    """
    cfg_path, weights_path = _require_files(Path(folder), CFG_FILENAME, SPARSIFY_WEIGHTS_FILENAME)
    sae_cfg = sparsify_sae_config(read_json_object(cfg_path), cfg_path)
    tensors = _read_tensors(weights_path)
    # nn.Linear stores the encoder as (d_sae, d_in); ours is (d_in, d_sae).
    renamed = {"encoder.weight": "W_enc", "encoder.bias": "b_enc"}
    state = {renamed.get(name, name): tensor for name, tensor in tensors.items()}
    if "W_enc" in state:
        state["W_enc"] = state["W_enc"].T
    return _sae_from_tensors(sae_cfg, state, weights_path)


def saelens_format(cfg: dict[str, Any], source: Path | str) -> SaelensFormat:
    """Interpret a SAELens cfg.json (`cfg`, read from `source`, which error messages name)."""
    # SAELens < 6 spelled a TopK SAE as architecture "standard" (its default) with activation_fn
    # "topk" and k in activation_fn_kwargs; v6 writes neither activation field.
    architecture = cfg.get("architecture", "standard")
    activation_fn = cfg.get("activation_fn", cfg.get("activation_fn_str"))
    activation_kwargs = cfg.get("activation_fn_kwargs") or {}
    if architecture == "standard" and activation_fn == "topk":
        architecture = "topk"
    if architecture not in _FROM_SAELENS_ARCHITECTURE:
        raise ValueError(
            f"{source}: SAELens architecture {architecture!r} is not supported "
            f"(sae_core loads {sorted(_FROM_SAELENS_ARCHITECTURE)})"
        )
    expected_fn = "topk" if architecture == "topk" else "relu"
    if activation_fn not in (None, expected_fn):
        raise ValueError(
            f"{source}: architecture {architecture!r} with activation_fn {activation_fn!r} is not supported "
            f"(expected {expected_fn!r})"
        )

    normalization = cfg.get("normalize_activations", "none")
    if isinstance(normalization, bool):  # SAELens < 6: true meant the April 2024 mean-norm scaling
        normalization = "expected_average_only_in" if normalization else "none"
    if normalization not in _INERT_SAELENS_NORMALIZATIONS:
        raise ValueError(
            f"{source}: normalize_activations={normalization!r} renormalises each token at run time, "
            f"which sae_core does not; supported: {list(_INERT_SAELENS_NORMALIZATIONS)}"
        )

    d_in, d_sae = cfg.get("d_in"), cfg.get("d_sae")
    _check_width(d_in, d_sae, source)
    k: Any = None
    if architecture == "topk":
        k = cfg.get("k", activation_kwargs.get("k"))
        if k is None:
            raise ValueError(f"{source}: a 'topk' SAE needs k (in 'k' or 'activation_fn_kwargs')")
    elif architecture == "jumprelu":
        training_details = (cfg.get("metadata") or {}).get("training_architecture_details") or {}
        k = cfg.get("k", training_details.get("k"))
        if k is None:
            raise ValueError(
                f"{source}: a 'jumprelu' SAE loads as a BatchTopK SAE, which needs k (the mean L0 its "
                "training targeted), but neither 'k' nor metadata.training_architecture_details.k is set"
            )
    sae_cfg = _sae_config(
        d_in=d_in,
        d_sae=d_sae,
        k=_as_integer_k(k, source),
        architecture=_FROM_SAELENS_ARCHITECTURE[architecture],
        source=source,
    )
    # SAELens reads the flag only into its TopK config; other architectures ignore it, and so do we.
    rescale = architecture == "topk" and bool(cfg.get("rescale_acts_by_decoder_norm", False))
    return SaelensFormat(
        sae_cfg=sae_cfg,
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
        rescale_acts_by_decoder_norm=rescale,
    )


def sparsify_sae_config(cfg: dict[str, Any], source: Path | str) -> SaeConfig:
    """The TopK SaeConfig a sparsify cfg.json (`cfg`, read from `source`) describes."""
    activation = cfg.get("activation", "topk")  # older releases had no other activation
    if activation != "topk":
        raise ValueError(f"{source}: sparsify activation {activation!r} is not supported (only 'topk')")
    for flag in ("transcode", "skip_connection"):
        if cfg.get(flag, False):
            raise ValueError(f"{source}: {flag}=true is not an autoencoder of its input; not supported")
    d_in = cfg.get("d_in")
    expansion_factor = cfg.get("expansion_factor")
    num_latents = cfg.get("num_latents") or (
        d_in * expansion_factor if isinstance(d_in, int) and isinstance(expansion_factor, int) else None
    )
    _check_width(d_in, num_latents, source)
    k = _as_integer_k(cfg.get("k"), source)
    return _sae_config(d_in=d_in, d_sae=num_latents, k=k, architecture="topk", source=source)


# ---- shared helpers ---------------------------------------------------------------------------


def _require_files(folder: Path, *names: str) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"SAE folder {folder} does not exist")
    paths = [folder / name for name in names]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"SAE folder {folder} has no {path.name}")
    return paths


def _read_tensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(path)
    except SafetensorError as error:
        raise ValueError(f"{path} is not a readable safetensors file: {error}") from error


def _check_width(d_in: Any, d_sae: Any, source: Path | str) -> None:
    if not (isinstance(d_in, int) and isinstance(d_sae, int) and d_in > 0 and d_sae > 0):
        raise ValueError(
            f"{source}: needs positive integer d_in and d_sae, got d_in={d_in!r} d_sae={d_sae!r}"
        )
    if d_sae % d_in != 0:
        raise ValueError(
            f"{source}: d_sae={d_sae} is not a multiple of d_in={d_in}, which sae_core requires"
        )


def _as_integer_k(k: Any, source: Path | str) -> int | None:
    """k as an int; SAELens stores BatchTopK's k as a float (e.g. 32.0)."""
    if k is None or (isinstance(k, int) and not isinstance(k, bool)):
        return k
    if isinstance(k, float) and k.is_integer():
        return int(k)
    raise ValueError(f"{source}: k must be a whole number, got {k!r}")


def _sae_config(*, d_in: int, d_sae: int, k: int | None, architecture: str, source: Path | str) -> SaeConfig:
    try:
        return SaeConfig(d_in=d_in, expansion_factor=d_sae // d_in, k=k, architecture=architecture)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from error


def _sae_from_tensors(sae_cfg: SaeConfig, tensors: dict[str, Tensor], source: Path) -> SparseAutoencoder:
    """A float32 eval-mode SAE of `sae_cfg` holding exactly `tensors`: every parameter (and the
    BatchTopK threshold) must be there with its shape, and nothing else may be."""
    # A throwaway generator keeps the (overwritten) random init from touching the global RNG.
    sae = build_sae(sae_cfg, generator=torch.Generator())
    names = [name for name, _ in sae.named_parameters()]
    if sae_cfg.architecture == "batchtopk":
        names.append(THRESHOLD_NAME)
    missing = sorted(set(names) - set(tensors))
    unexpected = sorted(set(tensors) - set(names))
    if missing or unexpected:
        raise ValueError(
            f"{source}: tensors do not match a {sae_cfg.architecture!r} SAE: "
            f"missing {missing}, unexpected {unexpected}"
        )
    with torch.no_grad():
        for name in names:
            copy_checked(sae, name, tensors[name], source)
    return sae.eval()


@torch.no_grad()
def _fold_decoder_norms(sae: SparseAutoencoder) -> None:
    """Fold SAELens's rescale_acts_by_decoder_norm into the weights (see the module docstring).

    Norms are clamped at 1e-8 as SAELens does: a zero row contributes nothing either way.
    """
    norms = sae.W_dec.norm(dim=1).clamp_min(1e-8)
    sae.W_enc *= norms
    sae.b_enc *= norms
    sae.W_dec /= norms[:, None]
