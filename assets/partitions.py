"""The partitions: texts by the day they became known, months of returns, clustering dates (with their
trading windows) and scored years, and the automation conditions that carry new partitions downstream.

The time partitions follow one window, PEERLENS_MONTHS_START/END (default your universe's prices, else the 2017
vintage's; see `months_window`). An empty END means "up to now": then a new partition appears as each month, half-year or year begins.
"""

import os

import pandas as pd
from dagster import (
    AutomationCondition,
    DynamicPartitionsDefinition,
    MonthlyPartitionsDefinition,
    TimeWindowPartitionsDefinition,
)

from peerlens.similarity.point_in_time import CLUSTERING_MONTHS
from peerlens.sources.universe import UNIVERSE_ENV, universe_months_window



def months_window() -> tuple[str, str | None]:
    """(start, end or None) of the monthly partitions: PEERLENS_MONTHS_START/END where set, else your universe's
    (`peerlens.sources.universe.universe_months_window`) when PEERLENS_UNIVERSE names one, else the 2017 vintage's.

    The 2017 vintage's prices run 2007-01-03..2020-10-28: the first month-end return is February 2007, the
    last complete month September 2020. The 2024 vintage (2013-02-08..2018-02-07) sets
    PEERLENS_MONTHS_START=2013-03-01 and PEERLENS_MONTHS_END=2018-02-01; live deployments their own window.
    """
    start, end = "2007-02-01", "2020-10-01"
    if os.environ.get(UNIVERSE_ENV):
        start, end = universe_months_window(os.environ[UNIVERSE_ENV])
    return os.environ.get("PEERLENS_MONTHS_START", start), os.environ.get("PEERLENS_MONTHS_END", end) or None


MONTHS_START, MONTHS_END = months_window()

MONTHS = MonthlyPartitionsDefinition(start_date=MONTHS_START, end_date=MONTHS_END)


def half_year_start_on_or_after(day: str) -> str:
    """The first 1 January or 1 July on or after `day`, as YYYY-MM-DD."""
    starts = pd.date_range(pd.Timestamp(day), periods=7, freq="MS")
    return next(d for d in starts if d.month in CLUSTERING_MONTHS).strftime("%Y-%m-%d")


def _clustering_dates() -> TimeWindowPartitionsDefinition:
    # Partition key = the clustering's as_of. With an END, the last one is the last 1 Jan/1 Jul before the
    # last month's end (that month is still traded with it); without one, today's half-year is included.
    end = None
    if MONTHS_END:
        last_month_start = pd.Timestamp(MONTHS_END) - pd.DateOffset(months=1)
        end = half_year_start_on_or_after(str((last_month_start + pd.Timedelta(days=1)).date()))
    return TimeWindowPartitionsDefinition(
        cron_schedule="0 0 1 " + ",".join(map(str, CLUSTERING_MONTHS)) + " *",
        start=half_year_start_on_or_after(MONTHS_START),
        end=end,
        end_offset=0 if end else 1,
        fmt="%Y-%m-%d",
    )


CLUSTERING_DATES = _clustering_dates()
"""Time partitions of company_clusters and the trading windows: each key is the as_of of one clustering of
every method, and the first day of the half-year traded with it."""


def _years() -> TimeWindowPartitionsDefinition:
    # The first whole year of returns on; with an END, the year of its last month is the last one.
    start = f"{pd.Timestamp(MONTHS_START).year + (pd.Timestamp(MONTHS_START).month > 1)}-01-01"
    end = f"{(pd.Timestamp(MONTHS_END) - pd.DateOffset(months=1)).year + 1}-01-01" if MONTHS_END else None
    return TimeWindowPartitionsDefinition(
        cron_schedule="0 0 1 1 *", start=start, end=end, end_offset=0 if end else 1, fmt="%Y-%m-%d"
    )


YEARS = _years()
"""Time partitions of the mean-correlation scores: each key is the 1 January of the year scored."""


TEXT_DATES = DynamicPartitionsDefinition(name="text_dates")
"""Partitions of everything computed per text (its activations): one per day on which texts became known
(known_by, YYYY-MM-DD; `peerlens.sources.texts.text_days`). company_descriptions adds the days it holds; a
new filing adds its own, so capturing it never touches the partitions before it."""


NEW_PARTITION = AutomationCondition.on_missing()
"""A time partition is materialized once, when it begins and its inputs are there (a new clustering date)."""
FOLLOWS_UPSTREAM = AutomationCondition.eager()
"""Rerun when an input is updated (for a time-partitioned asset: its latest partition), or when missing."""


def partitions_value(parts: dict):
    """What a run over the partitions `parts` holds (key → value) returns to the IO manager: the mapping
    itself, or the single value of a one-partition run."""
    return parts if len(parts) > 1 else next(iter(parts.values()))


def partition_end(partitions: TimeWindowPartitionsDefinition, key: str) -> pd.Timestamp:
    """The (naive, exclusive) end of time partition `key`: e.g. the next clustering date."""
    return pd.Timestamp(partitions.time_window_for_partition_key(key).end).tz_localize(None)
