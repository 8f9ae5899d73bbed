"""Walk-forward pairs trading inside clusters: does a clustering find tradable peers?

The paper chose within-cluster pairs by cointegration and traded them with entry at |z| = 1, exit
at 0 and a stop at |z| = 2, but fitted the hedge ratio and the z-score on the trading period itself.
Here every estimate comes from a formation window that ends before its trading window starts:

    formation (formation_days) -> trading (trading_days), then roll forward by trading_days.

Per window: Engle-Granger test of every within-cluster pair on formation log prices, OLS hedge ratio
and spread statistics from the formation window only, then a z-score state machine on the trading
window with transaction costs (:mod:`peerlens.pairs.pairs_trading`). Positions are decided at the close
and earn the next day's return. This module selects pairs, rolls the windows and pools the pairs
into one portfolio; :func:`summarize_backtest` gives the row of a backtest table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations, groupby
from typing import Mapping, NamedTuple

import numpy as np
import pandas as pd

from peerlens.pairs.cointegration import engle_granger
from peerlens.pairs.pairs_trading import (
    TRADING_DAYS_PER_YEAR,
    PairsConfig,
    pair_id,
    simulate_pairs,
    summarize_returns,
)

_MIN_SPREAD_STD = 1e-8
"""A formation spread flatter than this (log units) means the legs are collinear: z is undefined."""

PAIR_COLUMNS = ["cluster", "pair_id", "a", "b", "pvalue", "hedge_ratio", "intercept", "spread_mean", "spread_std"]
"""Columns of :func:`select_pairs` output."""


@dataclass(frozen=True)
class Window:
    """One walk-forward step; all bounds are inclusive trading dates."""

    formation_start: pd.Timestamp
    formation_end: pd.Timestamp
    trading_start: pd.Timestamp
    trading_end: pd.Timestamp


@dataclass
class PairsResult:
    """Output of :func:`walk_forward_pairs`."""

    daily_returns: pd.Series
    """Portfolio return per trading day: equal-weight mean over the pairs active that day, 0 if none."""
    daily_turnover: pd.Series
    """Notional traded per trading day per unit of portfolio capital, on the same days and weights
    as ``daily_returns``: sum over pairs of |p_t - p_{t-1}|, divided by the pairs active that day.
    cost_bps/1e4 * daily_turnover is exactly the cost in that day's portfolio return."""
    pairs: pd.DataFrame
    """Selected pairs: window, PAIR_COLUMNS, n_entries (trades opened), window_return (compounded)."""
    windows: list[Window]
    window_summary: pd.DataFrame
    """Per window: window, formation_end, trading_start, n_tickers (eligible), clusters_searched, clusters_skipped_too_large,
    n_pairs, clusters_as_of (date of the point-in-time clustering traded; NaT when one clustering serves
    all windows), window_return (compounded portfolio return over the trading window)."""


def walk_forward_windows(dates: pd.DatetimeIndex, cfg: PairsConfig = PairsConfig()) -> list[Window]:
    """Formation/trading windows over ``dates``, rolling forward by ``trading_days``.

    Window k (s = k * trading_days): formation = dates[s : s+F], trading = dates[s+F : s+F+T].
    Trading periods therefore tile the dates after the first formation window without overlap.
    The last trading period is cut at the end of the dates, and dropped if it has fewer than two
    days (one day cannot hold a position from one close to the next).
    """
    dates = pd.DatetimeIndex(dates)
    if dates.has_duplicates or not dates.is_monotonic_increasing:
        raise ValueError("dates must be strictly increasing")
    F, T, n = cfg.formation_days, cfg.trading_days, len(dates)
    if n < F + 2:
        raise ValueError(f"need at least formation_days + 2 = {F + 2} dates for one window, got {n}")
    windows = []
    for start in range(0, n - F - 1, T):
        trading = dates[start + F : start + F + T]
        if len(trading) < 2:
            break
        windows.append(Window(dates[start], dates[start + F - 1], trading[0], trading[-1]))
    return windows


class _PairSelection(NamedTuple):
    pairs: pd.DataFrame
    n_tickers: int
    clusters_searched: int
    clusters_skipped_too_large: int


