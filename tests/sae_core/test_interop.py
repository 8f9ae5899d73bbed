"""Specification of interop with SAELens and sparsify: our saves run in SAELens, theirs run in sae_core.

Every comparison feeds the same random activations to both libraries and asks for the same
reconstruction x̂ (and, where both expose it, the same dense code z) to float tolerance.
"""

import json
import os

import pytest
import torch
from safetensors.torch import save_file

from sae_core.architectures import BatchTopKSae, JumpReluSae, ReluSae
from sae_core.config import SaeConfig
from sae_core.interop import load_saelens_sae, load_sparsify_sae
from sae_core.io import save_sae
from sae_core.sae import TopKSae

# Both libraries reach for the Hugging Face Hub on some paths; these tests must never touch a network.
os.environ["HF_HUB_OFFLINE"] = "1"

D_IN, EXPANSION, K = 16, 4, 4
D_SAE = D_IN * EXPANSION


def random_x(n: int = 64, seed: int = 1) -> torch.Tensor:
    """Activations at a model-like scale (large, off-centre), so a wrong bias or fold shows up."""
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(seed)) * 20.0 + 3.0


def assert_same_reconstruction(actual: torch.Tensor, expected: torch.Tensor, x: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * x.abs().max().item())


def randomise_weights(module: torch.nn.Module, seed: int, names: tuple[str, ...]) -> None:
    """Overwrite parameters with random values: biases non-zero, decoder rows of varied norm."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in names:
            tensor = module.get_parameter(name)
            is_bias = name.rsplit(".", 1)[-1] in ("bias", "b_enc", "b_dec")
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * (0.3 if is_bias else 1.0))


@pytest.fixture(scope="module")
def sae_lens():
    return pytest.importorskip("sae_lens", reason="sae-lens is not installed (pip install -e '.[interop]')")


@pytest.fixture(scope="module")
def sparsify():
    return pytest.importorskip(
        "sparsify", reason="eai-sparsify is not installed (pip install -e '.[interop]')"
    )


# ---- our saves, opened by SAELens -------------------------------------------------------------


def make_our_sae(architecture: str, input_scale: float = 0.05):
    k = None if architecture == "relu" else K
    cfg = SaeConfig(d_in=D_IN, expansion_factor=EXPANSION, k=k, architecture=architecture)
    sae = {"topk": TopKSae, "batchtopk": BatchTopKSae, "relu": ReluSae}[architecture](
        cfg, generator=torch.Generator().manual_seed(0)
    )
    randomise_weights(sae, seed=2, names=("b_enc", "b_dec"))
    with torch.no_grad():
        sae.input_scale.fill_(input_scale)  # not 1, so save_sae's fold is exercised
        if architecture == "batchtopk":
            sae.threshold.fill_(0.5)
        if architecture == "relu":
            sae.b_enc -= 0.5  # keep the code sparse enough that a wrong sign would show
    return sae.eval()


@pytest.mark.parametrize("architecture", ["topk", "batchtopk", "relu"])
def test_our_saved_sae_reconstructs_identically_in_saelens(tmp_path, sae_lens, architecture):
    ours, x = make_our_sae(architecture), random_x()
    theirs = sae_lens.SAE.load_from_disk(save_sae(ours, tmp_path / "sae"))
    expected_class = {"topk": "TopKSAE", "batchtopk": "JumpReLUSAE", "relu": "StandardSAE"}[architecture]
    assert type(theirs).__name__ == expected_class
    with torch.no_grad():
        assert_same_reconstruction(theirs(x), ours(x).sae_out, x)
        their_code, our_code = theirs.encode(x), ours.dense_latents(x)
    torch.testing.assert_close(their_code, our_code, rtol=1e-5, atol=1e-4)
    assert int((our_code > 0).sum()) > 0, "a code with no active latent would make the test vacuous"


# ---- SAELens saves, opened by sae_core ----------------------------------------------------------


def assert_matches_saelens_folder(sae_lens, folder, expected_type) -> None:
    """sae_core and SAELens, each loading `folder`, give the same code and reconstruction."""
    ours, theirs, x = load_saelens_sae(folder), sae_lens.SAE.load_from_disk(folder), random_x()
    assert type(ours) is expected_type
    with torch.no_grad():
        assert_same_reconstruction(ours(x).sae_out, theirs(x), x)
        their_code, our_code = theirs.encode(x), ours.dense_latents(x)
    torch.testing.assert_close(our_code, their_code, rtol=1e-5, atol=1e-4)
    assert int((their_code > 0).sum()) > 0


def test_saelens_topk_sae_loads_and_reconstructs(tmp_path, sae_lens):
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    theirs = TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K))
    randomise_weights(theirs, seed=3, names=("W_enc", "b_enc", "W_dec", "b_dec"))
    theirs.save_model(tmp_path / "sae")
    assert_matches_saelens_folder(sae_lens, tmp_path / "sae", TopKSae)
    assert load_saelens_sae(tmp_path / "sae").cfg == SaeConfig(d_in=D_IN, expansion_factor=EXPANSION, k=K)


@pytest.mark.parametrize("save", ["save_model", "save_inference_model"])
def test_saelens_topk_trained_with_decoder_norm_rescaling_loads_and_reconstructs(tmp_path, sae_lens, save):
    """SAELens's TopK trainer scales pre-activations by ‖W_dec,j‖; `save_model` keeps the flag and
    raw weights, `save_inference_model` folds them. Both must load to SAELens's computation."""
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    cfg = TopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, rescale_acts_by_decoder_norm=True)
    theirs = TopKTrainingSAE(cfg)
    randomise_weights(theirs, seed=4, names=("W_enc", "b_enc", "W_dec", "b_dec"))
    getattr(theirs, save)(tmp_path / "sae")
    assert_matches_saelens_folder(sae_lens, tmp_path / "sae", TopKSae)


