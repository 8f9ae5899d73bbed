"""company_descriptions with refresh_from_edgar: the 10-K's Item 1 becomes a new text beside the sample's, and stays."""

from pathlib import Path

import pandas as pd
from dagster import materialize

from assets.sources import company_descriptions
from definitions import resources_from_environment
from peerlens.sources.edgar import EdgarClient, Filing
from peerlens.sources.sample import default_sample_dir
from resources import ArtifactStorage, EdgarResource, TableIOManager

APPLE_10K = Path(default_sample_dir()) / "edgar" / "10k" / "aapl-10-k-2024-11-01.html"
APPLE_FILING = Filing(320193, "0000320193-24-000123", "10-K", "2024-11-01", "2024-09-28", "aapl-20240928.htm")


def run(tmp_path, refresh: list[str]):
    resources = {
        **resources_from_environment(),
        "io_manager": TableIOManager(root=str(tmp_path)),
        "artifacts": ArtifactStorage(root=str(tmp_path)),
        "edgar": EdgarResource(user_agent="PeerLens Test test@example.com"),
    }
    config = {"ops": {"company_descriptions": {"config": {"tickers": ["AAPL", "MSFT"], "refresh_from_edgar": refresh}}}}
    result = materialize([company_descriptions], resources=resources, run_config=config)
    return pd.read_parquet(tmp_path / "tables" / "company_descriptions.parquet"), result


def test_a_refreshed_company_gets_its_10k_item1_as_a_new_dated_text_and_keeps_it_in_later_runs(tmp_path, monkeypatch):
    fetched = []
    monkeypatch.setattr(EdgarClient, "latest_10k", lambda self, cik: fetched.append(cik) or APPLE_FILING)
    monkeypatch.setattr(EdgarClient, "get_text", lambda self, url: APPLE_10K.read_text(errors="replace"))

    refreshed, result = run(tmp_path, refresh=["aapl"])
    assert fetched == [320193]
    apple = refreshed[refreshed.ticker == "AAPL"].set_index("source")
    # The vendor text of May 2017 stays; the 10-K is a second text, dated by its filing.
    assert list(apple.index) == ["yf@sp500_2017", "edgar:0000320193-24-000123"]
    assert apple.known_by.tolist() == [pd.Timestamp("2017-05-18"), pd.Timestamp("2024-11-01")]
    assert "iPhone" in apple.at["edgar:0000320193-24-000123", "description"]
    assert apple.company_id.nunique() == 1
    assert (refreshed[refreshed.ticker == "MSFT"].source == "yf@sp500_2017").all()
    metadata = result.asset_materializations_for_node("company_descriptions")[0].metadata
    assert metadata["rule/texts_from_edgar"].value == 1 and metadata["rule/edgar_texts_added"].value == 1

    fetched.clear()
    later, _ = run(tmp_path, refresh=[])
    assert fetched == []
    pd.testing.assert_frame_equal(later, refreshed)
    again, _ = run(tmp_path, refresh=["AAPL"])  # the same filing fetched again adds nothing
    pd.testing.assert_frame_equal(again, refreshed)
