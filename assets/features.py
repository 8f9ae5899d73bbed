"""Company features: each text's SAE latents, pooled over its tokens."""

from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    AssetOut,
    BackfillPolicy,
    Config,
    Output,
    multi_asset,
)
from pydantic import Field

from assets.activations import open_day_store
from assets.metadata import markdown_table
from assets.partitions import TEXT_DATES, partitions_value
from peerlens.sources.texts import texts_known_on
from resources import ArtifactStorage
from sae_core.activation_stream import masked_layer_chunks, rebatch
from sae_core.features import SparseCodes, encode_batches, pool_documents, token_shares, top_activating_tokens
from sae_core.io import load_sae
from sae_core.sae_set import SaeSet

class CompanyFeaturesConfig(Config):
    layer: int = Field(default=-1, description="Layer whose SAE latents describe a company; -1: two thirds deep.")
    pooling: str = Field(default="mean", description="How token latents become one vector: mean, max or sum.")
    top_tokens_per_latent: int = 10
    max_token_share: float = Field(
        default=0.25,
        description="The check fails when one token makes up more than this share of a company's pooled vector "
        "(sae_core.features.token_shares). On the sample the largest share is 0.10 with massive tokens excluded, "
        "0.38 (median of the companies with one) with them kept.",
    )
    min_tokens_judged: int = Field(
        default=20, description="Companies with fewer usable tokens are listed, not judged: one of 3 tokens is 1/3."
    )


def feature_layer(config_layer: int, n_layers: int) -> int:
    """The configured layer, or two thirds of the way up the stack (deep enough for meaning, before the
    last layers turn towards next-token prediction)."""
    layer = round(2 * (n_layers - 1) / 3) if config_layer == -1 else config_layer
    if not 0 <= layer < n_layers:
        raise ValueError(f"company_features layer {config_layer} is out of range for a model with {n_layers} layers")
    return layer


@multi_asset(
    group_name="similarity",
    partitions_def=TEXT_DATES,
    # Every missing day in one run loads the SAE once.
    backfill_policy=BackfillPolicy.single_run(),
    # Each day's store is opened by its folder (open_day_store), which checks it holds the day's texts.
    deps=[AssetDep("llm_activations")],
    outs={
        "company_features": AssetOut(kinds={"pytorch", "parquet"}, description="Each text's pooled SAE latents."),
        "latent_top_tokens": AssetOut(kinds={"parquet"}, description="Each latent's strongest tokens, per day of texts."),
    },
    check_specs=[
        AssetCheckSpec("every_text_has_a_finite_feature_vector", asset="company_features", blocking=True),
        AssetCheckSpec("no_company_vector_is_dominated_by_one_token", asset="company_features", blocking=True),
        AssetCheckSpec("every_top_token_is_a_stored_usable_token", asset="latent_top_tokens", blocking=True),
    ],
)
def company_features(
    context: AssetExecutionContext,
    config: CompanyFeaturesConfig,
    daily_texts: pd.DataFrame,
    group_saes: SaeSet,
    artifacts: ArtifactStorage,
):
    """One partition per text date D: the sparse long frame (text_id, ticker, latent, value) of the pooled
    SAE code of each text that became known on D, over its usable tokens, zeros omitted. One row set per
    text, not per company: the point-in-time steps choose which of a company's texts stands for it.

    A day is encoded from its own llm_activations store with the current SAE release, and its massive
    tokens are judged by the release's rule against the medians of the corpus the release was trained on
    (`group_saes.massive_rule`): a new filing's features cost one pass of one SAE over its own tokens, and
    no earlier day changes unless the release does.

    latent_top_tokens (latent, rank, activation, document, position, token_id): each latent's strongest
    tokens of the day; `sae_core.features.strongest_tokens` ranks the days' rows into the corpus's.
    """
    if group_saes.massive_rule is None:
        raise ValueError(
            f"group_saes release {group_saes.notes.get('release_version', '?')} records no massive-token rule to "
            "judge new tokens by: retrain it (group_saes config retrain: true)"
        )
    encoder = _DayEncoder(config, group_saes, artifacts)
    texts = {key: texts_known_on(daily_texts, key) for key in context.partition_keys}
    days = {key: encoder(key, texts_of_day) for key, texts_of_day in texts.items()}
    features = pd.concat([day.features for day in days.values()], ignore_index=True)
    dominance = pd.concat([day.dominance for day in days.values()], ignore_index=True)
    dominance = dominance.sort_values("max_token_share", ascending=False, ignore_index=True)
    yield Output(
        partitions_value({key: day.features for key, day in days.items()}),
        output_name="company_features",
        metadata={
            "days": len(days),
            "layer": encoder.layer,
            "sae_release": group_saes.notes.get("release_version", "none"),
            "sae_layers": str(list(encoder.entry.layers)),
            "pooling": config.pooling,
            "texts": int(features.text_id.nunique()),
            "d_sae": encoder.sae.cfg.d_sae,
            "massive_tokens_excluded": sum(day.excluded for day in days.values()),
            "mean_active_latents_per_company": float(features.groupby("text_id").size().mean()),
            "latents_used_by_any_company": int(features.latent.nunique()),
            "density": float(len(features) / (features.text_id.nunique() * encoder.sae.cfg.d_sae)),
            "largest_token_shares": markdown_table(dominance.head(10)),
        },
    )
    yield _finite_check(features, pd.concat(texts.values(), ignore_index=True))
    yield _dominance_check(dominance, config)
    top = pd.concat([day.top_tokens for day in days.values()], ignore_index=True)
    yield Output(
        partitions_value({key: day.top_tokens for key, day in days.items()}),
        output_name="latent_top_tokens",
        metadata={"latents": int(top.latent.nunique()), "rows": len(top)},
    )
    outside = sum(day.top_tokens_not_usable for day in days.values())
    yield AssetCheckResult(
        check_name="every_top_token_is_a_stored_usable_token",
        asset_key="latent_top_tokens",
        passed=outside == 0,
        metadata={"rows": len(top), "rows_not_a_usable_stored_token": outside},
    )


