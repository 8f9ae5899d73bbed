"""The Kubernetes code location: PeerLens's Definitions, run by dagster-k8s's job executor.

`definitions.py` leaves the executor to Dagster's default (every step a process of the run); a run
config can configure an executor but not choose it, so the cluster loads this file instead
(deploy/helm/values.yaml: `dagster api grpc -f k8s_definitions.py`). Its executor is
`k8s_job_executor` configured from deploy/k8s_run_config.yaml, so that every run — launched by
hand, by a schedule, a sensor or declarative automation — gives each GPU step its GPU. A run's own
`execution.config` replaces the file's keys it names (top level) and keeps the others.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from dagster import Definitions, Permissive
from dagster_k8s import k8s_job_executor

from definitions import defs as peerlens_defs

RUN_CONFIG = Path(__file__).parent / "deploy" / "k8s_run_config.yaml"


def executor_config(path: Path = RUN_CONFIG) -> dict[str, Any]:
    """The `execution.config` block of the run config file."""
    return dict(yaml.safe_load(path.read_text())["execution"]["config"])


def with_file_config(overrides: dict[str, Any]) -> dict[str, Any]:
    """The file's executor config with a run's own keys laid over it (the result is checked by dagster-k8s's schema)."""
    return {**executor_config(), **overrides}


k8s_executor = k8s_job_executor.configured(with_file_config, name="k8s", config_schema=Permissive())

defs = Definitions.merge(peerlens_defs, Definitions(executor=k8s_executor))
