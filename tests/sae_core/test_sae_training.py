"""Specification of SAE training (sae_core.train): convergence, invariants, validation, transfer."""

import pytest
import torch

from sae_core.config import SaeConfig, TrainConfig
from sae_core.io import load_sae, save_sae
from sae_core.metrics import evaluate_sae
from sae_core.initialization import geometric_median
from sae_core.train import train_sae
from sae_core.training_data import sample_group_activations

D_IN, RANK = 32, 8
SAE_CFG = SaeConfig(d_in=D_IN, expansion_factor=4, k=8)


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def low_rank_data(n: int = 4096, code_seed: int = 0, offset: float = 3.0) -> torch.Tensor:
    """Rank-8 Gaussian in 32 dimensions (one fixed basis), shifted away from the origin:
    k = 8 latents can explain it. `code_seed` draws fresh tokens from the same distribution."""
    basis = torch.randn(RANK, D_IN, generator=torch.Generator().manual_seed(1))
    codes = torch.randn(n, RANK, generator=torch.Generator().manual_seed(100 + code_seed))
    return codes @ basis + offset


@pytest.fixture(scope="module")
def trained():
    """One training run shared by the tests that only inspect its result."""
    data = low_rank_data()
    result = train_sae(data, SAE_CFG, TrainConfig(batch_size=256, total_tokens=100_000, log_every=50))
    return data, result


def test_tiny_sae_reaches_low_fvu_on_low_rank_data(trained):
    data, result = trained
    held_out = low_rank_data(n=2048, code_seed=1)
    metrics = evaluate_sae(result.sae, data)
    assert metrics.fvu < 0.1
    assert metrics.l0 <= SAE_CFG.k
    assert result.history[-1]["fvu"] < 0.1
    assert result.history[0]["fvu"] > 5 * result.history[-1]["fvu"]  # it actually learned
    assert evaluate_sae(result.sae, held_out).fvu < 0.1


def test_decoder_rows_are_unit_norm_after_training(trained):
    _, result = trained
    torch.testing.assert_close(result.sae.W_dec.norm(dim=1), torch.ones(SAE_CFG.d_sae))


def test_input_scale_makes_mean_squared_norm_one(trained):
    data, result = trained
    mean_sq_norm = (data * result.sae.input_scale).pow(2).sum(dim=1).mean()
    assert float(mean_sq_norm) == pytest.approx(1.0, rel=1e-4)


def test_history_and_token_count(trained):
    _, result = trained
    steps = -(-100_000 // 256)
    assert result.tokens_seen == steps * 256
    assert [record["step"] for record in result.history] == [*range(50, steps + 1, 50), steps]
    assert set(result.history[0]) == {"step", "tokens", "fvu", "auxk_loss", "dead_fraction"}
    assert result.history[-1]["tokens"] == result.tokens_seen
    assert result.seconds > 0


def test_training_is_deterministic_given_the_seed():
    data = low_rank_data(n=512)
    cfg = TrainConfig(batch_size=64, total_tokens=1024, seed=5)
    first, second = train_sae(data, SAE_CFG, cfg), train_sae(data, SAE_CFG, cfg)
    torch.testing.assert_close(first.sae.W_dec, second.sae.W_dec, rtol=0, atol=0)
    other = train_sae(data, SAE_CFG, TrainConfig(batch_size=64, total_tokens=1024, seed=6))
    assert not torch.equal(first.sae.W_dec, other.sae.W_dec)


def test_dead_latents_are_tracked_and_get_the_auxk_loss():
    """With a short dead threshold, a 128-latent SAE on rank-8 data leaves some latents unused."""
    data = low_rank_data(n=1024)
    cfg = TrainConfig(batch_size=128, total_tokens=12_800, dead_tokens_threshold=512, log_every=10)
    history = train_sae(data, SAE_CFG, cfg).history
    assert any(record["dead_fraction"] > 0 for record in history)
    assert any(record["auxk_loss"] > 0 for record in history)


def test_no_latent_is_dead_before_the_threshold_has_passed():
    data = low_rank_data(n=1024)
    cfg = TrainConfig(batch_size=128, total_tokens=12_800, dead_tokens_threshold=20_000, log_every=10)
    history = train_sae(data, SAE_CFG, cfg).history
    assert all(record["dead_fraction"] == 0 and record["auxk_loss"] == 0 for record in history)


def test_logger_receives_progress_lines():
    lines: list[str] = []
    cfg = TrainConfig(batch_size=64, total_tokens=640, log_every=5)
    train_sae(low_rank_data(n=256), SAE_CFG, cfg, log=lines.append)
    assert "d_sae=128" in lines[0]
    assert any(line.startswith("step 10/10") for line in lines)


# ---- b_dec initialisation ---------------------------------------------------------------------------


def test_geometric_median_ignores_an_outlier_that_drags_the_mean():
    points = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [1000.0, 1000.0]])
    median = geometric_median(points)
    assert median.norm() < 0.5
    assert points.mean(0).norm() > 200