class _EncodedDay(NamedTuple):
    features: pd.DataFrame
    """text_id, ticker, latent, value."""
    top_tokens: pd.DataFrame
    """latent, rank, activation, document, position, token_id."""
    dominance: pd.DataFrame
    """`_largest_token_shares` of the day's texts."""
    excluded: int
    """Massive tokens left out."""
    top_tokens_not_usable: int
    """Top-token rows that are not a usable token of the day's store with a positive activation (0)."""


class _DayEncoder:
    """Encodes one day of texts with the release's SAE at the feature layer; loads the SAE once."""

    def __init__(self, config: CompanyFeaturesConfig, group_saes: SaeSet, artifacts: ArtifactStorage):
        self.config, self.rule, self.artifacts = config, group_saes.massive_rule, artifacts
        self.layer = feature_layer(config.layer, len(self.rule.median_norms))
        self.entry = group_saes.for_layer(self.layer)
        self.sae = load_sae(artifacts.resolve(self.entry.path_for(self.layer)))

    def __call__(self, day: str, texts: pd.DataFrame) -> _EncodedDay:
        store = open_day_store(self.artifacts, day, texts)
        if store.selection.token_share < 1:
            raise ValueError(
                f"{store.folder} keeps a {store.selection.token_share:.0%} sample of its tokens (a training reservoir): "
                "a text's features pool all of its tokens, so capture the day with every token"
            )
        d_sae, index = self.sae.cfg.d_sae, store.index
        usable = self.rule.usable_mask(store.token_norms())
        text_ids = texts.text_id.tolist()
        _refuse_texts_without_usable_tokens(index.document, usable, text_ids)
        rows = torch.nonzero(usable).flatten().numpy()  # store row of each encoded token
        # The layer is read one shard at a time; only the day's sparse codes (k per token) are kept.
        codes = encode_batches(self.sae, rebatch(masked_layer_chunks(store, self.layer, usable), 8192))
        document = index.document.iloc[rows].map({t: i for i, t in enumerate(text_ids)}).to_numpy()
        pooled = pool_documents(codes, document, len(text_ids), d_sae, self.config.pooling).numpy()

        text_row, latents = np.nonzero(pooled)
        features = pd.DataFrame(
            {
                "text_id": np.asarray(text_ids)[text_row],
                "ticker": texts.ticker.to_numpy()[text_row],
                "latent": latents.astype(np.int32),
                "value": pooled[text_row, latents],
            }
        )
        top = top_activating_tokens(codes, n_per_latent=self.config.top_tokens_per_latent)
        top_rows = rows[top.pop("token_index").to_numpy()]
        top = top.join(index[["document", "position", "token_id"]].iloc[top_rows].reset_index(drop=True))
        not_usable = int((~usable.numpy()[top_rows]).sum() + (top.activation <= 0).sum())
        dominance = _largest_token_shares(codes, document, text_ids, index.position.to_numpy()[rows], d_sae)
        return _EncodedDay(features, top, dominance, int((~usable).sum()), not_usable)


