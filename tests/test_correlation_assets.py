"""The mean-correlation assets and their checks, materialized on the planted-groups sample."""

from __future__ import annotations

import pandas as pd
from dagster import asset, materialize, mem_io_manager

from assets.correlations import (
    confidence_intervals_contain_their_point_estimates,
    correlations_are_in_range_for_every_method_and_year,
    mean_correlations,
    random_baseline_scores_near_the_universe_average,
)
from tests.test_mc_study import planted_clusters, planted_returns

CHECKS = [
    correlations_are_in_range_for_every_method_and_year,
    random_baseline_scores_near_the_universe_average,
    confidence_intervals_contain_their_point_estimates,
]
RUN_CONFIG = {
    "ops": {
        "mean_correlations": {
            "config": {"reference": "codes", "baselines": ["random", "codes"], "n_boot": 200, "matched_draws": 5}
        }
    }
}


@asset(name="company_clusters")
def planted_company_clusters() -> pd.DataFrame:
    """The planted clusters, dated twice: 2014 is scored with the first, 2015 on with the second."""
    clusters = planted_clusters().assign(text_id=lambda f: f.ticker, company_id=lambda f: f.ticker)
    return pd.concat([clusters.assign(as_of=pd.Timestamp(day)) for day in ("2013-06-01", "2015-01-01")])


@asset(name="current_company_clusters")
def planted_current_company_clusters() -> pd.DataFrame:
    """Today's clusters: the planted ones, from the texts the 2015 clustering used."""
    clusters = planted_company_clusters()
    return clusters[clusters.as_of == pd.Timestamp("2015-01-01")]


@asset(name="monthly_returns")
def planted_monthly_returns() -> pd.DataFrame:
    return planted_returns()


def run(selection=None):
    return materialize(
        [planted_company_clusters, planted_current_company_clusters, planted_monthly_returns, mean_correlations, *CHECKS],
        selection=selection,
        run_config=RUN_CONFIG,
        resources={"io_manager": mem_io_manager},
    )


def test_both_tables_are_materialized_with_markdown_and_plot_and_every_check_passes():
    result = run()
    assert result.success
    yearly_metadata = result.asset_materializations_for_node("mean_correlations")[0].metadata
    assert {"mean_over_years", "by_year", "theta_choices", "mc_by_year_plot"} <= set(yearly_metadata)
    assert "image/png;base64" in yearly_metadata["mc_by_year_plot"].value
    comparisons = result.output_for_node("mean_correlations", "mc_comparisons")
    assert set(comparisons.measure) == {"mc_cluster", "mc_pair", "mc_matched"}
    assert set(comparisons.timing) == {"point in time"}
    yearly = result.output_for_node("mean_correlations", "cluster_correlations")
    headline = yearly[yearly.timing == "point in time"]
    assert headline.year.min() == 2014  # 2013 starts before the first clustering: not scored out of sample
    assert set(headline.as_of[headline.year == 2014]) == {pd.Timestamp("2013-06-01")}
    assert set(headline.as_of[headline.year > 2014]) == {pd.Timestamp("2015-01-01")}
    reference = yearly[yearly.timing == "look-ahead reference"]
    assert set(reference.year) == set(headline.year) and reference.as_of.isna().all()
    evaluations = result.get_asset_check_evaluations()
    assert len(evaluations) == len(CHECKS) and all(e.passed for e in evaluations)


def test_a_job_may_select_cluster_correlations_alone():
    result = run(selection=["company_clusters", "current_company_clusters", "monthly_returns", "cluster_correlations"])
    materialized = {m.asset_key.to_user_string() for m in result.get_asset_materialization_events()}
    assert "cluster_correlations" in materialized and "mc_comparisons" not in materialized


def test_checks_fail_on_a_broken_study():
    yearly = run(selection=["company_clusters", "current_company_clusters", "monthly_returns", "cluster_correlations"]).output_for_node(
        "mean_correlations", "cluster_correlations"
    )
    far_from_average = yearly.assign(mc_pair=yearly.mc_pair.where(yearly.method != "random", 0.9))
    assert not random_baseline_scores_near_the_universe_average(far_from_average).passed
    missing_year = yearly[~((yearly.method == "codes") & (yearly.year == 2014))]
    assert not correlations_are_in_range_for_every_method_and_year(missing_year).passed
    comparisons = pd.DataFrame({"diff": [0.3], "ci_low": [0.0], "ci_high": [0.2]})
    assert not confidence_intervals_contain_their_point_estimates(comparisons).passed
