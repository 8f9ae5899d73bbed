"""Specification of streamed training rows (sae_core.activation_stream): the rows a stream yields are the
in-memory rows, each once per epoch, through a buffer that never grows; a run on them trains, resumes bit for
bit, and is scored and encoded shard by shard with the numbers of the whole-layer path."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch

from sae_core.activation_store import ActivationStoreWriter
from sae_core.activation_stream import RowStream, ShuffleBuffer, StoreRows, rebatch, store_unit_scales
from sae_core.config import SaeConfig, TrainConfig
from sae_core.features import encode_tokens, pool_batches, pool_documents
from sae_core.massive_activations import find_massive_tokens
from sae_core.token_split import layer_metrics, store_layer_metrics, token_split
from sae_core.train import train_sae
from sae_core.training_data import sample_group_activations, unit_scales

N_LAYERS, D_MODEL, SHARD_TOKENS = 3, 6, 8
DOCUMENTS = {"AAPL": 11, "MSFT": 9, "XOM": 7, "JPM": 10}  # 37 tokens: shards of 8, 8, 8, 8, 5

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture
def store(tmp_path):
    generator = torch.Generator().manual_seed(0)
    writer = ActivationStoreWriter(tmp_path / "store", N_LAYERS, D_MODEL, shard_tokens=SHARD_TOKENS, metadata={"model": "m"})
    for document, n in DOCUMENTS.items():
        acts = torch.randn(N_LAYERS, n, D_MODEL, generator=generator) * (1 + torch.arange(N_LAYERS))[:, None, None] + 2
        writer.add(acts, [document] * n, torch.arange(n), torch.arange(n))
    return writer.close()


@pytest.fixture
def train_mask(store):
    mask = torch.ones(store.n_tokens, dtype=torch.bool)
    mask[[0, 5, 12, 30]] = False  # tokens that do not train (held out, massive)
    return mask


def as_counter(rows: torch.Tensor) -> Counter:
    return Counter(tuple(row.tolist()) for row in rows)


def test_materialized_group_rows_are_the_whole_layer_sampler_s_rows(store, train_mask):
    layers = [0, 1, 2]
    training = [store.layer(layer, dtype=torch.float16)[train_mask] for layer in layers]
    for scales in (None, unit_scales(training)):
        expected = sample_group_activations(training, torch.Generator().manual_seed(4), scales).float()
        rows = StoreRows(store, layers, train_mask, torch.Generator().manual_seed(4), scales)
        assert rows.shape == (int(train_mask.sum()), D_MODEL) and len(rows) == 33
        assert torch.equal(rows.materialize(), expected)


def test_streamed_unit_scales_are_the_whole_layer_ones(store, train_mask):
    training = [store.layer(layer, dtype=torch.float16)[train_mask] for layer in range(N_LAYERS)]
    assert store_unit_scales(store, range(N_LAYERS), train_mask) == pytest.approx(unit_scales(training), rel=1e-12)


def test_rows_at_any_positions_are_the_materialized_rows_there(store, train_mask):
    rows = StoreRows(store, [0, 2], train_mask, torch.Generator().manual_seed(1))
    positions = torch.tensor([32, 0, 7, 8, 8, 20])
    assert torch.equal(rows[positions], rows.materialize()[positions])
    with pytest.raises(IndexError, match="0..32"):
        rows[torch.tensor([33])]


def test_an_epoch_yields_every_training_row_exactly_once(store, train_mask):
    rows = StoreRows(store, [0, 1, 2], train_mask, torch.Generator().manual_seed(2), buffer_rows=10)
    epoch = torch.cat(list(rows.epoch_chunks(epoch=0, seed=7)))
    assert epoch.shape == (33, D_MODEL)
    assert as_counter(epoch) == as_counter(rows.materialize())
    assert not torch.equal(epoch, rows.materialize())  # shuffled
    other_epoch = torch.cat(list(rows.epoch_chunks(epoch=1, seed=7)))
    assert as_counter(other_epoch) == as_counter(epoch) and not torch.equal(other_epoch, epoch)


def test_batches_straddle_epochs_and_a_stream_started_at_row_k_continues_the_stream(store, train_mask):
    rows = StoreRows(store, [1], train_mask, buffer_rows=12)
    stream = RowStream(rows, seed=3)
    batches = [stream.next(10) for _ in range(7)]  # 70 rows: two whole epochs of 33 and 4 rows of a third
    assert all(batch.shape == (10, D_MODEL) for batch in batches)
    flat = torch.cat(batches)
    for epoch in range(2):
        assert as_counter(flat[33 * epoch : 33 * (epoch + 1)]) == as_counter(rows.materialize())
    resumed = RowStream(rows, seed=3, start_row=40)
    assert torch.equal(torch.cat([resumed.next(10) for _ in range(3)]), flat[40:70])


def test_the_shuffle_buffer_never_holds_more_than_its_capacity():
    buffer = ShuffleBuffer(capacity=16, width=2, generator=torch.Generator().manual_seed(0))
    storage = buffer.rows.data_ptr()
    pushed = torch.arange(100.0).repeat_interleave(2).view(100, 2)
    emitted = []
    for chunk in pushed.split(23):
        for out in buffer.push(chunk):
            assert len(out) <= 16
            emitted.append(out)
        assert buffer.filled <= 16 and buffer.rows.shape == (16, 2) and buffer.rows.data_ptr() == storage
    assert sum(len(out) for out in emitted) == 100 - 16
    emitted += list(buffer.drain())
    assert sorted(torch.cat(emitted)[:, 0].tolist()) == pushed[:, 0].tolist()


def test_a_store_without_the_group_s_layer_or_a_bad_mask_is_refused_by_name(tmp_path, store, train_mask):
    with pytest.raises(ValueError, match=r"\(37,\) bool mask"):
        StoreRows(store, [0], train_mask[:-1])
    with pytest.raises(ValueError, match="needs a generator"):
        StoreRows(store, [0, 1], train_mask)
    with pytest.raises(IndexError, match="out of range"):
        StoreRows(store, [3], train_mask)


def test_training_on_streamed_rows_learns_and_resumes_bit_for_bit(tmp_path, store, train_mask):
    rows = StoreRows(store, [0, 1, 2], train_mask, torch.Generator().manual_seed(0), buffer_rows=12)
    sae_cfg = SaeConfig(d_in=D_MODEL, expansion_factor=4, k=3)
    settings = {"batch_size": 8, "total_tokens": 8 * 10, "log_every": 1, "checkpoint_every": 4}
    reference = train_sae(rows, sae_cfg, TrainConfig(**settings))
    assert reference.tokens_seen == 80 and reference.history[-1]["fvu"] < reference.history[0]["fvu"]

    class Killed(Exception):
        pass

    def kill_at_step_7(line: str) -> None:
        if line.startswith("step 7/"):
            raise Killed

    checkpointed = TrainConfig(**settings, checkpoint_dir=str(tmp_path / "checkpoint"))
    with pytest.raises(Killed):
        train_sae(rows, sae_cfg, checkpointed, log=kill_at_step_7)
    resumed = train_sae(rows, sae_cfg, checkpointed)
    assert resumed.resumed_from_step == 4
    for name, value in reference.sae.state_dict().items():
        assert torch.equal(resumed.sae.state_dict()[name], value), name


def test_held_out_metrics_read_shard_by_shard_equal_the_whole_layer_ones(store):
    documents = store.index.document
    split = token_split(documents, 0.5, find_massive_tokens(store.token_norms(), norm_multiple=1.5))
    rows = StoreRows(store, [1], split.train)
    sae = train_sae(rows.materialize(), SaeConfig(d_in=D_MODEL, expansion_factor=2, k=2),
                    TrainConfig(batch_size=8, total_tokens=64)).sae
    for batch_size in (8192, 5):
        whole = layer_metrics(sae, store.layer(1), split) if batch_size == 8192 else None
        streamed = store_layer_metrics(sae, store, 1, split, batch_size=batch_size)
        if whole is not None:
            assert streamed == whole
        assert streamed.n_tokens == int(split.evaluate.sum())


def test_pooling_streamed_batches_equals_pooling_the_codes_of_all_tokens(store):
    sae = train_sae(store.layer(2), SaeConfig(d_in=D_MODEL, expansion_factor=2, k=2), TrainConfig(batch_size=8, total_tokens=64)).sae
    document = pd.factorize(store.index.document)[0]
    codes = encode_tokens(sae, store.layer(2))
    for pooling in ("mean", "max", "sum"):
        expected = pool_documents(codes, document, len(DOCUMENTS), sae.cfg.d_sae, pooling)
        chunks = zip(rebatch(store.layer_chunks(2), 5), np.array_split(document, range(5, len(document), 5)))
        torch.testing.assert_close(pool_batches(sae, chunks, len(DOCUMENTS), pooling), expected)


def test_rebatch_gives_exact_batches_of_the_rows_in_order():
    chunks = [torch.arange(n, dtype=torch.float32)[:, None] + 100 * i for i, n in enumerate([3, 7, 0, 4])]
    batches = list(rebatch(chunks, 4))
    assert [len(batch) for batch in batches] == [4, 4, 4, 2]
    assert torch.equal(torch.cat(batches), torch.cat(chunks))
