"""Activation store: the residual streams of every layer, as fp16 safetensors shards with a token index.

Layout of a store folder:

    store.json                 manifest: model, capture (window, stride, cap), n_layers, d_model, n_tokens,
                               dtype, shards
    index.parquet              one row per token: document, position, token_id, shard, row
    shard_00000.safetensors    tensor "activations" of shape (n_layers, shard_tokens, d_model), fp16
    token_norms.safetensors    tensor "norms" of shape (n_tokens, n_layers), fp32: ‖x‖ of every stored
                               vector, so that finding massive activations never rereads the shards

Shards are layer-major so that reading one layer of a shard is one contiguous slice: SAE training
reads a layer (or a group of layers) at a time, never all thirty at once.
The store is written into a staging sibling folder unique to its writer and renamed into place when
complete, so a crash never leaves a half-written store where a reader expects a whole one, and two
runs writing at once cannot delete each other's work.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sae_core.io import replace_folder

MANIFEST = "store.json"
INDEX = "index.parquet"
TOKEN_NORMS = "token_norms.safetensors"
FINGERPRINTS = "document_fingerprints"
"""Manifest key: document name → `document_fingerprint` of the text it was captured from."""
CAPTURE = "capture"
"""Manifest key: how the documents were read (`sae_core.windows.CaptureWindows.settings()`: window, stride,
max_document_tokens)."""
_CAPTURE_IDENTITY = ("model", CAPTURE, "max_tokens")
# "max_tokens": all a store captured before windows records of how it read its documents (one truncated pass).
STORE_DTYPE = torch.float16
"""What shards hold; capturing straight into it (capture.capture_documents' dtype) skips a conversion."""


@dataclass
class ActivationStoreWriter:
    """Accumulates captured batches and writes full shards as they fill.

    `documents` names each document (e.g. its ticker); the index refers to them by that name.
    Each value is copied once, into the fp16 buffer of the shard being filled (converted on the
    way), and that buffer is what gets written: a token brings n_layers × d_model values (17,280 for
    SmolLM2, 35 MB per thousand tokens), so every extra pass over them shows in capture throughput.
    """

    folder: Path
    n_layers: int
    d_model: int
    metadata: dict = field(default_factory=dict)
    shard_tokens: int = 4096
    _shard: torch.Tensor = field(init=False)
    """(n_layers, shard_tokens, d_model) STORE_DTYPE: the shard being filled, its first `_filled` columns used."""
    _filled: int = field(default=0, init=False)
    _pending_rows: list[pd.DataFrame] = field(default_factory=list, init=False)
    _index: list[pd.DataFrame] = field(default_factory=list, init=False)
    _norms: list[torch.Tensor] = field(default_factory=list, init=False)
    """(n, n_layers) float32 norms of each added batch, as stored (after conversion to STORE_DTYPE)."""
    _shards: list[str] = field(default_factory=list, init=False)
    _non_finite: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        # Unique to this writer: two runs capturing at once never share (or delete) a staging folder.
        self._tmp = self.folder.with_name(f".{self.folder.name}.tmp-{uuid.uuid4().hex}")
        self._tmp.mkdir(parents=True)
        self._shard = torch.empty(self.n_layers, self.shard_tokens, self.d_model, dtype=STORE_DTYPE)

    def add(self, activations: torch.Tensor, documents: Sequence[str], position: torch.Tensor, token_id: torch.Tensor) -> None:
        """Add tokens: activations (n_layers, n, d_model); documents, position, token_id of length n."""
        if activations.ndim != 3 or activations.shape[0] != self.n_layers or activations.shape[2] != self.d_model:
            raise ValueError(
                f"activations of shape {tuple(activations.shape)} do not match the store's "
                f"(n_layers={self.n_layers}, n, d_model={self.d_model})"
            )
        # A length mismatch would shift every later index row against its activations, silently.
        for name, column in (("documents", documents), ("position", position), ("token_id", token_id)):
            if len(column) != activations.shape[1]:
                raise ValueError(f"{name} has {len(column)} entries for {activations.shape[1]} tokens of activations")
        self._pending_rows.append(
            pd.DataFrame({"document": list(documents), "position": position.numpy(), "token_id": token_id.numpy()})
        )
        # One layer at a time: the fp32 copy of a whole batch would be twice the batch.
        self._norms.append(torch.stack([_stored_norms(layer) for layer in activations], dim=1))
        start = 0
        while start < activations.shape[1]:
            take = min(activations.shape[1] - start, self.shard_tokens - self._filled)
            self._shard[:, self._filled : self._filled + take].copy_(activations[:, start : start + take])
            self._filled += take
            start += take
            if self._filled == self.shard_tokens:
                self._flush()

    def _flush(self) -> None:
        """Write the filled part of the shard buffer as the next shard, with its index rows."""
        shard = self._shard[:, : self._filled]
        # fp16 overflows above 65,504: count it so the asset check can block on it instead of storing
        # inf. One fp32 sum finds any inf or NaN (it cannot overflow: at most 65,504 per value); the
        # exact count, a few passes more, is taken only then.
        if not torch.isfinite(shard.sum(dtype=torch.float32)):
            self._non_finite += int((~torch.isfinite(shard)).sum())
        rows = pd.concat(self._pending_rows, ignore_index=True)
        shard_rows, rest_rows = rows.iloc[: self._filled].copy(), rows.iloc[self._filled :].reset_index(drop=True)
        name = f"shard_{len(self._shards):05d}.safetensors"
        save_file({"activations": shard.contiguous()}, str(self._tmp / name))  # a copy only for a last, partial shard
        shard_rows["shard"] = len(self._shards)
        shard_rows["row"] = np.arange(len(shard_rows))
        self._index.append(shard_rows)
        self._shards.append(name)
        self._pending_rows = [rest_rows] if len(rest_rows) else []
        self._filled = 0

    def close(self) -> ActivationStore:
        """Write the last shard, the index and the manifest, then move the store into place."""
        if self._filled:
            self._flush()
        if not self._shards:
            raise ValueError("no activations were added: refusing to write an empty store")
        index = pd.concat(self._index, ignore_index=True)
        index.to_parquet(self._tmp / INDEX, index=False)
        save_file({"norms": torch.cat(self._norms)}, str(self._tmp / TOKEN_NORMS))
        manifest = {
            **self.metadata,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "n_tokens": len(index),
            "n_documents": int(index["document"].nunique()),
            "dtype": str(STORE_DTYPE).removeprefix("torch."),
            "layout": "(n_layers, shard_tokens, d_model)",
            "shards": self._shards,
            "token_norms": TOKEN_NORMS,
            "non_finite_values": self._non_finite,
            "store_id": uuid.uuid4().hex,
        }
        (self._tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        replace_folder(self._tmp, self.folder)
        return open_published(self.folder)

    def abort(self) -> None:
        """Remove what this writer staged (after a failed capture); the store in place is untouched."""
        shutil.rmtree(self._tmp, ignore_errors=True)


def open_published(folder: Path, wait_seconds: float = 5.0) -> ActivationStore:
    """The store just published at `folder`. Another writer replacing it at the same moment leaves the
    folder absent for the instant between retiring the old store and moving in the new one
    (`sae_core.io.replace_folder`); that instant is waited out, never reported as a missing store."""
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            return ActivationStore(folder)
        except FileNotFoundError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def document_fingerprint(text: str) -> str:
    """A short content hash of a document's text (sha256, 16 hex digits)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def documents_held(store: ActivationStore, fingerprints: dict[str, str]) -> set[str]:
    """The documents of `fingerprints` (name → fingerprint) that `store` holds, captured from the same text."""
    held = store.manifest.get(FINGERPRINTS, {})
    return {name for name, fingerprint in fingerprints.items() if held.get(name) == fingerprint}


def copy_documents(store: ActivationStore, documents: set[str], writer: ActivationStoreWriter) -> int:
    """Add every stored token of `documents` from `store` to `writer`, exactly as stored (no model pass).

    Reads one shard at a time; returns the number of tokens copied. This is how a store grows by new
    documents without running the model again over the documents it already holds.
    """
    if (store.n_layers, store.d_model) != (writer.n_layers, writer.d_model):
        raise ValueError(
            f"cannot copy from a store of {store.n_layers} layers × {store.d_model} into one of "
            f"{writer.n_layers} × {writer.d_model}"
        )
    index = store.index
    wanted = index[index["document"].isin(documents)]
    for shard_number, rows in wanted.groupby("shard", sort=True):
        with safe_open(str(store.folder / store.manifest["shards"][shard_number]), framework="pt") as shard:
            activations = shard.get_tensor("activations")
        take = torch.from_numpy(rows["row"].to_numpy())
        writer.add(
            activations[:, take],
            rows["document"].tolist(),
            torch.from_numpy(rows["position"].to_numpy()),
            torch.from_numpy(rows["token_id"].to_numpy()),
        )
    return len(wanted)


def capture_identity(manifest: dict) -> dict:
    """What two stores must share for the tokens of one to stand in for or sit beside the other's: the model
    and how it read the documents (`CAPTURE`). A day's store is reused, and day stores are combined into one
    corpus, only under this rule; the same token read in a window of other length is another activation."""
    return {key: manifest.get(key) for key in _CAPTURE_IDENTITY}


def combine_stores(stores: Sequence[ActivationStore], folder: str | Path) -> ActivationStore:
    """A store at `folder` that is `stores` one after another, without copying a shard.

    Its manifest lists their shards (paths relative to `folder`), and its index and token norms are
    theirs concatenated in order, the index's shard numbers shifted to the combined list. This is how a
    corpus grows by a partition of new texts at the cost of its index, never of its activations. Each
    part's `store_id` is recorded: a part rewritten since makes opening the combination an error, not a
    silent mix of old index rows and new shards.
    """
    folder = Path(folder)
    if not stores:
        raise ValueError(f"{folder}: no activation store to combine")
    first = stores[0]
    shape = lambda store: (capture_identity(store.manifest), store.n_layers, store.d_model)  # noqa: E731
    for store in stores[1:]:
        if shape(store) != shape(first):
            raise ValueError(
                f"cannot combine {store.folder} (capture, layers, width {shape(store)}) with "
                f"{first.folder} ({shape(first)})"
            )
    indexes, shards, parts = [], [], []
    for store in stores:
        indexes.append(store.index.assign(shard=lambda rows, offset=len(shards): rows["shard"] + offset))
        shards += [os.path.relpath(store.folder / name, folder) for name in store.manifest["shards"]]
        parts.append({"folder": os.path.relpath(store.folder, folder), "store_id": store.manifest["store_id"],
                      "n_tokens": store.n_tokens})
    index = pd.concat(indexes, ignore_index=True)
    repeated = index.drop_duplicates(["document", "position"])
    if len(repeated) != len(index):
        duplicated = sorted(set(index.document[index.duplicated(["document", "position"])]))
        raise ValueError(f"{folder}: documents {duplicated[:5]} are held by more than one of the stores combined")
    staging = folder.with_name(f".{folder.name}.tmp-{uuid.uuid4().hex}")
    staging.mkdir(parents=True)
    try:
        index.to_parquet(staging / INDEX, index=False)
        save_file({"norms": torch.cat([store.token_norms() for store in stores])}, str(staging / TOKEN_NORMS))
        manifest = {
            **{key: value for key, value in capture_identity(first.manifest).items() if value is not None},
            "n_layers": first.n_layers,
            "d_model": first.d_model,
            "n_tokens": len(index),
            "n_documents": int(index["document"].nunique()),
            "dtype": first.manifest["dtype"],
            "layout": first.manifest["layout"],
            "shards": shards,
            "token_norms": TOKEN_NORMS,
            "non_finite_values": sum(int(store.manifest["non_finite_values"]) for store in stores),
            "parts": parts,
            "store_id": uuid.uuid4().hex,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        replace_folder(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return open_published(folder)


def _stored_norms(activations: torch.Tensor) -> torch.Tensor:
    """‖x‖ of each row of `activations` (n, d) as the store will hold it: (n,) float32."""
    return activations.to(STORE_DTYPE).float().norm(dim=1)


@dataclass(frozen=True)
class StoreRef:
    """An activation store as one asset hands it to the next: where it lies and what it holds; the
    tensors stay on disk. `folder` is relative to the storage root (absolute only outside one)."""

    folder: str
    model: str
    n_layers: int
    d_model: int
    n_tokens: int
    n_documents: int
    store_id: str
    """The store's identity: a store written again gets a new one."""

    @classmethod
    def of(cls, store: ActivationStore, folder: str) -> StoreRef:
        m = store.manifest
        return cls(folder, m.get("model", ""), store.n_layers, store.d_model, store.n_tokens,
                   int(m.get("n_documents", store.index["document"].nunique())), m.get("store_id", ""))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> StoreRef:
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})


