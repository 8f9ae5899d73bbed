"""Evaluation: do a method's clusters move together (mean correlation), and do its pairs trade (backtest)?"""

import numpy as np
import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    Config,
    MetadataValue,
    Output,
    asset,
    asset_check,
)
from pydantic import Field

from assets.metadata import figure_markdown, plt
from peerlens.backtest import PairsConfig, summarize_returns, walk_forward_pairs
from peerlens.correlation import yearly_mean_correlation
from resources import ArtifactStorage


class ClusterCorrelationsConfig(Config):
    min_months: int = Field(default=6, description="Months of overlapping returns a pair needs to count.")


@asset(group_name="evaluation", kinds={"pandas", "parquet"})
def cluster_correlations(
    config: ClusterCorrelationsConfig, company_clusters: pd.DataFrame, monthly_returns: pd.DataFrame
) -> Output[pd.DataFrame]:
    """Per method and year: MC per cluster (the paper's average over clusters), MC per pair, coverage, counts.

    MC of a cluster = mean pairwise Pearson correlation of its members' monthly log returns in that year.
    """
    table = yearly_mean_correlation(monthly_returns, company_clusters, min_months=config.min_months)
    # A year with too few months for any correlation (the sample's January 2018) has nothing to report.
    scored = table.groupby("year").n_companies.transform("max") > 0
    dropped_years = sorted(table.year[~scored].unique().tolist())
    table = table[scored].reset_index(drop=True)
    overall = (
        table.groupby("method")[["mc_cluster", "mc_pair", "coverage", "n_clusters", "n_pairs"]]
        .mean()
        .sort_values("mc_cluster", ascending=False)
        .reset_index()
    )
    return Output(
        table,
        metadata={
            "years": int(table.year.nunique()),
            "years_without_enough_months": str(dropped_years),
            "mean_over_years": MetadataValue.md(overall.to_markdown(index=False, floatfmt=".3f")),
            "by_year": MetadataValue.md(table.to_markdown(index=False, floatfmt=".3f")),
            "mc_by_year_plot": _mc_plot(table),
        },
    )


def _mc_plot(table: pd.DataFrame) -> MetadataValue:
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.5), sharey=True)
    for method, rows in table.groupby("method"):
        axes[0].plot(rows.year, rows.mc_cluster, marker="o", markersize=3, label=method)
        axes[1].plot(rows.year, rows.mc_pair, marker="o", markersize=3, label=method)
    axes[0].set_title("MC per cluster")
    axes[1].set_title("MC per pair")
    axes[1].legend(fontsize=7)
    return figure_markdown(figure)


@asset_check(asset=cluster_correlations)
def correlations_are_in_range_for_every_method_and_year(cluster_correlations: pd.DataFrame) -> AssetCheckResult:
    """MC values lie in [−1, 1], coverage in [0, 1], and every method has a row for every year."""
    values = cluster_correlations[["mc_cluster", "mc_pair"]].to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    grid = cluster_correlations.groupby("method").year.nunique()
    return AssetCheckResult(
        passed=bool(
            ((finite >= -1) & (finite <= 1)).all()
            and cluster_correlations.coverage.dropna().between(0, 1).all()
            and grid.nunique() == 1
        ),
        metadata={"years_per_method": MetadataValue.json(grid.to_dict())},
    )


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
    """Walk-forward within-cluster cointegration pairs per method: Sharpe, returns, drawdown, pairs traded.

    Pairs, hedge ratios and z-score statistics come from the formation window only; trades happen in the
    following trading window, with costs. Daily returns and selected pairs are written beside the table.
    """
    cfg = PairsConfig(**config.model_dump())
    universe = company_clusters.ticker.unique()
    prices = daily_prices[daily_prices.ticker.isin(universe)]
    close = prices.pivot(index="date", columns="ticker", values="close").sort_index()
    jumps = prices.pivot(index="date", columns="ticker", values="jump").reindex_like(close).fillna(False).astype(bool)

    rows, daily, pairs, windows = [], {}, [], None
    for method, members in company_clusters.groupby("method"):
        result = walk_forward_pairs(close, members.set_index("ticker").cluster, cfg, jumps=jumps)
        daily[method] = result.daily_returns
        pairs.append(result.pairs.assign(method=method))
        windows = result.windows
        rows.append(
            {
                "method": method,
                **summarize_returns(result.daily_returns),
                "n_pairs": len(result.pairs),
                "windows": len(result.windows),
                "clusters_skipped_too_large": int(result.window_summary.clusters_skipped_too_large.sum()),
            }
        )
        context.log.info(f"{method}: {len(result.pairs)} pairs over {len(result.windows)} windows")
    table = pd.DataFrame(rows).sort_values("sharpe", ascending=False).reset_index(drop=True)

    folder = artifacts.folder("pairs_backtest")
    pd.DataFrame(daily).rename_axis("date").reset_index().to_parquet(folder / "daily_returns.parquet", index=False)
    pd.concat(pairs, ignore_index=True).to_parquet(folder / "pairs.parquet", index=False)
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


def _equity_plot(daily: pd.DataFrame) -> MetadataValue:
    figure, axis = plt.subplots(figsize=(8, 3.5))
    (1 + daily.fillna(0)).cumprod().plot(ax=axis)
    axis.set_ylabel("growth of 1")
    axis.legend(fontsize=7)
    return figure_markdown(figure)
