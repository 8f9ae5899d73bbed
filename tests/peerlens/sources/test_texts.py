"""Specification of the text history: ids, append-only merging, the point-in-time rule, and its loaders
(the 2017 vintage on the real sample, EDGAR's 10-K history and EDGAR-CORPUS on fixtures)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from peerlens.sources.edgar import Filing, ten_k_filings
from peerlens.sources.sample_2017 import (
    DEFAULT_VENDOR,
    REUSED_PRICE_TICKERS,
    clean_vendor_text,
    load_gics_2017,
    load_membership,
    load_prices_2017,
    load_texts_2017,
    members_on,
)
from peerlens.sources.text_sources import edgar_10k_texts, edgar_corpus_texts, read_edgar_corpus
from peerlens.sources.texts import TEXT_COLUMNS, append_texts, company_id, texts_from_records, texts_known_before
from peerlens.sources.sample import default_sample_dir

SAMPLE_DIR = default_sample_dir()


def texts(*rows: tuple) -> pd.DataFrame:
    """A text history from (cik, ticker, description, source, known_by) rows."""
    frame = pd.DataFrame(rows, columns=["cik", "ticker", "description", "source", "known_by"])
    return texts_from_records(frame.assign(name=frame.ticker), "test texts")


HISTORY = texts(
    (1, "AAA", "AAA makes widgets.", "edgar:1-16", "2016-03-01"),
    (1, "AAA", "AAA makes widgets and gadgets.", "edgar:1-17", "2017-03-01"),
    (2, "BBB", "BBB lends money.", "edgar:2-17", "2017-02-15"),
    (None, "CCC", "CCC digs for copper.", "yf@2017", "2017-05-18"),
)


def test_company_id_is_the_cik_else_the_ticker():
    assert company_id(320193, "AAPL") == "cik:320193"
    assert company_id(None, "brk.b") == "ticker:BRK-B"
    assert company_id(pd.NA, "X") == "ticker:X"
    with pytest.raises(ValueError, match="CIK must be positive"):
        company_id(0, "X")


def test_texts_from_records_names_the_bad_input():
    frame = pd.DataFrame({"cik": [1], "ticker": ["A"], "name": ["A"], "description": ["\u200b "],
                          "source": ["s"], "known_by": ["2017-01-01"]})
    with pytest.raises(ValueError, match="my file: blank description for ticker"):
        texts_from_records(frame, "my file")
    with pytest.raises(ValueError, match="known_by"):
        texts_from_records(frame.assign(description="x", known_by=["not a date"]), "my file")
    with pytest.raises(ValueError, match="same .company, source. twice"):
        texts_from_records(pd.concat([frame, frame]).assign(description="x"), "my file")


def test_latest_text_strictly_before_the_day_is_used():
    on_day = texts_known_before(HISTORY, "2017-03-01")
    assert on_day.set_index("ticker").source.to_dict() == {"AAA": "edgar:1-16", "BBB": "edgar:2-17"}
    after = texts_known_before(HISTORY, "2017-03-02")
    assert after.set_index("ticker").source["AAA"] == "edgar:1-17"
    assert set(texts_known_before(HISTORY, "2018-01-01", tickers={"AAA", "CCC"}).ticker) == {"AAA", "CCC"}
    assert texts_known_before(HISTORY, "2016-01-01").empty


def test_a_renamed_company_keeps_its_latest_text_under_the_new_ticker_only():
    renamed = append_texts(HISTORY, texts((2, "BBX", "BBB, now BBX, lends money.", "edgar:2-18", "2018-02-01")))
    latest = texts_known_before(renamed.history, "2019-01-01", tickers={"BBB"})
    assert "BBB" not in set(latest.ticker)  # its latest text carries BBX: the older BBB text is not used instead


def test_append_adds_new_texts_and_never_overwrites():
    newer = texts((1, "AAA", "AAA makes only gadgets.", "edgar:1-18", "2018-03-01"),
                  (2, "BBB", "BBB lends money.", "edgar:2-17", "2017-02-15"))
    update = append_texts(HISTORY, newer)
    assert update.added == ["cik:1|edgar:1-18"] and update.already_known == ["cik:2|edgar:2-17"]
    assert len(update.history) == len(HISTORY) + 1 and list(update.history.columns) == list(TEXT_COLUMNS)
    rewritten = texts((2, "BBB", "BBB now also insures.", "edgar:2-17", "2017-02-15"))
    with pytest.raises(ValueError, match="overwritten"):
        append_texts(HISTORY, rewritten)


# --- the 2017 vintage, on the real sample -----------------------------------------------------------


def test_vintage_2017_texts_are_dated_and_one_per_company_by_default():
    loaded = load_texts_2017(SAMPLE_DIR)
    frame = loaded.frame
    assert DEFAULT_VENDOR == "yf" and len(frame) == 512 and frame.company_id.is_unique
    assert (frame.known_by == pd.Timestamp("2017-05-18")).all()
    assert frame.source.eq("yf@sp500_2017").all()
    assert not frame.description.str.contains("&amp;|&#x27;|\u0092").any()
    assert loaded.rule_counts["cik_missing"] == len(loaded.affected_tickers["cik_missing"]) < 20
    all_vendors = load_texts_2017(SAMPLE_DIR, ("yf", "gf", "mw")).frame
    assert len(all_vendors) == 1513 and set(all_vendors.known_by.dt.day) == {18, 20}
    with pytest.raises(ValueError, match="vendors"):
        load_texts_2017(SAMPLE_DIR, ("bloomberg",))


def test_clean_vendor_text_decodes_entities_and_the_c1_apostrophe():
    assert clean_vendor_text("AT&amp;T\u0092s  network &#x27;5G&#x27;") == "AT&T's network '5G'"


def test_vintage_2017_prices_are_dividend_adjusted_and_drop_reused_tickers():
    loaded = load_prices_2017(SAMPLE_DIR)
    prices = loaded.frame.set_index(["ticker", "date"])
    assert prices.loc[("MSFT", pd.Timestamp("2013-02-08")), "close"] == pytest.approx(23.1826, abs=1e-4)
    assert not set(REUSED_PRICE_TICKERS) & set(loaded.frame.ticker)
    assert (prices.low <= prices.close * (1 + 1e-9)).mean() > 0.999


def test_vintage_2017_gics_and_membership():
    gics = load_gics_2017(SAMPLE_DIR).frame.set_index("ticker")
    assert gics.loc["AAPL", "gics_sub_industry"] == "45202030" and gics.loc["AAPL", "gics_sector"] == "45"
    membership = load_membership(SAMPLE_DIR)
    assert len(members_on(membership, "2017-05-20")) == 506
    assert len(members_on(membership, "2020-10-28")) == 505
    assert "AAL" in members_on(membership, "2016-01-01") and "AAL" not in members_on(membership, "2000-01-01")


# --- EDGAR's 10-K history and EDGAR-CORPUS, on fixtures -----------------------------------------------


class FakeEdgar:
    """Answers from the Tesla submissions fixture; Item 1 is a short text naming the accession."""

    def __init__(self):
        self.submissions = json.loads((SAMPLE_DIR / "edgar" / "company_submission.json").read_text())
        self.downloads: list[str] = []

    def all_10k(self, cik: int) -> list[Filing]:
        return ten_k_filings(self.submissions) if cik == 1318605 else []

    def item1_business(self, filing: Filing) -> str:
        self.downloads.append(filing.accession_number)
        return f"Tesla designs and sells electric vehicles (filing {filing.accession_number})."


def test_every_past_10k_becomes_a_text_dated_by_its_filing():
    client = FakeEdgar()
    universe = pd.DataFrame({"ticker": ["TSLA", "NOCIK"], "cik": [1318605, None], "name": ["Tesla", "x"]})
    history = edgar_10k_texts(client, universe)
    assert len(history) == 9 and history.company_id.eq("cik:1318605").all()
    assert sorted(history.known_by.dt.year) == list(range(2014, 2023))
    again = edgar_10k_texts(client, universe, since="2020-01-01", known=set(history.source))
    assert again.empty and len(client.downloads) == 9  # nothing already held is downloaded twice
    assert texts_known_before(history, "2019-01-01").source.item() == "edgar:0001564590-18-002956"


def test_edgar_corpus_records_are_dated_at_the_end_of_their_filing_year(tmp_path):
    records = [
        {"filename": "1318605_2019.htm", "cik": "1318605", "year": "2019", "section_1": "Tesla builds cars."},
        {"filename": "1318605_2020.htm", "cik": "1318605", "year": "2020", "section_1": "Tesla builds cars and batteries."},
        {"filename": "999_2020.htm", "cik": "999", "year": "2020", "section_1": "Not in the universe."},
        {"filename": "1318605_2018.htm", "cik": "1318605", "year": "2018", "section_1": "  "},
    ]
    folder = tmp_path / "2020"
    folder.mkdir()
    (folder / "part.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    universe = pd.DataFrame({"ticker": ["TSLA"], "cik": [1318605], "name": ["Tesla"]})
    history = edgar_corpus_texts(read_edgar_corpus(tmp_path), universe)
    assert history.source.tolist() == ["edgar-corpus:1318605_2019.htm", "edgar-corpus:1318605_2020.htm"]
    assert history.known_by.tolist() == [pd.Timestamp("2019-12-31"), pd.Timestamp("2020-12-31")]
    with pytest.raises(ValueError, match="lack column"):
        edgar_corpus_texts(pd.DataFrame({"cik": [1]}), universe)
    with pytest.raises(FileNotFoundError, match="EDGAR-CORPUS"):
        read_edgar_corpus(tmp_path / "nothing")


def test_the_2024_vintage_is_one_dated_text_per_company_with_second_share_classes_dropped():
    from resources import SampleDataResource

    loaded = SampleDataResource(path=str(SAMPLE_DIR), vintage="2024").company_texts()
    assert loaded.frame.company_id.is_unique and (loaded.frame.known_by == pd.Timestamp("2024-04-12")).all()
    assert sorted(loaded.affected_tickers["second_share_class_dropped"]) == ["FOXA", "GOOGL", "NWS"]
