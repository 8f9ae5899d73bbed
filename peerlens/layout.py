"""Where PeerLens keeps what it computes, and the one way it writes a file there.

    <root>/tables/<asset>.parquet               an unpartitioned table asset
    <root>/tables/<asset>/<partition>.parquet   one file per partition
    <root>/tables/<asset>.json                  a small report asset
    <root>/artifacts/<asset>/...                files an asset writes itself (activation shards, SAEs)

<root> is a configured folder, else $PEERLENS_HOME, else `.peerlens`. The assets, the IO manager and
the `peerlens` CLI all resolve paths here.

Every write stages the new content under a name no other writer can pick (process id and a random
suffix), then renames it into place: a reader sees the old file or the new one, never half of one,
and two overlapping runs writing the same file cannot delete or truncate each other's staging file.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any, Callable

import pandas as pd

HOME_ENV = "PEERLENS_HOME"
DEFAULT_HOME = ".peerlens"


def storage_root(storage: str | os.PathLike | None = None) -> Path:
    """The storage root: `storage` if given, else $PEERLENS_HOME, else `.peerlens` (resolved)."""
    return Path(storage or os.environ.get(HOME_ENV) or DEFAULT_HOME).resolve()


def table_path(root: str | os.PathLike | None, asset: str, suffix: str = ".parquet") -> Path:
    return storage_root(root) / "tables" / f"{asset}{suffix}"


def artifact_folder(root: str | os.PathLike | None, asset: str) -> Path:
    return storage_root(root) / "artifacts" / asset


def staging_path(path: Path) -> Path:
    """A sibling of `path` that no concurrent writer will choose (same folder, so the rename is atomic)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call `write(staging)` and rename the staging file onto `path`; on failure the old `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_path(path)
    try:
        write(staging)
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
    return path


def write_parquet_atomically(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda staging: frame.to_parquet(staging, index=False))


def write_json_atomically(value: Any, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda staging: staging.write_text(json.dumps(value, indent=2, default=str)))
