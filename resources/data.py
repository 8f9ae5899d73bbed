"""Data-source resources: the offline sample, SEC EDGAR, and yfinance."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from dagster import ConfigurableResource
from pydantic import Field

from peerlens.sources import sample, sample_2017, universe
from peerlens.sources.edgar import EdgarClient
from peerlens.sources.returns import PRICE_COLUMNS
from peerlens.sources.texts import TEXT_COLUMNS, texts_from_records
from peerlens.sources.yfinance_prices import load_yfinance_prices


VINTAGES = ("2017", "2024")


class CompanyDataResource(ConfigurableResource):
    """Where the graph's companies come from: their texts, industry codes, daily prices and index membership.

    The `company_data` resource is one of its kinds: the offline sample (`SampleDataResource`) or your own
    universe (`UniverseResource`); the source assets read nothing else.
    """

    def describe(self) -> str:
        """What the data is, for the assets' metadata."""
        raise NotImplementedError

    def company_texts(self) -> sample.LoadedTable:
        """The texts as a text history (`peerlens.sources.texts.TEXT_COLUMNS`), with what loading did."""
        raise NotImplementedError

    def industry_codes(self, companies: pd.DataFrame) -> sample.LoadedTable:
        """Codes (`peerlens.sources.universe.CODE_COLUMNS`) of the tickers of `companies` (ticker, cik): at least one
        row per ticker, one per (ticker, known_by)."""
        raise NotImplementedError

    def label_vintages(self) -> str:
        """When the industry labels were known, for reports: labels known only later are not point in time."""
        raise NotImplementedError

    def daily_prices(self) -> sample.LoadedTable:
        """Raw daily prices (`peerlens.sources.returns.PRICE_COLUMNS`), and the rows loading left out; no rows when
        the source has none."""
        raise NotImplementedError

    def index_membership(self) -> pd.DataFrame:
        """Membership spells (ticker, start_date, end_date); no rows when the source has no membership history."""
        raise NotImplementedError

    def price_tickers(self) -> set[str]:
        """Tickers with at least one usable close (positive: price cleaning drops every other row)."""
        prices = self.daily_prices().frame
        return set(prices.ticker[prices.close > 0].unique())


def no_membership() -> pd.DataFrame:
    """An index_membership frame without spells: every company with a text (and prices) is in the universe."""
    return pd.DataFrame({"ticker": pd.Series(dtype=str), "start_date": pd.Series(dtype="datetime64[ns]"),
                         "end_date": pd.Series(dtype="datetime64[ns]")})


