"""Company texts through time: the filing (or vendor profile) is the unit of text, and texts accumulate.

A text is one row of a *text history*:

    text_id      "<company_id>|<source>": stable, unique, readable (the activation store's document name)
    company_id   "cik:320193" where the CIK is known, else "ticker:<TICKER>" (the ticker the company
                 had when its first text was loaded; see `company_id`)
    cik          Int64, <NA> when unknown
    ticker       the ticker at the time of the text (tickers change; the company id does not)
    name         company name as the source gives it
    description  the text itself
    source       where it came from: "edgar:<accession>", "yf@sp500_2017", "sample:sp500/descriptions.csv", …
    known_by     datetime64[ns]: the day the text became public (a 10-K's filing date, a vendor
                 snapshot's publication date); the text may be used for anything that starts after it

The point-in-time rule lives here once: what is scored on a period that starts on day D sees, for
each company, only its latest text with known_by < D (`texts_known_before`). A newer text is a new
row; `append_texts` refuses to change a text it already holds.
"""

from __future__ import annotations

from typing import NamedTuple

import pandas as pd

from peerlens.sources.tickers import normalize_ticker
from sae_core.text import is_blank

TEXT_COLUMNS = ("text_id", "company_id", "cik", "ticker", "name", "description", "source", "known_by")
LOADED_COLUMNS = ("cik", "ticker", "name", "description", "source", "known_by")
"""What a loader must provide; `texts_from_records` adds the two ids."""


def company_id(cik: object, ticker: str) -> str:
    """The permanent id of a company: its SEC CIK when known, else its ticker, prefixed so they never collide.

    A ticker fallback is stable only as long as the source keeps naming the company by that ticker; a
    company that later gains a CIK keeps its old texts under the ticker id (the loader that knows both
    should set the CIK on every text).
    """
    if cik is not None and not pd.isna(cik):
        value = int(cik)
        if value <= 0:
            raise ValueError(f"CIK must be positive, got {cik!r} (ticker {ticker!r})")
        return f"cik:{value}"
    return f"ticker:{normalize_ticker(ticker)}"


def texts_from_records(frame: pd.DataFrame, source_name: str, ids: pd.Series | None = None) -> pd.DataFrame:
    """A loader's frame (LOADED_COLUMNS) checked and given its ids: a text history (TEXT_COLUMNS).

    A row's company_id is "cik:<CIK>" when its CIK is known, else the loader's own id from `ids` (aligned
    with `frame`, e.g. "id:acme" for your own universe), else "ticker:<TICKER>".

    Every row must have a ticker, a non-blank description, a source and a known_by date; `source_name`
    names the input in the error. Two rows with one (company, source) are an error: the source must
    tell texts apart (an accession number, a dated vendor snapshot).
    """
    missing = [column for column in LOADED_COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(f"{source_name}: texts lack column(s) {missing}; found {list(frame.columns)}")
    texts = frame.loc[:, list(LOADED_COLUMNS)].copy()
    blank = texts.description.map(lambda text: not isinstance(text, str) or is_blank(text))
    if blank.any():
        raise ValueError(f"{source_name}: blank description for ticker(s) {texts.ticker[blank].tolist()[:5]}")
    no_source = texts.source.map(lambda value: not isinstance(value, str) or not value.strip())
    if no_source.any():
        raise ValueError(f"{source_name}: missing source for ticker(s) {texts.ticker[no_source].tolist()[:5]}")
    texts["known_by"] = pd.to_datetime(texts.known_by, errors="coerce").astype("datetime64[ns]")
    if texts.known_by.isna().any():
        raise ValueError(
            f"{source_name}: missing or unparsable known_by for ticker(s) "
            f"{texts.ticker[texts.known_by.isna()].tolist()[:5]}: a text without a date cannot be placed in time"
        )
    texts["ticker"] = texts.ticker.map(normalize_ticker)
    texts["cik"] = texts.cik.astype("Int64")
    own_ids = ids.tolist() if ids is not None else [None] * len(texts)
    company_ids = [
        own_id if pd.isna(cik) and isinstance(own_id, str) else company_id(cik, ticker)
        for cik, ticker, own_id in zip(texts.cik, texts.ticker, own_ids)
    ]
    texts["company_id"] = pd.Series(company_ids, index=texts.index, dtype=object)
    texts["text_id"] = pd.Series([f"{c}|{s}" for c, s in zip(company_ids, texts.source)], index=texts.index, dtype=object)
    repeated = texts.text_id[texts.text_id.duplicated()]
    if len(repeated):
        raise ValueError(f"{source_name}: the same (company, source) twice: {repeated.tolist()[:5]}")
    return texts.loc[:, list(TEXT_COLUMNS)].reset_index(drop=True)


class TextHistoryUpdate(NamedTuple):
    history: pd.DataFrame
    """The history with the new texts appended (TEXT_COLUMNS), sorted by company_id, known_by, source."""
    added: list[str]
    """text_ids that were not in the history before."""
    already_known: list[str]
    """text_ids offered again with the same description (left as they were)."""


def append_texts(history: pd.DataFrame, incoming: pd.DataFrame) -> TextHistoryUpdate:
    """`history` plus the texts of `incoming` it does not hold yet; both are TEXT_COLUMNS frames.

    Texts are never overwritten: a text_id offered again with a different description is an error
    (a source that revises a text must give the revision its own source, e.g. a new accession).
    """
    for name, frame in (("history", history), ("incoming", incoming)):
        missing = [column for column in TEXT_COLUMNS if column not in frame.columns]
        if missing:
            raise ValueError(f"append_texts: {name} lacks column(s) {missing}")
    held = history.set_index("text_id").description
    offered = incoming.set_index("text_id").description
    common = offered.index.intersection(held.index)
    changed = [text_id for text_id in common if held[text_id] != offered[text_id]]
    if changed:
        raise ValueError(
            f"append_texts: {len(changed)} text(s) would be overwritten with a different description, "
            f"e.g. {changed[:3]}; a revised text needs its own source"
        )
    new = incoming[~incoming.text_id.isin(held.index)]
    parts = [frame for frame in (history, new) if len(frame)]
    merged = pd.concat(parts, ignore_index=True) if parts else history.iloc[:0]
    merged = merged.loc[:, list(TEXT_COLUMNS)].sort_values(["company_id", "known_by", "source"], kind="stable")
    return TextHistoryUpdate(merged.reset_index(drop=True), new.text_id.tolist(), list(common))


def texts_known_before(history: pd.DataFrame, day: object, tickers: object = None) -> pd.DataFrame:
    """Each company's latest text with known_by strictly before `day` (TEXT_COLUMNS, one row per company).

    A text known on `day` itself is not used: a period that starts on `day` is scored from the open,
    before that day's news. Of two texts known on the same latest day the one whose source sorts
    first is kept (deterministic; the demo loads one source per company and day). `tickers`, if given,
    keeps only companies whose latest text carries one of them (e.g. the index members on `day`).
    """
    cutoff = pd.Timestamp(day)
    known = history[history.known_by < cutoff]
    latest = known.sort_values(["company_id", "known_by", "source"], ascending=[True, False, True], kind="stable")
    latest = latest.drop_duplicates("company_id", keep="first")
    if tickers is not None:
        # Filtered after choosing: a company renamed since its member ticker keeps its latest text.
        latest = latest[latest.ticker.isin(set(tickers))]
    return latest.sort_values("ticker").reset_index(drop=True)


def text_days(history: pd.DataFrame) -> list[str]:
    """The distinct days (YYYY-MM-DD) on which the texts of `history` became known, oldest first."""
    return sorted(pd.to_datetime(history["known_by"]).dt.strftime("%Y-%m-%d").unique())


def texts_known_on(history: pd.DataFrame, day: str) -> pd.DataFrame:
    """The texts of `history` that became known on `day` (YYYY-MM-DD), in history order, index reset."""
    on_day = pd.to_datetime(history["known_by"]).dt.strftime("%Y-%m-%d") == day
    return history[on_day].reset_index(drop=True)


def latest_texts(history: pd.DataFrame) -> pd.DataFrame:
    """Each company's newest text (TEXT_COLUMNS, one row per company): what it says of itself today."""
    return texts_known_before(history, history.known_by.max() + pd.Timedelta(days=1))
