"""Specification of the activation store: what goes in comes out (to fp16 precision) with an index
that says where each token lives, a store appears at its folder only when whole, and bad input is
an error that names the problem."""

from __future__ import annotations

import json

import pytest
import torch

from sae_core.activation_store import ActivationStore, ActivationStoreWriter, StoreRef
from sae_core.store_combine import combine_stores

N_LAYERS, D_MODEL = 3, 8


def batch(n_tokens: int, document: str, seed: int) -> dict:
    """One captured batch of a single document: activations (N_LAYERS, n_tokens, D_MODEL) and its index columns."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "activations": torch.randn(N_LAYERS, n_tokens, D_MODEL, generator=generator) * 10,
        "documents": [document] * n_tokens,
        "position": torch.arange(n_tokens),
        "token_id": torch.arange(n_tokens) + 100 * seed,
    }


def write_store(folder, batches: list[dict], shard_tokens: int = 4, **metadata) -> ActivationStore:
    writer = ActivationStoreWriter(
        folder, n_layers=N_LAYERS, d_model=D_MODEL, metadata=metadata, shard_tokens=shard_tokens
    )
    for item in batches:
        writer.add(**item)
    return writer.close()


@pytest.fixture
def three_batches() -> list[dict]:
    # 3 + 5 + 2 = 10 tokens: with shard_tokens=4 the shards hold 4, 4 and 2 tokens, and
    # both batch boundaries fall inside a shard.
    return [batch(3, "AAPL", seed=1), batch(5, "MSFT", seed=2), batch(2, "XOM", seed=3)]


# --- round trip -----------------------------------------------------------------------------------


def test_each_layer_reads_back_as_the_concatenated_inputs_in_fp16(tmp_path, three_batches):
    store = write_store(tmp_path / "store", three_batches)
    everything = torch.cat([item["activations"] for item in three_batches], dim=1)  # (L, 10, d)
    for layer in range(N_LAYERS):
        read = store.layer(layer)
        assert read.shape == (10, D_MODEL) and read.dtype == torch.float32
        assert torch.equal(read, everything[layer].half().float())  # exactly the fp16 rounding
        torch.testing.assert_close(read, everything[layer], atol=1e-2, rtol=1e-3)
    assert store.layer(1, dtype=torch.float16).dtype == torch.float16


def test_the_store_is_split_into_shards_of_shard_tokens(tmp_path, three_batches):
    store = write_store(tmp_path / "store", three_batches)
    assert store.manifest["shards"] == [f"shard_0000{i}.safetensors" for i in range(3)]
    assert all((tmp_path / "store" / name).is_file() for name in store.manifest["shards"])
    assert [shard.shape[0] for shard in store.iter_shards()] == [4, 4, 2]


def test_index_rows_say_which_document_position_token_shard_and_row(tmp_path, three_batches):
    index = write_store(tmp_path / "store", three_batches).index
    assert list(index.columns) == ["document", "position", "token_id", "shard", "row"]
    assert index["document"].tolist() == ["AAPL"] * 3 + ["MSFT"] * 5 + ["XOM"] * 2
    assert index["position"].tolist() == [0, 1, 2, 0, 1, 2, 3, 4, 0, 1]
    assert index["token_id"].tolist() == [100, 101, 102, 200, 201, 202, 203, 204, 300, 301]
    assert index["shard"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    assert index["row"].tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]


def test_an_index_row_locates_its_token_in_its_shard(tmp_path, three_batches):
    store = write_store(tmp_path / "store", three_batches)
    shards = list(store.iter_shards())
    msft_position_4 = store.index.query("document == 'MSFT' and position == 4").iloc[0]
    stored = shards[msft_position_4["shard"]][msft_position_4["row"]]  # (n_layers, d)
    expected = three_batches[1]["activations"][:, 4].half().float()
    assert torch.equal(stored, expected)


def test_iter_shards_selects_layers_in_the_order_asked(tmp_path, three_batches):
    store = write_store(tmp_path / "store", three_batches)
    shards = list(store.iter_shards(layers=[2, 0]))
    assert [tuple(shard.shape) for shard in shards] == [(4, 2, D_MODEL), (4, 2, D_MODEL), (2, 2, D_MODEL)]
    selected = torch.cat(shards)  # (n_tokens, 2, d)
    assert torch.equal(selected[:, 0], store.layer(2))
    assert torch.equal(selected[:, 1], store.layer(0))


def test_manifest_describes_the_store_and_keeps_the_metadata(tmp_path, three_batches):
    store = write_store(tmp_path / "store", three_batches, model="tiny-llama")
    manifest = json.loads((tmp_path / "store" / "store.json").read_text())
    assert manifest == store.manifest
    assert manifest["model"] == "tiny-llama"
    assert (manifest["n_layers"], manifest["d_model"], manifest["n_tokens"], manifest["n_documents"]) == (3, 8, 10, 3)
    assert manifest["dtype"] == "float16"
    assert manifest["non_finite_values"] == 0
    assert (store.n_layers, store.d_model, store.n_tokens) == (3, 8, 10)


def test_a_store_smaller_than_one_shard_is_one_shard(tmp_path):
    store = write_store(tmp_path / "store", [batch(3, "AAPL", seed=1)], shard_tokens=4096)
    assert store.manifest["shards"] == ["shard_00000.safetensors"]
    assert store.n_tokens == 3


# --- nothing half-written -------------------------------------------------------------------------


def test_an_unclosed_writer_leaves_no_store_at_the_folder(tmp_path, three_batches):
    folder = tmp_path / "store"
    writer = ActivationStoreWriter(folder, n_layers=N_LAYERS, d_model=D_MODEL, shard_tokens=4)
    for item in three_batches:
        writer.add(**item)  # two full shards are already on disk, in the temporary folder
    assert list(tmp_path.glob(".store.tmp-*/shard_*.safetensors"))
    assert not folder.exists()
    writer.abort()
    assert not list(tmp_path.iterdir())
    with pytest.raises(FileNotFoundError):
        ActivationStore(folder)


def test_an_existing_store_stays_readable_until_the_new_one_is_closed(tmp_path, three_batches):
    folder = tmp_path / "store"
    old = write_store(folder, three_batches)
    old_layer = old.layer(0)

    writer = ActivationStoreWriter(folder, n_layers=N_LAYERS, d_model=D_MODEL, shard_tokens=4)
    new_batch = batch(6, "NVDA", seed=9)
    writer.add(**new_batch)  # one shard flushed to the temporary folder
    still_old = ActivationStore(folder)
    assert still_old.n_tokens == 10
    assert torch.equal(still_old.layer(0), old_layer)

    new = writer.close()
    assert new.n_tokens == 6
    assert set(ActivationStore(folder).index["document"]) == {"NVDA"}
    assert torch.equal(ActivationStore(folder).layer(0), new_batch["activations"][0].half().float())
    # No shard of the old store survives beside the new one, and no temporary folder is left.
    assert sorted(p.name for p in folder.glob("shard_*")) == ["shard_00000.safetensors", "shard_00001.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_a_leftover_folder_from_an_interrupted_replace_does_not_block_the_next_close(tmp_path, three_batches):
    # A crash after the new store moved in but before the old one was deleted leaves a retired folder
    # behind; retired and staging names are unique to their writer, so it never stands in the way.
    folder = tmp_path / "store"
    write_store(folder, three_batches)
    leftover = tmp_path / ".store.old-0123456789abcdef"
    leftover.mkdir()
    (leftover / "store.json").write_text("{}")

    store = write_store(folder, [batch(2, "XOM", seed=5)])
    assert store.n_tokens == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [leftover.name, "store"]


# --- non-finite values ----------------------------------------------------------------------------


def test_values_beyond_fp16_range_are_counted_as_non_finite(tmp_path):
    item = batch(4, "AAPL", seed=1)
    item["activations"][0, 0, 0] = 1e5  # fp16's largest finite value is 65,504
    item["activations"][2, 3, 7] = -7e4
    item["activations"][1, 1, 1] = 65_000.0  # in range: stored (as the nearest fp16, 64,992), not counted
    item["activations"][1, 2, 2] = float("nan")
    store = write_store(tmp_path / "store", [item])
    assert store.manifest["non_finite_values"] == 3
    assert store.layer(0)[0, 0] == float("inf")
    assert store.layer(1)[1, 1] == 64_992.0


def test_overflows_of_both_signs_are_counted_and_a_shard_of_fp16_maxima_is_not(tmp_path):
    """The writer finds non-finite values with one fp32 sum per shard: +inf and −inf together sum to
    NaN (still found), and a shard of nothing but fp16's largest value sums to a finite number."""
    overflow = batch(4, "AAPL", seed=1)
    overflow["activations"][0, 0, 0], overflow["activations"][0, 1, 0] = 1e5, -1e5
    assert write_store(tmp_path / "overflow", [overflow]).manifest["non_finite_values"] == 2
    maxima = batch(4, "MSFT", seed=2)
    maxima["activations"].fill_(65_504.0)
    assert write_store(tmp_path / "maxima", [maxima]).manifest["non_finite_values"] == 0


