"""Specification of the TopK SAE model (sae_core.sae), its config and its metrics."""

import math

import pytest
import torch

from sae_core.architectures import build_sae
from sae_core.config import SaeConfig, TrainConfig
from sae_core.metrics import dead_fraction, evaluate_sae, fvu, l0
from sae_core.sae import TopKSae

D_IN, EXPANSION, K = 16, 4, 5
D_SAE = D_IN * EXPANSION


def make_sae(seed: int = 0) -> TopKSae:
    cfg = SaeConfig(d_in=D_IN, expansion_factor=EXPANSION, k=K)
    sae = TopKSae(cfg, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():  # non-trivial biases so tests exercise them
        sae.b_enc.copy_(torch.randn(D_SAE, generator=torch.Generator().manual_seed(seed + 1)) * 0.1)
        sae.b_dec.copy_(torch.randn(D_IN, generator=torch.Generator().manual_seed(seed + 2)))
    return sae


def random_x(n: int = 64, seed: int = 3) -> torch.Tensor:
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(seed)) * 2.0 + 0.5


def dense_reference(sae: TopKSae, x: torch.Tensor) -> torch.Tensor:
    """x̂ = (z W_dec + b_dec) / s with z the full (n, d_sae) code: the formula, written densely."""
    return (sae.dense_latents(x) @ sae.W_dec + sae.b_dec) / sae.input_scale


# ---- config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"d_in": 0}, "d_in"),
        ({"d_in": 8, "expansion_factor": 0}, "expansion_factor"),
        ({"d_in": 8, "expansion_factor": 2, "k": 17}, "k"),
        ({"d_in": 8, "k": 0}, "k"),
        ({"d_in": 8, "architecture": "gated"}, "architecture"),
    ],
)
def test_bad_sae_config_raises_value_error_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SaeConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"batch_size": 1}, "batch_size"),
        ({"total_tokens": 0}, "total_tokens"),
        ({"lr": -1.0}, "lr"),
        ({"auxk_alpha": -0.1}, "auxk_alpha"),
        ({"dead_tokens_threshold": 0}, "dead_tokens_threshold"),
        ({"b_dec_init": "zeros"}, "b_dec_init"),
        ({"log_every": 0}, "log_every"),
        ({"optimizer": "sgd"}, "optimizer"),
        ({"schedule_free_beta": 1.0}, "schedule_free_beta"),
    ],
)
def test_bad_train_config_raises_value_error_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**kwargs)


def test_d_sae_is_d_in_times_expansion_and_default_lr_follows_the_width_rule_of_each_optimizer():
    cfg = SaeConfig(d_in=576, expansion_factor=8)
    assert cfg.d_sae == 4608
    assert TrainConfig().optimizer == "schedule_free_adam"
    for optimizer, peak in (("schedule_free_adam", 8e-3), ("adam", 2e-3)):
        train_cfg = TrainConfig(optimizer=optimizer)
        assert train_cfg.resolved_lr(2**12) == pytest.approx(peak)
        assert train_cfg.resolved_lr(2**14) == pytest.approx(peak)
        assert train_cfg.resolved_lr(2**16) == pytest.approx(peak / 2)
    signum = TrainConfig(optimizer="schedule_free_signum")
    assert signum.resolved_lr(2**12) == pytest.approx(1e-2)
    assert signum.resolved_lr(2**16) == pytest.approx(2.5e-3)
    assert TrainConfig(lr=1e-3).resolved_lr(2**16) == 1e-3


# ---- initialisation and encoding --------------------------------------------------------------------


def test_init_has_unit_norm_decoder_rows_tied_encoder_and_zero_biases():
    sae = TopKSae(SaeConfig(d_in=D_IN, expansion_factor=EXPANSION, k=K))
    assert sae.W_enc.shape == (D_IN, D_SAE) and sae.W_dec.shape == (D_SAE, D_IN)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(D_SAE))
    torch.testing.assert_close(sae.W_enc, sae.W_dec.T)
    assert sae.W_enc.data_ptr() != sae.W_dec.data_ptr()  # a copy, not shared storage
    assert torch.count_nonzero(sae.b_enc) == 0 and torch.count_nonzero(sae.b_dec) == 0
    assert float(sae.input_scale) == 1.0


