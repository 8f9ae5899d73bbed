"""Specification of the SAELens-layout save/load (sae_core.io)."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from sae_core.config import SaeConfig
from sae_core.io import load_sae, save_sae
from sae_core.sae import TopKSae

CFG = SaeConfig(d_in=12, expansion_factor=3, k=4)


def make_sae(input_scale: float = 1.0) -> TopKSae:
    generator = torch.Generator().manual_seed(0)
    sae = TopKSae(CFG, generator=generator)
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(CFG.d_sae, generator=generator) * 0.1)
        sae.b_dec.copy_(torch.randn(CFG.d_in, generator=generator))
        sae.input_scale.fill_(input_scale)
    return sae


def random_x(n: int = 50) -> torch.Tensor:
    """Activations at the model's scale: large, so that a wrong fold shows up."""
    return torch.randn(n, CFG.d_in, generator=torch.Generator().manual_seed(1)) * 40.0 + 5.0


@pytest.mark.parametrize("input_scale", [1.0, 0.025])
def test_round_trip_reproduces_latents_and_reconstruction(tmp_path, input_scale):
    sae, x = make_sae(input_scale), random_x()
    loaded = load_sae(save_sae(sae, tmp_path / "sae"))
    assert loaded.cfg == sae.cfg
    assert float(loaded.input_scale) == 1.0
    before, after = sae(x), loaded(x)
    torch.testing.assert_close(after.sae_out, before.sae_out, rtol=1e-5, atol=1e-5 * x.abs().max().item())
    torch.testing.assert_close(after.latent_acts, before.latent_acts, rtol=1e-5, atol=1e-5)
    assert torch.equal(after.latent_indices.sort(1).values, before.latent_indices.sort(1).values)


def test_saved_weights_reconstruct_with_the_plain_saelens_formula(tmp_path):
    """A loader that knows nothing of input_scale: z = ReLU(TopK((x − b_dec) W_enc + b_enc)),
    x̂ = z W_dec + b_dec on raw activations, must give our reconstruction."""
    s = 0.025
    sae, x = make_sae(s), random_x()
    weights = load_file(save_sae(sae, tmp_path / "sae") / "sae_weights.safetensors")
    assert set(weights) == {"W_enc", "W_dec", "b_enc", "b_dec"}
    # The fold, term by term.
    torch.testing.assert_close(weights["W_enc"], sae.W_enc.detach() * s)
    torch.testing.assert_close(weights["W_dec"], sae.W_dec.detach() / s)
    torch.testing.assert_close(weights["b_dec"], sae.b_dec.detach() / s)
    torch.testing.assert_close(weights["b_enc"], sae.b_enc.detach())

    pre_acts = (x - weights["b_dec"]) @ weights["W_enc"] + weights["b_enc"]
    values, indices = pre_acts.topk(CFG.k, dim=1)
    z = torch.zeros_like(pre_acts).scatter_(1, indices, values.relu())
    external_x_hat = z @ weights["W_dec"] + weights["b_dec"]
    torch.testing.assert_close(external_x_hat, sae(x).sae_out, rtol=1e-5, atol=1e-5 * x.abs().max().item())


def test_cfg_json_has_the_saelens_fields_and_the_callers_metadata(tmp_path):
    metadata = {"model_name": "SmolLM2-135M", "hook_name": "model.layers.3", "layers": [3, 4, 5]}
    folder = save_sae(make_sae(), tmp_path / "sae", metadata=metadata)
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["architecture"] == "topk"
    assert (cfg["d_in"], cfg["d_sae"]) == (12, 36)
    assert cfg["dtype"] == "float32" and cfg["device"] == "cpu"
    assert cfg["apply_b_dec_to_input"] is True
    assert cfg["normalize_activations"] == "none"
    assert cfg["activation_fn"] == "topk" and cfg["activation_fn_kwargs"] == {"k": 4} and cfg["k"] == 4
    assert cfg["metadata"] == metadata
    assert cfg["meta"] == {"model_name": "SmolLM2-135M", "hook_name": "model.layers.3"}


def test_saving_over_an_existing_folder_replaces_it_and_leaves_no_temp_folders(tmp_path):
    folder = tmp_path / "sae"
    save_sae(make_sae(), folder, metadata={"version": 1})
    (folder / "stale.txt").write_text("from the old version")
    save_sae(make_sae(), folder, metadata={"version": 2})
    assert sorted(path.name for path in folder.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    assert json.loads((folder / "cfg.json").read_text())["metadata"] == {"version": 2}
    assert [path.name for path in tmp_path.iterdir()] == ["sae"]


def test_unserialisable_metadata_raises_and_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="metadata"):
        save_sae(make_sae(), tmp_path / "sae", metadata={"tensor": torch.zeros(1)})
    assert list(tmp_path.iterdir()) == []


def test_missing_folder_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_sae(tmp_path / "nowhere")


@pytest.mark.parametrize("missing", ["cfg.json", "sae_weights.safetensors"])
def test_missing_file_raises_file_not_found_naming_it(tmp_path, missing):
    folder = save_sae(make_sae(), tmp_path / "sae")
    (folder / missing).unlink()
    with pytest.raises(FileNotFoundError, match=missing):
        load_sae(folder)


def test_weights_of_the_wrong_shape_raise_value_error(tmp_path):
    folder = save_sae(make_sae(), tmp_path / "sae")
    weights = load_file(folder / "sae_weights.safetensors")
    weights["W_dec"] = weights["W_dec"][:-1].contiguous()
    save_file(weights, folder / "sae_weights.safetensors")
    with pytest.raises(ValueError, match="W_dec"):
        load_sae(folder)


def test_unsupported_architecture_raises_value_error(tmp_path):
    folder = save_sae(make_sae(), tmp_path / "sae")
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["architecture"] = "gated"
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="architecture"):
        load_sae(folder)


def test_loading_an_sae_that_does_not_subtract_b_dec_from_its_input(tmp_path):
    """apply_b_dec_to_input = false means pre = x W_enc + b_enc; load must fold b_dec into b_enc."""
    sae, x = make_sae(), random_x()
    folder = save_sae(sae, tmp_path / "sae")
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["apply_b_dec_to_input"] = False
    (folder / "cfg.json").write_text(json.dumps(cfg))
    weights = load_file(folder / "sae_weights.safetensors")

    loaded = load_sae(folder)
    expected_pre = x @ weights["W_enc"] + weights["b_enc"]
    values, _ = expected_pre.topk(CFG.k, dim=1)
    top_acts = loaded.encode(x).top_acts
    torch.testing.assert_close(top_acts.sort(1).values, values.relu().sort(1).values, rtol=1e-5, atol=1e-4)
