"""Steps that use the GPU share the Dagster pool `gpu`; the instance's limit for it is how many run at once.

Two toy steps of one run, each holding the "GPU" for 1.5 s, on the multiprocess executor (2 processes):
with the pool's limit at 1 they run one after the other, with it at 2 they overlap.
"""

from __future__ import annotations

import time

import pytest
from dagster import (
    AssetKey,
    DagsterInstance,
    Definitions,
    MaterializeResult,
    asset,
    define_asset_job,
    execute_job,
    multiprocess_executor,
    reconstructable,
)

POOL = "gpu"
"""resources.compute.GPU_POOL, spelt out so that the step processes start without importing torch."""

SECONDS_ON_THE_GPU = 1.5
GPU_STEPS = {"llm_activations", "group_saes", "per_layer_saes", "transfer_saes", "sae_comparison", "representation_study"}
"""The assets whose step puts the language model or an SAE on `ComputeResource.torch_device()`."""
GPU_OPS = GPU_STEPS - {"per_layer_saes"} | {"per_layer_sae"}
"""The ops that do it (what an executor's per-op settings are keyed by): per_layer_saes trains in one op per layer."""


def op_pools(defs) -> dict[str, str | None]:
    """Every op of the Definitions' asset job, inner ops of graph-backed assets included: node name → its pool."""
    job = defs.resolve_implicit_global_asset_job_def()
    nodes = (job.graph.get_node(handle) for handle in job.graph.iterate_node_handles())
    return {node.name: node.definition.pool for node in nodes if hasattr(node.definition, "pool")}


def _gpu_step(name: str):
    @asset(name=name, pool=POOL)
    def holds_the_gpu() -> MaterializeResult:
        start = time.time()
        time.sleep(SECONDS_ON_THE_GPU)
        return MaterializeResult(metadata={"start": start, "end": time.time()})

    return holds_the_gpu


def two_gpu_steps_job():
    """One run of two independent steps in the GPU pool, up to two processes at once."""
    # forkserver: one process imports dagster once, and every step's process is a fork of it.
    executor = multiprocess_executor.configured({"max_concurrent": 2, "start_method": {"forkserver": {}}})
    job = define_asset_job("two_gpu_steps", executor_def=executor)
    return Definitions(assets=[_gpu_step("capture_a"), _gpu_step("capture_b")], jobs=[job]).resolve_job_def("two_gpu_steps")


def _time_on_the_gpu(tmp_path, limit: int, set_by: str) -> list[tuple[float, float]]:
    """Each step's (start, end), sorted, from one run on an instance whose `gpu` limit is `limit`."""
    overrides = {"concurrency": {"pools": {"default_limit": limit}}} if set_by == "dagster.yaml" else None
    with DagsterInstance.local_temp(str(tmp_path), overrides=overrides) as instance:
        if set_by == "set_concurrency_slots":
            instance.event_log_storage.set_concurrency_slots(POOL, limit)  # `dagster instance concurrency set gpu N`
        with execute_job(reconstructable(two_gpu_steps_job), instance=instance) as result:
            assert result.success
        spans = []
        for name in ("capture_a", "capture_b"):
            metadata = instance.get_latest_materialization_event(AssetKey(name)).asset_materialization.metadata
            spans.append((metadata["start"].value, metadata["end"].value))
        assert instance.event_log_storage.get_concurrency_info(POOL).slot_count == limit
    return sorted(spans)


@pytest.mark.parametrize("set_by", ["dagster.yaml", "set_concurrency_slots"])
def test_a_gpu_pool_limit_of_one_keeps_two_gpu_steps_of_one_run_apart(tmp_path, set_by):
    (_, first_end), (second_start, _) = _time_on_the_gpu(tmp_path, limit=1, set_by=set_by)
    assert second_start >= first_end


def test_a_gpu_pool_limit_of_two_lets_two_gpu_steps_overlap(tmp_path):
    (_, first_end), (second_start, _) = _time_on_the_gpu(tmp_path, limit=2, set_by="dagster.yaml")
    assert second_start < first_end


def test_every_step_on_the_torch_device_is_in_the_gpu_pool_and_no_other():
    from definitions import defs
    from resources.compute import GPU_POOL

    assert GPU_POOL == POOL
    graph = defs.resolve_asset_graph()
    in_pool = {key.to_user_string() for key in graph.get_all_asset_keys() if graph.get(key).pools == {GPU_POOL}}
    assert in_pool == GPU_STEPS
    assert {name for name, pool in op_pools(defs).items() if pool == GPU_POOL} == GPU_OPS
