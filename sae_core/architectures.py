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

Both codes have a varying number of active latents per token; `encode` returns each batch's exact
sparse form (see `sae_core.sae`), and both decode densely (one matmul) because they are not sparse
enough, early in training or under a weak penalty, for a gather to pay.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sae_core.config import SaeConfig
from sae_core.sae import SparseAutoencoder, TopKSae


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


SAE_CLASSES: dict[str, type[SparseAutoencoder]] = {
    cls.architecture: cls for cls in (TopKSae, BatchTopKSae, ReluSae)
}


def build_sae(cfg: SaeConfig, *, generator: torch.Generator | None = None) -> SparseAutoencoder:
    """A freshly initialised SAE of the class `cfg.architecture` names."""
    return SAE_CLASSES[cfg.architecture](cfg, generator=generator)
