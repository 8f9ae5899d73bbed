"""Evaluation: do a method's pairs trade? One trading window per clustering date (a time partition), and the
backtest summed over them. Mean correlation lives in assets.correlations."""

import numpy as np
import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetOut,
    BackfillPolicy,
    Config,
    MetadataValue,
    Output,
    asset,
    asset_check,
    multi_asset,
)

from assets.correlations import LOOK_AHEAD, POINT_IN_TIME
from assets.metadata import figure_markdown, markdown_table, plt
from assets.partitions import CLUSTERING_DATES, FOLLOWS_UPSTREAM, partition_end, partitions_value
from peerlens.pairs.backtest import PAIR_COLUMNS, PairsResult, Window, summarize_backtest, trade_window, window_starting
from peerlens.pairs.pairs_trading import PairsConfig


class PairsBacktestConfig(Config):
    """The trading window is the half-year of its clustering date; the rest is `PairsConfig`'s."""

    formation_days: int = PairsConfig.formation_days
    entry_z: float = PairsConfig.entry_z
    exit_z: float = PairsConfig.exit_z
    stop_z: float = PairsConfig.stop_z
    cost_bps: float = PairsConfig.cost_bps
    pvalue_max: float = PairsConfig.pvalue_max
    max_pairs_per_cluster: int = PairsConfig.max_pairs_per_cluster
    max_cluster_size: int = PairsConfig.max_cluster_size


DAILY_COLUMNS = ["window", "timing", "method", "date", "daily_return", "daily_turnover"]
WINDOW_COLUMNS = [
    "window", "timing", "method", "formation_start", "formation_end", "trading_start", "trading_end", "n_tickers",
    "clusters_searched", "clusters_skipped_too_large", "n_pairs", "clusters_as_of", "window_return",
]
PAIRS_COLUMNS = ["window", "timing", "method", *PAIR_COLUMNS, "n_entries", "window_return"]
OUTPUT_COLUMNS = {"backtest_daily": DAILY_COLUMNS, "backtest_pairs": PAIRS_COLUMNS, "backtest_windows": WINDOW_COLUMNS}
"""trade_windows' outputs and their columns."""


@multi_asset(
    group_name="evaluation",
    partitions_def=CLUSTERING_DATES,
    backfill_policy=BackfillPolicy.single_run(),
    outs={
        "backtest_daily": AssetOut(
            kinds={"pandas", "parquet"}, automation_condition=FOLLOWS_UPSTREAM,
            description="Each window's daily portfolio return and turnover per method.",
        ),
        "backtest_pairs": AssetOut(
            kinds={"pandas", "parquet"}, automation_condition=FOLLOWS_UPSTREAM,
            description="Each window's pairs per method: hedge, spread, entries, return.",
        ),
        "backtest_windows": AssetOut(
            kinds={"pandas", "parquet"}, automation_condition=FOLLOWS_UPSTREAM,
            description="Each window per method: bounds, clusters traded, pairs, return.",
        ),
    },
    check_specs=[
        AssetCheckSpec("trading_uses_only_what_was_known_before_it", asset="backtest_windows", blocking=True),
        AssetCheckSpec("daily_returns_and_turnover_are_finite", asset="backtest_daily", blocking=True),
        AssetCheckSpec("every_pair_passed_the_cointegration_test", asset="backtest_pairs"),
    ],
)
def trade_windows(
    context: AssetExecutionContext, config: PairsBacktestConfig, company_clusters: pd.DataFrame, daily_prices: pd.DataFrame
):
    """One partition per trading window: the half-year that starts on a clustering date D (to the next one),
    traded with within-cluster cointegration pairs formed on the `formation_days` trading days before D.

    Point in time: the window trades company_clusters' partition D, made from texts known before D, so a
    filing made later never changes it. A date without a clustering, or without enough prices before or
    after it, is an empty partition. Pairs, hedge ratios and z-score statistics come from the formation
    window only, with costs on every trade (`peerlens.pairs.backtest.trade_window`). A window still in
    progress holds the days traded so far.
    """
    cfg = PairsConfig(**config.model_dump())
    log_prices, jumps = _log_prices_and_jumps(daily_prices, set(company_clusters.ticker))
    parts = {name: {} for name in OUTPUT_COLUMNS}
    for key in context.partition_keys:
        as_of = pd.Timestamp(key)
        window = window_starting(log_prices.index, as_of, partition_end(CLUSTERING_DATES, key), cfg)
        dated = company_clusters[company_clusters.as_of == as_of]
        window_rows = _trade(window, key, dated, as_of, POINT_IN_TIME, log_prices, jumps, cfg) if window else None
        for name, frame in _stacked(window_rows or {}).items():
            parts[name][key] = frame
        if window_rows:
            context.log.info(f"window {key}: {parts['backtest_windows'][key].n_pairs.sum()} pairs over every method")
    for name, by_key in parts.items():
        yield Output(partitions_value(by_key), output_name=name, metadata={"windows_traded": sum(len(v) > 0 for v in by_key.values())})
    yield from _window_checks(*(pd.concat(parts[name].values(), ignore_index=True) for name in OUTPUT_COLUMNS), cfg)


