"""Mean Correlation (MC): do companies put in one cluster move together?

The paper's metric: per year, for every cluster with at least two members, the mean pairwise
Pearson correlation of the members' monthly log returns; then the unweighted mean over clusters.
A public replication showed that this average favours clusterings made of a few tight pairs and
many singletons, so next to it we report the mean over all within-cluster pairs pooled (every
pair counts once, whichever cluster it is in) and the coverage (how many companies are in a
cluster at all). A clustering that looks good on ``mc_cluster`` alone but has low ``coverage``
has mostly declined to group companies.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd

_MONTH_PATTERN = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


@dataclass(frozen=True)
class MeanCorrelation:
    """Mean Correlation of one clustering over one window of monthly returns."""

    mc_cluster: float
    """Paper's MC: unweighted mean over clusters of the mean within-cluster pairwise correlation."""
    mc_pair: float
    """Mean correlation over all within-cluster pairs pooled (large clusters weigh more)."""
    coverage: float
    """Share of the n_companies that sit in a cluster with >= 2 such companies."""
    n_clusters: int
    """Clusters entering mc_cluster (>= 2 eligible members and >= 1 defined correlation)."""
    n_pairs: int
    """Within-cluster pairs with a defined correlation (entering mc_pair)."""
    n_companies: int
    """Clustered companies with >= min_months returns in the window."""


def _check_clusters(clusters: pd.Series) -> None:
    if not isinstance(clusters, pd.Series):
        raise TypeError(f"clusters must be a pandas Series (ticker -> cluster), got {type(clusters).__name__}")
    if clusters.index.has_duplicates:
        repeated = clusters.index[clusters.index.duplicated()].unique()[:5].tolist()
        raise ValueError(f"clusters has tickers listed more than once, e.g. {repeated}")
    if clusters.isna().any():
        raise ValueError(
            f"clusters has {int(clusters.isna().sum())} missing cluster ids; give unclustered companies "
            "their own singleton id (see peerlens.similarity.clustering.labels_from_codes)"
        )


class CorrelationWindow(NamedTuple):
    """Pairwise return correlations of one window, kept as the defined pairs only (scoring reads nothing else)."""

    tickers: pd.Index
    """The m companies with >= min_months returns in the window, in column order."""
    first: np.ndarray
    """(p,) int64 position in ``tickers`` of each pair's first company (first < second)."""
    second: np.ndarray
    """(p,) int64 position of each pair's second company."""
    correlation: np.ndarray
    """(p,) Pearson correlation of the pair over the months both have (>= min_months of them)."""


class ClusterScores(NamedTuple):
    """Per-cluster sums behind every MC: a clustering scored on one :class:`CorrelationWindow`."""

    cluster: np.ndarray
    """(k,) label of each cluster that enters (>= 2 eligible members and >= 1 defined pair)."""
    n_members: np.ndarray
    """(k,) eligible members of each entering cluster."""
    n_pairs: np.ndarray
    """(k,) defined within-cluster pairs of each entering cluster."""
    pair_sum: np.ndarray
    """(k,) sum of those pairs' correlations; MC_c = pair_sum / n_pairs."""
    n_companies: int
    """Eligible companies in the window (m)."""
    n_covered: int
    """Eligible companies in a cluster with >= 2 eligible members."""

    @property
    def mc_cluster(self) -> float:
        return float((self.pair_sum / self.n_pairs).mean()) if self.n_pairs.size else float("nan")

    @property
    def mc_pair(self) -> float:
        return float(self.pair_sum.sum() / self.n_pairs.sum()) if self.n_pairs.size else float("nan")

    @property
    def coverage(self) -> float:
        return self.n_covered / self.n_companies if self.n_companies else float("nan")


def correlation_window(returns_wide: pd.DataFrame, min_months: int = 6) -> CorrelationWindow:
    """The defined pairwise correlations of a (months x tickers) window of monthly log returns.

    Companies with fewer than ``min_months`` returns are left out; a pair counts when the two share
    at least ``min_months`` months (pairwise-complete Pearson).
    """
    if not isinstance(returns_wide, pd.DataFrame):
        raise TypeError(
            f"returns_wide must be a DataFrame (months x tickers), got {type(returns_wide).__name__}"
        )
    if returns_wide.columns.has_duplicates:
        raise ValueError("returns_wide has repeated ticker columns")
    # Two points always correlate at +-1; three is the least that says anything.
    if min_months < 3:
        raise ValueError(f"min_months must be >= 3, got {min_months}")
    eligible = returns_wide.columns[returns_wide.notna().sum(axis=0).to_numpy() >= min_months]
    corr = returns_wide.loc[:, eligible].astype("float64").corr(min_periods=min_months).to_numpy()
    first, second = np.triu_indices(len(eligible), k=1)
    values = corr[first, second]
    defined = ~np.isnan(values)
    return CorrelationWindow(pd.Index(eligible), first[defined], second[defined], values[defined])


