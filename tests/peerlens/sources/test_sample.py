"""Specification of the offline-sample loaders: on the real sample and on tiny synthetic copies."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from peerlens.sources.sample import (
    REQUIRED_FILES,
    check_sample_dir,
    load_company_descriptions,
    load_daily_prices,
    load_industry_codes,
    sic_division,
)
from peerlens.sources.tickers import normalize_ticker
from peerlens.sources.sample import default_sample_dir

SAMPLE_DIR = default_sample_dir()


def write_sample(root: Path, descriptions: str, constituents: str, cik_ticker: str,
                 company_tickers: dict, prices: pd.DataFrame | None = None) -> Path:
    """A sample folder with the real layout and the given file contents."""
    (root / "sp500").mkdir(parents=True)
    (root / "edgar").mkdir()
    (root / "sp500" / "descriptions.csv").write_text(descriptions, encoding="utf-8")
    (root / "sp500" / "constituents.csv").write_text(constituents)
    (root / "sp500" / "cik_ticker.csv").write_text(cik_ticker)
    (root / "edgar" / "company_tickers.json").write_text(json.dumps(company_tickers))
    if prices is None:
        prices = pd.DataFrame({"date": pd.to_datetime(["2013-02-08"]).date, "ticker": ["BRK.B"], "open": [1.0],
                               "high": [1.0], "low": [1.0], "close": [1.0], "volume": [10]})
    prices.to_parquet(root / "sp500" / "prices_daily.parquet")
    return root


DESCRIPTIONS = (
    "Symbol,Shortname,Longname,Longbusinesssummary\n"
    'brk.b,Berkshire,Berkshire Hathaway Inc.,"Berkshire  Hathaway\n  owns insurers. "\n'
    "EMPTY,Empty,Empty Inc.,\"   \"\n"
    "INVISIBLE,Invisible,Invisible Inc.,\u200b\u2060\ufeff\n"
    "ZZZ,Zed,,First description.\n"
    "ZZZ,Zed,Zed Inc.,Second description.\n"
    "NEW,New,New Co,Listed after the constituents snapshot.\n"
    "GONE,Gone,Gone Co,Known to no identifier table.\n"
)
CONSTITUENTS = (
    "Symbol,Security,GICS Sector,GICS Sub-Industry,CIK\n"
    "BRK.B,Berkshire Hathaway,Financials,Multi-Sector Holdings,1067983\n"
    "ZZZ,Zed,Industrials,Machinery,111\n"
    "ES,Eversource,Utilities,Electric Utilities,72741\n"
)
CIK_TICKER = (
    "CIK|Ticker|Name|Exchange|SIC|Business|Incorporated|IRS\n"
    "1067983|BRK|Berkshire Hathaway Inc|NYSE|6331|NE|DE|1\n"
    "1393744|ES|Energysolutions Inc|NYSE|4955|UT|DE|2\n"
    "72741|NU|Northeast Utilities|NYSE|4911|MA|MA|3\n"
    "999|OLD|Old Name Corp|NYSE|100|NY|NY|4\n"
    "501|AMB|Ambiguous One|NYSE|1000|NY|NY|5\n"
    "502|AMB|Ambiguous Two|OTC|2000|NY|NY|6\n"
    "777|NOSIC|No Sic Inc|OTC||NY|NY|7\n"
)
COMPANY_TICKERS = {"0": {"cik_str": 555, "ticker": "NEW", "title": "NEW CO"},
                   "1": {"cik_str": 9, "ticker": "ZZZ", "title": "ZED (ignored: constituents win)"}}


@pytest.fixture
def synthetic_sample(tmp_path: Path) -> Path:
    return write_sample(tmp_path / "sample", DESCRIPTIONS, CONSTITUENTS, CIK_TICKER, COMPANY_TICKERS)


@pytest.fixture(scope="module")
def real_descriptions():
    return load_company_descriptions(SAMPLE_DIR)


@pytest.fixture(scope="module")
def real_industry_codes(real_descriptions):
    return load_industry_codes(SAMPLE_DIR, real_descriptions.frame[["ticker", "cik"]])


def test_normalize_ticker_joins_dot_and_dash_share_classes():
    assert normalize_ticker(" brk.b ") == normalize_ticker("BRK-B") == "BRK-B"
    assert normalize_ticker("aapl") == "AAPL"
    with pytest.raises(ValueError, match="empty"):
        normalize_ticker("  ")


def test_check_sample_dir_names_every_missing_file_and_the_env_variable(tmp_path):
    (tmp_path / "sp500").mkdir()
    (tmp_path / "sp500" / "descriptions.csv").write_text("Symbol\n")
    with pytest.raises(FileNotFoundError) as raised:
        check_sample_dir(tmp_path)
    message = str(raised.value)
    assert str(tmp_path) in message and "PEERLENS_SAMPLE_DIR" in message
    for name in REQUIRED_FILES[1:]:
        assert name in message
    assert "sp500/descriptions.csv" not in message


def test_check_sample_dir_accepts_the_real_sample():
    assert check_sample_dir(str(SAMPLE_DIR)) == SAMPLE_DIR


def test_real_descriptions_have_one_row_per_company_and_a_cik_for_each(real_descriptions):
    frame, counts = real_descriptions.frame, real_descriptions.rule_counts
    assert list(frame.columns) == ["ticker", "cik", "name", "description", "source", "as_of"]
    assert len(frame) == counts["rows_read"] == 503
    assert frame["ticker"].is_unique and {"BRK-B", "BF-B"} <= set(frame["ticker"])
    assert counts["cik_from_constituents"] + counts["cik_from_company_tickers"] + counts["cik_missing"] == 503
    assert counts["cik_missing"] == 0 and str(frame["cik"].dtype) == "Int64"
    by_ticker = frame.set_index("ticker")
    assert by_ticker.loc["AAPL", "cik"] == 320193 and by_ticker.loc["BRK-B", "cik"] == 1067983
    # MTD's quoted summary spans two physical lines in the CSV; it is one paragraph here.
    assert "\n" not in by_ticker.loc["MTD", "description"]
    assert by_ticker.loc["MTD", "description"].startswith("Mettler-Toledo International Inc.")
    assert (frame["as_of"] == pd.Timestamp("2024-04-12")).all() and frame["as_of"].dtype == "datetime64[ns]"
    assert (frame["source"] == "sample:sp500/descriptions.csv").all()


def test_descriptions_rules_drop_empty_and_repeated_rows_and_take_cik_from_constituents_first(synthetic_sample):
    loaded = load_company_descriptions(synthetic_sample)
    assert loaded.rule_counts == {
        "rows_read": 7, "whitespace_normalised": 2, "empty_description_dropped": 2, "duplicate_ticker_dropped": 1,
        "cik_from_constituents": 2, "cik_from_company_tickers": 1, "cik_missing": 1,
    }
    assert loaded.affected_tickers["cik_missing"] == ["GONE"]
    assert loaded.affected_tickers["empty_description_dropped"] == ["EMPTY", "INVISIBLE"]  # zero-width only
    frame = loaded.frame.set_index("ticker")
    assert list(frame.index) == ["BRK-B", "ZZZ", "NEW", "GONE"]
    assert frame.loc["BRK-B", "description"] == "Berkshire Hathaway owns insurers."
    assert frame.loc["ZZZ", "description"] == "First description."
    assert frame.loc["ZZZ", "name"] == "Zed"  # empty Longname falls back to Shortname
    assert frame.loc["ZZZ", "cik"] == 111 and frame.loc["NEW", "cik"] == 555
    assert pd.isna(frame.loc["GONE", "cik"])


def test_industry_codes_join_sic_on_cik_even_when_the_ticker_points_elsewhere(synthetic_sample):
    companies = pd.DataFrame({"ticker": ["ES", "BRK.B"], "cik": pd.array([72741, 1067983], dtype="Int64")})
    loaded = load_industry_codes(synthetic_sample, companies)
    frame = loaded.frame.set_index("ticker")
    # cik_ticker's "ES" row is Energysolutions (4955); Eversource's CIK row says 4911.
    assert frame.loc["ES", "sic4"] == "4911" and frame.loc["ES", "sic_source"] == "cik"
    assert frame.loc["BRK-B", "sic4"] == "6331"  # the classless "BRK" row, reached by CIK
    assert loaded.affected_tickers["ticker_cik_conflicts"] == ["ES"]
    assert loaded.rule_counts["sic_by_cik"] == 2 and loaded.rule_counts["sic_by_ticker"] == 0
    assert frame.loc["ES", "gics_sector"] == "Utilities"


def test_industry_codes_fall_back_to_ticker_only_when_the_cik_is_absent(synthetic_sample):
    companies = pd.DataFrame({
        "ticker": ["OLD", "AMB", "NOSIC", "NOWHERE", "ZZZ"],
        "cik": pd.array([12345, None, 777, 4242, 111], dtype="Int64"),
    })
    loaded = load_industry_codes(synthetic_sample, companies)
    frame = loaded.frame.set_index("ticker")
    assert frame.loc["OLD", "sic4"] == "0100" and frame.loc["OLD", "sic_source"] == "ticker"
    assert frame.loc["OLD", "sic2"] == "01" and frame.loc["OLD", "sic_division"].startswith("A: Agriculture")
    assert pd.isna(frame.loc["AMB", "sic4"])  # two rows, two different SIC codes: no guess
    assert pd.isna(frame.loc["NOSIC", "sic4"])  # CIK row exists with an empty SIC: no ticker fallback
    assert pd.isna(frame.loc["NOWHERE", "sic_division"]) and pd.isna(frame.loc["NOWHERE", "gics_sector"])
    assert frame.loc["ZZZ", "gics_sector"] == "Industrials"
    counts = loaded.rule_counts
    assert (counts["sic_by_cik"], counts["sic_by_ticker"], counts["sic_missing"]) == (0, 1, 4)
    assert counts["sic_ticker_ambiguous"] == 1 and counts["multi_row_tickers"] == 1
    assert counts["ticker_cik_conflicts"] == 1  # OLD's row carries CIK 999, not 12345
    assert (counts["gics_by_ticker"], counts["gics_by_cik"], counts["gics_missing"]) == (1, 0, 4)


def test_industry_codes_reach_gics_by_cik_when_the_ticker_changed(synthetic_sample):
    companies = pd.DataFrame({"ticker": ["RENAMED"], "cik": pd.array([111], dtype="Int64")})
    loaded = load_industry_codes(synthetic_sample, companies)
    assert loaded.frame.loc[0, "gics_sub_industry"] == "Machinery"
    assert loaded.rule_counts["gics_by_cik"] == 1


def test_industry_codes_reject_a_companies_frame_without_cik(synthetic_sample):
    with pytest.raises(ValueError, match="cik"):
        load_industry_codes(synthetic_sample, pd.DataFrame({"ticker": ["ES"]}))


@pytest.mark.parametrize(
    ("sic4", "division"),
    [("0100", "A"), ("1311", "B"), ("1531", "C"), ("2000", "D"), ("3999", "D"), ("4911", "E"), ("5047", "F"),
     ("5331", "G"), ("6770", "H"), ("7370", "I"), ("8999", "I"), ("9995", "J"), ("9000", None), ("1800", None)],
)
def test_sic_division_follows_the_sec_table(sic4, division):
    label = sic_division(sic4)
    assert (label[0] if label else None) == division


def test_sic_division_rejects_codes_that_are_not_four_digits():
    with pytest.raises(ValueError, match="4-digit"):
        sic_division("357")


def test_real_industry_codes_cover_every_company_and_resolve_stale_tickers(real_industry_codes):
    frame, counts = real_industry_codes.frame.set_index("ticker"), real_industry_codes.rule_counts
    assert len(frame) == 503
    assert counts["sic_by_cik"] + counts["sic_by_ticker"] + counts["sic_missing"] == 503
    assert counts["gics_by_ticker"] + counts["gics_by_cik"] + counts["gics_missing"] == 503
    assert counts["sic_by_cik"] > 400
    assert frame.loc["AAPL", "sic4"] == "3571" and frame.loc["AAPL", "sic_division"] == "D: Manufacturing"
    assert frame.loc["AAPL", "gics_sector"] == "Information Technology"
    assert frame.loc["ES", "sic4"] == "4911" and "ES" in real_industry_codes.affected_tickers["ticker_cik_conflicts"]
    assert frame.loc["BRK-B", "sic4"] == "6331" and frame.loc["BF-B", "sic4"] == "2080"
    assert frame["sic4"].dropna().str.fullmatch(r"\d{4}").all()


def test_real_daily_prices_use_normalised_tickers_and_nanosecond_dates():
    prices = load_daily_prices(SAMPLE_DIR)
    assert list(prices.columns) == ["date", "ticker", "open", "high", "low", "close", "volume"]
    assert len(prices) == 619_040 and prices["ticker"].nunique() == 505
    assert "BRK-B" in set(prices["ticker"]) and "BRK.B" not in set(prices["ticker"])
    assert prices["date"].dtype == "datetime64[ns]" and prices["volume"].dtype == "int64"
    assert prices["date"].min() == pd.Timestamp("2013-02-08") and prices["date"].max() == pd.Timestamp("2018-02-07")
    aapl_first = prices[prices["ticker"] == "AAPL"].iloc[0]
    assert aapl_first["date"] == pd.Timestamp("2013-02-08") and aapl_first["close"] == pytest.approx(67.8542)


def test_daily_prices_reject_a_ticker_spelled_both_ways_on_one_date(tmp_path):
    day = pd.to_datetime(["2013-02-08", "2013-02-08"]).date
    prices = pd.DataFrame({"date": day, "ticker": ["BRK.B", "BRK-B"], "open": 1.0, "high": 1.0, "low": 1.0,
                           "close": 1.0, "volume": 10})
    root = write_sample(tmp_path / "sample", DESCRIPTIONS, CONSTITUENTS, CIK_TICKER, COMPANY_TICKERS, prices)
    with pytest.raises(ValueError, match="repeated"):
        load_daily_prices(root)


def test_industry_codes_reject_a_missing_ticker_instead_of_joining_it_as_text(synthetic_sample):
    companies = pd.DataFrame({"ticker": ["ES", None], "cik": pd.array([72741, 1], dtype="Int64")})
    with pytest.raises(ValueError, match="missing ticker"):
        load_industry_codes(synthetic_sample, companies)