def _select_pairs(log_prices_formation: pd.DataFrame, clusters: pd.Series, cfg: PairsConfig) -> _PairSelection:
    if len(log_prices_formation) <= 20:
        raise ValueError(f"log_prices_formation has {len(log_prices_formation)} rows; need > 20")
    if not isinstance(clusters, pd.Series):
        raise TypeError(f"clusters must be a Series (ticker -> cluster), got {type(clusters).__name__}")
    if clusters.index.has_duplicates:
        raise ValueError("clusters lists a ticker more than once")
    prices = log_prices_formation.astype("float64")
    if np.isinf(prices.to_numpy()).any():
        raise ValueError("log_prices_formation has infinite values (log of a zero price?)")
    # A ticker needs a full, moving formation history: gaps would break the regression's time axis.
    complete = prices.columns[prices.notna().all() & (prices.std() > 0)]
    eligible = clusters.loc[clusters.index.intersection(complete)].dropna()

    # Hedge ratio and spread per candidate pair first, then one batched Engle-Granger test of all
    # candidates of the window (a per-pair coint call costs ~15 ms; the batch, well under 1 ms a pair).
    candidates: list[dict[str, object]] = []
    searched = skipped = 0
    for cluster_id, members in eligible.groupby(eligible, sort=True):
        if len(members) < 2:
            continue
        if len(members) > cfg.max_cluster_size:
            skipped += 1
            continue
        searched += 1
        for a, b in combinations(sorted(members.index), 2):
            log_a, log_b = prices[a].to_numpy(), prices[b].to_numpy()
            # Engle-Granger: regress a on b (with intercept), ADF test on the residual.
            hedge_ratio, intercept = np.polyfit(log_b, log_a, deg=1)
            spread = log_a - (intercept + hedge_ratio * log_b)
            spread_std = float(spread.std(ddof=1))
            # hedge_ratio <= 0 would hold both legs the same way: a bet, not a hedge.
            if hedge_ratio <= 0 or spread_std < _MIN_SPREAD_STD:
                continue
            candidates.append(
                {
                    "cluster": cluster_id,
                    "pair_id": pair_id(a, b),
                    "a": a,
                    "b": b,
                    "pvalue": math.nan,
                    "hedge_ratio": float(hedge_ratio),
                    "intercept": float(intercept),
                    "spread_mean": float(spread.mean()),
                    "spread_std": spread_std,
                }
            )

    rows: list[dict[str, object]] = []
    if candidates:
        legs_a = prices[[row["a"] for row in candidates]].to_numpy()
        legs_b = prices[[row["b"] for row in candidates]].to_numpy()
        pvalues = engle_granger(legs_a, legs_b).pvalue  # the same numbers as coint(a, b), pair by pair
        for row, pvalue in zip(candidates, pvalues):
            row["pvalue"] = float(pvalue)
        kept = [row for row in candidates if row["pvalue"] < cfg.pvalue_max]
        # Clusters in sorted order (as the groupby above), the best max_pairs_per_cluster within each.
        for _, group in groupby(kept, key=lambda row: row["cluster"]):
            best = sorted(group, key=lambda row: (row["pvalue"], row["pair_id"]))
            rows.extend(best[: cfg.max_pairs_per_cluster])
    pairs = pd.DataFrame(rows, columns=PAIR_COLUMNS)
    return _PairSelection(pairs, len(eligible), searched, skipped)


def select_pairs(
    log_prices_formation: pd.DataFrame, clusters: pd.Series, cfg: PairsConfig = PairsConfig()
) -> pd.DataFrame:
    """Cointegrated within-cluster pairs, estimated on the formation window only.

    For each cluster with 2..max_cluster_size eligible members (no NaN in the window), every pair
    (a, b) with a < b by ticker name is tested with Engle-Granger (``statsmodels coint(a, b)``:
    OLS of a on b, ADF on the residual). The order matters: the test is not symmetric, and the
    name order keeps the choice free of any look at the data. For each pair:

        log a_t = intercept + hedge_ratio * log b_t + spread_t      (OLS, formation days only)

    with spread_mean and spread_std (ddof=1) of the formation spread. Pairs with hedge_ratio <= 0
    (long or short both legs at once) or a flat spread are not tested. Pairs with pvalue <
    pvalue_max are kept, the max_pairs_per_cluster smallest p-values per cluster. All pairs of a
    window are tested in one batch by :func:`peerlens.pairs.cointegration.engle_granger`, which returns
    coint's statistic and p-value (to ~1e-12) at well under a millisecond per pair.

    Args:
        log_prices_formation: (formation dates x tickers) log prices.
        clusters: cluster id per ticker (index ticker); tickers missing from it are ignored.

    Returns:
        Frame with columns cluster, pair_id, a, b, pvalue, hedge_ratio, intercept, spread_mean,
        spread_std; sorted by cluster then pvalue.
    """
    return _select_pairs(log_prices_formation, clusters, cfg).pairs


def clustering_for_window(clusterings: Mapping[pd.Timestamp, pd.Series], trading_start: pd.Timestamp):
    """(as_of, clusters) of the latest clustering dated on or before `trading_start`; (None, None) if none is.

    A clustering dated D was made from texts known before D, so trading from D on uses nothing unknown then.
    """
    dated = [day for day in sorted(clusterings) if pd.Timestamp(day) <= trading_start]
    return (dated[-1], clusterings[dated[-1]]) if dated else (None, None)


