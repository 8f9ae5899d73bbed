"""Cluster explanations: the latents that hold each SAE cluster together, in words a reader can check."""

import numpy as np
import pandas as pd
from dagster import AssetIn, AssetCheckResult, Config, MetadataValue, Output, asset, asset_check
from pydantic import Field

from assets.features import TOP_TOKENS_FILE, dense_features
from peerlens.explain import describe_latents, explain_clusters, explanations_markdown, specificity_weighted
from resources import ArtifactStorage, LanguageModelResource
from sae_core.activation_store import ActivationStore
from sae_core.capture import load_tokenizer


class ClusterExplanationsConfig(Config):
    top_latents: int = Field(default=5, description="Latents shown per cluster.")
    context_tokens: int = Field(default=6, description="Tokens of context around each top-activating token.")


@asset(group_name="evaluation", kinds={"pandas", "parquet"})
def cluster_explanations(
    config: ClusterExplanationsConfig,
    company_features: pd.DataFrame,
    company_clusters: pd.DataFrame,
    llm_activations: dict,
    language_model: LanguageModelResource,
    artifacts: ArtifactStorage,
) -> Output[pd.DataFrame]:
    """Per SAE cluster (≥ 2 members): its top latents by drop-one contribution to within-cluster similarity
    (of the IDF-weighted pooled latents, see `specificity_weighted`),
    each with its strongest tokens in context and the companies where it fires most.

    Columns: cluster, size, members, latent, rank, contribution, share, within_similarity, top_tokens, top_companies.
    """
    tickers, features = dense_features(company_features)
    sae_labels = company_clusters[company_clusters.method == "sae"].set_index("ticker").cluster.loc[tickers]
    # Rank latents on IDF-weighted features: a latent every description shares explains no cluster.
    explained = explain_clusters(
        specificity_weighted(features), tickers, sae_labels.to_numpy(), top_latents=config.top_latents
    )
    top_tokens = pd.read_parquet(artifacts.folder("company_features") / TOP_TOKENS_FILE)
    top_tokens = top_tokens[top_tokens.latent.isin(explained.latent.unique())]
    index = ActivationStore(llm_activations["folder"]).index
    tokenizer = load_tokenizer(language_model.name)
    described = describe_latents(
        top_tokens[["latent", "rank", "token_index", "activation"]],
        index[["document", "position", "token_id"]],
        tokenizer.decode,
        features,
        tickers,
        context=config.context_tokens,
    )
    table = explained.merge(described, on="latent", how="left")
    return Output(
        table,
        metadata={
            "clusters_explained": int(table.cluster.nunique()),
            "explanations": MetadataValue.md(explanations_markdown(explained, described)),
        },
    )


@asset_check(asset=cluster_explanations, additional_ins={"company_clusters": AssetIn("company_clusters")})
def every_sae_cluster_is_explained(
    cluster_explanations: pd.DataFrame, company_clusters: pd.DataFrame
) -> AssetCheckResult:
    """Every SAE cluster with two or more members has at least one explaining latent with described tokens."""
    sae = company_clusters[company_clusters.method == "sae"]
    sizes = sae.groupby("cluster").size()
    expected = set(sizes[sizes >= 2].index)
    explained = set(cluster_explanations.cluster.unique())
    undescribed = int(cluster_explanations.top_tokens.isna().sum())
    return AssetCheckResult(
        passed=expected == explained and undescribed == 0,
        metadata={
            "clusters_expected": len(expected),
            "clusters_explained": len(expected & explained),
            "latents_without_tokens": undescribed,
            "mean_share_top1": float(
                np.nan_to_num(cluster_explanations[cluster_explanations["rank"] == 1].share.mean())
            ),
        },
    )
