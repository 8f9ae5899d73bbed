"""Explanations in words a reader can check: the latents that hold each SAE cluster together, and each
company's most specific latents (with every latent's description, which the `peerlens` CLI reads)."""

import math

import numpy as np
import pandas as pd
from dagster import AssetCheckResult, AssetIn, AssetOut, Config, MetadataValue, Output, asset, asset_check, multi_asset
from pydantic import Field

from assets.features import dense_features, features_of_texts
from peerlens.similarity import company_latents
from peerlens.similarity.explain import describe_latents, explain_clusters, explanations_markdown, specificity_weighted
from peerlens.sources.texts import latest_texts
from resources import ArtifactStorage, LanguageModelResource
from sae_core.activation_store import StoreRef
from sae_core.capture import load_tokenizer
from sae_core.features import strongest_tokens


def _describe(
    latents: np.ndarray,
    hits_per_latent: int | None,
    context_tokens: int,
    features: np.ndarray,
    tickers: list[str],
    latent_top_tokens: pd.DataFrame,
    activation_corpus: StoreRef,
    language_model: LanguageModelResource,
    artifacts: ArtifactStorage,
) -> pd.DataFrame:
    """`describe_latents` of `latents` from their strongest tokens in the corpus, at most `hits_per_latent`
    each (None: as many as each day kept). latent_top_tokens holds every day's; the texts of the corpus now
    are ranked together, and each hit is found in activation_corpus's index for its context."""
    index = artifacts.store(activation_corpus).index
    in_corpus = latent_top_tokens[latent_top_tokens.latent.isin(latents) & latent_top_tokens.document.isin(index.document)]
    kept_per_day = int(latent_top_tokens["rank"].max()) if len(latent_top_tokens) else 1
    top_tokens = strongest_tokens(in_corpus, hits_per_latent or kept_per_day)
    rows = index[["document", "position"]].rename_axis("token_index").reset_index()
    top_tokens = top_tokens.merge(rows, on=["document", "position"], how="left", validate="many_to_one")
    if top_tokens.token_index.isna().any():
        raise ValueError(
            "latent_top_tokens names tokens activation_corpus does not hold: materialize llm_activations and "
            "company_features for the same texts"
        )
    return describe_latents(
        top_tokens[["latent", "rank", "token_index", "activation"]].astype({"token_index": "int64"}),
        index[["document", "position", "token_id"]],
        load_tokenizer(language_model.name).decode,
        features,
        tickers,
        context=context_tokens,
    )


def _current_sae_clusters(current_company_clusters: pd.DataFrame) -> pd.DataFrame:
    """The SAE method's rows of today's clusters (latest texts and universe), by ticker."""
    sae = current_company_clusters[current_company_clusters.method == "sae"]
    return sae.sort_values("ticker").reset_index(drop=True)


class ClusterExplanationsConfig(Config):
    top_latents: int = Field(default=5, description="Latents shown per cluster.")
    context_tokens: int = Field(default=6, description="Tokens of context around each top-activating token.")


@asset(group_name="evaluation", kinds={"pandas", "parquet"})
def cluster_explanations(
    config: ClusterExplanationsConfig,
    company_features: pd.DataFrame,
    latent_top_tokens: pd.DataFrame,
    current_company_clusters: pd.DataFrame,
    activation_corpus: StoreRef,
    language_model: LanguageModelResource,
    artifacts: ArtifactStorage,
) -> Output[pd.DataFrame]:
    """Per SAE cluster (≥ 2 members) of today's clusters: its top latents by drop-one contribution to within-cluster similarity
    (of the IDF-weighted pooled latents, see `specificity_weighted`),
    each with its strongest tokens in context and the companies where it fires most.

    Columns: cluster, size, members, latent, rank, contribution, share, within_similarity, top_tokens, top_companies.
    """
    sae = _current_sae_clusters(current_company_clusters)
    tickers, features = sae.ticker.tolist(), features_of_texts(dense_features(company_features), sae.text_id.tolist())
    sae_labels = sae.cluster
    # Rank latents on IDF-weighted features: a latent every description shares explains no cluster.
    explained = explain_clusters(
        specificity_weighted(features), tickers, sae_labels.to_numpy(), top_latents=config.top_latents
    )
    described = _describe(
        explained.latent.unique(), None, config.context_tokens, features, tickers,
        latent_top_tokens, activation_corpus, language_model, artifacts,
    )
    table = explained.merge(described, on="latent", how="left")
    return Output(
        table,
        metadata={
            "clusters_explained": int(table.cluster.nunique()),
            "explanations": MetadataValue.md(explanations_markdown(explained, described)),
        },
    )


