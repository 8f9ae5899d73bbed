"""Storage: where artifacts land, and the IO manager that keeps tables as parquet and reports as JSON.

Layout under the storage root (default `.peerlens/`, or $PEERLENS_HOME; a folder or an object-store URI such
as s3://bucket/prefix, whose local working copy code reads and writes, `peerlens.working_copy`):

    tables/<asset_key>.parquet               unpartitioned DataFrame assets
    tables/<asset_key>/<partition>.parquet   one file per partition (monthly_returns)
    tables/<asset_key>.json                  dict / list assets (small reports)
    artifacts/<asset_key>/...                large artifacts written by the asset itself
                                             (activation shards, SAE folders)
    steps/<run_id>/<step>/<output>.json      what one op hands the next inside a graph-backed asset
                                             (e.g. one per-layer SAE's entry), as JSON

No pickle anywhere: a stranger can open every file with pandas, pyarrow or a text editor.
The layout and the atomic write are `peerlens.layout`'s, shared with the assets and the CLI.

Under an object-store root, every path these resources hand out is pulled first (a step on any machine reads
what another wrote), and an asset's artifacts are pushed before its value: the value names artifacts that
are already whole in the store.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from dagster import ConfigurableIOManager, ConfigurableResource, DagsterInvariantViolationError, InputContext, OutputContext
from pydantic import Field

from peerlens.layout import (
    concat_partitions,
    root_uri,
    storage_root,
    write_json_atomically,
    write_parquet_atomically,
)
from peerlens.working_copy import storage_copy
from sae_core.activation_store import MANIFEST, ActivationStore, StoreRef


class ArtifactStorage(ConfigurableResource):
    """A folder per asset for artifacts too large or too structured for a table."""

    root: str = Field(default="", description="Storage root; empty means $PEERLENS_HOME, else .peerlens.")

    def folder(self, asset_name: str) -> Path:
        """artifacts/<asset_name> in the working copy, up to date with the storage root."""
        path = storage_copy(self.root).pull(f"artifacts/{asset_name}")
        path.mkdir(parents=True, exist_ok=True)
        return path

    def relative(self, path: str | Path) -> str:
        """`path` (under the storage root) as asset values hold it: relative to the root, so a value stays
        right when the storage moves or another machine mounts it elsewhere."""
        return _under_root(self.root, path)

    def resolve(self, stored: str | Path) -> Path:
        """The file or folder an asset value names (`relative`), up to date in the working copy."""
        return storage_copy(self.root).pull(Path(stored).as_posix())

    def store(self, ref: StoreRef) -> ActivationStore:
        """The activation store an asset value refers to, with the stores it combines (their shards are its)."""
        folder = self.resolve(ref.folder)
        manifest = json.loads((folder / MANIFEST).read_text()) if (folder / MANIFEST).exists() else {}
        for part in manifest.get("parts", []):
            self.resolve(self.relative(folder / part["folder"]))
        return ActivationStore(folder)

    def store_ref(self, store: ActivationStore) -> StoreRef:
        """The value that refers to `store` (its folder relative to the storage root)."""
        return StoreRef.of(store, self.relative(store.folder))


class TableIOManager(ConfigurableIOManager):
    """DataFrames as parquet; dicts, lists and typed results as JSON; partitions as one file each.

    A typed result (a dataclass with `to_dict` and a `from_dict` classmethod, e.g. `sae_core.sae_set.SaeSet`)
    is stored as its JSON form and read back as the type the reading asset's parameter is annotated with.
    A run over several partitions (a single-run backfill) returns {partition_key: value}.
    A downstream asset that reads several partitions receives them concatenated into one
    DataFrame: each partition's rows carry their own date column, so nothing is lost.
    """

    root: str = Field(default="", description="Storage root; empty means $PEERLENS_HOME, else .peerlens.")

    def _base(self, context: InputContext | OutputContext) -> Path:
        return storage_root(self.root).joinpath("tables", *context.asset_key.path)

    def _stored(self, path: Path) -> str:
        """`path` of the working copy as the storage root names it (what a user finds there)."""
        return f"{root_uri(self.root).rstrip('/')}/{_under_root(self.root, path)}"

    def _step_value(self, identifier: list[str]) -> Path:
        """Where an op's output that is no asset lives, less `.json`: steps/<run_id>/<step_key>/<output>[/<mapping_key>]."""
        return storage_root(self.root).joinpath("steps", *identifier)

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        copy = storage_copy(self.root)
        if not context.has_asset_key:  # an op's output inside a graph-backed asset
            copy.push(_under_root(self.root, self._write(self._step_value(context.get_identifier()), obj)))
            return
        # The asset's own artifacts first: once its value is stored, whatever it names is there whole.
        copy.push("/".join(["artifacts", *context.asset_key.path]))
        if obj is None:
            return
        base = self._base(context)
        if context.has_asset_partitions:
            keys = context.asset_partition_keys
            parts = obj if len(keys) > 1 else {keys[0]: obj}
            if set(parts) != set(keys):
                raise ValueError(
                    f"{context.asset_key.to_user_string()}: a run over partitions {keys[0]}..{keys[-1]} must "
                    f"return a dict with exactly those keys, got {sorted(parts)[:3]}..."
                )
            for key, frame in parts.items():
                copy.push(_under_root(self.root, self._write(base / key, frame)))
            context.add_output_metadata({"path": self._stored(base), "partitions_written": len(parts)})
        else:
            path = self._write(base, obj)
            copy.push(_under_root(self.root, path))
            context.add_output_metadata({"path": self._stored(path)})

    def _write(self, base: Path, obj: Any) -> Path:
        if isinstance(obj, pd.DataFrame):
            path = write_parquet_atomically(obj, base.with_name(base.name + ".parquet"))
        elif isinstance(obj, (dict, list, int, float, str, bool)):
            path = write_json_atomically(obj, base.with_name(base.name + ".json"))
        elif callable(getattr(obj, "to_dict", None)):
            path = write_json_atomically(obj.to_dict(), base.with_name(base.name + ".json"))
        else:
            raise TypeError(
                f"TableIOManager stores DataFrames, JSON values and typed results (to_dict), not {type(obj).__name__}"
            )
        return path

    def load_input(self, context: InputContext) -> Any:
        copy = storage_copy(self.root)
        if not context.has_asset_key:  # another op's output inside a graph-backed asset
            upstream = context.upstream_output
            base = self._step_value(upstream.get_identifier())
            path = copy.pull(_under_root(self.root, base.with_name(base.name + ".json")))
            return _typed(json.loads(path.read_text()), getattr(upstream.dagster_type, "typing_type", None))
        base = self._base(context)
        for pulled in (base, base.with_name(base.name + ".parquet"), base.with_name(base.name + ".json")):
            copy.pull(_under_root(self.root, pulled))
        if context.has_asset_partitions:
            keys = context.asset_partition_keys
            missing = [k for k in keys if not (base / f"{k}.parquet").exists()]
            if missing:
                raise FileNotFoundError(
                    f"{context.asset_key.to_user_string()}: partitions {missing[:5]} are not materialized under {base}"
                )
            return concat_partitions([pd.read_parquet(base / f"{k}.parquet") for k in keys])
        parquet, js = base.with_name(base.name + ".parquet"), base.with_name(base.name + ".json")
        if parquet.exists():
            return pd.read_parquet(parquet)
        if js.exists():
            return _typed(json.loads(js.read_text()), _declared_type(context))
        raise FileNotFoundError(
            f"{context.asset_key.to_user_string()} is not materialized yet (nothing at {parquet} or {js})"
        )


def _under_root(root: str, path: str | Path) -> str:
    """`path`, a file or folder of the working copy of `root`, as the root names it (relative, POSIX)."""
    return Path(path).resolve().relative_to(storage_root(root)).as_posix()


def _typed(value: Any, typed: type | None) -> Any:
    """`value` as `typed` when that is a typed result (`from_dict`), else as read."""
    return typed.from_dict(value) if callable(getattr(typed, "from_dict", None)) else value


def _declared_type(context: InputContext) -> type | None:
    """The Python type the reading parameter is annotated with (None when the context was built without one)."""
    try:
        return getattr(context.dagster_type, "typing_type", None)
    except DagsterInvariantViolationError:
        return None
