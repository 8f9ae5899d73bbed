"""Specification of sae_core.kernels: the TopK encoder and the sparse decoder with sparse backwards.

The reference everywhere is the same formula written densely and differentiated by plain autograd
(in float64, so the comparison tolerance is tight).
"""

import pytest
import torch
import torch.nn.functional as F

from sae_core.config import SaeConfig
from sae_core.kernels import fused_topk_encode, scatter_rows_by_latent, sparse_decode
from sae_core.sae import TopKSae

N, D_IN, D_SAE, K = 9, 6, 20, 4
TOLERANCE = dict(rtol=1e-10, atol=1e-12)


def tensors(seed: int = 0, enc_bias_shift: float = 0.0) -> dict[str, torch.Tensor]:
    """x, b_dec, W_enc, b_enc, W_dec in float64, all requiring grad. A negative `enc_bias_shift`
    makes some kept pre-activations negative, so the ReLU after TopK has work to do."""
    g = torch.Generator().manual_seed(seed)
    values = {
        "x": torch.randn(N, D_IN, generator=g, dtype=torch.float64),
        "b_dec": torch.randn(D_IN, generator=g, dtype=torch.float64) * 0.3,
        "W_enc": torch.randn(D_IN, D_SAE, generator=g, dtype=torch.float64) * 0.3,
        "b_enc": torch.randn(D_SAE, generator=g, dtype=torch.float64) * 0.1 + enc_bias_shift,
        "W_dec": torch.randn(D_SAE, D_IN, generator=g, dtype=torch.float64),
    }
    return {name: value.requires_grad_() for name, value in values.items()}


def dense_encode(t: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    pre_acts = (t["x"] - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
    top_pre, top_indices = pre_acts.topk(K, dim=1)
    return F.relu(top_pre), top_indices, pre_acts


def training_loss(t: dict[str, torch.Tensor], fused: bool, dead: torch.Tensor | None = None) -> torch.Tensor:
    """‖x − (a W_dec + b_dec)‖² + 0.1 Σa, plus an AuxK-like term on the dead latents' pre-activations."""
    if fused:
        top_acts, top_indices, pre_acts = fused_topk_encode(t["x"], t["b_dec"], t["W_enc"], t["b_enc"], K)
        product = sparse_decode(top_acts, top_indices, t["W_dec"])
    else:
        top_acts, top_indices, pre_acts = dense_encode(t)
        product = top_acts.new_zeros(N, D_SAE).scatter(1, top_indices, top_acts) @ t["W_dec"]
    loss = (t["x"] - product - t["b_dec"]).pow(2).sum() + 0.1 * top_acts.sum()
    if dead is not None:
        aux_pre, _ = pre_acts.masked_fill(~dead, float("-inf")).topk(2, dim=1)
        loss = loss + F.relu(aux_pre).pow(2).sum()
    return loss


def gradients(t: dict[str, torch.Tensor], loss: torch.Tensor) -> dict[str, torch.Tensor]:
    return dict(zip(t, torch.autograd.grad(loss, list(t.values()))))


# ---- forward ---------------------------------------------------------------------------------------


def test_fused_encoder_keeps_the_k_largest_pre_activations_of_each_token_after_relu():
    t = tensors(enc_bias_shift=-1.0)
    top_acts, top_indices, pre_acts = fused_topk_encode(t["x"], t["b_dec"], t["W_enc"], t["b_enc"], K)
    expected_acts, expected_indices, expected_pre = dense_encode(t)

    torch.testing.assert_close(pre_acts, expected_pre, **TOLERANCE)
    order, expected_order = top_indices.argsort(dim=1), expected_indices.argsort(dim=1)
    assert torch.equal(top_indices.gather(1, order), expected_indices.gather(1, expected_order))
    torch.testing.assert_close(top_acts.gather(1, order), expected_acts.gather(1, expected_order), **TOLERANCE)
    assert (top_acts == 0).any(), "the data should exercise the ReLU on negative kept pre-activations"


def test_sparse_decode_equals_the_dense_product_of_the_code_and_the_decoder():
    t = tensors()
    top_acts, top_indices, _ = dense_encode(t)
    dense_code = top_acts.new_zeros(N, D_SAE).scatter(1, top_indices, top_acts)
    torch.testing.assert_close(sparse_decode(top_acts, top_indices, t["W_dec"]), dense_code @ t["W_dec"], **TOLERANCE)


def test_scatter_rows_by_latent_is_the_transposed_sparse_product_with_zero_rows_for_unselected_latents():
    rows = torch.arange(12.0, dtype=torch.float64).view(3, 4)
    indices = torch.tensor([[0, 2], [2, 5], [5, 0]])
    weights = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=torch.float64)
    expected = torch.zeros(7, 4, dtype=torch.float64)
    expected[0] = 1 * rows[0] + 6 * rows[2]
    expected[2] = 2 * rows[0] + 3 * rows[1]
    expected[5] = 4 * rows[1] + 5 * rows[2]
    torch.testing.assert_close(scatter_rows_by_latent(indices, weights, rows, 7), expected, **TOLERANCE)


# ---- backward --------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_auxk", [False, True], ids=["topk-only", "with-auxk-on-dead-latents"])
def test_sparse_backward_gives_the_dense_autograd_gradients_of_every_input(with_auxk):
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[[1, 7, 12, 19]] = True
    t = tensors(enc_bias_shift=-0.5)
    fused = gradients(t, training_loss(t, fused=True, dead=dead if with_auxk else None))
    dense = gradients(t, training_loss(t, fused=False, dead=dead if with_auxk else None))
    for name in t:
        torch.testing.assert_close(fused[name], dense[name], **TOLERANCE, msg=f"gradient of {name}")


def test_fused_encoder_and_sparse_decoder_pass_gradcheck():
    t = tensors(seed=5, enc_bias_shift=-0.5)

    def encode(x, b_dec, W_enc, b_enc):
        top_acts, _, pre_acts = fused_topk_encode(x, b_dec, W_enc, b_enc, K)
        return top_acts, pre_acts

    assert torch.autograd.gradcheck(encode, (t["x"], t["b_dec"], t["W_enc"], t["b_enc"]))
    top_acts, top_indices, _ = dense_encode(t)
    acts = top_acts.detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, w: sparse_decode(a, top_indices, w), (acts, t["W_dec"]))


