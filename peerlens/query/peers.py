"""Peer query: a company's nearest companies, and the shared latents that make them alike.

Reads what a run of the graph materialized (no Dagster needed), under the storage root that the
IO manager writes to — `--storage`, else $PEERLENS_HOME, else `.peerlens` in the working folder,
the same rule as `resources.storage`:

    tables/company_features/<day>.parquet  text_id, ticker, latent, value (pooled SAE latents, zeros omitted;
                                           one file per day of texts)
    tables/company_clusters/<date>.parquet as_of, method, ticker, cluster (one file per clustering date)
    tables/current_company_clusters.parquet
                                           the same for today: every company's latest text
    tables/company_descriptions.parquet    ticker, name, ...
    tables/latent_descriptions.parquet     latent, top_tokens, top_companies (every latent that fires)

Similarity is the cosine of specificity-weighted profiles (`peerlens.similarity.company_latents`), the sum
over latents of p_aj p_bj. Each term is a latent's contribution: the latents with the largest
product of both companies' (weighted) values are the ones that make them similar, and their
contributions add up to the similarity exactly.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from peerlens.similarity.company_latents import company_profiles
from peerlens.layout import read_table, root_uri, table_files
from peerlens.sources.texts import texts_known_before
from peerlens.working_copy import HOME_ENV

MATERIALIZED_FILES = {
    "company_features": Path("tables", "company_features"),
    "company_clusters": Path("tables", "company_clusters"),
    "current_company_clusters": Path("tables", "current_company_clusters.parquet"),
    "company_descriptions": Path("tables", "company_descriptions.parquet"),
    "latent_descriptions": Path("tables", "latent_descriptions.parquet"),
}
"""Asset name → the file of it the peer query reads, relative to the storage root (a folder: one file per
partition, read together)."""

_REQUIRED_COLUMNS = {
    "company_features": ("ticker", "latent", "value"),
    "company_clusters": ("as_of", "method", "ticker", "cluster"),
    "current_company_clusters": ("as_of", "method", "ticker", "cluster"),
    "company_descriptions": ("ticker", "name"),
    "latent_descriptions": ("latent", "top_tokens", "top_companies"),
}


class AssetsNotMaterializedError(FileNotFoundError):
    """The storage root lacks an asset the peer query reads."""

    def __init__(self, root: str, missing: list[str]):
        self.root, self.missing = root, missing
        files = ", ".join(str(MATERIALIZED_FILES[name]) for name in missing)
        super().__init__(
            f"assets not materialized under {root}: {', '.join(missing)} (no {files}); "
            "run `make demo`, or materialize them in the Dagster UI, or point --storage / "
            f"${HOME_ENV} at a storage root (folder or s3:// URI) that has them"
        )


class UnknownTickerError(ValueError):
    """A ticker that is not among the companies with features."""

    def __init__(self, ticker: str, n_companies: int, suggestions: list[str]):
        self.ticker, self.suggestions = ticker, suggestions
        hint = f"; did you mean {', '.join(suggestions)}?" if suggestions else ""
        super().__init__(f"unknown ticker {ticker!r}: not one of the {n_companies} companies with features{hint}")


@dataclass(frozen=True)
class SharedLatent:
    """One latent two companies share, and how much of their similarity it carries."""

    latent: int
    contribution: float
    """p_aj · p_bj: this latent's term of the cosine similarity (the terms sum to it)."""
    share: float
    """contribution / similarity."""
    value_a: float
    """Pooled activation of the latent in the first company."""
    value_b: float
    """Pooled activation of the latent in the second company."""
    top_tokens: str
    """The tokens that excite the latent most, in context ('…a «b» c…' joined by ' | ')."""
    top_companies: str
    """The companies where the latent's pooled value is largest, joined by ', '."""


@dataclass(frozen=True)
class Peer:
    """A company near the queried one."""

    ticker: str
    name: str
    similarity: float
    """Cosine similarity of the two specificity-weighted profiles, in [0, 1]."""
    shared: tuple[SharedLatent, ...]
    """The latents with the largest contributions, largest first."""


@dataclass(frozen=True)
class PeerList:
    """Output of `PeerIndex.peers`."""

    ticker: str
    name: str
    n_companies: int
    """Companies searched, the queried one included."""
    peers: tuple[Peer, ...]
    """Most similar first."""


@dataclass(frozen=True)
class ClusterMembership:
    """The two companies' clusters under one clustering method."""

    method: str
    cluster_a: int
    cluster_b: int

    @property
    def same(self) -> bool:
        return self.cluster_a == self.cluster_b


@dataclass(frozen=True)
class PairExplanation:
    """Output of `PeerIndex.explain_pair`: why companies a and b are alike."""

    a: str
    name_a: str
    b: str
    name_b: str
    similarity: float
    rank_of_b: int
    """b's place among a's peers (1 = a's nearest company)."""
    rank_of_a: int
    """a's place among b's peers."""
    n_companies: int
    shared: tuple[SharedLatent, ...]
    """The latents with the largest contributions, largest first."""
    clusters: tuple[ClusterMembership, ...]
    """One per clustering method, sorted by method."""

    @property
    def shown_share(self) -> float:
        """The part of the similarity the listed latents carry together."""
        return float(sum(latent.share for latent in self.shared))


