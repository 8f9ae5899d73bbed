"""Stores made from stores: tokens copied from one store into a writer, and stores combined without a copy."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import save_file

from sae_core.activation_store import (
    INDEX,
    MANIFEST,
    TOKEN_NORMS,
    ActivationStore,
    ActivationStoreWriter,
    capture_identity,
    open_published,
    open_store_file,
)
from sae_core.full_disk import naming_a_full_disk
from sae_core.staging import replace_folder, staged_sibling


def copy_documents(store: ActivationStore, documents: set[str], writer: ActivationStoreWriter) -> int:
    """Add every stored token of `documents` from `store` to `writer`, exactly as stored (no model pass).

    Reads one shard at a time; returns the number of tokens copied. This is how a store grows by new
    documents without running the model again over the documents it already holds. Both must keep the
    same selection (`StoreSelection`).
    """
    if (store.n_layers, store.d_model, store.selection) != (writer.n_layers, writer.d_model, writer.keep):
        raise ValueError(
            f"cannot copy from a store of {store.n_layers} layers × {store.d_model} keeping {store.selection} into "
            f"one of {writer.n_layers} × {writer.d_model} keeping {writer.keep}"
        )
    index = store.index
    wanted = index[index["document"].isin(documents)]
    norms = store.token_norms()
    for shard_number, rows in wanted.groupby("shard", sort=True):
        with open_store_file(store.folder / store.manifest["shards"][shard_number]) as shard:
            activations = shard.get_tensor("activations")
        take = torch.from_numpy(rows["row"].to_numpy())
        writer.add_stored(activations[:, take], norms[torch.from_numpy(rows.index.to_numpy())], rows)
    return len(wanted)


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
    manifest = {
        **{key: value for key, value in capture_identity(first.manifest).items() if value is not None},
        "n_layers": first.n_layers,
        "d_model": first.d_model,
        "n_tokens": len(index),
        "n_documents": int(index["document"].nunique()),
        "dtype": first.manifest["dtype"],
        "layout": first.manifest["layout"],
        "bytes_per_token": first.bytes_per_token,
        "shards": shards,
        "token_norms": TOKEN_NORMS,
        "non_finite_values": sum(int(store.manifest["non_finite_values"]) for store in stores),
        "parts": parts,
        "store_id": uuid.uuid4().hex,
    }
    staging = staged_sibling(folder)
    staging.mkdir(parents=True)
    try:
        with naming_a_full_disk(f"the combined activation store {folder}"):
            index.to_parquet(staging / INDEX, index=False)
            save_file({"norms": torch.cat([store.token_norms() for store in stores])}, str(staging / TOKEN_NORMS))
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
            replace_folder(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return open_published(folder)
