"""Specification of the EDGAR module: payload parsing and Item 1 extraction on real fixtures,
and the client's politeness (User-Agent, rate limit, retries) against a fake session."""

from __future__ import annotations

import json

import pytest
import requests

from peerlens.sources.edgar import (
    EdgarClient,
    EdgarError,
    Filing,
    company_profile,
    extract_item1_business,
    parse_company_tickers,
    ten_k_filings,
)
from peerlens.sources.sample import default_sample_dir

SAMPLE_DIR = default_sample_dir()
EDGAR_DIR = SAMPLE_DIR / "edgar"
TEN_K_DIR = EDGAR_DIR / "10k"
USER_AGENT = "PeerLens Tests tests@example.com"


def read_10k(name: str) -> str:
    return (TEN_K_DIR / name).read_text(encoding="utf-8", errors="replace")


@pytest.fixture(scope="module")
def tesla_submissions() -> dict:
    return json.loads((EDGAR_DIR / "company_submission.json").read_text())


# --- pure functions on the fixtures ---------------------------------------------------------------


def test_company_profile_of_tesla_has_sic_3711(tesla_submissions):
    profile = company_profile(tesla_submissions)
    assert profile == {"cik": 1318605, "name": "Tesla, Inc.", "sic": "3711",
                       "sic_description": "Motor Vehicles & Passenger Car Bodies", "tickers": ["TSLA"]}


def test_ten_k_filings_of_tesla_are_the_nine_original_10ks_newest_first(tesla_submissions):
    filings = ten_k_filings(tesla_submissions)
    assert [filing.filing_date[:4] for filing in filings] == [
        "2022", "2021", "2020", "2019", "2018", "2017", "2016", "2015", "2014"]
    assert {filing.form for filing in filings} == {"10-K"}  # the three 10-K/A amendments are left out
    assert filings[0] == Filing(1318605, "0000950170-22-000796", "10-K", "2022-02-07", "2021-12-31",
                                "tsla-20211231.htm")
    assert filings[-1].accession_number == "0001193125-14-069681"
    assert filings[-1].primary_document == "d668062d10k.htm"


def test_filing_url_points_into_the_edgar_archive():
    filing = Filing(1318605, "0000950170-22-000796", "10-K", "2022-02-07", "2021-12-31", "tsla-20211231.htm")
    assert filing.url == "https://www.sec.gov/Archives/edgar/data/1318605/000095017022000796/tsla-20211231.htm"


def test_ten_k_filings_keep_10k405_and_drop_amendments():
    columns = {"accessionNumber": ["a-1", "a-2", "a-3", "a-4"], "form": ["10-K405", "10-K/A", "8-K", "10-K"],
               "filingDate": ["2001-03-01", "2002-05-01", "2002-06-01", "2002-03-01"],
               "reportDate": ["2000-12-31", "", "", "2001-12-31"], "primaryDocument": ["a", "b", "c", "d"]}
    filings = ten_k_filings({"cik": "42", "filings": {"recent": columns}})
    assert [(filing.form, filing.accession_number) for filing in filings] == [("10-K", "a-4"), ("10-K405", "a-1")]


def test_ten_k_filings_reject_a_payload_without_filings():
    with pytest.raises(ValueError, match="filings"):
        ten_k_filings({"cik": "42"})


def test_parse_company_tickers_reads_the_sec_map():
    frame = parse_company_tickers(json.loads((EDGAR_DIR / "company_tickers.json").read_text()))
    assert list(frame.columns) == ["ticker", "cik", "title"] and len(frame) == 9610
    by_ticker = frame.set_index("ticker")
    assert by_ticker.loc["AAPL", "cik"] == 320193 and by_ticker.loc["BRK-B", "cik"] == 1067983


def test_apple_item1_starts_with_the_company_background_and_stops_before_risk_factors():
    text = extract_item1_business(read_10k("aapl-10-k-2024-11-01.html"))
    assert text.startswith("Company Background\nThe Company designs, manufactures and markets smartphones")
    assert "iPhone" in text and "Human Capital" in text
    assert "Risk Factors" not in text  # neither the Item 1A heading nor its body
    assert "The Company’s business, reputation, results of operations" not in text
    assert 10_000 < len(text) < 30_000


