"""The refresh automation keeps its promises: a failed filing refresh is requested again, never dropped; the
monthly schedule reads prices from the live source when the deployment has one; live fetches that cannot
reach their source are retried by Dagster, bad input is not."""

from __future__ import annotations

import pandas as pd
import pytest
import requests
from dagster import (
    DagsterInstance,
    RetryRequested,
    RunRequest,
    SkipReason,
    asset,
    build_schedule_context,
    materialize,
    validate_run_config,
)
from dagster._core.storage.tags import RUN_KEY_TAG

from assets import automation
from assets.automation import _run_outcomes, monthly_refresh_schedule, new_10k_filings
from assets.sources import retried_when_unreachable
from peerlens.sources.edgar import EdgarError
from peerlens.sources.filings import FilingsCursor, PollResult, filing_day, follow_up_runs, refresh_run_keys
from resources import YFinanceResource


def test_follow_up_runs_retries_failures_under_a_new_key_and_forgets_successes():
    pending = {"10k:a": ["AAA"], "10k:b": ["BBB"], "10k:c#retry1": ["CCC"], "10k:d": ["DDD"]}
    outcome = {"10k:a": "success", "10k:b": "failure", "10k:c#retry1": "failure"}
    again, still = follow_up_runs(pending, outcome)
    assert again == {"10k:b#retry1": ["BBB"], "10k:c#retry2": ["CCC"]}
    assert still == {"10k:b#retry1": ["BBB"], "10k:c#retry2": ["CCC"], "10k:d": ["DDD"]}


def test_run_outcomes_reads_the_instance_by_run_key():
    @asset
    def broken() -> None:
        raise RuntimeError("EDGAR was down")

    @asset
    def fine() -> None:
        return None

    with DagsterInstance.ephemeral() as instance:
        materialize([broken], instance=instance, tags={RUN_KEY_TAG: "10k:x"}, raise_on_error=False)
        materialize([fine], instance=instance, tags={RUN_KEY_TAG: "10k:y"})
        outcomes = _run_outcomes(instance, {"10k:x": ["X"], "10k:y": ["Y"], "10k:z": ["Z"]})
    assert outcomes == {"10k:x": "failure", "10k:y": "success"}  # z: not launched yet


def test_the_sensor_requests_a_failed_refresh_again(monkeypatch):
    from tests.peerlens.sources.test_filings_sensor import USER_AGENT

    cursor = FilingsCursor(latest={}, next_offset=0, pending={"10k@2023-01-31:0001": ["TSLA"]})
    monkeypatch.setattr(automation, "_run_outcomes", lambda instance, pending: {"10k@2023-01-31:0001": "failure"})
    monkeypatch.setattr(automation, "poll_new_10k_filings", lambda universe, client, cursor, batch_size: PollResult(
        [], {}, {}, 0, cursor))
    from dagster import build_sensor_context

    from resources import EdgarResource, SampleDataResource

    with DagsterInstance.ephemeral() as instance:
        context = build_sensor_context(
            cursor=cursor.to_json(), instance=instance,
            resources={"edgar": EdgarResource(user_agent=USER_AGENT), "company_data": SampleDataResource()},
        )
        requests_made = new_10k_filings(context).run_requests
    assert [r.run_key for r in requests_made] == ["10k@2023-01-31:0001#retry1"]
    assert requests_made[0].partition_key == "2023-01-31"
    assert requests_made[0].run_config["ops"]["company_descriptions"]["config"]["refresh_from_edgar"] == ["TSLA"]
    assert FilingsCursor.from_json(context.cursor).pending == {"10k@2023-01-31:0001#retry1": ["TSLA"]}


