"""The two training regimes Group-SAEs are measured against: one SAE per layer, and layer-wise transfer.

    per_layer_saes   one SAE per layer, from scratch, with a group SAE's settings and token budget
    transfer_saes    layer l's SAE fine-tuned from layer l∓1's per-layer SAE on a fraction of the tokens

Both return the `group_saes` value's layout ({"saes": [{"layers", "path", "metrics", ...}], ...}),
so `sae_comparison` reads the three regimes the same way.
"""

import math
from dataclasses import asdict

from dagster import (
    AssetCheckResult,
    AssetExecutionContext,
    Config,
    ConfigMapping,
    DynamicOut,
    DynamicOutput,
    MetadataValue,
    OpExecutionContext,
    Output,
    asset,
    asset_check,
    graph_asset,
    op,
)
from pydantic import Field

from assets.saes import GroupSaesConfig, SaeQualityThresholds, sae_quality_result
from resources import ArtifactStorage, ComputeResource, SaeTrainer
from resources.compute import GPU_OP, GPU_STEP
from sae_core.activation_store import ActivationStore, StoreRef
from sae_core.activation_stream import StoreRows
from sae_core.config import SaeConfig, TrainConfig
from sae_core.io import load_sae, save_sae
from sae_core.massive_activations import MassiveTokens
from sae_core.sae import SparseAutoencoder
from sae_core.sae_set import SaeSet, TrainedSae
from sae_core.token_split import TokenSplit, store_layer_metrics, token_split

TRANSFER_DIRECTIONS = {"forward": -1, "backward": +1}
"""Where layer l's initialisation comes from: layer l − 1 (forward) or layer l + 1 (backward)."""


class PerLayerSaesConfig(GroupSaesConfig):
    """The same knobs as group_saes; `sae_comparison` refuses to compare runs whose settings differ."""


class TransferSaesConfig(Config):
    direction: str = Field(default="forward", description="forward: init from layer l−1; backward: from l+1.")
    token_fraction: float = Field(
        default=0.1, description="Fine-tuning tokens as a share of the from-scratch budget (per_layer_saes)."
    )


def train_layer_sae(
    context: AssetExecutionContext,
    trainer: SaeTrainer,
    store: ActivationStore,
    layer: int,
    split: TokenSplit,
    sae_cfg: SaeConfig,
    train_cfg: TrainConfig,
    folder,
    artifacts: ArtifactStorage,
    init: SparseAutoencoder | None = None,
    initialised_from_layer: int | None = None,
    loading: GroupSaesConfig | None = None,
) -> TrainedSae:
    """Train one SAE on `layer`'s training tokens, score it on its held-out tokens, save it; return its entry
    (its path relative to the storage root). The layer is read shard by shard, trained on in memory or streamed
    as `loading` (its data_loading, memory_budget_gib, shuffle_buffer_tokens; default: GroupSaesConfig's) says."""
    loading = loading or GroupSaesConfig()
    rows = StoreRows(store, [layer], split.train, buffer_rows=loading.shuffle_buffer_tokens)
    result = trainer.train(context, loading.training_rows(rows), sae_cfg, train_cfg, init=init)
    metrics = store_layer_metrics(result.sae, store, layer, split)
    path = save_sae(
        result.sae.cpu(),
        folder,
        metadata={
            "model_name": store.manifest["model"],
            "hook_name": f"blocks.{layer}.hook_resid_post",
            "hook_layer": layer,
            "layers": [layer],
            **({"initialised_from_layer": initialised_from_layer} if initialised_from_layer is not None else {}),
        },
    )
    return TrainedSae(
        (layer,), artifacts.relative(path), {layer: metrics}, round(result.seconds, 1), result.tokens_seen,
        initialised_from_layer,
    )


