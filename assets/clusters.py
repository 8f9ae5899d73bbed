"""Company clusters: the SAE clustering and its baselines, one long table (method, ticker, cluster)."""

import numpy as np
import pandas as pd
from dagster import AssetCheckResult, AssetExecutionContext, Config, MetadataValue, Output, asset, asset_check
from pydantic import Field

from assets.features import dense_features
from assets.metadata import figure_markdown, plt
from peerlens.clustering import (
    cluster_size_summary,
    cosine_distance_matrix,
    labels_from_codes,
    mst_threshold_clusters,
    theta_for_cluster_count,
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
        description="Feature methods without an explicit θ are cut to as many clusters as this code method has.",
    )
    pca_components: int = Field(default=256, description="Components kept before cosine distances (paper: 4,000).")


@asset(group_name="similarity", kinds={"pandas", "parquet"})
def company_clusters(
    context: AssetExecutionContext,
    config: CompanyClustersConfig,
    company_features: pd.DataFrame,
    company_descriptions: pd.DataFrame,
    industry_codes: pd.DataFrame,
) -> Output[pd.DataFrame]:
    """Long frame (method, ticker, cluster) for the SAE clustering and every baseline, on the same companies.

    Feature methods (sae, minilm, tfidf): StandardScaler → PCA → 1 − cos → minimum spanning tree on the
    z-scored distances, edges with z > θ removed, clusters = connected components; θ explicit, or set so
    the method has as many clusters as `match_cluster_count_of`. Code methods: one cluster per code, a
    missing code its own singleton.
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
    thetas = {m: config.theta.get(m, theta_for_cluster_count(d, target)) for m, d in distances.items()}
    for method, d in distances.items():
        labels[method] = mst_threshold_clusters(d, thetas[method])

    frame = pd.concat(
        [pd.DataFrame({"method": method, "ticker": tickers, "cluster": np.asarray(l, dtype=np.int64)}) for method, l in labels.items()],
        ignore_index=True,
    )
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
    sizes = frame.groupby(["method", "cluster"]).size().rename("size").reset_index()
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
