"""Walk-forward pairs trading inside clusters: does a clustering find tradable peers?

The paper chose within-cluster pairs by cointegration and traded them with entry at |z| = 1, exit
at 0 and a stop at |z| = 2, but fitted the hedge ratio and the z-score on the trading period itself.
Here every estimate comes from a formation window that ends before its trading window starts:

    formation (formation_days) -> trading (trading_days), then roll forward by trading_days.

Per window: Engle-Granger test of every within-cluster pair on formation log prices, OLS hedge ratio
and spread statistics from the formation window only, then a z-score state machine on the trading
window with transaction costs. Positions are decided at the close and earn the next day's return.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations, groupby
from typing import NamedTuple

import numpy as np
import pandas as pd

from peerlens.cointegration import engle_granger

TRADING_DAYS_PER_YEAR = 252
_MIN_SPREAD_STD = 1e-8
"""A formation spread flatter than this (log units) means the legs are collinear: z is undefined."""

PAIR_COLUMNS = ["cluster", "pair_id", "a", "b", "pvalue", "hedge_ratio", "intercept", "spread_mean", "spread_std"]
"""Columns of :func:`select_pairs` output."""


@dataclass(frozen=True)
class PairsConfig:
    """Walk-forward pairs-trading settings (defaults: the paper's bands, one-year formation)."""

    formation_days: int = 252
    trading_days: int = 126
    entry_z: float = 1.0
    exit_z: float = 0.0
    stop_z: float = 2.0
    cost_bps: float = 10.0
    """Cost in basis points per unit of notional traded, summed over both legs."""
    pvalue_max: float = 0.05
    max_pairs_per_cluster: int = 5
    max_cluster_size: int = 30
    """Larger clusters are not searched: their pair count grows as n^2 (counted in the result)."""

    def __post_init__(self) -> None:
        if self.formation_days <= 20 or self.trading_days <= 20:
            raise ValueError(
                "formation_days and trading_days must be > 20, got "
                f"{self.formation_days} and {self.trading_days}"
            )
        if not 0 <= self.exit_z < self.entry_z < self.stop_z:
            raise ValueError(
                f"need 0 <= exit_z < entry_z < stop_z, got {self.exit_z}, {self.entry_z}, {self.stop_z}"
            )
        if not self.cost_bps >= 0:
            raise ValueError(f"cost_bps must be >= 0, got {self.cost_bps}")
        if not 0 < self.pvalue_max <= 1:
            raise ValueError(f"pvalue_max must be in (0, 1], got {self.pvalue_max}")
        if self.max_pairs_per_cluster < 1 or self.max_cluster_size < 2:
            raise ValueError(
                f"max_pairs_per_cluster must be >= 1 and max_cluster_size >= 2, got "
                f"{self.max_pairs_per_cluster} and {self.max_cluster_size}"
            )


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
    pairs: pd.DataFrame
    """Selected pairs: window, PAIR_COLUMNS, n_entries (trades opened), window_return (compounded)."""
    windows: list[Window]
    window_summary: pd.DataFrame
    """Per window: window, n_tickers (eligible), clusters_searched, clusters_skipped_too_large,
    n_pairs, window_return (compounded portfolio return over the trading window)."""


def pair_id(a: str, b: str) -> str:
    """Column name of pair (a, b) in :func:`trade_pairs` output."""
    return f"{a}/{b}"


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
    window are tested in one batch by :func:`peerlens.cointegration.engle_granger`, which returns
    coint's statistic and p-value (to ~1e-12) at well under a millisecond per pair.

    Args:
        log_prices_formation: (formation dates x tickers) log prices.
        clusters: cluster id per ticker (index ticker); tickers missing from it are ignored.

    Returns:
        Frame with columns cluster, pair_id, a, b, pvalue, hedge_ratio, intercept, spread_mean,
        spread_std; sorted by cluster then pvalue.
    """
    return _select_pairs(log_prices_formation, clusters, cfg).pairs


def spread_positions(z: np.ndarray, cfg: PairsConfig = PairsConfig()) -> np.ndarray:
    """Spread position held after each close, from the z-score path.

    Position +1 is long the spread (long a, short b), -1 short. At each close t, in order:

    1. Holding: exit if z_t has come back to the exit level (short: z_t <= exit_z; long:
       z_t >= -exit_z). Otherwise stop out if |z_t| > stop_z, the spread having run further
       against the position; that side is then blocked until |z| <= entry_z again.
    2. Flat: short when entry_z < z_t <= stop_z, long when -stop_z <= z_t < -entry_z, unless that
       side is blocked. A z beyond the stop is not entered: it would be stopped at once.

    A NaN z (a leg without a price yet) changes nothing.

    Args:
        z: (T,) z-scores at each close.

    Returns:
        (T,) int8 positions in {-1, 0, 1}.
    """
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 1:
        raise ValueError(f"z must be 1-D, got shape {z.shape}")
    positions = np.zeros(z.shape[0], dtype=np.int8)
    position, blocked_side = 0, 0  # blocked_side: sign of z on the side last stopped out, 0 = none
    for t, z_t in enumerate(z):
        if not math.isnan(z_t):
            if abs(z_t) <= cfg.entry_z:
                blocked_side = 0
            if position != 0:
                if -position * z_t <= cfg.exit_z:
                    position = 0
                elif abs(z_t) > cfg.stop_z:
                    blocked_side, position = -position, 0
            if position == 0 and cfg.entry_z < abs(z_t) <= cfg.stop_z:
                side = 1 if z_t > 0 else -1
                if side != blocked_side:
                    position = -side
        positions[t] = position
    return positions


class _PairTrades(NamedTuple):
    returns: pd.DataFrame
    """(dates x pair_id) net daily returns."""
    positions: pd.DataFrame
    """(dates x pair_id) position held after each close."""


def _trade_pairs(
    log_prices_trading: pd.DataFrame, pairs: pd.DataFrame, cfg: PairsConfig, jumps: pd.DataFrame | None
) -> _PairTrades:
    needed = ("a", "b", "hedge_ratio", "intercept", "spread_mean", "spread_std")
    missing_columns = [column for column in needed if column not in pairs]
    if missing_columns:
        raise ValueError(f"pairs is missing columns {missing_columns}")
    index = log_prices_trading.index
    if index.has_duplicates or not index.is_monotonic_increasing:
        raise ValueError("log_prices_trading must have strictly increasing dates")
    ids = [pair_id(a, b) for a, b in zip(pairs["a"], pairs["b"])]
    if not ids:
        empty = pd.DataFrame(index=index, columns=pd.Index([], dtype=object), dtype="float64")
        return _PairTrades(empty, empty.copy())
    absent = sorted(set(pairs["a"]).union(pairs["b"]).difference(log_prices_trading.columns))
    if absent:
        raise ValueError(f"log_prices_trading has no column for tickers {absent[:10]}")

    # A missing quote is carried forward: no price, no move; the move lands on the next quote.
    prices = log_prices_trading.astype("float64").ffill()
    log_a, log_b = prices[pairs["a"]].to_numpy(), prices[pairs["b"]].to_numpy()
    beta = pairs["hedge_ratio"].to_numpy(dtype=np.float64)
    spread = log_a - (pairs["intercept"].to_numpy(dtype=np.float64) + beta * log_b)
    spread_mean = pairs["spread_mean"].to_numpy(dtype=np.float64)
    z = (spread - spread_mean) / pairs["spread_std"].to_numpy(dtype=np.float64)

    positions = np.column_stack([spread_positions(z[:, k], cfg) for k in range(len(ids))]).astype(np.float64)
    simple_a = np.vstack([np.zeros((1, len(ids))), np.expm1(np.diff(log_a, axis=0))])
    simple_b = np.vstack([np.zeros((1, len(ids))), np.expm1(np.diff(log_b, axis=0))])
    if jumps is not None:
        # eq(True) reads dates or tickers absent from ``jumps`` (NaN after reindexing) as no jump.
        flags = jumps.reindex(index=index)
        jump_a = flags.reindex(columns=pairs["a"]).eq(True).to_numpy()
        jump_b = flags.reindex(columns=pairs["b"]).eq(True).to_numpy()
        # An unadjusted spin-off drop is not a return; the formation spread level no longer
        # applies after it, so the pair is closed at that close for the rest of the window.
        simple_a[jump_a], simple_b[jump_b] = 0.0, 0.0
        after_jump = np.maximum.accumulate(jump_a | jump_b, axis=0)
        positions[after_jump] = 0.0
    positions[-1] = 0.0  # every position is closed at the window's last close
    simple_a, simple_b = np.nan_to_num(simple_a), np.nan_to_num(simple_b)

    held = np.vstack([np.zeros((1, len(ids))), positions[:-1]])
    spread_return = (simple_a - beta * simple_b) / (1.0 + np.abs(beta))
    traded = np.abs(np.diff(positions, axis=0, prepend=0.0))
    net = held * spread_return - cfg.cost_bps / 1e4 * traded
    return _PairTrades(
        pd.DataFrame(net, index=index, columns=ids), pd.DataFrame(positions, index=index, columns=ids)
    )


def trade_pairs(
    log_prices_trading: pd.DataFrame,
    pairs: pd.DataFrame,
    cfg: PairsConfig = PairsConfig(),
    jumps: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Daily net returns of each selected pair over a trading window.

    With formation statistics only: z_t = (spread_t - spread_mean) / spread_std, spread_t =
    log a_t - intercept - hedge_ratio * log b_t; positions p_t from :func:`spread_positions`,
    closed at the window's last close. The position set at close t-1 earns day t:

        r_t = p_{t-1} * (ra_t - beta * rb_t) / (1 + |beta|)  -  cost_bps/1e4 * |p_t - p_{t-1}|

    ra, rb are simple daily returns of the legs. Position 1 holds 1/(1+|beta|) of a against
    beta/(1+|beta|) of b, one unit of gross notional, rebalanced to those weights daily. A unit
    change of position therefore trades 1/(1+|beta|) + |beta|/(1+|beta|) = 1 unit of notional
    over the two legs, which costs cost_bps; it is charged on day t for the trade at close t.
    Missing prices are carried forward.

    Args:
        log_prices_trading: (trading dates x tickers) log prices.
        pairs: frame from :func:`select_pairs`.
        jumps: optional (dates x tickers) bool, True on flagged jump days (the ``jump`` column of
            cleaned prices, pivoted). A pair's leg return on its jump day is taken as 0 and the
            pair is flat from that close on: the known event, not hindsight, closes it.

    Returns:
        (trading dates x pair_id) frame of net daily returns.
    """
    return _trade_pairs(log_prices_trading, pairs, cfg, jumps).returns


def walk_forward_pairs(
    close_wide: pd.DataFrame,
    clusters: pd.Series,
    cfg: PairsConfig = PairsConfig(),
    jumps: pd.DataFrame | None = None,
) -> PairsResult:
    """Run select -> trade over every walk-forward window and pool the pairs' returns.

    Each day's portfolio return is the equal-weight mean of the net returns of the pairs active
    that day (holding a position into the day or trading at its close); 0 when none is.

    Args:
        close_wide: (dates x tickers) close prices (> 0, NaN where missing).
        clusters: cluster id per ticker (index ticker).
        jumps: optional jump-day flags, see :func:`trade_pairs`.
    """
    if not isinstance(close_wide, pd.DataFrame):
        raise TypeError(f"close_wide must be a DataFrame (dates x tickers), got {type(close_wide).__name__}")
    if not isinstance(clusters, pd.Series):
        raise TypeError(f"clusters must be a Series (ticker -> cluster), got {type(clusters).__name__}")
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

    daily_parts, pair_parts, summary_rows = [], [], []
    for k, window in enumerate(windows):
        selection = _select_pairs(log_prices.loc[window.formation_start : window.formation_end], clusters, cfg)
        tickers = sorted(set(selection.pairs["a"]).union(selection.pairs["b"]))
        trading = log_prices.loc[window.trading_start : window.trading_end, tickers]
        trades = _trade_pairs(trading, selection.pairs, cfg, jumps)

        positions = trades.positions.to_numpy()
        held = np.vstack([np.zeros((1, positions.shape[1])), positions[:-1]])
        active = (held != 0) | (positions != held)
        n_active = active.sum(axis=1)
        daily = trades.returns.to_numpy().sum(axis=1) / np.maximum(n_active, 1)
        daily_parts.append(pd.Series(daily, index=trading.index))

        pair_returns = (1.0 + trades.returns).prod(axis=0) - 1.0
        entries = ((positions != 0) & (held == 0)).sum(axis=0)
        pair_parts.append(
            selection.pairs.assign(
                window=k, n_entries=entries.astype(int), window_return=pair_returns.to_numpy(dtype=np.float64)
            )
        )
        summary_rows.append(
            {
                "window": k,
                "n_tickers": selection.n_tickers,
                "clusters_searched": selection.clusters_searched,
                "clusters_skipped_too_large": selection.clusters_skipped_too_large,
                "n_pairs": len(selection.pairs),
                "window_return": float(np.prod(1.0 + daily) - 1.0),
            }
        )

    pair_columns = ["window", *PAIR_COLUMNS, "n_entries", "window_return"]
    non_empty = [part.loc[:, pair_columns] for part in pair_parts if len(part)]
    pairs = pd.concat(non_empty, ignore_index=True) if non_empty else pd.DataFrame(columns=pair_columns)
    daily_returns = pd.concat(daily_parts).rename("pairs_daily_return")
    return PairsResult(daily_returns, pairs, windows, pd.DataFrame(summary_rows))


def summarize_returns(daily: pd.Series) -> dict[str, float | int]:
    """Performance of a daily return series.

    - sharpe = mean / std * sqrt(252) (std with ddof=1; NaN if std is 0 or there is one day)
    - annual_return = mean * 252
    - total_return = prod(1 + r_t) - 1
    - max_drawdown = min_t (W_t / max_{s<=t} W_s - 1) with W_t = prod_{s<=t}(1 + r_s), W_0 = 1;
      a fraction <= 0
    - n_days
    """
    if not isinstance(daily, pd.Series):
        raise TypeError(f"daily must be a pandas Series, got {type(daily).__name__}")
    if daily.empty:
        raise ValueError("daily is empty: there is nothing to summarise")
    if daily.isna().any():
        raise ValueError(f"daily has {int(daily.isna().sum())} missing returns")
    values = daily.to_numpy(dtype=np.float64)
    mean = float(values.mean())
    std = float(values.std(ddof=1)) if values.size > 1 else float("nan")
    wealth = np.cumprod(1.0 + values)
    peaks = np.maximum.accumulate(np.concatenate([[1.0], wealth]))[1:]
    return {
        "sharpe": mean / std * math.sqrt(TRADING_DAYS_PER_YEAR) if std > 0 else float("nan"),
        "annual_return": mean * TRADING_DAYS_PER_YEAR,
        "total_return": float(wealth[-1] - 1.0),
        "max_drawdown": float(min((wealth / peaks - 1.0).min(), 0.0)),
        "n_days": int(values.size),
    }
