"""A layer's company representations: the raw residual stream and an SAE's latents, pooled per text.

Both come from the same usable tokens of each text (massive tokens left out by the release's rule), so
an SAE representation and the raw residual at its layer differ only in what the SAE made of the tokens:

    raw_residual   x_t ∈ R^d_model pooled by mean, max or sum (`sae_core.features.pool_dense_documents`)
    sae            the SAE's code z_t ∈ R^d_sae pooled by mean, max or sum (`pool_documents`), and the
                   specificity-weighted mean (the mean, whose weights the study applies per universe)

Specificity weighting needs nonnegative features, so the raw residual has no such pooling.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from peerlens.similarity.representation_study import SPECIFICITY, Representation
from sae_core.features import encode_tokens, pool_dense_documents, pool_documents
from sae_core.sae import SparseAutoencoder


class TextTokens(NamedTuple):
    """Which stored tokens belong to which text."""

    rows: np.ndarray
    """(n_tokens,) store rows of the texts' usable tokens, in store order."""
    document: np.ndarray
    """(n_tokens,) position in `text_ids` of each token's text."""
    text_ids: list[str]


def text_tokens(index: pd.DataFrame, usable: Tensor, text_ids: Sequence[str]) -> TextTokens:
    """The usable tokens of `text_ids` in a store whose token index is `index` (column document).

    Raises ValueError naming the texts that have no usable token (or are not in the store)."""
    text_ids = list(text_ids)
    keep = index.document.isin(text_ids).to_numpy() & usable.numpy()
    rows = np.flatnonzero(keep)
    document = pd.Index(text_ids).get_indexer(index.document.to_numpy()[rows])
    empty = sorted(set(text_ids) - set(index.document.to_numpy()[rows]))
    if empty:
        raise ValueError(f"texts {empty[:10]} have no usable token in the activation store")
    return TextTokens(rows, document, text_ids)


def residual_representations(
    layer_tokens: Tensor, tokens: TextTokens, layer: int, poolings: Sequence[str]
) -> list[Representation]:
    """The raw residual at `layer`, one representation per pooling (specificity skipped).

    Args:
        layer_tokens: (len(tokens.rows), d_model) the layer's vectors of the selected tokens, in order.
    """
    return [
        Representation(
            residual_name(layer, pooling), "raw_residual", layer, pooling, int(layer_tokens.shape[1]),
            features=(tokens.text_ids, pool_dense_documents(layer_tokens, tokens.document, len(tokens.text_ids), pooling).numpy()),
        )
        for pooling in poolings
        if pooling != SPECIFICITY
    ]


def sae_representations(
    sae: SparseAutoencoder, layer_tokens: Tensor, tokens: TextTokens, layer: int, poolings: Sequence[str],
    label: str = "", seed: int | None = None,
) -> list[Representation]:
    """`sae`'s latents at `layer`, one representation per pooling, named "sae@<layer>[ <label>] <pooling>", each
    compared with the raw residual at its layer pooled alike (the specificity pooling: with the mean).

    Args:
        layer_tokens: as `residual_representations`; encoded by `sae` once for every pooling.
    """
    codes = encode_tokens(sae, layer_tokens.float())
    d_sae = sae.cfg.d_sae
    prefix = f"sae@{layer} {label} " if label else f"sae@{layer} "

    def pooled(pooling: str) -> np.ndarray:
        basis = "mean" if pooling == SPECIFICITY else pooling
        return pool_documents(codes, tokens.document, len(tokens.text_ids), d_sae, basis).numpy()

    return [
        Representation(prefix + pooling, "sae", layer, pooling, d_sae, seed, features=(tokens.text_ids, pooled(pooling)),
                       counterpart=residual_name(layer, "mean" if pooling == SPECIFICITY else pooling))
        for pooling in poolings
    ]


def residual_name(layer: int, pooling: str) -> str:
    return f"raw@{layer} {pooling}"


def selected_layer(store, layer: int, tokens: TextTokens) -> Tensor:
    """(len(tokens.rows), d_model) float32 vectors of the selected tokens at `layer` of an ActivationStore."""
    return store.layer(layer, dtype=torch.float16)[torch.from_numpy(tokens.rows)].float()