def score_clusters(window: CorrelationWindow, labels: np.ndarray) -> ClusterScores:
    """Score one clustering on one window in O(pairs): bincounts over the within-cluster pairs.

    Args:
        window: from :func:`correlation_window`.
        labels: (m,) integer cluster ids >= 0 aligned with ``window.tickers``.
    """
    labels = np.asarray(labels)
    if labels.shape != (len(window.tickers),):
        raise ValueError(f"labels must have one entry per window ticker ({len(window.tickers)}), got {labels.shape}")
    if labels.size and (not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0):
        raise ValueError("labels must be non-negative integers")
    k = int(labels.max()) + 1 if labels.size else 0
    members = np.bincount(labels, minlength=k)
    same = labels[window.first] == labels[window.second]
    owner = labels[window.first[same]]
    n_pairs = np.bincount(owner, minlength=k)
    pair_sum = np.bincount(owner, weights=window.correlation[same], minlength=k)
    enters = (members >= 2) & (n_pairs > 0)
    return ClusterScores(
        cluster=np.flatnonzero(enters),
        n_members=members[enters],
        n_pairs=n_pairs[enters],
        pair_sum=pair_sum[enters],
        n_companies=int(labels.size),
        n_covered=int(members[members >= 2].sum()),
    )


class _WindowCorrelations(NamedTuple):
    per_cluster: pd.DataFrame
    """Columns cluster, n_members, n_pairs, mean_corr; only clusters with >= 1 defined pair."""
    scores: ClusterScores


def _window_correlations(
    returns_wide: pd.DataFrame, clusters: pd.Series, min_months: int
) -> _WindowCorrelations:
    _check_clusters(clusters)
    window = correlation_window(returns_wide.loc[:, returns_wide.columns.isin(clusters.index)], min_months)
    codes, cluster_ids = pd.factorize(clusters.loc[window.tickers], sort=True)
    scores = score_clusters(window, codes)
    per_cluster = pd.DataFrame(
        {
            "cluster": cluster_ids[scores.cluster],
            "n_members": scores.n_members,
            "n_pairs": scores.n_pairs,
            "mean_corr": scores.pair_sum / scores.n_pairs,
        },
        columns=["cluster", "n_members", "n_pairs", "mean_corr"],
    )
    return _WindowCorrelations(per_cluster, scores)


def mean_correlation(returns_wide: pd.DataFrame, clusters: pd.Series, min_months: int = 6) -> MeanCorrelation:
    """Mean Correlation of a clustering over one window of monthly returns.

    Only companies in ``clusters`` with at least ``min_months`` returns in the window count (the
    n_companies). For cluster c with eligible members M_c (|M_c| >= 2) and pairs P_c = {(i, j):
    i < j in M_c, at least min_months months in common}:

        MC_c       = mean_{(i,j) in P_c} rho_ij                 (rho: Pearson, pairwise complete)
        mc_cluster = mean_c MC_c                                (unweighted, the paper's MC)
        mc_pair    = mean_{(i,j) in union_c P_c} rho_ij        (pooled pairs)
        coverage   = sum_c |M_c| / n_companies

    The MC values are NaN (not an error) when no cluster has a defined pair; coverage is NaN when
    n_companies is 0.

    Args:
        returns_wide: (months x tickers) monthly log returns, NaN where missing.
        clusters: cluster id per ticker (index ticker). Tickers absent from it are ignored.
        min_months: least number of returns a company, and a pair in common, needs.
    """
    scores = _window_correlations(returns_wide, clusters, min_months).scores
    return MeanCorrelation(
        mc_cluster=scores.mc_cluster,
        mc_pair=scores.mc_pair,
        coverage=scores.coverage,
        n_clusters=int(scores.n_pairs.size),
        n_pairs=int(scores.n_pairs.sum()),
        n_companies=scores.n_companies,
    )


def _check_columns(name: str, frame: pd.DataFrame, required: tuple[str, ...]) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{name} must be a DataFrame, got {type(frame).__name__}")
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise ValueError(f"{name} is missing required columns {missing}; it has {list(frame.columns)}")


