"""Maintenance: the cleanup of what killed writers left in the storage root, as a job with a weekly schedule.

It is `peerlens clean` inside Dagster (`sae_core.staging`): the staging of a writer that is gone goes, a folder a
killed replace left missing is put back, and a running writer's staging is kept. Each run says what it did in
its step's metadata, so a crashed capture's gigabytes do not fill the disk unseen.
"""

import pandas as pd
from dagster import (
    Config,
    DefaultScheduleStatus,
    Nothing,
    OpExecutionContext,
    Out,
    Output,
    job,
    op,
    schedule,
)
from pydantic import Field

from assets.metadata import markdown_table
from peerlens.working_copy import storage_copy
from resources import ArtifactStorage
from sae_core.staging import STALE_AFTER_SECONDS, clean_leftovers, plan_rows, plan_totals


class StorageCleanupConfig(Config):
    stale_after_hours: float = Field(
        default=STALE_AFTER_SECONDS / 3600,
        gt=0,
        description="A leftover whose writer cannot be asked (another host, an old name) goes once untouched this long.",
    )
    dry_run: bool = Field(default=False, description="Report what would be done; change nothing.")


@op(out=Out(Nothing))
def clean_storage_leftovers(context: OpExecutionContext, config: StorageCleanupConfig, artifacts: ArtifactStorage):
    """Remove (or put back) what killed writers left under the storage root's working copy on this machine."""
    root = storage_copy(artifacts.root).local
    plan = clean_leftovers(root, config.stale_after_hours * 3600, config.dry_run) if root.is_dir() else []
    totals = plan_totals(plan)
    context.log.info(f"{'would remove' if config.dry_run else 'removed'} {totals['removed']} "
                     f"({totals['removed_mib']:.1f} MiB), restored {totals['restored']}, kept {totals['kept']} under {root}")
    yield Output(None, metadata={
        "root": str(root),
        "dry_run": config.dry_run,
        **totals,
        "leftovers": markdown_table(pd.DataFrame(plan_rows(plan, root)), floatfmt=".1f", empty="none"),
    })


@job(description="Clean what killed writers left in the storage root (`peerlens clean`).")
def storage_cleanup():
    clean_storage_leftovers()


@schedule(job=storage_cleanup, cron_schedule="0 5 * * 0", execution_timezone="UTC",
          default_status=DefaultScheduleStatus.STOPPED)
def weekly_storage_cleanup():
    """Sundays at 05:00 UTC; stopped until switched on (a deployment decides when its disks are cleaned)."""
    return {}
