"""Specification of the SAE architectures beyond TopK (sae_core.architectures): BatchTopK, ReLU + L1,
JumpReLU and Matryoshka BatchTopK.

Each is checked against its formula on a hand-set SAE, trained on low-rank data with a known
answer (rank 8: k = 8 latents suffice), and saved and loaded in the SAELens layout.
"""

import json

import pytest
import torch
from safetensors.torch import load_file

from sae_core.architectures import BatchTopKSae, JumpReluSae, MatryoshkaBatchTopKSae, ReluSae, build_sae
from sae_core.config import SaeConfig, TrainConfig
from sae_core.io import load_sae, save_sae
from sae_core.metrics import evaluate_sae, fvu
from sae_core.sae import TopKSae, sparsify_code
from sae_core.train import train_sae

D_IN, RANK, K = 32, 8, 8


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def low_rank_data(n: int = 4096, code_seed: int = 0, offset: float = 3.0) -> torch.Tensor:
    """Rank-8 Gaussian in 32 dimensions (one fixed basis), shifted away from the origin."""
    basis = torch.randn(RANK, D_IN, generator=torch.Generator().manual_seed(1))
    codes = torch.randn(n, RANK, generator=torch.Generator().manual_seed(100 + code_seed))
    return codes @ basis + offset


def sae_config(architecture: str, **kwargs) -> SaeConfig:
    kwargs.setdefault("k", None if architecture == "relu" else K)
    return SaeConfig(d_in=D_IN, expansion_factor=4, architecture=architecture, **kwargs)


def hand_set_sae(architecture: str, seed: int = 0):
    """A random SAE with non-trivial biases, input scale and (BatchTopK) threshold."""
    generator = torch.Generator().manual_seed(seed)
    sae = build_sae(sae_config(architecture), generator=generator)
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(sae.cfg.d_sae, generator=generator) * 0.1)
        sae.b_dec.copy_(torch.randn(D_IN, generator=generator))
        sae.input_scale.fill_(0.05)
        if sae.thresholds() is not None:
            sae.set_thresholds(torch.full((sae.cfg.d_sae,), 0.5))
    return sae.eval()


def random_x(n: int = 64, seed: int = 3) -> torch.Tensor:
    """Activations at the model's scale (about 20): a wrong input-scale fold shows up."""
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(seed)) * 20.0 + 5.0


def pre_activations(sae, x: torch.Tensor) -> torch.Tensor:
    return (x * sae.input_scale - sae.b_dec) @ sae.W_enc + sae.b_enc


# ---- configuration ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"d_in": 8, "architecture": "gated"}, "architecture"),
        ({"d_in": 8, "architecture": "relu", "k": 4}, "k"),
        ({"d_in": 8, "expansion_factor": 2, "k": 17, "architecture": "batchtopk"}, "k"),
        ({"d_in": 8, "k": True}, "k"),
        ({"d_in": 8, "k": 2.5}, "k"),
        ({"d_in": 8, "expansion_factor": 1.5}, "expansion_factor"),
        ({"d_in": 8, "expansion_factor": True}, "expansion_factor"),
        ({"d_in": -3, "architecture": "relu"}, "d_in"),
    ],
)
def test_nonsensical_width_k_or_architecture_raises_value_error_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SaeConfig(**kwargs)


def test_k_defaults_to_32_where_the_architecture_has_one_and_stays_none_for_relu():
    assert SaeConfig(d_in=8).k == 32
    assert SaeConfig(d_in=8, architecture="batchtopk").k == 32
    assert SaeConfig(d_in=8, architecture="relu").k is None
    assert SaeConfig(d_in=8) == SaeConfig(d_in=8, k=32)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"l1_coefficient": -0.1}, "l1_coefficient"),
        ({"l1_coefficient": float("nan")}, "l1_coefficient"),
        ({"threshold_ema_rate": 0.0}, "threshold_ema_rate"),
        ({"threshold_ema_rate": 1.5}, "threshold_ema_rate"),
        ({"checkpoint_every": 0}, "checkpoint_every"),
        ({"checkpoint_dir": ""}, "checkpoint_dir"),
        ({"batch_size": True}, "batch_size"),
    ],
)
def test_bad_train_config_raises_value_error_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**kwargs)


