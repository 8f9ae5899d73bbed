"""Specification of the peer query (peerlens.query.peers) on a tiny storage folder laid out as the assets write it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from peerlens.layout import storage_root
from peerlens.query.peers import (
    MATERIALIZED_FILES,
    AssetsNotMaterializedError,
    PeerIndex,
    UnknownTickerError,
    explain_pair,
    peers,
)

TICKERS = ["AAPL", "BAC", "BRK-B", "CVX", "JPM", "WFC", "XOM"]
NAMES = {
    "AAPL": "Apple Inc.", "BAC": "Bank of America Corporation", "BRK-B": "Berkshire Hathaway Inc.",
    "CVX": "Chevron Corporation", "JPM": "JPMorgan Chase & Co.", "WFC": "Wells Fargo & Company",
    "XOM": "Exxon Mobil Corporation",
}


def planted_features() -> pd.DataFrame:
    """(7 companies x 6 latents), rows in TICKERS order. Latent 0 fires in every description
    (boilerplate: specificity weight ln(7/7) = 0); 1 banking (JPM, BAC, WFC), 2 oil (CVX, XOM),
    3 technology (AAPL, and a little in JPM), 4 cards (JPM, WFC), 5 insurance (BRK-B only)."""
    return pd.DataFrame(
        [
            # 0    1    2    3    4    5
            [1.0, 0.0, 0.0, 3.0, 0.0, 0.0],  # AAPL
            [1.0, 2.0, 0.0, 0.0, 0.0, 0.0],  # BAC
            [1.0, 0.0, 0.0, 0.0, 0.0, 2.0],  # BRK-B
            [1.0, 0.0, 2.0, 0.0, 0.0, 0.0],  # CVX
            [1.0, 2.0, 0.0, 0.5, 1.0, 0.0],  # JPM
            [1.0, 1.0, 0.0, 0.0, 1.0, 0.0],  # WFC
            [1.0, 0.0, 1.5, 0.0, 0.0, 0.0],  # XOM
        ],
        index=TICKERS,
    )


def weighted_cosine(a: str, b: str) -> float:
    """The similarity written out: weights ln(n / df), then the plain cosine."""
    features = planted_features()
    weights = np.log(len(features) / (features > 0).sum(axis=0))
    x, y = features.loc[a] * weights, features.loc[b] * weights
    return float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))


def write_storage(root: Path) -> Path:
    """The four files the peer query reads, in the layout the IO manager and the assets write."""
    features = planted_features()
    long = features.stack().rename("value").rename_axis(["ticker", "latent"]).reset_index()
    long = long[long["value"] > 0].astype({"latent": "int32"})
    clusters = pd.DataFrame(
        {
            "method": ["sae"] * 7 + ["sic4"] * 7,
            "ticker": TICKERS * 2,
            "cluster": [0, 1, 2, 3, 1, 1, 3] + [10, 11, 12, 13, 11, 14, 13],  # sic4 splits WFC off
        }
    )
    descriptions = pd.DataFrame(
        {"ticker": TICKERS, "cik": range(7), "name": [NAMES[t] for t in TICKERS], "description": "..."}
    )
    latent_descriptions = pd.DataFrame(
        {
            "latent": range(6),
            "top_tokens": [
                "…the «company» was…", "…commercial «banking» and…", "…crude «oil» and…",
                "…«smartphones» and…", "…credit «cards» for…", "…property and «casualty»…",
            ],
            "top_companies": ["AAPL, BAC", "JPM, BAC, WFC", "CVX, XOM", "AAPL, JPM", "JPM, WFC", "BRK-B"],
        }
    )
    frames = {
        "company_features": long,
        "company_clusters": clusters.assign(as_of=pd.Timestamp("2017-07-01")),
        "current_company_clusters": clusters.assign(as_of=pd.Timestamp("2017-05-21")),
        "company_descriptions": descriptions,
        "latent_descriptions": latent_descriptions,
    }
    for asset, relative in MATERIALIZED_FILES.items():
        write_table(root, asset, frames[asset])
    return root


def write_table(root: Path, asset: str, frame: pd.DataFrame) -> None:
    """`frame` where the IO manager puts `asset`: a file, or in a partitioned table's folder one file per as_of
    (clusters) or one day's file (company features)."""
    path = root / MATERIALIZED_FILES[asset]
    if path.suffix:
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(path, index=False)
        return
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    if "as_of" not in frame.columns:
        frame.to_parquet(path / "2017-05-18.parquet", index=False)
    for as_of, part in frame.groupby("as_of") if "as_of" in frame.columns else ():
        part.to_parquet(path / f"{as_of.date()}.parquet", index=False)