# --- errors ---------------------------------------------------------------------------------------


def test_a_layer_out_of_range_is_an_index_error_naming_the_range(tmp_path, three_batches):
    store = write_store(tmp_path / "store", three_batches)
    for bad in (3, -1):
        with pytest.raises(IndexError, match=r"layer .* out of range.*0\.\.2"):
            store.layer(bad)
    with pytest.raises(IndexError, match=r"0\.\.2"):
        next(store.iter_shards(layers=[0, 7]))


@pytest.mark.parametrize(
    "shape",
    [(N_LAYERS + 1, 4, D_MODEL), (N_LAYERS, 4, D_MODEL - 1), (N_LAYERS, 4), (N_LAYERS, 4, D_MODEL, 1)],
    ids=["layers", "width", "2-d", "4-d"],
)
def test_activations_of_the_wrong_shape_are_a_value_error(tmp_path, shape):
    writer = ActivationStoreWriter(tmp_path / "store", n_layers=N_LAYERS, d_model=D_MODEL)
    with pytest.raises(ValueError, match="do not match"):
        writer.add(torch.zeros(shape), ["AAPL"] * 4, torch.arange(4), torch.arange(4))


@pytest.mark.parametrize("column", ["documents", "position", "token_id"])
def test_an_index_column_of_another_length_than_the_activations_is_a_value_error_naming_it(tmp_path, column):
    writer = ActivationStoreWriter(tmp_path / "store", n_layers=N_LAYERS, d_model=D_MODEL)
    item = batch(4, "AAPL", seed=1)
    item[column] = item[column][:3]
    with pytest.raises(ValueError, match=f"{column} has 3 entries for 4 tokens"):
        writer.add(**item)


