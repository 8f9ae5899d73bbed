"""SEC EDGAR: company identifiers, the latest 10-K, and its 'Item 1. Business' text.

Two halves:
- pure functions over EDGAR payloads (`parse_company_tickers`, `company_profile`, `ten_k_filings`,
  `extract_item1_business`), tested offline on the fixtures in `shared/data/edgar/`;
- `EdgarClient`, a polite HTTP client: a declared User-Agent on every request, at most
  `max_requests_per_second` requests (SEC's fair-access policy allows 10/s), and retries with
  exponential back-off on 429, 5xx and connection errors.

Endpoints (https://www.sec.gov/search-filings/edgar-application-programming-interfaces):
  submissions      https://data.sec.gov/submissions/CIK##########.json
  ticker map       https://www.sec.gov/files/company_tickers.json
  filing documents https://www.sec.gov/Archives/edgar/data/{cik}/{accession, no dashes}/{document}
"""

from __future__ import annotations

import email.utils
import re
import threading
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterator

import pandas as pd
import requests
from bs4 import BeautifulSoup, NavigableString, Tag, XMLParsedAsHTMLWarning
from bs4.element import PreformattedString

from peerlens.sources.tickers import normalize_ticker

SUBMISSIONS_URL = "https://data.sec.gov/submissions/CIK{cik:010d}.json"
SUBMISSIONS_PAGE_URL = "https://data.sec.gov/submissions/{name}"
COMPANY_TICKERS_URL = "https://www.sec.gov/files/company_tickers.json"
ARCHIVES_URL = "https://www.sec.gov/Archives/edgar/data/{cik}/{accession}/{document}"

# Annual reports that carry an Item 1. "10-K405" was used until 2002 (a box about Section 16
# filings was ticked); amendments (10-K/A) are left out because they often restate one item only.
ANNUAL_REPORT_FORMS = frozenset({"10-K", "10-K405"})


class EdgarError(RuntimeError):
    """A request to EDGAR failed for good: a client error, or transient errors past the retry budget."""


class EdgarRefused(EdgarError):
    """EDGAR answered with a client error (403, 404, …): asking again later will not help."""


def shown_user_agent(user_agent: object) -> str:
    """A user agent as errors and logs show it: its first two characters and its length, never the name and
    e-mail address in it."""
    text = str(user_agent)
    return f"'{text[:2]}…' ({len(text)} characters)"


@dataclass(frozen=True)
class Filing:
    """One EDGAR filing, as listed in a company's submissions history."""

    cik: int
    accession_number: str
    """'0000320193-24-000123': filer-agent id, year, sequence."""
    form: str
    filing_date: str
    """ISO date the filing was accepted."""
    report_date: str
    """ISO date of the period the report covers ('' when EDGAR has none)."""
    primary_document: str

    @property
    def url(self) -> str:
        """Address of the primary document in the EDGAR archive."""
        return ARCHIVES_URL.format(
            cik=self.cik,
            accession=self.accession_number.replace("-", ""),
            document=self.primary_document,
        )


# ---------------------------------------------------------------------------------------------
# Pure functions over EDGAR payloads
# ---------------------------------------------------------------------------------------------


def parse_company_tickers(payload: dict[str, Any], source: str = "company_tickers.json") -> pd.DataFrame:
    """SEC's ticker map `{"0": {"cik_str": int, "ticker": str, "title": str}, ...}` as a frame.

    Returns columns ticker (normalised, str), cik (int64), title (str), one row per entry in file
    order. A CIK may appear under several tickers (share classes, warrants, units).
    """
    if not isinstance(payload, dict) or not payload:
        raise ValueError(f"{source}: expected a non-empty JSON object of ticker entries")
    rows = []
    for key, entry in payload.items():
        if not isinstance(entry, dict) or not {"cik_str", "ticker", "title"} <= entry.keys():
            raise ValueError(f"{source}: entry {key!r} lacks one of cik_str, ticker, title: {entry!r}")
        rows.append((normalize_ticker(entry["ticker"]), int(entry["cik_str"]), str(entry["title"])))
    frame = pd.DataFrame(rows, columns=["ticker", "cik", "title"])
    return frame.astype({"cik": "int64"})