def _regime_metadata(saes: SaeSet) -> dict:
    rows = [{"layer": layer, **asdict(metrics)} for _, layer, metrics in saes.layer_metrics()]
    return {
        "saes": len(saes.saes),
        "mean_fvu": sum(r["fvu"] for r in rows) / len(rows),
        "mean_fvu_with_massive": sum(r["fvu_with_massive"] for r in rows) / len(rows),
        "max_fvu": max(r["fvu"] for r in rows),
        "tokens_total": sum(e.tokens_seen for e in saes.saes),
        "train_seconds_total": round(sum(e.train_seconds for e in saes.saes), 1),
        "per_layer": MetadataValue.md(
            "| layer | fvu | l0 | dead_fraction |\n|---|---|---|---|\n"
            + "\n".join(f"| {r['layer']} | {r['fvu']:.4f} | {r['l0']:.1f} | {r['dead_fraction']:.4f} |" for r in rows)
        ),
    }


@op(out=DynamicOut(int))
def per_layer_sae_layers(activation_corpus: StoreRef, artifacts: ArtifactStorage):
    """One output per layer of the corpus's store: each becomes a step of its own (`per_layer_sae`)."""
    for layer in range(artifacts.store(activation_corpus).n_layers):
        yield DynamicOutput(layer, mapping_key=f"layer_{layer:02d}")


@op(**GPU_OP)
def per_layer_sae(
    context: OpExecutionContext,
    config: PerLayerSaesConfig,
    layer: int,
    activation_corpus: StoreRef,
    massive_activations: MassiveTokens,
    compute: ComputeResource,
    artifacts: ArtifactStorage,
    sae_trainer: SaeTrainer,
) -> TrainedSae:
    """Layer `layer`'s SAE, from scratch, on that layer's training tokens: one step per layer, so an executor
    with several GPU workers (celery, Kubernetes) trains the layers side by side."""
    store = artifacts.store(activation_corpus)
    split = token_split(store.index.document, config.holdout_share, massive_activations)
    sae_cfg, train_cfg = config.sae_config(store.d_model), config.train_config(compute.torch_device())
    folder = artifacts.folder("per_layer_saes") / f"layer_{layer:02d}"
    trained = train_layer_sae(context, sae_trainer, store, layer, split, sae_cfg, train_cfg, folder, artifacts,
                              loading=config)
    context.log.info(f"layer {layer}: fvu {trained.metrics[layer].fvu:.4f} in {trained.train_seconds}s")
    return trained


@op
def per_layer_sae_set(
    config: PerLayerSaesConfig,
    activation_corpus: StoreRef,
    compute: ComputeResource,
    artifacts: ArtifactStorage,
    saes: list[TrainedSae],
) -> Output[SaeSet]:
    """The layers' SAEs as one set, in layer order, with the settings they were trained with (the device
    recorded is this step's; comparisons leave the device out)."""
    store = artifacts.store(activation_corpus)
    ordered = tuple(sorted(saes, key=lambda sae: sae.layers[0]))
    if [sae.layers[0] for sae in ordered] != list(range(store.n_layers)):
        raise ValueError(
            f"per_layer_saes: SAEs for layers {[sae.layers[0] for sae in ordered]}, but the store has {store.n_layers}"
        )
    train_cfg = config.train_config(compute.torch_device())
    value = SaeSet(ordered, config.sae_config(store.d_model), train_cfg, config.holdout_share)
    return Output(value, metadata=_regime_metadata(value))


@graph_asset(
    group_name="sae_regimes",
    kinds={"pytorch", "safetensors"},
    config=ConfigMapping(config_fn=lambda config: {op: {"config": config} for op in ("per_layer_sae", "per_layer_sae_set")},
                         config_schema=PerLayerSaesConfig.to_config_schema()),
)
def per_layer_saes(activation_corpus: StoreRef, massive_activations: MassiveTokens) -> SaeSet:
    """The per-layer baseline: an SAE for every layer, from scratch, on that layer's tokens alone.

    Same architecture, width, k, token budget, seed and held-out companies as `group_saes` (by default),
    so the only difference between the regimes is how many SAEs there are and what each reads. One step
    per layer (`per_layer_sae`), then `per_layer_sae_set` gathers them; its config is PerLayerSaesConfig.
    """
    layers = per_layer_sae_layers(activation_corpus)
    trained = layers.map(lambda layer: per_layer_sae(layer, activation_corpus, massive_activations))
    return per_layer_sae_set(activation_corpus, trained.collect())


