"""Evaluation: do a method's pairs trade (walk-forward backtest)? Mean correlation lives in assets.correlations."""

import os
from pathlib import Path

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
from peerlens.backtest import summarize_backtest, walk_forward_pairs
from peerlens.pairs_trading import PairsConfig
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
    check_specs=[AssetCheckSpec("formation_ends_before_trading_starts", asset="pairs_backtest", blocking=True)],
)
def pairs_backtest(
    context: AssetExecutionContext,
    config: PairsBacktestConfig,
    company_clusters: pd.DataFrame,
    daily_prices: pd.DataFrame,
    artifacts: ArtifactStorage,
):
    """Walk-forward within-cluster cointegration pairs per method: Sharpe, returns, drawdown, turnover, pairs.

    Pairs, hedge ratios and z-score statistics come from the formation window only; trades happen in the
    following trading window, with costs. turnover_annual = mean daily notional traded per unit of capital
    × 252 (the notional that pays cost_bps; see `peerlens.backtest.summarize_backtest`). Daily returns,
    daily turnover and selected pairs are written beside the table.
    """
    cfg = PairsConfig(**config.model_dump())
    universe = company_clusters.ticker.unique()
    prices = daily_prices[daily_prices.ticker.isin(universe)]
    close = prices.pivot(index="date", columns="ticker", values="close").sort_index()
    jumps = prices.pivot(index="date", columns="ticker", values="jump").reindex_like(close).fillna(False).astype(bool)

    rows, daily, turnover, pairs, windows = [], {}, {}, [], None
    for method, members in company_clusters.groupby("method"):
        result = walk_forward_pairs(close, members.set_index("ticker").cluster, cfg, jumps=jumps)
        daily[method] = result.daily_returns
        turnover[method] = result.daily_turnover
        pairs.append(result.pairs.assign(method=method))
        windows = result.windows
        rows.append({"method": method, **summarize_backtest(result)})
        context.log.info(f"{method}: {len(result.pairs)} pairs over {len(result.windows)} windows")
    table = pd.DataFrame(rows).sort_values("sharpe", ascending=False).reset_index(drop=True)

    folder = artifacts.folder("pairs_backtest")
    _write_parquet(pd.DataFrame(daily).rename_axis("date").reset_index(), folder / "daily_returns.parquet")
    _write_parquet(pd.DataFrame(turnover).rename_axis("date").reset_index(), folder / "daily_turnover.parquet")
    _write_parquet(pd.concat(pairs, ignore_index=True), folder / "pairs.parquet")
    window_frame = pd.DataFrame([vars(w) for w in windows])
    yield Output(
        table,
        metadata={
            "backtest": MetadataValue.md(table.to_markdown(index=False, floatfmt=".3f")),
            "equity_curves": _equity_plot(pd.DataFrame(daily)),
            "windows": MetadataValue.md(window_frame.astype(str).to_markdown(index=False)),
            "cost_bps": cfg.cost_bps,
        },
    )
    # Look-ahead guard: every trading window must start strictly after its formation window ends.
    overlapping = window_frame[window_frame.trading_start <= window_frame.formation_end]
    yield AssetCheckResult(
        check_name="formation_ends_before_trading_starts",
        passed=overlapping.empty,
        metadata={"windows": len(window_frame), "overlapping_windows": len(overlapping)},
    )


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Write to a temporary name, then rename: an interrupted run never leaves half a file."""
    partial = path.with_name(path.name + ".tmp")
    frame.to_parquet(partial, index=False)
    os.replace(partial, path)


def _equity_plot(daily: pd.DataFrame) -> MetadataValue:
    figure, axis = plt.subplots(figsize=(8, 3.5))
    (1 + daily.fillna(0)).cumprod().plot(ax=axis)
    axis.set_ylabel("growth of 1")
    axis.legend(fontsize=7)
    return figure_markdown(figure)
