"""Evaluation: do a method's pairs trade (walk-forward backtest)? Mean correlation lives in assets.correlations."""

import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    Config,
    MetadataValue,
    Output,
    asset,
)

from assets.metadata import figure_markdown, plt
from assets.correlations import LOOK_AHEAD, POINT_IN_TIME
from peerlens.pairs.backtest import summarize_backtest, walk_forward_pairs, walk_forward_windows
from peerlens.layout import write_parquet_atomically
from peerlens.pairs.pairs_trading import PairsConfig
from peerlens.similarity.point_in_time import clusterings_by_date
from resources import ArtifactStorage


class PairsBacktestConfig(Config):
    formation_days: int = PairsConfig.formation_days
    trading_days: int = PairsConfig.trading_days
    entry_z: float = PairsConfig.entry_z
    exit_z: float = PairsConfig.exit_z
    stop_z: float = PairsConfig.stop_z
    cost_bps: float = PairsConfig.cost_bps
    pvalue_max: float = PairsConfig.pvalue_max
    max_pairs_per_cluster: int = PairsConfig.max_pairs_per_cluster
    max_cluster_size: int = PairsConfig.max_cluster_size


@asset(
    group_name="evaluation",
    kinds={"pandas", "parquet"},
    check_specs=[AssetCheckSpec("trading_uses_only_what_was_known_before_it", asset="pairs_backtest", blocking=True)],
)
def pairs_backtest(
    context: AssetExecutionContext,
    config: PairsBacktestConfig,
    company_clusters: pd.DataFrame,
    current_company_clusters: pd.DataFrame,
    daily_prices: pd.DataFrame,
    artifacts: ArtifactStorage,
):
    """Walk-forward within-cluster cointegration pairs per method: Sharpe, returns, drawdown, turnover, pairs.

    Point in time (timing "point in time", the headline): each trading window trades the method's clusters
    dated on or before its first day (company_clusters' partitions), made from texts known before then;
    windows before the first clustering are not traded. The same windows traded with today's clusters
    (current_company_clusters) follow as the "look-ahead reference". Pairs, hedge ratios and z-score statistics come from the formation window only; trades
    happen in the following trading window, with costs. turnover_annual = mean daily notional traded per
    unit of capital × 252 (see `peerlens.pairs.backtest.summarize_backtest`). Daily returns, daily turnover and
    selected pairs are written beside the table (columns and rows named "<method>" and
    "<method> (look-ahead reference)").
    """
    cfg = PairsConfig(**config.model_dump())
    clustered = set(company_clusters.ticker) | set(current_company_clusters.ticker)
    prices = daily_prices[daily_prices.ticker.isin(clustered)]
    close = prices.pivot(index="date", columns="ticker", values="close").sort_index()
    jumps = prices.pivot(index="date", columns="ticker", values="jump").reindex_like(close).fillna(False).astype(bool)
    first_as_of = company_clusters.as_of.min() if len(company_clusters) else pd.NaT
    tradable = len(company_clusters) > 0 and any(
        window.trading_start >= first_as_of for window in walk_forward_windows(close.index, cfg)
    )
    latest = current_company_clusters

    rows, daily, turnover, pairs, summaries = [], {}, {}, [], []
    for method in sorted(latest.method.unique()):
        runs = {LOOK_AHEAD: latest[latest.method == method].set_index("ticker").cluster}
        if tradable:
            # The reference trades the same windows: the latest clusters, as if known at the first date.
            runs = {POINT_IN_TIME: clusterings_by_date(company_clusters, method), LOOK_AHEAD: {first_as_of: runs[LOOK_AHEAD]}}
        for timing, clusters in runs.items():
            result = walk_forward_pairs(close, clusters, cfg, jumps=jumps)
            name = method if timing == POINT_IN_TIME else f"{method} ({LOOK_AHEAD})"
            daily[name], turnover[name] = result.daily_returns, result.daily_turnover
            pairs.append(result.pairs.assign(method=name))
            summaries.append(result.window_summary.assign(method=name))
            rows.append({"timing": timing, "method": method, **summarize_backtest(result)})
            context.log.info(f"{name}: {len(result.pairs)} pairs over {len(result.windows)} windows")
    table = pd.DataFrame(rows).sort_values(["timing", "sharpe"], ascending=[False, False]).reset_index(drop=True)

    folder = artifacts.folder("pairs_backtest")
    write_parquet_atomically(pd.DataFrame(daily).rename_axis("date").reset_index(), folder / "daily_returns.parquet")
    write_parquet_atomically(pd.DataFrame(turnover).rename_axis("date").reset_index(), folder / "daily_turnover.parquet")
    write_parquet_atomically(pd.concat(pairs, ignore_index=True), folder / "pairs.parquet")
    window_summary = pd.concat(summaries, ignore_index=True)
    yield Output(
        table,
        metadata={
            "backtest": MetadataValue.md(table.to_markdown(index=False, floatfmt=".3f")),
            "equity_curves": _equity_plot(pd.DataFrame({k: v for k, v in daily.items() if LOOK_AHEAD not in k})),
            "windows": MetadataValue.md(
                window_summary[window_summary.method == window_summary.method.iloc[0]].astype(str).to_markdown(index=False)
            ),
            "first_traded": str(window_summary.clusters_as_of.min()),
            "cost_bps": cfg.cost_bps,
        },
    )
    # Look-ahead guards: every trading window starts strictly after its formation window ends, and on or
    # after the date of the clusters it trades.
    overlapping = window_summary[window_summary.trading_start <= window_summary.formation_end]
    early = window_summary[window_summary.clusters_as_of > window_summary.trading_start]
    yield AssetCheckResult(
        check_name="trading_uses_only_what_was_known_before_it",
        passed=overlapping.empty and early.empty,
        metadata={
            "windows": len(window_summary),
            "overlapping_windows": len(overlapping),
            "windows_trading_clusters_dated_later": len(early),
        },
    )


def _equity_plot(daily: pd.DataFrame) -> MetadataValue:
    figure, axis = plt.subplots(figsize=(8, 3.5))
    (1 + daily.fillna(0)).cumprod().plot(ax=axis)
    axis.set_ylabel("growth of 1")
    axis.legend(fontsize=7)
    return figure_markdown(figure)
