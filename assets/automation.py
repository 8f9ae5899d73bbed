"""Automation: the monthly refresh of prices and reports, and the sensor that reacts to new 10-K filings."""

from dagster import (
    AssetSelection,
    DefaultSensorStatus,
    RunConfig,
    RunRequest,
    SensorEvaluationContext,
    SkipReason,
    build_schedule_from_partitioned_job,
    define_asset_job,
    sensor,
)

from assets.sources import MONTHS, CompanyDescriptionsConfig
from peerlens.filings import FilingsCursor, poll_new_10k_filings
from peerlens.texts import latest_texts
from resources import EdgarResource, SampleDataResource

monthly_refresh_job = define_asset_job(
    "monthly_refresh",
    selection=AssetSelection.assets(
        "daily_prices", "monthly_returns", "cluster_correlations", "mc_comparisons", "pairs_backtest"
    ),
    partitions_def=MONTHS,
    description="New month: prices → that month's returns → correlation and backtest reports.",
)

monthly_refresh_schedule = build_schedule_from_partitioned_job(monthly_refresh_job, day_of_month=2, hour_of_day=6)

filings_refresh_job = define_asset_job(
    "filings_refresh",
    # The regime study (30 per-layer SAEs and more) is research, rerun on demand, not on every filing.
    selection=AssetSelection.assets("company_descriptions").downstream() - AssetSelection.groups("sae_regimes"),
    description="New 10-K text for the changed companies, then everything built from descriptions.",
)

FILINGS_BATCH = 100
"""CIKs checked per sensor tick: 100 requests at ≤ 10/s fit in a tick's time budget."""


@sensor(
    job=filings_refresh_job,
    minimum_interval_seconds=3600,
    default_status=DefaultSensorStatus.STOPPED,
    description="Polls EDGAR for new 10-K filings of the universe's CIKs and refreshes only the changed companies.",
)
def new_10k_filings(context: SensorEvaluationContext, edgar: EdgarResource, sample_data: SampleDataResource):
    if not edgar.user_agent:
        return SkipReason("set PEERLENS_EDGAR_USER_AGENT ('Name email@domain') to watch EDGAR")
    universe = latest_texts(sample_data.company_texts().frame)[["ticker", "cik"]]
    result = poll_new_10k_filings(
        universe, edgar.client(), FilingsCursor.from_json(context.cursor), batch_size=FILINGS_BATCH
    )
    context.update_cursor(result.cursor.to_json())
    if not result.changed:
        return SkipReason(f"checked {result.checked} companies: no new 10-K")
    return RunRequest(
        run_key="10k:" + ",".join(sorted(result.filings.values())),
        run_config=RunConfig(ops={"company_descriptions": CompanyDescriptionsConfig(refresh_from_edgar=result.changed)}),
        tags={"peerlens/changed_tickers": ",".join(result.changed)},
    )
