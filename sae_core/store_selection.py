"""What an activation store keeps of what is captured: chosen layers, and a sampled share of the tokens.

A full store keeps every layer of every token: n_layers × d_model fp16 values a token (34,560 bytes for
SmolLM2-135M). A store that serves one purpose can keep less, when a user asks:

    layers        only these layers' activations (e.g. the layers a release encodes with); a reader that
                  asks for another layer is refused (`LayerNotStored`)
    token_share   p ∈ (0, 1]: a token is kept iff u(document, position, seed) < p, with u a 64-bit hash
                  mapped to [0, 1) (splitmix64 of crc32(document) and position): a Bernoulli(p) sample
                  of the tokens, a reservoir for SAE training that is ~p times the corpus

The token rule depends on the token's name alone, not on batch or shard boundaries, so the stores of
several days sampled with one (p, seed) combine (`combine_stores`) into a Bernoulli(p) sample of their
union, and copying a store's tokens into another of the same selection keeps them all. The norms of every
layer are kept for every kept token whatever the layers (n_layers × 4 bytes a token): finding massive
activations needs them all.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SELECTION = "selection"
"""Manifest key: the `StoreSelection` of a store that keeps less than everything (absent when it keeps all)."""
NORM_BYTES = 4
"""Bytes of one stored norm (float32)."""


class LayerNotStored(ValueError):
    """A reader asked for a layer the store did not keep."""


@dataclass(frozen=True)
class StoreSelection:
    """Which layers and which share of tokens a store keeps; the default keeps everything."""

    layers: tuple[int, ...] | None = None
    """Model layers whose activations are kept, ascending; None: every layer."""
    token_share: float = 1.0
    """p: the expected share of tokens kept, by the hash rule of the module docstring."""
    seed: int = 0
    """Seed of the token hash: two stores share their sample only when they share it."""

    def __post_init__(self) -> None:
        if not 0 < self.token_share <= 1:
            raise ValueError(f"token_share must be in (0, 1], got {self.token_share!r}")
        if self.layers is not None:
            layers = tuple(int(layer) for layer in self.layers)
            if not layers or len(set(layers)) != len(layers):
                raise ValueError(f"layers to keep must be a non-empty list without repeats, got {list(layers)}")
            object.__setattr__(self, "layers", tuple(sorted(layers)))

    @property
    def keeps_everything(self) -> bool:
        return self.layers is None and self.token_share == 1.0

    def kept_layers(self, n_layers: int) -> tuple[int, ...]:
        """The model layers kept of a model with `n_layers`, ascending; refuses a layer outside it."""
        if self.layers is None:
            return tuple(range(n_layers))
        outside = [layer for layer in self.layers if not 0 <= layer < n_layers]
        if outside:
            raise ValueError(f"layers to keep {outside} are out of range: the model has layers 0..{n_layers - 1}")
        return self.layers

    def token_mask(self, documents: Sequence[str], positions: np.ndarray) -> np.ndarray:
        """(n,) bool: the tokens kept, by u(document, position, seed) < token_share."""
        positions = np.asarray(positions, dtype=np.uint64)
        if self.token_share == 1.0:
            return np.ones(len(positions), dtype=bool)
        names = {name: zlib.crc32(str(name).encode()) for name in set(documents)}
        document_hash = np.fromiter((names[name] for name in documents), dtype=np.uint64, count=len(positions))
        with np.errstate(over="ignore"):  # uint64 arithmetic wraps, as the mixing intends
            key = (document_hash << np.uint64(32)) ^ positions ^ (np.uint64(self.seed) * np.uint64(0x9E3779B97F4A7C15))
            uniform = _splitmix64(key) >> np.uint64(11)  # 53 bits → exact in float64
        return uniform.astype(np.float64) / float(1 << 53) < self.token_share

    def to_manifest(self) -> dict:
        return {"layers": None if self.layers is None else list(self.layers), "token_share": self.token_share,
                "seed": self.seed}

    @classmethod
    def from_manifest(cls, manifest: dict) -> StoreSelection:
        """The selection a store's manifest records; everything for a store that records none."""
        recorded = manifest.get(SELECTION)
        if recorded is None:
            return cls()
        layers = recorded.get("layers")
        return cls(None if layers is None else tuple(layers), float(recorded["token_share"]), int(recorded["seed"]))


def bytes_per_token(n_kept_layers: int, n_layers: int, d_model: int, itemsize: int) -> dict[str, int]:
    """What a stored token costs: activations n_kept_layers · d_model · itemsize, norms n_layers · 4."""
    activations, norms = n_kept_layers * d_model * itemsize, n_layers * NORM_BYTES
    return {"activations": activations, "norms": norms, "total": activations + norms}


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser (Steele et al. 2014): a bijection of uint64 whose outputs look uniform."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))