def _read_materialized(storage: str | os.PathLike | None) -> dict[str, pd.DataFrame]:
    """The tables the peer query reads, from the storage root `storage` (a folder or an object-store URI)."""
    missing = [name for name in MATERIALIZED_FILES if not table_files(storage, name)]
    if missing:
        raise AssetsNotMaterializedError(root_uri(storage), missing)
    frames = {}
    for name, path in MATERIALIZED_FILES.items():
        frame = read_table(storage, name)
        absent = [column for column in _REQUIRED_COLUMNS[name] if column not in frame.columns]
        if absent:
            raise ValueError(
                f"{root_uri(storage)}/{path.as_posix()} lacks columns {absent}: was it written by another PeerLens version?"
            )
        frames[name] = frame
    return frames


def _as_of(
    features: pd.DataFrame, clusters: pd.DataFrame, descriptions: pd.DataFrame, as_of: object
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The frames narrowed to what was known before `as_of` (None: today), when they carry the dates to do so."""
    if "text_id" in features.columns and {"text_id", "known_by"} <= set(descriptions.columns):
        day = pd.Timestamp(as_of) if as_of is not None else descriptions.known_by.max() + pd.Timedelta(days=1)
        descriptions = texts_known_before(descriptions, day)
        features = features[features.text_id.isin(set(descriptions.text_id))]
    if "as_of" in clusters.columns and len(clusters):
        dates = clusters.as_of[clusters.as_of <= pd.Timestamp(as_of)] if as_of is not None else clusters.as_of
        clusters = clusters[clusters.as_of == dates.max()] if len(dates) else clusters.iloc[:0]
    return features, clusters, descriptions


class PeerIndex:
    """The companies' profiles, clusters and latent descriptions, ready to answer peer queries.

    Attributes:
        tickers: the n companies with features, sorted; row k of every matrix is tickers[k].
        features: (n, m) float64 pooled latents (m = largest latent index + 1).
        profiles: (n, m) float64 unit specificity-weighted profiles (`company_profiles`).
        names: ticker → company name.
        clusters: long frame (method, ticker, cluster).
        descriptions: frame indexed by latent, columns top_tokens, top_companies.
    """

    def __init__(
        self,
        company_features: pd.DataFrame,
        company_clusters: pd.DataFrame,
        company_descriptions: pd.DataFrame,
        latent_descriptions: pd.DataFrame,
        as_of: object = None,
    ):
        """Build the index from the asset frames (columns as in the module docstring).

        With text histories (company_features and company_descriptions carry text_id) each company is
        its latest text known before `as_of`, and the clusters are those of the latest clustering dated
        on or before it; `as_of` None means today: every company's newest text and the latest clusters.
        """
        company_features, company_clusters, company_descriptions = _as_of(
            company_features, company_clusters, company_descriptions, as_of
        )
        if company_features.empty:
            raise ValueError(f"company_features is empty{f' as of {as_of}' if as_of else ''}: no company to compare")
        self.tickers = sorted(company_features["ticker"].astype(str).unique())
        self._row = {ticker: i for i, ticker in enumerate(self.tickers)}
        latents = company_features["latent"].to_numpy(dtype=np.int64)
        if latents.min() < 0:
            raise ValueError("company_features has negative latent indices")
        # Dense (n, m): fine for the sample's hundreds of companies; a 50k-company universe would
        # keep the long frame sparse instead.
        self.features = np.zeros((len(self.tickers), int(latents.max()) + 1), dtype=np.float64)
        rows = company_features["ticker"].astype(str).map(self._row).to_numpy()
        self.features[rows, latents] = company_features["value"].to_numpy(dtype=np.float64)
        self.profiles = company_profiles(self.features)
        self.names = dict(zip(company_descriptions["ticker"].astype(str), company_descriptions["name"].astype(str)))
        self.clusters = company_clusters
        self.descriptions = latent_descriptions.drop_duplicates("latent").set_index("latent")

    @classmethod
    def load(cls, storage: str | os.PathLike | None = None, as_of: object = None) -> PeerIndex:
        """Read the materialized assets under the storage root `storage` (else $PEERLENS_HOME, else .peerlens), as of
        a date (see `__init__`).

        Raises:
            AssetsNotMaterializedError: naming every asset whose file is missing.
        """
        frames = _read_materialized(storage)
        return cls(
            frames["company_features"],
            frames["current_company_clusters" if as_of is None else "company_clusters"],
            frames["company_descriptions"],
            frames["latent_descriptions"],
            as_of=as_of,
        )

    def resolve(self, ticker: str) -> str:
        """The canonical ticker: case-insensitive, '.' or '/' read as '-' (BRK.B → BRK-B).

        Raises:
            UnknownTickerError: with up to three suggestions: tickers of companies whose name
                contains the query (APPLE → AAPL), then close spellings (difflib; APPL → AAPL).
        """
        key = ticker.strip().upper().replace(".", "-").replace("/", "-")
        if key in self._row:
            return key
        # A name that contains the query is the stronger hint (APPLE → AAPL); then spelling (APPL → AAPL).
        by_name = sorted(t for t, name in self.names.items() if key and key in name.upper() and t in self._row)
        by_spelling = difflib.get_close_matches(key, self.tickers, n=3, cutoff=0.6)
        suggestions = list(dict.fromkeys(by_name + by_spelling))[:3]
        raise UnknownTickerError(ticker, len(self.tickers), suggestions)

    def _shared_latents(self, row_a: int, row_b: int, n_shared: int) -> tuple[SharedLatent, ...]:
        contributions = self.profiles[row_a] * self.profiles[row_b]  # (m,) terms of the cosine
        similarity = float(contributions.sum())
        top = np.argsort(-contributions, kind="stable")[:n_shared]
        top = top[contributions[top] > 0]
        shared = []
        for latent in top.tolist():
            known = latent in self.descriptions.index
            shared.append(
                SharedLatent(
                    latent=latent,
                    contribution=float(contributions[latent]),
                    share=float(contributions[latent] / similarity),
                    value_a=float(self.features[row_a, latent]),
                    value_b=float(self.features[row_b, latent]),
                    top_tokens=str(self.descriptions.at[latent, "top_tokens"]) if known else "—",
                    top_companies=str(self.descriptions.at[latent, "top_companies"]) if known else "—",
                )
            )
        return tuple(shared)

    def _similarities(self, ticker: str) -> np.ndarray:
        """(n,) cosine similarity of `ticker`'s profile with every company's (itself included)."""
        profile = self.profiles[self._row[ticker]]
        if not profile.any():
            raise ValueError(
                f"{ticker}'s active latents all fire in every company: it has no specific profile to compare"
            )
        return self.profiles @ profile

    def _peer_rows(self, ticker: str) -> tuple[list[int], np.ndarray]:
        """Every other company's row, most similar to `ticker` first (ties by ticker), and the
        (n,) similarities."""
        similarities = self._similarities(ticker)
        me = self._row[ticker]
        order = np.lexsort((np.arange(len(self.tickers)), -similarities))  # tickers are sorted
        return [int(row) for row in order if row != me], similarities

    def peers(self, ticker: str, n: int = 10, n_shared: int = 3) -> PeerList:
        """The `n` companies most similar to `ticker`, each with its `n_shared` top shared latents.

        Ranked by cosine similarity of the specificity-weighted profiles, largest first (ties by
        ticker); the company itself is left out.
        """
        if n < 1 or n_shared < 1:
            raise ValueError(f"n and n_shared must be >= 1, got {n} and {n_shared}")
        ticker = self.resolve(ticker)
        order, similarities = self._peer_rows(ticker)
        me = self._row[ticker]
        peers = tuple(
            Peer(
                ticker=self.tickers[row],
                name=self.names.get(self.tickers[row], ""),
                similarity=float(similarities[row]),
                shared=self._shared_latents(me, row, n_shared),
            )
            for row in order[:n]
        )
        return PeerList(ticker, self.names.get(ticker, ""), len(self.tickers), peers)

    def explain_pair(self, a: str, b: str, n_shared: int = 5) -> PairExplanation:
        """Why `a` and `b` are alike: their similarity, each one's rank among the other's peers,
        the `n_shared` latents that contribute most (with descriptions), and both companies'
        clusters under every clustering method."""
        if n_shared < 1:
            raise ValueError(f"n_shared must be >= 1, got {n_shared}")
        a, b = self.resolve(a), self.resolve(b)
        if a == b:
            raise ValueError(f"explain needs two different companies, got {a} twice")
        peers_of_a, similarities = self._peer_rows(a)
        peers_of_b, _ = self._peer_rows(b)
        clusters = self.clusters.assign(ticker=self.clusters["ticker"].astype(str))
        clusters = clusters[clusters["ticker"].isin([a, b])].pivot_table(
            index="method", columns="ticker", values="cluster", aggfunc="first"
        )
        memberships = tuple(
            ClusterMembership(str(method), int(row[a]), int(row[b]))
            for method, row in clusters.reindex(columns=[a, b]).dropna().sort_index().iterrows()
        )
        return PairExplanation(
            a=a,
            name_a=self.names.get(a, ""),
            b=b,
            name_b=self.names.get(b, ""),
            similarity=float(similarities[self._row[b]]),
            rank_of_b=peers_of_a.index(self._row[b]) + 1,
            rank_of_a=peers_of_b.index(self._row[a]) + 1,
            n_companies=len(self.tickers),
            shared=self._shared_latents(self._row[a], self._row[b], n_shared),
            clusters=memberships,
        )


def peers(ticker: str, n: int = 10, storage: str | os.PathLike | None = None) -> PeerList:
    """`PeerIndex.load(storage).peers(ticker, n)`: for one query from a notebook."""
    return PeerIndex.load(storage).peers(ticker, n)


def explain_pair(a: str, b: str, storage: str | os.PathLike | None = None) -> PairExplanation:
    """`PeerIndex.load(storage).explain_pair(a, b)`: for one query from a notebook."""
    return PeerIndex.load(storage).explain_pair(a, b)