@pytest.fixture
def storage(tmp_path) -> Path:
    return write_storage(tmp_path / "store")


def test_peers_are_ranked_by_the_cosine_of_specificity_weighted_features(storage):
    result = PeerIndex.load(storage).peers("JPM", n=10)
    # WFC shares banking and cards, BAC banking only, AAPL a little technology; the oil companies
    # and BRK-B share only the boilerplate latent 0, which carries no weight (ties by ticker).
    assert [peer.ticker for peer in result.peers] == ["WFC", "BAC", "AAPL", "BRK-B", "CVX", "XOM"]
    for peer in result.peers:
        assert peer.similarity == pytest.approx(weighted_cosine("JPM", peer.ticker), abs=1e-12)
    assert result.ticker == "JPM" and result.name == "JPMorgan Chase & Co." and result.n_companies == 7
    assert [peer.ticker for peer in PeerIndex.load(storage).peers("JPM", n=2).peers] == ["WFC", "BAC"]


def test_shared_latents_are_the_largest_products_and_add_up_to_the_similarity(storage):
    wfc = PeerIndex.load(storage).peers("JPM", n=1, n_shared=10).peers[0]
    # Weighted JPM·WFC terms: cards ln(7/2)·ln(7/2) > banking 2·ln(7/3)·ln(7/3); boilerplate: 0.
    assert [latent.latent for latent in wfc.shared] == [4, 1]
    assert sum(latent.contribution for latent in wfc.shared) == pytest.approx(wfc.similarity, abs=1e-12)
    assert sum(latent.share for latent in wfc.shared) == pytest.approx(1.0)
    cards = wfc.shared[0]
    assert (cards.value_a, cards.value_b) == (1.0, 1.0)
    assert cards.top_tokens == "…credit «cards» for…" and cards.top_companies == "JPM, WFC"


def test_peers_with_nothing_specific_in_common_list_no_shared_latent(storage):
    xom = {peer.ticker: peer for peer in PeerIndex.load(storage).peers("JPM").peers}["XOM"]
    assert xom.similarity == 0.0 and xom.shared == ()


def test_explain_pair_gives_similarity_ranks_latents_and_clusters_per_method(storage):
    explanation = PeerIndex.load(storage).explain_pair("jpm", "bac", n_shared=5)
    assert (explanation.a, explanation.b) == ("JPM", "BAC")
    assert explanation.similarity == pytest.approx(weighted_cosine("JPM", "BAC"), abs=1e-12)
    assert explanation.rank_of_b == 2  # JPM's peers: WFC, BAC, ...
    assert explanation.rank_of_a == 1  # BAC's nearest company is JPM (WFC has cards BAC lacks)
    assert [latent.latent for latent in explanation.shared] == [1]
    assert explanation.shown_share == pytest.approx(1.0)
    memberships = {m.method: (m.cluster_a, m.cluster_b, m.same) for m in explanation.clusters}
    assert memberships == {"sae": (1, 1, True), "sic4": (11, 11, True)}
    wfc = PeerIndex.load(storage).explain_pair("JPM", "WFC")
    assert [(m.method, m.same) for m in wfc.clusters] == [("sae", True), ("sic4", False)]


def test_explain_pair_rejects_the_same_company_twice(storage):
    with pytest.raises(ValueError, match="two different companies"):
        PeerIndex.load(storage).explain_pair("JPM", "jpm")


def test_tickers_are_matched_without_case_and_with_a_dot_for_a_dash(storage):
    index = PeerIndex.load(storage)
    assert index.resolve("brk.b") == "BRK-B"
    assert index.peers("Brk/B", n=1).ticker == "BRK-B"


def test_an_unknown_ticker_suggests_close_tickers_and_matching_names(storage):
    index = PeerIndex.load(storage)
    with pytest.raises(UnknownTickerError, match=r"unknown ticker 'JMP'.*did you mean JPM") as error:
        index.peers("JMP")
    assert error.value.suggestions[0] == "JPM"
    with pytest.raises(UnknownTickerError) as by_name:
        index.explain_pair("JPM", "exxon")
    assert by_name.value.suggestions == ["XOM"]
    with pytest.raises(UnknownTickerError, match="not one of the 7 companies") as nothing:
        index.peers("ZZZZZZ")
    assert nothing.value.suggestions == []


