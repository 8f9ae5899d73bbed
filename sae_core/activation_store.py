"""Activation store: the residual streams of every layer, as fp16 safetensors shards with a token index.

Layout of a store folder:

    store.json                 manifest: model, capture (window, stride, cap), n_layers, d_model, n_tokens,
                               dtype, shards
    index.parquet              one row per token: document, position, token_id, shard, row
    shard_00000.safetensors    tensor "activations" of shape (n_layers, shard_tokens, d_model), fp16
    token_norms.safetensors    tensor "norms" of shape (n_tokens, n_layers), fp32: ‖x‖ of every stored
                               vector, so that finding massive activations never rereads the shards

A store keeps every layer of every token unless its writer is given a `StoreSelection`
(`sae_core.store_selection`: chosen layers, a hashed share of the tokens); then the shards are
(n_kept_layers, shard_tokens, d_model), store.json records the selection, and a reader asking for a layer
the store did not keep gets `LayerNotStored`. store.json's "bytes_per_token" says what a token costs.

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
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from sae_core.full_disk import naming_a_full_disk
from sae_core.io import read_json_object
from sae_core.staging import replace_folder, staged_sibling
from sae_core.store_selection import SELECTION, LayerNotStored, StoreSelection, bytes_per_token

MANIFEST = "store.json"
INDEX = "index.parquet"
TOKEN_NORMS = "token_norms.safetensors"
FINGERPRINTS = "document_fingerprints"
"""Manifest key: document name → `document_fingerprint` of the text it was captured from."""
CAPTURE = "capture"
"""Manifest key: how the documents were read (`sae_core.windows.CaptureWindows.settings()`: window, stride,
max_document_tokens)."""
_CAPTURE_IDENTITY = ("model", CAPTURE, "max_tokens", SELECTION)
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
    `keep` chooses layers and a share of tokens to store (`StoreSelection`); `add` still takes every layer.
    """

    folder: Path
    n_layers: int
    d_model: int
    metadata: dict = field(default_factory=dict)
    shard_tokens: int = 4096
    keep: StoreSelection = field(default_factory=StoreSelection)
    _shard: torch.Tensor = field(init=False)
    """(n_kept_layers, shard_tokens, d_model) STORE_DTYPE: the shard being filled, its first `_filled` columns used."""
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
        self._tmp = staged_sibling(self.folder)
        self.layers = self.keep.kept_layers(self.n_layers)  # refuses a layer the model does not have
        self._tmp.mkdir(parents=True)
        self._shard = torch.empty(len(self.layers), self.shard_tokens, self.d_model, dtype=STORE_DTYPE)

    def add(self, activations: torch.Tensor, documents: Sequence[str], position: torch.Tensor, token_id: torch.Tensor) -> None:
        """Add tokens: activations (n_layers, n, d_model); documents, position, token_id of length n.
        Only the kept layers of the kept tokens are stored (`keep`), with the norms of all their layers."""
        if activations.ndim != 3 or activations.shape[0] != self.n_layers or activations.shape[2] != self.d_model:
            raise ValueError(
                f"activations of shape {tuple(activations.shape)} do not match the store's "
                f"(n_layers={self.n_layers}, n, d_model={self.d_model})"
            )
        # A length mismatch would shift every later index row against its activations, silently.
        for name, column in (("documents", documents), ("position", position), ("token_id", token_id)):
            if len(column) != activations.shape[1]:
                raise ValueError(f"{name} has {len(column)} entries for {activations.shape[1]} tokens of activations")
        rows = pd.DataFrame({"document": list(documents), "position": position.numpy(), "token_id": token_id.numpy()})
        kept = torch.from_numpy(self.keep.token_mask(rows["document"].tolist(), rows["position"].to_numpy()))
        if not kept.all():
            activations, rows = activations[:, kept], rows[kept.numpy()].reset_index(drop=True)
        # One layer at a time: the fp32 copy of a whole batch would be twice the batch.
        norms = torch.stack([_stored_norms(layer) for layer in activations], dim=1)
        if len(self.layers) != self.n_layers:
            activations = activations[list(self.layers)]
        self._append(activations, norms, rows)

    def add_stored(self, activations: torch.Tensor, norms: torch.Tensor, rows: pd.DataFrame) -> None:
        """Add tokens as another store of the same selection holds them: activations (n_kept_layers, n, d_model),
        their norms (n, n_layers) and index rows (document, position, token_id)."""
        if activations.shape[0] != len(self.layers) or norms.shape != (activations.shape[1], self.n_layers):
            raise ValueError(
                f"stored activations {tuple(activations.shape)} and norms {tuple(norms.shape)} do not match a store "
                f"keeping layers {list(self.layers)} of {self.n_layers}"
            )
        self._append(activations, norms, rows[["document", "position", "token_id"]].reset_index(drop=True))

    def _append(self, activations: torch.Tensor, norms: torch.Tensor, rows: pd.DataFrame) -> None:
        """Copy kept tokens (n_kept_layers, n, d_model) into the shard buffer, flushing full shards."""
        self._pending_rows.append(rows)
        self._norms.append(norms)
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
        with naming_a_full_disk(f"the activation store {self.folder} ({name})"):
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
        selection = {} if self.keep.keeps_everything else {SELECTION: self.keep.to_manifest()}
        manifest = {
            **self.metadata,
            **selection,
            "bytes_per_token": bytes_per_token(len(self.layers), self.n_layers, self.d_model, STORE_DTYPE.itemsize),
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
        with naming_a_full_disk(f"the activation store {self.folder}"):
            index.to_parquet(self._tmp / INDEX, index=False)
            save_file({"norms": torch.cat(self._norms)}, str(self._tmp / TOKEN_NORMS))
            (self._tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
            replace_folder(self._tmp, self.folder)
        return open_published(self.folder)

    def abort(self) -> None:
        """Remove what this writer staged (after a failed capture); the store in place is untouched."""
        shutil.rmtree(self._tmp, ignore_errors=True)


def open_published(folder: Path, wait_seconds: float = 5.0) -> ActivationStore:
    """The store just published at `folder`. Where the OS cannot exchange two folders, another writer replacing
    it at the same moment leaves the folder absent for the instant between retiring the old store and moving in
    the new one (`sae_core.staging.replace_folder`); that instant is waited out, never reported as missing."""
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            return ActivationStore(folder)
        except FileNotFoundError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


@contextmanager
def open_store_file(path: Path) -> Iterator:
    """`safe_open(path)` on a store's shard or norms file. A file cut short or corrupt is a ValueError naming it and
    its store (safetensors' own error names no file); the store must then be captured again."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            yield handle
    except SafetensorError as error:
        named = Path(os.path.normpath(path))  # a combined store's shards are "../<part>/shard_…"
        raise ValueError(
            f"{named} is not a readable safetensors file ({error}): the activation store in {named.parent} is "
            "damaged; capture it again"
        ) from error


def document_fingerprint(text: str) -> str:
    """A short content hash of a document's text (sha256, 16 hex digits)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def documents_held(store: ActivationStore, fingerprints: dict[str, str]) -> set[str]:
    """The documents of `fingerprints` (name → fingerprint) that `store` holds, captured from the same text."""
    held = store.manifest.get(FINGERPRINTS, {})
    return {name for name, fingerprint in fingerprints.items() if held.get(name) == fingerprint}


def capture_identity(manifest: dict) -> dict:
    """What two stores must share for the tokens of one to stand in for or sit beside the other's: the model
    and how it read the documents (`CAPTURE`). A day's store is reused, and day stores are combined into one
    corpus, only under this rule; the same token read in a window of other length is another activation."""
    return {key: manifest.get(key) for key in _CAPTURE_IDENTITY}


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
        self.manifest = read_json_object(manifest_path)  # a cut or corrupt manifest: ValueError naming it
        self._check_parts()
        self.n_layers: int = self.manifest["n_layers"]
        self.d_model: int = self.manifest["d_model"]
        self.n_tokens: int = self.manifest["n_tokens"]
        self.selection = StoreSelection.from_manifest(self.manifest)
        self.layers: tuple[int, ...] = self.selection.kept_layers(self.n_layers)
        """The model layers whose activations the shards hold, in shard order."""

    def _check_parts(self) -> None:
        """A combined store (`combine_stores`) is valid only while every part is the one it combined."""
        for part in self.manifest.get("parts", ()):
            part_manifest = self.folder / part["folder"] / MANIFEST
            held = read_json_object(part_manifest).get("store_id") if part_manifest.exists() else None
            if held != part["store_id"]:
                raise ValueError(
                    f"{self.folder} combines {part['folder']}, which has been rewritten or removed since: "
                    "combine the stores again (rematerialize activation_corpus)"
                )

    @property
    def index(self) -> pd.DataFrame:
        """One row per token: document, position, token_id, shard, row (in store order)."""
        return pd.read_parquet(self.folder / INDEX)

    @property
    def bytes_per_token(self) -> dict[str, int]:
        """What one stored token costs on disk: activations (kept layers × d_model × 2), norms (n_layers × 4), total."""
        return bytes_per_token(len(self.layers), self.n_layers, self.d_model, STORE_DTYPE.itemsize)

    def shard_sizes(self) -> np.ndarray:
        """(n_shards,) int64: the tokens of each shard, in shard order (read from the index's shard column)."""
        shard = pd.read_parquet(self.folder / INDEX, columns=["shard"])["shard"].to_numpy()
        return np.bincount(shard, minlength=len(self.manifest["shards"])).astype(np.int64)

    def _position(self, layer: int) -> int:
        """Where `layer` lies along the shards' first dimension; refuses a layer out of range or not kept."""
        if not 0 <= layer < self.n_layers:
            raise IndexError(f"layer {layer} is out of range: the store holds layers 0..{self.n_layers - 1}")
        if layer not in self.layers:
            raise LayerNotStored(
                f"{self.folder} keeps the activations of layers {list(self.layers)} only (store.json "
                f"'{SELECTION}'), not layer {layer}: capture again keeping it"
            )
        return self.layers.index(layer)

    def layer_chunks(self, layer: int, dtype: torch.dtype = torch.float32) -> Iterator[torch.Tensor]:
        """Yield `layer`'s residual stream one shard at a time: (n_tokens_in_shard, d_model) each, in store order.
        Only that layer's contiguous slice of each shard is read."""
        position = self._position(layer)
        for name in self.manifest["shards"]:
            with open_store_file(self.folder / name) as shard:
                yield shard.get_slice("activations")[position].to(dtype)

    def layer(self, layer: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """All tokens' residual stream after `layer`: (n_tokens, d_model), in store order (the whole layer in
        memory: `layer_chunks` streams it)."""
        return torch.cat(list(self.layer_chunks(layer, dtype)))

    def token_norms(self) -> torch.Tensor:
        """‖x_{t,l}‖ of every stored vector: (n_tokens, n_layers) float32, tokens in store order.

        Read from the store's norms file; a store written before it existed has them computed from
        its shards (one pass, nothing written).
        """
        path = self.folder / self.manifest.get("token_norms", TOKEN_NORMS)
        if path.exists():
            with open_store_file(path) as norms:
                return norms.get_tensor("norms")
        return torch.cat([shard.norm(dim=2) for shard in self.iter_shards()])

    def iter_shards(self, layers: Sequence[int] | None = None) -> Iterator[torch.Tensor]:
        """Yield each shard as (n_tokens_in_shard, n_selected_layers, d_model) float32; `layers` None: every
        layer of the model (refused, `LayerNotStored`, by a store that kept only some)."""
        positions = [self._position(layer) for layer in (range(self.n_layers) if layers is None else layers)]
        for name in self.manifest["shards"]:
            with open_store_file(self.folder / name) as shard:
                acts = shard.get_tensor("activations")
            if positions != list(range(len(self.layers))):
                acts = acts[positions]
            yield acts.float().transpose(0, 1)