def test_upper_case_item1_heading_is_found_after_the_table_of_contents():
    # Its table of contents says "Item 1. Business"; the body says "ITEM 1: BUSINESS".
    text = extract_item1_business(read_10k("0001376474-16-000635.html"))
    assert text.startswith("GENERAL\nCommonwealth Income & Growth Fund V")
    assert "ITEM 1A" not in text and "NOT APPLICABLE" not in text
    assert 20_000 < len(text) < 60_000


def test_legacy_1999_item1_runs_to_item2_properties():
    text = extract_item1_business(read_10k("0000950153-99-001234.html"))
    assert text.startswith("The Company\nMedicis is the leading independent pharmaceutical company")
    assert text.endswith("the ultimate success of the acquisition or development could be substantially diminished.")
    assert 50_000 < len(text) < 150_000


def test_item1_heading_variants_and_non_breaking_spaces_are_recognised():
    body = "<p>" + "The company makes widgets. " * 20 + "</p>"
    for heading in ("Item 1. Business", "ITEM 1: BUSINESS", "Item&nbsp;1:&nbsp;&nbsp;<i>Business</i>",
                    "Item 1 - Description of Business"):
        html = f"<html><body><p><b>{heading}</b></p>{body}<p>Item 1A. Risk Factors</p><p>Risky.</p></body></html>"
        text = extract_item1_business(html)
        assert text.startswith("The company makes widgets.") and "Risky" not in text, heading


def test_table_of_contents_row_is_not_taken_for_the_item():
    toc = ("<table><tr><td>Item 1.</td><td>Business</td><td>1</td></tr>"
           "<tr><td>Item 1A.</td><td>Risk Factors</td><td>5</td></tr></table>")
    body = ("<div>Item 1.&nbsp;&nbsp;Business</div><div>" + "We sell widgets. " * 20 + "</div>"
            "<div>Item 2. Properties</div>")
    text = extract_item1_business(f"<html><body>{toc}{body}</body></html>")
    assert text.startswith("We sell widgets.") and "Properties" not in text


def test_missing_item1_raises_naming_the_document():
    with pytest.raises(ValueError, match="doc-42.htm.*no 'Item 1. Business' heading"):
        extract_item1_business("<html><body><p>Annual report</p></body></html>", document="doc-42.htm")


def test_item1_found_only_in_a_table_of_contents_is_an_error():
    toc = ("<table><tr><td>Item 1.</td><td>Business</td><td>1</td></tr>"
           "<tr><td>Item 2.</td><td>Properties</td></tr></table>")
    with pytest.raises(ValueError, match="table-of-contents"):
        extract_item1_business(f"<html><body>{toc}</body></html>")


# --- the client, against a fake session ----------------------------------------------------------


class FakeResponse:
    def __init__(self, status_code: int, body: str = "", headers: dict | None = None):
        self.status_code, self.text, self.headers = status_code, body, headers or {}

    def json(self):
        return json.loads(self.text)


class FakeSession:
    """Serves the queued responses (or raises the queued exceptions) in order, recording each request."""

    def __init__(self, *responses):
        self.responses = list(responses)
        self.requests: list[tuple[str, dict]] = []

    def get(self, url, headers=None, timeout=None):
        self.requests.append((url, dict(headers or {})))
        response = self.responses.pop(0) if len(self.responses) > 1 else self.responses[0]
        if isinstance(response, Exception):
            raise response
        return response


class FakeTime:
    """A clock that only moves when slept on."""

    def __init__(self):
        self.now, self.sleeps = 0.0, []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def make_client(session: FakeSession, fake_time: FakeTime, **options) -> EdgarClient:
    return EdgarClient(USER_AGENT, session=session, sleep=fake_time.sleep, clock=fake_time.clock, **options)


@pytest.mark.parametrize("user_agent", ["", "python-requests/2.31", "PeerLens", "PeerLens tests@nowhere"])
def test_client_refuses_an_anonymous_user_agent(user_agent):
    with pytest.raises(ValueError, match="Name email@domain"):
        EdgarClient(user_agent)


def test_client_refuses_a_rate_above_the_sec_limit():
    with pytest.raises(ValueError, match="max_requests_per_second"):
        EdgarClient(USER_AGENT, max_requests_per_second=11)


def test_every_request_sends_the_user_agent():
    session, fake_time = FakeSession(FakeResponse(503), FakeResponse(200, '{"ok": 1}')), FakeTime()
    make_client(session, fake_time).get_json("https://data.sec.gov/x.json")
    assert len(session.requests) == 2
    assert all(headers["User-Agent"] == USER_AGENT for _, headers in session.requests)