@asset(group_name="sae_regimes", kinds={"pytorch", "safetensors"}, **GPU_STEP)
def transfer_saes(
    context: AssetExecutionContext,
    config: TransferSaesConfig,
    activation_corpus: StoreRef,
    massive_activations: MassiveTokens,
    per_layer_saes: SaeSet,
    compute: ComputeResource,
    artifacts: ArtifactStorage,
    sae_trainer: SaeTrainer,
) -> Output[SaeSet]:
    """Layer-wise transfer: layer l's SAE starts from the trained per-layer SAE of its neighbour (l − 1
    forward, l + 1 backward) and is fine-tuned on `token_fraction` of the from-scratch token budget.

    The layer without a neighbour in that direction (0 forward, the last backward) gets no SAE here.
    """
    if config.direction not in TRANSFER_DIRECTIONS:
        raise ValueError(f"transfer direction must be one of {sorted(TRANSFER_DIRECTIONS)}, got {config.direction!r}")
    if not 0 < config.token_fraction <= 1:
        raise ValueError(f"token_fraction must be in (0, 1], got {config.token_fraction!r}")
    device = compute.torch_device()
    store = artifacts.store(activation_corpus)
    split = token_split(
        store.index.document, per_layer_saes.holdout_share, massive_activations
    )
    sae_cfg, scratch_cfg = per_layer_saes.sae_config, per_layer_saes.train_config
    # Whole batches, rounded down, so the fine-tune never spends more than its share of the
    # from-scratch run's tokens (which train_sae also counts in whole batches).
    scratch_steps = math.ceil(scratch_cfg.total_tokens / scratch_cfg.batch_size)
    fine_tune_tokens = max(math.floor(config.token_fraction * scratch_steps), 1) * scratch_cfg.batch_size
    train_cfg = TrainConfig(**{**scratch_cfg.to_dict(), "total_tokens": fine_tune_tokens, "device": device})
    sources = {entry.layers[0]: artifacts.resolve(entry.path_for(entry.layers[0])) for entry in per_layer_saes.saes}
    offset = TRANSFER_DIRECTIONS[config.direction]
    root = artifacts.folder("transfer_saes")
    saes = []
    for layer in range(store.n_layers):
        source = layer + offset
        if source not in sources:
            continue
        entry = train_layer_sae(
            context,
            sae_trainer,
            store,
            layer,
            split,
            sae_cfg,
            train_cfg,
            root / f"layer_{layer:02d}_from_{source:02d}",
            artifacts,
            init=load_sae(sources[source]),
            initialised_from_layer=source,
        )
        saes.append(entry)
        context.log.info(f"layer {layer} (from {source}): fvu {entry.metrics[layer].fvu:.4f}")
    token_fraction = fine_tune_tokens / (scratch_steps * scratch_cfg.batch_size)
    value = SaeSet(
        tuple(saes), sae_cfg, train_cfg, per_layer_saes.holdout_share,
        {"direction": config.direction, "token_fraction": token_fraction},
    )
    return Output(value, metadata={**_regime_metadata(value), "direction": config.direction,
                                   "fine_tune_tokens_per_sae": fine_tune_tokens})


@asset_check(asset=per_layer_saes, blocking=True)
def per_layer_saes_reconstruct_within_fvu_and_dead_thresholds(
    per_layer_saes: SaeSet, sae_quality: SaeQualityThresholds
) -> AssetCheckResult:
    """Every layer's held-out FVU and dead fraction are under the thresholds group_saes meets."""
    return sae_quality_result(per_layer_saes, sae_quality)


@asset_check(asset=transfer_saes, blocking=True)
def transfer_saes_reconstruct_within_fvu_and_dead_thresholds(
    transfer_saes: SaeSet, sae_quality: SaeQualityThresholds
) -> AssetCheckResult:
    """Every fine-tuned SAE's held-out FVU and dead fraction are under the thresholds group_saes meets."""
    return sae_quality_result(transfer_saes, sae_quality)
