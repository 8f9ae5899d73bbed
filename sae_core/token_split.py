"""Which stored tokens an SAE trains on and which it is scored on.

Companies are held out whole (`holdout_documents`: a stable crc32 split of their names), so
an SAE is never scored on text it trained on; within both halves only the usable tokens count
(`massive_activations.MassiveTokens.usable_mask`: the massive ones are left out unless kept):

    train          usable tokens of the training companies
    evaluate       usable tokens of the held-out companies          → fvu, l0, dead_fraction
    with_massive   evaluate plus every massive token                → fvu_with_massive

Under "exclude" no SAE ever trains on a massive token, so `fvu_with_massive` is what the SAE does
on tokens it never saw; under "keep" it trained on them, and the two FVUs show how far those few
tokens flatter the figure.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from sae_core.activation_store import ActivationStore
from sae_core.activation_stream import masked_layer_chunks, rebatch
from sae_core.massive_activations import MassiveTokens
from sae_core.metrics import evaluate_sae, evaluate_sae_batches
from sae_core.sae import SparseAutoencoder
from sae_core.sae_set import LayerMetrics


def holdout_documents(names: Sequence[str], share: float) -> list[int]:
    """Indices of the documents held out for evaluation: about `share` of them, chosen by name.

    A document is held out when crc32(name) mod 1000 < share · 1000 (every SAE asset and the
    spliced evaluation hold out the same companies), so the choice depends on neither the order of
    the documents nor a seed, and a larger share holds out a superset. Of two or more documents at least
    one is held out (the lowest crc32), so a universe of a dozen companies can be scored at the default share.
    """
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share!r}")
    hashes = [zlib.crc32(str(name).encode()) % 1000 for name in names]
    held_out = [i for i, value in enumerate(hashes) if value < share * 1000]
    if not held_out and len(names) > 1:
        # A small universe can fall wholly on the training side: its lowest-hash document is held out,
        # which a larger share would hold out too (the superset rule still holds).
        held_out = [min(range(len(names)), key=lambda i: (hashes[i], str(names[i])))]
    return held_out


def holdout_mask(documents: pd.Series, share: float) -> np.ndarray:
    """(N,) bool: True for the tokens of held-out companies, `documents` naming each token's company."""
    names = documents.unique()
    held_out = set(names[holdout_documents(list(names), share)])
    return documents.isin(held_out).to_numpy(copy=True)  # writable: torch.from_numpy shares it


class TokenSplit(NamedTuple):
    """Which of a store's N tokens an SAE trains on and is scored on; each (N,) bool (module docstring)."""

    train: Tensor
    """Usable tokens of the training companies."""
    evaluate: Tensor
    """Usable tokens of the held-out companies: what `fvu`, `l0` and `dead_fraction` are measured on."""
    with_massive: Tensor
    """`evaluate` plus every massive token, for `fvu_with_massive`."""


def token_split(documents: pd.Series, holdout_share: float, massive: MassiveTokens) -> TokenSplit:
    """The split of the N tokens whose companies `documents` (N,) names; raises ValueError when either
    side would be empty."""
    held_out = torch.from_numpy(holdout_mask(documents, holdout_share))
    usable = massive.usable_mask(len(documents))
    split = TokenSplit(~held_out & usable, held_out & usable, (held_out & usable) | massive.massive_mask())
    if not split.train.any() or not split.evaluate.any():
        raise ValueError(f"holdout_share {holdout_share} leaves no training or no evaluation tokens")
    return split


def layer_metrics(sae: SparseAutoencoder, x: Tensor, split: TokenSplit) -> LayerMetrics:
    """Held-out FVU, L0 and dead fraction of `sae` on one layer's tokens x (N, d), and `fvu_with_massive`."""
    held_out = evaluate_sae(sae, x[split.evaluate].float().to(sae.device))
    with_massive = x[split.with_massive].float().to(sae.device)
    grew = len(with_massive) > held_out.n_tokens
    return LayerMetrics(**held_out.to_dict(), fvu_with_massive=evaluate_sae(sae, with_massive).fvu if grew else held_out.fvu)


def store_layer_metrics(
    sae: SparseAutoencoder, store: ActivationStore, layer: int, split: TokenSplit, batch_size: int = 8192
) -> LayerMetrics:
    """`layer_metrics` of `sae` on `layer` of `store`, read shard by shard (one layer slice of a shard and one
    batch of `batch_size` rows resident), in the same batches as `layer_metrics` on the whole layer."""

    def metrics(tokens: Tensor):
        return evaluate_sae_batches(sae, lambda: rebatch(masked_layer_chunks(store, layer, tokens), batch_size))

    held_out = metrics(split.evaluate)
    grew = int(split.with_massive.sum()) > held_out.n_tokens
    return LayerMetrics(**held_out.to_dict(), fvu_with_massive=metrics(split.with_massive).fvu if grew else held_out.fvu)
