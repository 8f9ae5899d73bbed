"""Dagster assets, one module per stage of the lineage; each calls the libraries and records metadata."""

from dagster import load_asset_checks_from_modules, load_assets_from_modules

from assets import activations, clusters, evaluation, explanations, features, layers, saes, sources

STAGES = [sources, activations, layers, saes, features, clusters, evaluation, explanations]

all_assets = load_assets_from_modules(STAGES)
all_asset_checks = load_asset_checks_from_modules(STAGES)
