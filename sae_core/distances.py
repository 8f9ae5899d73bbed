"""Angular distances between the layers of a model's residual stream (Group-SAE, AMAD).

For one token with residual vectors x_0 … x_{L−1} (one per layer):
    d_t(i, j) = arccos(clamp(cos(x_i, x_j), −1, 1)) / π         ∈ [0, 1]
and the layer distance matrix is its mean over tokens, D̄(i, j) = (1/n) Σ_t d_t(i, j).
Identical directions give 0, orthogonal ones 0.5, opposite ones 1.

Mean-centred (the Group-SAE authors' code): each layer's mean over the tokens, μ_l = (1/n) Σ_t x_{t,l},
is subtracted first, d_t(i, j) = arccos(cos(x_{t,i} − μ_i, x_{t,j} − μ_j)) / π. A residual stream carries a
large shared direction (its mean grows with depth); left in, it makes every layer look close to its
neighbours whatever the tokens say. The authors subtract a running mean as they stream; `layer_means`
computes the exact mean over the same tokens in a first pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

# Tokens per chunk inside `update`: bounds the (chunk, L, L) cosine tensor's memory.
_TOKENS_PER_CHUNK = 4096


def _token_angular_distances(hidden: Tensor) -> Tensor:
    """Per-token distances d_t(i, j) for hidden (n, L, d) → (n, L, L), float32."""
    unit = hidden.float()
    norms = unit.norm(dim=2, keepdim=True)
    if (norms == 0).any():
        raise ValueError("hidden contains an all-zero residual vector: its angle to other layers is undefined")
    unit = unit / norms
    cosines = torch.bmm(unit, unit.transpose(1, 2))
    return torch.arccos(cosines.clamp(-1.0, 1.0)) / math.pi


class AngularDistanceAccumulator:
    """Streaming mean of the per-token angular distance matrices, so callers can feed shards.

    `update(hidden)` adds a shard of shape (n, L, d) (any float dtype; computed in float32, summed
    in float64); `mean()` returns D̄ (L, L) float32, exactly symmetric with a zero diagonal.
    `centre` (L, d), e.g. `layer_means` of the same tokens, is subtracted from every token first.
    """

    def __init__(self, n_layers: int, centre: Tensor | None = None) -> None:
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        if centre is not None and (centre.ndim != 2 or centre.shape[0] != n_layers):
            raise ValueError(f"centre must have shape (n_layers={n_layers}, d), got {tuple(centre.shape)}")
        self.n_layers = n_layers
        self.n_tokens = 0
        self.centre = None if centre is None else centre.float()
        self._distance_sum = torch.zeros(n_layers, n_layers, dtype=torch.float64)

    def update(self, hidden: Tensor) -> None:
        """Add the tokens of `hidden` (n_tokens, n_layers, d)."""
        if hidden.ndim != 3 or hidden.shape[1] != self.n_layers:
            raise ValueError(
                f"hidden must have shape (n_tokens, n_layers={self.n_layers}, d), got {tuple(hidden.shape)}"
            )
        if not hidden.is_floating_point():
            raise ValueError(f"hidden must be floating point, got {hidden.dtype}")
        for start in range(0, hidden.shape[0], _TOKENS_PER_CHUNK):
            chunk = hidden[start : start + _TOKENS_PER_CHUNK]
            if not torch.isfinite(chunk).all():
                raise ValueError("hidden contains NaN/inf")
            if self.centre is not None:
                chunk = chunk.float() - self.centre.to(chunk.device)
            distances = _token_angular_distances(chunk)
            self._distance_sum += distances.sum(dim=0, dtype=torch.float64).cpu()
        self.n_tokens += hidden.shape[0]

    def mean(self) -> Tensor:
        """D̄ (n_layers, n_layers), float32."""
        if self.n_tokens == 0:
            raise ValueError("no tokens accumulated: call update() before mean()")
        mean = self._distance_sum / self.n_tokens
        # arccos of a float32 self-cosine of 1 − ε is ≈ sqrt(2ε), not 0, and bmm need not be exactly
        # symmetric; D̄ is a distance matrix by definition, so make it one.
        mean = (mean + mean.T) / 2
        mean.fill_diagonal_(0.0)
        return mean.float()


def layer_means(shards: Iterable[Tensor]) -> Tensor:
    """μ (n_layers, d) float32: each layer's mean residual over the tokens of `shards`, each (n, L, d),
    summed in float64."""
    total, n_tokens = None, 0
    for shard in shards:
        if shard.ndim != 3:
            raise ValueError(f"shards must have shape (n_tokens, n_layers, d), got {tuple(shard.shape)}")
        part = shard.sum(dim=0, dtype=torch.float64)
        total = part if total is None else total + part
        n_tokens += shard.shape[0]
    if not n_tokens:
        raise ValueError("layer_means needs at least one token")
    return (total / n_tokens).float()


def store_distances(store, usable: Tensor, max_tokens: int, mean_centred: bool = False) -> tuple[Tensor, int]:
    """(D̄ (L, L), tokens averaged) over the first `max_tokens` usable tokens of an activation store
    (`sae_core.activation_store.ActivationStore`; `usable` (N,) bool, e.g. no massive tokens), read shard by
    shard; of x − μ over those same tokens when `mean_centred` (two passes)."""

    def usable_shards():
        start, given = 0, 0
        for shard in store.iter_shards():
            part = shard[usable[start : start + len(shard)]]
            start, given = start + len(shard), given + len(part)
            yield part
            if given >= max_tokens:
                return

    accumulator = AngularDistanceAccumulator(store.n_layers, layer_means(usable_shards()) if mean_centred else None)
    for shard in usable_shards():
        accumulator.update(shard)
    return accumulator.mean(), accumulator.n_tokens


def angular_distances(hidden: Tensor, mean_centred: bool = False) -> Tensor:
    """D̄ (n_layers, n_layers) for hidden (n_tokens, n_layers, d): mean over tokens of
    arccos(clamp(cos(x_i, x_j), −1, 1)) / π, of x − μ (`layer_means`) when `mean_centred`."""
    if hidden.ndim != 3:
        raise ValueError(f"hidden must have shape (n_tokens, n_layers, d), got {tuple(hidden.shape)}")
    accumulator = AngularDistanceAccumulator(hidden.shape[1], layer_means([hidden]) if mean_centred else None)
    accumulator.update(hidden)
    return accumulator.mean()


@dataclass(frozen=True)
class LayerDistances:
    """D̄ of a model's layers, as the layer_distances asset hands it on."""

    distances: list[list[float]]
    """(L × L) mean angular distance between the residual streams of every two layers."""
    n_tokens: int
    """Tokens averaged over."""
    n_layers: int
    mean_centred: bool = False
    """Whether each layer's mean residual was subtracted first (the Group-SAE authors' way)."""

    def matrix(self) -> np.ndarray:
        return np.asarray(self.distances, dtype=np.float64)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LayerDistances:
        return cls(data["distances"], int(data["n_tokens"]), int(data["n_layers"]), bool(data.get("mean_centred", False)))
