"""Daily price cleaning and month-end log returns.

The sample prices (``../shared/data/sp500/prices_daily.parquet``) are real and messy: a bad print
(LNT 2016-05-19 closes at half its own low), null open/high/low, rows whose OHLC order is broken,
unadjusted spin-offs and share dividends (EBAY 2015-07-20: 66.29 -> 28.57), and series that begin
years after the panel does. ``clean_daily_prices`` applies a fixed list of named rules and counts
what each one did; ``month_end_log_returns`` turns the cleaned closes into the monthly log returns
that the Mean Correlation metric is defined on.

Only the close is used downstream, so rows with a usable close are kept even when the other
fields are broken; they are counted, never silently repaired.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

PRICE_COLUMNS = ("date", "ticker", "open", "high", "low", "close", "volume")
"""Columns a daily price frame must have (extra columns are dropped)."""

_MONTH_PATTERN = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


@dataclass(frozen=True)
class PriceCleaning:
    """Thresholds of the price-cleaning rules."""

    max_close_outside_range: float = 0.25
    """A close below ``low * (1 - x)`` or above ``high * (1 + x)`` is a bad print and is dropped."""

    jump_log_return: float = 0.35
    """``|ln(C_t / C_{t-1})|`` above this flags day t as a jump (spin-off, unadjusted distribution).

    0.35 (a 30% fall or a 42% rise in a day) catches every unadjusted event listed in the data
    README; the mildest is YUM 2016-11-01 at -0.352. It also catches a few genuine news moves
    (AMD +52% on 2016-04-22; CHK -33% and WMB -35% on 2016-02-08): their months lose a return, which costs
    far less than reading a spin-off as a crash."""

    def __post_init__(self) -> None:
        if not self.max_close_outside_range > 0:
            raise ValueError(
                f"max_close_outside_range must be > 0, got {self.max_close_outside_range}"
            )
        if not self.jump_log_return > 0:
            raise ValueError(f"jump_log_return must be > 0, got {self.jump_log_return}")


@dataclass
class CleanedPrices:
    """Output of :func:`clean_daily_prices`."""

    prices: pd.DataFrame
    """Columns date (datetime64[ns]), ticker, open, high, low, close, volume, jump (bool);
    one row per (ticker, date), sorted by ticker then date."""

    rule_counts: dict[str, int]
    """Rows (or tickers, for ``late_start_tickers``) each rule touched, in the order applied."""


def _require_columns(frame: pd.DataFrame, required: tuple[str, ...], name: str) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame, got {type(frame).__name__}")
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise ValueError(f"{name} is missing required columns {missing}; it has {list(frame.columns)}")


def _as_datetime(values: pd.Series, name: str) -> pd.Series:
    try:
        dates = pd.to_datetime(values)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{name} could not be parsed as dates: {error}") from error
    if getattr(dates.dt, "tz", None) is not None:
        dates = dates.dt.tz_localize(None)
    if dates.isna().any():
        raise ValueError(f"{name} has {int(dates.isna().sum())} missing dates")
    return dates.astype("datetime64[ns]")


def clean_daily_prices(prices: pd.DataFrame, rules: PriceCleaning = PriceCleaning()) -> CleanedPrices:
    """Clean a long daily price frame and count what every rule did.

    Rules, applied in this order (the names are the keys of ``rule_counts``):

    - ``rows_in``: rows received.
    - ``null_close_dropped``: rows without a close.
    - ``nonpositive_close_dropped``: close <= 0 (no log return exists).
    - ``duplicate_rows_dropped``: repeated (ticker, date); the first row in input order is kept.
    - ``close_outside_range_dropped``: ``close < low*(1-x)`` or ``close > high*(1+x)`` with
      x = ``rules.max_close_outside_range``; such a close contradicts the same row's range
      (LNT 2016-05-19). A null low/high cannot trigger this rule.
    - ``null_open_high_low_rows`` (kept): rows with any of open/high/low missing.
    - ``ohlc_order_violations`` (kept): low > high, or open or close outside [low, high].
    - ``jump_days_flagged`` (kept, ``jump`` = True): ``|ln(C_t / C_{t-1})| > rules.jump_log_return``
      between consecutive kept rows of a ticker; the flag sits on day t, the first day at the new level.
    - ``late_start_tickers``: tickers whose first kept date is after the panel's first date.
    - ``rows_out``: rows returned.

    Args:
        prices: long frame with columns date, ticker, open, high, low, close, volume.
        rules: thresholds.

    Returns:
        :class:`CleanedPrices` with the cleaned frame and the rule counts.
    """
    _require_columns(prices, PRICE_COLUMNS, "prices")
    frame = prices.loc[:, list(PRICE_COLUMNS)].copy()
    frame["date"] = _as_datetime(frame["date"], "prices['date']")
    if frame["ticker"].isna().any():
        raise ValueError(f"prices['ticker'] has {int(frame['ticker'].isna().sum())} missing tickers")
    frame["ticker"] = frame["ticker"].astype(str)
    for column in ("open", "high", "low", "close"):
        frame[column] = pd.to_numeric(frame[column], errors="raise").astype("float64")

    counts: dict[str, int] = {"rows_in": len(frame)}

    def drop(mask: pd.Series, rule: str) -> pd.DataFrame:
        counts[rule] = int(mask.sum())
        return frame.loc[~mask]

    frame = drop(frame["close"].isna(), "null_close_dropped")
    frame = drop(frame["close"] <= 0, "nonpositive_close_dropped")
    frame = drop(frame.duplicated(["ticker", "date"], keep="first"), "duplicate_rows_dropped")
    slack = rules.max_close_outside_range
    outside = (frame["close"] < frame["low"] * (1 - slack)) | (frame["close"] > frame["high"] * (1 + slack))
    frame = drop(outside, "close_outside_range_dropped")

    counts["null_open_high_low_rows"] = int(frame[["open", "high", "low"]].isna().any(axis=1).sum())
    low, high = frame["low"], frame["high"]
    # Comparisons with NaN are False, so a row with a missing field is only judged on what it has.
    violates_order = (
        (low > high)
        | (frame["close"] < low)
        | (frame["close"] > high)
        | (frame["open"] < low)
        | (frame["open"] > high)
    )
    counts["ohlc_order_violations"] = int(violates_order.sum())

    frame = frame.sort_values(["ticker", "date"], kind="stable").reset_index(drop=True)
    log_close = np.log(frame["close"])
    daily_log_return = log_close.groupby(frame["ticker"]).diff()
    frame["jump"] = (daily_log_return.abs() > rules.jump_log_return).to_numpy(dtype=bool)
    counts["jump_days_flagged"] = int(frame["jump"].sum())

    if len(frame):
        first_dates = frame.groupby("ticker")["date"].min()
        counts["late_start_tickers"] = int((first_dates > frame["date"].min()).sum())
    else:
        counts["late_start_tickers"] = 0
    counts["rows_out"] = len(frame)
    return CleanedPrices(prices=frame, rule_counts=counts)


def infer_last_complete_month(dates: pd.Series | pd.DatetimeIndex) -> str:
    """The last "YYYY-MM" whose month-end close is in the data.

    The month of the last date counts as complete only if that date is on or after the month's
    last business day (Mon-Fri); otherwise it is the month before. Exchange holidays are not
    known here, so a month ending on a holiday (e.g. Good Friday) is judged incomplete: the
    rule errs towards dropping a month rather than keeping a partial one.
    """
    stamps = pd.DatetimeIndex(pd.to_datetime(dates))
    if len(stamps) == 0 or stamps.isna().all():
        raise ValueError("dates is empty: no month can be complete")
    last = stamps.max().normalize()
    last_business_day = last + pd.offsets.BMonthEnd(0)
    period = last.to_period("M")
    return str(period if last >= last_business_day else period - 1)


def month_end_log_returns(prices: pd.DataFrame, last_complete_month: str | None = None) -> pd.DataFrame:
    """Monthly log returns from month-end closes of a cleaned daily frame.

    For ticker i and calendar month m, with C_{i,m} the last close of i in m:

        log_return_{i,m} = ln(C_{i,m} / C_{i,m-1})

    - The first month of each ticker has no predecessor: its row is omitted.
    - If the ticker has no close in calendar month m-1 (a whole month missing), the return would
      span two months: log_return is NaN.
    - If a flagged jump day (``jump`` from :func:`clean_daily_prices`) falls inside m, the change
      includes an unadjusted spin-off or share distribution, which is not a return: log_return is NaN
      and ``jump_in_month`` is True. (The jump of day t lies in the interval (last close of m-1,
      last close of m] exactly when t is in m.)
    - Months after ``last_complete_month`` ("YYYY-MM") are dropped: the close of a month still in
      progress is not a month-end close. ``None`` keeps every month; see
      :func:`infer_last_complete_month`.

    Args:
        prices: cleaned frame with columns date, ticker, close, jump.
        last_complete_month: last month to keep, "YYYY-MM", or None.

    Returns:
        Long frame with columns month (str "YYYY-MM"), ticker, close_month_end, log_return,
        jump_in_month (bool), one row per (ticker, month), sorted by ticker then month.
    """
    _require_columns(prices, ("date", "ticker", "close", "jump"), "prices")
    if last_complete_month is not None and not _MONTH_PATTERN.match(str(last_complete_month)):
        raise ValueError(f"last_complete_month must look like 'YYYY-MM', got {last_complete_month!r}")
    close = pd.to_numeric(prices["close"], errors="raise").astype("float64")
    if close.isna().any() or (close <= 0).any():
        raise ValueError("prices['close'] must be positive and non-missing; run clean_daily_prices first")

    daily = pd.DataFrame(
        {
            "date": _as_datetime(prices["date"], "prices['date']"),
            "ticker": prices["ticker"].astype(str),
            "close": close,
            "jump": prices["jump"].astype(bool),
        }
    )
    if daily.duplicated(["ticker", "date"]).any():
        raise ValueError("prices has repeated (ticker, date) rows; run clean_daily_prices first")
    daily["period"] = daily["date"].dt.to_period("M")
    daily = daily.sort_values(["ticker", "date"], kind="stable")

    monthly = (
        daily.groupby(["ticker", "period"], sort=True)
        .agg(close_month_end=("close", "last"), jump_in_month=("jump", "any"))
        .reset_index()
    )
    by_ticker = monthly.groupby("ticker", sort=False)
    previous_close = by_ticker["close_month_end"].shift(1)
    previous_period = by_ticker["period"].shift(1)
    has_previous = previous_period.notna()
    consecutive = (monthly["period"] - 1) == previous_period

    log_return = np.log(monthly["close_month_end"] / previous_close)
    monthly["log_return"] = log_return.where(consecutive & ~monthly["jump_in_month"])
    monthly = monthly.loc[has_previous]
    if last_complete_month is not None:
        monthly = monthly.loc[monthly["period"] <= pd.Period(last_complete_month, freq="M")]

    monthly = monthly.assign(month=monthly["period"].astype(str))
    columns = ["month", "ticker", "close_month_end", "log_return", "jump_in_month"]
    return monthly.loc[:, columns].reset_index(drop=True)


def wide_returns(long: pd.DataFrame) -> pd.DataFrame:
    """Pivot long monthly returns to a (months x tickers) frame of log_return.

    Args:
        long: frame with columns month, ticker, log_return (as from :func:`month_end_log_returns`).

    Returns:
        Frame indexed by month (sorted "YYYY-MM" strings), one column per ticker (sorted);
        NaN where a ticker has no return that month.
    """
    _require_columns(long, ("month", "ticker", "log_return"), "long")
    repeated = long.duplicated(["month", "ticker"])
    if repeated.any():
        example = long.loc[repeated, ["month", "ticker"]].iloc[0].tolist()
        raise ValueError(f"long has {int(repeated.sum())} repeated (month, ticker) rows, e.g. {example}")
    wide = long.pivot(index="month", columns="ticker", values="log_return").astype("float64")
    wide = wide.sort_index().sort_index(axis=1)
    wide.index.name = "month"
    wide.columns.name = None
    return wide
