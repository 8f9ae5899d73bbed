"""Save and load SAEs in the SAELens on-disk layout, so other tools can open ours.

A saved SAE is a folder:
    cfg.json                  SAELens config fields + "metadata" (hook, layers, model: the caller's)
    sae_weights.safetensors   W_enc (d_in, d_sae), W_dec (d_sae, d_in), b_enc (d_sae,), b_dec (d_in,),
                              and threshold (d_sae,) for BatchTopK

Each architecture is written as the SAELens inference architecture that computes the same code:
    topk       "topk"       z = ReLU(TopK_k(pre))                          cfg also carries k
    batchtopk  "jumprelu"   z = ReLU(pre) · 1[pre > threshold]             (SAELens saves its own
                                                                           BatchTopK SAEs this way);
                                                                           cfg carries our k, which
                                                                           SAELens ignores
    relu       "standard"   z = ReLU(pre)
and `load_sae` maps them back (a legacy SAELens "standard" cfg with activation_fn "topk" is a TopK SAE).

SAELens has no input scale, so `save_sae` folds ours into the weights (t = 1/s):
    W_enc' = W_enc·s,  W_dec' = W_dec / s,  b_dec' = b_dec / s,  b_enc' = b_enc,  threshold' = threshold
(the pre-activations are unchanged, so is the threshold on them) and a loader that computes
pre = (x − b_dec') W_enc' + b_enc', z = σ(pre), x̂ = z W_dec' + b_dec' on raw activations gets
exactly our latents and reconstruction. `load_sae` therefore returns input_scale 1.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sae_core.architectures import build_sae
from sae_core.config import SaeConfig
from sae_core.sae import SparseAutoencoder

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
WEIGHT_NAMES = ("W_enc", "W_dec", "b_enc", "b_dec")
THRESHOLD_NAME = "threshold"
SAELENS_ARCHITECTURES = {"topk": "topk", "batchtopk": "jumprelu", "relu": "standard"}
"""Our architecture → the SAELens inference architecture it is saved as."""
_ACTIVATION_FNS = {"topk": "topk", "batchtopk": "relu", "relu": "relu"}
"""The legacy SAELens (< 6) spelling: activation applied before any threshold."""
# Metadata keys SAELens (v6) reads into its own `meta` block.
_SAELENS_META_KEYS = ("model_name", "hook_name", "hook_layer")


def _weight_names(sae_cfg: SaeConfig) -> tuple[str, ...]:
    return (*WEIGHT_NAMES, THRESHOLD_NAME) if sae_cfg.architecture == "batchtopk" else WEIGHT_NAMES


def _saelens_cfg(sae: SparseAutoencoder, metadata: dict[str, Any]) -> dict[str, Any]:
    """cfg.json contents: the SAELens fields of the architecture, in both its v6 and legacy
    ("activation_fn" + kwargs) spellings, plus the caller's metadata."""
    architecture, k = sae.cfg.architecture, sae.cfg.k
    cfg = {
        "architecture": SAELENS_ARCHITECTURES[architecture],
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


def _replace_folder(staged: Path, folder: Path) -> None:
    """Move the fully written `staged` folder to `folder`, replacing any previous version.

    os.replace cannot overwrite a non-empty directory, so the old one is first renamed aside and
    deleted only once the new one is in place.
    """
    if not folder.exists():
        os.replace(staged, folder)
        return
    retired = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex}")
    os.replace(folder, retired)
    os.replace(staged, folder)
    shutil.rmtree(retired)


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
    weights = {name: getattr(folded, name).detach().contiguous() for name in _weight_names(sae.cfg)}

    folder.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        save_file(weights, staged / WEIGHTS_FILENAME, metadata={"format": "pt"})
        (staged / CFG_FILENAME).write_text(cfg_text + "\n")
        staged.chmod(0o755)  # mkdtemp makes it owner-only
        _replace_folder(staged, folder)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return folder


