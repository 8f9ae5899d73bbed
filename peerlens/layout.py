"""Where PeerLens keeps what it computes, and the one way it writes a file there.

    <root>/tables/<asset>.parquet               an unpartitioned table asset
    <root>/tables/<asset>/<partition>.parquet   one file per partition
    <root>/tables/<asset>.json                  a small report asset
    <root>/artifacts/<asset>/...                files an asset writes itself (activation shards, SAEs)

<root> is a configured folder or object-store URI, else $PEERLENS_HOME, else `.peerlens`. Code reads and writes
its working copy (`peerlens.working_copy`: the folder itself, or a local cache of s3://...); the assets, the IO
manager and the `peerlens` CLI all resolve paths here, and a table read here is first brought up to date.

Every write stages the new content under a name no other writer can pick (process id and a random
suffix), then renames it into place: a reader sees the old file or the new one, never half of one,
and two overlapping runs writing the same file cannot delete or truncate each other's staging file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from peerlens.working_copy import root_uri, storage_copy
from sae_core.full_disk import naming_a_full_disk
from sae_core.staging import publish_file, staged_sibling


def storage_root(storage: str | os.PathLike | None = None) -> Path:
    """The local folder code reads and writes for the storage root `storage`, else $PEERLENS_HOME, else
    `.peerlens`: the folder itself, or the working copy of an object-store root (`peerlens.working_copy`)."""
    return storage_copy(storage).local


def table_path(root: str | os.PathLike | None, asset: str, suffix: str = ".parquet") -> Path:
    return storage_root(root) / "tables" / f"{asset}{suffix}"


def table_files(root: str | os.PathLike | None, asset: str) -> list[Path]:
    """The parquet files of a table asset: its one file, or its partitions' files in key order; [] when absent.
    Under an object-store root they are pulled into the working copy first."""
    copy = storage_copy(root)
    folder = copy.pull(f"tables/{asset}")
    copy.pull(f"tables/{asset}.parquet")
    if folder.is_dir():
        return sorted(folder.glob("*.parquet"))
    path = table_path(root, asset)
    return [path] if path.is_file() else []


def concat_partitions(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """Partitions' frames as one. An empty partition (a date with nothing to score) has untyped columns that
    would turn every column it shares with the others into objects, so it counts only when all are empty."""
    return pd.concat([part for part in parts if len(part)] or parts[:1], ignore_index=True)


def read_table(root: str | os.PathLike | None, asset: str) -> pd.DataFrame:
    """A table asset as a reader gets it: its file, or its partitions concatenated (`concat_partitions`)."""
    files = table_files(root, asset)
    if not files:
        raise FileNotFoundError(f"{asset} is not materialized under {root_uri(root)}")
    return concat_partitions([pd.read_parquet(file) for file in files])


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call `write(staging)` and rename the staging file onto `path`; on failure the old `path` is untouched.

    A full disk (or quota) is an OSError (errno ENOSPC or EDQUOT) that names `path`: pyarrow's and Python's
    own errors for it name no file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = staged_sibling(path)
    try:
        with naming_a_full_disk(path):
            write(staging)
            publish_file(staging, path)
    finally:
        staging.unlink(missing_ok=True)
    return path


def write_parquet_atomically(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda staging: frame.to_parquet(staging, index=False))


def write_json_atomically(value: Any, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda staging: staging.write_text(json.dumps(value, indent=2, default=str)))
