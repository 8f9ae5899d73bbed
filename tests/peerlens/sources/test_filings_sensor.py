"""Specification of the new-10-K watch: the poll over a universe of CIKs (baseline, change, cursor,
wrap-around) and the Dagster sensor that turns a change into a refresh run of exactly the changed
companies. Served from Tesla's real submissions JSON; never touches the network."""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest
import requests
from dagster import DagsterInstance, RunRequest, SensorResult, SkipReason, build_sensor_context

from assets.automation import new_10k_filings
from peerlens.sources.edgar import SUBMISSIONS_URL, Filing, ten_k_filings
from peerlens.sources.filings import FilingsCursor, PollResult, poll_new_10k_filings
from peerlens.sources.sample import LoadedTable
from peerlens.sources.texts import texts_from_records
from resources import EdgarResource, SampleDataResource
from peerlens.sources.sample import default_sample_dir

SAMPLE_DIR = default_sample_dir()
USER_AGENT = "PeerLens Test test@example.com"

TSLA_CIK, AAPL_CIK, MSFT_CIK = 1318605, 320193, 789019
TSLA_LATEST_IN_FIXTURE = "0000950170-22-000796"  # the 10-K filed 2022-02-07
TSLA_NEW = "0000950170-23-001409"  # the next one, filed 2023-01-31
AAPL_10K = "0000320193-24-000123"
MSFT_10K = "0000950170-24-087843"


@pytest.fixture(scope="module")
def tesla() -> dict:
    return json.loads((SAMPLE_DIR / "edgar" / "company_submission.json").read_text())


@pytest.fixture(scope="module")
def tesla_with_new_10k(tesla) -> dict:
    """The fixture with one more 10-K at the top of `filings.recent` (newest first, as EDGAR lists it)."""
    newer = copy.deepcopy(tesla)
    new_row = {
        "accessionNumber": TSLA_NEW,
        "filingDate": "2023-01-31",
        "reportDate": "2022-12-31",
        "acceptanceDateTime": "2023-01-30T21:30:17.000Z",
        "act": "34",
        "form": "10-K",
        "fileNumber": "001-34756",
        "filmNumber": "23571344",
        "items": "",
        "size": 12345678,
        "isXBRL": 1,
        "isInlineXBRL": 1,
        "primaryDocument": "tsla-20221231.htm",
        "primaryDocDescription": "10-K",
    }
    recent = newer["filings"]["recent"]
    assert set(recent) == set(new_row), "every parallel array gets one element"
    for name, value in new_row.items():
        recent[name].insert(0, value)
    return newer


def one_10k_submissions(cik: int, accession: str, filing_date: str) -> dict:
    """A minimal submissions payload holding a single 10-K."""
    return {
        "cik": str(cik),
        "filings": {
            "recent": {
                "accessionNumber": [accession],
                "form": ["10-K"],
                "filingDate": [filing_date],
                "reportDate": [filing_date],
                "primaryDocument": ["report.htm"],
            },
            "files": [],
        },
    }


class FakeEdgar:
    """Answers `latest_10k` from submissions payloads, and records which CIKs were asked for."""

    def __init__(self, submissions: dict[int, dict]):
        self.submissions = dict(submissions)
        self.asked: list[int] = []

    def latest_10k(self, cik: int) -> Filing | None:
        self.asked.append(cik)
        filings = ten_k_filings(self.submissions[cik])
        return filings[0] if filings else None


def universe(*rows: tuple[str, int | None]) -> pd.DataFrame:
    return pd.DataFrame(
        {"ticker": [ticker for ticker, _ in rows], "cik": pd.array([cik for _, cik in rows], dtype="Int64")}
    )


TSLA_AND_AAPL = universe(("TSLA", TSLA_CIK), ("AAPL", AAPL_CIK))


@pytest.fixture
def aapl() -> dict:
    return one_10k_submissions(AAPL_CIK, AAPL_10K, "2024-11-01")


# --- the poll -------------------------------------------------------------------------------------


def test_first_poll_only_sets_the_baseline(tesla, aapl):
    result = poll_new_10k_filings(TSLA_AND_AAPL, FakeEdgar({TSLA_CIK: tesla, AAPL_CIK: aapl}), FilingsCursor())
    assert result == PollResult(
        changed=[],
        filings={},
        filing_dates={},
        checked=2,
        cursor=FilingsCursor(latest={str(TSLA_CIK): TSLA_LATEST_IN_FIXTURE, str(AAPL_CIK): AAPL_10K}, next_offset=0),
    )


