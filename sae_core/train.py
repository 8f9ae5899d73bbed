"""Training loop of a TopK SAE on a tensor of activations, and the Group-SAE token sampler.

One step (Gao et al. 2024, as in sparsify):
    loss = fvu + auxk_alpha · auxk_loss
    backward → project out the gradient parallel to each decoder row → Adam step → renormalise rows.

Before the first step the SAE is fitted to the data's scale and location:
    input_scale s = sqrt(1 / mean_t ‖x_t‖²)          so that E‖x·s‖² = 1
    b_dec = geometric median (or mean) of x·s          on a subsample
A latent is dead once it has gone `dead_tokens_threshold` training tokens without firing; dead
latents get the AuxK loss.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from sae_core.config import SaeConfig, TrainConfig
from sae_core.sae import TopKSae

# Rows used to fit input_scale and b_dec: enough for a stable estimate, cheap for Weiszfeld.
_INIT_SUBSAMPLE = 32_768
_WEISZFELD_ITERATIONS = 50


@dataclass
class TrainResult:
    """A trained SAE and how its training went."""

    sae: TopKSae
    """The trained SAE, on `TrainConfig.device`."""
    history: list[dict] = field(default_factory=list)
    """One record per log step: step, tokens, fvu, auxk_loss, dead_fraction (share of latents dead)."""
    tokens_seen: int = 0
    """Training tokens consumed (a whole number of batches, >= TrainConfig.total_tokens)."""
    seconds: float = 0.0
    """Wall-clock time of the training loop."""


def sample_group_activations(per_layer: list[Tensor], generator: torch.Generator) -> Tensor:
    """Group-SAE training rows: for each token i, row i of one uniformly random layer of the group.

    per_layer: G tensors of shape (n, d), the same n tokens read at each layer of the group.
    Returns (n, d). The group SAE thus sees as many activations as a per-layer SAE, each token
    through one of its layers (Group-SAE paper). `generator` is a CPU torch.Generator.
    """
    if not per_layer:
        raise ValueError("per_layer is empty: a layer group needs at least one layer")
    shape = per_layer[0].shape
    if len(shape) != 2:
        raise ValueError(f"per_layer tensors must be (n_tokens, d), got {tuple(shape)}")
    for layer, activations in enumerate(per_layer):
        if activations.shape != shape:
            raise ValueError(
                f"per_layer[{layer}] has shape {tuple(activations.shape)}, per_layer[0] has {tuple(shape)}: "
                "every layer must hold the same tokens"
            )
    chosen_layer = torch.randint(len(per_layer), (shape[0],), generator=generator)
    sampled = per_layer[0].clone()
    for layer in range(1, len(per_layer)):
        rows = chosen_layer == layer
        sampled[rows] = per_layer[layer][rows.to(per_layer[layer].device)]
    return sampled


def geometric_median(points: Tensor, iterations: int = _WEISZFELD_ITERATIONS) -> Tensor:
    """argmin_m Σ_t ‖x_t − m‖ for points (n, d), by Weiszfeld's iteration (float64).

    m ← Σ_t w_t x_t / Σ_t w_t with w_t = 1 / ‖x_t − m‖, started from the mean. Distances are clamped
    away from 0 so an iterate landing on a data point does not divide by zero.
    """
    points = points.double()
    median = points.mean(dim=0)
    for _ in range(iterations):
        weights = 1.0 / (points - median).norm(dim=1).clamp_min(1e-12)
        median = (weights[:, None] * points).sum(dim=0) / weights.sum()
    return median


def _validate_data(data: Tensor, sae_cfg: SaeConfig) -> None:
    if data.ndim != 2:
        raise ValueError(f"activations must be a 2-D (n_tokens, d_in) tensor, got shape {tuple(data.shape)}")
    if data.shape[1] != sae_cfg.d_in:
        raise ValueError(f"activations have width {data.shape[1]}, but SaeConfig.d_in is {sae_cfg.d_in}")
    if data.shape[0] < 2:
        raise ValueError(f"activations need at least 2 tokens to have a variance, got {data.shape[0]}")
    if not data.is_floating_point():
        raise ValueError(f"activations must be floating point, got {data.dtype}")
    if not torch.isfinite(data).all():
        raise ValueError("activations contain NaN/inf")


def _fit_input_scale_and_b_dec(
    sae: TopKSae, data: Tensor, train_cfg: TrainConfig, generator: torch.Generator, fit_b_dec: bool
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


def _copy_for_transfer(init: TopKSae, sae_cfg: SaeConfig) -> TopKSae:
    """A trainable copy of `init` in canonical form: unit-norm decoder rows, same x ↦ x̂.

    An SAE saved by io.save_sae and loaded back has input_scale 1 and decoder rows of norm 1/s;
    undoing that fold (exactly, when all rows share one norm) puts its weights back in the unit-scale
    space that training works in.
    """
    if (init.cfg.d_in, init.cfg.d_sae) != (sae_cfg.d_in, sae_cfg.d_sae):
        raise ValueError(
            f"init SAE has d_in={init.cfg.d_in}, d_sae={init.cfg.d_sae}; "
            f"sae_cfg asks for d_in={sae_cfg.d_in}, d_sae={sae_cfg.d_sae}"
        )
    sae = copy.deepcopy(init).float().cpu()
    sae.cfg = sae_cfg  # k may differ from the init's
    mean_row_norm = float(sae.W_dec.detach().norm(dim=1).mean())
    sae.reparametrize_input_scale(float(sae.input_scale) / mean_row_norm)
    sae.set_decoder_norm_to_unit_norm()
    return sae


def _batches(n_rows: int, batch_size: int, n_batches: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Row indices of `n_batches` batches: a fresh random permutation per epoch, batches may straddle
    two epochs so every batch is full even when n_rows < batch_size."""
    order = torch.randperm(n_rows, generator=generator)
    position = 0
    for _ in range(n_batches):
        while len(order) - position < batch_size:
            order = torch.cat([order[position:], torch.randperm(n_rows, generator=generator)])
            position = 0
        yield order[position : position + batch_size]
        position += batch_size


