"""Specification of walk-forward cointegration pairs trading (peerlens.pairs.backtest, peerlens.pairs.pairs_trading)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from peerlens.pairs.backtest import (
    select_pairs,
    summarize_backtest,
    walk_forward_pairs,
    walk_forward_windows,
)
from peerlens.pairs.pairs_trading import (
    PairsConfig,
    simulate_pairs,
    spread_positions,
    summarize_returns,
    trade_pairs,
)

SMALL = PairsConfig(formation_days=100, trading_days=50)


def cointegrated_log_prices(n_days: int, seed: int, a: str = "AAA", b: str = "BBB") -> pd.DataFrame:
    """log b: random walk; log a = 0.5 + 1.5 log b + AR(1) noise (phi 0.8): cointegrated, beta 1.5."""
    rng = np.random.default_rng(seed)
    log_b = np.log(50.0) + np.cumsum(rng.normal(0.0, 0.01, n_days))
    noise = np.zeros(n_days)
    for t in range(1, n_days):
        noise[t] = 0.8 * noise[t - 1] + rng.normal(0.0, 0.01)
    dates = pd.bdate_range("2020-01-01", periods=n_days)
    return pd.DataFrame({a: 0.5 + 1.5 * log_b + noise, b: log_b}, index=dates)


def random_walk_log_prices(n_days: int, seed: int, names: list[str]) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    steps = rng.normal(0.0, 0.01, (n_days, len(names)))
    dates = pd.bdate_range("2020-01-01", periods=n_days)
    return pd.DataFrame(np.log(50.0) + np.cumsum(steps, axis=0), index=dates, columns=names)


def test_cointegrated_pair_is_selected_with_its_hedge_ratio():
    log_prices = cointegrated_log_prices(252, seed=0)
    pairs = select_pairs(log_prices, pd.Series({"AAA": 0, "BBB": 0}))
    assert pairs[["a", "b"]].values.tolist() == [["AAA", "BBB"]]
    assert pairs["pvalue"].item() < 0.05
    assert pairs["hedge_ratio"].item() == pytest.approx(1.5, abs=0.1)
    assert pairs["spread_std"].item() > 0


def test_a_negative_hedge_ratio_is_not_a_pair():
    log_prices = cointegrated_log_prices(252, seed=0)
    log_prices["AAA"] = 10.0 - (log_prices["AAA"] - 0.5)  # log a = 10 - 1.5 log b - noise
    assert select_pairs(log_prices, pd.Series({"AAA": 0, "BBB": 0})).empty


def test_independent_random_walks_are_not_selected():
    # With seed 1 the Engle-Granger p-value of these two walks is 0.54.
    log_prices = random_walk_log_prices(252, seed=1, names=["AAA", "BBB"])
    assert select_pairs(log_prices, pd.Series({"AAA": 0, "BBB": 0})).empty


def test_pairs_are_only_searched_within_clusters_and_without_gaps():
    log_prices = cointegrated_log_prices(252, seed=0)
    assert select_pairs(log_prices, pd.Series({"AAA": 0, "BBB": 1})).empty
    gappy = log_prices.copy()
    gappy.iloc[10, 0] = np.nan
    assert select_pairs(gappy, pd.Series({"AAA": 0, "BBB": 0})).empty


def test_select_keeps_the_best_pairs_per_cluster():
    panel = pd.concat(
        [cointegrated_log_prices(252, 0, "A1", "B1"), cointegrated_log_prices(252, 1, "A2", "B2")], axis=1
    )
    clusters = pd.Series(0, index=panel.columns)
    one = select_pairs(panel, clusters, PairsConfig(max_pairs_per_cluster=1))
    every = select_pairs(panel, clusters, PairsConfig(max_pairs_per_cluster=10))
    assert len(one) == 1 and len(every) >= 2
    assert one["pvalue"].item() == every["pvalue"].min()


def test_cointegrated_pair_trades_profitably_before_costs_out_of_sample():
    log_prices = cointegrated_log_prices(252 + 252, seed=0)
    formation, trading = log_prices.iloc[:252], log_prices.iloc[252:]
    pairs = select_pairs(formation, pd.Series({"AAA": 0, "BBB": 0}))
    returns = trade_pairs(trading, pairs, PairsConfig(cost_bps=0.0))
    assert returns.columns.tolist() == ["AAA/BBB"]
    assert (1 + returns["AAA/BBB"]).prod() - 1 > 0.01


def test_costs_reduce_returns_by_cost_bps_per_unit_of_position_change():
    log_prices = cointegrated_log_prices(252 + 126, seed=0)
    pairs = select_pairs(log_prices.iloc[:252], pd.Series({"AAA": 0, "BBB": 0}))
    trading = log_prices.iloc[252:]
    gross = trade_pairs(trading, pairs, PairsConfig(cost_bps=0.0))["AAA/BBB"]
    net = trade_pairs(trading, pairs, PairsConfig(cost_bps=10.0))["AAA/BBB"]
    cost = gross - net
    assert (cost >= 0).all() and cost.sum() > 0
    # A unit of position change trades one unit of notional over both legs: 10 bps.
    assert set(cost[cost > 0].round(12)) <= {0.001, 0.002}  # enter/exit: 1 unit, reversal: 2


def unit_pair() -> pd.DataFrame:
    """Pair with beta 1, intercept 0, mean 0, std 1 and b flat at price 1: z_t = log a_t."""
    return pd.DataFrame(
        {
            "a": ["A"], "b": ["B"], "hedge_ratio": [1.0], "intercept": [0.0],
            "spread_mean": [0.0], "spread_std": [1.0],
        }
    )


def test_position_set_at_a_close_earns_the_next_days_return_only():
    z = np.array([0.0, 1.5, 1.0, 0.5, -0.1, 0.0])
    log_prices = pd.DataFrame({"A": z, "B": 0.0}, index=pd.bdate_range("2021-01-04", periods=6))
    returns = trade_pairs(log_prices, unit_pair(), PairsConfig(cost_bps=10.0))["A/B"].to_numpy()
    simple_a = np.expm1(np.diff(z, prepend=z[0]))
    # Short the spread at close 1 (z 1.5 > 1), hold, exit at close 4 (z -0.1 <= 0).
    expected = np.array(
        [0.0, -0.001, -simple_a[2] / 2, -simple_a[3] / 2, -simple_a[4] / 2 - 0.001, 0.0]
    )
    np.testing.assert_allclose(returns, expected)


def test_one_round_trip_trades_one_unit_in_and_one_unit_out():
    # Short the spread at close 1 (z 1.5), exit at close 4 (z -0.1): |Δp| = 1 on each of those closes.
    z = np.array([0.0, 1.5, 1.0, 0.5, -0.1, 0.0])
    log_prices = pd.DataFrame({"A": z, "B": 0.0}, index=pd.bdate_range("2021-01-04", periods=6))
    trades = simulate_pairs(log_prices, unit_pair(), PairsConfig(cost_bps=10.0))
    assert trades.positions["A/B"].tolist() == [0, -1, -1, -1, 0, 0]
    assert trades.traded["A/B"].tolist() == [0, 1, 0, 0, 1, 0]
    gross = simulate_pairs(log_prices, unit_pair(), PairsConfig(cost_bps=0.0)).returns
    np.testing.assert_allclose(gross - trades.returns, 10.0 / 1e4 * trades.traded, atol=1e-15)


def test_turnover_of_a_single_round_trip_over_a_window_is_two_units_per_window():
    # Formation: 30 days of an exactly stationary spread (z known); trading: 30 days in which the
    # spread jumps to z = +1.5 once (short at that close) and comes back to 0 (flat) the next day.
    n_formation, n_trading = 30, 30
    cfg = PairsConfig(formation_days=n_formation, trading_days=n_trading, pvalue_max=1.0, cost_bps=10.0)
    dates = pd.bdate_range("2021-01-04", periods=n_formation + n_trading)
    rng = np.random.default_rng(0)
    log_b = np.log(20.0) + np.cumsum(rng.normal(0.0, 0.01, dates.size))
    spread = np.tile([0.01, -0.01], dates.size // 2)  # formation mean 0, std 0.01017
    spread[n_formation:] = 0.0
    spread[n_formation + 10] = 1.5 * np.std(spread[:n_formation], ddof=1)
    closes = pd.DataFrame({"A": np.exp(log_b + spread), "B": np.exp(log_b)}, index=dates)
    result = walk_forward_pairs(closes, pd.Series({"A": 0, "B": 0}), cfg)
    assert len(result.windows) == 1 and result.pairs["pair_id"].tolist() == ["A/B"]

    expected = np.zeros(n_trading)
    expected[[10, 11]] = 1.0  # one unit in at close 10, one unit out at close 11
    np.testing.assert_allclose(result.daily_turnover.to_numpy(), expected, atol=1e-9)
    summary = summarize_backtest(result)
    assert summary["turnover_daily"] == pytest.approx(2 / n_trading)
    assert summary["turnover_annual"] == pytest.approx(2 / n_trading * 252)
    assert summary["n_pairs"] == 1 and summary["windows"] == 1


def test_portfolio_costs_are_cost_bps_times_turnover_every_day():
    closes, clusters = two_cluster_panel()
    gross = walk_forward_pairs(closes, clusters, PairsConfig(formation_days=100, trading_days=50, cost_bps=0.0))
    net = walk_forward_pairs(closes, clusters, SMALL)  # 10 bps
    assert net.daily_turnover.sum() > 0
    pd.testing.assert_index_equal(net.daily_turnover.index, net.daily_returns.index)
    np.testing.assert_allclose(
        gross.daily_returns - net.daily_returns, 10.0 / 1e4 * net.daily_turnover, atol=1e-15
    )
    summary = summarize_backtest(net)
    assert set(summary) >= {"sharpe", "annual_return", "max_drawdown", "turnover_daily", "turnover_annual", "n_pairs"}
    assert summary["turnover_annual"] == pytest.approx(net.daily_turnover.mean() * 252)


def test_spread_positions_enter_exit_and_reverse_on_the_bands():
    cfg = PairsConfig()
    z = [0.0, 1.2, 0.4, -0.1, -1.5, 0.5, -1.2, 1.3]
    # short above 1, exit at <= 0, long below -1, exit at >= 0, long, then reverse straight to short
    assert spread_positions(np.array(z), cfg).tolist() == [0, -1, -1, 0, 1, 0, 1, -1]


def test_stop_loss_blocks_the_same_side_until_z_is_back_inside_the_entry_band():
    z = [0.0, 1.5, 2.5, 1.8, 1.5, 0.9, 1.5, -2.5, -1.5]
    # stopped at 2.5; 1.8 and 1.5 may not re-enter short; 0.9 unblocks; 1.5 re-enters;
    # -2.5 takes the short's profit (an exit, not a stop) but is too far out to go long; -1.5 does.
    assert spread_positions(np.array(z), PairsConfig()).tolist() == [0, -1, 0, 0, 0, 0, -1, 0, 1]
    # A run past the stop on the far side is a profit, not a stop: the short side stays open.
    assert spread_positions(np.array([1.5, -2.5, 1.5]), PairsConfig()).tolist() == [-1, 0, -1]


def test_spread_positions_hold_through_missing_z():
    assert spread_positions(np.array([1.5, np.nan, 0.5]), PairsConfig()).tolist() == [-1, -1, -1]


def test_a_jump_day_zeroes_that_legs_move_and_closes_the_pair():
    z = np.array([0.0, 1.5, 1.2, 0.4, 0.3])  # short from close 1; a unadjusted drop on day 3
    log_prices = pd.DataFrame({"A": z, "B": 0.0}, index=pd.bdate_range("2021-01-04", periods=5))
    jumps = pd.DataFrame(False, index=log_prices.index, columns=["A", "B"])
    jumps.iloc[3, 0] = True
    returns = trade_pairs(log_prices, unit_pair(), PairsConfig(cost_bps=0.0), jumps=jumps)["A/B"].to_numpy()
    np.testing.assert_allclose(returns, [0.0, 0.0, -np.expm1(-0.3) / 2, 0.0, 0.0])


def test_walk_forward_windows_tile_trading_periods_without_overlap():
    dates = pd.bdate_range("2020-01-01", periods=330)
    windows = walk_forward_windows(dates, SMALL)
    assert len(windows) == 5  # trading starts at 100, 150, 200, 250, 300 (the last cut to 30 days)
    for window in windows:
        assert window.formation_end < window.trading_start
        assert len(dates[(dates >= window.formation_start) & (dates <= window.formation_end)]) == 100
    for before, after in zip(windows, windows[1:]):
        assert before.trading_end < after.trading_start
        assert dates.get_loc(after.trading_start) == dates.get_loc(before.trading_end) + 1
    assert windows[-1].trading_end == dates[-1]
    with pytest.raises(ValueError, match="at least"):
        walk_forward_windows(dates[:101], SMALL)


def two_cluster_panel(n_days: int = 300) -> tuple[pd.DataFrame, pd.Series]:
    panel = pd.concat(
        [
            cointegrated_log_prices(n_days, 0, "A1", "B1"),
            cointegrated_log_prices(n_days, 1, "A2", "B2"),
            random_walk_log_prices(n_days, 2, ["C1", "C2", "C3"]),
        ],
        axis=1,
    )
    clusters = pd.Series({"A1": 0, "B1": 0, "A2": 1, "B2": 1, "C1": 1, "C2": 2, "C3": 2})
    return np.exp(panel), clusters


def test_no_look_ahead_prices_after_formation_do_not_change_the_selection():
    closes, clusters = two_cluster_panel()
    result = walk_forward_pairs(closes, clusters, SMALL)
    first = result.windows[0]
    perturbed = closes.copy()
    after = perturbed.index > first.formation_end
    perturbed.loc[after] *= np.random.default_rng(9).uniform(0.5, 1.5, size=perturbed.loc[after].shape)
    again = walk_forward_pairs(perturbed, clusters, SMALL)
    original_pairs = result.pairs[result.pairs["window"] == 0]
    assert len(original_pairs) > 0
    columns = ["pair_id", "pvalue", "hedge_ratio", "intercept", "spread_mean", "spread_std"]
    pd.testing.assert_frame_equal(original_pairs[columns], again.pairs[again.pairs["window"] == 0][columns])


def test_walk_forward_daily_return_is_the_mean_over_active_pairs():
    closes, clusters = two_cluster_panel()
    result = walk_forward_pairs(closes, clusters, SMALL)
    assert result.daily_returns.index.is_unique
    assert result.daily_returns.index[0] == result.windows[0].trading_start
    assert result.daily_returns.index[-1] == closes.index[-1]
    window = result.windows[1]
    pairs = result.pairs[result.pairs["window"] == 1]
    trading = np.log(closes.loc[window.trading_start : window.trading_end])
    per_pair = trade_pairs(trading, pairs, SMALL)
    n_active = (per_pair != 0).sum(axis=1)
    expected = per_pair.sum(axis=1) / n_active.clip(lower=1)
    np.testing.assert_allclose(result.daily_returns.loc[trading.index], expected)
    pairs_per_window = result.pairs.groupby("window").size().reindex(range(len(result.windows)), fill_value=0)
    assert result.window_summary["n_pairs"].tolist() == pairs_per_window.tolist()


def test_clusters_larger_than_the_cap_are_skipped_and_counted():
    closes, clusters = two_cluster_panel()
    cfg = PairsConfig(formation_days=100, trading_days=50, max_cluster_size=2)
    result = walk_forward_pairs(closes, clusters, cfg)
    assert set(result.pairs["cluster"]) <= {0, 2}  # cluster 1 has three members
    assert (result.window_summary["clusters_skipped_too_large"] == 1).all()


def test_summarize_returns_on_known_series():
    returns = np.array([0.1, -0.5, 0.2])
    summary = summarize_returns(pd.Series(returns))
    assert summary["total_return"] == pytest.approx(1.1 * 0.5 * 1.2 - 1)
    assert summary["max_drawdown"] == pytest.approx(0.55 / 1.1 - 1)  # peak 1.1 -> trough 0.55
    assert summary["annual_return"] == pytest.approx(returns.mean() * 252)
    assert summary["sharpe"] == pytest.approx(returns.mean() / returns.std(ddof=1) * np.sqrt(252))
    assert summary["n_days"] == 3
    flat = summarize_returns(pd.Series([0.0, 0.0]))
    assert np.isnan(flat["sharpe"]) and flat["max_drawdown"] == 0.0


def test_pairs_config_rejects_inconsistent_bands_and_short_windows():
    with pytest.raises(ValueError, match="exit_z < entry_z < stop_z"):
        PairsConfig(entry_z=2.0, stop_z=2.0)
    with pytest.raises(ValueError, match="> 20"):
        PairsConfig(trading_days=20)
