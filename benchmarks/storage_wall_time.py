"""The end-to-end slice's wall time with its storage on local disk (the anchor) and on an S3 server.

    python benchmarks/storage_wall_time.py

Materializes the end-to-end test's slice (tests/assets/test_end_to_end.py: 20 companies, the real default
model, the same config) twice in this process, run by run as `make demo` orders them: first with the storage
root a local folder, then with it at s3://peerlens/bench on moto's S3 server on localhost (tests/servers.py),
through a working copy that starts empty. Prints JSON: each wall time, the bytes the bucket holds, and the
ratio S3 / local. The celery executor's time is printed by tests/deploy/test_celery_cluster.py.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _materialize(storage: str) -> float:
    from dagster import DagsterInstance

    from assets.graph_run import materialize_graph
    from definitions import defs, resources_from_environment
    from resources import ArtifactStorage, TableIOManager
    from tests.assets.test_end_to_end import RUN_CONFIG

    resources = {**resources_from_environment(), "io_manager": TableIOManager(root=storage),
                 "artifacts": ArtifactStorage(root=storage)}
    started = time.perf_counter()
    with DagsterInstance.ephemeral() as instance:
        results = materialize_graph(defs, instance, RUN_CONFIG, resources=resources, log=lambda _: None)
    if not all(result.success for result in results):
        raise SystemExit(f"a run on {storage} failed")
    return time.perf_counter() - started


def main() -> int:
    import fsspec

    from tests.servers import s3_fsspec_config, s3_server

    scratch = Path(tempfile.mkdtemp(prefix="peerlens-storage-bench-"))
    local_seconds = _materialize(str(scratch / "local"))
    with s3_server(scratch) as environment:
        fsspec.config.conf["s3"] = s3_fsspec_config(environment)
        os.environ["PEERLENS_CACHE"] = str(scratch / "cache")
        s3_seconds = _materialize("s3://peerlens/bench")
        stored = sum(info["size"] for info in fsspec.filesystem("s3").find("peerlens/bench", detail=True).values())
    print(json.dumps({
        "slice": "tests/assets/test_end_to_end.py RUN_CONFIG",
        "local_disk_seconds (anchor)": round(local_seconds, 1),
        "s3_server_seconds": round(s3_seconds, 1),
        "bucket_mib": round(stored / 2**20, 1),
        "ratio_s3_to_local": round(s3_seconds / local_seconds, 3),
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
