"""The group_saes asset trains with what its config says, as per_layer_saes and transfer_saes do."""

import dagster
import torch

from assets.saes import GroupSaesConfig, group_saes
from resources import ArtifactStorage, ComputeResource, SaeTrainer
from sae_core.activation_store import ActivationStoreWriter
from sae_core.massive_activations import find_massive_tokens


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


def test_group_saes_train_with_the_configured_optimizer_lr_precision_and_width(tmp_path, monkeypatch):
    store = tiny_store(tmp_path / "store")
    seen = []
    original_train = SaeTrainer.train

    def recording_train(self, context, data, sae_cfg, train_cfg, init=None):
        seen.append((sae_cfg, train_cfg))
        return original_train(self, context, data, sae_cfg, train_cfg, init)

    monkeypatch.setattr(SaeTrainer, "train", recording_train)
    config = GroupSaesConfig(
        optimizer="adam", lr=1e-3, autocast="bf16", expansion_factor=2, k=4, total_tokens=256, batch_size=64,
        holdout_share=0.3,
    )
    group_saes(
        context=dagster.build_asset_context(),
        config=config,
        llm_activations={"folder": str(store.folder)},
        massive_activations=find_massive_tokens(store.token_norms()).to_dict(),
        layer_groups={"chosen_groups": [[0, 1]]},
        compute=ComputeResource(device="cpu"),
        artifacts=ArtifactStorage(root=str(tmp_path / "home")),
        sae_trainer=SaeTrainer(),
    )
    assert len(seen) == 1
    sae_cfg, train_cfg = seen[0]
    assert (sae_cfg.d_sae, sae_cfg.k) == (16, 4)
    assert (train_cfg.optimizer, train_cfg.lr, train_cfg.autocast) == ("adam", 1e-3, "bf16")
    assert (train_cfg.total_tokens, train_cfg.batch_size) == (256, 64)
    assert train_cfg.to_dict() == config.train_config("cpu").to_dict()
