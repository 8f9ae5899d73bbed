"""The SAELens on-disk layout: `save_sae` writes sae_core SAEs in it, `load_sae` reads them back and
reads SAELens's own saves too, so others' tools open ours and ours open theirs.

A saved SAE is a folder:
    cfg.json                  SAELens config fields + "metadata" (hook, layers, model: the caller's)
    sae_weights.safetensors   W_enc (d_in, d_sae), W_dec (d_sae, d_in), b_enc (d_sae,), b_dec (d_in,),
                              and threshold (d_sae,) for the JumpReLU-inference architectures

Every SAE in it computes, on raw activations x (n, d_in),

    pre = (x − b_dec) W_enc + b_enc,    z = σ(pre),    x̂ = z W_dec + b_dec,

which is sae_core's formula with input_scale 1. Each architecture is written as the SAELens
inference architecture that computes the same code, and read back as the sae_core one:

    ours       cfg "architecture"   σ
    topk       "topk"               ReLU(TopK_k(pre))                   cfg also carries k
    batchtopk  "jumprelu"           ReLU(pre) · 1[pre > threshold_j]    SAELens saves its own BatchTopK
                                                                        SAEs this way; cfg carries our
                                                                        k, which SAELens ignores
    matryoshka "jumprelu"           the same (its inference is BatchTopK's)
      _batchtopk
    jumprelu   "jumprelu"           pre · 1[pre > threshold_j]          threshold_j > 0, so the same
                                                                        formula; k is its target L0
    relu       "standard"           ReLU(pre)

cfg.json also names our architecture ("sae_core_architecture"), which SAELens ignores: three of ours
share SAELens's "jumprelu", and each loads back as what it was trained as.

SAELens has no input scale, so `save_sae` folds ours into the weights (t = 1/s):
    W_enc' = W_enc·s,  W_dec' = W_dec / s,  b_dec' = b_dec / s,  b_enc' = b_enc,  threshold' = threshold
(the pre-activations are unchanged, so is the threshold on them) and a loader that computes the
formula above on raw activations gets exactly our latents and reconstruction. `load_sae` therefore
returns input_scale 1, float32, on the CPU, in eval mode (a bf16 or fp16 save is upcast exactly).

Reading SAELens's own saves (v6, and the legacy v5 spelling: architecture "standard" with
activation_fn "topk" and k in activation_fn_kwargs) also undoes what its forward does beyond the formula:
  - apply_b_dec_to_input = false: pre = x W_enc + b_enc, so b_enc ← b_enc + b_dec W_enc.
  - "topk" with rescale_acts_by_decoder_norm (its TopK trainer's default, kept by `save_model`):
    pre' = pre ⊙ n and x̂ = (z ⊘ n) W_dec + b_dec, n_j = ‖W_dec[j]‖. Folding the norms,
    W_enc[:, j] ← W_enc[:, j]·n_j, b_enc_j ← b_enc_j·n_j, W_dec[j] ← W_dec[j] / n_j, gives the plain
    formula with the same z and x̂.
  - normalize_activations: "constant_norm_rescale" and "layer_norm" renormalise each token at run
    time, which no sae_core SAE does: refused. "expected_average_only_in" and
    "covariance_whitening" are folded into the weights by SAELens's trainer and do nothing in its
    forward, so such SAEs load as they are.
A SAELens "jumprelu" save without "sae_core_architecture" loads as a BatchTopKSae when it carries k, the
mean L0 its training targeted (SAELens's BatchTopK and Matryoshka BatchTopK saves keep it in
metadata.training_architecture_details), and as a JumpReluSae when it has none (a JumpReLU trained as
one, e.g. Gemma Scope): the same inference either way. sae_core also needs d_sae to be a multiple of d_in.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from sae_core.architectures import build_sae
from sae_core.config import DEFAULT_K, SaeConfig
from sae_core.full_disk import naming_a_full_disk
from sae_core.sae import SparseAutoencoder
from sae_core.staging import replace_folder, staged_sibling

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
WEIGHT_NAMES = ("W_enc", "W_dec", "b_enc", "b_dec")
THRESHOLD_NAME = "threshold"
SAELENS_ARCHITECTURES = {
    "topk": "topk", "batchtopk": "jumprelu", "matryoshka_batchtopk": "jumprelu", "jumprelu": "jumprelu", "relu": "standard",
}
"""Our architecture → the SAELens inference architecture it is saved as."""
THRESHOLD_ARCHITECTURES = ("batchtopk", "matryoshka_batchtopk", "jumprelu")
"""Ours whose inference is a JumpReLU: their saves carry `threshold`."""
SAE_CORE_ARCHITECTURE_KEY = "sae_core_architecture"
_ACTIVATION_FNS = {"topk": "topk", "relu": "relu", **{name: "relu" for name in THRESHOLD_ARCHITECTURES}}
"""The legacy SAELens (< 6) spelling: activation applied before any threshold."""
# SAELens normalisations that its SAE.forward does not apply (the trainer folds them into the weights).
_INERT_SAELENS_NORMALIZATIONS = ("none", "expected_average_only_in", "covariance_whitening")
# Metadata keys SAELens (v6) reads into its own `meta` block.
_SAELENS_META_KEYS = ("model_name", "hook_name", "hook_layer")


def _weight_names(sae_cfg: SaeConfig) -> tuple[str, ...]:
    return (*WEIGHT_NAMES, THRESHOLD_NAME) if sae_cfg.architecture in THRESHOLD_ARCHITECTURES else WEIGHT_NAMES


def _saelens_cfg(sae: SparseAutoencoder, metadata: dict[str, Any]) -> dict[str, Any]:
    """cfg.json contents: the SAELens fields of the architecture, in both its v6 and legacy
    ("activation_fn" + kwargs) spellings, plus the caller's metadata."""
    architecture, k = sae.cfg.architecture, sae.cfg.k
    cfg = {
        "architecture": SAELENS_ARCHITECTURES[architecture],
        SAE_CORE_ARCHITECTURE_KEY: architecture,
        "d_in": sae.cfg.d_in,
        "d_sae": sae.cfg.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
    }
    if k is not None:
        cfg["k"] = k
    cfg["activation_fn"] = _ACTIVATION_FNS[architecture]
    cfg["activation_fn_kwargs"] = {"k": k} if architecture == "topk" else {}
    cfg["meta"] = {key: metadata[key] for key in _SAELENS_META_KEYS if key in metadata}
    cfg["metadata"] = metadata
    return cfg


