"""What making every publish durable costs: table writes and folder replaces with their fsyncs, against the same
writes with the fsyncs skipped (the anchor), in one process on one disk.

    python benchmarks/durable_writes.py [--tables 200] [--folder-mib 512] [--root DIR]

`peerlens.layout.write_parquet_atomically` (a 10,000-row table, as the graph writes them) and
`sae_core.staging.replace_folder` (a folder of 64 MiB shards, as an activation store or an SAE release is
published, timed from its first shard written) are each timed with `sae_core.staging._sync` as a no-op (the
anchor), then as it is. Prints JSON: each wall time and the ratio durable / anchor.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from peerlens.layout import write_parquet_atomically  # noqa: E402
from sae_core import staging  # noqa: E402

SHARD_MIB = 64


def _tables(root: Path, n_tables: int) -> float:
    frame = pd.DataFrame({"ticker": np.repeat([f"T{i}" for i in range(100)], 100), "value": np.arange(10_000.0)})
    started = time.perf_counter()
    for k in range(n_tables):
        write_parquet_atomically(frame, root / f"table_{k % 20}.parquet")
    return time.perf_counter() - started


def _folder(root: Path, mib: int) -> float:
    """Writing the shards and publishing the folder: what a capture's close costs its writer."""
    shard = np.random.default_rng(0).bytes(SHARD_MIB * 2**20)
    started = time.perf_counter()
    staged = staging.staged_sibling(root / "store")
    staged.mkdir()
    for k in range(max(1, mib // SHARD_MIB)):
        (staged / f"shard_{k:05d}.safetensors").write_bytes(shard)
    staging.replace_folder(staged, root / "store")
    return time.perf_counter() - started


def _timed(root: Path, args, durable: bool) -> dict[str, float]:
    sync = staging._sync
    if not durable:
        staging._sync = lambda path: None
    try:
        return {"tables_s": _tables(root, args.tables), "folder_s": _folder(root, args.folder_mib)}
    finally:
        staging._sync = sync


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", type=int, default=200)
    parser.add_argument("--folder-mib", type=int, default=512)
    parser.add_argument("--root", default=None, help="a folder on the disk to measure (default: a temp folder)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="durable-writes-", dir=args.root))
    try:
        anchor = _timed(root, args, durable=False)
        durable = _timed(root, args, durable=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({
        "anchor_without_fsync": anchor,
        "durable": durable,
        "ratio_tables": durable["tables_s"] / anchor["tables_s"],
        "ratio_folder": durable["folder_s"] / anchor["folder_s"],
    }, indent=2))


if __name__ == "__main__":
    main()