def walk_forward_pairs(
    close_wide: pd.DataFrame,
    clusters: pd.Series | Mapping[pd.Timestamp, pd.Series],
    cfg: PairsConfig = PairsConfig(),
    jumps: pd.DataFrame | None = None,
) -> PairsResult:
    """Run select -> trade over every walk-forward window and pool the pairs' returns.

    Each day's portfolio return is the equal-weight mean of the net returns of the pairs active
    that day (holding a position into the day or trading at its close); 0 when none is. With
    n_t active pairs and p_kt pair k's position after close t (gross notional 1 per unit, see
    :func:`peerlens.pairs.pairs_trading.simulate_pairs`):

        return_t   = (1/max(n_t, 1)) * sum_k r_kt
        turnover_t = (1/max(n_t, 1)) * sum_k |p_kt - p_k,t-1|

    so that the cost inside return_t is cost_bps/1e4 * turnover_t. Turnover counts the trades that
    open, close or reverse a pair, which are the trades charged; the daily drift back to the hedge
    weights and to equal weights across active pairs is neither charged nor counted.

    Args:
        close_wide: (dates x tickers) close prices (> 0, NaN where missing).
        clusters: cluster id per ticker (index ticker), used for every window; or point-in-time
            clusterings {as_of: cluster id per ticker}: each window trades the latest one dated on or
            before its trading start (`clustering_for_window`), and windows none precedes are skipped.
        jumps: optional jump-day flags, see :func:`peerlens.pairs.pairs_trading.simulate_pairs`.
    """
    if not isinstance(close_wide, pd.DataFrame):
        raise TypeError(f"close_wide must be a DataFrame (dates x tickers), got {type(close_wide).__name__}")
    clusterings = clusters if isinstance(clusters, Mapping) else None
    for clustering in clusterings.values() if clusterings is not None else [clusters]:
        if not isinstance(clustering, pd.Series):
            raise TypeError(f"clusters must be a Series (ticker -> cluster), got {type(clustering).__name__}")
    if clusterings is not None and not clusterings:
        raise ValueError("clusters is an empty mapping: no point-in-time clustering to trade")
    closes = close_wide.astype("float64")
    closes.index = pd.DatetimeIndex(pd.to_datetime(closes.index))
    if (closes <= 0).any().any():
        raise ValueError("close_wide has non-positive prices; clean them first (clean_daily_prices)")
    if jumps is not None:
        if not isinstance(jumps, pd.DataFrame):
            raise TypeError(f"jumps must be a DataFrame (dates x tickers) of bool, got {type(jumps).__name__}")
        jumps = jumps.set_axis(pd.DatetimeIndex(pd.to_datetime(jumps.index)), axis=0)
        if not jumps.index.isin(closes.index).any():
            raise ValueError("jumps shares no dates with close_wide: are they from the same price table?")
    log_prices = np.log(closes)
    windows = walk_forward_windows(log_prices.index, cfg)
    as_of = None
    if clusterings is not None:
        dated = [(window, *clustering_for_window(clusterings, window.trading_start)) for window in windows]
        windows = [window for window, day, _ in dated if day is not None]
        chosen = {window: (day, clustering) for window, day, clustering in dated if day is not None}
        if not windows:
            raise ValueError(
                f"no walk-forward window starts trading after the first clustering ({min(clusterings)}): "
                "nothing can be traded out of sample"
            )

    traded = []
    for k, window in enumerate(windows):
        if clusterings is not None:
            as_of, clusters = chosen[window]
        traded.append(trade_window(log_prices, clusters, window, cfg, jumps, number=k, as_of=as_of))
    return pool_windows(traded, windows)


class WindowTrades(NamedTuple):
    """One window traded (`trade_window`)."""

    daily_returns: pd.Series
    daily_turnover: pd.Series
    pairs: pd.DataFrame
    """window, PAIR_COLUMNS, n_entries, window_return."""
    summary: dict
    """One row of PairsResult.window_summary."""