def save_sae(sae: SparseAutoencoder, folder: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write `sae` to `folder` (cfg.json + sae_weights.safetensors) and return the folder's path.

    The input scale is folded into the weights (see the module docstring). `metadata` must be
    JSON-serialisable. Files are written to a sibling temp folder that is renamed into place, so a
    crash leaves either the old folder or the new one, never half of one.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"cannot save an SAE to {folder}: it exists and is not a folder")
    metadata = dict(metadata or {})
    try:
        cfg_text = json.dumps(_saelens_cfg(sae, metadata), indent=2)
    except TypeError as error:
        raise ValueError(f"metadata must be JSON-serialisable: {error}") from error

    folded = copy.deepcopy(sae).float().cpu()
    folded.reparametrize_input_scale(1.0)
    weights = {name: getattr(folded, name).detach().contiguous() for name in WEIGHT_NAMES}
    if folded.thresholds() is not None:
        weights[THRESHOLD_NAME] = folded.thresholds().detach().contiguous()

    folder.parent.mkdir(parents=True, exist_ok=True)
    staged = staged_sibling(folder)
    staged.mkdir()
    try:
        with naming_a_full_disk(f"the SAE {folder}"):
            save_file(weights, staged / WEIGHTS_FILENAME, metadata={"format": "pt"})
            (staged / CFG_FILENAME).write_text(cfg_text + "\n")
            replace_folder(staged, folder)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return folder


