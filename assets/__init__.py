"""Dagster assets, one module per stage of the lineage; each calls the libraries and records metadata.

Every asset's code version is a hash of its module's source: editing a stage marks what it built (and
everything downstream) stale in the UI, and `materialize_graph(only_stale=True)` reruns exactly that.
"""

import hashlib
import inspect

from dagster import load_asset_checks_from_modules, load_assets_from_modules, map_asset_specs

from assets import (
    activations,
    clusters,
    correlations,
    evaluation,
    explanations,
    features,
    layers,
    representation_study,
    sae_comparison,
    sae_regimes,
    saes,
    sources,
)

STAGES = [
    sources, activations, layers, saes, sae_regimes, sae_comparison, features, clusters, correlations, evaluation,
    explanations, representation_study,
]


def _with_code_version(module):
    version = hashlib.sha256(inspect.getsource(module).encode()).hexdigest()[:12]
    return map_asset_specs(lambda spec: spec.replace_attributes(code_version=version), load_assets_from_modules([module]))


all_assets = [asset for module in STAGES for asset in _with_code_version(module)]
all_asset_checks = load_asset_checks_from_modules(STAGES)