def copy_checked(sae: torch.nn.Module, name: str, tensor: torch.Tensor, source: object) -> None:
    """Copy `tensor` (as float32) into `sae`'s parameter or buffer `name`; ValueError naming `source`
    when its shape is not the one the config implies."""
    target = getattr(sae, name)
    if tensor.shape != target.shape:
        raise ValueError(
            f"{source}: {name} has shape {tuple(tensor.shape)}, the config implies {tuple(target.shape)}"
        )
    target.copy_(tensor.float())


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in `path`; ValueError naming the file when it is not one."""
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(value, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(value).__name__}")
    return value


def _read_cfg(cfg_path: Path) -> tuple[SaeConfig, bool]:
    """The SaeConfig a cfg.json describes, and its apply_b_dec_to_input flag."""
    cfg = read_json_object(cfg_path)
    saelens_architecture = cfg.get("architecture")
    activation_fn = cfg.get("activation_fn")
    if saelens_architecture == "standard" and activation_fn == "topk":
        architecture = "topk"  # how SAELens < 6 saved TopK SAEs
    elif saelens_architecture in SAELENS_ARCHITECTURES.values():
        architecture = next(ours for ours, theirs in SAELENS_ARCHITECTURES.items() if theirs == saelens_architecture)
        if activation_fn not in (None, _ACTIVATION_FNS[architecture]):
            raise ValueError(
                f"{cfg_path}: architecture {saelens_architecture!r} with activation_fn {activation_fn!r} "
                f"is not supported (expected {_ACTIVATION_FNS[architecture]!r})"
            )
    else:
        raise ValueError(
            f"{cfg_path}: architecture must be one of {sorted(SAELENS_ARCHITECTURES.values())}, "
            f"got {saelens_architecture!r}"
        )
    if cfg.get("normalize_activations", "none") != "none":
        raise ValueError(
            f"{cfg_path}: normalize_activations={cfg['normalize_activations']!r} is not supported "
            "(only 'none'; fold the normalisation into the weights first)"
        )
    d_in, d_sae = cfg.get("d_in"), cfg.get("d_sae")
    if not all(isinstance(value, int) for value in (d_in, d_sae)):
        raise ValueError(f"{cfg_path}: needs integer d_in and d_sae, got d_in={d_in!r} d_sae={d_sae!r}")
    if d_in <= 0 or d_sae <= 0 or d_sae % d_in != 0:
        raise ValueError(f"{cfg_path}: d_sae={d_sae} is not a positive multiple of d_in={d_in}")
    k = None
    if architecture == "topk":
        k = cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
    elif architecture == "batchtopk":
        k = cfg.get("k")
        if k is None:
            raise ValueError(
                f"{cfg_path}: a 'jumprelu' SAE needs k (the mean L0 its BatchTopK training targeted); "
                "sae_core loads JumpReLU SAEs only as BatchTopK SAEs"
            )
    if k is not None and not isinstance(k, int):
        raise ValueError(f"{cfg_path}: k must be an integer, got {k!r}")
    try:
        sae_cfg = SaeConfig(d_in=d_in, expansion_factor=d_sae // d_in, k=k, architecture=architecture)
    except ValueError as error:
        raise ValueError(f"{cfg_path}: {error}") from error
    return sae_cfg, bool(cfg.get("apply_b_dec_to_input", True))


def load_sae(folder: str | Path) -> SparseAutoencoder:
    """Load an SAE saved by `save_sae` (or a SAELens TopK, standard or BatchTopK-as-JumpReLU SAE)
    from `folder`, on CPU, float32, in eval mode.

    The returned SAE has input_scale 1: the scale was folded into the weights at save time.
    Raises FileNotFoundError for a missing folder or file, ValueError for a malformed config or
    weights whose names or shapes do not match it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"SAE folder {folder} does not exist")
    cfg_path, weights_path = folder / CFG_FILENAME, folder / WEIGHTS_FILENAME
    for path in (cfg_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"SAE folder {folder} has no {path.name}")

    sae_cfg, apply_b_dec_to_input = _read_cfg(cfg_path)
    try:
        weights = load_file(weights_path)
    except SafetensorError as error:
        raise ValueError(f"{weights_path} is not a readable safetensors file: {error}") from error
    # A throwaway generator keeps the (overwritten) random init from touching the global RNG.
    sae = build_sae(sae_cfg, generator=torch.Generator())
    with torch.no_grad():
        for name in _weight_names(sae_cfg):
            if name not in weights:
                raise ValueError(f"{weights_path} has no tensor {name!r} (found {sorted(weights)})")
            copy_checked(sae, name, weights[name], weights_path)
        if not apply_b_dec_to_input:
            # Their pre-activation is x W_enc + b_enc; ours subtracts b_dec first, so add it back.
            sae.b_enc += sae.b_dec @ sae.W_enc
    return sae.eval()
