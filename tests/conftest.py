"""Shared test fixtures."""

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def single_torch_thread():
    """Tiny tensors gain nothing from OpenMP threads, which only contend on a busy 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@dataclass(frozen=True)
class MaterializedSlice:
    """The real graph materialized on the end-to-end slice (tests/assets/test_end_to_end.py RUN_CONFIG)."""

    storage: Path
    """The storage root its tables and artifacts went to."""
    dagster_home: Path
    """A SQLite Dagster instance holding its runs, events and check results (what the UI shows)."""
    results: list
    """The run results, in the order materialize_graph ran them."""


@pytest.fixture(scope="session")
def materialized_slice(tmp_path_factory) -> MaterializedSlice:
    """One materialization of the slice per session, shared by the end-to-end and the UI tests (a few minutes)."""
    from dagster import DagsterInstance

    from assets.graph_run import materialize_graph
    from definitions import defs, resources_from_environment
    from resources import ArtifactStorage, TableIOManager
    from tests.assets.test_end_to_end import RUN_CONFIG

    storage, home = tmp_path_factory.mktemp("peerlens"), tmp_path_factory.mktemp("dagster_home")
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    resources = {
        **resources_from_environment(),
        "io_manager": TableIOManager(root=str(storage)),
        "artifacts": ArtifactStorage(root=str(storage)),
    }
    with DagsterInstance.from_config(str(home)) as instance:
        results = materialize_graph(defs, instance, RUN_CONFIG, resources=resources, log=lambda _: None)
    return MaterializedSlice(storage, home, results)