class ActivationStore:
    """Read access to a finished store."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        manifest_path = self.folder / MANIFEST
        if not manifest_path.exists():
            raise FileNotFoundError(f"{self.folder} is not an activation store: {MANIFEST} is missing")
        self.manifest = json.loads(manifest_path.read_text())
        self._check_parts()
        self.n_layers: int = self.manifest["n_layers"]
        self.d_model: int = self.manifest["d_model"]
        self.n_tokens: int = self.manifest["n_tokens"]

    def _check_parts(self) -> None:
        """A combined store (`combine_stores`) is valid only while every part is the one it combined."""
        for part in self.manifest.get("parts", ()):
            part_manifest = self.folder / part["folder"] / MANIFEST
            held = json.loads(part_manifest.read_text()).get("store_id") if part_manifest.exists() else None
            if held != part["store_id"]:
                raise ValueError(
                    f"{self.folder} combines {part['folder']}, which has been rewritten or removed since: "
                    "combine the stores again (rematerialize activation_corpus)"
                )

    @property
    def index(self) -> pd.DataFrame:
        """One row per token: document, position, token_id, shard, row (in store order)."""
        return pd.read_parquet(self.folder / INDEX)

    def _check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.n_layers:
            raise IndexError(f"layer {layer} is out of range: the store holds layers 0..{self.n_layers - 1}")

    def layer(self, layer: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """All tokens' residual stream after `layer`: (n_tokens, d_model), in store order."""
        self._check_layer(layer)
        parts = []
        for name in self.manifest["shards"]:
            with safe_open(str(self.folder / name), framework="pt") as shard:
                parts.append(shard.get_slice("activations")[layer].to(dtype))
        return torch.cat(parts)

    def token_norms(self) -> torch.Tensor:
        """‖x_{t,l}‖ of every stored vector: (n_tokens, n_layers) float32, tokens in store order.

        Read from the store's norms file; a store written before it existed has them computed from
        its shards (one pass, nothing written).
        """
        path = self.folder / self.manifest.get("token_norms", TOKEN_NORMS)
        if path.exists():
            with safe_open(str(path), framework="pt") as norms:
                return norms.get_tensor("norms")
        return torch.cat([shard.norm(dim=2) for shard in self.iter_shards()])

    def iter_shards(self, layers: Sequence[int] | None = None) -> Iterator[torch.Tensor]:
        """Yield each shard as (n_tokens_in_shard, n_selected_layers, d_model) float32."""
        for layer in layers or ():
            self._check_layer(layer)
        for name in self.manifest["shards"]:
            with safe_open(str(self.folder / name), framework="pt") as shard:
                acts = shard.get_tensor("activations")
            if layers is not None:
                acts = acts[list(layers)]
            yield acts.float().transpose(0, 1)
