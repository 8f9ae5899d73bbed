"""Dagster assets, one module per stage of the lineage; each calls the libraries and records metadata."""

from dagster import load_asset_checks_from_modules, load_assets_from_modules

from assets import (
    activations,
    clusters,
    correlations,
    evaluation,
    explanations,
    features,
    layers,
    sae_comparison,
    sae_regimes,
    saes,
    sources,
)

STAGES = [sources, activations, layers, saes, sae_regimes, sae_comparison, features, clusters, correlations, evaluation, explanations]

all_assets = load_assets_from_modules(STAGES)
all_asset_checks = load_asset_checks_from_modules(STAGES)
