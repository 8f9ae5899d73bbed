"""Company clusters, point in time: every method's clusters on each clustering date (one time partition
each), and today's clusters from every company's latest text.

Columns as_of, text_id, company_id, method, ticker, cluster, and for the MST methods the tree they were
cut from (tree_parent, tree_z). The methods are registered in `peerlens.similarity.methods`.
"""

from typing import NamedTuple

import numpy as np
import pandas as pd
from dagster import (
    AllPartitionMapping,
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    BackfillPolicy,
    Config,
    MetadataValue,
    Output,
    asset,
    asset_check,
)
from pydantic import Field

from assets.features import dense_features, features_of_texts
from assets.metadata import figure_markdown, markdown_table, plt
from assets.partitions import CLUSTERING_DATES, NEW_PARTITION, TEXT_DATES, partitions_value
from peerlens.similarity.clustering import cosine_distance_matrix
from peerlens.similarity.embeddings import minilm_embeddings, reduced_cosine_distances, tfidf_matrix
from peerlens.similarity.methods import ClusteringConfig
from peerlens.similarity.point_in_time import PointInTimeClusters, point_in_time_clusterings
from peerlens.sources.sample_2017 import members_on
from peerlens.sources.texts import texts_known_on

_DEFAULTS = ClusteringConfig()
EMBEDDING_COLUMNS = [f"e{i}" for i in range(384)]
"""text_embeddings' columns beside text_id: the 384 dimensions of all-MiniLM-L6-v2."""


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
    min_companies: int = Field(default=10, description="A date with fewer companies in its universe gets no clustering.")


class _ClusteringInputs(NamedTuple):
    """What every clustering date reads, with the SAE matrix and MiniLM embeddings made once per run."""

    texts: pd.DataFrame
    sae_features: object
    embeddings: pd.DataFrame
    """text_id → its MiniLM embedding (text_embeddings, one row per text)."""
    codes: pd.DataFrame
    membership: pd.DataFrame
    listed: pd.Series
    """ticker → first price date."""


def _clusterings(config: CompanyClustersConfig, inputs: _ClusteringInputs, dates: list[pd.Timestamp]) -> PointInTimeClusters:
    """Every method's clusters on each of `dates` (see company_clusters)."""

    def distances_of(universe: pd.DataFrame) -> dict[str, np.ndarray]:
        return {
            "sae": reduced_cosine_distances(
                features_of_texts(inputs.sae_features, universe.text_id.tolist()), n_components=config.pca_components
            ),
            "minilm": cosine_distance_matrix(inputs.embeddings.loc[universe.text_id].to_numpy()),
            "tfidf": reduced_cosine_distances(
                tfidf_matrix(universe.description.tolist()), n_components=config.pca_components
            ),
        }

    members = (lambda day: members_on(inputs.membership, day)) if len(inputs.membership) else None
    return point_in_time_clusterings(
        inputs.texts,
        dates,
        distances_of,
        inputs.codes,
        ClusteringConfig(config.theta, config.match_cluster_count_of, config.random_seed),
        members_on=members,
        # A source without prices clusters every company with a text; one with prices only the listed ones.
        tradable_on=(lambda day: set(inputs.listed.index[inputs.listed <= day])) if len(inputs.listed) else None,
        min_companies=config.min_companies,
    )


def _inputs(company_features, text_embeddings, company_descriptions, industry_codes, index_membership, daily_prices):
    return _ClusteringInputs(
        texts=company_descriptions,
        sae_features=dense_features(company_features),  # once: every date's universe is a subset of its rows
        embeddings=text_embeddings.set_index("text_id")[EMBEDDING_COLUMNS],
        codes=industry_codes,
        membership=index_membership,
        listed=daily_prices.groupby("ticker").date.min(),
    )


