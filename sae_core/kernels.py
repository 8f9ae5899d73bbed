"""The hot path of TopK training: an encoder with a sparse backward, and a decoder with one too.

A TopK SAE step touches every latent only once, in the encoder's forward matmul; everything after
the TopK selection involves just the n·k kept (token, latent) pairs. Plain autograd loses that: the
backward of `topk` scatters its gradient into a dense (n, d_sae) tensor and then runs two dense
matmuls over it, each as costly as the forward. The two autograd Functions here keep the backward
sparse, so its cost is O(n·k·d_in) instead of O(n·d_sae·d_in).

Notation: x (n, d_in) the scaled input, c = x − b_dec its centred form, pre = c W_enc + b_enc
(n, d_sae), I (n, k) the TopK indices of each row of pre, a = ReLU(pre[I]) (n, k) the kept
activations, g (n, k) the gradient of the loss with respect to a. With G the (n, d_sae) matrix that
holds g·1[a > 0] at I and 0 elsewhere,

    ∂L/∂W_enc = cᵀ G              (d_in, d_sae)   a scatter of n·k scaled rows of c
    ∂L/∂b_enc = Σ_t G[t]          (d_sae,)        an index_add of n·k numbers
    ∂L/∂b_dec = −W_enc ∂L/∂b_enc  (d_in,)         as Σ_t ∂L/∂c_t = Σ_t G[t] W_encᵀ = W_enc Σ_t G[t]ᵀ
    ∂L/∂x     =  G W_encᵀ          (n, d_in)       a gather of k encoder columns per token (only if
                                                   x requires a gradient; training data does not)

The decoder y = Σ_s a[t, s] W_dec[I[t, s]] (n, d_in) is an embedding bag; given gy = ∂L/∂y,

    ∂L/∂a[t, s] = gy[t] · W_dec[I[t, s]]                   (n, k)
    ∂L/∂W_dec[j] = Σ_{(t, s): I[t, s] = j} a[t, s] gy[t]    (d_sae, d_in)

Both scatters (cᵀ G and ∂L/∂W_dec) are computed as an embedding bag over the pairs sorted by latent
(`scatter_rows_by_latent`): latent j's bag holds the tokens that selected it. That gathers rows of
a small (n, d_in) matrix and writes every output row once, with no atomics and no (n·k, d_in)
intermediate; on a 2-core AVX2 CPU (n 4096, k 32, d_in 576, d_sae 9216) it took 15 ms, against
~100 ms for PyTorch's embedding-bag weight backward and ~500 ms for index_add_ of the n·k scaled
rows (sparsify's way).

AuxK. `fused_topk_encode` also returns the dense pre-activations, which the AuxK loss reads for the
dead latents. When that loss is present, their gradient D (n, d_sae) arrives dense and is nonzero only
in the (few) dead latents' columns; the backward adds cᵀ D, Σ_t D[t] and D W_encᵀ over those columns.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

_EMBEDDING_BAG_SUM = 0  # the `mode` code of "sum" in aten's embedding-bag ops


class FusedEncoderOutput(NamedTuple):
    """What `fused_topk_encode` computes for a batch of n tokens."""

    top_acts: Tensor
    """ReLU of the k largest pre-activations of each token, (n, k), ≥ 0."""

    top_indices: Tensor
    """Their latent indices, (n, k) int64, distinct within a row, in no particular order."""

    pre_acts: Tensor
    """All pre-activations (x − b_dec) W_enc + b_enc, (n, d_sae); differentiable (for AuxK)."""


def scatter_rows_by_latent(indices: Tensor, weights: Tensor, rows: Tensor, n_latents: int) -> Tensor:
    """out[j] = Σ_{(t, s): indices[t, s] = j} weights[t, s] · rows[t], shape (n_latents, d).

    indices (n, w) int64 in [0, n_latents), weights (n, w), rows (n, d). This is Gᵀ rows for the
    sparse (n, n_latents) matrix G holding `weights` at `indices`; it is computed as an embedding
    bag whose bag j lists the tokens that selected latent j (see the module docstring).
    """
    n_tokens, width = indices.shape
    flat = indices.flatten()
    order = flat.argsort()
    tokens = order // width  # the token of each (token, slot) pair, in latent-major order
    offsets = flat.new_zeros(n_latents + 1)
    torch.cumsum(torch.bincount(flat, minlength=n_latents), dim=0, out=offsets[1:])
    return F.embedding_bag(
        tokens, rows, offsets, mode="sum", per_sample_weights=weights.flatten()[order], include_last_offset=True
    )


def _dot_with_gathered_rows(grad_out: Tensor, indices: Tensor, table: Tensor) -> Tensor:
    """out[t, s] = grad_out[t] · table[indices[t, s]], (n, w): the per-sample-weight gradient of an
    embedding bag. aten's kernel for it reduces each gathered row at once; gathering the (n, w, d)
    rows first and reducing them with torch ops was 2–7× slower on the benchmark shapes."""
    n_tokens, width = indices.shape
    offsets = torch.arange(0, n_tokens * width, width, device=indices.device)
    bag_of_entry = torch.arange(n_tokens, device=indices.device).repeat_interleave(width)
    grad = torch.ops.aten._embedding_bag_per_sample_weights_backward(
        grad_out, table, indices.flatten(), offsets, bag_of_entry, _EMBEDDING_BAG_SUM, -1
    )
    return grad.view(n_tokens, width)


class _SparseDecode(torch.autograd.Function):
    """y = Σ_s a[t, s] W[I[t, s]], (n, d_in), with the sparse backward of the module docstring."""

    @staticmethod
    def forward(ctx: FunctionCtx, top_acts: Tensor, top_indices: Tensor, W_dec: Tensor) -> Tensor:
        ctx.save_for_backward(top_acts, top_indices, W_dec)
        return F.embedding_bag(top_indices, W_dec, per_sample_weights=top_acts, mode="sum")

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: Tensor) -> tuple[Tensor | None, None, Tensor | None]:
        top_acts, top_indices, W_dec = ctx.saved_tensors
        grad_out = grad_out.to(W_dec.dtype).contiguous()
        grad_acts = grad_W_dec = None
        if ctx.needs_input_grad[0]:
            grad_acts = _dot_with_gathered_rows(grad_out, top_indices, W_dec)
        if ctx.needs_input_grad[2]:
            grad_W_dec = scatter_rows_by_latent(top_indices, top_acts, grad_out, W_dec.shape[0])
        return grad_acts, None, grad_W_dec


def sparse_decode(top_acts: Tensor, top_indices: Tensor, W_dec: Tensor) -> Tensor:
    """z W_dec for the sparse code z given by top_acts and top_indices, both (n, w): (n, d_in).

    Equal to F.embedding_bag(top_indices, W_dec, per_sample_weights=top_acts, mode="sum"), with a
    backward whose W_dec gradient is a latent-sorted embedding bag (see the module docstring).
    """
    return _SparseDecode.apply(top_acts, top_indices, W_dec)


class _FusedTopKEncode(torch.autograd.Function):
    """pre = (x − b_dec) W_enc + b_enc; I = TopK_k(pre); a = ReLU(pre[I]), with a sparse backward."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        x: Tensor,
        b_dec: Tensor,
        W_enc: Tensor,
        b_enc: Tensor,
        k: int,
        out: Tensor | None,
        matmul_dtype: torch.dtype,
    ) -> tuple[Tensor, Tensor, Tensor]:
        centred = x - b_dec
        # The one O(n·d_in·d_sae) product, in `matmul_dtype`; the operands are rounded explicitly
        # (and an enclosing autocast kept out) so the product's dtype is the caller's choice.
        with torch.autocast(x.device.type, enabled=False):
            pre_acts = torch.addmm(
                b_enc.to(matmul_dtype), centred.to(matmul_dtype), W_enc.to(matmul_dtype), out=out
            )
        if out is not None:
            ctx.mark_dirty(out)
        top_pre, top_indices = pre_acts.topk(k, dim=1, sorted=False)
        # Back in the input's precision, so the gradients flowing into them stay in it too.
        top_acts = F.relu(top_pre).to(x.dtype)
        ctx.save_for_backward(centred, W_enc, top_acts, top_indices)
        ctx.mark_non_differentiable(top_indices)
        # With no AuxK loss the pre-activations get no gradient: let autograd pass None rather
        # than a dense (n, d_sae) tensor of zeros.
        ctx.set_materialize_grads(False)
        return top_acts, top_indices, pre_acts

    @staticmethod
    @once_differentiable
    def backward(
        ctx: FunctionCtx, grad_top_acts: Tensor | None, _grad_indices: None, grad_pre_acts: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None, None, None, None]:
        centred, W_enc, top_acts, top_indices = ctx.saved_tensors
        need_x, need_b_dec, need_W_enc, need_b_enc, *_ = ctx.needs_input_grad
        d_sae = W_enc.shape[1]

        # G's values: ReLU passes the gradient only where the kept pre-activation was positive.
        # (The pre-activations, and so AuxK's gradient of them, may be in a lower matmul precision
        # than the weights; the weights' gradients are computed in the weights' dtype.)
        kept_grad = None
        if grad_top_acts is not None:
            kept_grad = (grad_top_acts * (top_acts > 0)).to(centred.dtype)
        # AuxK's dense gradient, narrowed to the latents it touches (the dead ones).
        dense_latents = dense_grad = None
        if grad_pre_acts is not None:
            dense_latents = grad_pre_acts.any(dim=0).nonzero().squeeze(1)
            dense_grad = grad_pre_acts[:, dense_latents].to(centred.dtype)

        grad_b_enc = centred.new_zeros(d_sae)
        if kept_grad is not None:
            grad_b_enc.index_add_(0, top_indices.flatten(), kept_grad.flatten())
        if dense_grad is not None:
            grad_b_enc.index_add_(0, dense_latents, dense_grad.sum(dim=0))

        grad_W_enc = None
        if need_W_enc:
            if kept_grad is not None:
                # Transposed into W_enc's row-major layout: a 21 MB copy per step at the benchmark's
                # shape (~5–10 ms). Storing W_enc latent-major would spare it, but torch 2.13's fused
                # CPU Adam makes a non-contiguous gradient contiguous and walks the parameter and its
                # state as flat memory, pairing the wrong elements (measured): parameters stay contiguous.
                grad_W_enc = scatter_rows_by_latent(top_indices, kept_grad, centred, d_sae).T.contiguous()
            else:
                grad_W_enc = torch.zeros_like(W_enc)
            if dense_grad is not None:
                grad_W_enc[:, dense_latents] += centred.T @ dense_grad

        grad_x = None
        if need_x:
            grad_x = centred.new_zeros(centred.shape)
            if kept_grad is not None:
                grad_x += F.embedding_bag(top_indices, W_enc.T.contiguous(), per_sample_weights=kept_grad, mode="sum")
            if dense_grad is not None:
                grad_x += dense_grad @ W_enc[:, dense_latents].T
        grad_b_dec = -(W_enc @ grad_b_enc) if need_b_dec else None
        return grad_x, grad_b_dec, grad_W_enc, grad_b_enc if need_b_enc else None, None, None, None