def test_index_columns_all_shorter_than_the_activations_are_a_value_error(tmp_path):
    # Consistent among themselves, so only a check against the activations catches it.
    writer = ActivationStoreWriter(tmp_path / "store", n_layers=N_LAYERS, d_model=D_MODEL)
    item = batch(4, "AAPL", seed=1)
    item["activations"] = torch.cat([item["activations"], item["activations"][:, :1]], dim=1)  # 5 tokens
    with pytest.raises(ValueError, match="4 entries for 5 tokens"):
        writer.add(**item)


def test_closing_a_writer_that_got_nothing_is_a_value_error(tmp_path):
    writer = ActivationStoreWriter(tmp_path / "store", n_layers=N_LAYERS, d_model=D_MODEL)
    with pytest.raises(ValueError, match="no activations"):
        writer.close()
    assert not (tmp_path / "store").exists()


def test_opening_a_folder_without_a_manifest_is_file_not_found(tmp_path):
    (tmp_path / "not_a_store").mkdir()
    with pytest.raises(FileNotFoundError, match="store.json"):
        ActivationStore(tmp_path / "not_a_store")


# --- token norms ------------------------------------------------------------------------------------


def test_the_store_keeps_the_norm_of_every_stored_vector(tmp_path, three_batches):
    store = write_store(tmp_path / "store", three_batches)
    norms = store.token_norms()
    assert norms.shape == (10, N_LAYERS) and norms.dtype == torch.float32
    from_shards = torch.stack([store.layer(layer).norm(dim=1) for layer in range(N_LAYERS)], dim=1)
    torch.testing.assert_close(norms, from_shards)  # of the fp16 values the store holds, not the inputs


