"""Group-SAEs: one TopK SAE per AMAD layer group, plus one for the final layer."""

import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import torch
from dagster import (
    AssetCheckResult,
    AssetExecutionContext,
    Config,
    ConfigurableResource,
    DataVersion,
    Output,
    asset,
    asset_check,
)
from pydantic import Field

from assets.metadata import markdown_table
from resources import ArtifactStorage, ComputeResource, SaeTrainer
from resources.compute import GPU_STEP
from sae_core.activation_store import ActivationStore, StoreRef
from sae_core.activation_stream import DEFAULT_BUFFER_ROWS, StoreRows, store_unit_scales
from sae_core.config import SaeConfig, TrainConfig
from sae_core.groups import LayerGrouping
from sae_core.io import save_sae
from sae_core.massive_activations import MassiveTokens
from sae_core.release import load_release, new_release, publish_release, release_id
from sae_core.sae_set import LayerMetrics, SaeSet, TrainedSae
from sae_core.staging import staged_sibling
from sae_core.token_split import store_layer_metrics, token_split

DATA_LOADING = ("auto", "memory", "stream")


class SaeQualityThresholds(ConfigurableResource):
    """Bounds the group_saes check enforces; loosen them for tiny test models, tighten them in production."""

    max_fvu: float = Field(default=0.4, description="Largest acceptable held-out FVU on any layer.")
    max_dead_fraction: float = Field(default=0.5, description="Largest acceptable share of latents that never fire.")


class GroupSaesConfig(Config):
    architecture: str = Field(
        default="topk",
        description="topk (AuxK), batchtopk, matryoshka_batchtopk, jumprelu (trained to L0 = k) or relu (ReLU + L1); "
        "benchmarks/sae_architectures.py compares them at equal L0 and tokens.",
    )
    expansion_factor: int = Field(default=4, description="d_sae = expansion_factor × d_model.")
    k: int = Field(
        default=32, description="Active latents per token: TopK's k, BatchTopK's mean, JumpReLU's target; ignored for relu."
    )
    l1_coefficient: float = Field(default=TrainConfig.l1_coefficient, description="L1 weight (relu only).")
    total_tokens: int = Field(default=300_000, description="Training tokens per SAE (≈ 3 epochs of the sample).")
    batch_size: int = 1024
    optimizer: str = Field(
        default=TrainConfig.optimizer,
        description="schedule_free_adam (evaluated at the average of the iterates), adam, or schedule_free_signum.",
    )
    lr: float | None = Field(default=None, description="Learning rate; empty: the optimizer's default for the width.")
    autocast: str = Field(
        default=TrainConfig.autocast,
        description="Encoder matmul precision: auto (bf16 on CUDA, fp32 on CPU), bf16 (on any device; on a CPU with "
        "a bf16 matmul unit, AVX512-BF16 or AMX, these SAEs train 1.4x faster at the same FVU), or off (fp32).",
    )
    holdout_share: float = Field(default=0.1, description="Share of companies held out for evaluation.")
    per_layer_scaling: bool = Field(
        default=False,
        description="Scale each layer of a group to unit mean squared norm on its own before mixing, and save one "
        "SAE per layer with its own scale folded in (the Group-SAE authors' way); off: one scale for the group.",
    )
    seed: int = 0
    data_loading: str = Field(
        default="auto",
        description="How an SAE's training rows reach it: memory (all its rows in RAM, gathered shard by shard), "
        "stream (from the shards through a shuffle buffer: memory bounded whatever the corpus; another batch order, "
        "so another draw of the same recipe) or auto (stream when the rows exceed memory_budget_gib).",
    )
    memory_budget_gib: float = Field(default=4.0, description="auto streams an SAE whose training rows exceed this.")
    shuffle_buffer_tokens: int = Field(
        default=DEFAULT_BUFFER_ROWS, description="Rows the streaming shuffle buffer holds (d_model × 4 bytes each)."
    )
    retrain: bool = Field(
        default=False,
        description="Train a new release even though one of this recipe exists (new texts alone never retrain).",
    )

    def training_rows(self, rows: StoreRows) -> torch.Tensor | StoreRows:
        """`rows` in memory or as a stream, as `data_loading` says (module docstring of sae_core.activation_stream)."""
        if self.data_loading not in DATA_LOADING:
            raise ValueError(f"data_loading must be one of {DATA_LOADING}, got {self.data_loading!r}")
        resident_bytes = rows.shape[0] * rows.shape[1] * 4
        stream = self.data_loading == "stream" or (
            self.data_loading == "auto" and resident_bytes > self.memory_budget_gib * 2**30
        )
        return rows if stream else rows.materialize()

    def sae_config(self, d_in: int) -> SaeConfig:
        return SaeConfig(
            d_in=d_in,
            expansion_factor=self.expansion_factor,
            k=None if self.architecture == "relu" else self.k,
            architecture=self.architecture,
        )

    def train_config(self, device: str, total_tokens: int | None = None) -> TrainConfig:
        """The run's TrainConfig; `total_tokens` overrides the budget (layer-wise transfer fine-tunes on less)."""
        return TrainConfig(
            batch_size=self.batch_size,
            total_tokens=self.total_tokens if total_tokens is None else total_tokens,
            seed=self.seed,
            device=device,
            l1_coefficient=self.l1_coefficient,
            optimizer=self.optimizer,
            lr=self.lr,
            autocast=self.autocast,
        )


