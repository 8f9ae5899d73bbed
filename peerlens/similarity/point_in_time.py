"""Point-in-time clusterings: what every method would have grouped on a given day, from what was known then.

A clustering dated D (its `as_of`) is made from each company's latest text with known_by < D
(`peerlens.sources.texts.texts_known_before`), on the companies that were index members on D and have prices,
and the code methods use the industry codes known before D (`codes_as_of`).
The evaluations score year Y with the clustering dated on or before 1 January of Y, and trade window W
with the one dated on or before W's first day, so no text published on or after the start of a scored
period can move its score.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
import pandas as pd

from peerlens.similarity.methods import CLUSTER_COLUMNS, ClusteringConfig, cluster_every_method
from peerlens.sources.texts import texts_known_before

CLUSTERING_MONTHS = (1, 7)
"""Clusterings are dated the first day of these months: 1 January dates the clustering each scored year
uses, 1 July adds a half-yearly refit for trading."""

DistancesOf = Callable[[pd.DataFrame], dict[str, np.ndarray]]
"""Universe texts (TEXT_COLUMNS rows, in order) → feature method → (n, n) distances in that order."""


def codes_as_of(codes: pd.DataFrame, day: object) -> pd.DataFrame:
    """The industry codes in force on `day`, indexed by ticker (the code columns).

    `codes`: industry_codes, one row per (ticker, known_by). Each ticker's row known latest strictly before
    `day` is used, by the rule of `texts_known_before`; a row with known_by NaT is an undated snapshot that
    holds on every date (the sample's codes; README says when they were known). A ticker with no row known
    before `day` is left out: a company without a code is its own cluster under that code.
    """
    in_force = codes[codes.known_by.isna() | (codes.known_by < pd.Timestamp(day))]
    latest = in_force.sort_values("known_by", na_position="first", kind="stable").drop_duplicates("ticker", keep="last")
    return latest.set_index("ticker").drop(columns="known_by")


def clustering_dates(texts: pd.DataFrame, last_day: object, months: tuple[int, ...] = CLUSTERING_MONTHS) -> list[pd.Timestamp]:
    """The first day of each month in `months` after the first text was known, up to `last_day`.

    The Dagster graph's dates are the time partitions of company_clusters (`assets.partitions`), on the
    same months; this is the same rule for a library user who holds a text history.
    """
    if texts.empty:
        return []
    first, last = pd.Timestamp(texts.known_by.min()), pd.Timestamp(last_day)
    starts = pd.date_range(first + pd.Timedelta(days=1), last, freq="MS")
    return [day for day in starts if day.month in months]


def universe_as_of(
    texts: pd.DataFrame, day: object, members: set[str] | None = None, tradable: set[str] | None = None
) -> pd.DataFrame:
    """Texts of the companies in the universe on `day`: latest text known before it, ticker a member and tradable.

    Two companies whose latest texts carry one ticker (a ticker reused after a company left) keep only
    the newer text: a ticker names one company in the returns.
    """
    universe = texts_known_before(texts, day, tickers=members)
    if tradable is not None:
        universe = universe[universe.ticker.isin(tradable)]
    universe = universe.sort_values("known_by", ascending=False, kind="stable").drop_duplicates("ticker")
    return universe.sort_values("ticker").reset_index(drop=True)


class PointInTimeClusters(NamedTuple):
    frame: pd.DataFrame
    """as_of, text_id, company_id and CLUSTER_COLUMNS: one row per (as_of, method, ticker)."""
    thetas: pd.DataFrame
    """One row per (as_of, feature method): theta."""
    summary: pd.DataFrame
    """One row per (as_of, method): companies and cluster_size_summary."""


def point_in_time_clusterings(
    texts: pd.DataFrame,
    dates: list[pd.Timestamp],
    distances_of: DistancesOf,
    codes: pd.DataFrame,
    config: ClusteringConfig,
    members_on: Callable[[pd.Timestamp], set[str]] | None = None,
    tradable_on: Callable[[pd.Timestamp], set[str]] | None = None,
    min_companies: int = 10,
) -> PointInTimeClusters:
    """Every method's clusters on each of `dates`, each from the universe of that day (`universe_as_of`).

    `members_on(day)` and `tradable_on(day)` (e.g. tickers whose prices have started) narrow the universe;
    None keeps every company. Dates whose universe has fewer than `min_companies` companies are skipped
    (none left: empty frames).
    `codes`: industry_codes (ticker, known_by, code columns); each date uses the codes in force on it
    (`codes_as_of`), so a code changed on or after a date cannot move its clustering.
    A `min_companies` below 2 is a ValueError naming it: one company has no distance to cut.
    """
    if min_companies < 2:
        raise ValueError(f"min_companies must be at least 2 (a clustering compares companies), got {min_companies}")
    frames, thetas, summaries = [], [], []
    for day in dates:
        universe = universe_as_of(
            texts, day, members_on(day) if members_on else None, tradable_on(day) if tradable_on else None
        )
        if len(universe) < min_companies:
            continue
        tickers = universe.ticker.tolist()
        clustering = cluster_every_method(tickers, distances_of(universe), codes_as_of(codes, day), config)
        ids = universe.set_index("ticker")
        frames.append(
            clustering.frame.assign(
                as_of=day,
                text_id=clustering.frame.ticker.map(ids.text_id),
                company_id=clustering.frame.ticker.map(ids.company_id),
            )
        )
        thetas += [{"as_of": day, "method": m, "theta": t} for m, t in clustering.thetas.items()]
        summaries.append(clustering.summary.assign(as_of=day, companies=len(tickers)))
    if not frames:  # no date had enough companies: an empty clustering, not an error
        empty = pd.DataFrame(columns=["as_of", "text_id", "company_id", *CLUSTER_COLUMNS])
        return PointInTimeClusters(empty, pd.DataFrame(columns=["as_of", "method", "theta"]), pd.DataFrame(columns=["as_of", "companies"]))
    frame = pd.concat(frames, ignore_index=True).loc[:, ["as_of", "text_id", "company_id", *CLUSTER_COLUMNS]]
    return PointInTimeClusters(frame, pd.DataFrame(thetas), pd.concat(summaries, ignore_index=True))


def clusterings_by_date(clusters: pd.DataFrame, method: str) -> dict[pd.Timestamp, pd.Series]:
    """{as_of: cluster id per ticker} of one method, for `peerlens.pairs.backtest.walk_forward_pairs`."""
    rows = clusters[clusters.method == method]
    return {pd.Timestamp(day): group.set_index("ticker").cluster for day, group in rows.groupby("as_of", sort=True)}
