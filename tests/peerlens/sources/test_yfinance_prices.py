"""Specification of the Yahoo Finance loader, with `download` replaced by recorded-like frames."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from peerlens.sources.yfinance_prices import load_yfinance_prices

FIELDS = ["Open", "High", "Low", "Close", "Adj Close", "Volume"]
DATES = pd.DatetimeIndex(["2024-01-02", "2024-01-03", "2024-01-04"], name="Date")
NAN = np.nan


def yahoo_frame(rows_by_ticker: dict[str, list[list[float]]], ticker_level_first: bool = True) -> pd.DataFrame:
    """What `yfinance.download` returns: one OHLC/Adj Close/Volume block per ticker, outer-joined on dates."""
    blocks = {ticker: pd.DataFrame(rows, index=DATES, columns=FIELDS) for ticker, rows in rows_by_ticker.items()}
    frame = pd.concat(blocks.values(), axis=1, keys=blocks.keys(), names=["Ticker", "Price"])
    if not ticker_level_first:  # yfinance's default group_by="column"
        frame.columns = frame.columns.swaplevel(0, 1)
    return frame


AAPL = [[185.0, 186.0, 183.0, 185.6, 184.9, 8.2e7], [184.2, 185.9, 183.4, 184.3, 183.6, 5.8e7],
        [182.2, 183.1, 180.9, 181.9, 181.2, 7.2e7]]
BRK_B = [[NAN] * 6, [358.0, 362.0, 357.5, 361.2, 361.2, 3.1e6], [361.0, 363.0, NAN, NAN, NAN, NAN]]
DEAD = [[NAN] * 6] * 3  # a delisted symbol: yfinance logs an error and pads it with NaN


class RecordingDownload:
    def __init__(self, frame: pd.DataFrame):
        self.frame, self.calls = frame, []

    def __call__(self, tickers, **options):
        self.calls.append((list(tickers), options))
        return self.frame


def test_download_is_called_once_with_yahoo_tickers_and_unadjusted_prices():
    download = RecordingDownload(yahoo_frame({"AAPL": AAPL, "BRK-B": BRK_B}))
    load_yfinance_prices(["aapl", "BRK.B", "AAPL"], start="2024-01-01", end="2024-01-05", download=download)
    assert download.calls == [(["AAPL", "BRK-B"], {"start": "2024-01-01", "end": "2024-01-05", "auto_adjust": False,
                                                   "group_by": "ticker", "progress": False})]


def test_yahoo_frame_becomes_the_sample_price_schema():
    download = RecordingDownload(yahoo_frame({"AAPL": AAPL, "BRK-B": BRK_B}))
    loaded = load_yfinance_prices(["BRK.B", "AAPL"], "2024-01-01", "2024-01-05", download=download)
    frame = loaded.frame
    assert list(frame.columns) == ["date", "ticker", "open", "high", "low", "close", "volume"]
    assert frame["date"].dtype == "datetime64[ns]" and frame["volume"].dtype == "int64"
    assert frame["close"].dtype == "float64"
    assert list(zip(frame["ticker"], frame["date"].dt.day)) == [("AAPL", 2), ("AAPL", 3), ("AAPL", 4), ("BRK-B", 3)]
    first = frame.iloc[0]
    assert first["close"] == 185.6  # Close (split-adjusted), not Adj Close (184.9)
    assert first["open"] == 185.0 and first["volume"] == 82_000_000


def test_tickers_without_data_are_left_out_and_reported():
    download = RecordingDownload(yahoo_frame({"AAPL": AAPL, "DEAD": DEAD}))
    loaded = load_yfinance_prices(["AAPL", "DEAD", "NEVER"], "2024-01-01", "2024-01-05", download=download)
    assert set(loaded.frame["ticker"]) == {"AAPL"}
    assert loaded.rule_counts["tickers_requested"] == 3 and loaded.rule_counts["tickers_without_data"] == 2
    assert loaded.affected_tickers["tickers_without_data"] == ["DEAD", "NEVER"]


def test_padding_rows_are_dropped_and_rows_missing_a_close_are_counted():
    download = RecordingDownload(yahoo_frame({"AAPL": AAPL, "BRK-B": BRK_B}))
    loaded = load_yfinance_prices(["AAPL", "BRK-B"], "2024-01-01", "2024-01-05", download=download)
    # BRK-B: 01-02 is all-NaN padding (silently not data), 01-04 has an open but no close.
    assert loaded.rule_counts == {"tickers_requested": 2, "tickers_without_data": 0, "partial_rows_dropped": 1,
                                  "rows": 4}


def test_field_first_column_layout_gives_the_same_frame():
    by_ticker = yahoo_frame({"AAPL": AAPL, "BRK-B": BRK_B})
    by_field = yahoo_frame({"AAPL": AAPL, "BRK-B": BRK_B}, ticker_level_first=False)
    window = ("2024-01-01", "2024-01-05")
    expected = load_yfinance_prices(["AAPL", "BRK-B"], *window, download=RecordingDownload(by_ticker))
    result = load_yfinance_prices(["AAPL", "BRK-B"], *window, download=RecordingDownload(by_field))
    pd.testing.assert_frame_equal(result.frame, expected.frame)


def test_flat_columns_are_read_as_the_single_requested_ticker():
    flat = pd.DataFrame(AAPL, index=DATES, columns=FIELDS)
    loaded = load_yfinance_prices(["AAPL"], "2024-01-01", "2024-01-05", download=RecordingDownload(flat))
    assert len(loaded.frame) == 3 and set(loaded.frame["ticker"]) == {"AAPL"}


def test_flat_columns_for_several_tickers_are_an_error():
    flat = pd.DataFrame(AAPL, index=DATES, columns=FIELDS)
    with pytest.raises(ValueError, match="flat columns"):
        load_yfinance_prices(["AAPL", "MSFT"], "2024-01-01", "2024-01-05", download=RecordingDownload(flat))


def test_timezone_aware_dates_become_naive_calendar_dates():
    frame = yahoo_frame({"AAPL": AAPL})
    frame.index = pd.DatetimeIndex(["2024-01-02 00:00", "2024-01-03 00:00", "2024-01-04 00:00"],
                                   tz="America/New_York", name="Date")
    loaded = load_yfinance_prices(["AAPL"], "2024-01-01", "2024-01-05", download=RecordingDownload(frame))
    assert list(loaded.frame["date"]) == list(DATES)


def test_empty_download_gives_an_empty_frame_with_the_schema():
    loaded = load_yfinance_prices(["AAPL"], "2024-01-01", "2024-01-05", download=RecordingDownload(pd.DataFrame()))
    assert loaded.frame.empty and loaded.frame["date"].dtype == "datetime64[ns]"
    assert loaded.rule_counts["tickers_without_data"] == 1


@pytest.mark.parametrize(("tickers", "start", "end", "message"), [
    ([], "2024-01-01", "2024-01-05", "non-empty"),
    ("AAPL", "2024-01-01", "2024-01-05", "non-empty list"),
    (["AAPL"], "2024-01-05", "2024-01-01", "start must be before end"),
])
def test_bad_arguments_are_rejected_before_downloading(tickers, start, end, message):
    download = RecordingDownload(pd.DataFrame())
    with pytest.raises(ValueError, match=message):
        load_yfinance_prices(tickers, start, end, download=download)
    assert download.calls == []


def test_default_download_is_yfinance_download(monkeypatch):
    import yfinance
    download = RecordingDownload(yahoo_frame({"AAPL": AAPL}))
    monkeypatch.setattr(yfinance, "download", download)
    loaded = load_yfinance_prices(["AAPL"], "2024-01-01", "2024-01-05")
    assert len(download.calls) == 1 and len(loaded.frame) == 3
