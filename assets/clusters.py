"""Company clusters: the SAE clustering and its baselines, one long table.

Columns method, ticker, cluster, and for the MST methods the tree they were cut from (tree_parent, tree_z).
"""

import numpy as np
import pandas as pd
from dagster import AssetCheckResult, AssetExecutionContext, Config, MetadataValue, Output, asset, asset_check
from pydantic import Field

from assets.features import dense_features
from assets.metadata import figure_markdown, plt
from peerlens.clustering import (
    cluster_size_summary,
    cosine_distance_matrix,
    cut_spanning_tree,
    labels_from_codes,
    minimum_spanning_tree_z,
    random_clusters_like,
    root_spanning_tree,
    theta_for_cluster_count_on_tree,
)
from peerlens.embeddings import minilm_embeddings, reduced_cosine_distances, tfidf_matrix

CODE_METHODS = {
    "sic4": "sic4",
    "sic2": "sic2",
    "sic_division": "sic_division",
    "gics_sector": "gics_sector",
    "gics_sub_industry": "gics_sub_industry",
}
"""Baselines read straight off an industry code: method name → industry_codes column."""


class CompanyClustersConfig(Config):
    theta: dict[str, float] = Field(
        default={},
        description="Explicit MST cut per feature method (sae, minilm, tfidf): drop tree edges with z > θ.",
    )
    match_cluster_count_of: str = Field(
        default="gics_sub_industry",
        description="Feature methods without an explicit θ are cut to as many clusters as this code method has; "
        "the `random` method copies its cluster sizes.",
    )
    random_seed: int = Field(default=0, description="Seed of the `random` clustering (the floor).")
    pca_components: int = Field(default=256, description="Components kept before cosine distances (paper: 4,000).")


@asset(group_name="similarity", kinds={"pandas", "parquet"})
def company_clusters(
    context: AssetExecutionContext,
    config: CompanyClustersConfig,
    company_features: pd.DataFrame,
    company_descriptions: pd.DataFrame,
    industry_codes: pd.DataFrame,
) -> Output[pd.DataFrame]:
    """Long frame (method, ticker, cluster, tree_parent, tree_z) for the SAE clustering and every baseline.

    Feature methods (sae, minilm, tfidf): StandardScaler → PCA → 1 − cos → minimum spanning tree on the
    z-scored distances, edges with z > θ removed, clusters = connected components; θ explicit, or set so
    the method has as many clusters as `match_cluster_count_of`. Their rows also carry the tree itself
    (each company's parent ticker and the edge's z; None/NaN for the root), so later stages can re-cut it
    at any θ without the features. Code methods: one cluster per code, a missing code its own
    singleton. `random`: the reference's labels shuffled (same cluster sizes), the floor. Code and
    random rows have no tree (None/NaN).
    """
    tickers, sae_matrix = dense_features(company_features)
    descriptions = company_descriptions.set_index("ticker").loc[tickers, "description"].tolist()
    distances = {
        "sae": reduced_cosine_distances(sae_matrix, n_components=config.pca_components),
        "minilm": cosine_distance_matrix(minilm_embeddings(descriptions)),
        "tfidf": reduced_cosine_distances(tfidf_matrix(descriptions), n_components=config.pca_components),
    }
    unknown = sorted(set(config.theta) - set(distances))
    if unknown:
        raise ValueError(f"company_clusters theta: unknown methods {unknown}; feature methods are {sorted(distances)}")
    if config.match_cluster_count_of not in CODE_METHODS:
        raise ValueError(f"match_cluster_count_of {config.match_cluster_count_of!r} is not one of {sorted(CODE_METHODS)}")
    codes = industry_codes.set_index("ticker").reindex(tickers)
    labels = {
        method: labels_from_codes(codes[column].reset_index(drop=True)) for method, column in CODE_METHODS.items()
    }
    # A θ fixed on the z scale means a different granularity for every representation; by default
    # every feature method is cut to the reference's cluster count, so methods differ in how they group.
    target = len(np.unique(labels[config.match_cluster_count_of]))
    trees = {method: minimum_spanning_tree_z(d) for method, d in distances.items()}
    thetas = {m: config.theta.get(m, theta_for_cluster_count_on_tree(tree, target)) for m, tree in trees.items()}
    for method, tree in trees.items():
        labels[method] = cut_spanning_tree(tree, thetas[method])
    labels["random"] = random_clusters_like(labels[config.match_cluster_count_of], seed=config.random_seed)

    tickers = np.asarray(tickers, dtype=object)
    no_tree = (np.full(len(tickers), -1), np.full(len(tickers), np.nan))
    frames = []
    for method, method_labels in labels.items():
        parent, z = root_spanning_tree(trees[method]) if method in trees else no_tree
        frames.append(
            pd.DataFrame(
                {
                    "method": method,
                    "ticker": tickers,
                    "cluster": np.asarray(method_labels, dtype=np.int64),
                    "tree_parent": np.where(parent >= 0, tickers[np.maximum(parent, 0)], None),
                    "tree_z": z,
                }
            )
        )
    frame = pd.concat(frames, ignore_index=True)
    summary = pd.DataFrame([{"method": m, **cluster_size_summary(l)} for m, l in labels.items()])
    context.log.info("\n" + summary.to_string(index=False))
    return Output(
        frame,
        metadata={
            "methods": len(labels),
            "theta": MetadataValue.json({m: round(t, 4) for m, t in thetas.items()}),
            "companies": len(tickers),
            "cluster_sizes": MetadataValue.md(summary.to_markdown(index=False, floatfmt=".3f")),
            "size_histogram": _size_histogram(frame),
        },
    )


def _size_histogram(frame: pd.DataFrame) -> MetadataValue:
    # random copies the reference's sizes exactly: its curve would only hide the reference's.
    sizes = frame[frame.method != "random"].groupby(["method", "cluster"]).size().rename("size").reset_index()
    figure, axis = plt.subplots(figsize=(7, 3.5))
    bins = np.unique(np.logspace(0, np.log10(max(sizes["size"].max(), 2)) + 0.01, 15).astype(int))
    for method, group in sizes.groupby("method"):
        counts, _ = np.histogram(group["size"], bins=np.append(bins, bins[-1] + 1))
        axis.plot(np.append(bins, bins[-1] + 1)[:-1], counts, marker="o", markersize=3, label=method)
    axis.set_xscale("log")
    axis.set_xlabel("cluster size")
    axis.set_ylabel("clusters")
    axis.legend(fontsize=7)
    return figure_markdown(figure)


@asset_check(asset=company_clusters, blocking=True)
def every_company_clustered_by_every_method(company_clusters: pd.DataFrame) -> AssetCheckResult:
    """Each method assigns exactly one cluster to every company in the universe."""
    per_method = company_clusters.groupby("method").ticker.agg(["count", "nunique"])
    universe = company_clusters.ticker.nunique()
    incomplete = per_method[(per_method["count"] != universe) | (per_method["nunique"] != universe)]
    return AssetCheckResult(
        passed=bool(incomplete.empty and not company_clusters.cluster.isna().any()),
        metadata={"companies": universe, "methods_incomplete": ", ".join(incomplete.index) or "none"},
    )