def returns_by_year(monthly_returns: pd.DataFrame) -> Iterator[tuple[int, pd.DataFrame]]:
    """Yield (calendar year, (months x tickers) log returns of that year) from the long monthly frame.

    Args:
        monthly_returns: long frame with columns month ("YYYY-MM"), ticker, log_return.
    """
    _check_columns("monthly_returns", monthly_returns, ("month", "ticker", "log_return"))
    months = monthly_returns["month"].astype(str)
    malformed = ~months.str.match(_MONTH_PATTERN)
    if malformed.any():
        examples = months[malformed].unique()[:3].tolist()
        raise ValueError(f"monthly_returns['month'] must be 'YYYY-MM'; bad values e.g. {examples}")
    returns = monthly_returns.assign(month=months, year=months.str[:4].astype(int))
    if returns.duplicated(["month", "ticker"]).any():
        raise ValueError("monthly_returns has repeated (month, ticker) rows")
    for year, year_returns in returns.groupby("year", sort=True):
        yield int(year), year_returns.pivot(index="month", columns="ticker", values="log_return").sort_index()


def yearly_correlation_windows(monthly_returns: pd.DataFrame, min_months: int = 6) -> dict[int, CorrelationWindow]:
    """:func:`correlation_window` for every calendar year of ``monthly_returns`` (computed once, scored often)."""
    return {year: correlation_window(wide, min_months) for year, wide in returns_by_year(monthly_returns)}


def _yearly_windows(
    monthly_returns: pd.DataFrame, clusters: pd.DataFrame
) -> Iterator[tuple[object, int, pd.DataFrame, pd.Series]]:
    """Yield (method, year, returns_wide for that year, ticker -> cluster) for every evaluation window."""
    _check_columns("clusters", clusters, ("method", "ticker", "cluster"))
    yearly_returns = list(returns_by_year(monthly_returns))

    # A 'year' column in clusters means the clustering was redone every year: year y is then
    # scored with the clusters made for year y. Without it one clustering serves every year.
    keys = ["method", "year"] if "year" in clusters.columns else ["method"]
    if clusters.duplicated([*keys, "ticker"]).any():
        raise ValueError(f"clusters has repeated ({', '.join(keys)}, ticker) rows")
    clusterings = {
        key: group.set_index("ticker")["cluster"] for key, group in clusters.groupby(keys, sort=True)
    }

    for year, wide in yearly_returns:
        for key, assignment in clusterings.items():
            method = key[0]
            if len(keys) == 2 and key[1] != year:
                continue
            yield method, int(year), wide, assignment


def yearly_mean_correlation(
    monthly_returns: pd.DataFrame, clusters: pd.DataFrame, min_months: int = 6
) -> pd.DataFrame:
    """:func:`mean_correlation` per (clustering method, calendar year of the return month).

    Args:
        monthly_returns: long frame with columns month ("YYYY-MM"), ticker, log_return.
        clusters: long frame with columns method, ticker, cluster, and optionally year (then
            year y is scored with that year's clusters, and years a method has no clusters for
            are skipped).
        min_months: see :func:`mean_correlation`.

    Returns:
        Frame with columns method, year, mc_cluster, mc_pair, coverage, n_clusters, n_pairs,
        n_companies; one row per (method, year), sorted by method then year. A year with fewer
        than min_months months (a partial last year) has n_companies = 0 and NaN scores.
    """
    rows = []
    for method, year, wide, assignment in _yearly_windows(monthly_returns, clusters):
        score = mean_correlation(wide, assignment, min_months=min_months)
        rows.append({"method": method, "year": year, **asdict(score)})
    columns = ["method", "year", "mc_cluster", "mc_pair", "coverage", "n_clusters", "n_pairs", "n_companies"]
    table = pd.DataFrame(rows, columns=columns)
    return table.sort_values(["method", "year"], kind="stable").reset_index(drop=True)


def cluster_correlation_table(
    monthly_returns: pd.DataFrame, clusters: pd.DataFrame, min_months: int = 6
) -> pd.DataFrame:
    """Per-cluster detail behind :func:`yearly_mean_correlation`.

    Returns:
        Frame with columns method, year, cluster, n_members (eligible members), n_pairs,
        mean_corr; one row per cluster that entered mc_cluster, sorted by method, year, cluster.
    """
    tables = []
    for method, year, wide, assignment in _yearly_windows(monthly_returns, clusters):
        per_cluster = _window_correlations(wide, assignment, min_months).per_cluster
        if len(per_cluster):
            tables.append(per_cluster.assign(method=method, year=year))
    columns = ["method", "year", "cluster", "n_members", "n_pairs", "mean_corr"]
    if not tables:
        return pd.DataFrame(columns=columns)
    table = pd.concat(tables, ignore_index=True).loc[:, columns]
    return table.sort_values(["method", "year", "cluster"], kind="stable").reset_index(drop=True)
