"""The 2017 vintage of the offline sample (`shared/data/sp500_2017/`): text known before the returns it scores.

Three vendors' company profiles (Google Finance `gf`, Yahoo Finance `yf`, MarketWatch `mw`), each
dated by `known_by` (May 18–20, 2017); GICS sub-industries as they stood in May 2017; daily prices
2007-01-03..2020-10-28 with dividend-adjusted closes; point-in-time S&P 500 membership. The
sample's README documents every quirk handled here.

Default vendor: `yf`. It covers the most members (454 of 506 on 2017-05-20), its texts are the
longest (median 1,562 characters against 983 for gf and 841 for mw), and it names the right company
for every ticker; seven `gf` texts describe another company (D and MAC carry Apple's text).
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pandas as pd

from peerlens.sources.edgar import parse_company_tickers
from peerlens.sources.sample import (
    COMPANY_TICKERS_FILE,
    CONSTITUENTS_FILE,
    CIK_TICKER_FILE,
    PRICE_COLUMNS,
    LoadedTable,
    _load_cik_ticker,
    _load_constituents,
    _normalized,
    _read_csv,
    check_files,
)
from peerlens.sources.texts import texts_from_records
from sae_core.text import is_blank

TEXTS_FILE = "sp500_2017/descriptions.csv"
GICS_FILE = "sp500_2017/company_bio.csv"
PRICES_FILE = "sp500_2017/prices_daily.parquet"
MEMBERSHIP_FILE = "sp500_2017/membership.csv"
REQUIRED_FILES = (TEXTS_FILE, GICS_FILE, PRICES_FILE, MEMBERSHIP_FILE, CIK_TICKER_FILE, COMPANY_TICKERS_FILE,
                  CONSTITUENTS_FILE)

VENDORS = ("yf", "gf", "mw")
DEFAULT_VENDOR = "yf"

REUSED_PRICE_TICKERS = {
    "IR": "series from 2017-05-12 belongs to the company that took the ticker in 2020 (Gardner Denver)",
    "DOW": "series from 2019-03-20 belongs to Dow Inc., not The Dow Chemical Company the text describes",
    "FOXA": "series from 2019-03-12 belongs to Fox Corporation, not Twenty-First Century Fox",
}
"""Tickers whose price series is another company than the May-2017 text describes (sample README)."""

_C1_APOSTROPHE = "\u0092"  # Windows-1252's right single quote, left undecoded in 203 yf texts


def check_vintage_dir(root: str | Path) -> Path:
    return check_files(root, REQUIRED_FILES, "sp500_2017/")


def clean_vendor_text(text: str) -> str:
    """HTML entities decoded, the stray C1 apostrophe restored, whitespace runs collapsed."""
    return re.sub(r"\s+", " ", html.unescape(text).replace(_C1_APOSTROPHE, "'")).strip()


def load_texts_2017(root: str | Path, vendors: tuple[str, ...] = (DEFAULT_VENDOR,)) -> LoadedTable:
    """The chosen vendors' texts as a text history (`peerlens.sources.texts.TEXT_COLUMNS`), source "<vendor>@sp500_2017".

    CIK by ticker from the 2019 cik_ticker.csv (the vintage closest to 2017; used only where the
    ticker names one CIK), else SEC's company_tickers.json (2024), else constituents.csv (2026).
    Names from company_bio.csv (May 2017), else the ticker.
    """
    unknown = sorted(set(vendors) - set(VENDORS))
    if unknown or not vendors:
        raise ValueError(f"sp500_2017 vendors must be a non-empty subset of {VENDORS}, got {list(vendors)}")
    root = check_vintage_dir(root)
    path = root / TEXTS_FILE
    raw = _read_csv(path, ("ticker", "vendor", "description", "known_by"))
    raw = raw[raw.vendor.isin(vendors)].reset_index(drop=True)
    counts: dict[str, int] = {"rows_read": len(raw)}
    description = raw.description.map(clean_vendor_text)
    counts["entities_or_c1_cleaned"] = int((description != raw.description.str.strip()).sum())
    blank = description.map(is_blank)
    counts["blank_dropped"] = int(blank.sum())
    raw, description = raw[~blank], description[~blank]
    tickers = _normalized(raw.ticker, path)

    cik = _cik_by_ticker(root, tickers)
    names = _gics_table(root).drop_duplicates("ticker").set_index("ticker").name
    frame = pd.DataFrame(
        {
            "cik": cik.values,
            "ticker": tickers.values,
            "name": tickers.map(names).fillna(tickers).values,
            "description": description.values,
            "source": (raw.vendor + "@sp500_2017").values,
            "known_by": raw.known_by.values,
        }
    )
    counts["cik_missing"] = int(frame.cik.isna().sum())
    affected = {"cik_missing": frame.ticker[frame.cik.isna()].tolist()}
    return LoadedTable(texts_from_records(frame, str(path)), counts, affected)


def _cik_by_ticker(root: Path, tickers: pd.Series) -> pd.Series:
    """Int64 CIK per ticker: cik_ticker.csv (unique tickers only), company_tickers.json, constituents.csv."""
    old = _load_cik_ticker(root)
    old = old[~old.ticker.duplicated(keep=False)].set_index("ticker").cik
    with open(root / COMPANY_TICKERS_FILE, encoding="utf-8") as handle:
        sec = parse_company_tickers(json.load(handle), source=str(root / COMPANY_TICKERS_FILE))
    sec = sec.drop_duplicates("ticker").set_index("ticker").cik
    constituents = _load_constituents(root).set_index("ticker").cik
    cik = tickers.map(old).astype("Int64")
    for fallback in (sec, constituents):
        cik = cik.fillna(tickers.map(fallback).astype("Int64"))
    return cik


def _gics_table(root: Path) -> pd.DataFrame:
    path = root / GICS_FILE
    raw = _read_csv(path, ("symbol", "name", "gics_subind"))
    code = raw.gics_subind.str.strip()
    valid = code.str.fullmatch(r"\d{8}")
    return pd.DataFrame(
        {
            "ticker": _normalized(raw.symbol, path),
            "name": raw.name.str.strip(),
            "gics_sub_industry": code.where(valid),
            "gics_sector": code.str[:2].where(valid),
        }
    )


def load_gics_2017(root: str | Path) -> LoadedTable:
    """GICS as of May 2017 (before the 2018 restructuring): ticker, gics_sector (2 digits), gics_sub_industry (8).

    company_bio.csv repeats ASH and TGNA with identical rows; a ticker listed twice with different
    codes would be an error. `NULL` codes are <NA>.
    """
    root = check_vintage_dir(root)
    table = _gics_table(root).drop_duplicates()
    conflicting = table.ticker[table.ticker.duplicated()].tolist()
    if conflicting:
        raise ValueError(f"{root / GICS_FILE}: ticker(s) with two different GICS rows: {conflicting[:5]}")
    counts = {"rows": len(table), "gics_missing": int(table.gics_sub_industry.isna().sum())}
    return LoadedTable(table.drop(columns="name").reset_index(drop=True), counts)


def load_prices_2017(root: str | Path) -> LoadedTable:
    """Daily prices (PRICE_COLUMNS) on the dividend-adjusted scale: every price × adj_close / close.

    Total-return prices are what correlations and pair spreads should see; scaling open, high and low
    by the same factor keeps each day's bar consistent for the cleaning rules. The tickers in
    REUSED_PRICE_TICKERS are dropped: their series is another company.
    """
    root = check_vintage_dir(root)
    path = root / PRICES_FILE
    frame = pd.read_parquet(path)
    missing = [column for column in (*PRICE_COLUMNS, "adj_close") if column not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {list(frame.columns)}")
    frame["ticker"] = _normalized(frame.ticker, path)
    reused = frame.ticker.isin(REUSED_PRICE_TICKERS)
    counts = {"reused_ticker_rows_dropped": int(reused.sum())}
    frame = frame[~reused].copy()
    factor = frame.adj_close / frame.close
    for column in ("open", "high", "low"):
        frame[column] = frame[column] * factor
    frame["close"] = frame.adj_close
    frame["date"] = pd.to_datetime(frame.date).astype("datetime64[ns]")
    frame = frame.loc[:, list(PRICE_COLUMNS)].sort_values(["ticker", "date"], kind="stable").reset_index(drop=True)
    return LoadedTable(frame, counts, {"reused_ticker_rows_dropped": sorted(REUSED_PRICE_TICKERS)})


def load_membership(root: str | Path) -> pd.DataFrame:
    """S&P 500 membership spells: ticker (normalised), start_date, end_date (NaT: still a member)."""
    root = check_vintage_dir(root)
    path = root / MEMBERSHIP_FILE
    raw = _read_csv(path, ("ticker", "start_date", "end_date"))
    start = pd.to_datetime(raw.start_date, errors="coerce")
    end = pd.to_datetime(raw.end_date.replace("", None), errors="coerce")
    bad = start.isna() | (raw.end_date.ne("") & end.isna()) | (end <= start)
    if bad.any():
        raise ValueError(f"{path}: bad start/end dates in row(s) {raw.index[bad].tolist()[:5]}")
    return pd.DataFrame({"ticker": _normalized(raw.ticker, path), "start_date": start, "end_date": end})


def members_on(membership: pd.DataFrame, day: object) -> set[str]:
    """Tickers in the index on `day`: start_date <= day < end_date (or no end_date)."""
    day = pd.Timestamp(day)
    current = (membership.start_date <= day) & (membership.end_date.isna() | (day < membership.end_date))
    return set(membership.ticker[current])
