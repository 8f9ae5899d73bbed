"""Sparse autoencoders: the shared model (`SparseAutoencoder`) and the TopK architecture (`TopKSae`).

Every architecture computes

    pre = (x·s − b_dec) W_enc + b_enc                        (n, d_sae)   pre-activations
    z   = σ(pre)                                             (n, d_sae)   sparse code, z ≥ 0
    x̂   = (z W_dec + b_dec) / s                              (n, d_in)    reconstruction

and differs only in the activation σ: TopK here (Gao et al. 2024, σ = ReLU ∘ TopK_k per token),
BatchTopK, ReLU, JumpReLU and Matryoshka BatchTopK in `sae_core.architectures`. `build_sae` there
picks the class from `SaeConfig.architecture`.

Parameter names and shapes follow SAELens: W_enc (d_in, d_sae), b_enc (d_sae,), W_dec (d_sae, d_in),
b_dec (d_in,). Decoder rows are kept at unit norm during training, for every architecture.

Input scaling. The buffer `input_scale` (s, a float32 scalar, default 1) maps the model's activations
into the space the SAE was trained in; the training loop sets it so that E‖x·s‖² = 1, which makes the
learning rate independent of the layer's activation norm. `encode`/`forward` multiply inputs by s and
`decode` divides outputs by s, so callers always work in the model's units. b_dec lives in the scaled
space. FVU is a ratio of two sums of squares and so does not depend on s.

Sparse codes. `encode` returns `EncoderOutput(top_acts, top_indices)`, both (n, w): each token's w
strongest latents. For TopK, w = k. For architectures whose number of active latents varies per
token, w is the largest number active on any token of the batch, and tokens with fewer carry
zero-activation padding entries (on distinct latents, so every row's indices stay distinct). The
code is exact: decoding it gives the same x̂ as the dense code z.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sae_core.config import SaeConfig
from sae_core.kernels import encoder_matmul_dtype, fused_topk_encode, sparse_decode


class EncoderOutput(NamedTuple):
    """The sparse code of a batch: each token's active latents, strongest or TopK-selected."""

    top_acts: Tensor
    """Activations of the kept latents, (n, w), ≥ 0; zero for padding or a ReLU'd negative pre-activation."""

    top_indices: Tensor
    """Indices (into d_sae) of the kept latents, (n, w) int64, distinct within a row."""


class TrainingCode(NamedTuple):
    """What an architecture's training forward computes from x·s, differentiably."""

    code: EncoderOutput
    product: Tensor
    """z W_dec, (n, d_in)."""
    nested_products: tuple[Tensor, ...] = ()
    """Matryoshka: z W_dec over each nested prefix of the latents but the full width, each (n, d_in)."""
    l0_per_token: Tensor | None = None
    """JumpReLU: Σ_j H(pre_tj − θ_j), (n,), differentiable in θ (straight-through)."""


class ForwardOutput(NamedTuple):
    """Everything one training step needs from the SAE."""

    sae_out: Tensor
    """Reconstruction x̂ in the model's units, (n, d_in)."""

    latent_acts: Tensor
    """Activations of the kept latents, (n, w) (w = k for TopK; see the module docstring)."""

    latent_indices: Tensor
    """Indices of the kept latents, (n, w) int64."""

    fvu: Tensor
    """Fraction of variance unexplained on this batch, Σ‖x−x̂‖² / Σ‖x−x̄‖² (scalar)."""

    nested_fvu: Tensor
    """The reconstruction term training minimises: fvu, or for Matryoshka the mean over its nested
    prefixes (the full width included) of each prefix's FVU (scalar)."""

    auxk_loss: Tensor
    """AuxK loss on the dead latents, normalised by the same total variance (scalar; 0 if none dead)."""

    l1_loss: Tensor
    """Decoder-norm-weighted L1 of the code in the scaled space, (1/n) Σ_t Σ_j z_tj ‖W_dec,j‖ (scalar).
    Computed for every architecture; only "relu" trains on it."""

    l0_loss: Tensor
    """JumpReLU: (1/n) Σ_t Σ_j H(pre_tj − θ_j), differentiable in θ (straight-through); 0 otherwise."""


