"""TableIOManager: parquet for frames, JSON for reports, one file per partition, nothing half-written."""

import json

import pandas as pd
import pytest
from dagster import AssetKey, build_input_context, build_output_context

from resources.storage import TableIOManager
from sae_core.staging import find_leftovers


def output_context(name: str, partition_keys: list[str] | None = None):
    if partition_keys is None:
        return build_output_context(asset_key=AssetKey(name))
    from dagster import StaticPartitionsDefinition

    # build_output_context takes one partition key; several keys are what a single-run backfill sees.
    context = build_output_context(
        asset_key=AssetKey(name),
        partition_key=partition_keys[0],
        asset_partitions_def=StaticPartitionsDefinition(partition_keys),
    )
    return context


def test_frames_round_trip_as_parquet_and_dicts_as_json(tmp_path):
    manager = TableIOManager(root=str(tmp_path))
    frame = pd.DataFrame({"ticker": ["A", "B"], "value": [1.5, 2.5]})
    manager.handle_output(output_context("table"), frame)
    manager.handle_output(output_context("report"), {"chosen_g": 4, "groups": [[0], [1, 2]]})

    assert (tmp_path / "tables" / "table.parquet").exists()
    assert json.loads((tmp_path / "tables" / "report.json").read_text())["chosen_g"] == 4
    pd.testing.assert_frame_equal(manager.load_input(build_input_context(asset_key=AssetKey("table"))), frame)
    assert manager.load_input(build_input_context(asset_key=AssetKey("report")))["groups"] == [[0], [1, 2]]
    assert find_leftovers(tmp_path) == []


def test_a_typed_result_is_stored_as_json_and_read_back_as_the_type_the_reader_declares(tmp_path):
    from dagster import DagsterType

    from tests.sae_core.test_sae_comparison import regimes

    manager = TableIOManager(root=str(tmp_path))
    saes = regimes()["group"]
    manager.handle_output(output_context("group_saes"), saes)
    assert json.loads((tmp_path / "tables" / "group_saes.json").read_text())["saes"][0]["layers"] == [0, 1, 2]
    typed = DagsterType(lambda _, value: True, name="SaeSet", typing_type=type(saes))
    assert manager.load_input(build_input_context(asset_key=AssetKey("group_saes"), dagster_type=typed)) == saes
    assert manager.load_input(build_input_context(asset_key=AssetKey("group_saes")))["holdout_share"] == 0.1


def test_one_partition_is_written_to_its_own_file(tmp_path):
    manager = TableIOManager(root=str(tmp_path))
    frame = pd.DataFrame({"month": ["2014-01"], "log_return": [0.01]})
    manager.handle_output(output_context("monthly", ["2014-01-01"]), frame)
    assert (tmp_path / "tables" / "monthly" / "2014-01-01.parquet").exists()


def test_loading_an_asset_that_was_never_materialized_names_it(tmp_path):
    manager = TableIOManager(root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="never_built is not materialized"):
        manager.load_input(build_input_context(asset_key=AssetKey("never_built")))


def test_objects_that_are_not_tables_or_reports_are_refused_and_nothing_is_written(tmp_path):
    manager = TableIOManager(root=str(tmp_path))
    with pytest.raises(TypeError, match="not set"):
        manager.handle_output(output_context("odd"), {1, 2})
    assert not list(tmp_path.rglob("*odd*"))


def test_a_failed_write_keeps_the_previous_table(tmp_path, monkeypatch):
    manager = TableIOManager(root=str(tmp_path))
    old = pd.DataFrame({"x": [1]})
    manager.handle_output(output_context("kept"), old)

    def broken_to_parquet(self, path, **kwargs):
        open(path, "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", broken_to_parquet)
    with pytest.raises(OSError, match="disk full"):
        manager.handle_output(output_context("kept"), pd.DataFrame({"x": [2]}))
    monkeypatch.undo()
    assert find_leftovers(tmp_path) == []
    pd.testing.assert_frame_equal(manager.load_input(build_input_context(asset_key=AssetKey("kept"))), old)


def test_an_asset_reading_a_typed_result_gets_the_type_its_parameter_names(tmp_path):
    from dagster import asset, materialize

    from sae_core.sae_set import SaeSet
    from tests.sae_core.test_sae_comparison import regimes

    @asset
    def trained() -> SaeSet:
        return regimes()["per_layer"]

    @asset
    def reader(trained: SaeSet) -> dict:
        assert isinstance(trained, SaeSet)
        return {"layers": trained.layers_served}

    result = materialize([trained, reader], resources={"io_manager": TableIOManager(root=str(tmp_path))})
    assert result.success and result.output_for_node("reader") == {"layers": [0, 1, 2]}
