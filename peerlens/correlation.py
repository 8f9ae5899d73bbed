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


class _WindowCorrelations(NamedTuple):
    per_cluster: pd.DataFrame
    """Columns cluster, n_members, n_pairs, mean_corr; only clusters with >= 1 defined pair."""
    pair_correlations: np.ndarray
    """(n_pairs,) correlations of every within-cluster pair with a defined value."""
    n_companies: int
    n_covered: int


def _check_clusters(clusters: pd.Series) -> None:
    if not isinstance(clusters, pd.Series):
        raise TypeError(f"clusters must be a pandas Series (ticker -> cluster), got {type(clusters).__name__}")
    if clusters.index.has_duplicates:
        repeated = clusters.index[clusters.index.duplicated()].unique()[:5].tolist()
        raise ValueError(f"clusters has tickers listed more than once, e.g. {repeated}")
    if clusters.isna().any():
        raise ValueError(
            f"clusters has {int(clusters.isna().sum())} missing cluster ids; give unclustered companies "
            "their own singleton id (see peerlens.clustering.labels_from_codes)"
        )


def _window_correlations(
    returns_wide: pd.DataFrame, clusters: pd.Series, min_months: int
) -> _WindowCorrelations:
    if not isinstance(returns_wide, pd.DataFrame):
        raise TypeError(
            f"returns_wide must be a DataFrame (months x tickers), got {type(returns_wide).__name__}"
        )
    if returns_wide.columns.has_duplicates:
        raise ValueError("returns_wide has repeated ticker columns")
    _check_clusters(clusters)
    # Two points always correlate at +-1; three is the least that says anything.
    if min_months < 3:
        raise ValueError(f"min_months must be >= 3, got {min_months}")

    observed = returns_wide.notna().sum(axis=0)
    eligible = [
        ticker for ticker in returns_wide.columns if ticker in clusters.index and observed[ticker] >= min_months
    ]
    # Pairwise-complete Pearson: each pair uses the months both have; fewer than min_months -> NaN.
    correlations = returns_wide.loc[:, eligible].astype("float64").corr(min_periods=min_months)
    position = {ticker: i for i, ticker in enumerate(eligible)}
    corr = correlations.to_numpy()

    rows: list[dict[str, object]] = []
    pair_values: list[np.ndarray] = []
    n_covered = 0
    members_by_cluster = clusters.loc[eligible].groupby(clusters.loc[eligible], sort=True)
    for cluster_id, members in members_by_cluster:
        if len(members) < 2:
            continue
        n_covered += len(members)
        index = np.array([position[ticker] for ticker in members.index])
        block = corr[np.ix_(index, index)]
        values = block[np.triu_indices(len(index), k=1)]
        values = values[~np.isnan(values)]
        if values.size == 0:
            continue
        pair_values.append(values)
        rows.append(
            {
                "cluster": cluster_id,
                "n_members": len(members),
                "n_pairs": int(values.size),
                "mean_corr": float(values.mean()),
            }
        )
    per_cluster = pd.DataFrame(rows, columns=["cluster", "n_members", "n_pairs", "mean_corr"])
    pairs = np.concatenate(pair_values) if pair_values else np.empty(0)
    return _WindowCorrelations(per_cluster, pairs, len(eligible), n_covered)


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
    window = _window_correlations(returns_wide, clusters, min_months)
    means = window.per_cluster["mean_corr"].to_numpy()
    return MeanCorrelation(
        mc_cluster=float(means.mean()) if means.size else float("nan"),
        mc_pair=float(window.pair_correlations.mean()) if window.pair_correlations.size else float("nan"),
        coverage=window.n_covered / window.n_companies if window.n_companies else float("nan"),
        n_clusters=int(means.size),
        n_pairs=int(window.pair_correlations.size),
        n_companies=window.n_companies,
    )


def _yearly_windows(
    monthly_returns: pd.DataFrame, clusters: pd.DataFrame
) -> Iterator[tuple[object, int, pd.DataFrame, pd.Series]]:
    """Yield (method, year, returns_wide for that year, ticker -> cluster) for every evaluation window."""
    for name, frame, required in (
        ("monthly_returns", monthly_returns, ("month", "ticker", "log_return")),
        ("clusters", clusters, ("method", "ticker", "cluster")),
    ):
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"{name} must be a DataFrame, got {type(frame).__name__}")
        missing = [column for column in required if column not in frame.columns]
        if missing:
            raise ValueError(f"{name} is missing required columns {missing}; it has {list(frame.columns)}")

    months = monthly_returns["month"].astype(str)
    malformed = ~months.str.match(_MONTH_PATTERN)
    if malformed.any():
        examples = months[malformed].unique()[:3].tolist()
        raise ValueError(f"monthly_returns['month'] must be 'YYYY-MM'; bad values e.g. {examples}")
    returns = monthly_returns.assign(month=months, year=months.str[:4].astype(int))
    if returns.duplicated(["month", "ticker"]).any():
        raise ValueError("monthly_returns has repeated (month, ticker) rows")

    # A 'year' column in clusters means the clustering was redone every year: year y is then
    # scored with the clusters made for year y. Without it one clustering serves every year.
    keys = ["method", "year"] if "year" in clusters.columns else ["method"]
    if clusters.duplicated([*keys, "ticker"]).any():
        raise ValueError(f"clusters has repeated ({', '.join(keys)}, ticker) rows")
    clusterings = {
        key: group.set_index("ticker")["cluster"] for key, group in clusters.groupby(keys, sort=True)
    }

    for year, year_returns in returns.groupby("year", sort=True):
        wide = year_returns.pivot(index="month", columns="ticker", values="log_return").sort_index()
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
