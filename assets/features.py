"""Company features: each text's SAE latents, pooled over its tokens."""

import numpy as np
import pandas as pd
import torch
from dagster import AssetCheckResult, AssetCheckSpec, AssetIn, AssetOut, Config, Output, asset_check, multi_asset
from pydantic import Field

from assets.metadata import markdown_table
from resources import ArtifactStorage
from sae_core.activation_store import StoreRef
from sae_core.features import SparseCodes, encode_tokens, pool_documents, token_shares, top_activating_tokens
from sae_core.io import load_sae
from sae_core.massive_activations import MassiveTokens
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
    outs={
        "company_features": AssetOut(kinds={"pytorch", "parquet"}, description="Each text's pooled SAE latents."),
        "latent_top_tokens": AssetOut(kinds={"parquet"}, description="Each latent's strongest tokens."),
    },
    check_specs=[
        AssetCheckSpec("no_company_vector_is_dominated_by_one_token", asset="company_features", blocking=True),
        AssetCheckSpec("every_top_token_is_a_stored_usable_token", asset="latent_top_tokens", blocking=True),
    ],
)
def company_features(
    config: CompanyFeaturesConfig,
    activation_corpus: StoreRef,
    massive_activations: MassiveTokens,
    group_saes: SaeSet,
    company_descriptions: pd.DataFrame,
    artifacts: ArtifactStorage,
):
    """Sparse long frame (text_id, ticker, latent, value): the pooled SAE code of each text over its usable
    tokens (massive ones excluded unless massive_activations keeps them), zeros omitted. One row set per
    text, not per company: the point-in-time steps choose which of a company's texts stands for it.

    latent_top_tokens (latent, rank, token_index, activation, document, position, token_id): each latent's
    strongest tokens, for the explanations; token_index is the row in activation_corpus's store.
    """
    store = artifacts.store(activation_corpus)
    layer = feature_layer(config.layer, store.n_layers)
    entry = group_saes.for_layer(layer)
    sae = load_sae(artifacts.resolve(entry.path))
    usable = massive_activations.usable_mask(store.n_tokens)
    index = store.index
    text_ids = sorted(index.document.unique())
    _refuse_texts_without_usable_tokens(index.document, usable, text_ids)
    rows = torch.nonzero(usable).flatten().numpy()  # store row of each encoded token
    codes = encode_tokens(sae, store.layer(layer)[usable])
    document = index.document.iloc[rows].map({t: i for i, t in enumerate(text_ids)}).to_numpy()
    pooled = pool_documents(codes, document, len(text_ids), sae.cfg.d_sae, config.pooling).numpy()
    dominance = _largest_token_shares(codes, document, text_ids, index.position.to_numpy()[rows], sae.cfg.d_sae)

    nonzero_rows, latents = np.nonzero(pooled)
    ticker_of = company_descriptions.set_index("text_id").ticker
    frame = pd.DataFrame(
        {
            "text_id": np.asarray(text_ids)[nonzero_rows],
            "latent": latents.astype(np.int32),
            "value": pooled[nonzero_rows, latents],
        }
    )
    frame.insert(1, "ticker", frame.text_id.map(ticker_of))
    top = top_activating_tokens(codes, n_per_latent=config.top_tokens_per_latent)
    top["token_index"] = rows[top.token_index.to_numpy()]
    top = top.join(index[["document", "position", "token_id"]], on="token_index")

    active = (pooled > 0).sum(axis=1)
    yield Output(
        frame,
        output_name="company_features",
        metadata={
            "layer": layer,
            "sae_release": group_saes.notes.get("release_version", "none"),
            "sae_layers": str(list(entry.layers)),
            "pooling": config.pooling,
            "texts": len(text_ids),
            "d_sae": sae.cfg.d_sae,
            "massive_tokens_excluded": int((~usable).sum()),
            "mean_active_latents_per_company": float(active.mean()),
            "latents_used_by_any_company": int((pooled > 0).any(axis=0).sum()),
            "density": float(len(frame) / pooled.size),
            "largest_token_shares": markdown_table(dominance.head(10)),
        },
    )
    yield _dominance_check(dominance, config)
    yield Output(top, output_name="latent_top_tokens", metadata={"latents": int(top.latent.nunique()), "rows": len(top)})
    outside = top[~top.token_index.isin(rows) | ~(top.activation > 0)]
    yield AssetCheckResult(
        check_name="every_top_token_is_a_stored_usable_token",
        asset_key="latent_top_tokens",
        passed=outside.empty,
        metadata={"rows": len(top), "rows_not_a_usable_stored_token": len(outside)},
    )


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


@asset_check(asset="company_features", blocking=True, additional_ins={"company_descriptions": AssetIn("company_descriptions")})
def every_text_has_a_finite_feature_vector(
    company_features: pd.DataFrame, company_descriptions: pd.DataFrame
) -> AssetCheckResult:
    """Each text has at least one active latent and no value is NaN or inf."""
    missing = sorted(set(company_descriptions.text_id) - set(company_features.text_id))
    non_finite = int((~np.isfinite(company_features.value.to_numpy())).sum())
    return AssetCheckResult(
        passed=not missing and non_finite == 0,
        metadata={"texts_without_features": ", ".join(missing) or "none", "non_finite_values": non_finite},
    )
