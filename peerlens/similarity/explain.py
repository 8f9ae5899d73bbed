"""Why a cluster holds together: the latents that carry its within-cluster similarity, in words.

Interpretable Company Similarity explains a cluster by the SAE latents whose removal most lowers
the similarity of its members. With nonnegative pooled latents that change has a closed form, so
every latent's contribution comes from two column sums (see `latent_contributions`). Each latent
is then described by the tokens that excite it most (with their context) and the companies where
its pooled value is largest, and the whole is rendered as a markdown report.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from peerlens.markdown import markdown_text

EXPLAINED_COLUMNS = (
    "cluster", "size", "members", "latent", "rank", "contribution", "share", "within_similarity"
)
DESCRIBED_COLUMNS = ("latent", "top_tokens", "top_companies")


def _check_features(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise ValueError(
            f"features must be a 2-D (n_companies, n_latents) array, got shape {features.shape}"
        )
    if not np.isfinite(features).all():
        raise ValueError("features has NaN or infinite values")
    if (features < 0).any():
        raise ValueError("features must be nonnegative (pooled SAE latents), found negative values")
    return features


def _check_columns(frame: pd.DataFrame, required: Sequence[str], name: str) -> None:
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise ValueError(f"{name} lacks columns {missing}; it has {list(frame.columns)}")


def latent_contributions(features: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Each latent's share of a cluster's mean pairwise cosine similarity (drop-one-latent).

    With x̂_a = x_a / ‖x_a‖ for the c members a, the within-cluster similarity is

        S = (2 / (c(c−1))) Σ_{a<b} x̂_a · x̂_b = Σ_j s_j,
        s_j = (2 / (c(c−1))) Σ_{a<b} x̂_aj x̂_bj.

    Since Σ_{a<b} u_a u_b = ½ [(Σ_a u_a)² − Σ_a u_a²] for any numbers u,

        s_j = ((Σ_a x̂_aj)² − Σ_a x̂_aj²) / (c(c−1)).

    Zeroing latent j in the normalised vectors (before renormalising) removes exactly the j-th term
    of every dot product, so S drops by exactly s_j: the drop-one-latent contribution. For
    nonnegative features every s_j ≥ 0, and the s_j add up to S.

    Args:
        features: (n, m) nonnegative pooled latents, one row per company.
        members: row indices of the cluster's c ≥ 2 members (distinct).

    Returns:
        (m,) float64 contributions s_j.
    """
    features = _check_features(features)
    members = np.asarray(members)
    if members.ndim != 1 or not np.issubdtype(members.dtype, np.integer):
        raise ValueError(
            f"members must be a 1-D array of integer row indices, got {members.dtype} {members.shape}"
        )
    c = members.size
    if c < 2:
        raise ValueError(f"a cluster needs at least 2 members to have a within-cluster similarity, got {c}")
    if np.unique(members).size != c:
        raise ValueError("members has repeated row indices")
    n = features.shape[0]
    if members.min() < -n or members.max() >= n:
        raise ValueError(f"members must index rows 0..{n - 1} of features")
    rows = features[members]
    norms = np.linalg.norm(rows, axis=1)
    if (norms == 0).any():
        raise ValueError(
            f"members {members[norms == 0].tolist()} have all-zero features: their cosine is undefined"
        )
    unit = rows / norms[:, None]
    column_sum = unit.sum(axis=0)
    column_sum_of_squares = np.square(unit).sum(axis=0)
    return (np.square(column_sum) - column_sum_of_squares) / (c * (c - 1))


def specificity_weighted(features: np.ndarray) -> np.ndarray:
    """Pooled latents weighted by how rare each latent is across companies, like IDF in TF-IDF.

        w_j = ln(n / df_j),   df_j = #{companies a : x_aj > 0},   returns x_aj · w_j

    A latent that fires in every description (punctuation, "was founded in 19…") gets weight 0:
    it makes all companies alike, so it cannot say why *these* companies are. Latents that never
    fire keep weight 0 too. Shape (n, m) in, (n, m) out, still nonnegative.
    """
    features = _check_features(features)
    document_frequency = (features > 0).sum(axis=0)
    weights = np.log(features.shape[0] / np.maximum(document_frequency, 1))
    return features * weights[None, :]


