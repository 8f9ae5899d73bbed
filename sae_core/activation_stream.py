"""SAE training rows read from an activation store shard by shard, in memory bounded by a shuffle buffer.

The rows of an SAE over a store (`StoreRows`) are, in store order, one row per chosen token t:

    row_t = s_g · x_{t, layers[g_t]}      g_t ~ U{0..G−1} drawn once per token (Group-SAE), s_g = 1 unless
                                          per-layer scales are given (`store_unit_scales`)

exactly the rows `sae_core.train.sample_group_activations` builds from whole layers with the same
generator, so `materialize()` is that tensor and a streamed run sees the same data set. The one cost that
grows with the corpus is g_t: one byte per training token.

Streaming (`RowStream`), the way sparsify and SAELens feed a trainer from disk: epoch e reads the shards in
a random order (seeded by (seed, e)) through a `ShuffleBuffer` of C rows, so every row appears exactly once
per epoch and a batch mixes rows from about C / shard_tokens shards. Batches are consecutive slices of the
epochs' concatenation (a batch may straddle two epochs, as in memory), so the stream after k rows is a pure
function of (seed, k): a resumed run seeks to step · batch_size and needs no buffer in its checkpoint.
Resident memory: C × d float32 for the buffer, a shard's layer slice, a batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from sae_core.activation_store import ActivationStore, open_store_file

DEFAULT_BUFFER_ROWS = 65_536
"""Shuffle-buffer rows: 16 shards of 4,096 tokens; 151 MB at d_model 576."""


class ShuffleBuffer:
    """Rows in, the same rows out in random order, never holding more than `capacity` rows.

    `push(chunk)` fills free slots first; once full, each incoming row takes the slot of a uniformly random
    resident row, which is emitted (the replacement sampler of tf.data's shuffle, vectorised per chunk).
    `drain()` emits the rows left, shuffled. Every row pushed is emitted exactly once.
    """

    def __init__(self, capacity: int, width: int, generator: torch.Generator):
        if capacity < 1:
            raise ValueError(f"shuffle buffer capacity must be >= 1 row, got {capacity}")
        self.rows = torch.empty(capacity, width)
        """(capacity, width) float32; the first `filled` rows resident until the buffer first fills."""
        self.filled = 0
        self.generator = generator

    def push(self, chunk: Tensor) -> Iterator[Tensor]:
        """Take the rows of `chunk` (m, width); yield the rows they displace, (≤ capacity, width) each."""
        capacity = len(self.rows)
        start = min(capacity - self.filled, len(chunk))
        self.rows[self.filled : self.filled + start] = chunk[:start]
        self.filled += start
        while start < len(chunk):
            incoming = chunk[start : start + capacity]
            slots = torch.randperm(capacity, generator=self.generator)[: len(incoming)]
            out = self.rows[slots]  # a copy: the slots are overwritten next
            self.rows[slots] = incoming
            start += len(incoming)
            yield out

    def drain(self, piece_rows: int = 4096) -> Iterator[Tensor]:
        """Yield the resident rows in random order, `piece_rows` at a time, and empty the buffer."""
        order = torch.randperm(self.filled, generator=self.generator)
        self.filled = 0
        for piece in order.split(piece_rows):
            yield self.rows[piece]


class StoreRows:
    """The training rows of one SAE over a store, read shard by shard (module docstring).

    Indexable like an (n_rows, d_model) float32 tensor (`len`, `shape`, `rows[index]`), so the SAE's
    initialisation draws its random subsample from it as from a tensor; `materialize()` is the tensor.

    Args:
        store: the activation store.
        layers: the G model layers a row may come from (a group; one layer for a per-layer SAE).
        tokens: (N,) bool over the store's tokens: which become rows (e.g. `TokenSplit.train`).
        generator: draws g_t with `torch.randint(G, (n_rows,))`, as `sample_group_activations` does;
            needed when G > 1.
        layer_scales: (G,) factors s_g, or None.
        buffer_rows: the shuffle buffer's capacity C when streamed.
    """

    def __init__(
        self,
        store: ActivationStore,
        layers: Sequence[int],
        tokens: Tensor,
        generator: torch.Generator | None = None,
        layer_scales: Sequence[float] | None = None,
        buffer_rows: int = DEFAULT_BUFFER_ROWS,
    ):
        self.store, self.layers = store, tuple(layers)
        self.positions = [store._position(layer) for layer in self.layers]  # refuses a layer the store lacks
        if tokens.shape != (store.n_tokens,) or tokens.dtype != torch.bool:
            raise ValueError(f"tokens must be a ({store.n_tokens},) bool mask over the store, got {tuple(tokens.shape)} {tokens.dtype}")
        if layer_scales is not None and len(layer_scales) != len(self.layers):
            raise ValueError(f"layer_scales has {len(layer_scales)} entries for {len(self.layers)} layers")
        if len(self.layers) > 1 and generator is None:
            raise ValueError(f"a group of {len(self.layers)} layers needs a generator to choose each token's layer")
        self.tokens, self.layer_scales, self.buffer_rows = tokens, layer_scales, buffer_rows
        sizes = store.shard_sizes()
        self._token_start = np.concatenate([[0], np.cumsum(sizes)])
        counts = [int(tokens[a:b].sum()) for a, b in zip(self._token_start[:-1], self._token_start[1:])]
        self._row_start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        n_rows = int(self._row_start[-1])
        self.shape = torch.Size((n_rows, store.d_model))
        self.dtype, self.device = torch.float32, torch.device("cpu")
        self.choice = None
        if len(self.layers) > 1:
            self.choice = torch.randint(len(self.layers), (n_rows,), generator=generator).to(torch.uint8)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def n_shards(self) -> int:
        return len(self._row_start) - 1

    def read_shard(self, shard: int) -> Tensor:
        """The rows of shard `shard`, (m, d_model) float32 in store order; reads each layer's slice once."""
        start, stop = self._token_start[shard], self._token_start[shard + 1]
        local = torch.nonzero(self.tokens[start:stop]).flatten()
        out = torch.empty(len(local), self.shape[1])
        if not len(local):
            return out
        first = int(self._row_start[shard])
        choice = None if self.choice is None else self.choice[first : first + len(local)]
        name = self.store.manifest["shards"][shard]
        with open_store_file(self.store.folder / name) as handle:
            stored = handle.get_slice("activations")
            for g, position in enumerate(self.positions):
                picked = torch.ones(len(local), dtype=torch.bool) if choice is None else choice == g
                if not picked.any():
                    continue
                x = stored[position][local[picked]].float()  # one layer's slice of the shard, then its rows
                out[picked] = x if self.layer_scales is None else x * self.layer_scales[g]
        if not torch.isfinite(out).all():
            raise ValueError(f"activations of layers {list(self.layers)} in {self.store.folder / name} contain NaN/inf")
        return out

    def __getitem__(self, rows: Tensor) -> Tensor:
        """Rows at positions `rows` (m,) int64, in that order: (m, d_model) float32. Reads each shard holding
        one of them once (a uniform subsample of the rows reads about every shard)."""
        rows = torch.as_tensor(rows, dtype=torch.long).flatten()
        if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= len(self)):
            raise IndexError(f"row positions must lie in 0..{len(self) - 1}")
        shard_of = np.searchsorted(self._row_start, rows.numpy(), side="right") - 1
        out = torch.empty(len(rows), self.shape[1])
        for shard in np.unique(shard_of):
            here = torch.from_numpy(np.flatnonzero(shard_of == shard))
            out[here] = self.read_shard(int(shard))[rows[here] - int(self._row_start[shard])]
        return out

    def materialize(self) -> Tensor:
        """All rows in store order, (n_rows, d_model) float32: the in-memory training tensor."""
        return torch.cat([self.read_shard(shard) for shard in range(self.n_shards)])

    def epoch_chunks(self, epoch: int, seed: int) -> Iterator[Tensor]:
        """Every row once, shuffled: shards in a random order through a `ShuffleBuffer` of `buffer_rows`."""
        generator = torch.Generator().manual_seed(_epoch_seed(seed, epoch))
        buffer = ShuffleBuffer(min(self.buffer_rows, max(len(self), 1)), self.shape[1], generator)
        for shard in torch.randperm(self.n_shards, generator=generator).tolist():
            yield from buffer.push(self.read_shard(shard))
        yield from buffer.drain()

    def identity(self) -> dict:
        """What a checkpoint of a run on these rows must match besides their shape and sampled rows."""
        digest = hashlib.sha256(self.tokens.numpy().tobytes())
        if self.choice is not None:
            digest.update(self.choice.numpy().tobytes())
        return {"store_id": self.store.manifest.get("store_id", ""), "layers": list(self.layers),
                "layer_scales": None if self.layer_scales is None else list(self.layer_scales),
                "buffer_rows": self.buffer_rows, "rows_sha256": digest.hexdigest()}