def load_sae(folder: str | Path) -> SparseAutoencoder:
    """Load the SAE in `folder`, saved by `save_sae` or by SAELens (`SAE.save_model`,
    `TrainingSAE.save_inference_model`), on the CPU, float32, in eval mode, with input_scale 1.

    Returns a TopKSae, ReluSae or BatchTopKSae (see the module docstring) whose `forward(x).sae_out`
    and `dense_latents(x)` equal SAELens's `sae(x)` and `sae.encode(x)` for x (n, d_in).
    Raises FileNotFoundError for a missing folder or file and ValueError for a configuration
    sae_core cannot compute exactly or weights whose names or shapes do not match it.
    """
    cfg_path, weights_path = require_files(Path(folder), CFG_FILENAME, WEIGHTS_FILENAME)
    layout = saelens_format(read_json_object(cfg_path), cfg_path)
    tensors = read_tensors(weights_path)
    # SAELens < 6 saved an all-ones "scaling_factor" for a while; SAELens itself drops it.
    scaling_factor = tensors.pop("scaling_factor", None)
    if scaling_factor is not None and not bool((scaling_factor == 1).all()):
        raise ValueError(
            f"{weights_path}: a 'scaling_factor' other than 1 (legacy SAELens fine-tuning scale) "
            "is not supported"
        )
    sae = sae_from_tensors(layout.sae_cfg, tensors, weights_path)
    with torch.no_grad():
        if not layout.apply_b_dec_to_input:
            # Their pre-activation is x W_enc + b_enc; ours subtracts b_dec first, so add it back.
            sae.b_enc += sae.b_dec @ sae.W_enc
        if layout.rescale_acts_by_decoder_norm:
            _fold_decoder_norms(sae)
    return sae


class SaelensFormat(NamedTuple):
    """What a SAELens cfg.json says about computing x̂, in sae_core's terms."""

    sae_cfg: SaeConfig
    """Shape, architecture and k of the equivalent sae_core SAE."""

    apply_b_dec_to_input: bool
    """Whether SAELens subtracts b_dec from x before encoding (sae_core always does)."""

    rescale_acts_by_decoder_norm: bool
    """Whether SAELens's TopK multiplies pre-activations by the decoder row norms (and divides the
    code by them before decoding); only ever true for "topk"."""


def saelens_format(cfg: dict[str, Any], source: Path | str) -> SaelensFormat:
    """Interpret a SAELens cfg.json (`cfg`, read from `source`, which error messages name)."""
    # SAELens < 6 spelled a TopK SAE as architecture "standard" (its default) with activation_fn
    # "topk" and k in activation_fn_kwargs; v6 writes neither activation field.
    architecture = cfg.get("architecture", "standard")
    activation_fn = cfg.get("activation_fn", cfg.get("activation_fn_str"))
    activation_kwargs = cfg.get("activation_fn_kwargs") or {}
    if architecture == "standard" and activation_fn == "topk":
        architecture = "topk"
    if architecture not in set(SAELENS_ARCHITECTURES.values()):
        raise ValueError(
            f"{source}: SAELens architecture {architecture!r} is not supported "
            f"(sae_core loads {sorted(set(SAELENS_ARCHITECTURES.values()))})"
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
    k: Any = None
    ours = {"topk": "topk", "standard": "relu"}.get(architecture)
    if architecture == "topk":
        k = cfg.get("k", activation_kwargs.get("k"))
        if k is None:
            raise ValueError(f"{source}: a 'topk' SAE needs k (in 'k' or 'activation_fn_kwargs')")
    elif architecture == "jumprelu":
        training_details = (cfg.get("metadata") or {}).get("training_architecture_details") or {}
        k = cfg.get("k", training_details.get("k"))
        ours = cfg.get(SAE_CORE_ARCHITECTURE_KEY) or ("batchtopk" if k is not None else "jumprelu")
        if ours not in THRESHOLD_ARCHITECTURES:
            raise ValueError(f"{source}: {SAE_CORE_ARCHITECTURE_KEY} {ours!r} is not one of {THRESHOLD_ARCHITECTURES}")
        if k is None and isinstance(d_sae, int):
            # A foreign JumpReLU's target L0 is unknown; k only matters if it is fine-tuned.
            k = min(DEFAULT_K, d_sae)
    sae_cfg = checked_sae_config(d_in=d_in, d_sae=d_sae, k=k, architecture=ours, source=source)
    # SAELens reads the flag only into its TopK config; other architectures ignore it, and so do we.
    rescale = architecture == "topk" and bool(cfg.get("rescale_acts_by_decoder_norm", False))
    return SaelensFormat(
        sae_cfg=sae_cfg,
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
        rescale_acts_by_decoder_norm=rescale,
    )


# ---- reading helpers, shared with sae_core.interop --------------------------------------------


def require_files(folder: Path, *names: str) -> list[Path]:
    """The paths of `names` inside `folder`; FileNotFoundError naming the folder when it or one is missing."""
    if not folder.is_dir():
        raise FileNotFoundError(f"SAE folder {folder} does not exist")
    paths = [folder / name for name in names]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"SAE folder {folder} has no {path.name}")
    return paths