def explain_clusters(
    features: np.ndarray,
    tickers: list[str],
    labels: np.ndarray,
    top_latents: int = 5,
    min_size: int = 2,
) -> pd.DataFrame:
    """The latents that hold each cluster together.

    For every cluster with at least `min_size` members: S (the mean pairwise cosine similarity of
    its members), and its `top_latents` latents by contribution s_j (see `latent_contributions`)
    with share = s_j / S. Latents with zero contribution explain nothing and are left out, so a
    cluster whose members share no latent at all (S = 0) has no rows.

    Args:
        features: (n, m) nonnegative pooled latents.
        tickers: n company names, aligned with the rows.
        labels: (n,) cluster label of each company.
        top_latents: latents reported per cluster.
        min_size: smallest cluster explained (≥ 2).

    Returns:
        DataFrame with columns cluster, size, members (sorted tickers joined by ", "), latent,
        rank (1 = largest contribution), contribution, share, within_similarity; clusters ordered by
        size (largest first) then label, rows by rank.
    """
    features = _check_features(features)
    labels = np.asarray(labels)
    n = features.shape[0]
    if len(tickers) != n or labels.shape != (n,):
        raise ValueError(
            f"features has {n} rows but tickers has {len(tickers)} and labels has shape {labels.shape}"
        )
    if top_latents < 1:
        raise ValueError(f"top_latents must be >= 1, got {top_latents}")
    if min_size < 2:
        raise ValueError(
            f"min_size must be >= 2 (a single company has no within-cluster similarity), got {min_size}"
        )

    tickers = np.asarray(tickers, dtype=object)
    cluster_ids, sizes = np.unique(labels, return_counts=True)
    by_size = np.lexsort((cluster_ids, -sizes))
    rows = []
    for cluster, size in zip(cluster_ids[by_size], sizes[by_size]):
        if size < min_size:
            continue
        members = np.flatnonzero(labels == cluster)
        contributions = latent_contributions(features, members)
        within_similarity = float(contributions.sum())
        # Stable sort on −s_j: equal contributions are listed by latent index.
        top = np.argsort(-contributions, kind="stable")[:top_latents]
        top = top[contributions[top] > 0]
        member_names = ", ".join(sorted(str(t) for t in tickers[members]))
        for rank, latent in enumerate(top, start=1):
            rows.append(
                {
                    "cluster": cluster,
                    "size": int(size),
                    "members": member_names,
                    "latent": int(latent),
                    "rank": rank,
                    "contribution": float(contributions[latent]),
                    "share": float(contributions[latent] / within_similarity),
                    "within_similarity": within_similarity,
                }
            )
    return pd.DataFrame(rows, columns=list(EXPLAINED_COLUMNS))


def _clean(text: str) -> str:
    """Collapse whitespace (newlines included) so a decoded span fits on one line."""
    return " ".join(text.split())


class _TokenNeighbours:
    """A store's tokens sorted by (document, position): neighbours in a document are neighbours here.

    One sort up front means the store need not keep a document's tokens together, and finding a
    hit's context is a slice, not a search.
    """

    def __init__(self, token_index: pd.DataFrame):
        self.documents = pd.factorize(token_index["document"].to_numpy())[0]
        self.positions = token_index["position"].to_numpy(dtype=np.int64)
        self.token_ids = token_index["token_id"].to_numpy(dtype=np.int64)
        self.order = np.lexsort((self.positions, self.documents))
        self.rank_of_row = np.empty_like(self.order)
        self.rank_of_row[self.order] = np.arange(self.order.size)

    def snippet(self, hit: int, decode: Callable[[list[int]], str], context: int) -> str:
        """'…left «token» right…' for store row `hit`, `context` tokens each side in its document.

        '…' marks a side where the document goes on beyond the window.
        """
        at = self.rank_of_row[hit]
        # One extra row each side tells whether the document continues past the window.
        window = self.order[max(at - context - 1, 0) : at + context + 2]
        same_document = self.documents[window] == self.documents[hit]
        offset = self.positions[window] - self.positions[hit]
        left = window[same_document & (offset < 0) & (offset >= -context)]
        right = window[same_document & (offset > 0) & (offset <= context)]

        parts = [_clean(decode(self.token_ids[left].tolist()))] if left.size else []
        parts.append(f"«{_clean(decode([int(self.token_ids[hit])]))}»")
        if right.size:
            parts.append(_clean(decode(self.token_ids[right].tolist())))
        text = " ".join(part for part in parts if part)
        more_left = bool((same_document & (offset < -context)).any())
        more_right = bool((same_document & (offset > context)).any())
        return ("…" if more_left else "") + text + ("…" if more_right else "")