class SampleDataResource(CompanyDataResource):
    """The offline S&P 500 sample, in one of its two text vintages.

    2017 (the default): vendor profiles known by May 2017, GICS of May 2017, dividend-adjusted prices
    2007–2020 and point-in-time index membership: texts older than the returns they are scored on.
    2024: Yahoo summaries of April 2024 with 2013–2018 prices: every score on it is look-ahead.
    """

    path: str = Field(
        default="",
        description="Sample folder; empty means $PEERLENS_SAMPLE_DIR, else ../shared/data beside the project.",
    )
    vintage: str = Field(default="2017", description="Text vintage: '2017' (sp500_2017/) or '2024' (sp500/).")
    vendors: list[str] = Field(
        default=[sample_2017.DEFAULT_VENDOR],
        description="2017 vintage: whose profiles to load (yf, gf, mw); one text per company and vendor.",
    )

    def describe(self) -> str:
        return f"offline sample, {self.vintage} vintage"

    def root(self) -> Path:
        """The sample folder, checked to hold every file the chosen vintage's loaders read."""
        if self.vintage not in VINTAGES:
            raise ValueError(f"company_data (the sample) vintage must be one of {VINTAGES}, got {self.vintage!r}")
        root = self.path or sample.default_sample_dir()
        return sample_2017.check_vintage_dir(root) if self.vintage == "2017" else sample.check_sample_dir(root)

    def company_texts(self) -> sample.LoadedTable:
        """The vintage's texts as a text history (`peerlens.sources.texts.TEXT_COLUMNS`)."""
        if self.vintage == "2017":
            return sample_2017.load_texts_2017(self.root(), tuple(self.vendors))
        loaded = sample.load_company_descriptions(self.root())
        frame = loaded.frame.rename(columns={"as_of": "known_by"})
        # GOOGL/GOOG, FOXA/FOX, NWSA/NWS: one company (one CIK), one text; the first class listed stays.
        second_class = frame.cik.notna() & frame.cik.duplicated(keep="first")
        counts = {**loaded.rule_counts, "second_share_class_dropped": int(second_class.sum())}
        affected = {**loaded.affected_tickers, "second_share_class_dropped": frame.ticker[second_class].tolist()}
        texts = texts_from_records(frame[~second_class], sample.DESCRIPTIONS_FILE)
        return sample.LoadedTable(texts, counts, affected)

    def industry_codes(self, companies: pd.DataFrame) -> sample.LoadedTable:
        """SIC and GICS per company (see `sample.load_industry_codes`); the 2017 vintage's GICS is May 2017's. The
        sample's codes are snapshots, undated (known_by NaT): they hold on every clustering date."""
        loaded = sample.load_industry_codes(self.root(), companies)
        undated = loaded.frame.assign(known_by=pd.NaT).astype({"known_by": "datetime64[ns]"}).loc[:, list(universe.CODE_COLUMNS)]
        if self.vintage == "2024":
            return sample.LoadedTable(undated, loaded.rule_counts, loaded.affected_tickers)
        gics = sample_2017.load_gics_2017(self.root()).frame.set_index("ticker")
        frame = undated.copy()
        for column in ("gics_sector", "gics_sub_industry"):
            frame[column] = frame.ticker.map(gics[column]).astype("string")
        counts = {k: v for k, v in loaded.rule_counts.items() if not k.startswith("gics_")}
        counts["gics_2017_missing"] = int(frame.gics_sub_industry.isna().sum())
        return sample.LoadedTable(frame, counts, loaded.affected_tickers)

    def label_vintages(self) -> str:
        """When the industry labels were known, for reports: labels known only later are not point in time."""
        if self.vintage == "2017":
            return "GICS as of May 2017 (sp500_2017/company_bio.csv); SIC from cik_ticker.csv (2019): known only later"
        return "GICS from constituents.csv (2026) and SIC from cik_ticker.csv (2019): both known only today"

    def daily_prices(self) -> sample.LoadedTable:
        if self.vintage == "2017":
            return sample_2017.load_prices_2017(self.root())
        return sample.LoadedTable(sample.load_daily_prices(self.root()), {})

    def index_membership(self) -> pd.DataFrame:
        """The 2017 vintage's point-in-time spells; none for the 2024 vintage."""
        if self.vintage == "2017":
            return sample_2017.load_membership(self.root())
        return no_membership()


class UniverseResource(CompanyDataResource):
    """Your own universe: a folder with companies.csv|parquet and, optionally, prices.csv|parquet (the format is
    in `peerlens.sources.universe`). Without prices the return evaluations are left out; without codes each
    company is its own cluster under that code. It has no index membership history."""

    path: str = Field(description="The universe folder ($PEERLENS_UNIVERSE).")

    def describe(self) -> str:
        return f"your universe at {self.path}"

    def _companies(self) -> sample.LoadedTable:
        return universe.load_universe_companies(self.path)

    def company_texts(self) -> sample.LoadedTable:
        loaded = self._companies()
        return sample.LoadedTable(loaded.frame.loc[:, list(TEXT_COLUMNS)], loaded.rule_counts, loaded.affected_tickers)

    def industry_codes(self, companies: pd.DataFrame) -> sample.LoadedTable:
        return universe.universe_industry_codes(self._companies().frame, companies)

    def label_vintages(self) -> str:
        return f"the codes on each text in {self.path}, each in force from the day its text became known"

    def daily_prices(self) -> sample.LoadedTable:
        prices = universe.load_universe_prices(self.path)
        if prices is None:
            empty = {"date": "datetime64[ns]", "ticker": object, "volume": "int64"}
            prices = pd.DataFrame({column: pd.Series(dtype=empty.get(column, "float64")) for column in PRICE_COLUMNS})
        return sample.LoadedTable(prices, {})

    def index_membership(self) -> pd.DataFrame:
        return no_membership()


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

    enabled: bool = Field(
        default=False,
        description="The monthly schedule refreshes prices from yfinance (set by PEERLENS_PRICE_SOURCE=yfinance).",
    )
    start: str = "2007-01-01"
    end: str = ""

    def daily_prices(self, tickers: list[str]) -> sample.LoadedTable:
        end = self.end or pd.Timestamp.today().strftime("%Y-%m-%d")
        return load_yfinance_prices(tickers, self.start, end)