def test_saelens_standard_sae_without_b_dec_on_input_loads_and_reconstructs(tmp_path, sae_lens):
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig

    theirs = StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=False))
    randomise_weights(theirs, seed=5, names=("W_enc", "b_enc", "W_dec", "b_dec"))
    with torch.no_grad():
        theirs.b_enc -= 1.0  # a sparse code
    theirs.save_model(tmp_path / "sae")
    assert_matches_saelens_folder(sae_lens, tmp_path / "sae", ReluSae)


def test_saelens_batchtopk_sae_loads_as_batchtopk_with_its_k(tmp_path, sae_lens):
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig

    theirs = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=float(K)))
    randomise_weights(theirs, seed=6, names=("W_enc", "b_enc", "W_dec", "b_dec"))
    theirs.topk_threshold = torch.tensor(1.5, dtype=torch.double)
    theirs.save_inference_model(tmp_path / "sae")  # written as a JumpReLU SAE
    assert json.loads((tmp_path / "sae" / "cfg.json").read_text())["architecture"] == "jumprelu"
    assert_matches_saelens_folder(sae_lens, tmp_path / "sae", BatchTopKSae)
    loaded = load_saelens_sae(tmp_path / "sae")
    assert loaded.cfg.k == K
    assert torch.equal(loaded.threshold, torch.full((D_SAE,), 1.5))


def test_saelens_jumprelu_sae_loads_as_jumprelu_and_computes_its_code(tmp_path, sae_lens):
    from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig

    theirs = JumpReLUSAE(JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE))
    randomise_weights(theirs, seed=7, names=("W_enc", "b_enc", "W_dec", "b_dec"))
    with torch.no_grad():
        theirs.threshold.copy_(torch.rand(D_SAE, generator=torch.Generator().manual_seed(8)))
    theirs.save_model(tmp_path / "sae")
    assert_matches_saelens_folder(sae_lens, tmp_path / "sae", JumpReluSae)


