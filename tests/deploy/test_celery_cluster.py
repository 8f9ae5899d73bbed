"""The graph on dagster-celery's executor, for real: a Redis broker, a PostgreSQL instance, S3 storage, two workers.

The test starts redis-server and PostgreSQL on localhost (scripts/system_packages.sh installs them) and moto's S3
server, then two `dagster-celery worker start` processes, each with its own DAGSTER_HOME naming the same
PostgreSQL database and its own working copy ($PEERLENS_CACHE) of the same storage root, s3://peerlens/celery:
the database and the bucket are all they share with each other and with the run. The `cpu` worker takes the
default queue `dagster`, the `gpu` worker only the `gpu` queue. The end-to-end slice is materialized through
`celery_definitions` run by run, as `make demo` orders them; every step must have run on a worker, the GPU
steps on the `gpu` one and every other step on the `cpu` one, and what they wrote is read back from the bucket
by a fresh working copy, through the library and through the `peerlens` CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import fsspec
import pytest
import yaml
from dagster import DagsterEventType, DagsterInstance

from tests.assets.test_end_to_end import RUN_CONFIG, SLICE
from tests.assets.test_gpu_pool import GPU_OPS
from tests.servers import (
    postgres_bin,
    postgres_server,
    process_group,
    redis_available,
    redis_server,
    s3_fsspec_config,
    s3_server,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]
WORKERS = {"cpu": "dagster", "gpu": "gpu"}
"""Worker name: the one queue it takes."""
STORAGE = "s3://peerlens/celery"

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
    own = {"DAGSTER_HOME": str(home), "PEERLENS_CACHE": str(folder / f"cache_{name}")}
    worker = stack.enter_context(process_group(command, log, cwd=ROOT, env={**environment, **own}))

    def ready() -> bool:
        if worker.poll() is not None:
            raise RuntimeError(f"celery worker {name} exited with {worker.returncode}:\n{log.read_text()[-3000:]}")
        return "ready." in log.read_text()

    wait_until(ready, f"celery worker {name}", timeout=120, log=log)


@pytest.fixture(scope="module")
def celery_graph(tmp_path_factory):
    folder = tmp_path_factory.mktemp("celery")
    with ExitStack() as stack:
        redis = stack.enter_context(redis_server(folder))
        postgres = stack.enter_context(postgres_server())
        s3 = stack.enter_context(s3_server(folder))
        environment = {
            **os.environ,
            **s3,
            "PEERLENS_HOME": STORAGE,
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
        patch.setenv("PEERLENS_CACHE", str(folder / "cache_run"))
        patch.setitem(fsspec.config.conf, "s3", s3_fsspec_config(s3))

        from assets.graph_run import executor_runs, materialize_graph
        from celery_definitions import defs
        from resources import ArtifactStorage, TableIOManager

        instance = stack.enter_context(DagsterInstance.from_config(str(_dagster_home(folder / "home_run", storage))))
        started = time.perf_counter()
        launcher = executor_runs("celery_definitions", instance, working_directory=str(ROOT))
        # The run's own reads (which days hold texts) go to the bucket too, whatever PEERLENS_HOME was when
        # `definitions` was first imported (the Makefile exports one).
        storage_resources = {"io_manager": TableIOManager(root=STORAGE), "artifacts": ArtifactStorage(root=STORAGE)}
        results = materialize_graph(defs, instance, RUN_CONFIG, resources=storage_resources, log=lambda _: None,
                                    launcher=launcher)
        print(f"\nthe slice on the celery executor with two workers, storage on S3: {time.perf_counter() - started:.0f}s")
        yield results, folder, environment


def _op_name(step_key: str) -> str:
    """The op a step runs: `per_layer_saes.per_layer_sae[layer_07]` → per_layer_sae."""
    return step_key.split("[")[0].rsplit(".", 1)[-1]


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
    results, folder, _ = celery_graph
    failed = [result.run_id for result in results if not result.success]
    assert not failed, (folder / "worker_cpu.log").read_text()[-3000:] + (folder / "worker_gpu.log").read_text()[-3000:]


def test_every_step_ran_on_a_worker_the_gpu_steps_on_the_gpu_one(celery_graph):
    results, _, _ = celery_graph
    ran_on = _steps_by_worker(results)
    steps = {f"{result.run_id}/{event.step_key}" for result in results for event in result.all_events
             if event.event_type == DagsterEventType.STEP_SUCCESS}
    assert steps and steps <= ran_on.keys()
    worker_of = {step: ran_on[step].split("@")[0] for step in steps}
    op_of = {step: _op_name(step.split("/", 1)[1]) for step in steps}
    gpu_steps = {step for step in steps if op_of[step] in GPU_OPS}
    assert {op_of[step] for step in gpu_steps} == GPU_OPS
    assert sum(op_of[step] == "per_layer_sae" for step in steps) == 30  # one step per layer of SmolLM2
    assert {worker_of[step] for step in gpu_steps} == {"gpu"}
    assert {worker_of[step] for step in steps - gpu_steps} == {"cpu"}
    assert all(event.pid != os.getpid() for result in results for event in result.all_events
               if event.event_type == DagsterEventType.STEP_START)


def test_what_the_workers_wrote_is_in_the_bucket_whole(celery_graph, tmp_path, monkeypatch):
    from celery_definitions import defs
    from peerlens.layout import read_table
    from peerlens.working_copy import storage_copy

    results, folder, _ = celery_graph
    monkeypatch.setenv("PEERLENS_CACHE", str(tmp_path / "fresh"))  # a reader that has seen nothing yet
    descriptions = read_table(STORAGE, "company_descriptions")
    assert len(descriptions) == len(SLICE) - 1
    clusters = read_table(STORAGE, "company_clusters")
    assert set(clusters.ticker) == set(descriptions.ticker)
    correlations = read_table(STORAGE, "cluster_correlations")
    assert set(correlations[correlations.timing == "point in time"].year) == {2018, 2019, 2020}
    # The SAE release the workers trained loads from a fresh copy of the bucket.
    from sae_core.io import load_sae

    copy = storage_copy(STORAGE)
    release = json.loads(copy.pull("tables/group_saes.json").read_text())
    for entry in release["saes"]:
        assert load_sae(copy.pull(entry["path"])).cfg.d_in == 576
    # Each worker has its own copy: `gpu` captured the day stores into its copy, `cpu` (layer distances, company
    # features) has them only through the bucket, shard for shard.
    def shards(worker: str) -> dict:
        copy = folder / f"cache_{worker}"
        return {p.relative_to(copy): p.stat().st_size for p in (copy / "artifacts/llm_activations").rglob("shard_*")}

    assert shards("gpu") and shards("cpu") == shards("gpu")
    checks = {(event.event_specific_data.asset_key, event.event_specific_data.check_name)
              for result in results for event in result.all_events
              if event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION}
    assert len(checks) == len(defs.resolve_asset_graph().asset_check_keys)  # every check ran, on a worker


def test_the_cli_answers_from_the_bucket(celery_graph, tmp_path):
    _, _, environment = celery_graph
    answer = subprocess.run(
        [str(Path(sys.executable).parent / "peerlens"), "peers", "JPM", "--storage", STORAGE],
        env={**environment, "PEERLENS_CACHE": str(tmp_path / "cli")}, capture_output=True, text=True, timeout=300,
    )
    assert answer.returncode == 0, answer.stderr
    words = answer.stdout.split()
    assert "JPM" in words and set(words) & (set(SLICE) - {"JPM"}), answer.stdout  # peers from the slice