def company_profile(submissions: dict[str, Any]) -> dict[str, Any]:
    """The identifying fields of a submissions payload: cik (int), name, sic (4-digit str or None),
    sic_description, tickers (list of normalised tickers)."""
    for key in ("cik", "name", "sic", "sicDescription", "tickers"):
        if key not in submissions:
            raise ValueError(f"submissions payload lacks the {key!r} field")
    sic = str(submissions["sic"]).strip()
    return {
        "cik": int(submissions["cik"]),
        "name": submissions["name"],
        "sic": sic.zfill(4) if sic else None,
        "sic_description": submissions["sicDescription"] or None,
        "tickers": [normalize_ticker(ticker) for ticker in submissions["tickers"]],
    }


def _filings_from_columns(cik: int, columns: dict[str, list[Any]]) -> list[Filing]:
    """Annual reports from EDGAR's parallel arrays (accessionNumber[i], form[i], ... describe filing i)."""
    needed = ("accessionNumber", "form", "filingDate", "reportDate", "primaryDocument")
    missing = [name for name in needed if name not in columns]
    if missing:
        raise ValueError(f"submissions filings for CIK {cik} lack the arrays {missing}")
    lengths = {name: len(columns[name]) for name in needed}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"submissions filings for CIK {cik} have arrays of unequal length: {lengths}")
    return [
        Filing(cik, accession, form, filing_date, report_date or "", document)
        for accession, form, filing_date, report_date, document in zip(*(columns[name] for name in needed))
        if form in ANNUAL_REPORT_FORMS
    ]


def ten_k_filings(submissions: dict[str, Any]) -> list[Filing]:
    """The 10-K and 10-K405 filings in `submissions["filings"]["recent"]`, newest first.

    `recent` holds the latest 1,000 filings; older ones sit in the pages listed under
    `filings.files`, which `EdgarClient.latest_10k` fetches only when `recent` has no 10-K.
    """
    try:
        cik = int(submissions["cik"])
        recent = submissions["filings"]["recent"]
    except (KeyError, TypeError) as error:
        raise ValueError(f"submissions payload lacks cik or filings.recent: {error!r}") from None
    filings = _filings_from_columns(cik, recent)
    return sorted(filings, key=lambda filing: filing.filing_date, reverse=True)


# Text assembly mirrors how a browser lays the page out: block elements start a new line,
# table cells on one row stay on one line (so a TOC row "Item 1. | Business | 1" reads as one line).
_BLOCK_TAGS = frozenset(
    "address article blockquote body center dd div dl dt h1 h2 h3 h4 h5 h6 hr li ol p pre "
    "section table tbody thead tfoot tr ul".split()
)
_CELL_TAGS = frozenset({"td", "th"})
# Inline XBRL keeps its machine-readable facts in <ix:header> inside a display:none div.
_INVISIBLE_TAGS = frozenset({"head", "script", "style", "template", "noscript", "ix:header"})
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none", re.IGNORECASE)
_RUN_OF_SPACE = re.compile(r"\s+")  # \s includes the non-breaking space U+00A0 in str patterns
_RUN_OF_INLINE_SPACE = re.compile(r"[^\S\n]+")

_ITEM_1_HEADING = re.compile(
    r"^item\s*1\s*[.:\-\u2013\u2014]?\s*(?:description\s+of\s+)?(?:the\s+)?business\b",
    re.IGNORECASE | re.MULTILINE,
)
# Item 1 ends where the next item starts: normally 1A (Risk Factors); 1B/1C or Item 2 (Properties)
# in reports that have no Item 1A, such as those filed before 2005.
_NEXT_ITEM_HEADING = re.compile(r"^item\s*(?:1\s*[a-z]|[2-9]|1[0-6])\b", re.IGNORECASE | re.MULTILINE)
_HEADING_PUNCTUATION = " .:-\u2013\u2014\n"


