"""Quality metrics of a sparse autoencoder, each with its formula.

    FVU  = Σ_t ‖x_t − x̂_t‖² / Σ_t ‖x_t − x̄‖²      x̄ = mean of x over the evaluation set
    L0   = (1/n) Σ_t #{latents with z_t,i > 0}       mean number of active latents per token
    dead = #{i : latent i never fired} / d_sae

0 ≤ FVU, lower is better; FVU = 1 is what predicting x̄ for every token achieves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from sae_core.config import SaeConfig
from sae_core.sae import SparseAutoencoder


@dataclass(frozen=True)
class SaeMetrics:
    """Quality of an SAE on one evaluation set."""

    fvu: float
    """Fraction of variance unexplained, Σ‖x−x̂‖² / Σ‖x−x̄‖² over the whole set."""
    l0: float
    """Mean number of active (> 0) latents per token."""
    dead_fraction: float
    """Share of the d_sae latents that never fired on the set."""
    n_tokens: int
    """Number of evaluation tokens."""

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def fvu(x: Tensor, x_hat: Tensor) -> float:
    """Fraction of variance unexplained Σ‖x−x̂‖² / Σ‖x−x̄‖² for x, x̂ of shape (n, d).

    x̄ is the mean of x over its n rows. Computed in float64.
    """
    if x.shape != x_hat.shape or x.ndim != 2:
        raise ValueError(f"x and x_hat must both be (n, d), got {tuple(x.shape)} and {tuple(x_hat.shape)}")
    if x.shape[0] < 2:
        raise ValueError(f"fvu needs at least 2 rows to have a variance, got {x.shape[0]}")
    x, x_hat = x.detach().double(), x_hat.detach().double()
    total_variance = (x - x.mean(dim=0)).pow(2).sum()
    if total_variance == 0:
        raise ValueError("fvu is undefined: x has zero variance (all rows identical)")
    return float((x - x_hat).pow(2).sum() / total_variance)


def l0(latent_acts: Tensor) -> float:
    """Mean number of nonzero latents per token, (1/n) Σ_t #{j : acts[t, j] > 0}.

    `latent_acts` is the (n, w) `top_acts` of an encoding (zero padding does not count), or a
    dense (n, d_sae) code.
    """
    if latent_acts.ndim != 2:
        raise ValueError(f"latent_acts must be (n_tokens, k), got {tuple(latent_acts.shape)}")
    return float((latent_acts > 0).sum(dim=1).double().mean())


def dead_fraction(fire_counts: Tensor) -> float:
    """Share of latents that never fired: #{i : fire_counts[i] == 0} / d_sae, fire_counts (d_sae,)."""
    if fire_counts.ndim != 1 or fire_counts.numel() == 0:
        raise ValueError(f"fire_counts must be a non-empty (d_sae,) tensor, got {tuple(fire_counts.shape)}")
    return float((fire_counts == 0).double().mean())


def evaluate_sae(sae: SparseAutoencoder, x: Tensor, batch_size: int = 8192) -> SaeMetrics:
    """FVU, L0 and dead fraction of `sae` on x (n, d_in), streamed in batches of `batch_size`, in float32
    (`evaluate_sae_batches` on x's batches)."""
    if x.ndim != 2 or x.shape[1] != sae.cfg.d_in:
        raise ValueError(f"x must have shape (n_tokens, d_in={sae.cfg.d_in}), got {tuple(x.shape)}")
    if x.shape[0] < 2:
        raise ValueError(f"evaluate_sae needs at least 2 tokens, got {x.shape[0]}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return evaluate_sae_batches(sae, lambda: x.split(batch_size))


@torch.no_grad()
def evaluate_sae_batches(sae: SparseAutoencoder, batches: Callable[[], Iterable[Tensor]]) -> SaeMetrics:
    """FVU, L0 and dead fraction of `sae` on the rows of `batches()`, each (m, d_in), in float32.

    Two passes over the rows (`batches` is called twice, and must yield the same rows both times, e.g. shard
    by shard from a store): the first computes the global mean x̄ (float64 accumulator), the second the
    residual and total sums of squares against that mean, so the FVU is exactly the whole-set FVU, not an
    average of per-batch FVUs. Memory: one batch. The SAE is evaluated as it is: call `sae.eval()` first for
    an architecture whose inference differs from training (BatchTopK); `train_sae` and `load_sae` return
    SAEs in eval mode.
    """
    device = sae.device
    mean = torch.zeros(sae.cfg.d_in, dtype=torch.float64, device=device)
    n_tokens = 0
    for batch in batches():
        if batch.ndim != 2 or batch.shape[1] != sae.cfg.d_in:
            raise ValueError(f"x must have shape (n_tokens, d_in={sae.cfg.d_in}), got a batch of {tuple(batch.shape)}")
        mean += batch.to(device, torch.float64).sum(dim=0)
        n_tokens += len(batch)
    if n_tokens < 2:
        raise ValueError(f"evaluate_sae needs at least 2 tokens, got {n_tokens}")
    mean /= n_tokens

    residual_ss = torch.zeros((), dtype=torch.float64, device=device)
    total_ss = torch.zeros((), dtype=torch.float64, device=device)
    active_latents = torch.zeros((), dtype=torch.float64, device=device)
    fire_counts = torch.zeros(sae.cfg.d_sae, dtype=torch.long, device=device)
    mean32 = mean.float()
    start = 0
    for batch in batches():
        batch = batch.to(device, torch.float32)
        if not torch.isfinite(batch).all():
            raise ValueError(f"x contains NaN/inf in rows {start}..{start + len(batch) - 1}")
        start += len(batch)
        top_acts, top_indices = sae.encode(batch)
        recon = sae.decode(top_acts, top_indices)
        residual_ss += (batch - recon).pow(2).sum(dtype=torch.float64)
        total_ss += (batch - mean32).pow(2).sum(dtype=torch.float64)
        fired = top_acts > 0
        active_latents += fired.sum()
        fire_counts += torch.bincount(top_indices[fired], minlength=sae.cfg.d_sae)

    if total_ss == 0:
        raise ValueError("x has zero variance (all rows identical): FVU is undefined")
    return SaeMetrics(
        fvu=float(residual_ss / total_ss),
        l0=float(active_latents / n_tokens),
        dead_fraction=dead_fraction(fire_counts),
        n_tokens=n_tokens,
    )


def training_flops(cfg: SaeConfig, tokens: int) -> float:
    """Estimated floating-point operations to train an SAE of `cfg` on `tokens` tokens.

    Per token, a forward pass costs 2·d_in·d_sae for the encoder and 2·w·d_in for the decoder, with
    w = k for TopK/BatchTopK (decoding gathers k rows) and w = d_sae for ReLU (a dense code); the
    backward pass costs twice the forward (the usual 3× rule, as in 6·N·tokens for a transformer):

        FLOPs ≈ 6 · tokens · d_in · (d_sae + w)

    An architecture-level estimate for comparing regimes, not a count of what a kernel executes.
    """
    if not isinstance(tokens, int) or tokens < 0:
        raise ValueError(f"tokens must be a non-negative integer, got {tokens!r}")
    decoded = cfg.k if cfg.k is not None else cfg.d_sae
    return 6.0 * tokens * cfg.d_in * (cfg.d_sae + decoded)
