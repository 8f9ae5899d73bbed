"""Daily prices from Yahoo Finance (yfinance), in the sample's schema so either source feeds the graph.

`auto_adjust=False` keeps Yahoo's `Close`, which is split-adjusted but not dividend-adjusted: the
same convention as the sample's prices_daily.parquet, so returns computed from either agree.
"""

from __future__ import annotations

from typing import Callable

import pandas as pd

from peerlens.sources.sample import PRICE_COLUMNS, LoadedTable
from peerlens.sources.tickers import normalize_ticker

_YAHOO_FIELDS = {"Open": "open", "High": "high", "Low": "low", "Close": "close", "Volume": "volume"}


def _ticker_level(columns: pd.MultiIndex) -> int:
    """Which column level holds tickers: 0 with group_by="ticker", 1 with yfinance's default."""
    field_levels = [
        level for level in range(columns.nlevels) if set(columns.get_level_values(level)) & _YAHOO_FIELDS.keys()
    ]
    if columns.nlevels != 2 or len(field_levels) != 1:
        raise ValueError(f"download result columns are not (ticker, field) pairs: {list(columns[:6])}")
    return 1 - field_levels[0]


def _one_ticker(data: pd.DataFrame, ticker: str) -> pd.DataFrame:
    """A single ticker's OHLCV block (columns named as in Yahoo) as rows in PRICE_COLUMNS order."""
    missing = [name for name in _YAHOO_FIELDS if name not in data.columns]
    if missing:
        raise ValueError(f"download result for {ticker} lacks field(s) {missing}; has {list(data.columns)}")
    frame = data[list(_YAHOO_FIELDS)].rename(columns=_YAHOO_FIELDS)
    dates = pd.DatetimeIndex(data.index)
    if dates.tz is not None:  # a trading day is a calendar date in the exchange's zone
        dates = dates.tz_localize(None)
    frame.insert(0, "date", dates.normalize().astype("datetime64[ns]"))
    frame.insert(1, "ticker", ticker)
    return frame.reset_index(drop=True)


def load_yfinance_prices(
    tickers: list[str],
    start: str,
    end: str,
    download: Callable[..., pd.DataFrame] | None = None,
) -> LoadedTable:
    """Daily OHLCV for `tickers` over [start, end) from Yahoo Finance.

    Frame: columns date (datetime64[ns]), ticker (normalised, which is Yahoo's spelling: BRK-B),
    open, high, low, close (float64), volume (int64); sorted by ticker then date.
    Rows without a close or volume are dropped: Yahoo pads every ticker to the union of all the
    tickers' dates with empty rows, and a row with prices but no close cannot give a return.

    `download` defaults to `yfinance.download`; tests pass a stand-in with the same signature.
    rule_counts: tickers_requested, tickers_without_data (omitted from the frame, named in
    affected_tickers), partial_rows_dropped (some values but no close or volume), rows.
    """
    if isinstance(tickers, str) or not tickers:
        raise ValueError(f"tickers must be a non-empty list of symbols, got {tickers!r}")
    start_date, end_date = pd.Timestamp(start), pd.Timestamp(end)
    if not start_date < end_date:
        raise ValueError(f"start must be before end, got start={start!r}, end={end!r}")
    yahoo_tickers = list(dict.fromkeys(normalize_ticker(ticker) for ticker in tickers))
    if download is None:
        import yfinance  # imported here so the library works without it until prices are fetched

        download = yfinance.download

    data = download(
        yahoo_tickers, start=start, end=end, auto_adjust=False, group_by="ticker", progress=False
    )
    if data is None:
        data = pd.DataFrame()
    if not isinstance(data, pd.DataFrame):
        raise ValueError(f"download returned {type(data).__name__}, expected a DataFrame")

    blocks, without_data, partial_rows_dropped = [], [], 0
    level = _ticker_level(data.columns) if isinstance(data.columns, pd.MultiIndex) else None
    if level is None and len(yahoo_tickers) > 1 and not data.empty:
        raise ValueError(f"download returned flat columns {list(data.columns)} for {len(yahoo_tickers)} "
                         f"tickers; cannot tell which ticker a column belongs to")
    for ticker in yahoo_tickers:
        if level is not None:
            present = ticker in set(data.columns.get_level_values(level))
            block = data.xs(ticker, axis=1, level=level) if present else None
        else:
            # A flat frame (old yfinance, or multi_level_index=False) holds the one requested ticker.
            block = None if data.empty else data
        rows = _one_ticker(block, ticker) if block is not None else None
        if rows is not None:
            complete = rows["close"].notna() & rows["volume"].notna()
            if complete.any():
                # All-NaN rows are padding to other tickers' dates, not data; count only partial rows.
                has_some_value = rows[["open", "high", "low", "close", "volume"]].notna().any(axis=1)
                partial_rows_dropped += int((has_some_value & ~complete).sum())
                blocks.append(rows[complete])
                continue
        without_data.append(ticker)

    frame = (
        pd.concat(blocks, ignore_index=True)
        if blocks
        else pd.DataFrame({column: [] for column in PRICE_COLUMNS})
    )
    frame = frame.astype(
        {"date": "datetime64[ns]", "ticker": "str", "open": "float64", "high": "float64",
         "low": "float64", "close": "float64", "volume": "int64"}
    )
    frame = frame.sort_values(["ticker", "date"], kind="stable").reset_index(drop=True)
    counts = {
        "tickers_requested": len(yahoo_tickers),
        "tickers_without_data": len(without_data),
        "partial_rows_dropped": partial_rows_dropped,
        "rows": len(frame),
    }
    return LoadedTable(frame[list(PRICE_COLUMNS)], counts, {"tickers_without_data": without_data})