def test_build_sae_picks_the_class_of_the_architecture_and_classes_refuse_other_configs():
    assert type(build_sae(sae_config("topk"))) is TopKSae
    assert type(build_sae(sae_config("batchtopk"))) is BatchTopKSae
    assert type(build_sae(sae_config("relu"))) is ReluSae
    with pytest.raises(ValueError, match="architecture"):
        TopKSae(sae_config("relu"))


# ---- the activations, against their formulas -----------------------------------------------------------


def test_batchtopk_training_keeps_the_k_times_n_largest_activations_of_the_whole_batch():
    sae, x = hand_set_sae("batchtopk").train(), random_x()
    relu_pre = pre_activations(sae, x).relu()
    dense = sae.dense_latents(x)
    n_kept = K * len(x)
    assert int((dense > 0).sum()) == n_kept  # every pre-activation kept is positive here
    smallest_kept = dense[dense > 0].min()
    assert (relu_pre[dense == 0] <= smallest_kept).all()
    torch.testing.assert_close(dense[dense > 0], relu_pre[dense > 0])
    per_token = (dense > 0).sum(dim=1)
    assert per_token.min() < K < per_token.max()  # a shared budget, not k per token


def test_batchtopk_inference_is_a_jumprelu_at_the_threshold():
    sae, x = hand_set_sae("batchtopk"), random_x()
    with torch.no_grad():
        sae.threshold.copy_(torch.linspace(0.0, 2.0, sae.cfg.d_sae))  # per-latent, as SAELens allows
    pre = pre_activations(sae, x)
    expected = pre.relu() * (pre > sae.threshold)
    torch.testing.assert_close(sae.dense_latents(x), expected)
    torch.testing.assert_close(sae(x).sae_out, (expected @ sae.W_dec + sae.b_dec) / sae.input_scale)


def test_batchtopk_threshold_starts_at_the_first_batch_minimum_then_follows_the_moving_average():
    sae = build_sae(sae_config("batchtopk"))
    sae.update_threshold(torch.tensor([[0.0, 0.4], [0.9, 0.0]]), rate=0.1)
    torch.testing.assert_close(sae.threshold, torch.full((sae.cfg.d_sae,), 0.4))
    sae.update_threshold(torch.tensor([[1.4, 2.0]]), rate=0.1)
    torch.testing.assert_close(sae.threshold, torch.full((sae.cfg.d_sae,), 0.9 * 0.4 + 0.1 * 1.4))
    sae.update_threshold(torch.zeros(3, 2), rate=0.1)  # nothing fired: no evidence, no change
    torch.testing.assert_close(sae.threshold, torch.full((sae.cfg.d_sae,), 0.9 * 0.4 + 0.1 * 1.4))


def test_relu_code_is_the_relu_of_the_pre_activations():
    sae, x = hand_set_sae("relu"), random_x()
    torch.testing.assert_close(sae.dense_latents(x), pre_activations(sae, x).relu())


@pytest.mark.parametrize("architecture", ["topk", "batchtopk", "relu"])
def test_l1_loss_is_the_decoder_norm_weighted_l1_of_the_code(architecture):
    sae, x = hand_set_sae(architecture), random_x()
    with torch.no_grad():
        sae.W_dec.mul_(torch.linspace(0.5, 3.0, sae.cfg.d_sae)[:, None])
    z = sae.dense_latents(x)
    expected = (z * sae.W_dec.norm(dim=1)).sum(dim=1).mean()
    torch.testing.assert_close(sae(x).l1_loss, expected)


@pytest.mark.parametrize("architecture", ["batchtopk", "relu"])
def test_a_variable_width_code_is_exact_padded_with_zeros_and_distinct_per_token(architecture):
    sae, x = hand_set_sae(architecture), random_x()
    dense = sae.dense_latents(x)
    top_acts, top_indices = sae.encode(x)
    active_per_token = (dense > 0).sum(dim=1)
    assert top_acts.shape == top_indices.shape == (len(x), int(active_per_token.max()))
    assert active_per_token.min() < top_acts.shape[1]  # some tokens carry padding...
    assert ((top_acts > 0).sum(dim=1) == active_per_token).all()  # ...which is zero
    assert (top_indices.sort(dim=1).values.diff(dim=1) > 0).all()
    rebuilt = torch.zeros_like(dense).scatter_(1, top_indices, top_acts)
    torch.testing.assert_close(rebuilt, dense, rtol=0, atol=0)
    reference = (dense @ sae.W_dec + sae.b_dec) / sae.input_scale
    torch.testing.assert_close(sae.decode(top_acts, top_indices), reference, rtol=1e-5, atol=1e-3)


