"""What an SAE trains on: rows in memory or streamed from an activation store, and the Group-SAE sampler.

    TrainingData = Tensor (n, d_in)                  rows in memory, batches from per-epoch permutations
                 | activation_stream.StoreRows        the same rows read shard by shard, batches through a
                                                      shuffle buffer (bounded memory)

Group-SAE rows: token t contributes its residual at one uniformly random layer of its group,
    row_t = s_{g_t} · x_{t, g_t},   g_t ~ U{0..G−1},   s_g = 1 or sqrt(1 / mean_t ‖x_{t,g}‖²)  (`unit_scales`)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from sae_core.activation_stream import RowStream, StoreRows
from sae_core.checkpoint import TrainingProgress
from sae_core.config import SaeConfig
from sae_core.distributed import ProcessGroupInfo, all_reduce_sum, collective_device, shard

TrainingData = Tensor | StoreRows
"""Training rows: (n_tokens, d_in) in memory, or streamed from a store's shards."""


def unit_scales(per_layer: list[Tensor]) -> list[float]:
    """s_l = sqrt(1 / mean_t ‖x_{t,l}‖²) for each layer's rows x_l (n, d): the factor that gives the layer unit
    mean squared norm on its own (the Group-SAE authors normalise each layer of a group so, before mixing)."""
    return [math.sqrt(1.0 / float(x.double().pow(2).sum(dim=1).mean())) for x in per_layer]


def sample_group_activations(
    per_layer: list[Tensor], generator: torch.Generator, layer_scales: list[float] | None = None
) -> Tensor:
    """Group-SAE training rows: for each token i, row i of one uniformly random layer of the group.

    per_layer: G tensors of shape (n, d), the same n tokens read at each layer of the group.
    Returns (n, d). The group SAE thus sees as many activations as a per-layer SAE, each token
    through one of its layers (Group-SAE paper). `generator` is a CPU torch.Generator.
    `layer_scales` (G,): each layer's rows are multiplied by its factor first (`unit_scales`), so a
    low-norm layer is not drowned out by the others; the rows then come back in float32.
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
    if layer_scales is not None and len(layer_scales) != len(per_layer):
        raise ValueError(f"layer_scales has {len(layer_scales)} entries for {len(per_layer)} layers")
    chosen_layer = torch.randint(len(per_layer), (shape[0],), generator=generator)
    sampled = per_layer[0].clone() if layer_scales is None else per_layer[0].float() * layer_scales[0]
    for layer in range(1, len(per_layer)):
        rows = chosen_layer == layer
        picked = per_layer[layer][rows.to(per_layer[layer].device)]
        sampled[rows] = picked if layer_scales is None else picked.float() * layer_scales[layer]
    return sampled


def _validate_tensor(data: Tensor, sae_cfg: SaeConfig, group: ProcessGroupInfo | None) -> None:
    if data.ndim != 2:
        raise ValueError(f"activations must be a 2-D (n_tokens, d_in) tensor, got shape {tuple(data.shape)}")
    if data.shape[1] != sae_cfg.d_in:
        raise ValueError(f"activations have width {data.shape[1]}, but SaeConfig.d_in is {sae_cfg.d_in}")
    if data.shape[0] < 2:
        raise ValueError(f"activations need at least 2 tokens to have a variance, got {data.shape[0]}")
    if not data.is_floating_point():
        raise ValueError(f"activations must be floating point, got {data.dtype}")
    bad_rows = _non_finite_rows(data, group)
    if bad_rows:
        raise ValueError(f"activations contain NaN/inf in {bad_rows:,} of {len(data):,} rows")


def _non_finite_rows(data: Tensor, group: ProcessGroupInfo | None, chunk_rows: int = 65_536) -> int:
    """Rows of `data` holding NaN/inf. Under torch.distributed each rank reads only rows rank, rank + W, ...
    (its share: memory-mapped rows are never all paged in by every rank) and the counts are summed."""
    rank, world = (group.rank, group.world_size) if group is not None else (0, 1)
    own = torch.arange(rank, len(data), world)
    bad = sum(int((~torch.isfinite(data[rows])).any(dim=1).sum()) for rows in own.split(chunk_rows))
    return int(all_reduce_sum(torch.tensor(bad, device=collective_device()), group)) if group is not None else bad


def _next_batch_rows(progress: TrainingProgress, batch_size: int, n_rows: int) -> Tensor:
    """Row indices of the next batch: consecutive slices of per-epoch random permutations. A batch
    may straddle two epochs, so every batch is full even when n_rows < batch_size."""
    while progress.batch_order.numel() - progress.batch_position < batch_size:
        progress.batch_order = torch.cat(
            [progress.batch_order[progress.batch_position :], torch.randperm(n_rows, generator=progress.generator)]
        )
        progress.batch_position = 0
    rows = progress.batch_order[progress.batch_position : progress.batch_position + batch_size]
    progress.batch_position += batch_size
    return rows


def validate_data(data: TrainingData, sae_cfg: SaeConfig, group: ProcessGroupInfo | None = None) -> None:
    """ValueError for rows that cannot train an SAE of `sae_cfg`: not (n ≥ 2, d_in) float, NaN/inf. A stream's
    rows are checked for NaN/inf as each shard is read; a tensor's, with `group`, by each rank on its share."""
    if isinstance(data, Tensor):
        _validate_tensor(data, sae_cfg, group)
        return
    if not isinstance(data, StoreRows):
        raise ValueError(f"training data must be a tensor or activation_stream.StoreRows, got {type(data).__name__}")
    if data.shape[1] != sae_cfg.d_in:
        raise ValueError(f"activations have width {data.shape[1]}, but SaeConfig.d_in is {sae_cfg.d_in}")
    if len(data) < 2:
        raise ValueError(f"activations need at least 2 tokens to have a variance, got {len(data)}")


def batch_source(
    data: TrainingData, progress: TrainingProgress, batch_size: int, seed: int, group: ProcessGroupInfo
) -> Callable[[], Tensor]:
    """A function returning this rank's share of the next global batch of `batch_size` rows (`shard`).

    In memory: rows of `progress.batch_order` (per-epoch permutations, advanced in `progress`). Streamed:
    a `RowStream` seeded by `seed`, started at row progress.step · batch_size (so a resumed run continues
    where the checkpoint left it); every rank reads the whole global batch and keeps its share.
    """
    if isinstance(data, Tensor):
        return lambda: data[shard(_next_batch_rows(progress, batch_size, len(data)), group).to(data.device)]
    stream = RowStream(data, seed, start_row=progress.step * batch_size)
    return lambda: shard(stream.next(batch_size), group)
