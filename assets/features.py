"""Company features: each company's SAE latents, pooled over the tokens of its description."""

import numpy as np
import pandas as pd
from dagster import AssetIn, AssetCheckResult, AssetExecutionContext, Config, Output, asset, asset_check
from pydantic import Field

from resources import ArtifactStorage
from sae_core.activation_store import ActivationStore
from sae_core.features import encode_tokens, pool_documents, top_activating_tokens
from sae_core.io import load_sae

TOP_TOKENS_FILE = "latent_top_tokens.parquet"


class CompanyFeaturesConfig(Config):
    layer: int = Field(default=-1, description="Layer whose SAE latents describe a company; -1: two thirds deep.")
    pooling: str = Field(default="mean", description="How token latents become one vector: mean, max or sum.")
    top_tokens_per_latent: int = 10


def feature_layer(config_layer: int, n_layers: int) -> int:
    """The configured layer, or two thirds of the way up the stack (deep enough for meaning, before the
    last layers turn towards next-token prediction)."""
    layer = round(2 * (n_layers - 1) / 3) if config_layer == -1 else config_layer
    if not 0 <= layer < n_layers:
        raise ValueError(f"company_features layer {config_layer} is out of range for a model with {n_layers} layers")
    return layer


def sae_for_layer(group_saes: dict, layer: int) -> dict:
    for entry in group_saes["saes"]:
        if layer in entry["layers"]:
            return entry
    raise ValueError(f"no trained SAE serves layer {layer}")


@asset(group_name="similarity", kinds={"pytorch", "parquet"})
def company_features(
    context: AssetExecutionContext,
    config: CompanyFeaturesConfig,
    llm_activations: dict,
    group_saes: dict,
    artifacts: ArtifactStorage,
) -> Output[pd.DataFrame]:
    """Sparse long frame (ticker, latent, value): the pooled SAE code of each company, zeros omitted.

    Also writes `latent_top_tokens.parquet` (latent, rank, token_index, activation, document, position,
    token_id): each latent's strongest tokens, for the cluster explanations.
    """
    store = ActivationStore(llm_activations["folder"])
    layer = feature_layer(config.layer, store.n_layers)
    entry = sae_for_layer(group_saes, layer)
    sae = load_sae(entry["path"])
    codes = encode_tokens(sae, store.layer(layer))
    index = store.index
    tickers = sorted(index.document.unique())
    document = index.document.map({t: i for i, t in enumerate(tickers)}).to_numpy()
    pooled = pool_documents(codes, document, len(tickers), sae.cfg.d_sae, config.pooling).numpy()

    rows, latents = np.nonzero(pooled)
    frame = pd.DataFrame(
        {"ticker": np.asarray(tickers)[rows], "latent": latents.astype(np.int32), "value": pooled[rows, latents]}
    )
    top = top_activating_tokens(codes, n_per_latent=config.top_tokens_per_latent)
    top = top.join(index[["document", "position", "token_id"]], on="token_index")
    top_path = artifacts.folder("company_features") / TOP_TOKENS_FILE
    top.to_parquet(top_path.with_name(top_path.name + ".tmp"), index=False)
    top_path.with_name(top_path.name + ".tmp").replace(top_path)

    active = (pooled > 0).sum(axis=1)
    return Output(
        frame,
        metadata={
            "layer": layer,
            "sae_layers": str(entry["layers"]),
            "pooling": config.pooling,
            "companies": len(tickers),
            "d_sae": sae.cfg.d_sae,
            "mean_active_latents_per_company": float(active.mean()),
            "latents_used_by_any_company": int((pooled > 0).any(axis=0).sum()),
            "density": float(len(frame) / pooled.size),
            "top_tokens_path": str(top_path),
        },
    )


def dense_features(company_features: pd.DataFrame, d_sae: int | None = None) -> tuple[list[str], np.ndarray]:
    """(tickers, (n_companies, d_sae) matrix) from the sparse long frame."""
    tickers = sorted(company_features.ticker.unique())
    width = d_sae or int(company_features.latent.max()) + 1
    matrix = np.zeros((len(tickers), width), dtype=np.float32)
    row = company_features.ticker.map({t: i for i, t in enumerate(tickers)}).to_numpy()
    matrix[row, company_features.latent.to_numpy()] = company_features.value.to_numpy()
    return tickers, matrix


@asset_check(asset=company_features, blocking=True, additional_ins={"company_descriptions": AssetIn("company_descriptions")})
def every_company_has_a_finite_feature_vector(
    company_features: pd.DataFrame, company_descriptions: pd.DataFrame
) -> AssetCheckResult:
    """Each company has at least one active latent and no value is NaN or inf."""
    missing = sorted(set(company_descriptions.ticker) - set(company_features.ticker))
    non_finite = int((~np.isfinite(company_features.value.to_numpy())).sum())
    return AssetCheckResult(
        passed=not missing and non_finite == 0,
        metadata={"companies_without_features": ", ".join(missing) or "none", "non_finite_values": non_finite},
    )