@pytest.mark.parametrize("architecture", ["topk", "batchtopk", "relu"])
def test_parameters_and_their_training_gradients_are_contiguous(architecture):
    """The fused optimiser kernels walk a parameter, its gradient and its state as flat memory; in
    torch 2.13 a non-contiguous parameter (say W_enc stored transposed) gets its elements mispaired."""
    cfg = SaeConfig(d_in=D_IN, expansion_factor=EXPANSION, k=None if architecture == "relu" else K,
                    architecture=architecture)
    sae = build_sae(cfg, generator=torch.Generator().manual_seed(0))
    sae(random_x(), dead_mask=torch.ones(D_SAE, dtype=torch.bool)).fvu.backward()
    for name, parameter in sae.named_parameters():
        assert parameter.is_contiguous() and parameter.grad.is_contiguous(), name


def test_init_is_reproducible_with_a_seeded_generator():
    first, second = make_sae(seed=7), make_sae(seed=7)
    torch.testing.assert_close(first.W_dec, second.W_dec, rtol=0, atol=0)
    assert not torch.equal(first.W_dec, make_sae(seed=8).W_dec)


def test_encode_keeps_the_k_largest_pre_activations_relud():
    sae, x = make_sae(), random_x()
    top_acts, top_indices = sae.encode(x)
    assert top_acts.shape == top_indices.shape == (len(x), K)
    assert top_indices.dtype == torch.long
    assert (top_acts >= 0).all()
    pre_acts = (x - sae.b_dec) @ sae.W_enc + sae.b_enc  # input_scale is 1
    expected_values, _ = pre_acts.topk(K, dim=1)
    torch.testing.assert_close(top_acts.sort(dim=1).values, expected_values.relu().sort(dim=1).values)
    gathered = pre_acts.gather(1, top_indices).relu()
    torch.testing.assert_close(top_acts, gathered)


def test_dense_latents_have_at_most_k_nonzeros_and_exactly_k_when_pre_acts_are_positive():
    sae, x = make_sae(), random_x()
    dense = sae.dense_latents(x)
    assert dense.shape == (len(x), D_SAE)
    assert ((dense != 0).sum(dim=1) <= K).all()
    with torch.no_grad():
        sae.b_enc.fill_(100.0)  # every pre-activation positive: TopK keeps exactly k
    assert ((sae.dense_latents(x) != 0).sum(dim=1) == K).all()


