"""Specification of price cleaning and month-end log returns (peerlens.sources.returns)."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest

from peerlens.sources.returns import (
    PriceCleaning,
    clean_daily_prices,
    infer_last_complete_month,
    month_end_log_returns,
    wide_returns,
)
from peerlens.sources.sample import default_sample_dir

SAMPLE_DIR = default_sample_dir()
SAMPLE_PRICES = SAMPLE_DIR / "sp500" / "prices_daily.parquet"


def daily_rows(ticker: str, dates: list[str], closes: list[float]) -> pd.DataFrame:
    """Well-formed rows: open = close, high/low 1% around it."""
    closes_array = np.asarray(closes, dtype=float)
    return pd.DataFrame(
        {
            "date": pd.to_datetime(dates).date,  # the sample stores date32 -> datetime.date objects
            "ticker": ticker,
            "open": closes_array,
            "high": closes_array * 1.01,
            "low": closes_array * 0.99,
            "close": closes_array,
            "volume": 1000,
        }
    )


def messy_panel() -> pd.DataFrame:
    """Two tickers and one late starter with exactly one instance of each rule's trigger."""
    dates = ["2020-01-02", "2020-01-03", "2020-01-06", "2020-01-07", "2020-01-08"]
    good = daily_rows("GOOD", dates, [10, 10.1, 10.2, 10.3, 10.4])
    messy = daily_rows("MESSY", dates, [50, 51, 52, 53, 54])
    messy.loc[1, "close"] = np.nan  # null_close_dropped
    messy.loc[2, "close"] = 25.0  # close_outside_range_dropped: half its own low (like LNT)
    messy.loc[3, ["open", "high"]] = np.nan  # null_open_high_low_rows
    messy.loc[4, "open"] = 60.0  # ohlc_order_violations: open above high
    late = daily_rows("LATE", dates[2:], [20, 0.0, 8.0])  # nonpositive close, then a spin-off-like drop
    duplicate = good.iloc[[0]]
    return pd.concat([messy, late, good, duplicate], ignore_index=True)


def test_clean_counts_every_rule_once_on_a_panel_with_one_trigger_each():
    cleaned = clean_daily_prices(messy_panel())
    assert cleaned.rule_counts == {
        "rows_in": 14,
        "null_close_dropped": 1,
        "nonpositive_close_dropped": 1,
        "duplicate_rows_dropped": 1,
        "close_outside_range_dropped": 1,
        "null_open_high_low_rows": 1,
        "ohlc_order_violations": 1,
        "jump_days_flagged": 1,
        "late_start_tickers": 1,
        "rows_out": 10,
    }


def test_clean_keeps_jump_rows_and_flags_the_first_day_at_the_new_level():
    prices = clean_daily_prices(messy_panel()).prices
    late = prices[prices["ticker"] == "LATE"]
    # 20 -> (0 dropped) -> 8: ln(8/20) = -0.92 is a jump on 2020-01-08.
    assert late["close"].tolist() == [20.0, 8.0]
    assert late["jump"].tolist() == [False, True]


def test_clean_drops_a_close_that_contradicts_its_own_range_but_keeps_broken_ohlc_rows():
    prices = clean_daily_prices(messy_panel()).prices
    messy = prices[prices["ticker"] == "MESSY"].set_index("date")["close"]
    assert pd.Timestamp("2020-01-06") not in messy.index  # the bad print
    assert messy.loc[pd.Timestamp("2020-01-07")] == 53.0  # null open/high, close usable
    assert messy.loc[pd.Timestamp("2020-01-08")] == 54.0  # open above high, close usable


def test_clean_returns_typed_columns_sorted_by_ticker_then_date():
    prices = clean_daily_prices(messy_panel()).prices
    assert list(prices.columns) == ["date", "ticker", "open", "high", "low", "close", "volume", "jump"]
    assert prices["date"].dtype == "datetime64[ns]"
    assert prices["jump"].dtype == bool
    assert prices.equals(prices.sort_values(["ticker", "date"]).reset_index(drop=True))


def test_clean_jump_threshold_is_configurable():
    prices = daily_rows("X", ["2020-01-02", "2020-01-03"], [10.0, 8.0])  # ln(0.8) = -0.22
    assert clean_daily_prices(prices).rule_counts["jump_days_flagged"] == 0
    assert clean_daily_prices(prices, PriceCleaning(jump_log_return=0.2)).rule_counts["jump_days_flagged"] == 1


def test_clean_names_missing_columns():
    with pytest.raises(ValueError, match=r"\['volume'\]"):
        clean_daily_prices(messy_panel().drop(columns="volume"))


def test_cleaning_rules_reject_nonpositive_thresholds():
    with pytest.raises(ValueError, match="jump_log_return"):
        PriceCleaning(jump_log_return=0.0)


