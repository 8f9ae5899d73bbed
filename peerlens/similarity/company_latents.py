"""What a company is made of: its most specific SAE latents, as the similarity measure sees them.

Cluster explanations (`peerlens.similarity.explain`) rank latents on specificity-weighted pooled values, and
so does everything here: a latent that fires in every description (punctuation, "was founded in")
makes all companies alike and cannot say what sets one apart. A company's *profile* is its weighted
vector scaled to unit length,

    p_a = w ⊙ x_a / ‖w ⊙ x_a‖,     w_j = ln(n / df_j)      (see `specificity_weighted`),

so the cosine similarity of two companies is p_a · p_b = Σ_j p_aj p_bj, a sum of one nonnegative
term per latent. `peerlens.query.peers` reads similarity and shared latents off these profiles; a
company's top latents are the largest coordinates of its own profile, and p_aj² (summing to 1)
is the share of the profile that latent j carries.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from peerlens.markdown import markdown_text
from peerlens.similarity.explain import DESCRIBED_COLUMNS, specificity_weighted

TOP_LATENT_COLUMNS = ("ticker", "rank", "latent", "value", "weighted_value", "share")


def company_profiles(features: np.ndarray) -> np.ndarray:
    """Unit-length specificity-weighted profiles, one per company.

    Args:
        features: (n, m) nonnegative pooled latents, one row per company.

    Returns:
        (n, m) float64 rows p_a = w ⊙ x_a / ‖w ⊙ x_a‖. A company whose every active latent fires
        in all companies has w ⊙ x_a = 0; its row stays 0 (similar to nobody), not NaN.
    """
    weighted = specificity_weighted(features)
    norms = np.linalg.norm(weighted, axis=1, keepdims=True)
    return np.divide(weighted, norms, out=np.zeros_like(weighted), where=norms > 0)


def company_top_latents(features: np.ndarray, tickers: Sequence[str], n_latents: int = 10) -> pd.DataFrame:
    """Each company's `n_latents` most specific latents.

    For company a and latent j with x_aj the pooled value and p_aj its profile coordinate (see
    `company_profiles`): rank by p_aj (equivalently by w_j x_aj), largest first; share = p_aj².
    Latents with p_aj = 0 are left out, so a company has fewer rows when fewer latents are specific.

    Args:
        features: (n, m) nonnegative pooled latents, rows aligned with `tickers`.
        tickers: n company names.
        n_latents: latents kept per company.

    Returns:
        DataFrame with columns ticker, rank (1 = most specific), latent, value (x_aj, the pooled
        activation), weighted_value (w_j x_aj), share (p_aj²); sorted by ticker order, then rank.
    """
    features = np.asarray(features, dtype=np.float64)
    weighted = specificity_weighted(features)  # validates shape, finiteness and sign
    if len(tickers) != features.shape[0]:
        raise ValueError(f"features has {features.shape[0]} rows but tickers has {len(tickers)}")
    if n_latents < 1:
        raise ValueError(f"n_latents must be >= 1, got {n_latents}")
    profiles = company_profiles(features)
    kept = min(n_latents, features.shape[1])
    # Stable sort on −p: equal coordinates are listed by latent index.
    top = np.argsort(-profiles, axis=1, kind="stable")[:, :kept]  # (n, kept)
    rows = np.repeat(np.arange(features.shape[0]), kept)
    latents = top.reshape(-1)
    frame = pd.DataFrame(
        {
            "ticker": np.asarray(tickers, dtype=object)[rows],
            "rank": np.tile(np.arange(1, kept + 1), features.shape[0]),
            "latent": latents.astype(np.int64),
            "value": features[rows, latents],
            "weighted_value": weighted[rows, latents],
            "share": np.square(profiles[rows, latents]),
        }
    )
    return frame[frame["weighted_value"] > 0].reset_index(drop=True)


def company_latents_markdown(
    top_latents: pd.DataFrame, described: pd.DataFrame, companies: Sequence[str], names: dict[str, str] | None = None
) -> str:
    """A markdown report of the chosen companies' top latents, each with its description.

    Args:
        top_latents: output of `company_top_latents`.
        described: output of `peerlens.similarity.explain.describe_latents` (latents it lacks get '—').
        companies: tickers to write, in this order (a sample: the full table is the parquet).
        names: optional ticker → company name for the headings.

    Returns:
        The markdown text.
    """
    missing = [column for column in TOP_LATENT_COLUMNS if column not in top_latents.columns]
    missing += [column for column in DESCRIBED_COLUMNS if column not in described.columns]
    if missing:
        raise ValueError(f"top_latents / described lack columns {missing}")
    unknown = sorted(set(companies) - set(top_latents["ticker"]))
    if unknown:
        raise ValueError(f"companies {unknown[:10]} have no rows in top_latents")
    description = described.drop_duplicates("latent").set_index("latent")
    names = names or {}
    lines = [
        "# Company top latents",
        "",
        "Each company's most specific SAE latents (pooled value × ln(n / companies where the latent "
        "fires)). Share = the part of the company's unit profile the latent carries; "
        "the profile is what peer similarity is computed on.",
        "",
    ]
    for ticker in companies:
        heading = markdown_text(f"{ticker} — {names[ticker]}" if ticker in names else ticker)
        lines += [f"## {heading}", "", "| latent | share | top tokens | top companies |", "|---:|---:|---|---|"]
        for row in top_latents[top_latents["ticker"] == ticker].sort_values("rank").itertuples(index=False):
            known = row.latent in description.index
            tokens = description.at[row.latent, "top_tokens"] if known else "—"
            companies_of_latent = description.at[row.latent, "top_companies"] if known else "—"
            lines.append(
                f"| {row.latent} | {row.share:.1%} | {markdown_text(tokens)} | {markdown_text(companies_of_latent)} |"
            )
        lines.append("")
    return "\n".join(lines)
