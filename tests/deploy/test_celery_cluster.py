"""The graph on dagster-celery's executor, for real: a Redis broker, a PostgreSQL instance and two workers.

The test starts redis-server and PostgreSQL on localhost (scripts/system_packages.sh installs them), then two
`dagster-celery worker start` processes, each with its own DAGSTER_HOME naming the same PostgreSQL database
and the same storage folder (`PEERLENS_HOME`): that is all they share with each other and with the run. The
`cpu` worker takes the default queue `dagster`, the `gpu` worker only the `gpu` queue. The end-to-end slice is
materialized through `celery_definitions` run by run, as `make demo` orders them, and every step must have run
on a worker, the GPU steps on the `gpu` one and every other step on the `cpu` one.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
import yaml
from dagster import DagsterEventType, DagsterInstance

from tests.assets.test_end_to_end import RUN_CONFIG, SLICE
from tests.assets.test_gpu_pool import GPU_STEPS
from tests.servers import postgres_bin, postgres_server, process_group, redis_available, redis_server, wait_until

ROOT = Path(__file__).resolve().parents[2]
WORKERS = {"cpu": "dagster", "gpu": "gpu"}
"""Worker name: the one queue it takes."""

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not (redis_available() and postgres_bin()),
                       reason="needs redis-server and postgresql (scripts/system_packages.sh; `make test` runs it)"),
]


def _dagster_home(folder: Path, storage: dict) -> Path:
    folder.mkdir()
    settings = {"storage": storage, "telemetry": {"enabled": False}}
    (folder / "dagster.yaml").write_text(yaml.safe_dump(settings))
    return folder


def _start_worker(stack: ExitStack, name: str, queue: str, folder: Path, environment: dict, storage: dict) -> None:
    log = folder / f"worker_{name}.log"
    command = [
        str(Path(sys.executable).parent / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app",
        "-y", str(ROOT / "deploy" / "celery.yaml"), "-n", name, "-q", queue,
        # One step at a time, in the worker's own process: its imports stay warm from step to step.
        "--", "--pool=solo",
    ]
    home = _dagster_home(folder / f"home_{name}", storage)
    worker = stack.enter_context(process_group(command, log, cwd=ROOT, env={**environment, "DAGSTER_HOME": str(home)}))

    def ready() -> bool:
        if worker.poll() is not None:
            raise RuntimeError(f"celery worker {name} exited with {worker.returncode}:\n{log.read_text()[-3000:]}")
        return "ready." in log.read_text()

    wait_until(ready, f"celery worker {name}", timeout=120, log=log)


@pytest.fixture(scope="module")
def celery_graph(tmp_path_factory):
    folder = tmp_path_factory.mktemp("celery")
    storage_folder = folder / "storage"
    with ExitStack() as stack:
        redis = stack.enter_context(redis_server(folder))
        postgres = stack.enter_context(postgres_server())
        environment = {
            **os.environ,
            "PEERLENS_HOME": str(storage_folder),
            "PEERLENS_CELERY_BROKER": f"{redis}/0",
            "PEERLENS_CELERY_BACKEND": f"{redis}/1",
            "PYTHONPATH": str(ROOT),
            # `dagster-celery worker start` runs `celery` from the PATH: this environment's.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        storage = postgres.dagster_storage()
        for name, queue in WORKERS.items():
            _start_worker(stack, name, queue, folder, environment, storage)
        patch = stack.enter_context(pytest.MonkeyPatch.context())
        for variable in ("PEERLENS_HOME", "PEERLENS_CELERY_BROKER", "PEERLENS_CELERY_BACKEND"):
            patch.setenv(variable, environment[variable])

        from assets.graph_run import executor_runs, materialize_graph
        from celery_definitions import defs

        instance = stack.enter_context(DagsterInstance.from_config(str(_dagster_home(folder / "home_run", storage))))
        started = time.perf_counter()
        launcher = executor_runs("celery_definitions", instance, working_directory=str(ROOT))
        results = materialize_graph(defs, instance, RUN_CONFIG, log=lambda _: None, launcher=launcher)
        print(f"\nthe slice on the celery executor with two workers: {time.perf_counter() - started:.0f}s")
        yield storage_folder, results, folder


def _steps_by_worker(results) -> dict[str, str]:
    """step key (run id / step) → the celery worker that ran it, from each step's engine event."""
    ran_on = {}
    for result in results:
        for event in result.all_events:
            data = event.event_specific_data
            worker = getattr(data, "metadata", {}).get("Celery worker") if data is not None else None
            if event.event_type == DagsterEventType.ENGINE_EVENT and worker is not None:
                ran_on[f"{result.run_id}/{event.step_key}"] = worker.value
    return ran_on


def test_every_run_of_the_graph_succeeds_on_the_celery_executor(celery_graph):
    storage_folder, results, folder = celery_graph
    failed = [result.run_id for result in results if not result.success]
    assert not failed, (folder / "worker_cpu.log").read_text()[-3000:] + (folder / "worker_gpu.log").read_text()[-3000:]


def test_every_step_ran_on_a_worker_the_gpu_steps_on_the_gpu_one(celery_graph):
    _, results, _ = celery_graph
    ran_on = _steps_by_worker(results)
    steps = {f"{result.run_id}/{event.step_key}" for result in results for event in result.all_events
             if event.event_type == DagsterEventType.STEP_SUCCESS}
    assert steps and steps <= ran_on.keys()
    worker_of = {step: ran_on[step].split("@")[0] for step in steps}
    gpu_steps = {step for step in steps if step.split("/", 1)[1] in GPU_STEPS}
    assert {step.split("/", 1)[1] for step in gpu_steps} == GPU_STEPS
    assert {worker_of[step] for step in gpu_steps} == {"gpu"}
    assert {worker_of[step] for step in steps - gpu_steps} == {"cpu"}
    assert all(event.pid != os.getpid() for result in results for event in result.all_events
               if event.event_type == DagsterEventType.STEP_START)


def test_the_workers_wrote_the_tables_into_the_shared_storage(celery_graph):
    from peerlens.layout import read_table

    storage_folder, results, _ = celery_graph
    descriptions = read_table(storage_folder, "company_descriptions")
    assert len(descriptions) == len(SLICE) - 1
    clusters = read_table(storage_folder, "company_clusters")
    assert set(clusters.ticker) == set(descriptions.ticker)
    correlations = read_table(storage_folder, "cluster_correlations")
    assert set(correlations[correlations.timing == "point in time"].year) == {2018, 2019, 2020}
    from celery_definitions import defs

    checks = {(event.event_specific_data.asset_key, event.event_specific_data.check_name)
              for result in results for event in result.all_events
              if event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION}
    assert len(checks) == len(defs.resolve_asset_graph().asset_check_keys)  # every check ran, on a worker
