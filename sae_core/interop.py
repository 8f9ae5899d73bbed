"""Load SAEs that SAELens and EleutherAI's sparsify saved, as sae_core SAEs.

SAELens needs no converter in either direction: sae_core saves in its layout, and `io.load_sae`
reads SAELens's own saves (v6 and the legacy v5 spelling; see sae_core.io), so `load_saelens_sae`
is that reader under the name a SAELens user looks for. `sae_lens.SAE.load_from_disk` opens what
`io.save_sae` writes and runs it to the same reconstruction (tests/sae_core/test_interop.py).

sparsify (`SparseCoder.save_to_disk`), a folder with cfg.json + sae.safetensors:

    encoder.weight (d_sae, d_in), encoder.bias (d_sae,), W_dec (d_sae, d_in), b_dec (d_in,)
    z = TopK_k(ReLU(pre)) with W_enc = encoder.weightᵀ, b_enc = encoder.bias    → TopKSae

with pre = (x − b_dec) W_enc + b_enc and x̂ = z W_dec + b_dec on raw activations x (n, d_in):
sae_core's formula with input_scale 1. ReLU before TopK keeps the same non-zero code as our TopK
before ReLU: the two choices differ only in which zero activations pad a token with fewer than k
positive pre-activations. Refused: the "groupmax" activation, transcoders and skip connections
(they are not autoencoders of x alone). Loaded SAEs are float32, on the CPU, in eval mode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sae_core.config import SaeConfig
from sae_core.io import (
    CFG_FILENAME,
    checked_sae_config,
    load_sae,
    read_json_object,
    read_tensors,
    require_files,
    sae_from_tensors,
)
from sae_core.sae import SparseAutoencoder

SPARSIFY_WEIGHTS_FILENAME = "sae.safetensors"


def load_saelens_sae(folder: str | Path) -> SparseAutoencoder:
    """Load the SAE SAELens saved to `folder` (`SAE.save_model` or `TrainingSAE.save_inference_model`):
    `io.load_sae`, which reads sae_core's saves and SAELens's alike (see sae_core.io)."""
    return load_sae(folder)


def load_sparsify_sae(folder: str | Path) -> SparseAutoencoder:
    """Load the SAE sparsify saved to `folder` (`SparseCoder.save_to_disk`) as a TopKSae in eval mode.

    Its `forward(x).sae_out` equals sparsify's `forward(x).sae_out` for x (n, d_in).
    Raises FileNotFoundError for a missing folder or file and ValueError for a configuration that is
    not a TopK autoencoder or weights that do not match it.
    """
    cfg_path, weights_path = require_files(Path(folder), CFG_FILENAME, SPARSIFY_WEIGHTS_FILENAME)
    sae_cfg = sparsify_sae_config(read_json_object(cfg_path), cfg_path)
    tensors = read_tensors(weights_path)
    # nn.Linear stores the encoder as (d_sae, d_in); ours is (d_in, d_sae).
    renamed = {"encoder.weight": "W_enc", "encoder.bias": "b_enc"}
    state = {renamed.get(name, name): tensor for name, tensor in tensors.items()}
    if "W_enc" in state:
        state["W_enc"] = state["W_enc"].T
    return sae_from_tensors(sae_cfg, state, weights_path)


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
    return checked_sae_config(d_in=d_in, d_sae=num_latents, k=cfg.get("k"), architecture="topk", source=source)