@asset_check(asset=cluster_explanations, additional_ins={"current_company_clusters": AssetIn("current_company_clusters")})
def every_sae_cluster_is_explained(
    cluster_explanations: pd.DataFrame, current_company_clusters: pd.DataFrame
) -> AssetCheckResult:
    """Every SAE cluster of today's clusters with two or more members has an explaining latent with described tokens."""
    sae = _current_sae_clusters(current_company_clusters)
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


class CompanyTopLatentsConfig(Config):
    top_latents: int = Field(default=10, description="Latents kept per company.")
    hits_per_latent: int = Field(default=3, description="Top-activating tokens shown per latent description.")
    context_tokens: int = Field(default=6, description="Tokens of context around each top-activating token.")
    companies_shown: int = Field(default=20, description="Companies written in the UI report (the parquet has all).")


@multi_asset(
    group_name="evaluation",
    outs={
        "company_top_latents": AssetOut(kinds={"pandas", "parquet"}, description="Each company's most specific latents."),
        "latent_descriptions": AssetOut(
            kinds={"parquet"}, description="Every latent that fires: its top tokens in context and top companies."
        ),
    },
)
def company_top_latents(
    config: CompanyTopLatentsConfig,
    company_features: pd.DataFrame,
    latent_top_tokens: pd.DataFrame,
    company_descriptions: pd.DataFrame,
    activation_corpus: StoreRef,
    language_model: LanguageModelResource,
    artifacts: ArtifactStorage,
):
    """Per company: its most specific latents, each with its strongest tokens in context and top companies.

    Ranked on specificity-weighted pooled values, as the cluster explanations rank theirs: a latent that
    fires in every description (punctuation, boilerplate) says nothing about this company, and the peer
    query compares companies on these same weighted profiles. latent_descriptions (latent, top_tokens,
    top_companies) describes every latent that fires; `peerlens peers` and `peerlens explain` read it.

    Columns: ticker, rank, latent, value, weighted_value, share, top_tokens, top_companies.
    """
    current = latest_texts(company_descriptions)
    tickers = current.ticker.tolist()
    features = features_of_texts(dense_features(company_features), current.text_id.tolist())
    top = company_latents.company_top_latents(features, tickers, n_latents=config.top_latents)
    fired = np.flatnonzero(features.max(axis=0) > 0)
    described = _describe(
        fired, config.hits_per_latent, config.context_tokens, features, tickers,
        latent_top_tokens, activation_corpus, language_model, artifacts,
    )

    # An even spread through the alphabet, so the sample is not all A-companies.
    shown = tickers[:: max(1, math.ceil(len(tickers) / config.companies_shown))][: config.companies_shown]
    names = dict(zip(company_descriptions.ticker, company_descriptions.name))
    table = top.merge(described, on="latent", how="left")
    yield Output(
        table,
        output_name="company_top_latents",
        metadata={
            "companies": int(table.ticker.nunique()),
            "top_latents": MetadataValue.md(company_latents.company_latents_markdown(top, described, shown, names)),
        },
    )
    yield Output(described, output_name="latent_descriptions", metadata={"latents_described": len(described)})


@asset_check(asset="company_top_latents", additional_ins={"company_features": AssetIn("company_features")})
def every_company_has_described_top_latents(
    company_top_latents: pd.DataFrame, company_features: pd.DataFrame
) -> AssetCheckResult:
    """Every company (by its latest text) has at least one specific latent, and every listed latent has tokens."""
    missing = sorted(set(company_features.ticker) - set(company_top_latents.ticker))
    undescribed = int(company_top_latents.top_tokens.isna().sum())
    return AssetCheckResult(
        passed=not missing and undescribed == 0,
        metadata={
            "companies_without_specific_latents": ", ".join(missing[:20]) or "none",
            "latents_without_tokens": undescribed,
            "mean_share_top1": float(
                np.nan_to_num(company_top_latents[company_top_latents["rank"] == 1].share.mean())
            ),
        },
    )


@asset_check(asset="latent_descriptions")
def every_described_latent_has_tokens_and_companies(latent_descriptions: pd.DataFrame) -> AssetCheckResult:
    """Each latent the CLI may name is described: top tokens in context and the companies where it fires."""
    missing = latent_descriptions[latent_descriptions.top_tokens.isna() | latent_descriptions.top_companies.isna()]
    return AssetCheckResult(
        passed=len(latent_descriptions) > 0 and missing.empty and latent_descriptions.latent.is_unique,
        metadata={"latents": len(latent_descriptions), "undescribed": len(missing)},
    )
