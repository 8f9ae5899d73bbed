"""Training loop of a sparse autoencoder on a tensor of activations, and the Group-SAE token sampler.

One step, the same for every architecture (Gao et al. 2024, as in sparsify):
    loss = fvu + auxk_alpha · auxk_loss                   topk, batchtopk
    loss = nested_fvu + auxk_alpha · auxk_loss            matryoshka_batchtopk (mean FVU of its prefixes)
    loss = fvu + l1_coefficient · l1_loss                 relu
    loss = fvu + l0_coefficient · (L0 / k − 1)²           jumprelu
    backward → project out the gradient parallel to each decoder row → optimiser step → renormalise rows
    batchtopk, matryoshka_batchtopk: θ ← (1 − r) θ + r · (smallest activation the batch kept)
The optimiser (TrainConfig.optimizer) is schedule-free Adam by default (sae_core.optim): the model
trains at its interpolated point y, and the average x is what the run returns, its decoder rows
renormalised. Plain Adam and schedule-free signSGD (sparsify's default) are the alternatives.

Before the first step the SAE is fitted to the data's scale and location (sae_core.initialization):
    input_scale s = sqrt(1 / mean_t ‖x_t‖²)          so that E‖x·s‖² = 1
    b_dec = geometric median (or mean) of x·s          on a subsample
    jumprelu: θ_j = the (1 − k/d_sae) quantile of latent j's pre-activations on the same subsample
A latent is dead once it has gone `dead_tokens_threshold` training tokens without firing; dead
latents get the AuxK loss (topk, batchtopk, matryoshka_batchtopk).

With `TrainConfig.checkpoint_dir` set, the whole state is saved every `checkpoint_every` steps and
at the end (sae_core.checkpoint); a run that finds a checkpoint of its own configuration and data
resumes from it and ends with the same weights, bit for bit on the same device, as a run that
was never interrupted.

Data parallel (under torchrun; sae_core.distributed). With W processes every rank draws the same
global batch of n rows and encodes its shard of about n/W. What couples tokens is made global:
    Σ‖x − x̄‖² (FVU's and AuxK's denominator)   x̄ and the sum all-reduced, detached
    l1_loss's and l0_loss's 1/n                 n the global batch size
    JumpReLU's (L0 / k − 1)²                    L0 all-reduced, detached, in the gradient's factor
    the dead-latent clock                        fire counts all-reduced, so ranks agree on who is dead
    BatchTopK's θ update                         min over ranks of each shard's smallest kept activation
Each rank's loss is then its shard's additive share of the single-process loss, so the SUM of the
ranks' gradients (all-reduced explicitly, not DDP's mean) is the single-process gradient, and
identical optimiser steps keep the ranks' weights identical. TopK and ReLU runs therefore match a
single-process run up to float rounding. BatchTopK's training code keeps the top k·n_shard
activations of each shard rather than k·n of the whole batch: the same budget per token, but not
the same selection, so it matches a single-process run in distribution only. Rank 0 alone logs and
writes checkpoints; every rank resumes from them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from sae_core.architectures import BatchTopKSae, JumpReluSae, MatryoshkaBatchTopKSae, build_sae
from sae_core.checkpoint import (
    TrainingProgress,
    checkpoint_path,
    load_checkpoint,
    run_identity,
    save_checkpoint,
)
from sae_core.config import SaeConfig, TrainConfig
from sae_core.distributed import (
    ProcessGroupInfo,
    all_reduce_gradients,
    all_reduce_min,
    all_reduce_sum,
    barrier,
    broadcast_module_state,
    process_group_info,
)
from sae_core.initialization import copy_for_transfer, fit_input_scale_and_b_dec, fit_jumprelu_thresholds
from sae_core.optim import ScheduleFree
from sae_core.sae import ForwardOutput, SparseAutoencoder
from sae_core.training_data import TrainingData, batch_source, validate_data


@dataclass
class TrainResult:
    """A trained SAE and how its training went."""

    sae: SparseAutoencoder
    """The trained SAE, on `TrainConfig.device`, in eval mode."""
    history: list[dict] = field(default_factory=list)
    """One record per log step: step, tokens, fvu, dead_fraction (share of latents dead), and
    auxk_loss (topk, batchtopk, matryoshka_batchtopk), threshold (batchtopk, matryoshka_batchtopk),
    nested_fvu (matryoshka_batchtopk), l0 (relu, jumprelu) and l1_loss (relu)."""
    tokens_seen: int = 0
    """Training tokens consumed (a whole number of batches, >= TrainConfig.total_tokens)."""
    seconds: float = 0.0
    """Wall-clock time of the training loop, summed over resumed parts."""
    resumed_from_step: int = 0
    """The step the run continued from a checkpoint at; 0 for a run from scratch."""


def _loss(out: ForwardOutput, sae_cfg: SaeConfig, train_cfg: TrainConfig, group: ProcessGroupInfo) -> Tensor:
    if sae_cfg.architecture == "relu":
        return out.fvu + train_cfg.l1_coefficient * out.l1_loss
    if sae_cfg.architecture == "jumprelu":
        # d/dθ λ(L0/k − 1)² = λ · 2(L0/k − 1)/k · dL0/dθ. With the factor taken from the whole batch's L0
        # (detached) and L0 replaced by this rank's additive share, every rank's gradient is its share
        # of the single-process one; on one process the gradient is exactly that of λ(L0/k − 1)².
        l0 = all_reduce_sum(out.l0_loss.detach().clone(), group)
        factor = 2 * (l0 / sae_cfg.k - 1) / sae_cfg.k
        return out.fvu + train_cfg.l0_coefficient * factor * out.l0_loss
    return out.nested_fvu + train_cfg.auxk_alpha * out.auxk_loss


def _uses_auxk(sae_cfg: SaeConfig) -> bool:
    """AuxK revives the dead latents of the k-architectures; relu and jumprelu train on their penalties alone."""
    return sae_cfg.architecture not in ("relu", "jumprelu")


def _build_optimizer(sae: SparseAutoencoder, train_cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    if train_cfg.optimizer.startswith("schedule_free_"):
        base = train_cfg.optimizer.removeprefix("schedule_free_")
        return ScheduleFree(sae.parameters(), lr=lr, base=base, beta=train_cfg.schedule_free_beta)
    return torch.optim.Adam(sae.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=True)  # one pass


def _autocast_dtype(train_cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bfloat16 when TrainConfig.autocast asks for it ("bf16", or "auto" on CUDA), else None (fp32)."""
    if train_cfg.autocast == "bf16" or (train_cfg.autocast == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


@torch.no_grad()
def _total_variance(x_scaled: Tensor, batch_size: int, group: ProcessGroupInfo) -> Tensor:
    """Σ_t ‖x_t − x̄‖² over the global batch (scaled space), from this rank's shard x_scaled (n_shard, d_in).

    Two passes, as in the single-process formula, rather than Σ‖x‖² − n‖x̄‖², which cancels
    catastrophically for activations far from the origin: x̄ = (Σ_ranks Σ_t x_t) / n first, then the
    ranks' sums of squared deviations from it.
    """
    mean = all_reduce_sum(x_scaled.sum(dim=0), group) / batch_size
    return all_reduce_sum((x_scaled - mean).pow(2).sum(), group)


@torch.no_grad()
def _update_batchtopk_threshold(sae: BatchTopKSae, latent_acts: Tensor, rate: float, group: ProcessGroupInfo) -> None:
    """θ update with the smallest activation kept anywhere in the global batch, so all ranks hold one θ."""
    positive = latent_acts[latent_acts > 0]
    smallest = positive.min() if positive.numel() else latent_acts.new_tensor(float("inf"))
    smallest = all_reduce_min(smallest.float().reshape(1), group)
    if torch.isfinite(smallest).all():
        sae.update_threshold(smallest.reshape(1, 1), rate)


def _history_record(
    step: int,
    batch_size: int,
    out: ForwardOutput,
    sae: SparseAutoencoder,
    dead_fraction: float,
    group: ProcessGroupInfo,
) -> dict:
    """The log record of a step, with every loss summed over ranks (each rank's is its shard's share)."""
    shares = torch.stack(
        [
            out.fvu.detach().float(),
            out.auxk_loss.detach().float(),
            out.l1_loss.detach().float(),
            (out.latent_acts > 0).sum().float(),  # active latents, summed over tokens
        ]
    )
    fvu, auxk_loss, l1_loss, active = all_reduce_sum(shares, group).tolist()
    record = {"step": step, "tokens": step * batch_size, "fvu": fvu}
    if sae.cfg.architecture == "relu":
        record["l1_loss"] = l1_loss
    if sae.cfg.architecture in ("relu", "jumprelu"):
        record["l0"] = active / batch_size
    else:
        record["auxk_loss"] = auxk_loss
    if isinstance(sae, MatryoshkaBatchTopKSae):
        record["nested_fvu"] = float(all_reduce_sum(out.nested_fvu.detach().float().reshape(1), group))
    if isinstance(sae, BatchTopKSae):
        record["threshold"] = float(sae.threshold[0])
    record["dead_fraction"] = dead_fraction
    return record


def _apply_training_settings(sae: SparseAutoencoder, train_cfg: TrainConfig) -> None:
    """Hand the architecture the TrainConfig fields its training forward reads."""
    if isinstance(sae, MatryoshkaBatchTopKSae):
        sae.prefix_widths = train_cfg.prefix_widths(sae.cfg.d_sae)
    if isinstance(sae, JumpReluSae):
        sae.bandwidth = train_cfg.jumprelu_bandwidth


def train_sae(
    data: TrainingData,
    sae_cfg: SaeConfig,
    train_cfg: TrainConfig,
    init: SparseAutoencoder | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train an SAE of `sae_cfg.architecture` on `data` (n_tokens, d_in), float, rows in any order.

    `data` is a tensor in memory, or `sae_core.activation_stream.StoreRows` read from an activation store's
    shards in bounded memory (the same rows; batches come through its shuffle buffer rather than from a
    permutation of all rows, so the run is another draw of the same recipe).

    Runs ceil(total_tokens / batch_size) steps of `train_cfg.optimizer` on batches drawn from
    per-epoch shuffles of the rows. Deterministic given `train_cfg.seed` (on CPU), including
    across an interruption and resume from `train_cfg.checkpoint_dir`.

    `init`: start from a trained SAE (layer-wise transfer) instead of a random one. Its weights,
    b_dec included, are copied; input_scale is refitted to `data`, so the copied weights act on
    this layer's activations at the scale they were trained for.

    Under torch.distributed (torchrun) the ranks split every batch and the result matches a
    single-process run (see the module docstring); call it on every rank with the same arguments.
    `log` is called on rank 0 only.

    Raises ValueError for malformed data (not 2-D, wrong width, NaN/inf, zero variance), for a batch
    smaller than the world size, and for a checkpoint that is unreadable or belongs to another run
    (it is then left untouched).
    """
    group = process_group_info()
    validate_data(data, sae_cfg, group)
    if train_cfg.batch_size < group.world_size:
        raise ValueError(
            f"TrainConfig.batch_size {train_cfg.batch_size} is smaller than the {group.world_size} "
            "processes that share each batch"
        )
    if not group.is_main:
        log = None
    generator = torch.Generator().manual_seed(train_cfg.seed)
    device = torch.device(train_cfg.device)
    batch_size = train_cfg.batch_size
    n_steps = math.ceil(train_cfg.total_tokens / batch_size)
    lr = train_cfg.resolved_lr(sae_cfg.d_sae)
    autocast_dtype = _autocast_dtype(train_cfg, device)

    sae = build_sae(sae_cfg, generator=generator) if init is None else copy_for_transfer(init, sae_cfg)
    _apply_training_settings(sae, train_cfg)
    sae.to(device).train()
    optimizer = _build_optimizer(sae, train_cfg, lr)

    checkpoint = None if train_cfg.checkpoint_dir is None else checkpoint_path(train_cfg.checkpoint_dir)
    identity = None if checkpoint is None else run_identity(data, sae_cfg, train_cfg, init)
    if checkpoint is not None and checkpoint.exists():
        progress = load_checkpoint(checkpoint, sae, optimizer, identity, n_steps)
    else:
        fit_input_scale_and_b_dec(sae, data, train_cfg, generator, fit_b_dec=init is None)
        if isinstance(sae, JumpReluSae) and (init is None or init.thresholds() is None):
            fit_jumprelu_thresholds(sae, data, generator)
        progress = TrainingProgress(
            step=0,
            tokens_since_fired=torch.zeros(sae_cfg.d_sae, dtype=torch.long, device=device),
            # A stream's position is step · batch_size (activation_stream.RowStream): no row order to keep.
            batch_order=torch.randperm(len(data), generator=generator) if isinstance(data, Tensor) else torch.empty(0, dtype=torch.long),
            batch_position=0,
            generator=generator,
        )
    # Every rank ran the same seeded init (or read the same checkpoint); rank 0's copy is the truth.
    broadcast_module_state(sae, group)
    resumed_from_step = progress.step
    uses_auxk = _uses_auxk(sae_cfg)
    if log is not None:
        resumed = f", resuming at step {resumed_from_step} from {checkpoint}" if resumed_from_step else ""
        log(
            f"training {sae_cfg.architecture} SAE d_in={sae_cfg.d_in} d_sae={sae_cfg.d_sae} k={sae_cfg.k} "
            f"on {len(data)} rows: {n_steps} steps of {batch_size} tokens"
            f"{f' split over {group.world_size} processes' if group.is_distributed else ''}, lr={lr:.3g}, "
            f"input_scale={float(sae.input_scale):.4g}{resumed}"
        )

    next_batch = batch_source(data, progress, batch_size, train_cfg.seed, group)
    started = time.perf_counter()
    for step in range(progress.step + 1, n_steps + 1):
        batch = next_batch().to(device, torch.float32, non_blocking=True)
        # No latent can be dead before `dead_tokens_threshold` tokens have passed; until then skip
        # the mask and the host sync that counting dead latents costs.
        dead_mask = None
        if uses_auxk and (step - 1) * batch_size > train_cfg.dead_tokens_threshold:
            dead_mask = progress.tokens_since_fired > train_cfg.dead_tokens_threshold
        total_variance = _total_variance(batch * sae.input_scale, batch_size, group)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = sae(batch, dead_mask=dead_mask, total_variance=total_variance, n_tokens=batch_size)
        loss = _loss(out, sae_cfg, train_cfg, group)

        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # Explicit all-reduce rather than wrapping the SAE in DDP: the losses are additive shares,
        # so the gradients must be summed (DDP averages, and would need the loss scaled by W), and
        # the SAE's own methods below stay callable on the bare module. Four tensors per step leave
        # little for DDP's bucketed overlap with the backward pass to win.
        all_reduce_gradients(sae, group)
        sae.remove_gradient_parallel_to_decoder_directions()
        optimizer.step()
        sae.set_decoder_norm_to_unit_norm()
        if isinstance(sae, BatchTopKSae):
            _update_batchtopk_threshold(sae, out.latent_acts, train_cfg.threshold_ema_rate, group)

        # Dead-latent clock: every latent ages by the batch; those that fired this batch, on any
        # rank, reset. (index_add, not boolean indexing, keeps this free of host syncs on a GPU.)
        with torch.no_grad():
            fires = torch.zeros_like(progress.tokens_since_fired).index_add_(
                0, out.latent_indices.flatten(), (out.latent_acts > 0).flatten().long()
            )
            all_reduce_sum(fires, group)
            progress.tokens_since_fired += batch_size
            progress.tokens_since_fired.masked_fill_(fires > 0, 0)
        progress.step = step

        if step % train_cfg.log_every == 0 or step == n_steps:
            dead = float((progress.tokens_since_fired > train_cfg.dead_tokens_threshold).float().mean())
            record = _history_record(step, batch_size, out, sae, dead, group)
            progress.history.append(record)
            if log is not None:
                details = " ".join(
                    f"{key} {value:.4g}" for key, value in record.items() if key not in ("step", "tokens")
                )
                log(f"step {step}/{n_steps} tokens {record['tokens']} {details}")
        if checkpoint is not None and (step % train_cfg.checkpoint_every == 0 or step == n_steps):
            progress.seconds += time.perf_counter() - started
            started = time.perf_counter()
            if group.is_main:  # the ranks' states are identical; one writer avoids racing renames
                save_checkpoint(checkpoint, sae, optimizer, progress, identity)
    if isinstance(optimizer, ScheduleFree):
        # The run returns the average x. It averages unit-norm rows, so its rows are shorter than 1;
        # rescaling them back lowered held-out FVU (schedule-free signSGD, SmolLM2 layer 15, d_sae
        # 9216: 0.305 → 0.294).
        optimizer.use_average()
        sae.set_decoder_norm_to_unit_norm()
    progress.seconds += time.perf_counter() - started
    if checkpoint is not None:
        # No rank returns before rank 0's last checkpoint is on disk, so a run that follows in the
        # same process group finds the same checkpoint on every rank.
        barrier(group)

    sae.eval()
    return TrainResult(
        sae=sae,
        history=progress.history,
        tokens_seen=n_steps * batch_size,
        seconds=progress.seconds,
        resumed_from_step=resumed_from_step,
    )
