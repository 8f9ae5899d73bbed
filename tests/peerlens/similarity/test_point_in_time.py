"""The point-in-time rule, proved end to end on the library: texts → dated clusterings → MC and pairs.

A text dated on or after the start of a scored year (or a trading window) must leave everything scored
in that year (traded in that window) exactly as it was; a text dated before it must be able to change it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from peerlens.pairs.backtest import walk_forward_pairs
from peerlens.similarity.embeddings import reduced_cosine_distances, tfidf_matrix
from peerlens.mean_correlation.mc_study import StudyConfig, mean_correlation_study, years_served_by_clusterings
from peerlens.similarity.methods import CODE_METHODS, ClusteringConfig
from peerlens.pairs.pairs_trading import PairsConfig
from peerlens.similarity.point_in_time import (
    clustering_dates,
    codes_as_of,
    clusterings_by_date,
    point_in_time_clusterings,
    universe_as_of,
)
from peerlens.sources.texts import append_texts, texts_from_records

SECTORS = {
    "bank": "bank deposits loans lending mortgage credit branches interest",
    "oil": "oil gas drilling wells exploration refining crude pipelines",
    "chip": "semiconductor chips wafers silicon processors memory fabrication",
}
N_PER_SECTOR = 8


def sector_of(ticker: str) -> str:
    return list(SECTORS)[int(ticker[1:]) // N_PER_SECTOR]


def history() -> pd.DataFrame:
    tickers = [f"T{i:02d}" for i in range(len(SECTORS) * N_PER_SECTOR)]
    rows = [
        {"cik": 100 + i, "ticker": t, "name": t, "source": "vendor@2016", "known_by": "2016-06-01",
         "description": f"{t} company. {SECTORS[sector_of(t)]} {SECTORS[sector_of(t)].split()[i % 5]} services."}
        for i, t in enumerate(tickers)
    ]
    return texts_from_records(pd.DataFrame(rows), "planted texts")


def retext(texts: pd.DataFrame, ticker: str, sector: str, known_by: str) -> pd.DataFrame:
    """`texts` plus a new text for `ticker` that describes a company of `sector`, known on `known_by`."""
    old = texts[texts.ticker == ticker].iloc[0]
    new = pd.DataFrame([{"cik": old.cik, "ticker": ticker, "name": ticker, "source": f"edgar:{known_by}",
                         "known_by": known_by, "description": f"{ticker} now. {SECTORS[sector]} {SECTORS[sector]}"}])
    return append_texts(texts, texts_from_records(new, "new filing")).history


def daily_prices(seed: int = 0) -> pd.DataFrame:
    """Business days 2015–2019; each sector shares a factor, so sector peers co-move and cointegrate."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2015-01-01", "2019-12-31")
    tickers = [f"T{i:02d}" for i in range(len(SECTORS) * N_PER_SECTOR)]
    factors = {s: np.cumsum(rng.normal(0, 0.01, len(dates))) for s in SECTORS}
    log_prices = {t: 3 + factors[sector_of(t)] + rng.normal(0, 0.004, len(dates)) for t in tickers}
    return pd.DataFrame(np.exp(pd.DataFrame(log_prices, index=dates)))


def monthly_returns(close: pd.DataFrame) -> pd.DataFrame:
    month_end = np.log(close.resample("ME").last()).diff().iloc[1:]
    long = month_end.stack().rename("log_return").reset_index()
    long.columns = ["date", "ticker", "log_return"]
    return long.assign(month=long.date.dt.strftime("%Y-%m"))[["month", "ticker", "log_return"]]


def codes(texts: pd.DataFrame) -> pd.DataFrame:
    """industry_codes of the planted sectors: one undated row per ticker (held on every date, as the sample's)."""
    tickers = sorted(texts.ticker.unique())
    frame = pd.DataFrame({column: [sector_of(t) for t in tickers] for column in CODE_METHODS.values()})
    return frame.assign(ticker=tickers, known_by=pd.NaT)


def recoded(codes: pd.DataFrame, ticker: str, sector: str, known_by: str) -> pd.DataFrame:
    """`codes` plus a row giving `ticker` the codes of `sector` from `known_by` (a reclassification)."""
    row = {**{column: sector for column in CODE_METHODS.values()}, "ticker": ticker, "known_by": pd.Timestamp(known_by)}
    return pd.concat([codes, pd.DataFrame([row])], ignore_index=True)


def tfidf_distances(universe: pd.DataFrame) -> dict[str, np.ndarray]:
    return {"tfidf": reduced_cosine_distances(tfidf_matrix(universe.description.tolist(), min_df=1), n_components=8)}


def clusters(texts: pd.DataFrame, industry_codes: pd.DataFrame | None = None) -> pd.DataFrame:
    dates = clustering_dates(texts, "2019-12-31")
    industry_codes = codes(texts) if industry_codes is None else industry_codes
    built = point_in_time_clusterings(texts, dates, tfidf_distances, industry_codes, ClusteringConfig(), min_companies=5)
    return built.frame


STUDY = StudyConfig(n_boot=50, matched_draws=2, theta_grid_points=6, lookback_years=2)


def yearly(texts: pd.DataFrame, returns: pd.DataFrame, industry_codes: pd.DataFrame | None = None) -> pd.DataFrame:
    frame = clusters(texts, industry_codes).drop(columns=["text_id", "company_id"])
    return mean_correlation_study(returns, frame, STUDY).yearly.set_index(["method", "year"]).sort_index()