def test_sparse_decode_matches_the_dense_reference():
    sae, x = make_sae(), random_x()
    with torch.no_grad():
        sae.input_scale.fill_(0.37)
    top_acts, top_indices = sae.encode(x)
    torch.testing.assert_close(sae.decode(top_acts, top_indices), dense_reference(sae, x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae(x).sae_out, dense_reference(sae, x), rtol=1e-5, atol=1e-5)


def test_input_of_wrong_width_raises_value_error():
    with pytest.raises(ValueError, match="d_in=16"):
        make_sae().encode(torch.zeros(4, D_IN + 1))


# ---- forward: fvu and input scaling -----------------------------------------------------------------


def test_forward_fvu_is_residual_over_total_sum_of_squares():
    sae, x = make_sae(), random_x()
    out = sae(x)
    expected = ((x - out.sae_out) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    torch.testing.assert_close(out.fvu, expected)
    assert out.fvu.item() == pytest.approx(fvu(x, out.sae_out), rel=1e-5)


def test_input_scale_is_applied_inside_so_outputs_stay_in_model_units():
    """Scaling x by c and dividing input_scale by c must give the same latents and x̂·c."""
    sae, x = make_sae(), random_x()
    reference = sae(x)
    c = 25.0
    with torch.no_grad():
        sae.input_scale.fill_(1 / c)
    scaled = sae(x * c)
    torch.testing.assert_close(scaled.latent_acts, reference.latent_acts, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scaled.sae_out, reference.sae_out * c, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(scaled.fvu, reference.fvu, rtol=1e-5, atol=1e-6)


def test_reparametrize_input_scale_keeps_latents_and_reconstruction():
    sae, x = make_sae(), random_x()
    with torch.no_grad():
        sae.input_scale.fill_(0.2)
    before = sae(x)
    sae.reparametrize_input_scale(1.0)
    after = sae(x)
    assert float(sae.input_scale) == 1.0
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.full((D_SAE,), 5.0))  # rows now 1/s
    torch.testing.assert_close(after.latent_acts, before.latent_acts, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(after.sae_out, before.sae_out, rtol=1e-5, atol=1e-5)


# ---- AuxK ---------------------------------------------------------------------------------------------


def test_auxk_loss_is_zero_without_dead_latents():
    sae, x = make_sae(), random_x()
    assert sae(x).auxk_loss.item() == 0.0
    assert sae(x, dead_mask=torch.zeros(D_SAE, dtype=torch.bool)).auxk_loss.item() == 0.0


def test_auxk_loss_is_positive_with_dead_latents_and_trains_only_them():
    sae, x = make_sae(), random_x()
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[: D_SAE // 2] = True
    out = sae(x, dead_mask=dead)
    assert out.auxk_loss.item() > 0
    out.auxk_loss.backward()
    encoder_grad_norm_per_latent = sae.W_enc.grad.norm(dim=0)
    assert encoder_grad_norm_per_latent[dead].sum() > 0
    assert encoder_grad_norm_per_latent[~dead].sum() == 0  # live latents only feed the (detached) target


def test_auxk_loss_matches_its_formula_for_a_few_dead_latents():
    sae, x = make_sae(), random_x()
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[[3, 10, 40]] = True  # 3 dead < d_in // 2 = 8: k_aux = 3, scale = 3 / 8
    out = sae(x, dead_mask=dead)
    pre_acts = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    residual_hat = pre_acts[:, dead].relu() @ sae.W_dec[dead]
    residual = x - out.sae_out
    expected = (3 / 8) * ((residual - residual_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    torch.testing.assert_close(out.auxk_loss, expected, rtol=1e-4, atol=1e-7)


# ---- decoder geometry -------------------------------------------------------------------------------


def test_gradient_projection_removes_the_component_parallel_to_each_decoder_row():
    sae, x = make_sae(), random_x()
    sae(x).fvu.backward()
    raw_grad = sae.W_dec.grad.clone()
    sae.remove_gradient_parallel_to_decoder_directions()
    parallel = (sae.W_dec.grad * sae.W_dec).sum(dim=1)
    torch.testing.assert_close(parallel, torch.zeros(D_SAE), rtol=0, atol=1e-6)
    # Only the parallel part was removed: the orthogonal part is unchanged.
    raw_parallel = (raw_grad * sae.W_dec).sum(dim=1, keepdim=True) * sae.W_dec
    torch.testing.assert_close(sae.W_dec.grad, raw_grad - raw_parallel, rtol=1e-5, atol=1e-7)
    assert raw_parallel.abs().max() > 1e-4  # the test had something to remove


def test_gradient_projection_without_a_gradient_raises():
    with pytest.raises(ValueError, match="backward"):
        make_sae().remove_gradient_parallel_to_decoder_directions()


def test_set_decoder_norm_to_unit_norm_normalises_every_row():
    sae = make_sae()
    with torch.no_grad():
        sae.W_dec.mul_(torch.linspace(0.1, 10, D_SAE)[:, None])
    sae.set_decoder_norm_to_unit_norm()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(D_SAE))


# ---- metrics ------------------------------------------------------------------------------------------


def test_fvu_of_perfect_and_of_mean_reconstruction():
    x = random_x()
    assert fvu(x, x) == 0.0
    assert fvu(x, x.mean(0, keepdim=True).expand_as(x)) == pytest.approx(1.0)


def test_l0_counts_positive_activations_and_dead_fraction_counts_zero_fires():
    acts = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 0.5]])
    assert l0(acts) == pytest.approx(1.5)
    assert dead_fraction(torch.tensor([0, 3, 0, 1])) == 0.5


def test_evaluate_sae_in_batches_equals_the_whole_set_formula():
    sae, x = make_sae(), random_x(n=101)
    metrics = evaluate_sae(sae, x, batch_size=16)
    top_acts, top_indices = sae.encode(x)
    x_hat = sae.decode(top_acts, top_indices)
    assert metrics.n_tokens == 101
    assert metrics.fvu == pytest.approx(fvu(x, x_hat), rel=1e-5)
    assert metrics.l0 == pytest.approx(l0(top_acts))
    fire_counts = torch.bincount(top_indices[top_acts > 0], minlength=D_SAE)
    assert metrics.dead_fraction == pytest.approx(dead_fraction(fire_counts))
    assert set(metrics.to_dict()) == {"fvu", "l0", "dead_fraction", "n_tokens"}
    assert math.isfinite(metrics.fvu) and 0 < metrics.fvu


def test_evaluate_sae_rejects_nan_input():
    x = random_x()
    x[5, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        evaluate_sae(make_sae(), x)