def test_missing_assets_are_named_with_how_to_materialize_them(storage):
    (storage / MATERIALIZED_FILES["latent_descriptions"]).unlink()
    with pytest.raises(AssetsNotMaterializedError, match="latent_descriptions") as error:
        PeerIndex.load(storage)
    assert error.value.missing == ["latent_descriptions"]
    assert "make demo" in str(error.value)
    with pytest.raises(FileNotFoundError) as empty:
        PeerIndex.load(storage.parent / "never_materialized")
    assert empty.value.missing == list(MATERIALIZED_FILES)


def test_a_file_without_its_columns_is_an_error_naming_the_file(storage):
    pd.DataFrame({"ticker": ["JPM"]}).to_parquet(storage / MATERIALIZED_FILES["current_company_clusters"])
    with pytest.raises(ValueError, match=r"current_company_clusters\.parquet lacks columns \['as_of', 'method', 'cluster'\]"):
        PeerIndex.load(storage)


def test_storage_defaults_to_peerlens_home_then_the_working_folder(storage, monkeypatch, tmp_path):
    monkeypatch.setenv("PEERLENS_HOME", str(storage))
    assert storage_root() == storage.resolve()
    assert peers("JPM", n=1).peers[0].ticker == "WFC"
    assert explain_pair("JPM", "WFC").rank_of_b == 1
    assert storage_root(tmp_path) == tmp_path.resolve()  # an explicit folder wins
    monkeypatch.delenv("PEERLENS_HOME")
    monkeypatch.chdir(tmp_path)
    assert storage_root() == (tmp_path / ".peerlens").resolve()


def test_a_company_with_only_boilerplate_latents_cannot_be_queried(tmp_path):
    root = write_storage(tmp_path)
    path = root / MATERIALIZED_FILES["company_features"]
    features = pd.read_parquet(path)
    # BRK-B keeps only latent 0, which fires everywhere; its insurance latent now fires nowhere.
    write_table(root, "company_features", features[(features.ticker != "BRK-B") | (features.latent == 0)])
    index = PeerIndex.load(root)
    with pytest.raises(ValueError, match="BRK-B's active latents all fire in every company"):
        index.peers("BRK-B")
    assert index.peers("JPM").peers[-1].similarity == 0.0


def test_as_of_a_date_each_company_is_its_latest_text_then_and_the_clusters_are_those_dated_before(tmp_path):
    """WFC's 2019 filing re-describes it as an oil company: before 2019 its peers are banks, after, oil."""
    storage = write_storage(tmp_path / "dated")
    features = pd.read_parquet(storage / MATERIALIZED_FILES["company_features"])
    features = features.assign(text_id=features.ticker + "|2017")
    refiled = pd.DataFrame({"ticker": "WFC", "latent": [0, 2], "value": [1.0, 3.0], "text_id": "WFC|2019"})
    write_table(storage, "company_features", pd.concat([features, refiled.astype({"latent": "int32"})]))
    texts = pd.read_parquet(storage / MATERIALIZED_FILES["company_descriptions"])
    texts = texts.assign(text_id=texts.ticker + "|2017", known_by=pd.Timestamp("2017-05-18"), source="2017",
                         company_id=texts.ticker)
    wfc_2019 = texts[texts.ticker == "WFC"].assign(text_id="WFC|2019", known_by=pd.Timestamp("2019-03-01"), source="2019")
    pd.concat([texts, wfc_2019]).to_parquet(storage / MATERIALIZED_FILES["company_descriptions"])
    clusters = pd.read_parquet(storage / MATERIALIZED_FILES["current_company_clusters"])
    later = clusters.assign(cluster=clusters.cluster.where(clusters.ticker != "WFC", 3))  # WFC with the oil cluster
    dated = pd.concat([clusters.assign(as_of=pd.Timestamp("2018-01-01")), later.assign(as_of=pd.Timestamp("2020-01-01"))])
    write_table(storage, "company_clusters", dated)
    write_table(storage, "current_company_clusters", later.assign(as_of=pd.Timestamp("2019-03-02")))

    then = PeerIndex.load(storage, as_of="2018-06-30")
    assert then.peers("WFC", n=2).peers[0].ticker == "JPM"
    assert set(then.clusters.as_of) == {pd.Timestamp("2018-01-01")}
    today = PeerIndex.load(storage)
    assert {peer.ticker for peer in today.peers("WFC", n=2).peers} == {"CVX", "XOM"}
    assert set(today.clusters.as_of) == {pd.Timestamp("2019-03-02")}  # today's: current_company_clusters
    with pytest.raises(ValueError, match="empty as of 2017-01-01"):
        PeerIndex.load(storage, as_of="2017-01-01")