def test_sparsify_code_of_an_all_zero_code_keeps_one_zero_column():
    code = sparsify_code(torch.zeros(3, 5))
    assert code.top_acts.shape == (3, 1) and (code.top_acts == 0).all()


@pytest.mark.parametrize("architecture", ["batchtopk", "relu"])
def test_evaluate_sae_across_batches_of_different_code_widths_equals_the_whole_set(architecture):
    sae, x = hand_set_sae(architecture), random_x(n=101)
    metrics = evaluate_sae(sae, x, batch_size=16)
    dense = sae.dense_latents(x)
    assert metrics.fvu == pytest.approx(fvu(x, sae(x).sae_out), rel=1e-5)
    assert metrics.l0 == pytest.approx(float((dense > 0).sum(dim=1).double().mean()))
    assert metrics.dead_fraction == pytest.approx(float(((dense > 0).sum(dim=0) == 0).double().mean()))


# ---- training on data with a known answer -----------------------------------------------------------


@pytest.fixture(scope="module")
def trained():
    """One 100k-token run per architecture on rank-8 data."""
    data = low_rank_data()
    train_cfg = TrainConfig(batch_size=256, total_tokens=100_000, log_every=50, l1_coefficient=0.03)
    architectures = ("batchtopk", "relu", "jumprelu", "matryoshka_batchtopk")
    return data, {arch: train_sae(data, sae_config(arch), train_cfg) for arch in architectures}


@pytest.mark.parametrize("architecture", ["batchtopk", "relu", "jumprelu", "matryoshka_batchtopk"])
def test_each_architecture_reaches_low_fvu_on_held_out_low_rank_data(trained, architecture):
    _, results = trained
    result = results[architecture]
    assert evaluate_sae(result.sae, low_rank_data(n=2048, code_seed=1)).fvu < 0.05
    assert result.history[0]["fvu"] > 5 * result.history[-1]["fvu"]  # it actually learned
    torch.testing.assert_close(result.sae.W_dec.norm(dim=1), torch.ones(result.sae.cfg.d_sae))
    assert not result.sae.training  # returned ready for inference


def test_batchtopk_inference_l0_averages_k_and_varies_per_token(trained):
    _, results = trained
    sae = results["batchtopk"].sae
    active_per_token = (sae.dense_latents(low_rank_data(n=2048, code_seed=1)) > 0).sum(dim=1).float()
    assert active_per_token.mean().item() == pytest.approx(K, rel=0.15)
    assert active_per_token.std() > 0.5
    assert float(sae.threshold.min()) == float(sae.threshold.max()) > 0
    assert results["batchtopk"].history[-1]["threshold"] == pytest.approx(float(sae.threshold[0]))


def test_jumprelu_learns_its_thresholds_and_holds_l0_near_its_target(trained):
    _, results = trained
    result = results["jumprelu"]
    sae = result.sae
    held_out = low_rank_data(n=2048, code_seed=1)
    assert evaluate_sae(sae, held_out).l0 == pytest.approx(K, rel=0.3)
    assert float(sae.thresholds().std()) > 0  # one threshold per latent, each learned
    assert set(result.history[-1]) == {"step", "tokens", "fvu", "l0", "dead_fraction"}
    z = sae.dense_latents(held_out)
    pre = pre_activations(sae, held_out)
    torch.testing.assert_close(z, pre * (pre > sae.thresholds()))


