"""Two runs at once never delete or corrupt each other's outputs: unique staging names, atomic publish,
storage paths (never staging paths) in asset values."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import torch
from dagster import DagsterInstance, asset, materialize

from peerlens.layout import write_parquet_atomically
from resources import TableIOManager
from sae_core.activation_store import ActivationStore, ActivationStoreWriter


def run_together(*jobs) -> list[BaseException]:
    """Start every job on its own thread at once; return what they raised."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(jobs))

    def wrapped(job):
        barrier.wait()
        try:
            job()
        except BaseException as error:  # noqa: BLE001 - collected for the assertion
            errors.append(error)

    threads = [threading.Thread(target=wrapped, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def big_frame(value: int) -> pd.DataFrame:
    return pd.DataFrame({"value": np.full(400_000, value), "noise": np.random.default_rng(value).random(400_000)})


def test_two_writers_of_one_table_both_succeed_and_leave_one_whole_table(tmp_path):
    path = tmp_path / "tables" / "company_clusters.parquet"
    frames = {1: big_frame(1), 2: big_frame(2)}
    errors = run_together(*[lambda v=v: [write_parquet_atomically(frames[v], path) for _ in range(5)] for v in frames])
    assert errors == []
    written = pd.read_parquet(path)
    assert any(written.equals(frame) for frame in frames.values())
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no staging file left behind


def test_two_overlapping_materializations_of_one_asset_through_the_io_manager(tmp_path):
    def materialization(value: int):
        @asset(name="company_clusters")
        def clusters() -> pd.DataFrame:
            return big_frame(value)

        with DagsterInstance.ephemeral() as instance:
            result = materialize([clusters], instance=instance, resources={"io_manager": TableIOManager(root=str(tmp_path))})
        assert result.success
        path = result.asset_materializations_for_node("company_clusters")[0].metadata["path"].value
        assert ".tmp" not in path  # the value points at the published table, never at a staging file

    errors = run_together(lambda: materialization(1), lambda: materialization(2))
    assert errors == []
    written = pd.read_parquet(tmp_path / "tables" / "company_clusters.parquet")
    assert written.value.nunique() == 1 and len(written) == 400_000


def test_two_activation_stores_written_at_once_leave_one_whole_store(tmp_path):
    folder = tmp_path / "store"

    def capture(seed: int):
        writer = ActivationStoreWriter(folder, n_layers=2, d_model=8, shard_tokens=64)
        generator = torch.Generator().manual_seed(seed)
        for document in range(20):
            writer.add(torch.randn(2, 50, 8, generator=generator), [f"doc{seed}-{document}"] * 50,
                       torch.arange(50), torch.zeros(50, dtype=torch.long))
        writer.close()

    assert run_together(lambda: capture(1), lambda: capture(2)) == []
    store = ActivationStore(folder)
    documents = set(store.index.document)
    assert store.n_tokens == 1000 and len({name.split("-")[0] for name in documents}) == 1  # one writer's, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]
