"""Bulk text history: every past 10-K of a company from EDGAR, or a local copy of EDGAR-CORPUS.

Both return text histories (`peerlens.sources.texts.TEXT_COLUMNS`) to be merged with `append_texts`, so a
second load adds only what is new and never rewrites what is held.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import pandas as pd

from peerlens.sources.edgar import Filing
from peerlens.sources.texts import LOADED_COLUMNS, texts_from_records
from sae_core.text import is_blank

CORPUS_COLUMNS = ("cik", "year", "section_1")
"""EDGAR-CORPUS (Loukas et al., 2021) keeps one record per 10-K: filename, cik, year, section_1, …, section_15."""


class TenKSource(Protocol):
    def all_10k(self, cik: int) -> list[Filing]: ...

    def item1_business(self, filing: Filing) -> str: ...


def edgar_10k_texts(
    client: TenKSource, universe: pd.DataFrame, since: str | None = None, known: set[str] = frozenset()
) -> pd.DataFrame:
    """'Item 1. Business' of every 10-K of each company in `universe` (columns ticker, cik, name).

    known_by is the filing date; source is "edgar:<accession>". Filings dated before `since` (ISO) and
    accessions in `known` (already in the history) are not downloaded. Companies without a CIK are skipped.
    """
    missing = {"ticker", "cik", "name"} - set(universe.columns)
    if missing:
        raise ValueError(f"edgar_10k_texts: universe lacks column(s) {sorted(missing)}")
    rows = []
    for ticker, cik, name in universe.dropna(subset=["cik"])[["ticker", "cik", "name"]].itertuples(index=False):
        for filing in client.all_10k(int(cik)):
            if (since and filing.filing_date < since) or f"edgar:{filing.accession_number}" in known:
                continue
            rows.append(
                {
                    "cik": int(cik),
                    "ticker": ticker,
                    "name": name,
                    "description": client.item1_business(filing),
                    "source": f"edgar:{filing.accession_number}",
                    "known_by": filing.filing_date,
                }
            )
    return texts_from_records(pd.DataFrame(rows, columns=list(LOADED_COLUMNS)), "EDGAR 10-K history")


def read_edgar_corpus(path: str | Path) -> pd.DataFrame:
    """EDGAR-CORPUS records from a .jsonl / .parquet file or a folder of them (searched recursively)."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.suffix in {".jsonl", ".parquet"}) if path.is_dir() else [path]
    if not files or not all(p.is_file() for p in files):
        raise FileNotFoundError(f"EDGAR-CORPUS: no .jsonl or .parquet records at {str(path)!r}")
    frames = [
        pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_json(p, lines=True, dtype=False) for p in files
    ]
    return pd.concat(frames, ignore_index=True)


def edgar_corpus_texts(records: pd.DataFrame, universe: pd.DataFrame, source_name: str = "EDGAR-CORPUS") -> pd.DataFrame:
    """Section 1 (Business) of each EDGAR-CORPUS record whose CIK is in `universe` (ticker, cik, name).

    EDGAR-CORPUS dates a filing only by `year`, the EDGAR index year it was filed in. known_by is
    therefore 31 December of that year, the latest day it can have become public: a text used too late
    costs a few months of freshness, one used too early would be look-ahead. A record with its own
    `filing_date` uses that. Source: "edgar-corpus:<filename>" (else "edgar-corpus:<cik>_<year>").
    Records outside the universe and records with a blank section 1 are left out.
    """
    missing = [column for column in CORPUS_COLUMNS if column not in records.columns]
    if missing:
        raise ValueError(f"{source_name}: records lack column(s) {missing}; found {list(records.columns)}")
    cik = pd.to_numeric(records.cik, errors="coerce")
    year = pd.to_numeric(records.year, errors="coerce")
    bad = cik.isna() | year.isna()
    if bad.any():
        raise ValueError(f"{source_name}: non-numeric cik or year in record(s) {records.index[bad].tolist()[:5]}")
    companies = universe.dropna(subset=["cik"]).drop_duplicates("cik").set_index(universe.cik.dropna().astype(int))
    keep = cik.astype(int).isin(companies.index) & ~records.section_1.map(lambda t: not isinstance(t, str) or is_blank(t))
    records, cik, year = records[keep], cik[keep].astype(int), year[keep].astype(int)
    if "filing_date" in records.columns:
        known_by = pd.to_datetime(records.filing_date, errors="coerce").fillna(pd.to_datetime(year.astype(str) + "-12-31"))
    else:
        known_by = pd.to_datetime(year.astype(str) + "-12-31")
    if "filename" in records.columns:
        source = "edgar-corpus:" + records.filename.astype(str)
    else:
        source = "edgar-corpus:" + cik.astype(str) + "_" + year.astype(str)
    frame = pd.DataFrame(
        {
            "cik": cik.values,
            "ticker": cik.map(companies.ticker).values,
            "name": cik.map(companies.name).values,
            "description": records.section_1.str.strip().values,
            "source": source.values,
            "known_by": known_by.values,
        }
    )
    return texts_from_records(frame, source_name)