def _metadata(built: PointInTimeClusters) -> dict:
    frame, summary = built.frame, built.summary
    if frame.empty:
        return {"clustering_dates": 0}
    latest = frame.as_of.max()
    per_date = summary.groupby("as_of").companies.first()
    return {
        "clustering_dates": len(per_date),
        "first_as_of": str(frame.as_of.min().date()),
        "latest_as_of": str(latest.date()),
        "companies_per_date": markdown_table(per_date.rename_axis("as_of").reset_index().astype(str)),
        "theta": markdown_table(built.thetas.pivot(index="as_of", columns="method", values="theta").reset_index()),
        "cluster_sizes_latest": markdown_table(summary[summary.as_of == latest].drop(columns="as_of")),
        "size_histogram_latest": _size_histogram(frame[frame.as_of == latest]),
    }


@asset(
    group_name="similarity",
    kinds={"pandas", "parquet"},
    partitions_def=TEXT_DATES,
    backfill_policy=BackfillPolicy.single_run(),
    check_specs=[AssetCheckSpec("every_text_has_one_unit_embedding", asset="text_embeddings", blocking=True)],
)
def text_embeddings(context: AssetExecutionContext, daily_texts: pd.DataFrame):
    """One partition per day of texts: each text's all-MiniLM-L6-v2 embedding (text_id, e0..e383, unit
    norm), the MiniLM baseline's features. A new filing is embedded once, in its own day."""
    parts = {}
    for key in context.partition_keys:
        texts = texts_known_on(daily_texts, key)
        vectors = minilm_embeddings(texts.description.tolist())
        parts[key] = pd.concat([texts[["text_id"]], pd.DataFrame(vectors, columns=EMBEDDING_COLUMNS)], axis=1)
    yield Output(partitions_value(parts), metadata={"texts": sum(map(len, parts.values())), "days": len(parts)})
    embedded = pd.concat(parts.values(), ignore_index=True)
    norms = np.linalg.norm(embedded[EMBEDDING_COLUMNS].to_numpy(dtype=np.float64), axis=1)
    yield AssetCheckResult(
        check_name="every_text_has_one_unit_embedding",
        passed=bool(embedded.text_id.is_unique and np.allclose(norms, 1.0, atol=1e-3)),
        metadata={"texts": len(embedded), "max_norm_error": float(np.abs(norms - 1).max()) if len(norms) else 0.0},
    )


@asset(
    group_name="similarity",
    kinds={"pandas", "parquet"},
    partitions_def=CLUSTERING_DATES,
    # The UI's "materialize all" and a backfill become one run: the SAE matrix is made once.
    backfill_policy=BackfillPolicy.single_run(),
    ins={name: AssetIn(partition_mapping=AllPartitionMapping()) for name in ("company_features", "text_embeddings")},
    automation_condition=NEW_PARTITION,
)
def company_clusters(
    context: AssetExecutionContext,
    config: CompanyClustersConfig,
    company_features: pd.DataFrame,
    text_embeddings: pd.DataFrame,
    company_descriptions: pd.DataFrame,
    industry_codes: pd.DataFrame,
    index_membership: pd.DataFrame,
    daily_prices: pd.DataFrame,
) -> Output:
    """One partition per clustering date D (its key, every 1 January and 1 July): the long frame (as_of,
    text_id, company_id, method, ticker, cluster, tree_parent, tree_z) of each method's clusters on D, from
    what was known before D. A date whose universe is smaller than `min_companies` (before the first text,
    say) is an empty partition.

    Universe on D: each company's latest text with known_by < D, among the index members on D (all
    companies when index_membership is empty) whose prices started by D. A filing made after D never
    changes partition D: a new 10-K enters at the next date, and in current_company_clusters at once.
    Feature methods (sae, minilm, tfidf): StandardScaler → PCA → 1 − cos → minimum spanning tree on the
    z-scored distances, cut at θ (explicit, or the reference's cluster count on that universe); the
    rows carry the tree (parent ticker and edge z) for later re-cuts. Code methods: one cluster per code.
    `random`: the reference's labels shuffled, the floor.
    """
    keys = context.partition_keys
    inputs = _inputs(company_features, text_embeddings, company_descriptions, industry_codes, index_membership, daily_prices)
    built = _clusterings(config, inputs, [pd.Timestamp(key) for key in keys])
    if not built.summary.empty:
        context.log.info("\n" + built.summary.to_string(index=False))
    parts = {key: built.frame[built.frame.as_of == pd.Timestamp(key)].reset_index(drop=True) for key in keys}
    empty = [key for key, part in parts.items() if part.empty]
    return Output(
        partitions_value(parts),
        metadata={**_metadata(built), "dates_without_a_clustering": ", ".join(empty) or "none"},
    )


