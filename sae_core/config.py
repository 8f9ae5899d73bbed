"""Configuration of a sparse autoencoder (`SaeConfig`) and of its training run (`TrainConfig`).

One frozen dataclass per concern, so a config is a value: hashable, comparable and safe to share.
Both validate themselves on construction and name the offending field in the error.
The defaults train a usable SAE on the offline sample (SmolLM2-135M-Instruct Q4_1, width 576) on a CPU.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

SUPPORTED_ARCHITECTURES = ("topk", "batchtopk", "relu", "jumprelu", "matryoshka_batchtopk")
"""Activation schemes: TopK (Gao et al. 2024), BatchTopK (Bussmann et al. 2024), ReLU + L1 (Bricken et al.
2023), JumpReLU (Rajamanoharan et al. 2024) and Matryoshka BatchTopK (Bussmann et al. 2025)."""
ARCHITECTURES_WITH_K = ("topk", "batchtopk", "jumprelu", "matryoshka_batchtopk")
DEFAULT_K = 32
B_DEC_INITS = ("geometric_median", "mean")
AUTOCAST_MODES = ("auto", "bf16", "off")
OPTIMIZERS = ("schedule_free_adam", "adam", "schedule_free_signum")
"""Schedule-free Adam or signSGD (sae_core.optim), or plain (fused) Adam."""

# Fields that change how a run is watched or where it runs, not what it computes: a checkpoint
# written under one value of them may be resumed under another.
_NON_IDENTITY_TRAIN_FIELDS = ("device", "log_every", "checkpoint_dir", "checkpoint_every")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class SaeConfig:
    """Shape and activation scheme of a sparse autoencoder.

    d_sae = d_in * expansion_factor latents. How many may be active per token depends on the
    architecture: exactly at most `k` (topk), `k` on average over a batch (batchtopk and
    matryoshka_batchtopk), `k` on average as the target of a sparsity penalty (jumprelu), or as many as
    the L1 penalty allows (relu, which has no `k`).
    """

    d_in: int
    """Width of the activations the SAE reads (the model's residual stream width)."""
    expansion_factor: int = 8
    """Number of latents per input dimension: d_sae = d_in * expansion_factor."""
    k: int | None = None
    """Active latents per token: the TopK k, BatchTopK's mean k, or JumpReLU's target L0. None: 32 for
    those; must stay None for "relu", whose sparsity comes from TrainConfig.l1_coefficient."""
    architecture: str = "topk"
    """One of SUPPORTED_ARCHITECTURES (see sae_core.sae and sae_core.architectures)."""

    def __post_init__(self) -> None:
        if not _is_int(self.d_in) or self.d_in <= 0:
            raise ValueError(f"SaeConfig.d_in must be a positive integer, got {self.d_in!r}")
        if not _is_int(self.expansion_factor) or self.expansion_factor < 1:
            raise ValueError(
                f"SaeConfig.expansion_factor must be an integer >= 1, got {self.expansion_factor!r}"
            )
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"SaeConfig.architecture must be one of {SUPPORTED_ARCHITECTURES}, "
                f"got {self.architecture!r}"
            )
        if self.architecture not in ARCHITECTURES_WITH_K:
            if self.k is not None:
                raise ValueError(
                    f"SaeConfig.k must be None for architecture {self.architecture!r} (its sparsity is "
                    f"set by TrainConfig.l1_coefficient), got {self.k!r}"
                )
            return
        if self.k is None:
            # Frozen dataclass: resolving the default is the one write __post_init__ makes.
            object.__setattr__(self, "k", DEFAULT_K)
        if not _is_int(self.k) or not 0 < self.k <= self.d_sae:
            raise ValueError(
                f"SaeConfig.k must be an integer in 1..d_sae={self.d_sae}, got {self.k!r}"
            )

    @property
    def d_sae(self) -> int:
        """Number of latents (dictionary size)."""
        return self.d_in * self.expansion_factor

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TrainConfig:
    """How to train one SAE: optimiser, token budget, sparsity penalties, determinism, checkpoints."""

    batch_size: int = 4096
    """Tokens per optimiser step."""
    total_tokens: int = 200_000
    """Tokens to train on; the data are reshuffled and cycled when it is smaller than this."""
    optimizer: str = "schedule_free_adam"
    """"schedule_free_adam", "schedule_free_signum" (sae_core.optim: evaluated at the average of the
    iterates) or "adam" (fused Adam, betas 0.9/0.999, constant lr)."""
    lr: float | None = None
    """Learning rate; None picks one for the optimizer and width (see `resolved_lr`)."""
    schedule_free_beta: float = 0.95
    """schedule_free_*: interpolation β between the base-step iterate z and the average x, y = (1−β)z + βx."""
    auxk_alpha: float = 1 / 32
    """topk, batchtopk: weight of the AuxK dead-latent loss, loss = fvu + auxk_alpha * auxk_loss."""
    l1_coefficient: float = 0.2
    """relu: weight λ of the sparsity penalty, loss = fvu + λ · mean_t Σ_j z_tj ‖W_dec,j‖, on inputs
    scaled to E‖x‖² = 1. Measured on SmolLM2 layer 20 of the sample (expansion 8, batch 1024, held-out
    tokens): λ = 0.2 over 300k tokens gives L0 ≈ 30 at FVU 0.45 with the default optimizer
    (schedule-free Adam; plain Adam at 2e-3: L0 ≈ 28 at FVU 0.51, at Gao et al.'s 3.8e-4: L0 ≈ 116 at
    FVU 0.46); with Adam at 3.8e-4, over 100k tokens,
    λ = 0.1 gave L0 ≈ 275 (FVU 0.44) and λ = 0.3 L0 ≈ 54 (FVU 0.91). Raise λ for a sparser, lossier
    code."""
    threshold_ema_rate: float = 0.05
    """batchtopk: rate r of the inference threshold's moving average, θ ← (1 − r) θ + r · (smallest
    activation the batch kept). SAELens uses 0.01 over thousands of steps; runs on the sample take a
    few hundred, and a 100-step memory still held the early model's larger minimum at the end (SmolLM2
    layer 20, k = 32, 98 steps: inference L0 17 at r = 0.01, 30 at r = 0.05). The minimum of k·n kept
    values is a sharp quantile, so the shorter memory adds little noise."""
    l0_coefficient: float = 1.0
    """jumprelu: weight λ of the sparsity penalty, loss = fvu + λ · (L0 / k − 1)², L0 the mean number
    of latents over their thresholds per token (dictionary_learning's target-L0 form)."""
    jumprelu_bandwidth: float = 0.05
    """jumprelu: width ε of the rectangle kernel in the thresholds' pseudo-derivatives, on inputs scaled
    to E‖x‖² = 1. See sae_core.architectures."""
    matryoshka_prefixes: tuple[float, ...] = (0.125, 0.25, 0.5)
    """matryoshka_batchtopk: the nested prefixes trained to reconstruct on their own, as fractions of
    d_sae, increasing, each in (0, 1); the full width is always the last level."""
    dead_tokens_threshold: int = 100_000
    """A latent counts as dead after this many training tokens without firing."""
    b_dec_init: str = "geometric_median"
    """How b_dec is initialised from the data: "geometric_median" or "mean"."""
    seed: int = 0
    """Seeds the SAE initialisation and the data shuffles."""
    device: str = "cpu"
    """Torch device the SAE trains on; batches are moved there one at a time."""
    autocast: str = "auto"
    """Mixed precision of the forward pass: "auto" (bf16 autocast on CUDA, fp32 elsewhere), "bf16"
    (bf16 autocast on any device) or "off". Weights, optimiser state, gradients and the loss
    normalisers stay fp32; under bf16 the TopK encoder's product and selection run in bf16
    (sae_core.kernels). "auto" keeps CPU runs in fp32, so they stay bit-for-bit reproducible across
    machines. On a CPU with a bf16 matmul unit (AVX512-BF16, AMX) "bf16" is the faster choice; on an
    AMD EPYC with AVX512-BF16 (2 threads, SmolLM2 layer 15, TopK k 32), held-out FVU fp32 → bf16 and
    speed-up: d_sae 2304, batch 1024, 300k tokens 0.1641 → 0.1640, 1.42×; d_sae 9216, batch 4096,
    200k tokens 0.1913 → 0.1910, 1.8×. A CPU without one runs bf16 matmuls far slower than fp32.
    train_sae applies this setting itself: an enclosing torch.autocast context does not change it."""
    log_every: int = 10
    """Steps between history records (and log lines)."""
    checkpoint_dir: str | None = None
    """Folder for the resumable training state; None: no checkpoints. A run finding a checkpoint of
    the same configuration and data there resumes from it (sae_core.checkpoint)."""
    checkpoint_every: int = 100
    """Steps between checkpoints (the last step is always checkpointed)."""

    def __post_init__(self) -> None:
        if not _is_int(self.batch_size) or self.batch_size < 2:
            # FVU divides by the batch variance, which needs at least two tokens.
            raise ValueError(f"TrainConfig.batch_size must be an integer >= 2, got {self.batch_size!r}")
        if not _is_int(self.total_tokens) or self.total_tokens <= 0:
            raise ValueError(
                f"TrainConfig.total_tokens must be a positive integer, got {self.total_tokens!r}"
            )
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"TrainConfig.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if not (math.isfinite(self.schedule_free_beta) and 0 <= self.schedule_free_beta < 1):
            raise ValueError(
                f"TrainConfig.schedule_free_beta must be in [0, 1), got {self.schedule_free_beta!r}"
            )
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"TrainConfig.lr must be a positive number or None, got {self.lr!r}")
        if not (math.isfinite(self.auxk_alpha) and self.auxk_alpha >= 0):
            raise ValueError(f"TrainConfig.auxk_alpha must be >= 0, got {self.auxk_alpha!r}")
        if not (math.isfinite(self.l1_coefficient) and self.l1_coefficient >= 0):
            raise ValueError(f"TrainConfig.l1_coefficient must be >= 0, got {self.l1_coefficient!r}")
        if not (math.isfinite(self.l0_coefficient) and self.l0_coefficient >= 0):
            raise ValueError(f"TrainConfig.l0_coefficient must be >= 0, got {self.l0_coefficient!r}")
        if not (math.isfinite(self.jumprelu_bandwidth) and self.jumprelu_bandwidth > 0):
            raise ValueError(f"TrainConfig.jumprelu_bandwidth must be > 0, got {self.jumprelu_bandwidth!r}")
        # JSON (a stored release) gives a list; the frozen dataclass must stay hashable.
        object.__setattr__(self, "matryoshka_prefixes", tuple(self.matryoshka_prefixes))
        prefixes = self.matryoshka_prefixes
        if not all(isinstance(f, (int, float)) and 0 < f < 1 for f in prefixes) or list(prefixes) != sorted(set(prefixes)):
            raise ValueError(
                f"TrainConfig.matryoshka_prefixes must be increasing fractions in (0, 1), got {prefixes!r}"
            )
        if not (math.isfinite(self.threshold_ema_rate) and 0 < self.threshold_ema_rate <= 1):
            raise ValueError(
                f"TrainConfig.threshold_ema_rate must be in (0, 1], got {self.threshold_ema_rate!r}"
            )
        if not _is_int(self.dead_tokens_threshold) or self.dead_tokens_threshold <= 0:
            raise ValueError(
                "TrainConfig.dead_tokens_threshold must be a positive integer, "
                f"got {self.dead_tokens_threshold!r}"
            )
        if self.b_dec_init not in B_DEC_INITS:
            raise ValueError(
                f"TrainConfig.b_dec_init must be one of {B_DEC_INITS}, got {self.b_dec_init!r}"
            )
        if self.autocast not in AUTOCAST_MODES:
            raise ValueError(f"TrainConfig.autocast must be one of {AUTOCAST_MODES}, got {self.autocast!r}")
        if not _is_int(self.log_every) or self.log_every < 1:
            raise ValueError(f"TrainConfig.log_every must be an integer >= 1, got {self.log_every!r}")
        if self.checkpoint_dir is not None and (not isinstance(self.checkpoint_dir, str) or not self.checkpoint_dir):
            raise ValueError(
                f"TrainConfig.checkpoint_dir must be a non-empty path string or None, got {self.checkpoint_dir!r}"
            )
        if not _is_int(self.checkpoint_every) or self.checkpoint_every < 1:
            raise ValueError(
                f"TrainConfig.checkpoint_every must be an integer >= 1, got {self.checkpoint_every!r}"
            )

    def resolved_lr(self, d_sae: int) -> float:
        """The learning rate to use: `lr`, or the optimizer's default at this width,

            schedule_free_adam     8e-3 · min(1, sqrt(2**14 / d_sae))
            adam                   2e-3 · min(1, sqrt(2**14 / d_sae))
            schedule_free_signum   5e-3 · sqrt(2**14 / d_sae)          (sparsify's default)

        Gao et al. (2024) fitted Adam's lr = 2e-4 / sqrt(d_sae / 2**14) to runs of billions of
        tokens. On the budgets this project trains on (10^5–10^6 tokens, 50–300 steps) that
        undertrains. Held-out FVU on SmolLM2 residuals of the sample, TopK k 32:
            d_sae 2304, batch 1024, 300k tokens (group_saes' default), layer 15: Adam at their law's
            5.3e-4 0.217, at 2e-3 0.171 (1e-3 and 4e-3 were worse); holding out the store's last
            4096 tokens instead, layers 3 / 15 / 25: Adam 2e-3 0.162 / 0.233 / 0.266, schedule-free
            Adam 8e-3 0.162 / 0.232 / 0.263 (5e-3: 0.163 / 0.231 / 0.265);
            d_sae 9216, batch 4096, 200k tokens of layer 15 (benchmarks/sae_throughput.py's shapes),
            last 1024 store tokens held out: Adam 2e-3 0.327, schedule-free Adam 8e-3 0.294, 5e-3
            0.302, schedule-free signSGD 6.7e-3 0.294; on the benchmark's own capture (4096 held
            out): Adam 0.227, schedule-free Adam 0.192 (sparsify 0.189).
        The 1/sqrt(width) scaling is kept above 2**14 latents, where nothing was measured here.
        """
        if self.lr is not None:
            return self.lr
        if self.optimizer == "schedule_free_signum":
            return 5e-3 * math.sqrt(2**14 / d_sae)
        peak = 8e-3 if self.optimizer == "schedule_free_adam" else 2e-3
        return peak * min(1.0, math.sqrt(2**14 / d_sae))

    def prefix_widths(self, d_sae: int) -> tuple[int, ...]:
        """matryoshka_batchtopk: the nested prefix widths m_1 < … < m_{G−1} below d_sae (each at least 1)."""
        widths = sorted({max(1, round(f * d_sae)) for f in self.matryoshka_prefixes} - {d_sae})
        return tuple(widths)

    def identity(self) -> dict[str, Any]:
        """The fields that determine what a run computes: all but device, logging and checkpointing."""
        return {key: value for key, value in asdict(self).items() if key not in _NON_IDENTITY_TRAIN_FIELDS}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