def fused_topk_encode(
    x: Tensor,
    b_dec: Tensor,
    W_enc: Tensor,
    b_enc: Tensor,
    k: int,
    *,
    pre_acts_out: Tensor | None = None,
    matmul_dtype: torch.dtype | None = None,
) -> FusedEncoderOutput:
    """The TopK encoder, a = ReLU(TopK_k((x − b_dec) W_enc + b_enc)), with a sparse backward.

    x (n, d_in), b_dec (d_in,), W_enc (d_in, d_sae), b_enc (d_sae,), all of one floating dtype.
    Gradients equal those of the same formula under plain autograd, up to float rounding (see the
    module docstring for what is computed instead of the dense products).

    `matmul_dtype`: the precision of the (n, d_sae) product and of the TopK selection on it, e.g.
    bfloat16 on hardware with a bf16 matmul unit; None: the enclosing autocast's dtype if autocast
    is on for x's device, else x's dtype. Everything else stays in x's dtype: the kept activations
    are the rounded pre-activations converted back to it (relative error ≤ 2⁻⁹ in bf16), and the
    backward reads only x − b_dec and W_enc in full precision, so no gradient is rounded.

    `pre_acts_out`: an (n, d_sae) tensor of the matmul dtype, not requiring grad, to write the
    pre-activations into (returned as `pre_acts`, sharing its storage). The backward never reads the
    pre-activations, so a caller may reuse one buffer across training steps and spare the allocator
    a large fresh tensor per step.
    """
    if x.ndim != 2 or W_enc.ndim != 2 or x.shape[1] != W_enc.shape[0]:
        raise ValueError(f"x must be (n, d_in) and W_enc (d_in, d_sae), got {tuple(x.shape)} and {tuple(W_enc.shape)}")
    if not 0 < k <= W_enc.shape[1]:
        raise ValueError(f"k must be in 1..d_sae={W_enc.shape[1]}, got {k}")
    if matmul_dtype is None:
        matmul_dtype = encoder_matmul_dtype(x)
    if not matmul_dtype.is_floating_point:
        raise ValueError(f"matmul_dtype must be a floating-point dtype, got {matmul_dtype}")
    if pre_acts_out is not None and (
        pre_acts_out.shape != (len(x), W_enc.shape[1]) or pre_acts_out.requires_grad or pre_acts_out.dtype != matmul_dtype
    ):
        raise ValueError(
            f"pre_acts_out must be an ({len(x)}, {W_enc.shape[1]}) {matmul_dtype} tensor not requiring grad, got "
            f"{pre_acts_out.dtype} {tuple(pre_acts_out.shape)} (requires_grad={pre_acts_out.requires_grad})"
        )
    return FusedEncoderOutput(*_FusedTopKEncode.apply(x, b_dec, W_enc, b_enc, k, pre_acts_out, matmul_dtype))


def encoder_matmul_dtype(x: Tensor) -> torch.dtype:
    """The dtype the encoder's product of x takes: autocast's lower precision where autocast is on
    for x's device, else x's own dtype."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype
