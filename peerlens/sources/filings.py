"""Watching EDGAR for new 10-K filings of a universe of companies, one batch of CIKs per poll.

The state between polls is a small JSON-friendly cursor: the latest 10-K accession seen for each
CIK, and where the next batch starts. A company is "changed" when its latest 10-K accession
differs from the one remembered; a company seen for the first time only sets the baseline, so
switching the watch on does not refresh the whole universe at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Protocol

import pandas as pd

from peerlens.sources.edgar import Filing


class LatestTenK(Protocol):
    def latest_10k(self, cik: int) -> Filing | None: ...


@dataclass
class FilingsCursor:
    latest: dict[str, str] = field(default_factory=dict)
    """CIK (as a string: JSON keys) → accession number of the newest 10-K seen."""
    next_offset: int = 0
    """Position in the universe (sorted by CIK) where the next poll starts."""
    pending: dict[str, list[str]] = field(default_factory=dict)
    """Run key → tickers of each refresh run requested and not yet seen to succeed: a run that fails is
    requested again (`follow_up_runs`), so a new filing is never dropped with it."""

    def to_json(self) -> str:
        return json.dumps(
            {"latest": self.latest, "next_offset": self.next_offset, "pending": self.pending}, sort_keys=True
        )

    @classmethod
    def from_json(cls, text: str | None) -> FilingsCursor:
        if not text:
            return cls()
        try:
            data = json.loads(text)
            pending = {str(key): [str(t) for t in tickers] for key, tickers in dict(data.get("pending", {})).items()}
            return cls(latest=dict(data["latest"]), next_offset=int(data["next_offset"]), pending=pending)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"filings cursor is not valid JSON of the expected shape: {error}") from None


@dataclass
class PollResult:
    changed: list[str]
    """Tickers whose latest 10-K is new since the last poll that saw them."""
    filings: dict[str, str]
    """Changed ticker → accession number of its new 10-K."""
    filing_dates: dict[str, str]
    """Changed ticker → the day its new 10-K was filed (YYYY-MM-DD): the day its text becomes known."""
    checked: int
    cursor: FilingsCursor


def poll_new_10k_filings(
    universe: pd.DataFrame, client: LatestTenK, cursor: FilingsCursor, batch_size: int = 100
) -> PollResult:
    """Check the next `batch_size` companies of `universe` (columns ticker, cik) for a new 10-K.

    Companies without a CIK are skipped. The batch wraps around the universe, so every company is
    checked once every ceil(n / batch_size) polls.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    companies = universe.dropna(subset=["cik"]).drop_duplicates("cik").sort_values("cik").reset_index(drop=True)
    if companies.empty:
        raise ValueError("the universe has no company with a CIK to watch")
    start = cursor.next_offset % len(companies)
    positions = [(start + i) % len(companies) for i in range(min(batch_size, len(companies)))]
    latest = dict(cursor.latest)
    changed, filings, filing_dates = [], {}, {}
    for position in positions:
        ticker, cik = companies.at[position, "ticker"], int(companies.at[position, "cik"])
        filing = client.latest_10k(cik)
        if filing is None:
            continue
        previous = latest.get(str(cik))
        if previous is not None and previous != filing.accession_number:
            changed.append(ticker)
            filings[ticker] = filing.accession_number
            filing_dates[ticker] = filing.filing_date
        latest[str(cik)] = filing.accession_number
    next_offset = (start + len(positions)) % len(companies)
    return PollResult(changed, filings, filing_dates, len(positions), FilingsCursor(latest, next_offset))


def refresh_run_keys(result: PollResult) -> dict[str, list[str]]:
    """One refresh per filing day: run key "10k@<day>:<accessions>" → the tickers that filed on it."""
    by_day: dict[str, list[str]] = {}
    for ticker in result.changed:
        by_day.setdefault(result.filing_dates[ticker], []).append(ticker)
    return {
        f"10k@{day}:" + ",".join(sorted(result.filings[t] for t in tickers)): sorted(tickers)
        for day, tickers in sorted(by_day.items())
    }


def filing_day(run_key: str) -> str:
    """The filing day a refresh run key names ("10k@2023-01-31:…", retries included)."""
    prefix, _, _ = run_key.partition(":")
    if not prefix.startswith("10k@"):
        raise ValueError(f"refresh run key {run_key!r} does not name a filing day (10k@YYYY-MM-DD:...)")
    return prefix.removeprefix("10k@")


RETRY_SEPARATOR = "#retry"


def follow_up_runs(pending: dict[str, list[str]], outcome: dict[str, str]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Which requested refreshes to request again, and which to keep waiting on.

    `outcome` maps a run key to "success", "failure" (failed or canceled) or "running"; a key it lacks
    (the run is not launched yet) counts as running. A succeeded run is done; a failed one is requested
    again under a new key ("<key>#retry<n>"), which replaces it in the pending set.
    Returns (again: new run key → tickers, pending: run key → tickers after this tick).
    """
    again, still = {}, {}
    for run_key, tickers in pending.items():
        state = outcome.get(run_key, "running")
        if state == "success":
            continue
        if state == "failure":
            base, _, attempt = run_key.partition(RETRY_SEPARATOR)
            retry_key = f"{base}{RETRY_SEPARATOR}{int(attempt or 0) + 1}"
            again[retry_key] = tickers
            still[retry_key] = tickers
        else:
            still[run_key] = tickers
    return again, still
