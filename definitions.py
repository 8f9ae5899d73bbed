"""The PeerLens Definitions: every asset, check, job, schedule, sensor and resource in one place.

Resources read their environment here, so one code location serves a laptop (the offline sample,
CPU) and a deployment (EDGAR + yfinance, a GPU) with nothing but environment variables:

    PEERLENS_UNIVERSE           your own universe's folder (companies.csv|parquet, prices.csv|parquet): the
                                graph runs on it instead of the offline sample (format: peerlens.sources.universe)
    PEERLENS_SAMPLE_DIR         the offline sample folder (default ../shared/data)
    PEERLENS_HOME               where tables and artifacts land (default .peerlens)
    PEERLENS_MODEL              a Hugging Face causal LM name or path (default smollm2-135m)
    PEERLENS_DEVICE             auto | cpu | cuda
    PEERLENS_SAE_LAUNCHER       in_process | torchrun: where SAE training runs (default in_process)
    PEERLENS_SAE_NPROC          torchrun processes per node, e.g. 8 on an 8-GPU node (default 1)
    PEERLENS_EDGAR_USER_AGENT   'Name email@domain' for SEC EDGAR (switches the new-filings sensor on)
    PEERLENS_PRICE_SOURCE       company_data | yfinance: where the monthly schedule refreshes prices from
    PEERLENS_VINTAGE            2017 | 2024: the offline sample's text vintage (default 2017)
    PEERLENS_MONTHS_START/END   the monthly partitions and clustering dates (default your universe's prices, else
                                2007-02-01 .. 2020-10-01, the 2017 vintage's)
"""

from __future__ import annotations

import os

from dagster import Definitions, EnvVar

from assets import all_asset_checks, all_assets
from assets.automation import filings_refresh_job, monthly_refresh_job, monthly_refresh_schedule, new_10k_filings
from assets.maintenance import storage_cleanup, weekly_storage_cleanup
from assets.saes import SaeQualityThresholds
from resources import (
    ArtifactStorage,
    CompanyDataResource,
    ComputeResource,
    EdgarResource,
    LanguageModelResource,
    SaeTrainer,
    SampleDataResource,
    TableIOManager,
    UniverseResource,
    YFinanceResource,
)
from peerlens.sources.universe import UNIVERSE_ENV
from sae_core.capture import DEFAULT_MODEL


EDGAR_USER_AGENT_ENV = "PEERLENS_EDGAR_USER_AGENT"


def company_data_from_environment() -> CompanyDataResource:
    """Your universe when PEERLENS_UNIVERSE names one, else the offline sample."""
    if os.environ.get(UNIVERSE_ENV):
        return UniverseResource(path=os.environ[UNIVERSE_ENV])
    return SampleDataResource(path=os.environ.get("PEERLENS_SAMPLE_DIR", ""), vintage=os.environ.get("PEERLENS_VINTAGE", "2017"))


def resources_from_environment() -> dict:
    home = os.environ.get("PEERLENS_HOME", "")
    return {
        "io_manager": TableIOManager(root=home),
        "artifacts": ArtifactStorage(root=home),
        "company_data": company_data_from_environment(),
        # Named, not copied: the UI's resource page then shows the variable, never the name and e-mail in it.
        "edgar": EdgarResource(user_agent=EnvVar(EDGAR_USER_AGENT_ENV) if os.environ.get(EDGAR_USER_AGENT_ENV) else ""),
        "yfinance": YFinanceResource(enabled=os.environ.get("PEERLENS_PRICE_SOURCE", "company_data") == "yfinance"),
        "language_model": LanguageModelResource(name=os.environ.get("PEERLENS_MODEL", DEFAULT_MODEL)),
        "compute": ComputeResource(device=os.environ.get("PEERLENS_DEVICE", "auto")),
        "sae_trainer": SaeTrainer(
            launcher=os.environ.get("PEERLENS_SAE_LAUNCHER", "in_process"),
            nproc_per_node=int(os.environ.get("PEERLENS_SAE_NPROC", "1")),
        ),
        "sae_quality": SaeQualityThresholds(),
    }


defs = Definitions(
    assets=all_assets,
    asset_checks=all_asset_checks,
    jobs=[monthly_refresh_job, filings_refresh_job, storage_cleanup],
    schedules=[monthly_refresh_schedule, weekly_storage_cleanup],
    sensors=[new_10k_filings],
    resources=resources_from_environment(),
)
