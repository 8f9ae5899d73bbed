"""The group_saes asset trains with what its config says, as per_layer_saes and transfer_saes do."""


import dagster
import pytest
import torch

from assets.saes import GroupSaesConfig, group_saes
from resources import ArtifactStorage, ComputeResource, SaeTrainer
from sae_core.activation_store import ActivationStoreWriter, StoreRef
from sae_core.groups import LayerGrouping
from sae_core.massive_activations import find_massive_tokens
from sae_core.io import load_sae
from sae_core.release import load_release
from sae_core.sae_set import SaeSet


def tiny_store(folder, n_layers=2, d_model=8, tokens_per_document=24, documents=10):
    writer = ActivationStoreWriter(folder, n_layers, d_model, metadata={"model": "tiny"})
    generator = torch.Generator().manual_seed(0)
    for document in range(documents):
        writer.add(
            torch.randn(n_layers, tokens_per_document, d_model, generator=generator),
            [f"CO{document}"] * tokens_per_document,
            torch.arange(tokens_per_document),
            torch.zeros(tokens_per_document, dtype=torch.long),
        )
    return writer.close()


SETTINGS = {"expansion_factor": 2, "k": 4, "total_tokens": 256, "batch_size": 64, "holdout_share": 0.3}


def test_group_saes_train_with_the_configured_optimizer_lr_precision_and_width(tmp_path, monkeypatch):
    store = tiny_store(tmp_path / "store")
    seen = []
    original_train = SaeTrainer.train

    def recording_train(self, context, data, sae_cfg, train_cfg, init=None):
        seen.append((sae_cfg, train_cfg))
        return original_train(self, context, data, sae_cfg, train_cfg, init)

    monkeypatch.setattr(SaeTrainer, "train", recording_train)
    settings = {"optimizer": "adam", "lr": 1e-3, "autocast": "bf16"}
    run_group_saes(tmp_path, store, **settings)
    config = GroupSaesConfig(**{**SETTINGS, **settings})
    assert len(seen) == 1
    sae_cfg, train_cfg = seen[0]
    assert (sae_cfg.d_sae, sae_cfg.k) == (16, 4)
    assert (train_cfg.optimizer, train_cfg.lr, train_cfg.autocast) == ("adam", 1e-3, "bf16")
    assert (train_cfg.total_tokens, train_cfg.batch_size) == (256, 64)
    assert train_cfg.to_dict() == config.train_config("cpu").to_dict()


def run_group_saes(tmp_path, store, treatment="exclude", **overrides):
    config = GroupSaesConfig(**{**SETTINGS, **overrides})
    output = group_saes(
        context=dagster.build_asset_context(),
        config=config,
        activation_corpus=StoreRef.of(store, str(store.folder)),
        massive_activations=find_massive_tokens(store.token_norms(), treatment=treatment),
        layer_groups=LayerGrouping({1: [[0]]}, {1: 0.0}, 1, [[0, 1]], True, 0.2),
        compute=ComputeResource(device="cpu"),
        artifacts=ArtifactStorage(root=str(tmp_path / "home")),
        sae_trainer=SaeTrainer(),
    )
    return output.value, output.data_version.value


def test_new_texts_are_encoded_with_the_existing_release_and_only_a_retrain_makes_a_new_one(tmp_path, monkeypatch):
    trainings = []
    original_train = SaeTrainer.train
    monkeypatch.setattr(
        SaeTrainer, "train", lambda self, *args, **kwargs: trainings.append(1) or original_train(self, *args, **kwargs)
    )
    first, first_version = run_group_saes(tmp_path, tiny_store(tmp_path / "store", documents=10))
    assert len(trainings) == 1 and first.notes["corpus_texts"] == 10

    grown = tiny_store(tmp_path / "store", documents=12)  # two new filings in the store
    reused, reused_version = run_group_saes(tmp_path, grown)
    assert len(trainings) == 1  # no retraining: the same SAEs, the same latent ids
    assert reused == first and reused_version == first_version

    retrained, retrained_version = run_group_saes(tmp_path, grown, retrain=True)
    assert len(trainings) == 2 and retrained.notes["corpus_texts"] == 12
    assert retrained.notes["release"] == first.notes["release"] and retrained_version != first_version  # downstream is stale
    assert load_release((tmp_path / "home" / retrained.saes[0].path).parent).version == retrained_version

    other_recipe, _ = run_group_saes(tmp_path, grown, k=2)
    assert len(trainings) == 3 and other_recipe.notes["release"] != first.notes["release"]


def test_a_release_file_this_version_cannot_read_is_named_not_silently_retrained(tmp_path):
    folder = tmp_path / "release"
    folder.mkdir()
    (folder / "release.json").write_text('{"release_id": "x", "trained_at": "t", "recipe": {}, "corpus": [], "trained": {"saes": []}}')
    with pytest.raises(ValueError, match="release.json is not a release this version can read.*retrain: true"):
        load_release(folder)


def test_the_release_records_the_massive_token_rule_of_its_training_corpus(tmp_path):
    store = tiny_store(tmp_path / "store")
    release, _ = run_group_saes(tmp_path, store)
    assert release.massive_rule == find_massive_tokens(store.token_norms()).rule
    assert SaeSet.from_dict(release.to_dict()) == release

    grown = tiny_store(tmp_path / "grown", documents=12)
    reused, _ = run_group_saes(tmp_path, grown)
    # New texts are judged against the medians the release was trained with, not the grown corpus's.
    assert reused.massive_rule == release.massive_rule != find_massive_tokens(grown.token_norms()).rule

    kept, _ = run_group_saes(tmp_path, store, treatment="keep")  # other training tokens: another recipe
    assert kept.notes["release"] != release.notes["release"] and kept.massive_rule.treatment == "keep"


def test_per_layer_scaling_gives_a_low_norm_layer_its_own_scale_and_each_layer_its_own_save(tmp_path):
    """Layer 1's residuals are 30 times layer 0's. Mixed under one scale, layer 0 is noise beside layer 1;
    scaled each to unit mean squared norm, both are learned, and each layer's save folds its own scale."""
    writer = ActivationStoreWriter(tmp_path / "store", 2, 8, metadata={"model": "tiny"})
    generator = torch.Generator().manual_seed(0)
    for document in range(10):
        x = torch.randn(2, 24, 8, generator=generator)
        x[1] *= 30
        writer.add(x, [f"CO{document}"] * 24, torch.arange(24), torch.zeros(24, dtype=torch.long))
    store = writer.close()
    settings = {"total_tokens": 2048, "holdout_share": 0.5}
    mixed, _ = run_group_saes(tmp_path / "mixed", store, **settings)
    scaled, _ = run_group_saes(tmp_path / "scaled", store, per_layer_scaling=True, **settings)
    assert mixed.saes[0].layer_paths is None
    assert scaled.saes[0].layer_paths == {layer: f"{scaled.saes[0].path.rsplit('/', 1)[0]}/layer_{layer}" for layer in (0, 1)}
    assert scaled.saes[0].metrics[0].fvu < mixed.saes[0].metrics[0].fvu - 0.1
    home = tmp_path / "scaled" / "home"
    low, high = (load_sae(home / scaled.saes[0].path_for(layer)) for layer in (0, 1))
    # The fold divides the decoder rows by each layer's scale: layer 1's are ~30 times layer 0's, all alike
    # (the ratio of the two layers' root mean squared norms on the training tokens).
    ratio = high.W_dec.norm(dim=1) / low.W_dec.norm(dim=1)
    assert float(ratio.std()) < 1e-3 * float(ratio.mean()) and float(ratio.mean()) == pytest.approx(30, rel=0.15)
