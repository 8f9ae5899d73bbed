"""The offline sample (`shared/data/`): S&P 500 descriptions, identifiers, industry codes, prices.

Each loader returns a tidy frame plus `rule_counts`, how many rows every cleaning or joining
rule touched, so a materialisation can show what happened to the data. The quirks these rules
handle are documented in the sample's README: `BRK.B` vs `BRK-B` vs `BRK`, a pipe-delimited
cik_ticker.csv whose tickers are stale (ES was Energysolutions), CIKs that changed, and a quoted
description spanning two lines.

Vintages differ, and the frames say so: descriptions are a Yahoo snapshot of 2024-04-12,
constituents (GICS, CIK) are from 2026, cik_ticker.csv (SIC) from 2019, prices cover 2013-2018.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pandas as pd

from peerlens.sources.edgar import parse_company_tickers
from peerlens.sources.tickers import normalize_ticker
from sae_core.text import is_blank

SAMPLE_DIR_ENV = "PEERLENS_SAMPLE_DIR"
DESCRIPTIONS_FILE = "sp500/descriptions.csv"
CONSTITUENTS_FILE = "sp500/constituents.csv"
CIK_TICKER_FILE = "sp500/cik_ticker.csv"
PRICES_FILE = "sp500/prices_daily.parquet"
COMPANY_TICKERS_FILE = "edgar/company_tickers.json"
REQUIRED_FILES = (DESCRIPTIONS_FILE, CONSTITUENTS_FILE, CIK_TICKER_FILE, PRICES_FILE, COMPANY_TICKERS_FILE)

DESCRIPTIONS_AS_OF = date(2024, 4, 12)
"""Vintage of descriptions.csv: the commit date of the Yahoo Finance snapshot it was taken from."""

PRICE_COLUMNS = ("date", "ticker", "open", "high", "low", "close", "volume")

# SEC's Standard Industrial Classification divisions, by the first two digits of the SIC code.
SIC_DIVISIONS = (
    (1, 9, "A: Agriculture, Forestry & Fishing"),
    (10, 14, "B: Mining"),
    (15, 17, "C: Construction"),
    (20, 39, "D: Manufacturing"),
    (40, 49, "E: Transportation & Public Utilities"),
    (50, 51, "F: Wholesale Trade"),
    (52, 59, "G: Retail Trade"),
    (60, 67, "H: Finance, Insurance & Real Estate"),
    (70, 89, "I: Services"),
    (91, 99, "J: Public Administration"),
)


@dataclass(frozen=True)
class LoadedTable:
    """A loaded table and the record of what loading did to it."""

    frame: pd.DataFrame
    rule_counts: dict[str, int]
    """Rule name -> number of rows (or tickers) it applied to, e.g. {"duplicate_ticker_dropped": 0}."""
    affected_tickers: dict[str, list[str]] = field(default_factory=dict)
    """Rule name -> the tickers it applied to, for rules where the names matter (drops, conflicts)."""


def default_sample_dir() -> Path:
    """$PEERLENS_SAMPLE_DIR if set, else `shared/data` beside the project root."""
    override = os.environ.get(SAMPLE_DIR_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def check_files(root: str | Path, required: tuple[str, ...], holds: str = "sp500/ and edgar/") -> Path:
    """`root` as a Path, after checking that every file in `required` exists under it."""
    root = Path(root)
    missing = [name for name in required if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"sample data folder {str(root)!r} lacks {len(missing)} required file(s): {', '.join(missing)}. "
            f"Point the environment variable {SAMPLE_DIR_ENV} (or the resource config) at the folder "
            f"that holds {holds}."
        )
    return root


def check_sample_dir(root: str | Path) -> Path:
    """`root` as a Path, after checking that every file in REQUIRED_FILES exists under it."""
    return check_files(root, REQUIRED_FILES)


def _read_csv(path: Path, required_columns: tuple[str, ...], **read_options) -> pd.DataFrame:
    """A CSV read as text (no NA guessing: empty cells stay ''), after checking its columns."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, **read_options)
    missing = [column for column in required_columns if column not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {list(frame.columns)}")
    return frame


def _normalized(tickers: pd.Series, source: object) -> pd.Series:
    """`normalize_ticker` over a column, naming the file and row of a missing or bad ticker."""
    if tickers.isna().any():
        raise ValueError(f"{source}: missing ticker in row(s) {tickers.index[tickers.isna()].tolist()[:5]}")
    canonical = {}
    for ticker in tickers.unique():
        try:
            canonical[ticker] = normalize_ticker(ticker)
        except ValueError as error:
            rows = tickers.index[tickers == ticker].tolist()[:5]
            raise ValueError(f"{source}: bad ticker in row(s) {rows}: {error}") from None
    return tickers.map(canonical)


def _parse_ciks(values: pd.Series, source: object) -> pd.Series:
    """Text CIKs ('320193', '0000320193') as int64; anything else is an error naming `source`."""
    bad = ~values.str.fullmatch(r"\s*\d+\s*")
    if bad.any():
        raise ValueError(f"{source}: non-numeric CIK(s) {values[bad].head(5).tolist()}")
    return values.str.strip().astype("int64")


def _load_constituents(root: Path) -> pd.DataFrame:
    """constituents.csv as ticker (normalised), cik (int64), gics_sector, gics_sub_industry."""
    path = root / CONSTITUENTS_FILE
    raw = _read_csv(path, ("Symbol", "CIK", "GICS Sector", "GICS Sub-Industry"))
    frame = pd.DataFrame(
        {
            "ticker": _normalized(raw["Symbol"], path),
            "cik": _parse_ciks(raw["CIK"], path),
            "gics_sector": raw["GICS Sector"].str.strip(),
            "gics_sub_industry": raw["GICS Sub-Industry"].str.strip(),
        }
    )
    duplicated = frame["ticker"][frame["ticker"].duplicated()].tolist()
    if duplicated:
        raise ValueError(f"{path}: ticker(s) listed twice after normalisation: {duplicated}")
    return frame


def load_company_descriptions(root: str | Path) -> LoadedTable:
    """One row per company with a business description.

    Frame columns: ticker (normalised str), cik (Int64, <NA> when unknown), name, description
    (whitespace collapsed to single spaces), source ("sample:sp500/descriptions.csv"),
    as_of (datetime64[ns], DESCRIPTIONS_AS_OF: the descriptions' vintage, not the prices').

    CIK comes from constituents.csv by ticker, else from SEC's company_tickers.json (2024).
    Rows whose description is blank (nothing visible: `sae_core.text`) are dropped; of repeated tickers the first row is kept.
    """
    root = check_sample_dir(root)
    path = root / DESCRIPTIONS_FILE
    raw = _read_csv(path, ("Symbol", "Shortname", "Longname", "Longbusinesssummary"))
    counts: dict[str, int] = {"rows_read": len(raw)}
    affected: dict[str, list[str]] = {}

    frame = pd.DataFrame(
        {
            "ticker": _normalized(raw["Symbol"], path),
            "name": raw["Longname"].str.strip().where(raw["Longname"].str.strip() != "", raw["Shortname"].str.strip()),
            "description": raw["Longbusinesssummary"].map(lambda text: re.sub(r"\s+", " ", text).strip()),
        }
    )
    counts["whitespace_normalised"] = int((frame["description"] != raw["Longbusinesssummary"]).sum())

    empty = frame["description"].map(is_blank)
    counts["empty_description_dropped"] = int(empty.sum())
    affected["empty_description_dropped"] = frame.loc[empty, "ticker"].tolist()
    frame = frame[~empty]

    repeated = frame["ticker"].duplicated(keep="first")
    counts["duplicate_ticker_dropped"] = int(repeated.sum())
    affected["duplicate_ticker_dropped"] = frame.loc[repeated, "ticker"].tolist()
    frame = frame[~repeated].reset_index(drop=True)

    cik_by_constituents = _load_constituents(root).set_index("ticker")["cik"]
    company_tickers_path = root / COMPANY_TICKERS_FILE
    with open(company_tickers_path, encoding="utf-8") as handle:
        sec_tickers = parse_company_tickers(json.load(handle), source=str(company_tickers_path))
    cik_by_sec = sec_tickers.drop_duplicates("ticker").set_index("ticker")["cik"]

    from_constituents = frame["ticker"].map(cik_by_constituents).astype("Int64")
    from_sec = frame["ticker"].map(cik_by_sec).astype("Int64")
    frame["cik"] = from_constituents.fillna(from_sec)
    counts["cik_from_constituents"] = int(from_constituents.notna().sum())
    counts["cik_from_company_tickers"] = int((from_constituents.isna() & from_sec.notna()).sum())
    counts["cik_missing"] = int(frame["cik"].isna().sum())
    affected["cik_missing"] = frame.loc[frame["cik"].isna(), "ticker"].tolist()

    frame["source"] = f"sample:{DESCRIPTIONS_FILE}"
    frame["as_of"] = pd.Series(pd.Timestamp(DESCRIPTIONS_AS_OF), index=frame.index).astype("datetime64[ns]")
    columns = ["ticker", "cik", "name", "description", "source", "as_of"]
    return LoadedTable(frame[columns], counts, affected)


def sic_division(sic4: str) -> str | None:
    """SIC division ('D: Manufacturing') of a 4-digit SIC code; None for codes outside every division."""
    if not (isinstance(sic4, str) and len(sic4) == 4 and sic4.isdigit()):
        raise ValueError(f"SIC code must be a 4-digit string, got {sic4!r}")
    major_group = int(sic4[:2])
    for first, last, label in SIC_DIVISIONS:
        if first <= major_group <= last:
            return label
    return None


def _load_cik_ticker(root: Path) -> pd.DataFrame:
    """cik_ticker.csv (pipe-delimited) as cik (int64, unique), ticker (normalised), sic4 (str or NA)."""
    path = root / CIK_TICKER_FILE
    raw = _read_csv(path, ("CIK", "Ticker", "SIC"), sep="|")
    sic = raw["SIC"].str.strip()
    malformed = (sic != "") & ~sic.str.fullmatch(r"\d{1,4}")
    if malformed.any():
        raise ValueError(f"{path}: SIC values that are not 1-4 digits: {sic[malformed].head(5).tolist()}")
    frame = pd.DataFrame(
        {
            "cik": _parse_ciks(raw["CIK"], path),
            "ticker": raw["Ticker"].str.strip().str.upper().str.replace(".", "-", regex=False),
            # Codes below 1000 lost their leading zero somewhere upstream ('100' is SIC 0100).
            "sic4": sic.str.zfill(4).where(sic != ""),
        }
    )
    if frame["cik"].duplicated().any():
        raise ValueError(f"{path}: CIK repeated, expected one row per CIK: "
                         f"{frame['cik'][frame['cik'].duplicated()].head(5).tolist()}")
    return frame


def load_industry_codes(root: str | Path, companies: pd.DataFrame) -> LoadedTable:
    """SIC and GICS codes for each row of `companies` (columns ticker, cik), in the same order.

    Frame columns: ticker, cik (Int64), sic4 (4-digit str or <NA>), sic2 (2-digit str or <NA>),
    sic_division ('D: Manufacturing' or <NA>), sic_source ('cik', 'ticker' or <NA>),
    gics_sector, gics_sub_industry (str or <NA>).

    SIC (cik_ticker.csv, 2019) is joined on CIK first, because its tickers are stale or reused
    (ES -> Energysolutions, not Eversource). Only a company whose CIK is absent from that file
    falls back to its ticker, and only when the ticker's rows agree on one SIC code.
    GICS (constituents.csv) is joined on ticker, else on CIK.
    """
    missing = {"ticker", "cik"} - set(companies.columns)
    if missing:
        raise ValueError(f"companies frame lacks column(s) {sorted(missing)}; has {list(companies.columns)}")
    root = check_sample_dir(root)
    tickers = _normalized(companies["ticker"], "companies frame").tolist()
    repeated = sorted({ticker for ticker in tickers if tickers.count(ticker) > 1})
    if repeated:
        raise ValueError(f"companies frame repeats ticker(s) {repeated}")
    ciks = companies["cik"].astype("Int64").tolist()

    cik_ticker = _load_cik_ticker(root)
    cik_ticker_rows = [
        (int(row_cik), row_ticker, None if pd.isna(row_sic) else row_sic)
        for row_cik, row_ticker, row_sic in cik_ticker[["cik", "ticker", "sic4"]].itertuples(index=False)
    ]
    sic_by_cik = {row_cik: row_sic for row_cik, _, row_sic in cik_ticker_rows}
    rows_by_ticker: dict[str, list[tuple[int, str | None]]] = defaultdict(list)
    for row_cik, row_ticker, row_sic in cik_ticker_rows:
        rows_by_ticker[row_ticker].append((row_cik, row_sic))

    constituents = _load_constituents(root)
    gics_by_ticker = constituents.set_index("ticker")[["gics_sector", "gics_sub_industry"]]
    gics_by_cik = constituents.drop_duplicates("cik").set_index("cik")[["gics_sector", "gics_sub_industry"]]

    rules = ("sic_by_cik", "sic_by_ticker", "sic_missing", "sic_ticker_ambiguous", "ticker_cik_conflicts",
             "multi_row_tickers", "sic_division_unmapped", "gics_by_ticker", "gics_by_cik", "gics_missing")
    affected: dict[str, list[str]] = {rule: [] for rule in rules}
    records = []
    for ticker, cik in zip(tickers, ciks):
        cik = None if pd.isna(cik) else int(cik)
        ticker_rows = rows_by_ticker.get(ticker, [])
        if len(ticker_rows) > 1:
            affected["multi_row_tickers"].append(ticker)
        if cik is not None and ticker_rows and all(row_cik != cik for row_cik, _ in ticker_rows):
            affected["ticker_cik_conflicts"].append(ticker)

        sic4, sic_source = None, None
        if cik is not None and cik in sic_by_cik:
            sic4, sic_source = sic_by_cik[cik], "cik"
        else:
            ticker_sics = {row_sic for _, row_sic in ticker_rows if row_sic is not None}
            if len(ticker_sics) == 1:
                sic4, sic_source = ticker_sics.pop(), "ticker"
            elif len(ticker_sics) > 1:
                affected["sic_ticker_ambiguous"].append(ticker)
        if sic4 is None:
            sic_source = None
        affected["sic_missing" if sic4 is None else f"sic_by_{sic_source}"].append(ticker)
        division = sic_division(sic4) if sic4 is not None else None
        if sic4 is not None and division is None:
            affected["sic_division_unmapped"].append(ticker)

        if ticker in gics_by_ticker.index:
            gics, gics_rule = gics_by_ticker.loc[ticker], "gics_by_ticker"
        elif cik is not None and cik in gics_by_cik.index:
            gics, gics_rule = gics_by_cik.loc[cik], "gics_by_cik"
        else:
            gics, gics_rule = {"gics_sector": None, "gics_sub_industry": None}, "gics_missing"
        affected[gics_rule].append(ticker)

        records.append({
            "ticker": ticker, "cik": cik, "sic4": sic4, "sic2": sic4[:2] if sic4 else None,
            "sic_division": division, "sic_source": sic_source,
            "gics_sector": gics["gics_sector"], "gics_sub_industry": gics["gics_sub_industry"],
        })

    columns = ["ticker", "cik", "sic4", "sic2", "sic_division", "sic_source", "gics_sector", "gics_sub_industry"]
    frame = pd.DataFrame.from_records(records, columns=columns)
    frame = frame.astype({"cik": "Int64", **{column: "string" for column in columns if column != "cik"}})
    counts = {rule: len(affected[rule]) for rule in rules}
    return LoadedTable(frame, counts, affected)


def load_daily_prices(root: str | Path) -> pd.DataFrame:
    """Daily prices, one row per (ticker, date), sorted by ticker then date.

    Columns: date (datetime64[ns]), ticker (normalised: BRK.B -> BRK-B), open, high, low, close
    (float64; split-adjusted, not dividend-adjusted, per the sample README), volume (int64).
    """
    root = check_sample_dir(root)
    path = root / PRICES_FILE
    frame = pd.read_parquet(path)
    missing = [column for column in PRICE_COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {list(frame.columns)}")
    frame = frame[list(PRICE_COLUMNS)].copy()
    frame["ticker"] = _normalized(frame["ticker"], path)
    frame["date"] = pd.to_datetime(frame["date"]).astype("datetime64[ns]")
    repeated = frame.duplicated(["ticker", "date"])
    if repeated.any():
        raise ValueError(f"{path}: (ticker, date) repeated after ticker normalisation, e.g. "
                         f"{frame.loc[repeated, ['ticker', 'date']].head(3).values.tolist()}")
    return frame.sort_values(["ticker", "date"], kind="stable").reset_index(drop=True)