@pytest.fixture(scope="module")
def returns() -> pd.DataFrame:
    return monthly_returns(daily_prices())


def test_clustering_dates_start_after_the_first_text_and_years_use_the_latest_before_them():
    dates = clustering_dates(history(), "2018-03-01")
    assert dates == [pd.Timestamp(d) for d in ("2016-07-01", "2017-01-01", "2017-07-01", "2018-01-01")]
    served = years_served_by_clusterings(pd.DataFrame({"month": ["2016-05", "2017-02", "2018-01"]}), pd.Series(dates))
    assert served == {pd.Timestamp("2017-01-01"): [2017], pd.Timestamp("2018-01-01"): [2018]}


def test_universe_is_members_with_a_text_known_before_the_day():
    texts = history()
    assert universe_as_of(texts, "2016-06-01").empty
    members = universe_as_of(texts, "2017-01-01", members={"T00", "T01", "T99"}, tradable={"T00", "T05"})
    assert members.ticker.tolist() == ["T00"]


def test_a_text_dated_on_the_first_day_of_a_year_changes_nothing_scored_in_it(returns):
    before = yearly(history(), returns)
    # T03, a bank, is re-described as a chip maker in a filing made public on 1 January 2018.
    after = yearly(retext(history(), "T03", "chip", "2018-01-01"), returns)
    scored = before.index.get_level_values("year")
    assert sorted(set(scored)) == [2017, 2018, 2019]  # 2015-16: no text known before them
    for year in (2017, 2018):
        pd.testing.assert_frame_equal(before.xs(year, level="year"), after.xs(year, level="year"))
    assert not before.xs(2019, level="year").loc["tfidf"].equals(after.xs(2019, level="year").loc["tfidf"])


def test_a_text_dated_before_the_year_does_change_its_scores(returns):
    before = yearly(history(), returns)
    after = yearly(retext(history(), "T03", "chip", "2017-12-31"), returns)
    pd.testing.assert_frame_equal(before.xs(2017, level="year"), after.xs(2017, level="year"))
    assert before.loc[("tfidf", 2018), "mc_cluster"] != after.loc[("tfidf", 2018), "mc_cluster"]


def test_codes_in_force_are_each_ticker_s_latest_known_before_the_day_or_its_undated_row():
    frame = pd.DataFrame({
        "ticker": ["A", "A", "A", "B", "C"],
        "known_by": pd.to_datetime(["2016-01-01", "2017-01-01", "2018-01-01", None, "2019-01-01"]),
        "gics_sub_industry": ["a16", "a17", "a18", "b", "c19"],
    })
    assert codes_as_of(frame, "2017-01-01").gics_sub_industry.to_dict() == {"A": "a16", "B": "b"}  # strictly before
    assert codes_as_of(frame, "2017-01-02").gics_sub_industry.to_dict() == {"A": "a17", "B": "b"}
    assert codes_as_of(frame, "2030-01-01").gics_sub_industry.to_dict() == {"A": "a18", "B": "b", "C": "c19"}


def test_a_code_changed_on_the_first_day_of_a_year_changes_nothing_scored_in_it_and_one_before_does(returns):
    texts = history()
    before = yearly(texts, returns)
    # T03, a bank, is reclassified as a chip maker on 1 January 2018: the clustering dated that day cannot see it.
    on_the_day = yearly(texts, returns, recoded(codes(texts), "T03", "chip", "2018-01-01"))
    for year in (2017, 2018):
        pd.testing.assert_frame_equal(before.xs(year, level="year"), on_the_day.xs(year, level="year"))
    assert before.loc[("gics_sub_industry", 2019), "mc_cluster"] != on_the_day.loc[("gics_sub_industry", 2019), "mc_cluster"]
    day_before = yearly(texts, returns, recoded(codes(texts), "T03", "chip", "2017-12-31"))
    assert before.loc[("gics_sub_industry", 2018), "mc_cluster"] != day_before.loc[("gics_sub_industry", 2018), "mc_cluster"]


def pairs_by_window(texts: pd.DataFrame, close: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    dated = clusterings_by_date(clusters(texts), "tfidf")
    config = PairsConfig(formation_days=126, trading_days=63, pvalue_max=0.2)
    result = walk_forward_pairs(close, dated, config)
    starts = result.window_summary.set_index("window").trading_start
    return result.pairs.join(starts, on="window"), result.window_summary


def test_a_text_dated_on_a_window_start_changes_no_pair_traded_before_it():
    close = daily_prices(seed=1)
    before, summary = pairs_by_window(history(), close)
    assert summary.clusters_as_of.min() == pd.Timestamp("2016-07-01")
    assert (summary.clusters_as_of <= summary.trading_start).all()
    cut = summary.trading_start.iloc[4]
    after, _ = pairs_by_window(retext(history(), "T03", "chip", str(cut.date())), close)
    early = lambda pairs: pairs[pairs.trading_start <= cut].reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(early(before), early(after))
    moved = lambda pairs: pairs[(pairs.a == "T03") | (pairs.b == "T03")]  # noqa: E731
    late_before, late_after = before[before.trading_start > cut], after[after.trading_start > cut]
    assert not moved(late_before).equals(moved(late_after))