class RowStream:
    """Consecutive batches of the epochs' concatenation (module docstring), from row `start_row` on."""

    def __init__(self, rows: StoreRows, seed: int, start_row: int = 0):
        if len(rows) == 0:
            raise ValueError(f"no training rows in {rows.store.folder}: the token mask selects none")
        self.rows, self.seed = rows, seed
        self.epoch, offset = divmod(start_row, len(rows))
        self._chunks = rows.epoch_chunks(self.epoch, seed)
        self._pending: list[Tensor] = []
        self._pending_rows = 0
        if offset:
            self.next(offset)  # seek: read and drop the epoch's first rows

    def next(self, n: int) -> Tensor:
        """The next `n` rows, (n, d_model) float32."""
        while self._pending_rows < n:
            chunk = next(self._chunks, None)
            if chunk is None:
                self.epoch += 1
                self._chunks = self.rows.epoch_chunks(self.epoch, self.seed)
                continue
            self._pending.append(chunk)
            self._pending_rows += len(chunk)
        joined = torch.cat(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending = [joined[n:]] if len(joined) > n else []
        self._pending_rows = len(joined) - n
        return joined[:n]


def store_unit_scales(store: ActivationStore, layers: Sequence[int], tokens: Tensor) -> list[float]:
    """s_l = sqrt(1 / mean_{t ∈ tokens} ‖x_{t,l}‖²) for each of `layers` (`sae_core.train.unit_scales`), summed
    in float64 shard by shard."""
    n = int(tokens.sum())
    if n == 0:
        raise ValueError("store_unit_scales: the token mask selects no token")
    scales = []
    for layer in layers:
        total, start = 0.0, 0
        for chunk in store.layer_chunks(layer, dtype=torch.float16):
            total += float(chunk[tokens[start : start + len(chunk)]].double().pow(2).sum())
            start += len(chunk)
        scales.append((1.0 / (total / n)) ** 0.5)
    return scales


def masked_layer_chunks(store: ActivationStore, layer: int, tokens: Tensor) -> Iterator[Tensor]:
    """`layer`'s rows of the tokens in `tokens` (N,) bool, shard by shard in store order: (m, d_model) each."""
    start = 0
    for chunk in store.layer_chunks(layer):
        part = chunk[tokens[start : start + len(chunk)]]
        start += len(chunk)
        if len(part):
            yield part


def rebatch(chunks: Iterable[Tensor], batch_size: int) -> Iterator[Tensor]:
    """The rows of `chunks`, in order, as batches of exactly `batch_size` rows (the last one shorter)."""
    pending: list[Tensor] = []
    held = 0
    for chunk in chunks:
        pending.append(chunk)
        held += len(chunk)
        if held >= batch_size:
            joined = torch.cat(pending)
            whole = len(joined) - len(joined) % batch_size
            yield from joined[:whole].split(batch_size)
            pending, held = [joined[whole:]], len(joined) - whole
    if held:
        yield torch.cat(pending)


def _epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed for epoch `epoch` of a run seeded `seed` (distinct per pair)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{epoch}".encode()).digest()[:8], "little") >> 1
