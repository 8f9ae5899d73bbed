"""Trading one window of selected pairs: the z-score bands, positions, net returns and turnover.

A pair (a, b) comes with statistics estimated on its formation window (hedge ratio, intercept,
spread mean and std; see :func:`peerlens.pairs.backtest.select_pairs`). On the trading window the
spread's z-score drives a position through the paper's bands (entry |z| = 1, exit 0, stop 2);
a position decided at the close earns the next day's return, and every change of position pays
costs on the notional it trades. :func:`summarize_returns` turns the daily series into the
numbers a backtest table reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd

TRADING_DAYS_PER_YEAR = 252


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


def pair_id(a: str, b: str) -> str:
    """Column name of pair (a, b) in :func:`trade_pairs` output."""
    return f"{a}/{b}"


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


class PairTrades(NamedTuple):
    """One trading window of pairs, day by day; every frame is (trading dates x pair_id)."""

    returns: pd.DataFrame
    """Net daily return of each pair: the position held into the day times the hedged spread
    return, minus the cost of the trade at that day's close."""
    positions: pd.DataFrame
    """Position held after each close, in {-1, 0, 1}; 0 at the window's last close."""
    traded: pd.DataFrame
    """Notional traded at each close, |p_t - p_{t-1}| (p before the first close = 0), in units of
    the pair's gross notional: 1 to open or close, 2 to reverse."""


def simulate_pairs(
    log_prices_trading: pd.DataFrame,
    pairs: pd.DataFrame,
    cfg: PairsConfig = PairsConfig(),
    jumps: pd.DataFrame | None = None,
) -> PairTrades:
    """Positions, traded notional and net daily returns of each selected pair over a trading window.

    With formation statistics only: z_t = (spread_t - spread_mean) / spread_std, spread_t =
    log a_t - intercept - hedge_ratio * log b_t; positions p_t from :func:`spread_positions`,
    closed at the window's last close. The position set at close t-1 earns day t:

        r_t = p_{t-1} * (ra_t - beta * rb_t) / (1 + |beta|)  -  cost_bps/1e4 * |p_t - p_{t-1}|

    ra, rb are simple daily returns of the legs. Position 1 holds 1/(1+|beta|) of a against
    beta/(1+|beta|) of b, one unit of gross notional, rebalanced to those weights daily. A unit
    change of position therefore trades 1/(1+|beta|) + |beta|/(1+|beta|) = 1 unit of notional
    over the two legs, which costs cost_bps; it is charged on day t for the trade at close t.
    The daily rebalancing back to the hedge weights (a trade of the order of a day's return) is
    neither charged nor counted in ``traded``. Missing prices are carried forward.

    Args:
        log_prices_trading: (trading dates x tickers) log prices.
        pairs: frame from :func:`peerlens.pairs.backtest.select_pairs`.
        jumps: optional (dates x tickers) bool, True on flagged jump days (the ``jump`` column of
            cleaned prices, pivoted). A pair's leg return on its jump day is taken as 0 and the
            pair is flat from that close on: the known event, not hindsight, closes it.
    """
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
        return PairTrades(empty, empty.copy(), empty.copy())
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
    traded = np.abs(positions - held)
    net = held * spread_return - cfg.cost_bps / 1e4 * traded
    return PairTrades(
        pd.DataFrame(net, index=index, columns=ids),
        pd.DataFrame(positions, index=index, columns=ids),
        pd.DataFrame(traded, index=index, columns=ids),
    )


def trade_pairs(
    log_prices_trading: pd.DataFrame,
    pairs: pd.DataFrame,
    cfg: PairsConfig = PairsConfig(),
    jumps: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """(trading dates x pair_id) net daily returns of each pair; see :func:`simulate_pairs`."""
    return simulate_pairs(log_prices_trading, pairs, cfg, jumps).returns


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