def test_jumprelu_threshold_gradients_are_the_rectangle_pseudo_derivatives():
    sae = build_sae(sae_config("jumprelu"), generator=torch.Generator().manual_seed(0))
    sae.bandwidth = 0.5
    with torch.no_grad():
        sae.set_thresholds(torch.full((sae.cfg.d_sae,), 1.0))
    x = random_x(n=16) * 0.05
    out = sae(x)
    out.l0_loss.backward()
    pre = pre_activations(sae, x).detach()
    near = ((pre - 1.0).abs() < 0.25).float()  # K((pre − θ)/ε) with θ = 1, ε = 0.5
    # L0 = (1/n) Σ H(pre − θ): ∂/∂θ_j = −(1/ε)(1/n) Σ_t K, and θ = exp(log θ) adds a factor θ = 1.
    torch.testing.assert_close(sae.log_threshold.grad, -(near.sum(dim=0) / 0.5) / len(x))
    assert out.l0_loss.item() == pytest.approx(float((pre > 1.0).float().sum(dim=1).mean()))


def test_a_lower_target_l0_gives_a_sparser_jumprelu():
    data, held_out = low_rank_data(n=2048), low_rank_data(n=1024, code_seed=1)
    train_cfg = TrainConfig(batch_size=256, total_tokens=40_000)
    l0s = [evaluate_sae(train_sae(data, sae_config("jumprelu", k=k), train_cfg).sae, held_out).l0 for k in (4, 16)]
    assert l0s[0] < 0.6 * l0s[1]


def test_matryoshka_prefixes_reconstruct_on_their_own_where_batchtopks_do_not(trained):
    _, results = trained
    held_out = low_rank_data(n=2048, code_seed=1)
    first = TrainConfig().prefix_widths(4 * D_IN)[0]  # 16 of 128 latents

    def prefix_fvu(sae):
        z = sae.dense_latents(held_out)
        z[:, first:] = 0
        x_hat = (z @ sae.W_dec + sae.b_dec) / sae.input_scale
        return fvu(held_out, x_hat)

    assert isinstance(results["matryoshka_batchtopk"].sae, MatryoshkaBatchTopKSae)
    assert prefix_fvu(results["matryoshka_batchtopk"].sae) < 0.5 * prefix_fvu(results["batchtopk"].sae)
    assert "nested_fvu" in results["matryoshka_batchtopk"].history[-1]


def test_relu_history_reports_l1_and_l0_and_no_auxk(trained):
    _, results = trained
    record = results["relu"].history[-1]
    assert set(record) == {"step", "tokens", "fvu", "l1_loss", "l0", "dead_fraction"}
    assert record["l0"] > 0 and record["l1_loss"] > 0


def test_relu_l0_falls_as_the_l1_coefficient_rises():
    data = low_rank_data(n=2048)
    held_out = low_rank_data(n=1024, code_seed=1)
    l0s = []
    for l1 in (0.01, 0.1, 1.0):
        train_cfg = TrainConfig(batch_size=256, total_tokens=40_000, l1_coefficient=l1)
        result = train_sae(data, sae_config("relu"), train_cfg)
        l0s.append(evaluate_sae(result.sae, held_out).l0)
    assert l0s[0] > 1.3 * l0s[1] > 1.3 * 1.3 * l0s[2]


def test_relu_training_gets_no_auxk_even_with_dead_latents():
    data = low_rank_data(n=1024)
    cfg = TrainConfig(batch_size=128, total_tokens=12_800, dead_tokens_threshold=512, l1_coefficient=1.0)
    history = train_sae(data, sae_config("relu"), cfg).history
    assert any(record["dead_fraction"] > 0 for record in history)
    assert all("auxk_loss" not in record for record in history)


def test_transfer_from_a_topk_sae_into_batchtopk_copies_the_weights(trained):
    data, _ = trained
    topk = train_sae(data, sae_config("topk"), TrainConfig(batch_size=256, total_tokens=2_560)).sae
    frozen = TrainConfig(batch_size=64, total_tokens=64, lr=1e-12)
    tuned = train_sae(data, sae_config("batchtopk"), frozen, init=topk).sae
    assert isinstance(tuned, BatchTopKSae)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        torch.testing.assert_close(getattr(tuned, name), getattr(topk, name), rtol=1e-5, atol=1e-6)