def test_a_new_10k_is_reported_for_exactly_that_company(tesla, tesla_with_new_10k, aapl):
    baseline = poll_new_10k_filings(TSLA_AND_AAPL, FakeEdgar({TSLA_CIK: tesla, AAPL_CIK: aapl}), FilingsCursor())
    result = poll_new_10k_filings(
        TSLA_AND_AAPL, FakeEdgar({TSLA_CIK: tesla_with_new_10k, AAPL_CIK: aapl}), baseline.cursor
    )
    assert result.changed == ["TSLA"]
    assert result.filings == {"TSLA": TSLA_NEW} and result.filing_dates == {"TSLA": "2023-01-31"}
    assert result.cursor.latest == {str(TSLA_CIK): TSLA_NEW, str(AAPL_CIK): AAPL_10K}

    again = poll_new_10k_filings(
        TSLA_AND_AAPL, FakeEdgar({TSLA_CIK: tesla_with_new_10k, AAPL_CIK: aapl}), result.cursor
    )
    assert again.changed == [] and again.filings == {}


def test_the_cursor_round_trips_through_json(tesla, aapl):
    cursor = poll_new_10k_filings(TSLA_AND_AAPL, FakeEdgar({TSLA_CIK: tesla, AAPL_CIK: aapl}), FilingsCursor(),
                                  batch_size=1).cursor
    text = cursor.to_json()
    assert json.loads(text) == {"latest": {str(AAPL_CIK): AAPL_10K}, "next_offset": 1, "pending": {}}
    assert FilingsCursor.from_json(text) == cursor


@pytest.mark.parametrize("empty", [None, ""])
def test_no_cursor_yet_is_an_empty_cursor(empty):
    assert FilingsCursor.from_json(empty) == FilingsCursor(latest={}, next_offset=0)


@pytest.mark.parametrize(
    "corrupt",
    ["not json", "[1, 2]", '{"latest": {}}', '{"next_offset": 0}', '{"latest": 5, "next_offset": 0}',
     '{"latest": {}, "next_offset": "two"}'],
)
def test_a_corrupt_cursor_is_a_value_error(corrupt):
    with pytest.raises(ValueError, match="filings cursor"):
        FilingsCursor.from_json(corrupt)


def test_batches_walk_the_universe_in_cik_order_and_wrap_around(aapl):
    client = FakeEdgar({
        AAPL_CIK: aapl,
        MSFT_CIK: one_10k_submissions(MSFT_CIK, MSFT_10K, "2024-07-30"),
        TSLA_CIK: one_10k_submissions(TSLA_CIK, TSLA_LATEST_IN_FIXTURE, "2022-02-07"),
    })
    companies = universe(("TSLA", TSLA_CIK), ("MSFT", MSFT_CIK), ("AAPL", AAPL_CIK))
    cursor = FilingsCursor()
    offsets = []
    for _ in range(3):
        result = poll_new_10k_filings(companies, client, cursor, batch_size=2)
        assert result.checked == 2
        cursor = result.cursor
        offsets.append(cursor.next_offset)
    # Sorted by CIK: AAPL (320193), MSFT (789019), TSLA (1318605).
    assert client.asked == [AAPL_CIK, MSFT_CIK, TSLA_CIK, AAPL_CIK, MSFT_CIK, TSLA_CIK]
    assert offsets == [2, 1, 0]
    assert set(cursor.latest) == {str(AAPL_CIK), str(MSFT_CIK), str(TSLA_CIK)}


def test_a_batch_larger_than_the_universe_checks_each_company_once(tesla, aapl):
    client = FakeEdgar({TSLA_CIK: tesla, AAPL_CIK: aapl})
    result = poll_new_10k_filings(TSLA_AND_AAPL, client, FilingsCursor(), batch_size=100)
    assert result.checked == 2 and sorted(client.asked) == [AAPL_CIK, TSLA_CIK]


def test_companies_without_a_cik_or_with_a_repeated_cik_are_checked_once_or_not_at_all(tesla, aapl):
    client = FakeEdgar({TSLA_CIK: tesla, AAPL_CIK: aapl})
    companies = universe(("TSLA", TSLA_CIK), ("NOCIK", None), ("AAPL", AAPL_CIK), ("AAPL-OLD", AAPL_CIK))
    result = poll_new_10k_filings(companies, client, FilingsCursor())
    assert result.checked == 2 and client.asked == [AAPL_CIK, TSLA_CIK]


def test_a_company_that_never_filed_a_10k_is_skipped_without_a_baseline(tesla):
    no_10k = one_10k_submissions(AAPL_CIK, AAPL_10K, "2024-11-01")
    no_10k["filings"]["recent"]["form"] = ["8-K"]
    result = poll_new_10k_filings(TSLA_AND_AAPL, FakeEdgar({TSLA_CIK: tesla, AAPL_CIK: no_10k}), FilingsCursor())
    assert result.changed == [] and result.checked == 2
    assert result.cursor.latest == {str(TSLA_CIK): TSLA_LATEST_IN_FIXTURE}


def test_bad_poll_arguments_are_value_errors(tesla):
    client = FakeEdgar({TSLA_CIK: tesla})
    with pytest.raises(ValueError, match="batch_size"):
        poll_new_10k_filings(TSLA_AND_AAPL, client, FilingsCursor(), batch_size=0)
    with pytest.raises(ValueError, match="no company with a CIK"):
        poll_new_10k_filings(universe(("NOCIK", None)), client, FilingsCursor())


