"""Your own universe (peerlens.sources.universe): the worked example loads, and every bad file is an error that
names the file, the row and the column."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from peerlens.similarity.methods import ClusteringConfig, cluster_count_without_codes, cluster_every_method
from peerlens.similarity.point_in_time import codes_as_of
from peerlens.sources.universe import (
    UniverseError,
    load_universe_companies,
    load_universe_prices,
    universe_industry_codes,
    universe_months_window,
)

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "universe"
HEADER = "id,ticker,name,description,known_by"


def universe(tmp_path, companies: str | bytes, prices: str | None = None) -> Path:
    folder = tmp_path / "universe"
    folder.mkdir()
    data = companies.encode() if isinstance(companies, str) else companies
    (folder / "companies.csv").write_bytes(data)
    if prices is not None:
        (folder / "prices.csv").write_text(prices)
    return folder


def error_of(load, folder) -> str:
    with pytest.raises(UniverseError) as raised:
        load(folder)
    return str(raised.value)


def test_the_worked_example_loads_as_a_text_history_with_its_codes_and_prices():
    loaded = load_universe_companies(EXAMPLE)
    texts = loaded.frame
    assert loaded.rule_counts["texts"] == 14 and loaded.rule_counts["companies"] == 13
    # The CIK is the id where it is given; your own id otherwise.
    jpm = texts[texts.ticker == "JPM"]
    assert set(jpm.company_id) == {"cik:19617"} and list(jpm.source) == ["10-K 2014", "10-K 2015"]
    assert texts.set_index("ticker").at["BAC", "company_id"] == "id:bofa"
    assert texts.set_index("ticker").at["BAC", "source"] == "companies@2015-02-25"
    assert texts.text_id.is_unique and texts.known_by.dtype == "datetime64[ns]"

    codes = universe_industry_codes(texts, texts.drop_duplicates("ticker")[["ticker", "cik"]]).frame.set_index("ticker")
    assert codes.at["DAL", "sic_division"] == "E: Transportation & Public Utilities"
    assert pd.isna(codes.at["DAL", "gics_sub_industry"]) and pd.isna(codes.at["WFC", "sic4"])
    assert codes.at["XOM", "gics_sub_industry"] == "Integrated Oil & Gas"

    prices = load_universe_prices(EXAMPLE)
    assert prices.ticker.nunique() == 12 and "NWFR" not in set(prices.ticker)
    assert prices.open.isna().all() and (prices.volume == 0).all()
    assert universe_months_window(EXAMPLE) == ("2015-02-01", "2018-01-01")


def test_codes_are_dated_by_the_texts_that_carry_them_and_a_clustering_uses_those_known_before_its_date(tmp_path):
    rows = ["acme,ACME,Acme,Makes anvils.,2015-03-01,Steel", "acme,ACME,Acme,Makes apps.,2019-03-01,Software",
            "bolt,BOLT,Bolt,Makes bolts.,2015-03-01,"]
    texts = load_universe_companies(universe(tmp_path, f"{HEADER},gics_sub_industry\n" + "\n".join(rows) + "\n")).frame
    loaded = universe_industry_codes(texts, texts.drop_duplicates("ticker", keep="last")[["ticker", "cik"]])
    frame = loaded.frame
    assert frame.ticker.tolist() == ["ACME", "ACME", "BOLT"]
    assert frame.known_by.dt.strftime("%Y-%m-%d").tolist() == ["2015-03-01", "2019-03-01", "2015-03-01"]
    assert frame.gics_sub_industry.fillna("none").tolist() == ["Steel", "Software", "none"]
    assert loaded.rule_counts["tickers_whose_codes_change"] == 1 and loaded.rule_counts["gics_missing"] == 1
    assert codes_as_of(loaded.frame, "2019-01-01").at["ACME", "gics_sub_industry"] == "Steel"
    assert codes_as_of(loaded.frame, "2019-07-01").at["ACME", "gics_sub_industry"] == "Software"


def test_a_parquet_universe_reads_as_its_csv_does(tmp_path):
    folder = tmp_path / "universe"
    folder.mkdir()
    frame = pd.read_csv(EXAMPLE / "companies.csv", dtype={"sic": str})
    frame["known_by"] = pd.to_datetime(frame.known_by)
    frame["cik"] = frame.cik.astype("Int64")
    frame.to_parquet(folder / "companies.parquet")
    shutil.copy(EXAMPLE / "prices.parquet", folder)
    pd.testing.assert_frame_equal(load_universe_companies(folder).frame, load_universe_companies(EXAMPLE).frame,
                                  check_like=False, check_dtype=False)


def test_the_window_is_read_from_the_dates_of_a_csv_prices_file(tmp_path):
    prices = "date,ticker,close,volume\n2019-12-31,ACME,10,5\n2021-06-30,ACME,11,\n2020-05-04,ACME,12,7\n"
    folder = universe(tmp_path, f"{HEADER}\nacme,ACME,Acme,Makes anvils.,2021-03-15\n", prices)
    assert universe_months_window(folder) == ("2020-01-01", "2021-07-01")


@pytest.mark.parametrize(
    "prices, problem",
    [
        ("date,ticker,close\n2020-01-02,ACME,10\n02/01/2020,ACME,11\n", "column 'date': not a YYYY-MM-DD date in row 2"),
        ("date,ticker,close\n2020-01-02,ACME,10\n ,ACME,11\n", "column 'date': empty value"),
        ("day,ticker,close\n2020-01-02,ACME,10\n", "column 'date' is missing; column 'day' is not a known column"),
        ("date,ticker,close\n", "no rows"),
    ],
)
def test_a_prices_file_whose_dates_cannot_give_the_window_is_named(tmp_path, prices, problem):
    folder = universe(tmp_path, f"{HEADER}\nacme,ACME,Acme,Makes anvils.,2021-03-15\n", prices)
    message = error_of(universe_months_window, folder)
    assert "prices.csv" in message and problem in message, message


def test_without_a_prices_file_the_window_follows_the_texts_to_today(tmp_path):
    folder = universe(tmp_path, f"{HEADER}\nacme,ACME,Acme,Makes anvils.,2021-03-15\n")
    assert load_universe_prices(folder) is None
    assert universe_months_window(folder) == ("2021-04-01", "")


@pytest.mark.parametrize(
    "header, expected",
    [
        ("id,ticker,name,description,knownby", "column 'known_by' is missing (did you mean 'knownby'?)"),
        ("id,ticker,name,description,known_by,gics_subindustry",
         "column 'gics_subindustry' is not a known column (did you mean 'gics_sub_industry'?)"),
        ("id,ticker,name,description,known_by,known_by", "column 'known_by' appears twice"),
    ],
)
def test_a_missing_misnamed_or_repeated_column_is_named_with_the_nearest_known_one(tmp_path, header, expected):
    row = "acme,ACME,Acme,Makes anvils.,2021-03-15" + (",x" if header.count(",") == 5 else "")
    message = error_of(load_universe_companies, universe(tmp_path, f"{header}\n{row}\n"))
    assert "companies.csv" in message and expected in message


@pytest.mark.parametrize(
    "rows, column, problem, row_numbers",
    [
        (["a,A,Acme,Anvils.,2021-03-15", "b,B,Bolt,Bolts.,15/03/2021"], "known_by", "not a YYYY-MM-DD date", ["row 2 ('15/03/2021')"]),
        (["a,A,Acme,Anvils.,2021-03-15", "b,B,Bolt,Bolts.,"], "known_by", "empty", ["row 2"]),
        (["a,A,Acme,   ,2021-03-15"], "description", "empty value", ["row 1"]),
        (["a,A,Acme,Anvils.,2021-03-15", "b,B,Bolt,,2021-03-15"], "description", "empty value", ["row 2"]),
        (["a,A,Acme,Anvils.,2021-03-15", "b,B,Bolt,<p>&nbsp;</p>,2021-03-15"], "description", "or markup", ["row 2"]),
        (["a,A,Acme,Anvils.,2021-03-15", "b,,Bolt,Bolts.,2021-03-15"], "ticker", "empty", ["row 2"]),
        (["a,A,Acme,Anvils.,2021-03-15", "b,B B,Bolt,Bolts.,2021-03-15"], "ticker", "not a ticker", ["row 2 ('B B')"]),
        (["a,A,Acme,Anvils.,2021-03-15", "b,<b>B</b>,Bolt,Bolts.,2021-03-15"], "ticker", "not a ticker", ["row 2 ('<b>B</b>')"]),
        # The same row twice, and one company given two texts on one day without a source to tell them apart.
        (["a,A,Acme,Anvils.,2021-03-15", "a,A,Acme,Anvils.,2021-03-15"], "id", "more than one row", ["row 1", "row 2"]),
        (["a,A,Acme,Anvils.,2021-03-15", "b,B,Bolt,Bolts.,2021-03-15", "a,A,Acme,Anvils and more.,2021-03-15"],
         "id", "more than one row", ["row 1", "row 3"]),
        # Two companies on one ticker the same day: the returns could not tell them apart.
        (["a,A,Acme,Anvils.,2021-03-15", "b,A,Bolt,Bolts.,2021-03-15"], "ticker", "different ids on the same", ["row 1", "row 2"]),
    ],
)
def test_a_bad_value_is_named_by_file_row_and_column(tmp_path, rows, column, problem, row_numbers):
    message = error_of(load_universe_companies, universe(tmp_path, HEADER + "\n" + "\n".join(rows) + "\n"))
    assert f"companies.csv column {column!r}" in message and problem in message
    assert all(row in message for row in row_numbers), message


@pytest.mark.parametrize(
    "rows, column, problem",
    [
        (["a,A,Acme,Anvils.,2021-03-15,12", "a,A,Acme,Anvils v2.,2022-03-15,13"], "cik", "one id with different CIKs"),
        (["a,A,Acme,Anvils.,2021-03-15,12", "b,B,Bolt,Bolts.,2021-03-15,12"], "id", "one CIK under different ids"),
        (["a,A,Acme,Anvils.,2021-03-15,-4"], "cik", "not a positive integer"),
    ],
)
def test_conflicting_company_ids_are_errors(tmp_path, rows, column, problem):
    message = error_of(load_universe_companies, universe(tmp_path, HEADER + ",cik\n" + "\n".join(rows) + "\n"))
    assert f"column {column!r}" in message and problem in message


def test_a_cik_written_as_edgar_writes_it_with_leading_zeros_is_the_same_company(tmp_path):
    loaded = load_universe_companies(universe(
        tmp_path, f"{HEADER},cik\na,AAPL,Apple,Phones.,2021-03-15,0000320193\na,AAPL,Apple,Phones v2.,2022-03-15,320193\n"
    ))
    assert set(loaded.frame.company_id) == {"cik:320193"} and loaded.frame.cik.tolist() == [320193, 320193]


@pytest.mark.parametrize("cik", ["0", "0000", "3.2e5", "CIK320193"])
def test_a_cik_that_is_not_a_positive_integer_is_named(tmp_path, cik):
    message = error_of(load_universe_companies, universe(tmp_path, f"{HEADER},cik\na,A,Acme,Anvils.,2021-03-15,{cik}\n"))
    assert "column 'cik': not a positive integer in row 1" in message and cik in message


def test_a_ticker_reused_by_another_company_later_is_kept_and_counted(tmp_path):
    loaded = load_universe_companies(
        universe(tmp_path, f"{HEADER}\nold,ABC,Old Co,Made carts.,2015-03-01\nnew,ABC,New Co,Makes apps.,2020-03-01\n")
    )
    assert loaded.rule_counts["tickers_reused_by_another_id"] == 1
    assert loaded.affected_tickers["tickers_reused_by_another_id"] == ["ABC"]
    assert set(loaded.frame.company_id) == {"id:old", "id:new"}


def test_a_file_that_is_not_utf8_names_its_line(tmp_path):
    companies = f"{HEADER}\na,A,Acme,Anvils.,2021-03-15\nb,B,Soci\xe9t\xe9 B,Bolts.,2021-03-15\n".encode("latin-1")
    message = error_of(load_universe_companies, universe(tmp_path, companies))
    assert "companies.csv line 3: not UTF-8" in message


@pytest.mark.parametrize("content", ["", HEADER + "\n"])
def test_an_empty_file_is_an_error_not_an_empty_universe(tmp_path, content):
    message = error_of(load_universe_companies, universe(tmp_path, content))
    assert "companies.csv" in message


def test_a_folder_without_companies_or_with_both_formats_is_named(tmp_path):
    assert "no companies.csv or companies.parquet" in error_of(load_universe_companies, tmp_path)
    assert "does not exist" in error_of(load_universe_companies, tmp_path / "nowhere")
    folder = universe(tmp_path, f"{HEADER}\na,A,Acme,Anvils.,2021-03-15\n")
    (folder / "companies.parquet").write_bytes(b"")
    assert "holds both companies.csv and companies.parquet" in error_of(load_universe_companies, folder)


def test_markup_and_other_languages_in_a_description_are_kept_as_text(tmp_path):
    description = '"<b>Fabrique</b> des enclumes; [site](javascript:alert(1)) 鉄床を作る"'
    loaded = load_universe_companies(universe(tmp_path, f"{HEADER}\na,A,Acme,{description},2021-03-15\n"))
    assert loaded.frame.description[0] == description.strip('"')


COMPANY = f"{HEADER}\na,A,Acme,Anvils.,2015-03-01\n"


@pytest.mark.parametrize(
    "prices, column, problem",
    [
        ("date,ticker,close\n2015-03-02,A,10\n2015-03-03,A,ten\n", "close", "row 2 ('ten')"),
        ("date,ticker,close\n2015-03-02,A,10\n03/03/2015,A,11\n", "date", "not a YYYY-MM-DD date in row 2"),
        ("date,ticker,close\n2015-03-02,A,10\n2015-03-02,A,11\n", "date", "the same (ticker, date) on more than one row in row 1 ('2015-03-02'), row 2"),
        ("date,ticker,price\n2015-03-02,A,10\n", "close", "is missing; column 'price' is not a known column"),
    ],
)
def test_bad_prices_are_named_by_file_row_and_column(tmp_path, prices, column, problem):
    message = error_of(load_universe_prices, universe(tmp_path, COMPANY, prices))
    assert "prices.csv" in message and problem in message and repr(column) in message


def test_missing_zero_and_negative_closes_reach_price_cleaning_which_counts_them(tmp_path):
    from peerlens.sources.returns import clean_daily_prices

    prices = "date,ticker,close\n2015-03-02,A,10\n2015-03-03,A,\n2015-03-04,A,0\n2015-03-05,A,-3\n2015-03-06,A,NaN\n"
    loaded = load_universe_prices(universe(tmp_path, COMPANY, prices))
    counts = clean_daily_prices(loaded).rule_counts
    assert counts["null_close_dropped"] == 2 and counts["nonpositive_close_dropped"] == 2 and counts["rows_out"] == 1


def test_without_any_reference_code_feature_methods_are_cut_to_one_cluster_per_four_companies():
    # Three tight groups of four on a line: the tree cut to 12 / 4 = 3 clusters finds them.
    positions = np.repeat([0.0, 10.0, 20.0], 4) + np.tile([0.0, 0.1, 0.2, 0.3], 3)
    distances = np.abs(positions[:, None] - positions[None, :])
    tickers = [f"T{i}" for i in range(12)]
    codes = pd.DataFrame({column: pd.Series([pd.NA] * 12, dtype="string") for column in
                          ("sic4", "sic2", "sic_division", "gics_sector", "gics_sub_industry")}, index=tickers)
    frame = cluster_every_method(tickers, {"sae": distances}, codes, ClusteringConfig()).frame
    sae = frame[frame.method == "sae"].cluster.to_numpy()
    assert cluster_count_without_codes(12) == 3 and list(sae) == [0] * 4 + [1] * 4 + [2] * 4
    random_sizes = sorted(frame[frame.method == "random"].groupby("cluster").size())
    assert random_sizes == [4, 4, 4]


def materialize_descriptions(folder: Path, storage: Path, raise_on_error: bool = True):
    """company_descriptions on the universe in `folder`, stored under `storage`."""
    from dagster import materialize

    from assets.sources import company_descriptions
    from definitions import resources_from_environment
    from resources import ArtifactStorage, TableIOManager, UniverseResource

    resources = {**resources_from_environment(), "company_data": UniverseResource(path=str(folder)),
                 "io_manager": TableIOManager(root=str(storage)), "artifacts": ArtifactStorage(root=str(storage))}
    return materialize([company_descriptions], resources=resources, raise_on_error=raise_on_error)


def test_a_company_whose_closes_are_all_missing_or_not_positive_is_excluded_and_counted(tmp_path):
    rows = "\n".join(f"{t.lower()},{t},{t} Inc,Makes {t}.,2015-03-01" for t in ("A", "B", "C"))
    prices = "date,ticker,close\n2015-03-02,A,10\n2015-03-02,B,0\n2015-03-03,B,\n"
    result = materialize_descriptions(universe(tmp_path, f"{HEADER}\n{rows}\n", prices), tmp_path / "home")
    metadata = result.asset_materializations_for_node("company_descriptions")[0].metadata
    assert metadata["rule/excluded_without_prices"].value == 2
    assert metadata["excluded_without_prices_tickers"].value == "B, C"


def test_a_universe_file_gone_bad_fails_the_step_naming_it_and_keeps_the_stored_texts(tmp_path):
    folder = universe(tmp_path, f"{HEADER}\na,A,Acme,Anvils.,2015-03-01\nb,B,Bolt,Bolts.,2015-03-01\n")
    home = tmp_path / "home"
    assert materialize_descriptions(folder, home).success
    stored = {path: path.read_bytes() for path in home.rglob("*") if path.is_file()}

    (folder / "companies.csv").write_text(f"{HEADER}\na,A,Acme,Anvils.,2015-03-01\nb,B,Bolt,Bolts.,1 March 2015\n")
    result = materialize_descriptions(folder, home, raise_on_error=False)
    assert not result.success
    message = result.failure_data_for_node("company_descriptions").error.cause.message
    assert "companies.csv column 'known_by': not a YYYY-MM-DD date in row 2 ('1 March 2015')" in message
    assert {path: path.read_bytes() for path in home.rglob("*") if path.is_file()} == stored
