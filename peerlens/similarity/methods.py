"""The clustering methods, registered in one place: SAE features, the text baselines, industry codes, random.

    feature methods   sae, minilm, tfidf: a distance matrix → minimum spanning tree → cut at θ
    code methods      sic4, sic2, sic_division, gics_sector, gics_sub_industry: one cluster per code
    random            the reference's labels shuffled (same cluster sizes): the floor

A new method is one entry here. `cluster_every_method` turns one universe's distances and codes into
the long clusters frame the evaluations read (method, ticker, cluster, tree_parent, tree_z).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd

from peerlens.similarity.clustering import (
    cluster_size_summary,
    cut_spanning_tree,
    labels_from_codes,
    minimum_spanning_tree_z,
    random_clusters_like,
    root_spanning_tree,
    theta_for_cluster_count_on_tree,
)

FEATURE_METHODS = ("sae", "minilm", "tfidf")
"""Methods clustered from a distance matrix (an MST cut at θ)."""
CODE_METHODS = {
    "sic4": "sic4",
    "sic2": "sic2",
    "sic_division": "sic_division",
    "gics_sector": "gics_sector",
    "gics_sub_industry": "gics_sub_industry",
}
"""Baselines read straight off an industry code: method name → industry_codes column."""
RANDOM = "random"
METHODS = (*FEATURE_METHODS, *CODE_METHODS, RANDOM)
CLUSTER_COLUMNS = ("method", "ticker", "cluster", "tree_parent", "tree_z")


COMPANIES_PER_CLUSTER_WITHOUT_CODES = 4
"""When no company of a universe has the reference code (your own universe may carry none), feature methods
are cut to one cluster per this many companies: the S&P 500's companies per GICS sub-industry (503 / 127)."""


def cluster_count_without_codes(companies: int) -> int:
    """round(companies / COMPANIES_PER_CLUSTER_WITHOUT_CODES), at least 1."""
    return max(1, round(companies / COMPANIES_PER_CLUSTER_WITHOUT_CODES))


@dataclass(frozen=True)
class ClusteringConfig:
    theta: dict[str, float] = field(default_factory=dict)
    """Explicit MST cut per feature method: tree edges with z > θ are dropped."""
    match_cluster_count_of: str = "gics_sub_industry"
    """Feature methods without an explicit θ are cut to as many clusters as this code method has (when no company
    has the code: `cluster_count_without_codes`); random copies its sizes (then the first feature method's)."""
    random_seed: int = 0

    def __post_init__(self):
        unknown = sorted(set(self.theta) - set(FEATURE_METHODS))
        if unknown:
            raise ValueError(f"clustering theta: unknown methods {unknown}; feature methods are {list(FEATURE_METHODS)}")
        if self.match_cluster_count_of not in CODE_METHODS:
            raise ValueError(
                f"match_cluster_count_of {self.match_cluster_count_of!r} is not one of {sorted(CODE_METHODS)}"
            )


class Clustering(NamedTuple):
    frame: pd.DataFrame
    """CLUSTER_COLUMNS, one row per (method, ticker); tree columns None/NaN for code and random methods."""
    thetas: dict[str, float]
    """The cut used per feature method."""
    summary: pd.DataFrame
    """One row per method: cluster_size_summary (clusters, singletons, largest, …)."""


def cluster_every_method(
    tickers: list[str], distances: dict[str, np.ndarray], codes: pd.DataFrame, config: ClusteringConfig
) -> Clustering:
    """Every registered method's clusters of `tickers`.

    Args:
        tickers: the universe, n companies.
        distances: feature method → (n, n) distance matrix in `tickers` order (methods left out are skipped).
        codes: industry codes indexed by ticker (CODE_METHODS columns); a company without a code is its
            own singleton.
    """
    unknown = sorted(set(distances) - set(FEATURE_METHODS))
    if unknown:
        raise ValueError(f"distances for unregistered methods {unknown}; feature methods are {list(FEATURE_METHODS)}")
    for method, matrix in distances.items():
        if matrix.shape != (len(tickers), len(tickers)):
            raise ValueError(f"{method} distances have shape {matrix.shape}, expected {(len(tickers),) * 2}")
    codes = codes.reindex(tickers)
    labels = {method: labels_from_codes(codes[column].reset_index(drop=True)) for method, column in CODE_METHODS.items()}
    # A θ fixed on the z scale means a different granularity for every representation; by default
    # every feature method is cut to the reference's cluster count, so methods differ in how they group.
    reference = config.match_cluster_count_of
    has_reference = codes[CODE_METHODS[reference]].notna().any()
    target = len(np.unique(labels[reference])) if has_reference else cluster_count_without_codes(len(tickers))
    trees = {method: minimum_spanning_tree_z(matrix) for method, matrix in distances.items()}
    thetas = {m: config.theta.get(m, theta_for_cluster_count_on_tree(tree, target)) for m, tree in trees.items()}
    for method, tree in trees.items():
        labels[method] = cut_spanning_tree(tree, thetas[method])
    sizes_like = reference if has_reference or not trees else next(iter(trees))
    labels[RANDOM] = random_clusters_like(labels[sizes_like], seed=config.random_seed)

    names = np.asarray(tickers, dtype=object)
    no_tree = (np.full(len(names), -1), np.full(len(names), np.nan))
    frames = []
    for method in [m for m in METHODS if m in labels]:
        parent, z = root_spanning_tree(trees[method]) if method in trees else no_tree
        frames.append(
            pd.DataFrame(
                {
                    "method": method,
                    "ticker": names,
                    "cluster": np.asarray(labels[method], dtype=np.int64),
                    "tree_parent": np.where(parent >= 0, names[np.maximum(parent, 0)], None),
                    "tree_z": z,
                }
            )
        )
    summary = pd.DataFrame([{"method": m, **cluster_size_summary(labels[m])} for m in METHODS if m in labels])
    return Clustering(pd.concat(frames, ignore_index=True), thetas, summary)