def _window_checks(daily: pd.DataFrame, pairs: pd.DataFrame, windows: pd.DataFrame, cfg: PairsConfig):
    # Look-ahead guards: every trading window starts strictly after its formation window ends, and on or
    # after the date of the point-in-time clusters it trades.
    point_in_time = windows[windows.timing == POINT_IN_TIME]
    overlapping = windows[windows.trading_start <= windows.formation_end]
    early = point_in_time[point_in_time.clusters_as_of > point_in_time.trading_start]
    yield AssetCheckResult(
        check_name="trading_uses_only_what_was_known_before_it",
        asset_key="backtest_windows",
        passed=overlapping.empty and early.empty,
        metadata={"windows": len(windows), "overlapping_windows": len(overlapping),
                  "windows_trading_clusters_dated_later": len(early)},
    )
    values = daily[["daily_return", "daily_turnover"]].to_numpy(dtype=float)
    yield AssetCheckResult(
        check_name="daily_returns_and_turnover_are_finite",
        asset_key="backtest_daily",
        passed=bool(np.isfinite(values).all() and (values[:, 1] >= 0).all()),
        metadata={"days": len(daily), "non_finite": int((~np.isfinite(values)).sum())},
    )
    loose = pairs[pairs.pvalue.astype(float) > cfg.pvalue_max]
    yield AssetCheckResult(
        check_name="every_pair_passed_the_cointegration_test",
        asset_key="backtest_pairs",
        passed=loose.empty,
        metadata={"pairs": len(pairs), "pairs_over_pvalue_max": len(loose), "pvalue_max": cfg.pvalue_max},
    )


def _stacked(frames: dict[str, list[pd.DataFrame]]) -> dict[str, pd.DataFrame]:
    """Each output's frames in one, with its columns (empty with them when there are none)."""
    stacked = {}
    for name, columns in OUTPUT_COLUMNS.items():
        parts = [frame for frame in frames.get(name, []) if len(frame)]
        stacked[name] = pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)
    return stacked


