"""From token activations to SAE features: sparse codes, per-document pooling, top-activating tokens.

A trained SAE turns every token's residual vector into a sparse code of k latents. A company is
described by pooling those codes over the tokens of its description (Interpretable Company
Similarity used one vector per 10-K), and a latent is read by the tokens that excite it most.
Everything stays sparse ((n, k) codes) until pooling, so no (n_tokens, d_sae) matrix is built.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from sae_core.sae import SparseAutoencoder

POOLINGS = ("mean", "max", "sum")


class SparseCodes(NamedTuple):
    """The TopK codes of a run of tokens, in the order the tokens were given (store order)."""

    top_acts: Tensor
    """Activations of each token's kept latents, (n_tokens, k) float32, ≥ 0 (ReLU'd)."""

    top_indices: Tensor
    """Indices into d_sae of each token's kept latents, (n_tokens, k) int64; distinct within a row."""


def _check_codes(codes: SparseCodes) -> None:
    acts, indices = codes.top_acts, codes.top_indices
    if acts.ndim != 2 or acts.shape != indices.shape:
        raise ValueError(
            "codes.top_acts and codes.top_indices must both be (n_tokens, k), got "
            f"{tuple(acts.shape)} and {tuple(indices.shape)}"
        )


def encode_tokens(sae: SparseAutoencoder, tokens: Tensor, batch_size: int = 8192) -> SparseCodes:
    """Encode `tokens` (n, d_in) with `sae`, `batch_size` tokens at a time, without autograd.

    Batches run on the SAE's device; the codes come back on the CPU so that a whole layer's codes
    (n·k values) fit where the dense latents (n·d_sae) would not.

    Returns:
        SparseCodes with top_acts (n, w) float32 and top_indices (n, w) int64; w = k for TopK, the
        widest batch's code for BatchTopK and ReLU.
    """
    if tokens.ndim != 2 or tokens.shape[1] != sae.cfg.d_in:
        raise ValueError(
            f"tokens must have shape (n_tokens, d_in={sae.cfg.d_in}), got {tuple(tokens.shape)}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return encode_batches(sae, tokens.split(batch_size))


def encode_batches(sae: SparseAutoencoder, batches: Iterable[Tensor]) -> SparseCodes:
    """`encode_tokens` of the rows of `batches` (each (m, d_in), e.g. a store's layer read shard by shard and
    `activation_stream.rebatch`ed): only one batch of dense rows is resident, the codes are kept."""
    acts, indices = [], []
    with torch.inference_mode():
        for batch in batches:
            if batch.ndim != 2 or batch.shape[1] != sae.cfg.d_in:
                raise ValueError(f"tokens must have shape (n_tokens, d_in={sae.cfg.d_in}), got a batch of {tuple(batch.shape)}")
            code = sae.encode(batch.to(sae.device))
            acts.append(code.top_acts.float().cpu())
            indices.append(code.top_indices.long().cpu())
    if not acts:  # zero tokens: keep a (0, width) shape
        width = sae.cfg.k or 0
        return SparseCodes(torch.zeros(0, width), torch.zeros(0, width, dtype=torch.long))
    # BatchTopK and ReLU codes vary in width from batch to batch; pad with zero activations (on
    # latent 0), which add nothing to any pooling and are never counted as firing.
    width = max(a.shape[1] for a in acts)
    acts = [F.pad(a, (0, width - a.shape[1])) for a in acts]
    indices = [F.pad(i, (0, width - i.shape[1])) for i in indices]
    # Concatenating outside inference_mode returns ordinary tensors, which callers may edit in place.
    return SparseCodes(torch.cat(acts), torch.cat(indices))


def pool_documents(
    codes: SparseCodes, document: np.ndarray, n_docs: int, d_sae: int, pooling: str = "mean"
) -> Tensor:
    """Pool token codes into one d_sae vector per document.

    With z_t ∈ R^d_sae the dense code of token t (zero outside its k latents) and T_d the tokens
    of document d:

        mean:  f_d = Σ_{t ∈ T_d} z_t / |T_d|
        sum:   f_d = Σ_{t ∈ T_d} z_t
        max:   f_d = max_{t ∈ T_d} z_t   (elementwise; 0 where no token fired, since z ≥ 0)

    The (n_tokens, k) codes are scattered straight into the (n_docs, d_sae) result through the
    flat index d·d_sae + latent (index_add_ / scatter_reduce_), never through dense z.

    Args:
        codes: SparseCodes of n tokens.
        document: (n,) integer document id of each token, in 0..n_docs−1.
        n_docs: number of documents; every one must have at least one token.
        d_sae: number of latents.
        pooling: "mean", "max" or "sum".

    Returns:
        (n_docs, d_sae) float32 tensor on the CPU.
    """
    _check_pooling(pooling)
    _check_codes(codes)
    n_tokens, k = codes.top_acts.shape
    if d_sae < 1:
        raise ValueError(f"d_sae must be >= 1, got {d_sae}")
    doc, tokens_per_doc = _document_ids(document, n_tokens, n_docs)
    indices = codes.top_indices.cpu().long()
    if n_tokens and (int(indices.min()) < 0 or int(indices.max()) >= d_sae):
        raise ValueError(f"codes.top_indices must lie in 0..{d_sae - 1} (d_sae={d_sae})")

    flat_index = (doc[:, None] * d_sae + indices).flatten()  # (n·k,)
    # Accumulate sums in float64: a document may have thousands of tokens.
    values = codes.top_acts.cpu().to(torch.float64).flatten()
    pooled = torch.zeros(n_docs * d_sae, dtype=torch.float64)
    if pooling == "max":
        pooled.scatter_reduce_(0, flat_index, values, reduce="amax", include_self=True)
    else:
        pooled.index_add_(0, flat_index, values)
    pooled = pooled.view(n_docs, d_sae)
    if pooling == "mean":
        pooled /= tokens_per_doc[:, None].to(torch.float64)
    return pooled.float()


def pool_dense_documents(tokens: Tensor, document: np.ndarray, n_docs: int, pooling: str = "mean") -> Tensor:
    """Pool dense token vectors (the raw residual stream, say) into one vector per document.

    The same rules as `pool_documents` with z_t replaced by the token's vector x_t ∈ R^d (which may be
    negative, so max is taken over the document's tokens only).

    Args:
        tokens: (n_tokens, d) vectors, any float dtype.
        document, n_docs, pooling: as `pool_documents`.

    Returns:
        (n_docs, d) float32 tensor on the CPU.
    """
    _check_pooling(pooling)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be (n_tokens, d), got shape {tuple(tokens.shape)}")
    doc, tokens_per_doc = _document_ids(document, tokens.shape[0], n_docs)
    x = tokens.cpu().to(torch.float64)
    index = doc[:, None].expand_as(x)
    if pooling == "max":
        pooled = torch.full((n_docs, x.shape[1]), -torch.inf, dtype=torch.float64)
        pooled.scatter_reduce_(0, index, x, reduce="amax", include_self=True)
    else:
        pooled = torch.zeros(n_docs, x.shape[1], dtype=torch.float64).index_add_(0, doc, x)
    if pooling == "mean":
        pooled /= tokens_per_doc[:, None].to(torch.float64)
    return pooled.float()


def _check_pooling(pooling: str) -> None:
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")


def _document_ids(document: np.ndarray, n_tokens: int, n_docs: int) -> tuple[Tensor, Tensor]:
    """(n_tokens,) int64 document id per token and (n_docs,) tokens per document, after checking that the
    ids are integers in 0..n_docs−1 and that every document has a token."""
    document = np.asarray(document)
    if document.shape != (n_tokens,):
        raise ValueError(f"document must have shape (n_tokens={n_tokens},), got {document.shape}")
    if n_tokens and not np.issubdtype(document.dtype, np.integer):
        raise ValueError(f"document must hold integer ids 0..n_docs-1, got dtype {document.dtype}")
    if n_docs < 1:
        raise ValueError(f"n_docs must be >= 1, got {n_docs}")
    if n_tokens and (document.min() < 0 or document.max() >= n_docs):
        raise ValueError(
            f"document ids must lie in 0..{n_docs - 1}, got range {document.min()}..{document.max()}"
        )
    doc = torch.tensor(document, dtype=torch.long)  # a copy: the ids often come read-only from Arrow
    tokens_per_doc = torch.bincount(doc, minlength=n_docs)
    empty = torch.nonzero(tokens_per_doc == 0).flatten()
    if empty.numel():
        raise ValueError(
            f"{empty.numel()} of {n_docs} documents have no tokens (first ids: {empty[:10].tolist()})"
        )
    return doc, tokens_per_doc

def token_shares(codes: SparseCodes, document: np.ndarray, n_docs: int, d_sae: int) -> Tensor:
    """How much of its document's pooled vector each token makes up.

    With z_t the dense code of token t and S_d = Σ_{t ∈ T_d} z_t the summed code of its document:

        share_t = ⟨z_t, S_d⟩ / ‖S_d‖²

    Shares are ≥ 0 (codes are) and sum to 1 over a document's tokens, since Σ_t ⟨z_t, S_d⟩ = ‖S_d‖²;
    the same shares hold for the mean (S_d / |T_d|), the scale cancels. One token with share 0.5
    is half of the vector's squared length along its own direction: it decides the document's
    cosine similarities. A document whose tokens all have empty codes gets shares of 0.

    Args and validation as `pool_documents`. Returns (n_tokens,) float64.
    """
    summed = pool_documents(codes, document, n_docs, d_sae, pooling="sum").double()  # (n_docs, d_sae)
    doc = torch.tensor(np.asarray(document), dtype=torch.long)  # a copy: the ids often come read-only from Arrow
    indices = codes.top_indices.cpu().long()
    # ⟨z_t, S_d⟩ needs S_d only at token t's own k latents: gather them, never a dense z_t.
    at_own_latents = summed.view(-1)[(doc[:, None] * d_sae + indices).flatten()].view(indices.shape)
    contribution = (codes.top_acts.cpu().double() * at_own_latents).sum(dim=1)
    squared_norm = summed.pow(2).sum(dim=1)[doc]
    return torch.where(squared_norm > 0, contribution / squared_norm.clamp_min(1e-300), 0.0)


def top_activating_tokens(
    codes: SparseCodes, n_per_latent: int = 10, latents: Sequence[int] | None = None
) -> pd.DataFrame:
    """The `n_per_latent` strongest activations of each latent over all tokens.

    Only entries that fire (activation > 0) count, so a latent that never fires has no rows and
    one that fires on fewer tokens has fewer rows. Ties in activation go to the earlier token.

    Args:
        codes: SparseCodes of n tokens (store order).
        n_per_latent: rows kept per latent.
        latents: restrict to these latents (default: every latent that fires).

    Returns:
        DataFrame with columns latent (int64), rank (int64, 1 = strongest), token_index (int64,
        the token's row in store order), activation (float32); sorted by latent, then rank.
    """
    _check_codes(codes)
    if n_per_latent < 1:
        raise ValueError(f"n_per_latent must be >= 1, got {n_per_latent}")
    n_tokens, k = codes.top_acts.shape
    activation = codes.top_acts.detach().cpu().float().numpy().reshape(-1)
    latent = codes.top_indices.detach().cpu().long().numpy().reshape(-1)
    token = np.repeat(np.arange(n_tokens, dtype=np.int64), k)

    keep = activation > 0
    if latents is not None:
        keep &= np.isin(latent, np.asarray(list(latents), dtype=np.int64))
    activation, latent, token = activation[keep], latent[keep], token[keep]

    # Sort by latent, then strongest first, then earliest token; rank = offset inside the group.
    order = np.lexsort((token, -activation, latent))
    activation, latent, token = activation[order], latent[order], token[order]
    starts_group = np.ones(latent.size, dtype=bool)
    starts_group[1:] = latent[1:] != latent[:-1]
    group_starts = np.flatnonzero(starts_group)
    group_sizes = np.diff(np.append(group_starts, latent.size))
    rank = np.arange(latent.size) - np.repeat(group_starts, group_sizes) + 1
    head = rank <= n_per_latent
    return pd.DataFrame(
        {
            "latent": latent[head].astype(np.int64),
            "rank": rank[head].astype(np.int64),
            "token_index": token[head],
            "activation": activation[head].astype(np.float32),
        }
    )


def strongest_tokens(top_tokens: pd.DataFrame, n_per_latent: int) -> pd.DataFrame:
    """Each latent's `n_per_latent` strongest rows among several parts' top tokens, ranked anew.

    The n strongest activations of a latent over a union of token sets are among the n strongest of each
    set, so the top tokens of a corpus come from its days' top tokens (`top_activating_tokens` per day)
    without encoding the corpus again. Ties in activation go to the earlier (document, position).

    Args:
        top_tokens: columns latent, activation, document, position (any others are kept); e.g. every
            day's rows concatenated.
        n_per_latent: rows kept per latent.

    Returns:
        The kept rows with `rank` (1 = strongest) set anew, sorted by latent, then rank; index reset.
    """
    missing = [c for c in ("latent", "activation", "document", "position") if c not in top_tokens.columns]
    if missing:
        raise ValueError(f"top_tokens lacks columns {missing} (has {list(top_tokens.columns)})")
    if n_per_latent < 1:
        raise ValueError(f"n_per_latent must be >= 1, got {n_per_latent}")
    ordered = top_tokens.assign(_strength=-top_tokens.activation).sort_values(
        ["latent", "_strength", "document", "position"], kind="stable"
    )
    ranked = ordered.assign(rank=ordered.groupby("latent").cumcount() + 1).drop(columns="_strength")
    return ranked[ranked["rank"] <= n_per_latent].reset_index(drop=True)


def pool_batches(
    sae: SparseAutoencoder, batches: Iterable[tuple[Tensor, Tensor]], n_docs: int, pooling: str = "mean"
) -> Tensor:
    """`pool_documents` of streamed tokens, never holding their codes: `batches` yields (x (m, d_in),
    document (m,) int64 ids in 0..n_docs−1); each batch is encoded and scattered into the (n_docs, d_sae)
    float64 accumulator at once (sum or max; mean = sum / |T_d|). Memory: the result and one batch.

    Returns (n_docs, d_sae) float32; every document must have had a token.
    """
    _check_pooling(pooling)
    d_sae = sae.cfg.d_sae
    pooled = torch.zeros(n_docs * d_sae, dtype=torch.float64)
    counts = torch.zeros(n_docs, dtype=torch.long)
    with torch.inference_mode():
        for x, document in batches:
            document = torch.as_tensor(document, dtype=torch.long)
            if len(document) and (int(document.min()) < 0 or int(document.max()) >= n_docs):
                raise ValueError(f"document ids must lie in 0..{n_docs - 1}")
            code = sae.encode(x.to(sae.device))
            flat_index = (document[:, None] * d_sae + code.top_indices.long().cpu()).flatten()
            values = code.top_acts.cpu().to(torch.float64).flatten()
            if pooling == "max":
                pooled.scatter_reduce_(0, flat_index, values, reduce="amax", include_self=True)
            else:
                pooled.index_add_(0, flat_index, values)
            counts += torch.bincount(document, minlength=n_docs)
    if (counts == 0).any():
        raise ValueError(f"{int((counts == 0).sum())} of {n_docs} documents have no tokens")
    pooled = pooled.view(n_docs, d_sae)
    if pooling == "mean":
        pooled /= counts[:, None].to(torch.float64)
    return pooled.float()
