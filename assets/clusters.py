"""Company clusters, point in time: every method's clusters on each clustering date, one long table.

Columns as_of, text_id, company_id, method, ticker, cluster, and for the MST methods the tree they were
cut from (tree_parent, tree_z). The methods are registered in `peerlens.similarity.methods`.
"""

import numpy as np
import pandas as pd
from dagster import AssetCheckResult, AssetExecutionContext, AssetIn, Config, MetadataValue, Output, asset, asset_check
from pydantic import Field

from assets.features import dense_features, features_of_texts
from assets.metadata import figure_markdown, plt
from peerlens.similarity.clustering import cosine_distance_matrix
from peerlens.similarity.embeddings import minilm_embeddings, reduced_cosine_distances, tfidf_matrix
from peerlens.similarity.methods import ClusteringConfig
from peerlens.similarity.point_in_time import clustering_dates, point_in_time_clusterings
from peerlens.sources.sample_2017 import members_on

_DEFAULTS = ClusteringConfig()


class CompanyClustersConfig(Config):
    theta: dict[str, float] = Field(
        default={},
        description="Explicit MST cut per feature method (sae, minilm, tfidf): drop tree edges with z > θ.",
    )
    match_cluster_count_of: str = Field(
        default=_DEFAULTS.match_cluster_count_of,
        description="Feature methods without an explicit θ are cut to as many clusters as this code method has; "
        "the `random` method copies its cluster sizes.",
    )
    random_seed: int = Field(default=_DEFAULTS.random_seed, description="Seed of the `random` clustering (the floor).")
    pca_components: int = Field(default=256, description="Components kept before cosine distances (paper: 4,000).")
    months: list[int] = Field(
        default=[1, 7],
        description="Clustering dates: the first day of these months after the first text was known, up to the last "
        "price date (1 January dates the clusters each scored year uses; 1 July adds half-yearly refits for trading).",
    )
    min_companies: int = Field(default=10, description="Dates with fewer companies in the universe are skipped.")


@asset(group_name="similarity", kinds={"pandas", "parquet"})
def company_clusters(
    context: AssetExecutionContext,
    config: CompanyClustersConfig,
    company_features: pd.DataFrame,
    company_descriptions: pd.DataFrame,
    industry_codes: pd.DataFrame,
    index_membership: pd.DataFrame,
    daily_prices: pd.DataFrame,
) -> Output[pd.DataFrame]:
    """Long frame (as_of, text_id, company_id, method, ticker, cluster, tree_parent, tree_z): each method's
    clusters on each clustering date D, from what was known before D.

    Universe on D: each company's latest text with known_by < D, among the index members on D (all
    companies when index_membership is empty) whose prices started by D. One more date, the day after the
    newest text, is added when it falls after the last price date (the clusters for today's peers).
    Feature methods (sae, minilm, tfidf): StandardScaler → PCA → 1 − cos → minimum spanning tree on the
    z-scored distances, cut at θ (explicit, or the reference's cluster count on that universe); the
    rows carry the tree (parent ticker and edge z) for later re-cuts. Code methods: one cluster per code.
    `random`: the reference's labels shuffled, the floor.
    """
    texts = company_descriptions
    last_price = daily_prices.date.max()
    dates = clustering_dates(texts, last_price, tuple(config.months))
    newest = texts.known_by.max() + pd.Timedelta(days=1)
    if not dates or newest > dates[-1]:
        dates.append(newest)
    listed = daily_prices.groupby("ticker").date.min()
    members = (lambda day: members_on(index_membership, day)) if len(index_membership) else None
    embeddings = dict(zip(texts.text_id, minilm_embeddings(texts.description.tolist())))
    sae_features = dense_features(company_features)  # once: every date's universe is a subset of its rows

    def distances_of(universe: pd.DataFrame) -> dict[str, np.ndarray]:
        return {
            "sae": reduced_cosine_distances(
                features_of_texts(sae_features, universe.text_id.tolist()), n_components=config.pca_components
            ),
            "minilm": cosine_distance_matrix(np.stack([embeddings[t] for t in universe.text_id])),
            "tfidf": reduced_cosine_distances(
                tfidf_matrix(universe.description.tolist()), n_components=config.pca_components
            ),
        }

    built = point_in_time_clusterings(
        texts,
        dates,
        distances_of,
        industry_codes.set_index("ticker"),
        ClusteringConfig(config.theta, config.match_cluster_count_of, config.random_seed),
        members_on=members,
        tradable_on=lambda day: set(listed.index[listed <= day]),
        min_companies=config.min_companies,
    )
    frame, summary = built.frame, built.summary
    context.log.info("\n" + summary.to_string(index=False))
    latest = frame.as_of.max()
    per_date = summary.groupby("as_of").companies.first()
    return Output(
        frame,
        metadata={
            "clustering_dates": len(per_date),
            "first_as_of": str(frame.as_of.min().date()),
            "latest_as_of": str(latest.date()),
            "companies_per_date": MetadataValue.md(per_date.rename_axis("as_of").reset_index().astype(str).to_markdown(index=False)),
            "theta": MetadataValue.md(built.thetas.pivot(index="as_of", columns="method", values="theta").reset_index().to_markdown(index=False, floatfmt=".3f")),
            "cluster_sizes_latest": MetadataValue.md(
                summary[summary.as_of == latest].drop(columns="as_of").to_markdown(index=False, floatfmt=".3f")
            ),
            "size_histogram_latest": _size_histogram(frame[frame.as_of == latest]),
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
    """On every date, each method assigns exactly one cluster to every company in that date's universe."""
    incomplete = []
    for as_of, rows in company_clusters.groupby("as_of"):
        per_method = rows.groupby("method").ticker.agg(["count", "nunique"])
        universe = rows.ticker.nunique()
        bad = per_method[(per_method["count"] != universe) | (per_method["nunique"] != universe)]
        incomplete += [f"{as_of.date()} {method}" for method in bad.index]
    return AssetCheckResult(
        passed=bool(not incomplete and not company_clusters.cluster.isna().any()),
        metadata={"dates": int(company_clusters.as_of.nunique()), "methods_incomplete": ", ".join(incomplete) or "none"},
    )


@asset_check(asset=company_clusters, blocking=True, additional_ins={"company_descriptions": AssetIn("company_descriptions")})
def clusters_use_only_texts_known_before_their_date(
    company_clusters: pd.DataFrame, company_descriptions: pd.DataFrame
) -> AssetCheckResult:
    """Every clustered company's text was public before the clustering's date (known_by < as_of): the
    point-in-time rule, checked on the stored table."""
    known_by = company_clusters.text_id.map(company_descriptions.set_index("text_id").known_by)
    late = company_clusters[~(known_by < company_clusters.as_of)]
    return AssetCheckResult(
        passed=late.empty,
        metadata={"rows": len(company_clusters), "rows_with_later_text": len(late)},
    )