def _visible_text(html: str) -> str:
    """The text a reader sees, one block (paragraph, heading, table row) per line, spaces collapsed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", XMLParsedAsHTMLWarning)  # inline XBRL is XHTML with a prolog
        soup = BeautifulSoup(html, "lxml")

    pieces: list[str] = []
    # Iterative walk (documents nest deeper than Python's recursion limit allows comfortably).
    # Each stack entry: (remaining children, text to emit when the element closes, inside <pre>).
    stack: list[tuple[Any, str, bool]] = [(iter(soup.contents), "", False)]
    while stack:
        children, closing, in_pre = stack[-1]
        child = next(children, None)
        if child is None:
            stack.pop()
            pieces.append(closing)
        elif isinstance(child, Tag):
            if child.name in _INVISIBLE_TAGS or _HIDDEN_STYLE.search(child.get("style") or ""):
                continue
            if child.name == "br":
                pieces.append("\n")
                continue
            is_block = child.name in _BLOCK_TAGS
            pieces.append("\n" if is_block else "")
            closing_text = "\n" if is_block else (" " if child.name in _CELL_TAGS else "")
            stack.append((iter(child.contents), closing_text, in_pre or child.name == "pre"))
        elif isinstance(child, NavigableString) and not isinstance(child, PreformattedString):
            # Source line breaks are layout of the HTML file, not of the page, except inside <pre>.
            pieces.append(_RUN_OF_INLINE_SPACE.sub(" ", child) if in_pre else _RUN_OF_SPACE.sub(" ", child))

    lines = (_RUN_OF_SPACE.sub(" ", line).strip() for line in "".join(pieces).split("\n"))
    return "\n".join(line for line in lines if line)


def extract_item1_business(html: str, document: str = "10-K document", min_chars: int = 200) -> str:
    """Text of 'Item 1. Business' from a 10-K primary document (HTML or inline XBRL).

    Every line that starts with an Item 1 heading ('Item 1. Business', 'ITEM 1: BUSINESS',
    'Item 1 - Description of Business', any spacing) opens a candidate section that runs to the
    next line starting with another item heading (1A, 1B, 2, ...). The table of contents gives a
    candidate too, a few characters long; the body's candidate is the longest, so it wins.

    Returns the section without its heading, one paragraph per line. Raises ValueError naming
    `document` when no heading is found or the longest section is under `min_chars` characters
    (only a table-of-contents entry was recognised, or the item is incorporated by reference).
    """
    text = _visible_text(html)
    sections = []
    for heading in _ITEM_1_HEADING.finditer(text):
        next_item = _NEXT_ITEM_HEADING.search(text, heading.end())
        end = next_item.start() if next_item else len(text)
        sections.append(text[heading.end():end].lstrip(_HEADING_PUNCTUATION).rstrip())
    if not sections:
        raise ValueError(f"{document}: no 'Item 1. Business' heading found")
    longest = max(sections, key=len)
    if len(longest) < min_chars:
        raise ValueError(
            f"{document}: the longest 'Item 1. Business' section has {len(longest)} characters "
            f"(< {min_chars}); only a table-of-contents entry or a cross-reference was found"
        )
    return longest


# ---------------------------------------------------------------------------------------------
# HTTP client
# ---------------------------------------------------------------------------------------------

# "Sample Company AdminContact@sample.com" is SEC's own example of a declared User-Agent.
_USER_AGENT_PATTERN = re.compile(r"^\S.*\s[^\s@]+@[^\s@]+\.[^\s@]+$")
_RETRYABLE_EXCEPTIONS = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
)


class _MinIntervalLimiter:
    """Spaces calls at least 1/rate seconds apart, which caps any one-second window at `rate` calls.

    Each caller reserves the next free slot under a lock, then sleeps outside it, so threads
    sharing a client are spaced too.
    """

    def __init__(self, rate: float, sleep: Callable[[float], None], clock: Callable[[], float]):
        self.interval = 1.0 / rate
        self.sleep = sleep
        self.clock = clock
        self._next_slot = float("-inf")
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = self.clock()
            slot = max(now, self._next_slot)
            self._next_slot = slot + self.interval
        if slot > now:
            self.sleep(slot - now)


def _retry_after_seconds(value: str | None) -> float | None:
    """Seconds asked for by a Retry-After header: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


