"""The architectures beyond TopK, and `build_sae`, which picks the class for a config.

BatchTopK (Bussmann, Leask & Nanda 2024, "BatchTopK Sparse Autoencoders"):

    training:   z = BatchTopK_{k·n}(ReLU(pre))      the k·n largest activations of the whole batch
                                                     of n tokens are kept, so tokens share a budget
                                                     of k·n and the number per token varies
    threshold:  θ ← (1 − r) θ + r · min{z_tj : z_tj > 0}      after every training batch (θ = 0: no
                                                     estimate yet, the first batch sets θ directly)
    inference:  z = ReLU(pre) · 1[pre > θ_j]        a JumpReLU; with θ the typical smallest kept
                                                     activation, the mean L0 is ≈ k

θ is a buffer `threshold` of shape (d_sae,), every entry the same θ after our training. That is how
SAELens stores a BatchTopK SAE for inference: as a JumpReLU SAE with a per-latent threshold, which
is also how `io.save_sae` writes it. AuxK on dead latents applies as for TopK. The mode
(`sae.train()` / `sae.eval()`) decides which activation `forward` and `encode` use.

ReLU + L1 (Bricken et al. 2023, "Towards Monosemanticity"; SAELens "standard"):

    z = ReLU(pre),    loss = fvu + λ · (1/n) Σ_t Σ_j z_tj ‖W_dec,j‖      (no AuxK)

The decoder rows are kept at unit norm, as for the other architectures (the 2023 recipe), so the
penalty is the plain L1 of z. Why not let the norms float and keep the ‖W_dec,j‖ factor (Anthropic's
2024 update)? One training loop and one decoder geometry for every architecture; with rows pinned
the penalty cannot be lowered by shrinking z while growing W_dec; and the input-scale fold of
`io.save_sae` stays exactly invertible for layer-wise transfer, which relies on every row having
the same norm. The factor is still computed, so a loaded SAE with folded (non-unit) rows reports the
penalty its weights really carry.

JumpReLU (Rajamanoharan et al. 2024, "Jumping Ahead"), trained to a target L0 (as dictionary_learning's
JumpReLU trainer does, rather than with the paper's plain λ·L0):

    z_tj = pre_tj · H(pre_tj − θ_j),   θ_j = exp(log_threshold_j) > 0   a learned threshold per latent
    L0 = (1/n) Σ_t Σ_j H(pre_tj − θ_j),   loss = fvu + λ · (L0 / k − 1)²    k = SaeConfig.k, the target

H has no useful gradient, so θ learns through the paper's straight-through pseudo-derivatives with a
rectangle kernel K(u) = 1[|u| < 1/2] of bandwidth ε:

    ∂z_tj/∂θ_j := −(θ_j / ε) K((pre_tj − θ_j) / ε),    ∂H(pre_tj − θ_j)/∂θ_j := −(1/ε) K((pre_tj − θ_j) / ε)

(pre gets the true gradient of z and none from L0). ε is TrainConfig.jumprelu_bandwidth in the scaled
space (E‖x·s‖² = 1). The thresholds start at each latent's (1 − k/d_sae) quantile of pre-activations on the
data (`sae_core.initialization.fit_jumprelu_thresholds`), so L0 starts at the target, not at d_sae/2:
the runs here are a few hundred steps, too few to walk θ up from the paper's 0.001.

Matryoshka BatchTopK (Bussmann, Nabeshima, Karvonen & Nanda 2025, "Learning Multi-Level Features with
Matryoshka SAEs"): a BatchTopK SAE whose latents are trained to reconstruct in nested prefixes. With
widths m_1 < … < m_G = d_sae (TrainConfig.matryoshka_prefixes × d_sae, then d_sae),

    x̂_g = Σ_{j < m_g} z_j W_dec,j + b_dec,      loss = (1/G) Σ_g FVU(x, x̂_g) + auxk_alpha · auxk_loss

with one BatchTopK selection over all latents. The first latents must reconstruct on their own, so they
learn general features and the later ones refine them, instead of one latent absorbing another's
(feature absorption). Inference is BatchTopK's JumpReLU at θ, and so is its save.

These codes have a varying number of active latents per token; `encode` returns each batch's exact
sparse form (see `sae_core.sae`), and they decode densely (one matmul) because they are not sparse
enough, early in training or under a weak penalty, for a gather to pay.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sae_core.config import SaeConfig
from sae_core.sae import SparseAutoencoder, TopKSae, TrainingCode, sparsify_code


class BatchTopKSae(SparseAutoencoder):
    """BatchTopK SAE: a shared top-(k·n) over the batch in training, a JumpReLU at θ in inference."""

    architecture = "batchtopk"
    threshold: Tensor

    def __init__(self, cfg: SaeConfig, *, generator: torch.Generator | None = None) -> None:
        super().__init__(cfg, generator=generator)
        self.register_buffer("threshold", torch.zeros(cfg.d_sae))

    def _dense_code(self, pre_acts: Tensor) -> Tensor:
        acts = F.relu(pre_acts)
        if not self.training:
            return acts * (pre_acts > self.threshold)
        n_kept = self.cfg.k * len(acts)
        flat = acts.flatten()
        kept, positions = flat.topk(n_kept, sorted=False)
        return torch.zeros_like(flat).scatter(0, positions, kept).view_as(acts)

    def thresholds(self) -> Tensor:
        return self.threshold

    @torch.no_grad()
    def set_thresholds(self, threshold: Tensor) -> None:
        self.threshold.copy_(threshold)

    @torch.no_grad()
    def update_threshold(self, latent_acts: Tensor, rate: float) -> None:
        """θ ← (1 − rate) θ + rate · (smallest positive entry of `latent_acts`), the code a training
        batch kept; θ = 0 (no estimate yet) is replaced outright. A batch with no positive
        activation leaves θ unchanged."""
        positive = latent_acts[latent_acts > 0]
        if positive.numel() == 0:
            return
        smallest = positive.min().to(self.threshold.dtype)
        if bool((self.threshold == 0).all()):
            self.threshold.fill_(smallest)
        else:
            self.threshold.mul_(1 - rate).add_(rate * smallest)


class ReluSae(SparseAutoencoder):
    """ReLU SAE trained with an L1 penalty: z = ReLU(pre)."""

    architecture = "relu"

    def _dense_code(self, pre_acts: Tensor) -> Tensor:
        return F.relu(pre_acts)


class MatryoshkaBatchTopKSae(BatchTopKSae):
    """BatchTopK whose training reconstructs from nested prefixes of its latents (see the module docstring)."""

    architecture = "matryoshka_batchtopk"

    def __init__(self, cfg: SaeConfig, *, generator: torch.Generator | None = None) -> None:
        super().__init__(cfg, generator=generator)
        self.prefix_widths: tuple[int, ...] = ()
        """m_1 < … < m_{G−1} (the full width is implicit); `train_sae` sets them from its TrainConfig."""

    def _training_code(self, x_scaled: Tensor) -> TrainingCode:
        z = self._dense_code(self._pre_acts(x_scaled))
        bounds = (0, *self.prefix_widths, self.cfg.d_sae)
        # One matmul per block of latents, summed as the prefixes grow: the same work as z W_dec.
        partial = [z[:, start:end] @ self.W_dec[start:end] for start, end in zip(bounds, bounds[1:])]
        prefixes = list(torch.stack(partial).cumsum(dim=0).unbind())
        return TrainingCode(sparsify_code(z), prefixes[-1], tuple(prefixes[:-1]))


class JumpReluSae(SparseAutoencoder):
    """JumpReLU SAE: z = pre · 1[pre > θ] with a learned θ per latent, trained to a target L0."""

    architecture = "jumprelu"

    def __init__(self, cfg: SaeConfig, *, generator: torch.Generator | None = None) -> None:
        super().__init__(cfg, generator=generator)
        self.log_threshold = nn.Parameter(torch.zeros(cfg.d_sae))
        self.bandwidth = 1e-3
        """ε of the pseudo-derivatives; `train_sae` sets it from TrainConfig.jumprelu_bandwidth."""

    def thresholds(self) -> Tensor:
        return self.log_threshold.exp()

    @torch.no_grad()
    def set_thresholds(self, threshold: Tensor) -> None:
        """θ ≥ 0; a 0 (SAELens's initial JumpReLU threshold) is log θ = −inf, a plain ReLU for that latent."""
        if not bool((threshold >= 0).all()):
            raise ValueError("JumpReLU thresholds must be >= 0")
        self.log_threshold.copy_(threshold.log())

    def _dense_code(self, pre_acts: Tensor) -> Tensor:
        return pre_acts * (pre_acts > self.thresholds())

    def _training_code(self, x_scaled: Tensor) -> TrainingCode:
        pre_acts = self._pre_acts(x_scaled)
        threshold = self.thresholds()
        z = _JumpRelu.apply(pre_acts, threshold, self.bandwidth)
        l0 = _Step.apply(pre_acts, threshold, self.bandwidth).sum(dim=1)  # (n,) differentiable in θ
        return TrainingCode(sparsify_code(z), z @ self.W_dec, l0_per_token=l0)


def _rectangle(pre_acts: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """K((pre − θ) / ε) = 1[|pre − θ| < ε/2], (n, d_sae)."""
    return ((pre_acts - threshold).abs() < bandwidth / 2).to(pre_acts.dtype)


class _JumpRelu(torch.autograd.Function):
    """z = pre · H(pre − θ); ∂z/∂pre = H, ∂z/∂θ := −(θ/ε) K((pre − θ)/ε) (summed over tokens)."""

    @staticmethod
    def forward(ctx, pre_acts: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre_acts, threshold)
        ctx.bandwidth = bandwidth
        return pre_acts * (pre_acts > threshold)

    @staticmethod
    def backward(ctx, grad: Tensor):
        pre_acts, threshold = ctx.saved_tensors
        grad_pre = grad * (pre_acts > threshold)
        kernel = _rectangle(pre_acts, threshold, ctx.bandwidth)
        grad_threshold = -(threshold / ctx.bandwidth) * (kernel * grad).sum(dim=0)
        return grad_pre, grad_threshold, None


class _Step(torch.autograd.Function):
    """H(pre − θ); ∂H/∂pre := 0, ∂H/∂θ := −(1/ε) K((pre − θ)/ε) (summed over tokens)."""

    @staticmethod
    def forward(ctx, pre_acts: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre_acts, threshold)
        ctx.bandwidth = bandwidth
        return (pre_acts > threshold).to(pre_acts.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        pre_acts, threshold = ctx.saved_tensors
        kernel = _rectangle(pre_acts, threshold, ctx.bandwidth)
        return None, -(kernel * grad).sum(dim=0) / ctx.bandwidth, None


SAE_CLASSES: dict[str, type[SparseAutoencoder]] = {
    cls.architecture: cls for cls in (TopKSae, BatchTopKSae, ReluSae, JumpReluSae, MatryoshkaBatchTopKSae)
}


def build_sae(cfg: SaeConfig, *, generator: torch.Generator | None = None) -> SparseAutoencoder:
    """A freshly initialised SAE of the class `cfg.architecture` names."""
    return SAE_CLASSES[cfg.architecture](cfg, generator=generator)