def test_a_store_without_a_norms_file_computes_them_from_its_shards(tmp_path, three_batches):
    store = write_store(tmp_path / "store", three_batches)
    expected = store.token_norms()
    (store.folder / store.manifest["token_norms"]).unlink()
    torch.testing.assert_close(ActivationStore(store.folder).token_norms(), expected)


# --- combined stores: a corpus made of day partitions ------------------------------------------------


def test_a_combined_store_reads_as_its_parts_one_after_another_without_copying_a_shard(tmp_path, three_batches):
    first = write_store(tmp_path / "days" / "2017-05-18", three_batches[:2], model="m")
    second = write_store(tmp_path / "days" / "2018-03-01", three_batches[2:], model="m")
    combined = combine_stores([first, second], tmp_path / "corpus")
    for layer in range(combined.n_layers):
        assert torch.equal(combined.layer(layer), torch.cat([first.layer(layer), second.layer(layer)]))
    assert torch.equal(combined.token_norms(), torch.cat([first.token_norms(), second.token_norms()]))
    assert combined.index.document.tolist() == first.index.document.tolist() + second.index.document.tolist()
    assert sorted(p.name for p in (tmp_path / "corpus").iterdir()) == ["index.parquet", "store.json", "token_norms.safetensors"]
    assert combined.n_tokens == first.n_tokens + second.n_tokens


def test_a_combined_store_is_refused_once_a_part_is_rewritten(tmp_path, three_batches):
    first = write_store(tmp_path / "days" / "a", three_batches[:1], model="m")
    second = write_store(tmp_path / "days" / "b", three_batches[1:2], model="m")
    combine_stores([first, second], tmp_path / "corpus")
    write_store(tmp_path / "days" / "b", three_batches[2:], model="m")
    with pytest.raises(ValueError, match="combines ../days/b, which has been rewritten or removed since"):
        ActivationStore(tmp_path / "corpus")


def test_stores_of_different_models_or_holding_one_document_twice_are_not_combined(tmp_path, three_batches):
    first = write_store(tmp_path / "a", three_batches[:1], model="m")
    other_model = write_store(tmp_path / "b", three_batches[1:2], model="another")
    with pytest.raises(ValueError, match="cannot combine"):
        combine_stores([first, other_model], tmp_path / "corpus")
    again = write_store(tmp_path / "c", three_batches[:1], model="m")
    with pytest.raises(ValueError, match="held by more than one"):
        combine_stores([first, again], tmp_path / "corpus")
    assert not (tmp_path / "corpus").exists()


def test_a_store_reference_names_its_folder_and_shape_and_round_trips_through_json(tmp_path, three_batches):
    store = write_store(tmp_path / "store", three_batches, model="m")
    ref = StoreRef.of(store, "artifacts/x/store")
    assert (ref.folder, ref.model, ref.n_layers, ref.d_model, ref.n_tokens, ref.n_documents) == (
        "artifacts/x/store", "m", N_LAYERS, D_MODEL, 10, 3
    )
    assert StoreRef.from_dict(json.loads(json.dumps(ref.to_dict()))) == ref
    assert StoreRef.of(write_store(tmp_path / "store", three_batches, model="m"), ref.folder).store_id != ref.store_id


def test_a_full_disk_while_combining_is_an_error_naming_the_corpus_and_the_stored_one_stays_whole(
    tmp_path, three_batches, monkeypatch
):
    import errno

    import sae_core.store_combine

    first = write_store(tmp_path / "days" / "a", three_batches[:1], model="m")
    second = write_store(tmp_path / "days" / "b", three_batches[1:2], model="m")
    corpus = tmp_path / "corpus"
    combine_stores([first, second], corpus)
    stored = {path.name: path.read_bytes() for path in corpus.iterdir()}

    def disk_full(tensors, filename, *args, **kwargs):
        raise OSError(errno.ENOSPC, "Error writing bytes to file")

    monkeypatch.setattr(sae_core.store_combine, "save_file", disk_full)
    with pytest.raises(OSError, match=rf"the disk is full: no space left to write the combined activation store {corpus}"):
        combine_stores([second, first], corpus)
    assert {path.name: path.read_bytes() for path in corpus.iterdir()} == stored
    assert sorted(path.name for path in tmp_path.iterdir()) == ["corpus", "days"]  # no staging left