def read_tensors(path: Path) -> dict[str, Tensor]:
    """The tensors of the safetensors file `path`; ValueError naming it when it is not readable."""
    try:
        return load_file(path)
    except SafetensorError as error:
        raise ValueError(f"{path} is not a readable safetensors file: {error}") from error


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in `path`; ValueError naming the file when it is not one."""
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(value, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(value).__name__}")
    return value


def checked_sae_config(*, d_in: Any, d_sae: Any, k: Any, architecture: str, source: Path | str) -> SaeConfig:
    """The SaeConfig a saved config describes; ValueError naming `source` when sae_core cannot build it.

    d_in and d_sae must be positive integers with d_sae a multiple of d_in; k may be a whole float
    (SAELens stores BatchTopK's k as e.g. 32.0).
    """
    if not (isinstance(d_in, int) and isinstance(d_sae, int) and d_in > 0 and d_sae > 0):
        raise ValueError(f"{source}: needs positive integer d_in and d_sae, got d_in={d_in!r} d_sae={d_sae!r}")
    if d_sae % d_in != 0:
        raise ValueError(f"{source}: d_sae={d_sae} is not a multiple of d_in={d_in}, which sae_core requires")
    if isinstance(k, float) and k.is_integer():
        k = int(k)
    elif not (k is None or (isinstance(k, int) and not isinstance(k, bool))):
        raise ValueError(f"{source}: k must be a whole number, got {k!r}")
    try:
        return SaeConfig(d_in=d_in, expansion_factor=d_sae // d_in, k=k, architecture=architecture)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from error


def sae_from_tensors(sae_cfg: SaeConfig, tensors: dict[str, Tensor], source: Path) -> SparseAutoencoder:
    """A float32 eval-mode SAE of `sae_cfg` holding exactly `tensors`: every parameter (and the
    threshold of a JumpReLU-inference architecture) must be there with its shape, and nothing else may be."""
    # A throwaway generator keeps the (overwritten) random init from touching the global RNG.
    sae = build_sae(sae_cfg, generator=torch.Generator())
    names = list(_weight_names(sae_cfg))
    missing = sorted(set(names) - set(tensors))
    unexpected = sorted(set(tensors) - set(names))
    if missing or unexpected:
        raise ValueError(
            f"{source}: tensors do not match a {sae_cfg.architecture!r} SAE: "
            f"missing {missing}, unexpected {unexpected}"
        )
    with torch.no_grad():
        for name in names:
            target = sae.thresholds() if name == THRESHOLD_NAME else getattr(sae, name)
            if tensors[name].shape != target.shape:
                raise ValueError(
                    f"{source}: {name} has shape {tuple(tensors[name].shape)}, the config implies {tuple(target.shape)}"
                )
            if name == THRESHOLD_NAME:
                try:
                    sae.set_thresholds(tensors[name].float())
                except ValueError as error:
                    raise ValueError(f"{source}: {error}") from None
            else:
                target.copy_(tensors[name].float())
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
