"""Group-SAEs against per-layer SAEs and layer-wise transfer: quality at every layer, and what each cost."""

import math
from typing import NamedTuple

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Config,
    MetadataValue,
    Output,
    asset,
)
from pydantic import Field
from torch import Tensor

from assets.metadata import figure_markdown, markdown_table, plt
from resources import ArtifactStorage, ComputeResource, LanguageModelResource
from resources.compute import GPU_STEP
from sae_core.activation_store import ActivationStore, StoreRef
from sae_core.comparison import check_comparable, comparison_summary, compute_table, layer_table
from sae_core.io import load_sae
from sae_core.massive_activations import MassiveTokens
from sae_core.sae_set import SaeSet
from sae_core.splice import SplicedEvaluator
from sae_core.token_split import holdout_mask

GROUP_SAVING_TARGET, GROUP_FVU_GAP_TARGET = 0.5, 0.01
TRANSFER_SCORE_TARGET, TRANSFER_TOKEN_TARGET = 0.99, 0.1


class SaeComparisonConfig(Config):
    eval_documents: int = Field(default=16, description="Held-out companies whose tokens the spliced runs score.")
    max_tokens_per_document: int = Field(
        default=64, description="Leading tokens kept per document: 30 layers × 4 runs of the model add up on a CPU."
    )
    batch_tokens: int = Field(default=4096, description="Padded tokens per forward pass.")


class SpliceDocuments(NamedTuple):
    """The held-out documents the spliced runs score, by ticker."""

    token_ids: dict[str, list[int]]
    """The first max_tokens_per_document token ids of each."""
    unpatched: dict[str, list[int]]
    """The positions among them that the SAEs were trained without (massive tokens under "exclude")."""


def heldout_documents(
    store: ActivationStore, holdout_share: float, n_documents: int, max_tokens: int, unusable: Tensor
) -> SpliceDocuments:
    """The first `max_tokens` tokens of up to `n_documents` held-out companies (alphabetical), and which of
    those positions are `unusable` ((N,) bool over the store's tokens) and so stay unpatched."""
    if n_documents < 1 or max_tokens < 2:
        raise ValueError(f"need eval_documents >= 1 and max_tokens_per_document >= 2, got {n_documents}, {max_tokens}")
    index = store.index.assign(unusable=unusable.numpy())
    index = index[holdout_mask(index.document, holdout_share)]
    chosen = sorted(index.document.unique())[:n_documents]
    if not chosen:
        raise ValueError(f"holdout_share {holdout_share} holds out no company to evaluate on")
    rows = index[index.document.isin(chosen)].sort_values(["document", "position"])
    heads = {name: group.head(max_tokens) for name, group in rows.groupby("document")}
    return SpliceDocuments(
        token_ids={name: head.token_id.tolist() for name, head in heads.items()},
        unpatched={name: head.position[head.unusable].tolist() for name, head in heads.items()},
    )