def trade_window(
    log_prices: pd.DataFrame,
    clusters: pd.Series,
    window: Window,
    cfg: PairsConfig = PairsConfig(),
    jumps: pd.DataFrame | None = None,
    number: int | str = 0,
    as_of: object = None,
) -> WindowTrades:
    """Select pairs within `clusters` on the formation window's log prices, trade them over the trading
    window, and pool them into that window's portfolio (weights as in `walk_forward_pairs`).

    `number` names the window in the pairs and summary rows (its position, or a date); `as_of` is the date of
    the clustering traded.
    """
    selection = _select_pairs(log_prices.loc[window.formation_start : window.formation_end], clusters, cfg)
    tickers = sorted(set(selection.pairs["a"]).union(selection.pairs["b"]))
    trading = log_prices.loc[window.trading_start : window.trading_end, tickers]
    trades = simulate_pairs(trading, selection.pairs, cfg, jumps)

    positions = trades.positions.to_numpy()
    held = np.vstack([np.zeros((1, positions.shape[1])), positions[:-1]])
    active = (held != 0) | (positions != held)
    pairs_weight = 1.0 / np.maximum(active.sum(axis=1), 1)  # equal weight over the active pairs
    daily = trades.returns.to_numpy().sum(axis=1) * pairs_weight
    pair_returns = (1.0 + trades.returns).prod(axis=0) - 1.0
    entries = ((positions != 0) & (held == 0)).sum(axis=0)
    pairs = selection.pairs.assign(
        window=number, n_entries=entries.astype(int), window_return=pair_returns.to_numpy(dtype=np.float64)
    )
    summary = {
        "window": number,
        "formation_start": window.formation_start,
        "formation_end": window.formation_end,
        "trading_start": window.trading_start,
        "trading_end": window.trading_end,
        "n_tickers": selection.n_tickers,
        "clusters_searched": selection.clusters_searched,
        "clusters_skipped_too_large": selection.clusters_skipped_too_large,
        "n_pairs": len(selection.pairs),
        "clusters_as_of": pd.Timestamp(as_of) if as_of is not None else pd.NaT,
        "window_return": float(np.prod(1.0 + daily) - 1.0),
    }
    return WindowTrades(
        pd.Series(daily, index=trading.index),
        pd.Series(trades.traded.to_numpy().sum(axis=1) * pairs_weight, index=trading.index),
        pairs,
        summary,
    )


def pool_windows(traded: list[WindowTrades], windows: list[Window]) -> PairsResult:
    """The PairsResult of consecutive traded windows: their days, pairs and summaries one after another."""
    if not traded:
        raise ValueError("no window was traded: there is nothing to pool")
    pair_columns = ["window", *PAIR_COLUMNS, "n_entries", "window_return"]
    non_empty = [part.pairs.loc[:, pair_columns] for part in traded if len(part.pairs)]
    pairs = pd.concat(non_empty, ignore_index=True) if non_empty else pd.DataFrame(columns=pair_columns)
    daily_returns = pd.concat([part.daily_returns for part in traded]).rename("pairs_daily_return")
    daily_turnover = pd.concat([part.daily_turnover for part in traded]).rename("pairs_daily_turnover")
    summary = pd.DataFrame([part.summary for part in traded])
    return PairsResult(daily_returns, daily_turnover, pairs, windows, summary)


def window_starting(dates: pd.DatetimeIndex, start: object, end: object, cfg: PairsConfig = PairsConfig()) -> Window | None:
    """The window that trades the `dates` in [start, end), formed on the `formation_days` dates before them.

    None when fewer than formation_days dates precede `start` or fewer than two fall in [start, end)
    (one day cannot hold a position from one close to the next). This is how calendar periods (the
    half-years a clustering is dated for) become trading windows.
    """
    dates = pd.DatetimeIndex(dates)
    trading = dates[(dates >= pd.Timestamp(start)) & (dates < pd.Timestamp(end))]
    before = dates[dates < pd.Timestamp(start)]
    if len(trading) < 2 or len(before) < cfg.formation_days:
        return None
    return Window(before[-cfg.formation_days], before[-1], trading[0], trading[-1])


def summarize_backtest(result: PairsResult) -> dict[str, float | int]:
    """One row of a backtest table: :func:`peerlens.pairs.pairs_trading.summarize_returns` of the daily
    portfolio returns (sharpe, annual_return, total_return, max_drawdown, n_days), plus

    - turnover_daily = mean_t turnover_t (see :func:`walk_forward_pairs`): the average notional
      traded per day per unit of capital; costs average cost_bps/1e4 * turnover_daily a day
    - turnover_annual = turnover_daily * 252: capital traded per year (e.g. 12 = twelve times)
    - n_pairs: pairs selected, counted once per window they are selected in
    - windows, clusters_skipped_too_large (summed over windows)
    """
    if not result.daily_turnover.index.equals(result.daily_returns.index):
        raise ValueError("result.daily_turnover and result.daily_returns must cover the same days")
    turnover_daily = float(result.daily_turnover.mean())
    return {
        **summarize_returns(result.daily_returns),
        "turnover_daily": turnover_daily,
        "turnover_annual": turnover_daily * TRADING_DAYS_PER_YEAR,
        "n_pairs": len(result.pairs),
        "windows": len(result.windows),
        "clusters_skipped_too_large": int(result.window_summary["clusters_skipped_too_large"].sum()),
    }
