"""Bad input at the asset level: a clear error naming the input, and nothing already stored lost."""

import pandas as pd
from dagster import AssetSpec, DagsterInstance, materialize

from assets.activations import llm_activations
from assets.partitions import TEXT_DATES
from assets.sources import company_descriptions, daily_prices
from definitions import resources_from_environment
from resources import ArtifactStorage, LanguageModelResource, SampleDataResource, TableIOManager


def resources(tmp_path, **overrides):
    return {
        **resources_from_environment(),
        "io_manager": TableIOManager(root=str(tmp_path)),
        "artifacts": ArtifactStorage(root=str(tmp_path)),
        **overrides,
    }


def test_a_missing_sample_folder_fails_naming_the_folder_and_the_override(tmp_path):
    missing = tmp_path / "no-such-sample"
    result = materialize(
        [daily_prices],
        resources=resources(tmp_path, company_data=SampleDataResource(path=str(missing))),
        raise_on_error=False,
    )
    assert not result.success
    message = result.failure_data_for_node("daily_prices").error.cause.message
    assert str(missing) in message and "PEERLENS_SAMPLE_DIR" in message


def test_an_unknown_ticker_in_the_universe_config_is_an_error_not_a_smaller_universe(tmp_path):
    result = materialize(
        [company_descriptions],
        resources=resources(tmp_path),
        run_config={"ops": {"company_descriptions": {"config": {"tickers": ["JPM", "NOPE"]}}}},
        raise_on_error=False,
    )
    assert not result.success
    assert "NOPE" in result.failure_data_for_node("company_descriptions").error.cause.message


def test_an_unknown_model_fails_naming_it_and_keeps_the_stored_activations(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "tables" / "daily_texts").mkdir(parents=True)
    pd.DataFrame(
        {"text_id": ["ticker:A|s"], "company_id": ["ticker:A"], "ticker": ["A"], "description": ["Makes widgets."],
         "known_by": pd.to_datetime(["2017-05-18"])}
    ).to_parquet(tmp_path / "tables" / "daily_texts" / "2017-05-18.parquet")
    previous = tmp_path / "artifacts" / "llm_activations" / "2017-05-18" / "store.json"
    previous.parent.mkdir(parents=True)
    previous.write_text('{"n_layers": 30}')

    with DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(TEXT_DATES.name, ["2017-05-18"])
        result = materialize(
            [AssetSpec("daily_texts", partitions_def=TEXT_DATES), llm_activations],
            resources=resources(tmp_path, language_model=LanguageModelResource(name="no-such-org/no-such-model")),
            selection=["llm_activations"],
            partition_key="2017-05-18",
            instance=instance,
            raise_on_error=False,
        )
    assert not result.success
    assert "no-such-org/no-such-model" in result.failure_data_for_node("llm_activations").error.cause.message
    assert previous.read_text() == '{"n_layers": 30}'


def test_a_missing_invisible_or_undated_text_fails_the_blocking_check_naming_the_text():
    from assets.sources import descriptions_are_unique_and_non_empty

    frame = pd.DataFrame(
        {
            "text_id": ["AMZN|s", "DAL|s", "OMC|s", "MMC|s"],
            "description": ["Sells things.", float("nan"), "\u200b\u200b", " "],
            "known_by": pd.to_datetime(["2017-05-18"] * 4),
        }
    )
    result = descriptions_are_unique_and_non_empty(frame)
    assert not result.passed
    assert result.metadata["empty"].value == "DAL|s, OMC|s, MMC|s"
    undated = descriptions_are_unique_and_non_empty(frame.assign(description="x", known_by=[pd.NaT] * 4))
    assert not undated.passed and undated.metadata["undated"].value.startswith("AMZN|s")
