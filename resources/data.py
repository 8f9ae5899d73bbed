"""Data-source resources: the offline sample, SEC EDGAR, and yfinance."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from dagster import ConfigurableResource
from pydantic import Field

from peerlens import sample
from peerlens.edgar import EdgarClient
from peerlens.yfinance_prices import load_yfinance_prices


class SampleDataResource(ConfigurableResource):
    """The offline S&P 500 sample: descriptions, GICS/SIC/CIK tables and 2013-2018 daily prices."""

    path: str = Field(
        default="",
        description="Sample folder; empty means $PEERLENS_SAMPLE_DIR, else ../shared/data beside the project.",
    )

    def root(self) -> Path:
        """The sample folder, checked to hold every file the loaders read."""
        return sample.check_sample_dir(self.path or sample.default_sample_dir())

    def company_descriptions(self) -> sample.LoadedTable:
        return sample.load_company_descriptions(self.root())

    def industry_codes(self, companies: pd.DataFrame) -> sample.LoadedTable:
        return sample.load_industry_codes(self.root(), companies)

    def daily_prices(self) -> pd.DataFrame:
        return sample.load_daily_prices(self.root())

    def price_tickers(self) -> set[str]:
        """Tickers that have prices, read from the price file's ticker column alone."""
        return set(self.daily_prices()["ticker"].unique())


class EdgarResource(ConfigurableResource):
    """SEC EDGAR over HTTPS; the SEC asks every client to identify itself with a name and e-mail."""

    user_agent: str = Field(
        default="",
        description="'Name email@domain', sent as User-Agent (set $PEERLENS_EDGAR_USER_AGENT).",
    )
    max_requests_per_second: float = Field(default=10.0, description="SEC's fair-access limit is 10.")
    max_retries: int = 5

    def client(self) -> EdgarClient:
        if not self.user_agent:
            raise ValueError(
                "EDGAR needs a User-Agent 'Name email@domain': set PEERLENS_EDGAR_USER_AGENT "
                "or the edgar resource's user_agent"
            )
        return EdgarClient(
            self.user_agent,
            max_requests_per_second=self.max_requests_per_second,
            max_retries=self.max_retries,
        )


class YFinanceResource(ConfigurableResource):
    """Daily prices from Yahoo Finance through the yfinance package."""

    start: str = "2013-01-01"
    end: str = ""

    def daily_prices(self, tickers: list[str]) -> sample.LoadedTable:
        end = self.end or pd.Timestamp.today().strftime("%Y-%m-%d")
        return load_yfinance_prices(tickers, self.start, end)