def test_saelens_sae_with_per_token_normalisation_is_refused(tmp_path, sae_lens):
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    cfg = TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, normalize_activations="layer_norm")
    TopKSAE(cfg).save_model(tmp_path / "sae")
    with pytest.raises(ValueError, match="layer_norm"):
        load_saelens_sae(tmp_path / "sae")


# ---- sparsify saves, opened by sae_core ---------------------------------------------------------


def make_sparse_coder(sparsify, seed: int = 7):
    coder = sparsify.SparseCoder(D_IN, sparsify.SparseCoderConfig(expansion_factor=EXPANSION, k=K))
    randomise_weights(coder, seed=seed, names=("encoder.weight", "encoder.bias", "W_dec", "b_dec"))
    return coder


def test_sparsify_sae_loads_and_reconstructs(tmp_path, sparsify):
    theirs, x = make_sparse_coder(sparsify), random_x()
    theirs.save_to_disk(tmp_path / "sae")
    ours = load_sparsify_sae(tmp_path / "sae")
    assert type(ours) is TopKSae
    assert ours.cfg == SaeConfig(d_in=D_IN, expansion_factor=EXPANSION, k=K)
    with torch.no_grad():
        their_out, our_out = theirs(x), ours(x)
    assert_same_reconstruction(our_out.sae_out, their_out.sae_out, x)
    torch.testing.assert_close(our_out.fvu, their_out.fvu, rtol=1e-5, atol=1e-6)
    # The weights are mapped exactly, not merely to an equivalent SAE.
    assert torch.equal(ours.W_enc, theirs.encoder.weight.T)
    assert torch.equal(ours.W_dec, theirs.W_dec)


def test_sparsify_bfloat16_save_loads_upcast_to_float32(tmp_path, sparsify):
    theirs, x = make_sparse_coder(sparsify).to(torch.bfloat16), random_x()
    theirs.save_to_disk(tmp_path / "sae")
    ours = load_sparsify_sae(tmp_path / "sae")
    assert ours.W_enc.dtype == torch.float32
    assert torch.equal(ours.W_dec, theirs.W_dec.float())
    with torch.no_grad():
        reference = theirs.float()(x).sae_out  # the same bf16-representable weights, computed in fp32
    assert_same_reconstruction(ours(x).sae_out, reference, x)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"activation": "groupmax"}, "groupmax"),
        ({"transcode": True}, "transcode"),
        ({"skip_connection": True}, "skip_connection"),
    ],
)
def test_sparsify_coder_that_is_not_a_topk_autoencoder_is_refused(tmp_path, override, message):
    folder = tmp_path / "sae"
    folder.mkdir()
    cfg = {"activation": "topk", "expansion_factor": EXPANSION, "num_latents": 0, "k": K, "d_in": D_IN}
    (folder / "cfg.json").write_text(json.dumps(cfg | override))
    save_file({"b_dec": torch.zeros(D_IN)}, folder / "sae.safetensors")
    with pytest.raises(ValueError, match=message):
        load_sparsify_sae(folder)


def test_sparsify_weights_that_do_not_match_the_config_are_refused(tmp_path):
    folder = tmp_path / "sae"
    folder.mkdir()
    cfg = {"expansion_factor": EXPANSION, "num_latents": 0, "k": K, "d_in": D_IN}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    weights = {
        "encoder.weight": torch.zeros(D_SAE, D_IN + 1),
        "encoder.bias": torch.zeros(D_SAE),
        "W_dec": torch.zeros(D_SAE, D_IN),
        "b_dec": torch.zeros(D_IN),
    }
    save_file(weights, folder / "sae.safetensors")
    with pytest.raises(ValueError, match="W_enc has shape"):
        load_sparsify_sae(folder)


def test_missing_folder_or_weights_file_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_saelens_sae(tmp_path / "absent")
    (tmp_path / "sae").mkdir()
    (tmp_path / "sae" / "cfg.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="sae.safetensors"):
        load_sparsify_sae(tmp_path / "sae")