def test_geometric_median_is_where_the_unit_vectors_to_the_points_cancel():
    # The gradient of Σ‖x_t − m‖ is −Σ (x_t − m)/‖x_t − m‖: zero at the minimum. Data off-centre
    # and anisotropic, as activations are.
    generator = torch.Generator().manual_seed(0)
    points = torch.randn(2000, 16, generator=generator) * torch.linspace(0.1, 2.0, 16) + 3.0
    points[:50] += 40.0  # outliers
    median = geometric_median(points, iterations=200).double()
    directions = points.double() - median
    gradient = (directions / directions.norm(dim=1, keepdim=True)).sum(dim=0) / len(points)
    assert gradient.norm() < 1e-6
    assert (median - points.double().mean(0)).norm() > 0.5


@pytest.mark.parametrize("b_dec_init", ["mean", "geometric_median"])
def test_b_dec_starts_at_the_centre_of_the_scaled_data(b_dec_init):
    data = low_rank_data(n=2048)
    result = train_sae(data, SAE_CFG, TrainConfig(batch_size=64, total_tokens=64, lr=1e-12, b_dec_init=b_dec_init))
    centre = (data * result.sae.input_scale).mean(0)
    # Symmetric Gaussian data: mean and geometric median both sit at the offset (within sampling noise).
    assert (result.sae.b_dec.detach() - centre).norm() < 0.1 * centre.norm()


# ---- input validation ---------------------------------------------------------------------------------


def test_nan_activations_raise_value_error():
    data = low_rank_data(n=128)
    data[7, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN/inf"):
        train_sae(data, SAE_CFG, TrainConfig(batch_size=32, total_tokens=64))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (torch.zeros(10, 4, D_IN), "2-D"),
        (torch.randn(10, D_IN + 1), "d_in"),
        (torch.randn(1, D_IN), "at least 2"),
        (torch.ones(10, D_IN), "zero variance"),
    ],
)
def test_malformed_activations_raise_value_error(data, message):
    with pytest.raises(ValueError, match=message):
        train_sae(data, SAE_CFG, TrainConfig(batch_size=8, total_tokens=16))


# ---- layer-wise transfer ----------------------------------------------------------------------------


def test_init_copies_the_trained_weights(trained):
    data, result = trained
    # A vanishing learning rate: the copy is what comes back.
    frozen = TrainConfig(batch_size=64, total_tokens=64, lr=1e-12)
    tuned = train_sae(data * 7.0, SAE_CFG, frozen, init=result.sae)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        torch.testing.assert_close(getattr(tuned.sae, name), getattr(result.sae, name), rtol=1e-5, atol=1e-6)
    # input_scale is refitted to the new data, so the same weights see the same scaled inputs.
    assert float(tuned.sae.input_scale) == pytest.approx(float(result.sae.input_scale) / 7.0, rel=1e-4)
    assert evaluate_sae(tuned.sae, data * 7.0).fvu == pytest.approx(evaluate_sae(result.sae, data).fvu, rel=1e-3)
    assert tuned.sae is not result.sae


def test_init_from_a_saved_and_loaded_sae_undoes_the_scale_fold(trained, tmp_path):
    data, result = trained
    loaded = load_sae(save_sae(result.sae, tmp_path / "sae"))
    tuned = train_sae(data, SAE_CFG, TrainConfig(batch_size=64, total_tokens=64, lr=1e-12), init=loaded)
    torch.testing.assert_close(tuned.sae.W_dec.norm(dim=1), torch.ones(SAE_CFG.d_sae))
    torch.testing.assert_close(tuned.sae.W_dec, result.sae.W_dec, rtol=1e-4, atol=1e-5)
    x = data[:100]
    torch.testing.assert_close(tuned.sae(x).sae_out, result.sae(x).sae_out, rtol=1e-4, atol=1e-4)


def test_init_with_other_dimensions_raises_value_error(trained):
    _, result = trained
    with pytest.raises(ValueError, match="d_sae"):
        train_sae(low_rank_data(n=64), SaeConfig(d_in=D_IN, expansion_factor=2, k=8), TrainConfig(), init=result.sae)


# ---- Group-SAE sampling ---------------------------------------------------------------------------


def test_group_sampler_takes_row_i_from_one_uniformly_random_layer():
    n_tokens, n_layers = 6000, 3
    # Layer l holds the value 10·l + token index, so every sampled row says where it came from.
    token_ids = torch.arange(n_tokens, dtype=torch.float32)[:, None].expand(n_tokens, 4)
    per_layer = [token_ids + 10_000.0 * layer for layer in range(n_layers)]
    sampled = sample_group_activations(per_layer, torch.Generator().manual_seed(0))
    assert sampled.shape == (n_tokens, 4)
    source_layer = torch.div(sampled[:, 0], 10_000.0, rounding_mode="floor").long()
    torch.testing.assert_close(sampled - 10_000.0 * source_layer[:, None].float(), token_ids)
    shares = torch.bincount(source_layer, minlength=n_layers) / n_tokens
    torch.testing.assert_close(shares, torch.full((n_layers,), 1 / n_layers), rtol=0, atol=0.03)
    assert per_layer[0][0, 0] == 0.0  # the input was not modified in place


def test_group_sampler_rejects_layers_of_different_shapes():
    with pytest.raises(ValueError, match="per_layer\\[1\\]"):
        sample_group_activations([torch.zeros(5, 3), torch.zeros(4, 3)], torch.Generator())
    with pytest.raises(ValueError, match="empty"):
        sample_group_activations([], torch.Generator())