@asset(group_name="similarity", kinds={"pandas", "parquet"})
def current_company_clusters(
    config: CompanyClustersConfig,
    company_features: pd.DataFrame,
    text_embeddings: pd.DataFrame,
    company_descriptions: pd.DataFrame,
    industry_codes: pd.DataFrame,
    index_membership: pd.DataFrame,
    daily_prices: pd.DataFrame,
) -> Output[pd.DataFrame]:
    """Today's clusters: company_clusters' frame for one date, the day after the newest text, so every
    company stands for its latest text (a filing made an hour ago included). What `peerlens peers` answers
    by default and the explanations describe; scored only as the evaluations' look-ahead reference.
    """
    day = company_descriptions.known_by.max() + pd.Timedelta(days=1)
    inputs = _inputs(company_features, text_embeddings, company_descriptions, industry_codes, index_membership, daily_prices)
    built = _clusterings(config, inputs, [day])
    if built.frame.empty:
        raise ValueError(
            f"current_company_clusters: the universe on {day.date()} has fewer than {config.min_companies} companies "
            "(company_descriptions, index_membership and daily_prices share too few tickers)"
        )
    return Output(built.frame, metadata=_metadata(built))


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


def _every_company_clustered_by_every_method(clusters: pd.DataFrame) -> AssetCheckResult:
    incomplete = []
    for as_of, rows in clusters.groupby("as_of"):
        per_method = rows.groupby("method").ticker.agg(["count", "nunique"])
        universe = rows.ticker.nunique()
        bad = per_method[(per_method["count"] != universe) | (per_method["nunique"] != universe)]
        incomplete += [f"{as_of.date()} {method}" for method in bad.index]
    return AssetCheckResult(
        passed=bool(not incomplete and not clusters.cluster.isna().any()),
        metadata={"dates": int(clusters.as_of.nunique()), "methods_incomplete": ", ".join(incomplete) or "none"},
    )


def _only_texts_known_before_their_date(clusters: pd.DataFrame, texts: pd.DataFrame) -> AssetCheckResult:
    known_by = clusters.text_id.map(texts.set_index("text_id").known_by)
    late = clusters[~(known_by < clusters.as_of)]
    return AssetCheckResult(passed=late.empty, metadata={"rows": len(clusters), "rows_with_later_text": len(late)})


@asset_check(asset=company_clusters, blocking=True)
def every_company_clustered_by_every_method(company_clusters: pd.DataFrame) -> AssetCheckResult:
    """On every date, each method assigns exactly one cluster to every company in that date's universe."""
    return _every_company_clustered_by_every_method(company_clusters)


@asset_check(asset=company_clusters, blocking=True, additional_ins={"company_descriptions": AssetIn("company_descriptions")})
def clusters_use_only_texts_known_before_their_date(
    company_clusters: pd.DataFrame, company_descriptions: pd.DataFrame
) -> AssetCheckResult:
    """Every clustered company's text was public before the clustering's date (known_by < as_of): the
    point-in-time rule, checked on the stored partitions."""
    return _only_texts_known_before_their_date(company_clusters, company_descriptions)


@asset_check(asset=current_company_clusters, blocking=True)
def every_company_clustered_by_every_method_today(current_company_clusters: pd.DataFrame) -> AssetCheckResult:
    """Each method assigns exactly one cluster to every company of today's universe."""
    return _every_company_clustered_by_every_method(current_company_clusters)
