"""Where training starts: the SAE fitted to the data's scale and centre, or a trained SAE to transfer.

    input_scale s = sqrt(1 / mean_t ‖x_t‖²)      so that E‖x·s‖² = 1, on a random subsample
    b_dec = geometric median (or mean) of x·s      on the same subsample
    jumprelu: θ_j = the (1 − k/d_sae) quantile of pre_j on a subsample, so that L0 starts at k
    transfer: a trained SAE's weights in canonical form (unit-norm decoder rows, same x ↦ x̂)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sae_core.architectures import JumpReluSae, build_sae
from sae_core.config import SaeConfig, TrainConfig
from sae_core.sae import SparseAutoencoder

# Rows used to fit input_scale and b_dec: enough for a stable estimate, cheap for Weiszfeld.
_INIT_SUBSAMPLE = 32_768
_WEISZFELD_ITERATIONS = 50
_TRANSFERRED_TENSORS = ("W_enc", "b_enc", "W_dec", "b_dec")


def geometric_median(points: Tensor, iterations: int = _WEISZFELD_ITERATIONS, tolerance: float = 1e-10) -> Tensor:
    """argmin_m Σ_t ‖x_t − m‖ for points (n, d), by Weiszfeld's iteration (float64).

    m ← Σ_t w_t x_t / Σ_t w_t with w_t = 1 / ‖x_t − m‖, started from the mean, for at most
    `iterations` steps or until a step moves m by less than tolerance · (1 + ‖m‖). The distances
    come from ‖x − m‖² = ‖x‖² − 2 x·m + ‖m‖² with ‖x‖² computed once, so an iteration is two
    matrix-vector products and writes nothing of the points' size (in float64 the cancellation
    costs ~1e-16 · ‖x‖², far below the spread of activations). Squared distances are clamped at
    1e-24 so an iterate landing on a data point does not divide by zero.
    """
    points = points.double()
    squared_norms = points.pow(2).sum(dim=1)
    median = points.mean(dim=0)
    for _ in range(iterations):
        squared_distances = squared_norms - 2 * (points @ median) + median.dot(median)
        weights = squared_distances.clamp_min(1e-24).rsqrt()
        step = (weights @ points) / weights.sum() - median
        median = median + step
        if step.norm() <= tolerance * (1 + median.norm()):
            break
    return median


def fit_input_scale_and_b_dec(
    sae: SparseAutoencoder, data: Tensor, train_cfg: TrainConfig, generator: torch.Generator, fit_b_dec: bool
) -> None:
    """Set input_scale = sqrt(1 / mean‖x‖²) and (optionally) b_dec from a random subsample of data."""
    n_sample = min(len(data), _INIT_SUBSAMPLE)
    rows = torch.randperm(len(data), generator=generator)[:n_sample]
    sample = data[rows].double()
    mean_sq_norm = float(sample.pow(2).sum(dim=1).mean())
    if mean_sq_norm == 0:
        raise ValueError("activations are all zero: cannot set the input scale")
    scale = math.sqrt(1.0 / mean_sq_norm)
    if (sample - sample.mean(dim=0)).pow(2).sum() == 0:
        raise ValueError("activations have zero variance (all rows identical): FVU is undefined")

    with torch.no_grad():
        sae.input_scale.fill_(scale)
        if fit_b_dec:
            scaled = sample * scale
            centre = geometric_median(scaled) if train_cfg.b_dec_init == "geometric_median" else scaled.mean(0)
            sae.b_dec.copy_(centre.to(sae.b_dec))


# Rows whose pre-activations place the JumpReLU thresholds: (rows, d_sae) floats must stay small.
_THRESHOLD_SUBSAMPLE = 4096


@torch.no_grad()
def fit_jumprelu_thresholds(sae: JumpReluSae, data: Tensor, generator: torch.Generator) -> None:
    """θ_j = the (1 − k/d_sae) quantile of latent j's pre-activations over a random subsample of `data`
    (after input_scale and b_dec are fitted): each latent then fires on a k/d_sae share of tokens, L0 ≈ k.
    A latent whose quantile is not positive (it rarely fires at all) gets the smallest positive one."""
    rows = torch.randperm(len(data), generator=generator)[: min(len(data), _THRESHOLD_SUBSAMPLE)]
    sample = data[rows].to(sae.W_enc.device, torch.float32)
    pre_acts = sae._pre_acts(sae._scaled_input(sample))
    # kthvalue, not quantile: torch.quantile refuses inputs of more than 2**24 values.
    rank = max(1, round((1 - sae.cfg.k / sae.cfg.d_sae) * len(sample)))
    quantile = pre_acts.float().kthvalue(rank, dim=0).values
    positive = quantile[quantile > 0]
    floor = positive.min() if positive.numel() else pre_acts.new_tensor(1e-3)
    sae.set_thresholds(torch.where(quantile > 0, quantile, floor))


def copy_for_transfer(init: SparseAutoencoder, sae_cfg: SaeConfig) -> SparseAutoencoder:
    """A trainable SAE of `sae_cfg` carrying `init`'s weights in canonical form: unit-norm decoder
    rows, same x ↦ x̂.

    An SAE saved by io.save_sae and loaded back has input_scale 1 and decoder rows of norm 1/s;
    undoing that fold (exactly, when all rows share one norm) puts its weights back in the unit-scale
    space that training works in. The architecture and k may differ from the init's; thresholds
    (BatchTopK's, JumpReLU's) are carried over when both have them (the pre-activations they apply to are
    the same).
    """
    if (init.cfg.d_in, init.cfg.d_sae) != (sae_cfg.d_in, sae_cfg.d_sae):
        raise ValueError(
            f"init SAE has d_in={init.cfg.d_in}, d_sae={init.cfg.d_sae}; "
            f"sae_cfg asks for d_in={sae_cfg.d_in}, d_sae={sae_cfg.d_sae}"
        )
    # A throwaway generator: the copied weights replace the random ones, and the run's generator
    # must draw the same shuffles as a run from scratch would after its own init.
    sae = build_sae(sae_cfg, generator=torch.Generator())
    with torch.no_grad():
        for name in _TRANSFERRED_TENSORS:
            getattr(sae, name).copy_(getattr(init, name).detach().float().cpu())
        sae.input_scale.copy_(init.input_scale.detach().float().cpu())
        if sae.thresholds() is not None and init.thresholds() is not None:
            sae.set_thresholds(init.thresholds().detach().float().cpu())
    mean_row_norm = float(sae.W_dec.detach().norm(dim=1).mean())
    sae.reparametrize_input_scale(float(sae.input_scale) / mean_row_norm)
    sae.set_decoder_norm_to_unit_norm()
    return sae