def _log_prices_and_jumps(daily_prices: pd.DataFrame, tickers: set[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(dates × tickers) log closes and jump-day flags of `tickers`."""
    prices = daily_prices[daily_prices.ticker.isin(tickers)]
    close = prices.pivot(index="date", columns="ticker", values="close").sort_index()
    jumps = prices.pivot(index="date", columns="ticker", values="jump").reindex_like(close).fillna(False).astype(bool)
    return np.log(close), jumps


def _trade(window, key, clusters, as_of, timing, log_prices, jumps, cfg) -> dict[str, list[pd.DataFrame]]:
    """Every method of `clusters` traded over `window`: {"backtest_daily" | "backtest_pairs" |
    "backtest_windows": one frame per method} (empty lists when `clusters` is empty)."""
    rows = {name: [] for name in OUTPUT_COLUMNS}
    for method in sorted(clusters.method.unique()):
        labels = clusters[clusters.method == method].set_index("ticker").cluster
        traded = trade_window(log_prices, labels, window, cfg, jumps, number=key, as_of=as_of)
        tags = {"timing": timing, "method": method}
        rows["backtest_daily"].append(pd.DataFrame({
            "window": key, **tags, "date": traded.daily_returns.index,
            "daily_return": traded.daily_returns.to_numpy(), "daily_turnover": traded.daily_turnover.to_numpy(),
        }))
        rows["backtest_pairs"].append(traded.pairs.assign(**tags))
        rows["backtest_windows"].append(pd.DataFrame([{**traded.summary, **tags}]))
    return rows


@asset(group_name="evaluation", kinds={"pandas", "parquet"}, automation_condition=FOLLOWS_UPSTREAM)
def pairs_backtest(
    config: PairsBacktestConfig,
    backtest_daily: pd.DataFrame,
    backtest_pairs: pd.DataFrame,
    backtest_windows: pd.DataFrame,
    current_company_clusters: pd.DataFrame,
    daily_prices: pd.DataFrame,
) -> Output[pd.DataFrame]:
    """Per method and timing, over every traded window: Sharpe, returns, drawdown, turnover, pairs.

    turnover_annual = mean daily notional traded per unit of capital × 252 (see
    `peerlens.pairs.backtest.summarize_backtest`). The headline rows are the point-in-time windows
    (trade_windows' partitions); the "look-ahead reference" rows trade the same windows with today's
    clusters, here, since they change with every filing. `config` must match trade_windows' (costs,
    thresholds) for the two timings to be compared.
    """
    reference = _reference_trades(backtest_windows, current_company_clusters, daily_prices, PairsConfig(**config.model_dump()))
    backtest_daily = pd.concat([backtest_daily, reference["backtest_daily"]], ignore_index=True)
    backtest_pairs = pd.concat([backtest_pairs, reference["backtest_pairs"]], ignore_index=True)
    backtest_windows = pd.concat([backtest_windows, reference["backtest_windows"]], ignore_index=True)
    rows, daily_by_name = [], {}
    for (timing, method), days in backtest_daily.groupby(["timing", "method"]):
        days = days.sort_values("date").set_index("date")
        windows = backtest_windows[(backtest_windows.timing == timing) & (backtest_windows.method == method)]
        result = PairsResult(
            days.daily_return.rename("pairs_daily_return"),
            days.daily_turnover.rename("pairs_daily_turnover"),
            backtest_pairs[(backtest_pairs.timing == timing) & (backtest_pairs.method == method)],
            windows.window.tolist(),
            windows,
        )
        rows.append({"timing": timing, "method": method, **summarize_backtest(result)})
        daily_by_name[timing, method] = result.daily_returns
    columns = ["timing", "method", "sharpe", "annual_return", "total_return", "max_drawdown", "n_days",
               "turnover_daily", "turnover_annual", "n_pairs", "windows", "clusters_skipped_too_large"]
    table = pd.DataFrame(rows, columns=columns).sort_values(["timing", "sharpe"], ascending=[False, False])
    table = table.reset_index(drop=True)
    if table.empty:
        return Output(table, metadata={"backtest": "no window could be traded: no clustering date has a year of "
                                                   "prices before it and a day after it"})
    # The headline: point in time, or the look-ahead reference alone when nothing could be traded in time.
    headline = table.timing.iloc[0]
    shown = backtest_windows[backtest_windows.timing == headline]
    first = shown[shown.method == shown.method.iloc[0]]
    return Output(
        table,
        metadata={
            "headline_timing": headline,
            "backtest": markdown_table(table, floatfmt=".3f"),
            "equity_curves": _equity_plot(pd.DataFrame({m: d for (t, m), d in daily_by_name.items() if t == headline})),
            "windows": markdown_table(first.drop(columns=["timing", "method"]).astype(str), floatfmt="g"),
            "first_traded": str(shown.trading_start.min()),
        },
    )


def _reference_trades(windows: pd.DataFrame, current: pd.DataFrame, daily_prices: pd.DataFrame, cfg: PairsConfig) -> dict:
    """The point-in-time windows traded again with today's clusters: frames as trade_windows' outputs.

    When no window could be traded point in time (every text is newer than the prices: the 2024 vintage),
    the reference trades every clustering date's window, labelled as what it is."""
    frames = {name: [] for name in OUTPUT_COLUMNS}
    log_prices, jumps = _log_prices_and_jumps(daily_prices, set(current.ticker))
    as_of = current.as_of.iloc[0] if len(current) else pd.NaT
    point_in_time = windows[windows.timing == POINT_IN_TIME].drop_duplicates("window").set_index("window")
    bounds = {
        key: Window(row.formation_start, row.formation_end, row.trading_start, row.trading_end)
        for key, row in point_in_time.iterrows()
    } or {
        key: window for key in CLUSTERING_DATES.get_partition_keys()
        if (window := window_starting(log_prices.index, pd.Timestamp(key), partition_end(CLUSTERING_DATES, key), cfg))
    }
    for key, window in sorted(bounds.items()):
        for name, parts in _trade(window, key, current, as_of, LOOK_AHEAD, log_prices, jumps, cfg).items():
            frames[name] += parts
    return _stacked(frames)


@asset_check(asset=pairs_backtest)
def both_timings_trade_every_method_on_the_same_days(pairs_backtest: pd.DataFrame) -> AssetCheckResult:
    """The look-ahead reference trades the same windows as the point-in-time headline, for every method (with
    no point-in-time window, the reference alone, on one set of days)."""
    days = pairs_backtest.pivot_table(index="method", columns="timing", values="n_days", aggfunc="first")
    same = bool(len(days) and days.notna().all().all() and (days.nunique(axis=1) == 1).all() and days.stack().nunique() == 1)
    return AssetCheckResult(passed=same, metadata={"methods": len(days), "days": markdown_table(days.reset_index(), floatfmt="g")})


def _equity_plot(daily: pd.DataFrame) -> MetadataValue:
    figure, axis = plt.subplots(figsize=(8, 3.5))
    (1 + daily.fillna(0)).cumprod().plot(ax=axis)
    axis.set_ylabel("growth of 1")
    axis.legend(fontsize=7)
    return figure_markdown(figure)
