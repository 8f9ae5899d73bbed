"""Configuration of a sparse autoencoder (`SaeConfig`) and of its training run (`TrainConfig`).

One frozen dataclass per concern, so a config is a value: hashable, comparable and safe to share.
Both validate themselves on construction and name the offending field in the error.
The defaults train a usable SAE on the offline sample (SmolLM2-135M, width 576) on a CPU.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

SUPPORTED_ARCHITECTURES = ("topk",)
B_DEC_INITS = ("geometric_median", "mean")


@dataclass(frozen=True)
class SaeConfig:
    """Shape of a TopK sparse autoencoder.

    d_sae = d_in * expansion_factor latents, of which exactly `k` may be active per token.
    """

    d_in: int
    """Width of the activations the SAE reads (the model's residual stream width)."""
    expansion_factor: int = 8
    """Number of latents per input dimension: d_sae = d_in * expansion_factor."""
    k: int = 32
    """Number of latents kept per token by the TopK activation."""
    architecture: str = "topk"
    """Activation scheme; only "topk" (Gao et al. 2024) is implemented."""

    def __post_init__(self) -> None:
        if not isinstance(self.d_in, int) or self.d_in <= 0:
            raise ValueError(f"SaeConfig.d_in must be a positive integer, got {self.d_in!r}")
        if not isinstance(self.expansion_factor, int) or self.expansion_factor < 1:
            raise ValueError(
                f"SaeConfig.expansion_factor must be an integer >= 1, got {self.expansion_factor!r}"
            )
        if not isinstance(self.k, int) or not 0 < self.k <= self.d_sae:
            raise ValueError(
                f"SaeConfig.k must be an integer in 1..d_sae={self.d_sae}, got {self.k!r}"
            )
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"SaeConfig.architecture must be one of {SUPPORTED_ARCHITECTURES}, "
                f"got {self.architecture!r}"
            )

    @property
    def d_sae(self) -> int:
        """Number of latents (dictionary size)."""
        return self.d_in * self.expansion_factor

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TrainConfig:
    """How to train one SAE: optimiser, token budget, dead-latent bookkeeping, determinism."""

    batch_size: int = 4096
    """Tokens per optimiser step."""
    total_tokens: int = 200_000
    """Tokens to train on; the data are reshuffled and cycled when it is smaller than this."""
    lr: float | None = None
    """Adam learning rate; None picks 2e-4 / sqrt(d_sae / 2**14) (Gao et al. 2024)."""
    auxk_alpha: float = 1 / 32
    """Weight of the AuxK dead-latent loss: loss = fvu + auxk_alpha * auxk_loss."""
    dead_tokens_threshold: int = 100_000
    """A latent counts as dead after this many training tokens without firing."""
    b_dec_init: str = "geometric_median"
    """How b_dec is initialised from the data: "geometric_median" or "mean"."""
    seed: int = 0
    """Seeds the SAE initialisation and the data shuffles."""
    device: str = "cpu"
    """Torch device the SAE trains on; batches are moved there one at a time."""
    log_every: int = 10
    """Steps between history records (and log lines)."""

    def __post_init__(self) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 2:
            # FVU divides by the batch variance, which needs at least two tokens.
            raise ValueError(f"TrainConfig.batch_size must be an integer >= 2, got {self.batch_size!r}")
        if not isinstance(self.total_tokens, int) or self.total_tokens <= 0:
            raise ValueError(
                f"TrainConfig.total_tokens must be a positive integer, got {self.total_tokens!r}"
            )
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"TrainConfig.lr must be a positive number or None, got {self.lr!r}")
        if not (math.isfinite(self.auxk_alpha) and self.auxk_alpha >= 0):
            raise ValueError(f"TrainConfig.auxk_alpha must be >= 0, got {self.auxk_alpha!r}")
        if not isinstance(self.dead_tokens_threshold, int) or self.dead_tokens_threshold <= 0:
            raise ValueError(
                "TrainConfig.dead_tokens_threshold must be a positive integer, "
                f"got {self.dead_tokens_threshold!r}"
            )
        if self.b_dec_init not in B_DEC_INITS:
            raise ValueError(
                f"TrainConfig.b_dec_init must be one of {B_DEC_INITS}, got {self.b_dec_init!r}"
            )
        if not isinstance(self.log_every, int) or self.log_every < 1:
            raise ValueError(f"TrainConfig.log_every must be an integer >= 1, got {self.log_every!r}")

    def resolved_lr(self, d_sae: int) -> float:
        """The learning rate to use: `lr`, or the Gao et al. scaling law 2e-4 / sqrt(d_sae / 2**14)."""
        if self.lr is not None:
            return self.lr
        return 2e-4 / math.sqrt(d_sae / 2**14)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