class EdgarClient:
    """Rate-limited, retrying client for SEC EDGAR.

    Delay before retry k (k = 0, 1, ...) is the server's Retry-After when given, else
    `backoff_seconds * 2**k`. A request is attempted at most `max_retries + 1` times.
    """

    def __init__(
        self,
        user_agent: str,
        max_requests_per_second: float = 10.0,
        max_retries: int = 5,
        backoff_seconds: float = 1.0,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        timeout_seconds: float = 30.0,
    ):
        if not isinstance(user_agent, str) or not _USER_AGENT_PATTERN.match(user_agent.strip()):
            raise ValueError(
                f"user_agent must look like 'Name email@domain' (SEC rejects anonymous clients), "
                f"got {shown_user_agent(user_agent)}"
            )
        if not 0 < max_requests_per_second <= 10:
            raise ValueError(
                f"max_requests_per_second must be in (0, 10] (SEC's fair-access limit), "
                f"got {max_requests_per_second}"
            )
        if max_retries < 0 or backoff_seconds < 0 or timeout_seconds <= 0:
            raise ValueError(
                f"need max_retries >= 0, backoff_seconds >= 0, timeout_seconds > 0; got "
                f"{max_retries}, {backoff_seconds}, {timeout_seconds}"
            )
        self.user_agent = user_agent.strip()
        self.max_retries = max_retries
        self.backoff_seconds = backoff_seconds
        self.timeout_seconds = timeout_seconds
        self.session = session if session is not None else requests.Session()
        self.sleep = sleep
        self._limiter = _MinIntervalLimiter(max_requests_per_second, sleep=sleep, clock=clock)

    def _get(self, url: str) -> requests.Response:
        headers = {"User-Agent": self.user_agent, "Accept-Encoding": "gzip, deflate"}
        for attempt in range(self.max_retries + 1):
            self._limiter.wait()
            try:
                response = self.session.get(url, headers=headers, timeout=self.timeout_seconds)
            except _RETRYABLE_EXCEPTIONS as error:
                failure, retry_after = f"{type(error).__name__}: {error}", None
            else:
                status = response.status_code
                if status < 400:
                    return response
                if status != 429 and status < 500:
                    refused = (
                        f": SEC refuses a User-Agent it does not accept (sent {shown_user_agent(self.user_agent)}) and a "
                        "client over its fair-access rate" if status == 403 else ""
                    )
                    raise EdgarRefused(f"GET {url} failed with HTTP {status} (not retried){refused}")
                failure, retry_after = f"HTTP {status}", _retry_after_seconds(response.headers.get("Retry-After"))
            if attempt < self.max_retries:
                self.sleep(retry_after if retry_after is not None else self.backoff_seconds * 2**attempt)
        raise EdgarError(f"GET {url} failed after {self.max_retries + 1} attempts; last error: {failure}")

    def get_json(self, url: str) -> dict[str, Any]:
        """The JSON object at `url`."""
        response = self._get(url)
        try:
            payload = response.json()
        except ValueError as error:
            raise EdgarError(f"GET {url} returned a body that is not JSON: {error}") from None
        if not isinstance(payload, dict):
            raise EdgarError(f"GET {url} returned JSON {type(payload).__name__}, expected an object")
        return payload

    def get_text(self, url: str) -> str:
        """The decoded body at `url`."""
        return self._get(url).text

    def submissions(self, cik: int) -> dict[str, Any]:
        """A company's submissions payload: profile and its latest 1,000 filings."""
        if isinstance(cik, bool) or not isinstance(cik, int) or cik <= 0:
            raise ValueError(f"cik must be a positive int, got {cik!r}")
        return self.get_json(SUBMISSIONS_URL.format(cik=cik))

    def company_tickers(self) -> pd.DataFrame:
        """SEC's current ticker → CIK map: columns ticker, cik, title (see `parse_company_tickers`)."""
        return parse_company_tickers(self.get_json(COMPANY_TICKERS_URL), source=COMPANY_TICKERS_URL)

    def latest_10k(self, cik: int) -> Filing | None:
        """The newest 10-K (or 10-K405) of `cik`, or None if the company never filed one."""
        for filings in self._ten_k_pages(cik):
            if filings:
                return filings[0]
        return None

    def all_10k(self, cik: int) -> list[Filing]:
        """Every 10-K (and 10-K405) `cik` ever filed, newest first: `recent` and every older page."""
        return sorted(
            (filing for page in self._ten_k_pages(cik) for filing in page),
            key=lambda filing: filing.filing_date,
            reverse=True,
        )

    def _ten_k_pages(self, cik: int) -> Iterator[list[Filing]]:
        """The annual reports of `recent`, then of each older page (fetched only when asked for), each newest first."""
        submissions = self.submissions(cik)
        yield ten_k_filings(submissions)
        # Older filings are paged out of `recent`; the pages come newest first.
        for page in submissions.get("filings", {}).get("files", []):
            columns = self.get_json(SUBMISSIONS_PAGE_URL.format(name=page["name"]))
            yield sorted(_filings_from_columns(cik, columns), key=lambda f: f.filing_date, reverse=True)

    def item1_business(self, filing: Filing) -> str:
        """'Item 1. Business' text of `filing`'s primary document (see `extract_item1_business`)."""
        return extract_item1_business(self.get_text(filing.url), document=filing.url)