class SparseAutoencoder(nn.Module, ABC):
    """What every architecture shares: parameters, input scaling, decoding, AuxK, decoder geometry.

    A subclass supplies the activation: `_sparse_code` (pre-activations → EncoderOutput) and, where
    the code is not naturally sparse, `_dense_code` (pre-activations → z); see the module docstring.
    """

    architecture: ClassVar[str]
    W_enc: nn.Parameter
    b_enc: nn.Parameter
    W_dec: nn.Parameter
    b_dec: nn.Parameter
    input_scale: Tensor

    def __init__(self, cfg: SaeConfig, *, generator: torch.Generator | None = None) -> None:
        """Random unit-norm decoder rows, encoder = decoder transpose, zero biases, input_scale 1.

        `generator` (a CPU torch.Generator) makes the initialisation reproducible.
        """
        super().__init__()
        if cfg.architecture != self.architecture:
            raise ValueError(
                f"{type(self).__name__} implements architecture {self.architecture!r}, "
                f"but SaeConfig.architecture is {cfg.architecture!r}; use sae_core.architectures.build_sae"
            )
        self.cfg = cfg
        decoder = torch.randn(cfg.d_sae, cfg.d_in, generator=generator)
        decoder /= decoder.norm(dim=1, keepdim=True)
        # Tied initialisation (Gao et al. 2024): fewer latents start dead.
        self.W_enc = nn.Parameter(decoder.T.clone().contiguous())
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.W_dec = nn.Parameter(decoder)
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        self.register_buffer("input_scale", torch.tensor(1.0))

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    # ---- encoding -------------------------------------------------------------------------------

    def _scaled_input(self, x: Tensor) -> Tensor:
        """x·s in the SAE's dtype, after checking x is (n, d_in)."""
        if x.ndim != 2 or x.shape[1] != self.cfg.d_in:
            raise ValueError(
                f"SAE input must have shape (n_tokens, d_in={self.cfg.d_in}), got {tuple(x.shape)}"
            )
        return x.to(self.W_enc.dtype) * self.input_scale

    def _pre_acts(self, x_scaled: Tensor) -> Tensor:
        """Pre-activations (x·s − b_dec) W_enc + b_enc, (n, d_sae)."""
        # addmm, as kernels.fused_topk_encode computes it: training and encode round alike.
        return torch.addmm(self.b_enc, x_scaled - self.b_dec, self.W_enc)

    @abstractmethod
    def _dense_code(self, pre_acts: Tensor) -> Tensor:
        """The code z = σ(pre), (n, d_sae): the architecture's activation."""

    def _sparse_code(self, pre_acts: Tensor) -> EncoderOutput:
        """The code as (n, w) activations and indices; by default the exact sparsification of z."""
        return sparsify_code(self._dense_code(pre_acts))

    def _code_and_product(self, pre_acts: Tensor) -> tuple[EncoderOutput, Tensor]:
        """The sparse code and z W_dec (n, d_in), computed the cheaper way for the architecture.

        By default z is dense and so is the product: one BLAS matmul beats a gather of many rows.
        """
        z = self._dense_code(pre_acts)
        return sparsify_code(z), z @ self.W_dec

    def _training_code(self, x_scaled: Tensor) -> TrainingCode:
        """The sparse code and z W_dec (n, d_in) of x·s, differentiably, for `forward`."""
        return TrainingCode(*self._code_and_product(self._pre_acts(x_scaled)))

    def thresholds(self) -> Tensor | None:
        """The per-latent thresholds θ (d_sae,) of an architecture whose inference is a JumpReLU, else None."""
        return None

    def set_thresholds(self, threshold: Tensor) -> None:
        raise ValueError(f"a {self.architecture!r} SAE has no thresholds")

    def encode(self, x: Tensor) -> EncoderOutput:
        """Sparse code of x (n, d_in); see the module docstring for its width."""
        return self._sparse_code(self._pre_acts(self._scaled_input(x)))

    def dense_latents(self, x: Tensor) -> Tensor:
        """The dense code z of x (n, d_in) as an (n, d_sae) tensor."""
        top_acts, top_indices = self.encode(x)
        dense = top_acts.new_zeros(top_acts.shape[0], self.cfg.d_sae)
        return dense.scatter_(1, top_indices, top_acts)

    # ---- decoding -------------------------------------------------------------------------------

    def _sparse_matmul(self, top_acts: Tensor, top_indices: Tensor) -> Tensor:
        """z W_dec computed from the sparse code, (n, d_in), without materialising z.

        An embedding bag gathers the w decoder rows of each token and sums them weighted by the
        activations: O(n·w·d_in) work instead of O(n·d_sae·d_in), in the backward too
        (kernels.sparse_decode).
        """
        if top_acts.shape != top_indices.shape or top_acts.ndim != 2:
            raise ValueError(
                "top_acts and top_indices must both have shape (n_tokens, k), got "
                f"{tuple(top_acts.shape)} and {tuple(top_indices.shape)}"
            )
        return sparse_decode(top_acts.to(self.W_dec.dtype), top_indices, self.W_dec)

    def decode(self, top_acts: Tensor, top_indices: Tensor) -> Tensor:
        """Reconstruction x̂ = (z W_dec + b_dec) / s in the model's units, (n, d_in)."""
        return (self._sparse_matmul(top_acts, top_indices) + self.b_dec) / self.input_scale

    # ---- training forward -----------------------------------------------------------------------

    def forward(
        self,
        x: Tensor,
        dead_mask: Tensor | None = None,
        *,
        total_variance: Tensor | None = None,
        n_tokens: int | None = None,
    ) -> ForwardOutput:
        """Encode, decode and score a batch x (n, d_in).

        fvu = Σ‖x−x̂‖² / Σ‖x−x̄‖², x̄ the batch mean (computed in the scaled space; s cancels).
        `dead_mask` (d_sae,) bool marks latents that have not fired for a long time; they get the
        AuxK loss (see `_auxk_loss`). l1_loss = (1/n) Σ_t Σ_j z_tj ‖W_dec,j‖ in the scaled space.

        When x is one shard of a larger batch (data-parallel training), pass that batch's
        `total_variance` Σ‖x·s − x̄·s‖² (scaled space, a detached scalar) and its `n_tokens`: the
        numerators stay sums over this shard, so fvu, auxk_loss and l1_loss are then this shard's
        additive share of the whole batch's value, and the shares' gradients sum to its gradient.
        """
        x_scaled = self._scaled_input(x)
        code, product, nested_products, l0_per_token = self._training_code(x_scaled)
        recon_scaled = product + self.b_dec

        residual = x_scaled - recon_scaled
        if total_variance is None:
            total_variance = (x_scaled - x_scaled.mean(dim=0)).pow(2).sum()
        fvu = residual.pow(2).sum() / total_variance
        nested_fvu = fvu
        if nested_products:
            prefix_fvus = [(x_scaled - (p + self.b_dec)).pow(2).sum() / total_variance for p in nested_products]
            nested_fvu = (sum(prefix_fvus) + fvu) / (len(prefix_fvus) + 1)
        auxk_loss = self._auxk_loss(x_scaled, residual.detach(), dead_mask, total_variance)
        decoder_norms = self.W_dec.norm(dim=1)
        n = n_tokens or len(x_scaled)
        l1_loss = (code.top_acts * decoder_norms[code.top_indices]).sum() / n
        l0_loss = l0_per_token.sum() / n if l0_per_token is not None else x_scaled.new_zeros(())
        return ForwardOutput(
            sae_out=recon_scaled / self.input_scale,
            latent_acts=code.top_acts,
            latent_indices=code.top_indices,
            fvu=fvu,
            nested_fvu=nested_fvu,
            auxk_loss=auxk_loss,
            l1_loss=l1_loss,
            l0_loss=l0_loss,
        )

    def _auxk_loss(
        self, x_scaled: Tensor, residual: Tensor, dead_mask: Tensor | None, total_variance: Tensor
    ) -> Tensor:
        """AuxK (Gao et al. 2024): let the dead latents explain what the live ones missed.

        ê = ReLU(TopK_{k_aux} of the dead latents' pre-activations) W_dec   (no b_dec: e has none)
        auxk_loss = scale · Σ‖e − ê‖² / Σ‖x − x̄‖²,   e = x − x̂ (detached),
        k_aux = min(d_in // 2, n_dead)   (the paper's heuristic), scale = min(n_dead / (d_in // 2), 1).
        The scale (from sparsify) fades the loss in as latents die, so it is 0 with none dead.

        The dead latents' pre-activations are recomputed as their own (n, n_dead) product rather
        than read from the encoder's (n, d_sae) ones: the cost, forward and backward, then grows
        with the number of dead latents, and the encoder's backward stays sparse (sae_core.kernels).
        """
        zero = x_scaled.new_zeros(())
        if dead_mask is None:
            return zero
        if dead_mask.shape != (self.cfg.d_sae,) or dead_mask.dtype != torch.bool:
            raise ValueError(
                f"dead_mask must be a bool tensor of shape (d_sae={self.cfg.d_sae},), "
                f"got {dead_mask.dtype} {tuple(dead_mask.shape)}"
            )
        n_dead = int(dead_mask.sum())  # one host sync per step, only when a mask is given
        if n_dead == 0:
            return zero
        k_aux_max = max(self.cfg.d_in // 2, 1)
        k_aux = min(k_aux_max, n_dead)
        scale = min(n_dead / k_aux_max, 1.0)

        dead = dead_mask.nonzero().squeeze(1)  # (n_dead,)
        dead_pre_acts = torch.addmm(self.b_enc[dead], x_scaled - self.b_dec, self.W_enc[:, dead])  # (n, n_dead)
        aux_pre, aux_columns = dead_pre_acts.topk(k_aux, dim=1, sorted=False)
        residual_hat = self._sparse_matmul(F.relu(aux_pre), dead[aux_columns])
        return scale * (residual_hat - residual).pow(2).sum() / total_variance

    # ---- decoder geometry -----------------------------------------------------------------------

    @torch.no_grad()
    def set_decoder_norm_to_unit_norm(self) -> None:
        """Rescale every decoder row W_dec[i] to unit L2 norm."""
        norms = self.W_dec.norm(dim=1, keepdim=True)
        self.W_dec /= norms.clamp_min(torch.finfo(self.W_dec.dtype).tiny)

    @torch.no_grad()
    def remove_gradient_parallel_to_decoder_directions(self) -> None:
        """Project out of each row of W_dec.grad its component along that decoder row.

        g_i ← g_i − (g_i·ŵ_i) ŵ_i with ŵ_i = W_dec[i] / ‖W_dec[i]‖: the step then moves rows along
        the unit sphere, so renormalising afterwards undoes as little of the update as possible.
        """
        if self.W_dec.grad is None:
            raise ValueError("W_dec.grad is None: call backward() before projecting the gradient")
        # (g_i·ŵ_i) ŵ_i = (g_i·w_i / ‖w_i‖²) w_i, with the row dots as a batched (1, d_in) @ (d_in, 1)
        # product and an in-place addcmul: no (d_sae, d_in) temporaries. Each would be a fresh
        # allocation the size of W_dec, page-faulted in on every step (~10 ms each at d_sae 9216).
        W_dec, grad = self.W_dec, self.W_dec.grad
        dots = torch.bmm(grad.unsqueeze(1), W_dec.unsqueeze(2)).view(-1, 1)  # (d_sae, 1): g_i·w_i
        grad.addcmul_(dots / W_dec.norm(dim=1, keepdim=True).square(), W_dec, value=-1)

    @torch.no_grad()
    def reparametrize_input_scale(self, new_scale: float) -> None:
        """Change input_scale to `new_scale` without changing the map x ↦ x̂ (or the latents).

        With t = new_scale / s:  W_enc ← W_enc / t,  W_dec ← W_dec · t,  b_dec ← b_dec · t,  b_enc kept.
        Then (x·s·t − b_dec·t) W_enc / t = (x·s − b_dec) W_enc and (z W_dec t + b_dec t) / (s t) = x̂.
        The pre-activations, and so any threshold on them, are unchanged.
        `new_scale=1` folds the scaling into the weights (what `io.save_sae` writes); decoder rows
        then have norm 1/s.
        """
        if not new_scale > 0:
            raise ValueError(f"new_scale must be positive, got {new_scale!r}")
        ratio = new_scale / float(self.input_scale)
        self.W_enc /= ratio
        self.W_dec *= ratio
        self.b_dec *= ratio
        self.input_scale.fill_(new_scale)


def sparsify_code(z: Tensor) -> EncoderOutput:
    """The exact sparse form of a dense code z (n, d_sae) ≥ 0: each row's w largest entries.

    w = max_t #{j : z_tj > 0} (at least 1), so no active latent is dropped; rows with fewer active
    latents get zero entries on other, distinct latents. Entries come strongest first.
    """
    width = max(int((z > 0).sum(dim=1).max()) if len(z) else 0, 1)
    top_acts, top_indices = z.topk(width, dim=1, sorted=True)
    return EncoderOutput(top_acts, top_indices)


class TopKSae(SparseAutoencoder):
    """TopK SAE (Gao et al. 2024): z = ReLU(TopK_k(pre)), exactly k kept latents per token."""

    architecture = "topk"

    def _sparse_code(self, pre_acts: Tensor) -> EncoderOutput:
        # TopK first, then ReLU on the survivors (as sparsify and SAELens do): a token may use
        # fewer than k latents when fewer than k pre-activations are positive.
        top_pre, top_indices = pre_acts.topk(self.cfg.k, dim=1, sorted=False)
        return EncoderOutput(F.relu(top_pre), top_indices)

    def _dense_code(self, pre_acts: Tensor) -> Tensor:
        top_acts, top_indices = self._sparse_code(pre_acts)
        return top_acts.new_zeros(pre_acts.shape).scatter_(1, top_indices, top_acts)

    def _code_and_product(self, pre_acts: Tensor) -> tuple[EncoderOutput, Tensor]:
        # k ≪ d_sae: gathering k decoder rows per token is far cheaper than the dense matmul.
        code = self._sparse_code(pre_acts)
        return code, self._sparse_matmul(*code)

    def _training_code(self, x_scaled: Tensor) -> TrainingCode:
        # The encoder and TopK as one autograd Function whose backward touches only the k kept
        # latents per token: see sae_core.kernels. (AuxK computes the dead latents' own product.)
        matmul_dtype = encoder_matmul_dtype(x_scaled)
        top_acts, top_indices, _ = fused_topk_encode(
            x_scaled, self.b_dec, self.W_enc, self.b_enc, self.cfg.k,
            pre_acts_out=self._pre_acts_workspace(len(x_scaled), matmul_dtype, x_scaled.device),
            matmul_dtype=matmul_dtype,
        )
        return TrainingCode(EncoderOutput(top_acts, top_indices), self._sparse_matmul(top_acts, top_indices))

    def _pre_acts_workspace(self, n_tokens: int, dtype: torch.dtype, device: torch.device) -> Tensor | None:
        """An (n, d_sae) buffer that every training step of this shape writes its pre-activations into.

        Why: on a CPU each fresh tensor of that size is new memory from the OS, and its page faults
        cost ~50 ms of a ~400 ms step at n 4096, d_sae 9216 (the throughput benchmark's shape). Safe
        because nothing reads a step's pre-activations after its forward: the encoder's backward
        does not, and AuxK's keeps only the indices it selected. None (a fresh tensor) on other
        devices, whose caching allocators already reuse memory.
        """
        if device.type != "cpu":
            return None
        shape = (n_tokens, self.cfg.d_sae)
        workspace = self.__dict__.get("_workspace")
        if workspace is None or workspace.shape != shape or workspace.dtype != dtype:
            workspace = torch.empty(shape, dtype=dtype)
            self.__dict__["_workspace"] = workspace  # a plain attribute: not state, not moved by .to()
        return workspace.detach()  # a fresh alias per step, free of any earlier step's autograd history