@asset(
    group_name="sae_regimes",
    kinds={"pytorch", "pandas", "parquet"},
    check_specs=[
        AssetCheckSpec("every_layer_is_scored_by_every_regime", asset="sae_comparison", blocking=True),
        AssetCheckSpec("group_saes_save_half_the_compute_within_0_01_fvu", asset="sae_comparison"),
        AssetCheckSpec("transfer_reaches_99pct_of_scratch_score_on_10pct_of_tokens", asset="sae_comparison"),
    ],
    **GPU_STEP,
)
def sae_comparison(
    context: AssetExecutionContext,
    config: SaeComparisonConfig,
    activation_corpus: StoreRef,
    massive_activations: MassiveTokens,
    group_saes: SaeSet,
    per_layer_saes: SaeSet,
    transfer_saes: SaeSet,
    language_model: LanguageModelResource,
    compute: ComputeResource,
    artifacts: ArtifactStorage,
):
    """Per layer and regime: held-out FVU, L0, dead fraction, and the spliced CE-loss score and KL.

    CE-loss score = (CE_zero − CE_sae) / (CE_zero − CE_clean) and KL(p_clean ‖ p_sae), with the SAE's
    reconstruction patched into the model at its layer, on held-out companies' tokens (sae_core.splice).
    Metadata adds the compute of each regime (SAEs, tokens, seconds, FLOPs) and the papers' claims measured:
    the saving of groups over per-layer SAEs and its FVU cost, transfer's share of the from-scratch score.
    """
    regimes = {"group": group_saes, "per_layer": per_layer_saes, "transfer": transfer_saes}
    check_comparable(regimes)
    check_comparable({"group": group_saes, "per_layer": per_layer_saes}, fields=("train_config",))
    device = compute.torch_device()
    store = artifacts.store(activation_corpus)
    usable = massive_activations.usable_mask(store.n_tokens)
    documents = heldout_documents(
        store, per_layer_saes.holdout_share, config.eval_documents, config.max_tokens_per_document, ~usable
    )
    model = language_model.load(device)
    layers = layer_table(regimes)
    costs = compute_table(regimes, [sum(p.numel() for p in layer.parameters()) for layer in model.layers])
    evaluator = SplicedEvaluator(
        model,
        list(documents.token_ids.values()),
        batch_tokens=config.batch_tokens,
        device=device,
        unpatched=list(documents.unpatched.values()),
    )
    context.log.info(
        f"spliced evaluation on {len(documents.token_ids)} held-out companies, {evaluator.n_predictions} predictions"
    )
    paths = {
        (regime, layer): artifacts.resolve(sae.path_for(layer)) for regime, saes in regimes.items() for sae in saes.saes for layer in sae.layers
    }
    loaded = {path: load_sae(path).to(device) for path in set(paths.values())}
    spliced = []
    for layer in range(store.n_layers):
        saes = {regime: loaded[paths[regime, layer]] for regime in regimes if (regime, layer) in paths}
        for regime, metrics in evaluator.evaluate(layer, saes).items():
            spliced.append({"regime": regime, "layer": layer, **metrics.to_dict()})
        context.log.info(f"layer {layer}: " + ", ".join(f"{r['regime']} {r['ce_loss_score']:.3f}" for r in spliced[-len(saes):]))
    table = layers.merge(pd.DataFrame(spliced).rename(columns={"n_tokens": "spliced_predictions"}), on=["regime", "layer"])
    table = table.sort_values(["layer", "regime"]).reset_index(drop=True)
    summary = comparison_summary(table, costs)

    yield Output(
        table,
        metadata={
            **{name: round(value, 4) for name, value in summary.items()},
            "spliced_documents": len(documents.token_ids),
            "spliced_positions_left_unpatched": sum(map(len, documents.unpatched.values())),
            "spliced_predictions": evaluator.n_predictions,
            "compute": markdown_table(costs.assign(**{c: costs[c].map("{:.3g}".format) for c in ("flops", "capture_flops")})),
            "by_layer": _wide_markdown(table),
            "by_layer_plot": _by_layer_plot(table),
        },
    )
    yield from _checks(table, summary, n_layers=store.n_layers)


def _checks(table: pd.DataFrame, summary: dict, n_layers: int):
    scored = table.dropna(subset=["fvu", "ce_loss_score", "kl_sae"])
    complete = all(
        set(range(n_layers)) <= set(scored.layer[scored.regime == regime]) for regime in ("group", "per_layer")
    ) and all(math.isfinite(v) for v in summary.values())
    yield AssetCheckResult(
        check_name="every_layer_is_scored_by_every_regime",
        passed=bool(complete),
        metadata={"rows": len(table), "scored_rows": len(scored)},
    )
    saving, gap = summary["group_saving_flops"], summary["group_fvu_gap_mean"]
    yield AssetCheckResult(
        check_name="group_saes_save_half_the_compute_within_0_01_fvu",
        passed=bool(saving >= GROUP_SAVING_TARGET and gap <= GROUP_FVU_GAP_TARGET),
        severity=AssetCheckSeverity.WARN,
        metadata={"group_saving_flops": saving, "group_fvu_gap_mean": gap,
                  "group_saving_flops_with_capture": summary.get("group_saving_flops_with_capture", float("nan")),
                  "target": f"saving >= {GROUP_SAVING_TARGET} at FVU gap <= {GROUP_FVU_GAP_TARGET}"},
    )
    ratio, share = summary["transfer_score_ratio_mean"], summary["transfer_token_share"]
    yield AssetCheckResult(
        check_name="transfer_reaches_99pct_of_scratch_score_on_10pct_of_tokens",
        passed=bool(ratio >= TRANSFER_SCORE_TARGET and share <= TRANSFER_TOKEN_TARGET),
        severity=AssetCheckSeverity.WARN,
        metadata={"transfer_score_ratio_mean": ratio, "transfer_token_share": share,
                  "target": f"ratio >= {TRANSFER_SCORE_TARGET} on <= {TRANSFER_TOKEN_TARGET} of the tokens"},
    )


def _wide_markdown(table: pd.DataFrame) -> MetadataValue:
    wide = table.pivot(index="layer", columns="regime", values=["fvu", "ce_loss_score", "kl_sae"])
    wide.columns = [f"{measure}/{regime}" for measure, regime in wide.columns]
    return markdown_table(wide.reset_index(), floatfmt=".3f")


def _by_layer_plot(table: pd.DataFrame) -> MetadataValue:
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    for regime, rows in table.groupby("regime"):
        for axis, measure in zip(axes, ("fvu", "ce_loss_score", "kl_sae")):
            axis.plot(rows.layer, rows[measure], marker="o", markersize=3, label=regime)
            axis.set_xlabel("layer")
            axis.set_title(measure)
    axes[0].legend()
    return figure_markdown(figure)