def train_sae(
    data: Tensor,
    sae_cfg: SaeConfig,
    train_cfg: TrainConfig,
    init: TopKSae | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train a TopK SAE on `data` (n_tokens, d_in), float, rows in any order.

    Runs ceil(total_tokens / batch_size) Adam steps (betas 0.9/0.999, eps 1e-8) on batches drawn
    from per-epoch shuffles of the rows. Deterministic given `train_cfg.seed` (on CPU).

    `init`: start from a trained SAE (layer-wise transfer) instead of a random one. Its weights,
    b_dec included, are copied; input_scale is refitted to `data`, so the copied weights act on
    this layer's activations at the scale they were trained for.
    """
    _validate_data(data, sae_cfg)
    generator = torch.Generator().manual_seed(train_cfg.seed)
    device = torch.device(train_cfg.device)

    if init is None:
        sae = TopKSae(sae_cfg, generator=generator)
    else:
        sae = _copy_for_transfer(init, sae_cfg)
    _fit_input_scale_and_b_dec(sae, data, train_cfg, generator, fit_b_dec=init is None)
    sae.to(device).train()

    lr = train_cfg.resolved_lr(sae_cfg.d_sae)
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8)
    batch_size = train_cfg.batch_size
    n_steps = math.ceil(train_cfg.total_tokens / batch_size)
    tokens_since_fired = torch.zeros(sae_cfg.d_sae, dtype=torch.long, device=device)
    history: list[dict] = []
    if log is not None:
        log(
            f"training SAE d_in={sae_cfg.d_in} d_sae={sae_cfg.d_sae} k={sae_cfg.k} on {len(data)} rows: "
            f"{n_steps} steps of {batch_size} tokens, lr={lr:.3g}, input_scale={float(sae.input_scale):.4g}"
        )

    started = time.perf_counter()
    for step, rows in enumerate(_batches(len(data), batch_size, n_steps, generator), start=1):
        batch = data[rows].to(device, torch.float32, non_blocking=True)
        # No latent can be dead before `dead_tokens_threshold` tokens have passed; until then skip
        # the mask and the host sync that counting dead latents costs.
        dead_mask = None
        if (step - 1) * batch_size > train_cfg.dead_tokens_threshold:
            dead_mask = tokens_since_fired > train_cfg.dead_tokens_threshold
        out = sae(batch, dead_mask=dead_mask)
        loss = out.fvu + train_cfg.auxk_alpha * out.auxk_loss

        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        optimizer.step()
        sae.set_decoder_norm_to_unit_norm()

        # Dead-latent clock: every latent ages by the batch; those that fired this batch reset.
        # (index_add, not boolean indexing, keeps this free of host syncs on a GPU.)
        with torch.no_grad():
            fires = torch.zeros_like(tokens_since_fired).index_add_(
                0, out.latent_indices.flatten(), (out.latent_acts > 0).flatten().long()
            )
            tokens_since_fired += len(rows)
            tokens_since_fired.masked_fill_(fires > 0, 0)

        if step % train_cfg.log_every == 0 or step == n_steps:
            record = {
                "step": step,
                "tokens": step * batch_size,
                "fvu": float(out.fvu.detach()),
                "auxk_loss": float(out.auxk_loss.detach()),
                "dead_fraction": float((tokens_since_fired > train_cfg.dead_tokens_threshold).float().mean()),
            }
            history.append(record)
            if log is not None:
                log(
                    f"step {step}/{n_steps} tokens {record['tokens']} fvu {record['fvu']:.4f} "
                    f"auxk {record['auxk_loss']:.4f} dead {record['dead_fraction']:.3f}"
                )
    seconds = time.perf_counter() - started

    sae.eval()
    return TrainResult(sae=sae, history=history, tokens_seen=n_steps * batch_size, seconds=seconds)
