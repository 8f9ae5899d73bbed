"""The celery code location: PeerLens's Definitions, each step a task that a celery worker runs.

`definitions.py` leaves the executor to Dagster's default (every step a process of the run); this file
puts every job on dagster-celery's executor, configured from deploy/celery.yaml (Redis as broker and
results backend). The run submits its steps to the queues and waits; workers in other processes, on
this machine or others, take them. They share nothing with the run but the Dagster instance
(PostgreSQL, `$DAGSTER_HOME/dagster.yaml`) and the storage under `PEERLENS_HOME`. The steps that put
the model or an SAE on the compute device are tagged for the `gpu` queue (`resources.compute.GPU_STEP`),
so only workers started with `-q gpu` take them; every other step goes to the default queue `dagster`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from dagster import Definitions
from dagster_celery import celery_executor

from definitions import defs as peerlens_defs

CELERY_CONFIG = Path(__file__).parent / "deploy" / "celery.yaml"


def executor_config(path: Path = CELERY_CONFIG) -> dict[str, Any]:
    """The `execution.config` block of the celery settings file (the workers read the same block)."""
    return dict(yaml.safe_load(path.read_text())["execution"]["config"])


celery = celery_executor.configured(executor_config(), name="celery")

defs = Definitions.merge(peerlens_defs, Definitions(executor=celery))