# ---- save and load ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("architecture", "saelens_architecture"),
    [("topk", "topk"), ("batchtopk", "jumprelu"), ("relu", "standard"), ("jumprelu", "jumprelu"),
     ("matryoshka_batchtopk", "jumprelu")],
)
def test_save_load_round_trip_reproduces_codes_and_reconstructions(tmp_path, architecture, saelens_architecture):
    sae, x = hand_set_sae(architecture), random_x()
    folder = save_sae(sae, tmp_path / "sae")
    assert json.loads((folder / "cfg.json").read_text())["architecture"] == saelens_architecture
    loaded = load_sae(folder)
    assert type(loaded) is type(sae) and loaded.cfg == sae.cfg and not loaded.training
    assert float(loaded.input_scale) == 1.0
    torch.testing.assert_close(loaded.dense_latents(x), sae.dense_latents(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loaded(x).sae_out, sae(x).sae_out, rtol=1e-5, atol=1e-5 * x.abs().max().item())


@pytest.mark.parametrize("architecture", ["batchtopk", "relu", "jumprelu", "matryoshka_batchtopk"])
def test_saved_weights_reconstruct_with_the_plain_saelens_formula(tmp_path, architecture):
    """A loader that knows nothing of input scales or BatchTopK: pre = (x − b_dec) W_enc + b_enc,
    z = ReLU(pre) · 1[pre > threshold] (JumpReLU) or ReLU(pre) (standard), x̂ = z W_dec + b_dec."""
    sae, x = hand_set_sae(architecture), random_x()
    weights = load_file(save_sae(sae, tmp_path / "sae") / "sae_weights.safetensors")
    pre = (x - weights["b_dec"]) @ weights["W_enc"] + weights["b_enc"]
    if architecture != "relu":
        assert set(weights) == {"W_enc", "W_dec", "b_enc", "b_dec", "threshold"}
        torch.testing.assert_close(weights["threshold"], torch.full((sae.cfg.d_sae,), 0.5))
        z = pre.relu() * (pre > weights["threshold"])
    else:
        assert set(weights) == {"W_enc", "W_dec", "b_enc", "b_dec"}
        z = pre.relu()
    external_x_hat = z @ weights["W_dec"] + weights["b_dec"]
    torch.testing.assert_close(external_x_hat, sae(x).sae_out, rtol=1e-5, atol=1e-5 * x.abs().max().item())


def test_cfg_json_of_batchtopk_keeps_k_and_relu_has_none(tmp_path):
    batchtopk = json.loads((save_sae(hand_set_sae("batchtopk"), tmp_path / "b") / "cfg.json").read_text())
    relu = json.loads((save_sae(hand_set_sae("relu"), tmp_path / "r") / "cfg.json").read_text())
    assert batchtopk["k"] == K and batchtopk["activation_fn"] == "relu"
    assert "k" not in relu and relu["activation_fn"] == "relu"


def test_a_foreign_jumprelu_save_loads_as_batchtopk_with_a_k_and_as_jumprelu_without(tmp_path):
    sae, x = hand_set_sae("batchtopk"), random_x()
    folder = save_sae(sae, tmp_path / "sae")
    cfg = json.loads((folder / "cfg.json").read_text())
    del cfg["sae_core_architecture"]  # as SAELens writes it
    (folder / "cfg.json").write_text(json.dumps(cfg))
    assert isinstance(load_sae(folder), BatchTopKSae)
    del cfg["k"]
    (folder / "cfg.json").write_text(json.dumps(cfg))
    loaded = load_sae(folder)
    assert isinstance(loaded, JumpReluSae)
    torch.testing.assert_close(loaded.dense_latents(x), sae.dense_latents(x))


def test_a_batchtopk_folder_without_its_threshold_is_refused(tmp_path):
    sae = hand_set_sae("topk")
    folder = save_sae(sae, tmp_path / "sae")
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["architecture"] = "jumprelu"
    cfg["activation_fn"] = "relu"
    del cfg["sae_core_architecture"]
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="threshold"):
        load_sae(folder)


def test_a_legacy_saelens_standard_cfg_with_a_topk_activation_loads_as_topk(tmp_path):
    sae, x = hand_set_sae("topk"), random_x()
    folder = save_sae(sae, tmp_path / "sae")
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["architecture"] = "standard"
    del cfg["k"]  # SAELens < 6 kept k only in activation_fn_kwargs
    (folder / "cfg.json").write_text(json.dumps(cfg))
    loaded = load_sae(folder)
    assert isinstance(loaded, TopKSae) and loaded.cfg.k == K
    torch.testing.assert_close(loaded(x).sae_out, sae(x).sae_out, rtol=1e-5, atol=1e-5 * x.abs().max().item())
