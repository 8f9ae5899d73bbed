"""The mean-correlation assets and their checks, materialized on the planted-groups sample: one partition per
year scored with the clustering of its 1 January, and the comparisons over every year."""

from __future__ import annotations

import pandas as pd
import pytest
from dagster import AssetCheckResult, BackfillPolicy, DagsterInstance, asset, materialize

from assets.correlations import (
    cluster_correlations,
    confidence_intervals_contain_their_point_estimates,
    correlations_are_in_range_for_every_method_and_year,
    mc_comparisons,
    random_baseline_scores_near_the_universe_average,
)
from assets.partitions import CLUSTERING_DATES, MONTHS
from resources import TableIOManager
from tests.peerlens.mean_correlation.test_mc_study import planted_clusters, planted_returns

CONFIG = {"config": {"reference": "codes", "baselines": ["random", "codes"], "n_boot": 200, "matched_draws": 5}}
RUN_CONFIG = {"ops": {"cluster_correlations": CONFIG, "mc_comparisons": CONFIG}}
DATED = ("2014-01-01", "2015-01-01", "2016-01-01")
"""The planted clusters are dated these 1 Januaries: 2013 has none before it and is not scored."""


@asset(name="company_clusters", partitions_def=CLUSTERING_DATES, backfill_policy=BackfillPolicy.single_run())
def planted_company_clusters(context):
    clusters = planted_clusters().assign(text_id=lambda f: f.ticker, company_id=lambda f: f.ticker)
    parts = {
        key: clusters.assign(as_of=pd.Timestamp(key)) if key in DATED else clusters.iloc[:0].assign(as_of=pd.NaT)
        for key in context.partition_keys
    }
    return parts if len(parts) > 1 else next(iter(parts.values()))


@asset(name="current_company_clusters")
def planted_current_company_clusters() -> pd.DataFrame:
    """Today's clusters: the planted ones, from the texts the last clustering used."""
    return planted_clusters().assign(text_id=lambda f: f.ticker, company_id=lambda f: f.ticker, as_of=pd.Timestamp("2017-01-02"))


@asset(name="monthly_returns", partitions_def=MONTHS, backfill_policy=BackfillPolicy.single_run())
def planted_monthly_returns(context):
    returns = planted_returns()
    parts = {key: returns[returns.month == key[:7]].reset_index(drop=True) for key in context.partition_keys}
    return parts if len(parts) > 1 else next(iter(parts.values()))


ASSETS = [
    planted_company_clusters, planted_current_company_clusters, planted_monthly_returns, cluster_correlations,
    mc_comparisons, confidence_intervals_contain_their_point_estimates,
]


def run(instance, root, selection, first=None, last=None):
    tags = {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last} if first else None
    result = materialize(
        ASSETS, selection=selection, instance=instance, run_config={"ops": {k: v for k, v in RUN_CONFIG["ops"].items() if k in selection}},
        resources={"io_manager": TableIOManager(root=str(root))}, tags=tags,
    )
    assert result.success
    return result


@pytest.fixture(scope="module")
def materialized(tmp_path_factory):
    root = tmp_path_factory.mktemp("correlations")
    with DagsterInstance.ephemeral() as instance:
        dates, months = CLUSTERING_DATES.get_partition_keys(), MONTHS.get_partition_keys()
        run(instance, root, ["company_clusters"], dates[0], dates[-1])
        run(instance, root, ["monthly_returns"], months[0], months[-1])
        run(instance, root, ["current_company_clusters"])
        yearly = run(instance, root, ["cluster_correlations"], "2013-01-01", "2016-01-01")
        comparisons = run(instance, root, ["mc_comparisons"])
        yield root, yearly, comparisons


def test_each_year_is_a_partition_scored_with_the_clustering_of_its_first_day(materialized):
    root, yearly_run, _ = materialized
    files = sorted(p.stem for p in (root / "tables" / "cluster_correlations").glob("*.parquet"))
    assert files == ["2013-01-01", "2014-01-01", "2015-01-01", "2016-01-01"]
    yearly = pd.concat(pd.read_parquet(root / "tables" / "cluster_correlations" / f"{f}.parquet") for f in files)
    headline = yearly[yearly.timing == "point in time"]
    assert sorted(headline.year.unique()) == [2014, 2015, 2016]  # 2013: no clustering on its 1 January
    for year in (2014, 2015, 2016):
        assert set(headline.as_of[headline.year == year]) == {pd.Timestamp(f"{year}-01-01")}
    reference = yearly[yearly.timing == "look-ahead reference"]
    assert set(reference.year) == set(headline.year) and reference.as_of.isna().all()
    checks = yearly_run.get_asset_check_evaluations()
    assert {c.check_name for c in checks} == {
        "correlations_are_in_range_for_every_method_and_year", "random_baseline_scores_near_the_universe_average"
    } and all(c.passed for c in checks)


def test_the_comparisons_pair_every_year_with_intervals_and_a_plot(materialized):
    _, _, comparisons_run = materialized
    metadata = comparisons_run.asset_materializations_for_node("mc_comparisons")[0].metadata
    assert {"mean_over_years", "theta_choices", "mc_by_year_plot", "all"} <= set(metadata)
    assert "image/png;base64" in metadata["mc_by_year_plot"].value
    comparisons = comparisons_run.output_for_node("mc_comparisons")
    assert set(comparisons.measure) == {"mc_cluster", "mc_pair", "mc_matched"}
    assert set(comparisons.timing) == {"point in time"} and (comparisons.n_years <= 3).all()
    assert all(c.passed for c in comparisons_run.get_asset_check_evaluations())


def test_checks_fail_on_a_broken_study(materialized):
    root = materialized[0]
    yearly = pd.concat(pd.read_parquet(p) for p in (root / "tables" / "cluster_correlations").glob("*.parquet"))
    far_from_average = yearly.assign(mc_pair=yearly.mc_pair.where(yearly.method != "random", 0.9))
    assert isinstance(random_baseline_scores_near_the_universe_average(far_from_average), AssetCheckResult)
    assert not random_baseline_scores_near_the_universe_average(far_from_average).passed
    missing_year = yearly[~((yearly.method == "codes") & (yearly.year == 2014))]
    assert not correlations_are_in_range_for_every_method_and_year(missing_year).passed
    comparisons = pd.DataFrame({"diff": [0.3], "ci_low": [0.0], "ci_high": [0.2]})
    assert not confidence_intervals_contain_their_point_estimates(comparisons).passed
