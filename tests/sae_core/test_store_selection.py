"""Specification of a store that keeps less (sae_core.store_selection): chosen layers read back exactly and
others are refused by name, a token sample depends on the token alone, and bytes per token is what the
shards cost."""

from __future__ import annotations

import json

import pytest
import torch

from sae_core.activation_store import ActivationStore, ActivationStoreWriter
from sae_core.store_combine import combine_stores, copy_documents
from sae_core.store_selection import LayerNotStored, StoreSelection

N_LAYERS, D_MODEL = 4, 8


def captured(n_tokens: int = 400, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {
        "activations": torch.randn(N_LAYERS, n_tokens, D_MODEL, generator=generator),
        "documents": [f"doc{seed}_{i // 50}" for i in range(n_tokens)],
        "position": torch.arange(n_tokens) % 50,
        "token_id": torch.arange(n_tokens),
    }


def write(folder, batches: list[dict], keep: StoreSelection = StoreSelection(), shard_tokens: int = 64) -> ActivationStore:
    writer = ActivationStoreWriter(folder, N_LAYERS, D_MODEL, metadata={"model": "m"}, shard_tokens=shard_tokens, keep=keep)
    for item in batches:
        writer.add(**item)
    return writer.close()


def test_kept_layers_read_back_and_another_layer_is_refused_naming_what_is_kept(tmp_path):
    item = captured()
    store = write(tmp_path / "store", [item], StoreSelection(layers=(2, 0)))
    assert store.layers == (0, 2) and ActivationStore(store.folder).layers == (0, 2)
    for layer in (0, 2):
        assert torch.equal(store.layer(layer), item["activations"][layer].half().float())
    with pytest.raises(LayerNotStored, match=r"keeps the activations of layers \[0, 2\] only.*not layer 1"):
        store.layer(1)
    with pytest.raises(LayerNotStored, match="not layer 1"):
        next(store.iter_shards())
    assert [shard.shape[1] for shard in store.iter_shards(layers=[2, 0])] == [2] * 7
    # The norms of every layer are kept: massive activations are judged on all of them.
    assert store.token_norms().shape == (400, N_LAYERS)
    manifest = json.loads((store.folder / "store.json").read_text())
    assert manifest["selection"] == {"layers": [0, 2], "token_share": 1.0, "seed": 0}


def test_bytes_per_token_is_what_the_kept_layers_and_the_norms_cost_on_disk(tmp_path):
    full = write(tmp_path / "full", [captured()])
    two = write(tmp_path / "two", [captured()], StoreSelection(layers=(1, 3)))
    assert full.bytes_per_token == {"activations": N_LAYERS * D_MODEL * 2, "norms": N_LAYERS * 4, "total": 4 * 8 * 2 + 16}
    assert two.bytes_per_token == {"activations": 2 * D_MODEL * 2, "norms": N_LAYERS * 4, "total": 2 * 8 * 2 + 16}
    assert two.manifest["bytes_per_token"] == two.bytes_per_token
    for store in (full, two):
        shard_bytes = sum((store.folder / name).stat().st_size for name in store.manifest["shards"])
        headers = 200 * len(store.manifest["shards"])  # a safetensors header is ~100 bytes
        assert store.n_tokens * store.bytes_per_token["activations"] <= shard_bytes <= store.n_tokens * store.bytes_per_token["activations"] + headers


def test_a_token_sample_keeps_about_its_share_and_depends_on_the_token_alone(tmp_path):
    keep = StoreSelection(token_share=0.25, seed=5)
    item = captured(n_tokens=2000)
    whole = write(tmp_path / "whole", [item], keep)
    assert 0.2 < whole.n_tokens / 2000 < 0.3
    assert whole.token_norms().shape == (whole.n_tokens, N_LAYERS)
    # Written in other batches and shards, the same tokens are kept, with their activations.
    pieces = [
        {key: value[:, i : i + 300] if key == "activations" else value[i : i + 300] for key, value in item.items()}
        for i in range(0, 2000, 300)
    ]
    pieced = write(tmp_path / "pieced", pieces, keep, shard_tokens=17)
    columns = ["document", "position", "token_id"]
    assert pieced.index[columns].equals(whole.index[columns])
    assert torch.equal(pieced.layer(3), whole.layer(3))
    kept = whole.index.token_id.to_numpy().copy()
    assert torch.equal(whole.layer(1), item["activations"][1, kept].half().float())
    assert write(tmp_path / "other_seed", [item], StoreSelection(token_share=0.25, seed=6)).index.token_id.tolist() != kept.tolist()


def test_sampled_day_stores_combine_into_the_sample_of_their_union_and_copy_whole(tmp_path):
    keep = StoreSelection(layers=(1,), token_share=0.5)
    days = [captured(seed=1), captured(seed=2)]
    combined = combine_stores([write(tmp_path / f"day{i}", [day], keep) for i, day in enumerate(days)], tmp_path / "corpus")
    union = write(tmp_path / "union", days, keep)
    assert combined.index.drop(columns=["shard", "row"]).equals(union.index.drop(columns=["shard", "row"]))
    assert torch.equal(combined.layer(1), union.layer(1)) and combined.selection == keep
    with pytest.raises(ValueError, match="cannot combine"):
        combine_stores([union, write(tmp_path / "full", [captured(seed=3)])], tmp_path / "mixed")
    writer = ActivationStoreWriter(tmp_path / "copy", N_LAYERS, D_MODEL, metadata={"model": "m"}, keep=keep)
    assert copy_documents(union, set(union.index.document), writer) == union.n_tokens
    copy = writer.close()
    assert torch.equal(copy.layer(1), union.layer(1)) and torch.equal(copy.token_norms(), union.token_norms())
    with pytest.raises(ValueError, match="cannot copy"):
        copy_documents(union, {"doc1_0"}, ActivationStoreWriter(tmp_path / "x", N_LAYERS, D_MODEL))


@pytest.mark.parametrize(
    ("keep", "message"),
    [
        ({"token_share": 0.0}, r"token_share must be in \(0, 1\]"),
        ({"token_share": 1.5}, r"token_share must be in \(0, 1\]"),
        ({"layers": ()}, "non-empty list without repeats"),
        ({"layers": (1, 1)}, "non-empty list without repeats"),
    ],
)
def test_a_bad_selection_is_refused_naming_the_setting(keep, message):
    with pytest.raises(ValueError, match=message):
        StoreSelection(**keep)


def test_a_layer_the_model_does_not_have_cannot_be_kept(tmp_path):
    with pytest.raises(ValueError, match=r"layers to keep \[7\] are out of range.*0\.\.3"):
        ActivationStoreWriter(tmp_path / "store", N_LAYERS, D_MODEL, keep=StoreSelection(layers=(0, 7)))
