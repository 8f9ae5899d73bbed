"""AMAD layer groups: mean angular distances between layers, and the groups one SAE each will serve."""

import numpy as np
import pandas as pd
from dagster import AssetCheckResult, Config, MetadataValue, Output, asset, asset_check
from pydantic import Field

from assets.metadata import figure_markdown, markdown_table, plt
from resources import ArtifactStorage
from sae_core.activation_store import StoreRef
from sae_core.distances import LayerDistances, store_distances
from sae_core.groups import LayerGrouping, choose_layer_groups
from sae_core.massive_activations import MassiveTokens


class LayerDistancesConfig(Config):
    max_tokens: int = Field(default=50_000, description="Tokens averaged over (the first shards of the store).")
    mean_centred: bool = Field(
        default=False,
        description="Subtract each layer's mean residual before the angles, as the Group-SAE authors' code does "
        "(sae_core.distances); off: the paper's text, raw residuals.",
    )


@asset(group_name="layer_groups", kinds={"pytorch"})
def layer_distances(
    config: LayerDistancesConfig, activation_corpus: StoreRef, massive_activations: MassiveTokens, artifacts: ArtifactStorage
) -> Output[LayerDistances]:
    """D̄ (L × L): d(i, j) = arccos(cos(x_i, x_j)) / π between the residual streams of layers i and j, averaged
    over the store's first `max_tokens` usable tokens (massive ones excluded unless massive_activations keeps
    them), of x − μ (each layer's mean over those tokens) when `mean_centred`."""
    store = artifacts.store(activation_corpus)
    usable = massive_activations.usable_mask(store.n_tokens)
    distances, n_tokens = store_distances(store, usable, config.max_tokens, config.mean_centred)
    distances = distances.numpy()
    return Output(
        LayerDistances(distances.round(6).tolist(), n_tokens, store.n_layers, config.mean_centred),
        metadata={
            "tokens_averaged": n_tokens,
            "mean_centred": config.mean_centred,
            "massive_tokens_excluded": int((~usable).sum()),
            "heatmap": _heatmap(distances),
        },
    )


def _heatmap(distances: np.ndarray) -> MetadataValue:
    figure, axis = plt.subplots(figsize=(5.5, 4.5))
    image = axis.imshow(distances, cmap="viridis", vmin=0)
    figure.colorbar(image, ax=axis, label="mean angular distance")
    axis.set_xlabel("layer")
    axis.set_ylabel("layer")
    axis.set_title("D̄: angular distance between layers")
    return figure_markdown(figure)


@asset_check(asset=layer_distances, blocking=True)
def distances_are_a_valid_angular_matrix(layer_distances: LayerDistances) -> AssetCheckResult:
    """D̄ is square, symmetric, zero on the diagonal and inside [0, 1]."""
    d = layer_distances.matrix()
    passed = (
        d.ndim == 2
        and d.shape[0] == d.shape[1]
        and np.allclose(d, d.T, atol=1e-5)
        and np.allclose(np.diag(d), 0, atol=1e-4)
        and bool(((d >= 0) & (d <= 1)).all())
    )
    return AssetCheckResult(passed=bool(passed), metadata={"min": float(d.min()), "max": float(d.max())})


class LayerGroupsConfig(Config):
    amad_threshold: float = Field(default=0.2, description="Ĝ = the smallest G with AMAD(G) below this (paper: 0.2).")


@asset(group_name="layer_groups")
def layer_groups(config: LayerGroupsConfig, layer_distances: LayerDistances) -> Output[LayerGrouping]:
    """Complete-linkage groups of layers 0..L−2 for every G, AMAD(G), Ĝ, and the chosen groups plus the final layer."""
    grouping = choose_layer_groups(layer_distances.matrix(), threshold=config.amad_threshold)
    curve = pd.DataFrame({"G": [str(g) for g in grouping.amad_by_g], "AMAD": list(grouping.amad_by_g.values())})
    groups_table = pd.DataFrame(
        {"sae": range(len(grouping.chosen_groups)), "layers": [str(g) for g in grouping.chosen_groups]}
    )
    return Output(
        grouping,
        metadata={
            "chosen_g": grouping.chosen_g,
            "saes_to_train": len(grouping.chosen_groups),
            "contiguous": grouping.contiguous,
            "amad_at_chosen_g": float(grouping.amad_by_g[grouping.chosen_g]),
            "groups": markdown_table(groups_table, floatfmt="g"),
            "amad_curve": _amad_plot(curve, grouping),
            "amad_table": markdown_table(curve.head(12), floatfmt=".3f"),
        },
    )


def _amad_plot(curve: pd.DataFrame, grouping: LayerGrouping) -> MetadataValue:
    figure, axis = plt.subplots(figsize=(5.5, 3.5))
    axis.plot(curve.G.astype(int), curve.AMAD, marker="o", markersize=3)
    axis.axhline(grouping.threshold, color="grey", linestyle="--", label=f"threshold {grouping.threshold}")
    axis.axvline(grouping.chosen_g, color="red", linestyle=":", label=f"Ĝ = {grouping.chosen_g}")
    axis.set_xlabel("number of groups G")
    axis.set_ylabel("AMAD(G)")
    axis.legend()
    return figure_markdown(figure)


@asset_check(asset=layer_groups, blocking=True)
def groups_partition_every_layer_with_amad_in_unit_interval(layer_groups: LayerGrouping) -> AssetCheckResult:
    """AMAD(G) ∈ [0, 1] for every G, and the chosen groups cover each layer exactly once."""
    grouping = layer_groups
    amads = np.array(list(grouping.amad_by_g.values()))
    layers = sorted(layer for group in grouping.chosen_groups for layer in group)
    n_layers = max(layers) + 1
    return AssetCheckResult(
        passed=bool(((amads >= 0) & (amads <= 1)).all()) and layers == list(range(n_layers)),
        metadata={"amad_min": float(amads.min()), "amad_max": float(amads.max()), "layers_covered": len(layers)},
    )

