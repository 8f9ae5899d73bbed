"""Save and load SAEs in the SAELens on-disk layout, so other tools can open ours.

A saved SAE is a folder:
    cfg.json                  SAELens config fields + "metadata" (hook, layers, model: the caller's)
    sae_weights.safetensors   W_enc (d_in, d_sae), W_dec (d_sae, d_in), b_enc (d_sae,), b_dec (d_in,)

SAELens has no input scale, so `save_sae` folds ours into the weights (t = 1/s):
    W_enc' = W_enc·s,  W_dec' = W_dec / s,  b_dec' = b_dec / s,  b_enc' = b_enc
and a loader that computes z = TopK((x − b_dec') W_enc' + b_enc'), x̂ = z W_dec' + b_dec' on raw
activations gets exactly our latents and reconstruction. `load_sae` therefore returns input_scale 1.
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

from sae_core.config import SaeConfig
from sae_core.sae import TopKSae

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
WEIGHT_NAMES = ("W_enc", "W_dec", "b_enc", "b_dec")
# Metadata keys SAELens (v6) reads into its own `meta` block.
_SAELENS_META_KEYS = ("model_name", "hook_name", "hook_layer")


def _saelens_cfg(sae: TopKSae, metadata: dict[str, Any]) -> dict[str, Any]:
    """cfg.json contents: the SAELens TopK fields, in both its v6 ("k") and legacy
    ("activation_fn" + kwargs) spellings, plus the caller's metadata."""
    k = sae.cfg.k
    return {
        "architecture": "topk",
        "d_in": sae.cfg.d_in,
        "d_sae": sae.cfg.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "k": k,
        "activation_fn": "topk",
        "activation_fn_kwargs": {"k": k},
        "meta": {key: metadata[key] for key in _SAELENS_META_KEYS if key in metadata},
        "metadata": metadata,
    }


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


def save_sae(sae: TopKSae, folder: str | Path, metadata: dict[str, Any] | None = None) -> Path:
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


def _read_cfg(cfg_path: Path) -> tuple[SaeConfig, bool]:
    """The SaeConfig a cfg.json describes, and its apply_b_dec_to_input flag."""
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{cfg_path} is not valid JSON: {error}") from error
    if cfg.get("architecture") != "topk":
        raise ValueError(f"{cfg_path}: architecture must be 'topk', got {cfg.get('architecture')!r}")
    if cfg.get("normalize_activations", "none") != "none":
        raise ValueError(
            f"{cfg_path}: normalize_activations={cfg['normalize_activations']!r} is not supported "
            "(only 'none'; fold the normalisation into the weights first)"
        )
    k = cfg.get("k", cfg.get("activation_fn_kwargs", {}).get("k"))
    d_in, d_sae = cfg.get("d_in"), cfg.get("d_sae")
    if not all(isinstance(value, int) for value in (d_in, d_sae, k)):
        raise ValueError(f"{cfg_path}: needs integer d_in, d_sae and k, got d_in={d_in!r} d_sae={d_sae!r} k={k!r}")
    if d_in <= 0 or d_sae % d_in != 0:
        raise ValueError(f"{cfg_path}: d_sae={d_sae} is not a positive multiple of d_in={d_in}")
    return SaeConfig(d_in=d_in, expansion_factor=d_sae // d_in, k=k), bool(cfg.get("apply_b_dec_to_input", True))


def load_sae(folder: str | Path) -> TopKSae:
    """Load an SAE saved by `save_sae` (or any SAELens TopK SAE) from `folder`, on CPU, float32.

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
    sae = TopKSae(sae_cfg, generator=torch.Generator())
    with torch.no_grad():
        for name in WEIGHT_NAMES:
            if name not in weights:
                raise ValueError(f"{weights_path} has no tensor {name!r} (found {sorted(weights)})")
            parameter = getattr(sae, name)
            if weights[name].shape != parameter.shape:
                raise ValueError(
                    f"{weights_path}: {name} has shape {tuple(weights[name].shape)}, "
                    f"cfg.json implies {tuple(parameter.shape)}"
                )
            parameter.copy_(weights[name].float())
        if not apply_b_dec_to_input:
            # Their pre-activation is x W_enc + b_enc; ours subtracts b_dec first, so add it back.
            sae.b_enc += sae.b_dec @ sae.W_enc
    return sae.eval()