def test_429_is_retried_with_exponential_backoff_then_succeeds():
    session = FakeSession(FakeResponse(429), FakeResponse(429), FakeResponse(200, '{"ok": 1}'))
    fake_time = FakeTime()
    assert make_client(session, fake_time, backoff_seconds=0.5).get_json("https://sec.gov/x") == {"ok": 1}
    assert len(session.requests) == 3
    assert [seconds for seconds in fake_time.sleeps if seconds >= 0.5] == [0.5, 1.0]


def test_retry_after_header_sets_the_wait():
    session = FakeSession(FakeResponse(429, headers={"Retry-After": "7"}), FakeResponse(200, "<html/>"))
    fake_time = FakeTime()
    assert make_client(session, fake_time).get_text("https://sec.gov/doc.htm") == "<html/>"
    assert 7.0 in fake_time.sleeps and fake_time.now == pytest.approx(7.0)


def test_connection_errors_are_retried():
    session = FakeSession(requests.ConnectionError("reset by peer"), FakeResponse(200, '{"ok": 1}'))
    assert make_client(session, FakeTime()).get_json("https://sec.gov/x") == {"ok": 1}


def test_client_gives_up_after_max_retries():
    session, fake_time = FakeSession(FakeResponse(503)), FakeTime()
    with pytest.raises(EdgarError, match=r"https://sec.gov/x.*4 attempts.*HTTP 503"):
        make_client(session, fake_time, max_retries=3).get_json("https://sec.gov/x")
    assert len(session.requests) == 4
    assert [seconds for seconds in fake_time.sleeps if seconds >= 1] == [1.0, 2.0, 4.0]


def test_404_raises_at_once_naming_the_url():
    session = FakeSession(FakeResponse(404), FakeResponse(200, "{}"))
    with pytest.raises(EdgarError, match=r"https://sec.gov/missing.*404"):
        make_client(session, FakeTime()).get_text("https://sec.gov/missing")
    assert len(session.requests) == 1


def test_rate_limiter_spaces_25_requests_at_10_per_second_over_2_4_seconds():
    session, fake_time = FakeSession(FakeResponse(200, "{}")), FakeTime()
    client = make_client(session, fake_time, max_requests_per_second=10)
    request_times = []
    for _ in range(25):
        client.get_json("https://sec.gov/x")
        request_times.append(fake_time.now)
    assert fake_time.now >= 2.4 - 1e-9
    assert fake_time.now < 2.5  # no sleeping beyond what the limit needs
    gaps = [later - earlier for earlier, later in zip(request_times, request_times[1:])]
    assert min(gaps) == pytest.approx(0.1)


def test_latest_10k_and_item1_business_through_the_client(tesla_submissions):
    apple_html = read_10k("aapl-10-k-2024-11-01.html")
    session = FakeSession(FakeResponse(200, json.dumps(tesla_submissions)), FakeResponse(200, apple_html))
    client = make_client(session, FakeTime())
    filing = client.latest_10k(1318605)
    assert filing.accession_number == "0000950170-22-000796"
    assert session.requests[0][0] == "https://data.sec.gov/submissions/CIK0001318605.json"
    text = client.item1_business(filing)
    assert session.requests[1][0] == filing.url and "iPhone" in text


def test_latest_10k_looks_in_older_pages_when_recent_has_none():
    empty = {"accessionNumber": [], "form": [], "filingDate": [], "reportDate": [], "primaryDocument": []}
    submissions = {"cik": "7", "filings": {"recent": empty, "files": [{"name": "CIK0000000007-submissions-001.json"}]}}
    page = {"accessionNumber": ["0000000007-99-000001"], "form": ["10-K405"], "filingDate": ["1999-03-01"],
            "reportDate": ["1998-12-31"], "primaryDocument": ["k.txt"]}
    session = FakeSession(FakeResponse(200, json.dumps(submissions)), FakeResponse(200, json.dumps(page)))
    filing = make_client(session, FakeTime()).latest_10k(7)
    assert filing.form == "10-K405" and filing.filing_date == "1999-03-01"
    assert session.requests[1][0] == "https://data.sec.gov/submissions/CIK0000000007-submissions-001.json"
