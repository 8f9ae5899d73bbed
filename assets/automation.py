"""Automation: the monthly refresh of prices, and the sensor that reacts to new 10-K filings.

What is computed from them follows by declarative automation (`assets.partitions.NEW_PARTITION` and
`FOLLOWS_UPSTREAM` on the assets): a new clustering date is clustered when it begins, the trading window
and the year in progress are rescored when a month of prices arrives, and the summaries follow. Dagster's
automation sensor evaluates them (`dagster dev` runs it).
"""

import pandas as pd
from dagster import (
    AssetSelection,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunConfig,
    RunRequest,
    RunsFilter,
    ScheduleEvaluationContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    define_asset_job,
    schedule,
    sensor,
)
from dagster._core.storage.tags import RUN_KEY_TAG

from assets.partitions import MONTHS, TEXT_DATES
from assets.sources import CompanyDescriptionsConfig, DailyPricesConfig
from peerlens.sources.filings import FilingsCursor, filing_day, follow_up_runs, poll_new_10k_filings, refresh_run_keys
from peerlens.sources.texts import latest_texts
from resources import CompanyDataResource, EdgarResource, YFinanceResource

monthly_refresh_job = define_asset_job(
    "monthly_refresh",
    selection=AssetSelection.assets("daily_prices", "monthly_returns"),
    partitions_def=MONTHS,
    description="New month: prices → that month's returns. The reports follow by their automation conditions: "
    "the year's correlations, the trading window's days, the comparisons and the backtest summary.",
)


@schedule(job=monthly_refresh_job, cron_schedule="0 6 2 * *", execution_timezone="UTC")
def monthly_refresh_schedule(context: ScheduleEvaluationContext, yfinance: YFinanceResource):
    """On the 2nd of each month: the month just ended, its prices from yfinance when the deployment is live
    (PEERLENS_PRICE_SOURCE=yfinance), else from the company_data resource (the sample, or your universe)."""
    this_month = pd.Timestamp(context.scheduled_execution_time).tz_localize(None).normalize().replace(day=1)
    month = (this_month - pd.DateOffset(months=1)).strftime("%Y-%m-%d")
    if month not in MONTHS.get_partition_keys():
        return SkipReason(f"month {month} is outside the monthly partitions (PEERLENS_MONTHS_START/END)")
    source = "yfinance" if yfinance.enabled else "company_data"
    return RunRequest(
        run_key=f"month:{month}",
        partition_key=month,
        run_config=RunConfig(ops={"daily_prices": DailyPricesConfig(source=source)}),
        tags={"peerlens/price_source": source},
    )


DATED = AssetSelection.assets("company_clusters", "backtest_daily", "backtest_pairs", "backtest_windows", "cluster_correlations")
"""What is partitioned by time: a filing made today changes no clustering dated before it, no window
traded with one, and no year scored with one (their look-ahead reference rows are refreshed by a backfill)."""

RELEASE_GROUPING = AssetSelection.assets("layer_distances", "layer_groups")
"""The layer grouping the SAE release was trained with: part of the release, which a filing never retrains. A
filing's tokens would not even enter it (D̄ reads the corpus's first tokens); a deliberate retrain recomputes it."""

filings_refresh_job = define_asset_job(
    "filings_refresh",
    # One run per filing day: that day's texts and activations (a TEXT_DATES partition) and everything
    # built from the corpus.
    partitions_def=TEXT_DATES,
    # The regime and representation studies (30 per-layer SAEs and more) are research, rerun on demand, not on
    # every filing. The filing enters current_company_clusters now and the next clustering date when it comes.
    selection=AssetSelection.assets("company_descriptions").downstream()
    - AssetSelection.groups("sae_regimes") - AssetSelection.assets("representation_study") - DATED - RELEASE_GROUPING,
    description="New 10-K text for the changed companies, then everything built from descriptions except what "
    "is dated before it (clusterings, trading windows, scored years), which a filing made today cannot change, "
    "and the layer grouping of the SAE release, which it does not retrain.",
)

FILINGS_BATCH = 100
"""CIKs checked per sensor tick: 100 requests at ≤ 10/s fit in a tick's time budget."""


@sensor(
    job=filings_refresh_job,
    minimum_interval_seconds=3600,
    default_status=DefaultSensorStatus.STOPPED,
    description="Polls EDGAR for new 10-K filings of the universe's CIKs and refreshes only the changed companies.",
)
def new_10k_filings(context: SensorEvaluationContext, edgar: EdgarResource, company_data: CompanyDataResource):
    if not edgar.user_agent:
        return SkipReason("set PEERLENS_EDGAR_USER_AGENT ('Name email@domain') to watch EDGAR")
    cursor = FilingsCursor.from_json(context.cursor)
    again, pending = follow_up_runs(cursor.pending, _run_outcomes(context.instance, cursor.pending))
    universe = latest_texts(company_data.company_texts().frame)[["ticker", "cik"]]
    result = poll_new_10k_filings(universe, edgar.client(), cursor, batch_size=FILINGS_BATCH)
    requests = {**again, **refresh_run_keys(result)}
    # The cursor and the run requests are committed together with the tick: a filing is remembered as
    # seen only in the same step that requests its refresh, and stays pending until that run succeeds.
    context.update_cursor(FilingsCursor(result.cursor.latest, result.cursor.next_offset, {**pending, **requests}).to_json())
    if not requests:
        return SkipReason(f"checked {result.checked} companies: no new 10-K")
    days = sorted({filing_day(run_key) for run_key in requests})
    return SensorResult(
        run_requests=[
            RunRequest(
                run_key=run_key,
                partition_key=filing_day(run_key),
                run_config=RunConfig(ops={"company_descriptions": CompanyDescriptionsConfig(refresh_from_edgar=tickers)}),
                tags={"peerlens/changed_tickers": ",".join(tickers)},
            )
            for run_key, tickers in requests.items()
        ],
        # The filing day's partition exists before its run starts (company_descriptions adds it too).
        dynamic_partitions_requests=[TEXT_DATES.build_add_request(days)],
    )


def _run_outcomes(instance, pending: dict[str, list[str]]) -> dict[str, str]:
    """Run key → "success" | "failure" | "running" for the pending refresh runs the instance knows."""
    outcomes = {}
    for run_key in pending:
        runs = instance.get_runs(filters=RunsFilter(tags={RUN_KEY_TAG: run_key}), limit=1)
        if runs:
            status = runs[0].status
            outcomes[run_key] = (
                "success" if status == DagsterRunStatus.SUCCESS
                else "failure" if status in (DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)
                else "running"
            )
    return outcomes