def test_refreshes_are_one_run_per_filing_day_and_the_day_is_read_back_from_the_key():
    result = PollResult(["AAA", "BBB", "CCC"], {"AAA": "a1", "BBB": "b1", "CCC": "c1"},
                        {"AAA": "2023-01-31", "BBB": "2023-02-01", "CCC": "2023-01-31"}, 3, FilingsCursor())
    keys = refresh_run_keys(result)
    assert keys == {"10k@2023-01-31:a1,c1": ["AAA", "CCC"], "10k@2023-02-01:b1": ["BBB"]}
    assert [filing_day(key + "#retry2") for key in keys] == ["2023-01-31", "2023-02-01"]
    with pytest.raises(ValueError, match="does not name a filing day"):
        filing_day("10k:a1")


@pytest.mark.parametrize("live, source", [(False, "company_data"), (True, "yfinance")])
def test_the_monthly_schedule_refreshes_the_month_just_ended_from_the_configured_source(live, source):
    from definitions import defs

    context = build_schedule_context(scheduled_execution_time=pd.Timestamp("2020-07-02 06:00", tz="UTC"))
    request = monthly_refresh_schedule(context, yfinance=YFinanceResource(enabled=live))
    assert isinstance(request, RunRequest) and request.partition_key == "2020-06-01"
    assert request.run_config["ops"]["daily_prices"]["config"]["source"] == source
    validate_run_config(defs.resolve_job_def("monthly_refresh"), request.run_config)
    outside = monthly_refresh_schedule(
        build_schedule_context(scheduled_execution_time=pd.Timestamp("2030-01-02 06:00", tz="UTC")),
        yfinance=YFinanceResource(enabled=live),
    )
    assert isinstance(outside, SkipReason)


@pytest.mark.parametrize("error", [EdgarError("HTTP 503"), requests.ConnectionError("reset"), TimeoutError()])
def test_an_unreachable_live_source_becomes_a_dagster_retry(error):
    with pytest.raises(RetryRequested) as raised:
        with retried_when_unreachable("EDGAR"):
            raise error
    assert str(raised.value.__cause__).startswith("EDGAR could not be reached")


def test_bad_input_is_not_retried():
    with pytest.raises(ValueError):
        with retried_when_unreachable("EDGAR"):
            raise ValueError("ticker 'ZZZZ' has no CIK")


def test_a_new_month_of_returns_requests_its_year_and_the_summaries_not_the_years_before():
    """Declarative automation on the real definitions: with everything materialized, a new materialization of
    the last month of returns requests the latest year of cluster_correlations and mc_comparisons, nothing else
    dated."""
    from dagster import AssetKey, AssetMaterialization, evaluate_automation_conditions

    from assets.partitions import CLUSTERING_DATES, MONTHS, TEXT_DATES, YEARS
    from definitions import defs

    graph = defs.resolve_asset_graph()
    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(TEXT_DATES.name, ["2017-05-18"])
        keys_of = {MONTHS: MONTHS.get_partition_keys(), CLUSTERING_DATES: CLUSTERING_DATES.get_partition_keys(),
                   YEARS: YEARS.get_partition_keys(), TEXT_DATES: ["2017-05-18"]}
        for key in graph.get_all_asset_keys():
            partitions = graph.get(key).partitions_def
            for partition in keys_of[partitions] if partitions else [None]:
                instance.report_runless_asset_event(AssetMaterialization(key, partition=partition))
        settled = evaluate_automation_conditions(defs=defs, instance=instance)
        assert settled.total_requested == 0  # nothing new: nothing to do
        instance.report_runless_asset_event(AssetMaterialization(AssetKey("monthly_returns"), partition=keys_of[MONTHS][-1]))
        result = evaluate_automation_conditions(defs=defs, instance=instance, cursor=settled.cursor)
    requested = {
        (key.to_user_string(), partition)
        for key, subset in ((r.key, r.true_subset) for r in result.results if r.true_subset.size)
        for partition in (subset.expensively_compute_partition_keys() if graph.get(key).partitions_def else [None])
    }
    assert requested == {("cluster_correlations", keys_of[YEARS][-1]), ("mc_comparisons", None)}