def month_panel() -> pd.DataFrame:
    """Ticker A over Jan-Apr 2020 with known month-end closes 10, 11, 12.1, 9."""
    dates = ["2020-01-30", "2020-01-31", "2020-02-03", "2020-02-28", "2020-03-31", "2020-04-01", "2020-04-30"]
    closes = [9.0, 10.0, 30.0, 11.0, 12.1, 12.0, 9.0]
    return clean_daily_prices(daily_rows("A", dates, closes), PriceCleaning(jump_log_return=5.0)).prices


def test_month_end_log_return_is_log_ratio_of_last_closes_and_first_month_is_omitted():
    monthly = month_end_log_returns(month_panel())
    assert monthly["month"].tolist() == ["2020-02", "2020-03", "2020-04"]
    assert monthly["close_month_end"].tolist() == [11.0, 12.1, 9.0]
    np.testing.assert_allclose(monthly["log_return"], np.log([11 / 10, 12.1 / 11, 9 / 12.1]))


def test_month_return_is_nan_when_a_jump_day_falls_inside_the_month():
    prices = month_panel()
    prices.loc[prices["date"] == pd.Timestamp("2020-04-01"), "jump"] = True
    monthly = month_end_log_returns(prices).set_index("month")
    assert monthly.loc["2020-04", "jump_in_month"]
    assert np.isnan(monthly.loc["2020-04", "log_return"])
    assert not np.isnan(monthly.loc["2020-03", "log_return"])


def test_month_return_is_nan_after_a_missing_month():
    prices = month_panel()
    prices = prices[prices["date"].dt.month != 3]
    monthly = month_end_log_returns(prices).set_index("month")
    assert monthly.index.tolist() == ["2020-02", "2020-04"]
    assert np.isnan(monthly.loc["2020-04", "log_return"])


def test_months_after_last_complete_month_are_dropped():
    monthly = month_end_log_returns(month_panel(), last_complete_month="2020-03")
    assert monthly["month"].tolist() == ["2020-02", "2020-03"]
    with pytest.raises(ValueError, match="YYYY-MM"):
        month_end_log_returns(month_panel(), last_complete_month="2020-3")


def test_month_end_log_returns_requires_the_jump_column_of_cleaned_prices():
    with pytest.raises(ValueError, match="jump"):
        month_end_log_returns(month_panel().drop(columns="jump"))


@pytest.mark.parametrize(
    ("last_date", "expected"),
    [
        ("2018-02-07", "2018-01"),
        ("2018-01-31", "2018-01"),
        ("2017-12-29", "2017-12"),
        ("2017-12-28", "2017-11"),
    ],
)
def test_infer_last_complete_month_needs_the_months_last_business_day(last_date, expected):
    assert infer_last_complete_month(pd.to_datetime(["2017-06-01", last_date])) == expected


def test_wide_returns_pivots_months_by_tickers_and_rejects_repeats():
    long = pd.DataFrame(
        {"month": ["2020-02", "2020-01", "2020-01"], "ticker": ["B", "A", "B"], "log_return": [0.3, 0.1, 0.2]}
    )
    wide = wide_returns(long)
    assert wide.index.tolist() == ["2020-01", "2020-02"]
    assert wide.columns.tolist() == ["A", "B"]
    assert wide.loc["2020-02", "B"] == 0.3 and np.isnan(wide.loc["2020-02", "A"])
    with pytest.raises(ValueError, match="repeated"):
        wide_returns(pd.concat([long, long.iloc[[0]]]))


@pytest.mark.skipif(not SAMPLE_PRICES.exists(), reason="sample prices not present")
def test_sample_prices_known_anomalies_are_handled_as_documented():
    cleaned = clean_daily_prices(pd.read_parquet(SAMPLE_PRICES))
    counts, prices = cleaned.rule_counts, cleaned.prices
    assert counts["rows_in"] == 619_040
    assert counts["close_outside_range_dropped"] == 1  # LNT 2016-05-19
    assert counts["null_open_high_low_rows"] == 11
    assert counts["late_start_tickers"] == 29
    lnt = prices[(prices["ticker"] == "LNT")].set_index("date")
    assert pd.Timestamp("2016-05-19") not in lnt.index
    ebay = prices[prices["ticker"] == "EBAY"].set_index("date")
    assert ebay.loc[pd.Timestamp("2015-07-20"), "jump"]

    monthly = month_end_log_returns(prices, infer_last_complete_month(prices["date"]))
    assert monthly["month"].max() == "2018-01"
    ebay_july = monthly[(monthly["ticker"] == "EBAY") & (monthly["month"] == "2015-07")]
    assert ebay_july["jump_in_month"].item() and np.isnan(ebay_july["log_return"].item())