# --- the Dagster sensor ---------------------------------------------------------------------------


def json_response(url: str, payload: dict) -> requests.Response:
    response = requests.Response()
    response.status_code = 200
    response.url = url
    response._content = json.dumps(payload).encode()
    return response


@pytest.fixture
def edgar_serves(monkeypatch, tesla, aapl):
    """Serve submissions from a dict {cik: payload} through the real EdgarClient; any other request fails.

    Returns the dict: a test swaps a payload to simulate a new filing."""
    served = {TSLA_CIK: tesla, AAPL_CIK: aapl}
    urls = {}

    def get(self, url, **kwargs):
        for cik, payload in served.items():
            urls[SUBMISSIONS_URL.format(cik=cik)] = cik
        if url not in urls:
            raise AssertionError(f"unexpected request to {url}")
        return json_response(url, served[urls[url]])

    def no_network(self, method, url, *args, **kwargs):
        raise AssertionError(f"the sensor tried the network: {method} {url}")

    monkeypatch.setattr(requests.Session, "get", get)
    monkeypatch.setattr(requests.Session, "request", no_network)
    texts = universe(("TSLA", TSLA_CIK), ("AAPL", AAPL_CIK)).assign(
        name=["Tesla, Inc.", "Apple Inc."], description=["Cars.", "Phones."], source="sample", known_by="2024-04-12"
    )
    monkeypatch.setattr(
        SampleDataResource,
        "company_texts",
        lambda self: LoadedTable(frame=texts_from_records(texts, "test universe"), rule_counts={}),
    )
    return served


def tick(cursor: str | None, user_agent: str = USER_AGENT):
    """Evaluate the sensor once; return (its result, the cursor it leaves)."""
    with DagsterInstance.ephemeral() as instance:
        context = build_sensor_context(
            cursor=cursor,
            instance=instance,
            resources={"edgar": EdgarResource(user_agent=user_agent), "company_data": SampleDataResource()},
        )
        result = new_10k_filings(context)
    if isinstance(result, SensorResult):
        assert [r.partition_key for r in result.run_requests] == result.dynamic_partitions_requests[0].partition_keys
        result = result.run_requests[0] if len(result.run_requests) == 1 else result.run_requests
    return result, context.cursor


def test_sensor_without_a_user_agent_skips_and_asks_for_one(edgar_serves):
    result, cursor = tick(None, user_agent="")
    assert isinstance(result, SkipReason)
    assert "PEERLENS_EDGAR_USER_AGENT" in result.skip_message
    assert cursor is None


def test_sensor_first_tick_sets_the_baseline_and_requests_no_run(edgar_serves):
    result, cursor = tick(None)
    assert isinstance(result, SkipReason)
    assert "no new 10-K" in result.skip_message
    assert FilingsCursor.from_json(cursor).latest == {str(TSLA_CIK): TSLA_LATEST_IN_FIXTURE, str(AAPL_CIK): AAPL_10K}


def test_sensor_requests_a_refresh_of_exactly_the_company_with_a_new_10k(edgar_serves, tesla_with_new_10k):
    _, baseline = tick(None)
    edgar_serves[TSLA_CIK] = tesla_with_new_10k
    result, cursor = tick(baseline)

    assert isinstance(result, RunRequest)
    assert result.run_config["ops"]["company_descriptions"]["config"]["refresh_from_edgar"] == ["TSLA"]
    assert result.run_key == f"10k@2023-01-31:{TSLA_NEW}"
    assert result.partition_key == "2023-01-31"  # the filing day: the text partition its run captures
    assert result.tags["peerlens/changed_tickers"] == "TSLA"
    assert FilingsCursor.from_json(cursor).latest[str(TSLA_CIK)] == TSLA_NEW
    assert FilingsCursor.from_json(cursor).pending == {f"10k@2023-01-31:{TSLA_NEW}": ["TSLA"]}

    unchanged, _ = tick(cursor)  # the run is not known to have failed: nothing is requested twice
    assert isinstance(unchanged, SkipReason)


def test_sensor_tick_with_no_change_skips(edgar_serves):
    _, baseline = tick(None)
    result, cursor = tick(baseline)
    assert isinstance(result, SkipReason)
    assert FilingsCursor.from_json(cursor) == FilingsCursor.from_json(baseline)


def test_sensor_run_config_is_accepted_by_the_filings_refresh_job(edgar_serves, tesla_with_new_10k):
    from dagster import validate_run_config

    from definitions import defs

    _, baseline = tick(None)
    edgar_serves[TSLA_CIK] = tesla_with_new_10k
    request, _ = tick(baseline)
    job = defs.resolve_job_def(new_10k_filings.job_name)
    assert job.name == "filings_refresh"
    validated = validate_run_config(job, request.run_config)
    assert validated["ops"]["company_descriptions"]["config"]["refresh_from_edgar"] == ["TSLA"]