def _refuse_texts_without_usable_tokens(documents: pd.Series, usable: torch.Tensor, text_ids: list[str]) -> None:
    left = set(documents[usable.numpy()])
    empty = [text_id for text_id in text_ids if text_id not in left]
    if empty:
        raise ValueError(
            f"texts {empty[:10]} have no usable token: every token of their description is massive "
            "(massive_activations); give them a longer description, or set its treatment to keep"
        )


def _largest_token_shares(
    codes: SparseCodes, document: np.ndarray, text_ids: list[str], position: np.ndarray, d_sae: int
) -> pd.DataFrame:
    """Per text: its tokens, the largest share one token makes up of its pooled vector, and that token's
    position; largest share first."""
    shares = pd.DataFrame(
        {"text": document, "share": token_shares(codes, document, len(text_ids), d_sae).numpy(), "position": position}
    )
    largest = shares.loc[shares.groupby("text").share.idxmax()]
    return pd.DataFrame(
        {
            "text_id": np.asarray(text_ids)[largest.text.to_numpy()],
            "tokens": np.bincount(document, minlength=len(text_ids))[largest.text.to_numpy()],
            "max_token_share": largest.share.to_numpy(),
            "at_position": largest.position.to_numpy(),
        }
    ).sort_values("max_token_share", ascending=False, ignore_index=True)


def _dominance_check(dominance: pd.DataFrame, config: CompanyFeaturesConfig) -> AssetCheckResult:
    """No company with at least `min_tokens_judged` tokens has one token above `max_token_share` of its vector."""
    judged = dominance[dominance.tokens >= config.min_tokens_judged]
    dominated = judged[judged.max_token_share > config.max_token_share]
    return AssetCheckResult(
        check_name="no_company_vector_is_dominated_by_one_token",
        asset_key="company_features",
        passed=dominated.empty,
        metadata={
            "dominated_texts": ", ".join(dominated.text_id) or "none",
            "dominated_share": round(len(dominated) / len(dominance), 4),
            "largest_share": float(dominance.max_token_share.max()),
            "max_token_share": config.max_token_share,
            "too_short_to_judge": ", ".join(dominance.text_id[dominance.tokens < config.min_tokens_judged]) or "none",
        },
    )


def dense_features(company_features: pd.DataFrame, d_sae: int | None = None) -> tuple[list[str], np.ndarray]:
    """(text_ids, (n_texts, d_sae) matrix) from the sparse long frame, texts sorted."""
    text_ids = sorted(company_features.text_id.unique())
    width = d_sae or int(company_features.latent.max()) + 1
    matrix = np.zeros((len(text_ids), width), dtype=np.float32)
    row = company_features.text_id.map({t: i for i, t in enumerate(text_ids)}).to_numpy()
    matrix[row, company_features.latent.to_numpy()] = company_features.value.to_numpy()
    return text_ids, matrix


def features_of_texts(dense: tuple[list[str], np.ndarray], text_ids: list[str]) -> np.ndarray:
    """(len(text_ids), d_sae) rows of `dense` (`dense_features`' result, built once per asset) in the order of
    `text_ids`; every id must have features."""
    known, matrix = dense
    position = pd.Index(known).get_indexer(text_ids)
    if (position < 0).any():
        raise ValueError(f"texts without features: {[t for t, p in zip(text_ids, position) if p < 0][:5]}")
    return matrix[position]


def _finite_check(features: pd.DataFrame, texts: pd.DataFrame) -> AssetCheckResult:
    """Each text of the run's days has at least one active latent, and no value is NaN or inf."""
    missing = sorted(set(texts.text_id) - set(features.text_id))
    non_finite = int((~np.isfinite(features.value.to_numpy())).sum())
    return AssetCheckResult(
        check_name="every_text_has_a_finite_feature_vector",
        asset_key="company_features",
        passed=not missing and non_finite == 0,
        metadata={"texts_without_features": ", ".join(missing[:20]) or "none", "non_finite_values": non_finite},
    )
