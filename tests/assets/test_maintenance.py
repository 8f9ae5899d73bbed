"""The storage cleanup job (assets.maintenance): `peerlens clean` inside Dagster, reported in its step's metadata."""

import subprocess
import sys

import pytest

from assets.maintenance import StorageCleanupConfig, storage_cleanup
from definitions import defs
from resources import ArtifactStorage
from sae_core.staging import find_leftovers, staged_sibling
from tests.sae_core.test_staging import named_by, write


def run_cleanup(root, **config):
    result = storage_cleanup.execute_in_process(
        resources={"artifacts": ArtifactStorage(root=str(root))},
        run_config={"ops": {"clean_storage_leftovers": {"config": StorageCleanupConfig(**config).model_dump()}}},
    )
    [output] = [event for event in result.all_events if event.event_type_value == "STEP_OUTPUT"]
    return result, {key: value.value for key, value in output.event_specific_data.metadata.items()}


@pytest.fixture
def storage(tmp_path):
    """A storage root with a published table, a gone writer's 1 MiB staging of it and a running writer's staging."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    table = write(tmp_path / "tables" / "scores.parquet", text="published")
    write(named_by(table, "tmp", int(gone.stdout)), text="x" * 2**20)
    write(staged_sibling(tmp_path / "tables" / "live.parquet"))
    return tmp_path


def test_the_job_removes_what_a_gone_writer_left_keeps_a_running_one_s_and_says_so(storage):
    result, metadata = run_cleanup(storage)
    assert result.success
    assert (metadata["removed"], metadata["removed_mib"], metadata["restored"], metadata["kept"]) == (1, 1.0, 0, 1)
    assert "| remove   | staged |" in metadata["leftovers"] and "| keep     | staged |" in metadata["leftovers"]
    assert [leftover.writer.value for leftover in find_leftovers(storage)] == ["running"]
    assert (storage / "tables" / "scores.parquet").read_text() == "published"


def test_a_dry_run_reports_and_changes_nothing(storage):
    before = find_leftovers(storage)
    _, metadata = run_cleanup(storage, dry_run=True)
    assert metadata["dry_run"] is True and metadata["removed"] == 1
    assert [leftover.path for leftover in find_leftovers(storage)] == [leftover.path for leftover in before]


def test_a_stale_age_that_is_not_positive_is_refused_by_the_config():
    with pytest.raises(ValueError, match="stale_after_hours"):
        StorageCleanupConfig(stale_after_hours=0)


def test_the_job_and_its_weekly_schedule_are_registered_and_the_schedule_starts_stopped():
    from dagster import DefaultScheduleStatus

    schedule = defs.resolve_schedule_def("weekly_storage_cleanup")
    assert schedule.job_name == "storage_cleanup" and schedule.cron_schedule == "0 5 * * 0"
    assert schedule.default_status == DefaultScheduleStatus.STOPPED
    assert defs.resolve_job_def("storage_cleanup") is not None