@asset(group_name="saes", kinds={"pytorch", "safetensors"}, **GPU_STEP)
def group_saes(
    context: AssetExecutionContext,
    config: GroupSaesConfig,
    activation_corpus: StoreRef,
    massive_activations: MassiveTokens,
    layer_groups: LayerGrouping,
    compute: ComputeResource,
    artifacts: ArtifactStorage,
    sae_trainer: SaeTrainer,
) -> Output[SaeSet]:
    """The SAE release: an SAE (TopK with AuxK on dead latents by default) per layer group, trained on one
    random layer per token, saved in SAELens layout under artifacts/group_saes/releases/<release>/.

    A release is keyed by its recipe (model, SAE and training configuration, `sae_core.release`), not by
    the texts: when a release of this recipe exists it is returned as it is, so new filings are encoded
    by the SAEs every earlier text was, and latent ids keep their meaning. `retrain: true` (or a changed
    recipe) trains a new one on the texts of the store now; its new version marks what was built from the
    old one as stale.

    Returns the release's `SaeSet` (notes: release, release_version, corpus_texts); metrics are on the
    held-out texts' tokens of each layer the SAE serves (`sae_core.token_split`). Massive tokens are left
    out of training and evaluation unless massive_activations keeps them; the release records the rule with
    its corpus's medians (`massive_rule`), which judges every text encoded with it later.
    """
    device = compute.torch_device()
    store = artifacts.store(activation_corpus)
    sae_cfg, train_cfg = config.sae_config(store.d_model), config.train_config(device)
    recipe = {
        "model": store.manifest["model"],
        "sae_config": sae_cfg.to_dict(),
        "train_config": {k: v for k, v in train_cfg.to_dict().items() if k != "device"},
        "holdout_share": config.holdout_share,
        "per_layer_scaling": config.per_layer_scaling,
        # The tokens it trains on, and which tokens it encodes later (company_features judges them by the rule).
        "massive_tokens": {"norm_multiple": massive_activations.norm_multiple, "treatment": massive_activations.treatment},
    }
    releases = artifacts.folder("group_saes") / "releases"
    folder = releases / release_id(recipe)
    release = None if config.retrain else load_release(folder)
    reused = release is not None
    if not reused:
        staging = staged_sibling(folder)
        staging.mkdir(parents=True)
        try:
            trained = _train_group_saes(context, config, store, massive_activations, layer_groups, sae_cfg,
                                        train_cfg, sae_trainer, staging, artifacts.relative(folder))
            corpus = sorted(store.index.document.unique())
            release = new_release(recipe, corpus, trained, notes={"layer_groups": layer_groups.chosen_groups})
            publish_release(staging, release, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        context.log.info(f"trained SAE release {release.version} on {len(release.corpus)} texts")
    else:
        context.log.info(f"reusing SAE release {release.version} (trained on {len(release.corpus)} texts)")
    trained = release.trained
    table = pd.DataFrame([{"sae": n, "layer": layer, **asdict(m)} for n, layer, m in trained.layer_metrics()])
    release_notes = {"release": release.release_id, "release_version": release.version, "corpus_texts": len(release.corpus)}
    return Output(
        replace(trained, notes={**trained.notes, **release_notes}),
        data_version=DataVersion(release.version),
        metadata={
            "release": release.release_id,
            "release_version": release.version,
            "reused": reused,
            "corpus_texts": len(release.corpus),
            "texts_in_store_not_in_corpus": len(set(store.index.document) - set(release.corpus)),
            "release_groups_match_current_layer_groups": trained.groups == layer_groups.chosen_groups,
            "saes": len(trained.saes),
            "d_sae": sae_cfg.d_sae,
            "architecture": sae_cfg.architecture,
            "k": sae_cfg.k or 0,
            "mean_fvu": float(table.fvu.mean()),
            "mean_fvu_with_massive": float(table.fvu_with_massive.mean()),
            "max_fvu": float(table.fvu.max()),
            "massive_tokens_left_out_of_training": trained.notes.get("massive_tokens_left_out_of_training", 0),
            "training_rows": trained.notes.get("training_rows", "memory"),
            "max_dead_fraction": float(table.dead_fraction.max()),
            "train_seconds_total": round(sum(s.train_seconds for s in trained.saes), 1),
            "per_layer": markdown_table(table, floatfmt=".4f"),
        },
    )


def _train_group_saes(
    context,
    config: GroupSaesConfig,
    store: ActivationStore,
    massive_activations: MassiveTokens,
    layer_groups: LayerGrouping,
    sae_cfg: SaeConfig,
    train_cfg: TrainConfig,
    sae_trainer: SaeTrainer,
    staging: Path,
    published: str,
) -> SaeSet:
    """Train one SAE per chosen group into `staging`; the returned paths name their place once published
    (`published`: the release folder relative to the storage root)."""
    split = token_split(store.index.document, config.holdout_share, massive_activations)
    device = train_cfg.device
    saes, loading = [], set()
    for number, layers in enumerate(layer_groups.chosen_groups):
        generator = torch.Generator().manual_seed(config.seed + number)
        scales = store_unit_scales(store, layers, split.train) if config.per_layer_scaling else None
        # Each token contributes its activation from one uniformly random layer of the group,
        # so a group SAE sees as many activations as a per-layer SAE would (read shard by shard).
        rows = StoreRows(store, layers, split.train, generator, scales, config.shuffle_buffer_tokens)
        train_rows = config.training_rows(rows)
        loading.add("memory" if isinstance(train_rows, torch.Tensor) else "stream")
        result = sae_trainer.train(context, train_rows, sae_cfg, train_cfg)
        del train_rows
        name = f"sae_{number:02d}_layers_{layers[0]}-{layers[-1]}"
        saved = _evaluate_and_save_group_sae(result.sae.to(device), layers, scales, split, store, staging / name)
        paths = {layer: f"{published}/{name}/{folder}" for layer, folder in saved.folders.items()} or None
        path = paths[layers[0]] if paths else f"{published}/{name}"
        saes.append(TrainedSae(tuple(layers), path, saved.metrics, round(result.seconds, 1), result.tokens_seen, layer_paths=paths))
        context.log.info(f"SAE {number} (layers {layers}) trained in {result.seconds:.1f}s")
    left_out = int((~split.train & ~split.evaluate & split.with_massive).sum())
    notes = {"massive_tokens_left_out_of_training": left_out, "training_rows": "/".join(sorted(loading))}
    return SaeSet(tuple(saes), sae_cfg, train_cfg, config.holdout_share, notes, massive_activations.rule)


class _SavedGroupSae(NamedTuple):
    metrics: dict[int, LayerMetrics]
    folders: dict[int, str]
    """Per layer, its save's folder inside the SAE's (per-layer scaling only)."""


def _evaluate_and_save_group_sae(sae, layers, scales, split, store, folder: Path) -> _SavedGroupSae:
    """Held-out metrics of a group SAE on each of its layers, and its save: one folder, or with per-layer scales
    one subfolder per layer whose input scale is the trained one times that layer's factor (so x_l · s_l · s is
    what the SAE was trained on; SAELens, which has no input scale, loads each layer's fold of it). Each layer is
    read shard by shard (`store_layer_metrics`)."""
    metadata = {"model_name": store.manifest["model"], "layers": layers}

    def hook(layer: int) -> dict:
        return {**metadata, "hook_name": f"blocks.{layer}.hook_resid_post", "hook_layer": layer}

    trained_scale = float(sae.input_scale)
    metrics, folders = {}, {}
    for position, layer in enumerate(layers):
        if scales:
            sae.input_scale.fill_(trained_scale * scales[position])
            folders[layer] = f"layer_{layer}"
            save_sae(sae, folder / folders[layer], metadata=hook(layer))  # save_sae folds a CPU copy
        metrics[layer] = store_layer_metrics(sae, store, layer, split)
    if not scales:
        save_sae(sae, folder, metadata=hook(layers[0]))
    return _SavedGroupSae(metrics, folders)


@asset_check(asset=group_saes, blocking=True)
def saes_reconstruct_within_fvu_and_dead_thresholds(
    group_saes: SaeSet, sae_quality: SaeQualityThresholds
) -> AssetCheckResult:
    """Every layer's held-out FVU and every SAE's dead fraction are under the configured thresholds."""
    return sae_quality_result(group_saes, sae_quality)


def sae_quality_result(trained: SaeSet, sae_quality: SaeQualityThresholds) -> AssetCheckResult:
    """The quality check of any SAE set: worst held-out FVU and dead fraction over the layers it serves."""
    metrics = [m for _, _, m in trained.layer_metrics()]
    worst_fvu = max(m.fvu for m in metrics)
    worst_dead = max(m.dead_fraction for m in metrics)
    return AssetCheckResult(
        passed=worst_fvu <= sae_quality.max_fvu and worst_dead <= sae_quality.max_dead_fraction,
        metadata={
            "worst_fvu": worst_fvu,
            "max_fvu": sae_quality.max_fvu,
            "worst_dead_fraction": worst_dead,
            "max_dead_fraction": sae_quality.max_dead_fraction,
        },
    )
