"""The backtest assets on planted sector prices: a trading window per clustering date, traded with that date's
clusters only, and the summary over every window with the look-ahead reference on the same days."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from dagster import BackfillPolicy, DagsterInstance, asset, materialize

from assets.evaluation import both_timings_trade_every_method_on_the_same_days, pairs_backtest, trade_windows
from assets.partitions import CLUSTERING_DATES
from peerlens.layout import read_table
from resources import TableIOManager
from tests.peerlens.similarity.test_point_in_time import SECTORS, daily_prices, sector_of

DATED = ("2017-01-01", "2017-07-01", "2018-01-01")
SMALL = {"formation_days": 126, "pvalue_max": 0.2}


def clusters_of(as_of) -> pd.DataFrame:
    tickers = [f"T{i:02d}" for i in range(len(SECTORS) * 8)]
    rows = [{"method": method, "ticker": t, "cluster": list(SECTORS).index(sector_of(t)) if method == "codes" else i % 3}
            for method in ("codes", "random") for i, t in enumerate(tickers)]
    return pd.DataFrame(rows).assign(as_of=pd.Timestamp(as_of), text_id=lambda f: f.ticker, company_id=lambda f: f.ticker)


@asset(name="company_clusters", partitions_def=CLUSTERING_DATES, backfill_policy=BackfillPolicy.single_run())
def planted_company_clusters(context):
    parts = {key: clusters_of(key) if key in DATED else clusters_of(key).iloc[:0] for key in context.partition_keys}
    return parts if len(parts) > 1 else next(iter(parts.values()))


@asset(name="current_company_clusters")
def planted_current_company_clusters() -> pd.DataFrame:
    return clusters_of("2019-12-31")


@asset(name="daily_prices")
def planted_daily_prices() -> pd.DataFrame:
    wide = daily_prices(seed=1)
    long = wide.rename_axis("date").reset_index().melt("date", var_name="ticker", value_name="close")
    return long.assign(jump=False)


def run(instance, root, selection, first=None, last=None, op=None):
    """Materialize `selection` (over partitions first..last), with the small pairs config for `op`."""
    tags = {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last} if first else None
    result = materialize(
        [planted_company_clusters, planted_current_company_clusters, planted_daily_prices, trade_windows,
         pairs_backtest, both_timings_trade_every_method_on_the_same_days],
        selection=selection, instance=instance, tags=tags, resources={"io_manager": TableIOManager(root=str(root))},
        run_config={"ops": {op: {"config": SMALL}}} if op else None,
    )
    assert result.success
    return result


@pytest.fixture(scope="module")
def materialized(tmp_path_factory):
    root = tmp_path_factory.mktemp("backtest")
    dates = CLUSTERING_DATES.get_partition_keys()
    with DagsterInstance.ephemeral() as instance:
        run(instance, root, ["company_clusters"], dates[0], dates[-1])
        run(instance, root, ["current_company_clusters", "daily_prices"])
        windows = run(instance, root, ["backtest_daily", "backtest_pairs", "backtest_windows"], dates[0], dates[-1],
                      op="trade_windows")
        summary = run(instance, root, ["pairs_backtest"], op="pairs_backtest")
        yield root, windows, summary


def test_each_clustering_date_is_a_window_traded_with_its_own_clusters_after_its_formation(materialized):
    root, windows_run, _ = materialized
    windows = read_table(root, "backtest_windows")
    # Every other date has no clustering: empty partitions.
    assert sorted(windows.window.unique()) == list(DATED)
    assert (pd.to_datetime(windows.clusters_as_of) == pd.to_datetime(windows.window)).all()
    assert (windows.trading_start >= pd.to_datetime(windows.window)).all()
    assert (windows.formation_end < windows.trading_start).all()
    # A window ends before the next clustering date: the half-years tile without overlap.
    ends = windows.groupby("window").trading_end.first()
    assert all(pd.Timestamp(end) < pd.Timestamp(key) + pd.DateOffset(months=6) for key, end in ends.items())
    daily = read_table(root, "backtest_daily")
    assert np.isfinite(daily.daily_return).all() and daily.groupby(["method", "date"]).size().max() == 1
    checks = windows_run.get_asset_check_evaluations()
    assert len(checks) == 3 and all(check.passed for check in checks)


def test_the_summary_scores_both_timings_on_the_same_days_and_sector_peers_trade(materialized):
    _, _, summary_run = materialized
    table = summary_run.output_for_node("pairs_backtest").set_index(["timing", "method"])
    assert set(table.index) == {(t, m) for t in ("point in time", "look-ahead reference") for m in ("codes", "random")}
    assert table.loc[("point in time", "codes"), "n_pairs"] > 0 and table.loc[("point in time", "codes"), "windows"] == 3
    assert table.n_days.nunique() == 1
    assert all(check.passed for check in summary_run.get_asset_check_evaluations())


@asset(name="company_clusters", partitions_def=CLUSTERING_DATES, backfill_policy=BackfillPolicy.single_run())
def no_dated_clusters(context):
    """Every text newer than every price (the 2024 vintage): no clustering date has a universe."""
    parts = {key: clusters_of(key).iloc[:0] for key in context.partition_keys}
    return parts if len(parts) > 1 else next(iter(parts.values()))


def test_with_no_window_in_time_the_reference_alone_is_traded_and_labelled(tmp_path):
    dates = CLUSTERING_DATES.get_partition_keys()
    assets = [no_dated_clusters, planted_current_company_clusters, planted_daily_prices, trade_windows, pairs_backtest,
              both_timings_trade_every_method_on_the_same_days]
    resources = {"io_manager": TableIOManager(root=str(tmp_path))}
    range_tags = {"dagster/asset_partition_range_start": dates[0], "dagster/asset_partition_range_end": dates[-1]}
    with DagsterInstance.ephemeral() as instance:
        for selection, tags in ((["current_company_clusters", "daily_prices"], None),
                                (["company_clusters", "backtest_daily", "backtest_pairs", "backtest_windows"], range_tags)):
            assert materialize(assets, selection=selection, instance=instance, tags=tags, resources=resources).success
        result = materialize(assets, selection=["pairs_backtest"], instance=instance, resources=resources,
                             run_config={"ops": {"pairs_backtest": {"config": SMALL}}})
    table = result.output_for_node("pairs_backtest")
    assert set(table.timing) == {"look-ahead reference"} and set(table.method) == {"codes", "random"}
    assert result.asset_materializations_for_node("pairs_backtest")[0].metadata["headline_timing"].value == "look-ahead reference"
    assert all(check.passed for check in result.get_asset_check_evaluations())