def test_topk_sae_forward_trains_with_the_gradients_of_its_dense_formula():
    """The model wires the kernels in: its parameter gradients match the dense formula's, AuxK included."""
    cfg = SaeConfig(d_in=D_IN, expansion_factor=D_SAE // D_IN + 1, k=K)
    sae = TopKSae(cfg, generator=torch.Generator().manual_seed(0)).double()
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(D_IN, dtype=torch.float64) * 0.3)
        sae.input_scale.fill_(0.7)
    x = torch.randn(N, D_IN, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    dead = torch.zeros(cfg.d_sae, dtype=torch.bool)
    dead[::3] = True
    out = sae(x, dead_mask=dead)
    fused = torch.autograd.grad(out.fvu + out.auxk_loss, list(sae.parameters()))

    x_scaled = x * sae.input_scale
    pre_acts = (x_scaled - sae.b_dec) @ sae.W_enc + sae.b_enc
    top_pre, top_indices = pre_acts.topk(K, dim=1)
    z = torch.zeros_like(pre_acts).scatter(1, top_indices, F.relu(top_pre))
    residual = x_scaled - (z @ sae.W_dec + sae.b_dec)
    total_variance = (x_scaled - x_scaled.mean(0)).pow(2).sum()
    n_dead = int(dead.sum())
    aux_pre, aux_indices = pre_acts.masked_fill(~dead, float("-inf")).topk(min(D_IN // 2, n_dead), dim=1)
    aux_z = torch.zeros_like(pre_acts).scatter(1, aux_indices, F.relu(aux_pre))
    scale = min(n_dead / (D_IN // 2), 1.0)
    auxk = scale * (aux_z @ sae.W_dec - residual.detach()).pow(2).sum() / total_variance
    dense = torch.autograd.grad(residual.pow(2).sum() / total_variance + auxk, list(sae.parameters()))

    assert float(out.auxk_loss.detach()) > 0, "the test should exercise the AuxK path"
    for (name, _), got, expected in zip(sae.named_parameters(), fused, dense):
        torch.testing.assert_close(got, expected, **TOLERANCE, msg=f"gradient of {name}")


def test_bf16_matmul_selects_on_the_rounded_product_and_returns_activations_in_the_inputs_dtype():
    t = {name: value.detach().float() for name, value in tensors(seed=3, enc_bias_shift=-0.5).items()}
    top_acts, top_indices, pre_acts = fused_topk_encode(
        t["x"], t["b_dec"], t["W_enc"], t["b_enc"], K, matmul_dtype=torch.bfloat16
    )
    bf16 = {name: t[name].bfloat16() for name in ("b_dec", "W_enc", "b_enc")}
    expected_pre = torch.addmm(bf16["b_enc"], (t["x"] - t["b_dec"]).bfloat16(), bf16["W_enc"])
    expected_top, expected_indices = expected_pre.topk(K, dim=1)

    assert pre_acts.dtype == torch.bfloat16 and top_acts.dtype == torch.float32
    torch.testing.assert_close(pre_acts, expected_pre, rtol=0, atol=0)
    order, expected_order = top_indices.argsort(dim=1), expected_indices.argsort(dim=1)
    assert torch.equal(top_indices.gather(1, order), expected_indices.gather(1, expected_order))
    expected_acts = F.relu(expected_top).float().gather(1, expected_order)
    torch.testing.assert_close(top_acts.gather(1, order), expected_acts, rtol=0, atol=0)


@pytest.mark.parametrize("how", ["matmul_dtype", "autocast"])
def test_bf16_encoder_keeps_every_gradient_in_float32_and_close_to_the_float32_one(how):
    """Only the product is rounded: the backward reads x − b_dec and W_enc in fp32, so with the same
    kept latents the gradients differ from fp32's by the activations' bf16 rounding alone."""
    t = {name: value.detach().float().requires_grad_() for name, value in tensors(seed=3).items()}

    def loss(matmul_dtype=None):
        top_acts, top_indices, _ = fused_topk_encode(
            t["x"], t["b_dec"], t["W_enc"], t["b_enc"], K, matmul_dtype=matmul_dtype
        )
        return (t["x"] - sparse_decode(top_acts, top_indices, t["W_dec"])).pow(2).sum(), top_indices

    exact, exact_indices = loss()
    if how == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            rounded, rounded_indices = loss()
    else:
        rounded, rounded_indices = loss(torch.bfloat16)
    assert torch.equal(exact_indices.sort(dim=1).values, rounded_indices.sort(dim=1).values), "same latents kept"
    for (name, got), expected in zip(gradients(t, rounded).items(), gradients(t, exact).values()):
        assert got.dtype == torch.float32 and got.shape == t[name].shape, name
        # bf16 keeps 8 significant bits: errors of a few 2⁻⁹ of the gradient's scale (measured ≤ 0.2%).
        assert (got - expected).abs().max() <= 1e-2 * expected.abs().max(), f"gradient of {name}"


# ---- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x_shape", "k", "message"),
    [((N, D_IN + 1), K, "W_enc"), ((N, D_IN), 0, "k must be"), ((N, D_IN), D_SAE + 1, "k must be")],
)
def test_fused_encoder_refuses_mismatched_shapes_and_impossible_k(x_shape, k, message):
    t = tensors()
    with pytest.raises(ValueError, match=message):
        fused_topk_encode(torch.zeros(x_shape, dtype=torch.float64), t["b_dec"], t["W_enc"], t["b_enc"], k)


def test_fused_encoder_refuses_a_matmul_dtype_that_is_not_floating_point():
    t = tensors()
    with pytest.raises(ValueError, match="matmul_dtype must be a floating-point dtype, got torch.int32"):
        fused_topk_encode(t["x"], t["b_dec"], t["W_enc"], t["b_enc"], K, matmul_dtype=torch.int32)


def test_fused_encoder_refuses_a_pre_activation_buffer_not_in_the_matmul_dtype():
    t = tensors()
    buffer = torch.empty(N, D_SAE, dtype=torch.float64)
    with pytest.raises(ValueError, match="pre_acts_out must be an .* torch.bfloat16 tensor"):
        fused_topk_encode(
            t["x"], t["b_dec"], t["W_enc"], t["b_enc"], K, pre_acts_out=buffer, matmul_dtype=torch.bfloat16
        )


def test_a_later_forward_reusing_the_pre_activation_buffer_leaves_an_earlier_steps_gradients_intact():
    cfg = SaeConfig(d_in=D_IN, expansion_factor=4, k=K)
    sae = TopKSae(cfg, generator=torch.Generator().manual_seed(0)).double()
    x1, x2 = (torch.randn(N, D_IN, dtype=torch.float64, generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    dead = torch.zeros(cfg.d_sae, dtype=torch.bool)
    dead[::2] = True

    def loss(out):
        return out.fvu + out.auxk_loss

    alone = torch.autograd.grad(loss(sae(x1, dead_mask=dead)), list(sae.parameters()))
    first = sae(x1, dead_mask=dead)
    sae(x2, dead_mask=dead)  # overwrites the buffer that held the first batch's pre-activations
    interleaved = torch.autograd.grad(loss(first), list(sae.parameters()))
    for got, expected in zip(interleaved, alone):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