def describe_latents(
    top_tokens: pd.DataFrame,
    token_index: pd.DataFrame,
    decode: Callable[[list[int]], str],
    features: np.ndarray,
    tickers: list[str],
    context: int = 4,
    n_companies: int = 5,
) -> pd.DataFrame:
    """Words for every latent in `top_tokens`: its strongest tokens in context and its top companies.

    Args:
        top_tokens: columns latent, rank, token_index, activation (from
            `sae_core.features.top_activating_tokens`).
        token_index: one row per token in store order, columns document, position, token_id.
        decode: token ids → text (e.g. the tokenizer's `decode`).
        features: (n, m) pooled latents, rows aligned with `tickers`.
        tickers: n company names.
        context: tokens shown before and after each hit, within the same document.
        n_companies: companies listed per latent.

    Returns:
        DataFrame with columns latent, top_tokens ('…a b «c» d e…' per hit in rank order, joined by
        ' | '), top_companies (the tickers with the largest pooled value of the latent, largest
        first, only those where it is > 0, joined by ", "); one row per latent, sorted by latent.
    """
    _check_columns(top_tokens, ("latent", "rank", "token_index"), "top_tokens")
    _check_columns(token_index, ("document", "position", "token_id"), "token_index")
    features = _check_features(features)
    if len(tickers) != features.shape[0]:
        raise ValueError(f"features has {features.shape[0]} rows but tickers has {len(tickers)}")
    if context < 0 or n_companies < 1:
        raise ValueError(f"context must be >= 0 and n_companies >= 1, got {context} and {n_companies}")
    hits = top_tokens["token_index"].to_numpy(dtype=np.int64)
    if hits.size and (hits.min() < 0 or hits.max() >= len(token_index)):
        raise ValueError(
            f"top_tokens.token_index must lie in 0..{len(token_index) - 1} (rows of token_index)"
        )
    latents = top_tokens["latent"].to_numpy(dtype=np.int64)
    if latents.size and (latents.min() < 0 or latents.max() >= features.shape[1]):
        raise ValueError(f"top_tokens.latent must lie in 0..{features.shape[1] - 1} (columns of features)")

    neighbours = _TokenNeighbours(token_index)
    tickers = np.asarray(tickers, dtype=object)
    rows = []
    for latent, hits_of_latent in top_tokens.sort_values(["latent", "rank"]).groupby("latent", sort=True):
        snippets = [
            neighbours.snippet(int(hit), decode, context) for hit in hits_of_latent["token_index"]
        ]
        column = features[:, int(latent)]
        strongest = np.argsort(-column, kind="stable")[:n_companies]
        strongest = strongest[column[strongest] > 0]
        rows.append(
            {
                "latent": int(latent),
                "top_tokens": " | ".join(snippets),
                "top_companies": ", ".join(str(t) for t in tickers[strongest]),
            }
        )
    return pd.DataFrame(rows, columns=list(DESCRIBED_COLUMNS))


def explanations_markdown(explained: pd.DataFrame, described: pd.DataFrame, max_clusters: int = 25) -> str:
    """A markdown report: per cluster its members, its similarity and the latents that explain it.

    Clusters appear in the order of `explained` (largest first, from `explain_clusters`); the first
    `max_clusters` are written and the rest counted in a closing note.

    Args:
        explained: output of `explain_clusters`.
        described: output of `describe_latents` (latents it lacks get '—').
        max_clusters: clusters written.

    Returns:
        The markdown text.
    """
    _check_columns(explained, EXPLAINED_COLUMNS, "explained")
    _check_columns(described, DESCRIBED_COLUMNS, "described")
    if max_clusters < 1:
        raise ValueError(f"max_clusters must be >= 1, got {max_clusters}")
    if described["latent"].duplicated().any():
        raise ValueError("described has repeated latents: expected one row per latent")
    description = described.set_index("latent")
    clusters = list(dict.fromkeys(explained["cluster"].tolist()))
    lines = ["# Cluster explanations", ""]
    if not clusters:
        lines.append("No cluster has a latent that explains it.")
        return "\n".join(lines) + "\n"
    lines += [
        "Share = the part of the cluster's mean pairwise cosine similarity that the latent carries "
        "(drop-one-latent contribution / within-cluster similarity).",
        "",
    ]
    for cluster in clusters[:max_clusters]:
        rows = explained[explained["cluster"] == cluster].sort_values("rank")
        first = rows.iloc[0]
        lines += [
            f"## Cluster {cluster} — {int(first['size'])} companies, "
            f"within-cluster similarity {first['within_similarity']:.3f}",
            "",
            f"Members: {markdown_text(first['members'])}",
            "",
            "| latent | share | top tokens | top companies |",
            "|---:|---:|---|---|",
        ]
        for row in rows.itertuples(index=False):
            known = row.latent in description.index
            tokens = description.at[row.latent, "top_tokens"] if known else "—"
            companies = description.at[row.latent, "top_companies"] if known else "—"
            lines.append(f"| {row.latent} | {row.share:.1%} | {markdown_text(tokens)} | {markdown_text(companies)} |")
        lines.append("")
    if len(clusters) > max_clusters:
        lines.append(f"_{len(clusters) - max_clusters} more clusters not shown._")
        lines.append("")
    return "\n".join(lines)
