"""Specification of SAE feature extraction (sae_core.features): encoding, pooling, top tokens."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from sae_core.config import SaeConfig
from sae_core.features import (
    SparseCodes,
    encode_tokens,
    pool_dense_documents,
    pool_documents,
    strongest_tokens,
    token_shares,
    top_activating_tokens,
)
from sae_core.sae import TopKSae

D_SAE = 5


def hand_codes() -> SparseCodes:
    """Four tokens, k = 2, over 5 latents; tokens 0–2 belong to document 0, token 3 to document 1.

    dense z:            latent 0   1    2    3    4
        token 0 (doc 0)      1.0  0    2.0  0    0
        token 1 (doc 0)      0    0    4.0  3.0  0
        token 2 (doc 0)      0.5  0    0    0    0      (second slot ReLU'd to 0 on latent 4)
        token 3 (doc 1)      0    6.0  0    0    1.0
    """
    top_acts = torch.tensor([[1.0, 2.0], [4.0, 3.0], [0.5, 0.0], [6.0, 1.0]])
    top_indices = torch.tensor([[0, 2], [2, 3], [0, 4], [1, 4]])
    return SparseCodes(top_acts, top_indices)


DOCUMENT = np.array([0, 0, 0, 1])


def test_pool_documents_mean_divides_the_sum_by_the_document_token_count():
    pooled = pool_documents(hand_codes(), DOCUMENT, n_docs=2, d_sae=D_SAE, pooling="mean")
    expected = torch.tensor([[1.5 / 3, 0, 6.0 / 3, 3.0 / 3, 0], [0, 6.0, 0, 0, 1.0]])
    torch.testing.assert_close(pooled, expected)
    assert pooled.dtype == torch.float32


def test_pool_documents_sum_adds_the_codes_of_each_document():
    pooled = pool_documents(hand_codes(), DOCUMENT, n_docs=2, d_sae=D_SAE, pooling="sum")
    torch.testing.assert_close(pooled, torch.tensor([[1.5, 0, 6.0, 3.0, 0], [0, 6.0, 0, 0, 1.0]]))


def test_pool_documents_max_takes_the_elementwise_maximum_over_tokens():
    pooled = pool_documents(hand_codes(), DOCUMENT, n_docs=2, d_sae=D_SAE, pooling="max")
    torch.testing.assert_close(pooled, torch.tensor([[1.0, 0, 4.0, 3.0, 0], [0, 6.0, 0, 0, 1.0]]))


def test_pool_documents_does_not_need_a_document_tokens_to_be_contiguous():
    codes = hand_codes()
    shuffle = torch.tensor([3, 1, 0, 2])
    shuffled = SparseCodes(codes.top_acts[shuffle], codes.top_indices[shuffle])
    torch.testing.assert_close(
        pool_documents(shuffled, DOCUMENT[shuffle.numpy()], 2, D_SAE),
        pool_documents(codes, DOCUMENT, 2, D_SAE),
    )


def test_pool_documents_rejects_an_unknown_pooling_listing_the_options():
    with pytest.raises(ValueError, match=r"mean.*max.*sum.*'median'"):
        pool_documents(hand_codes(), DOCUMENT, 2, D_SAE, pooling="median")


def test_pool_documents_rejects_a_document_without_tokens():
    with pytest.raises(ValueError, match=r"no tokens.*\[2\]"):
        pool_documents(hand_codes(), DOCUMENT, n_docs=3, d_sae=D_SAE)


def test_pool_documents_rejects_out_of_range_ids():
    with pytest.raises(ValueError, match="document ids"):
        pool_documents(hand_codes(), np.array([0, 0, 0, 2]), n_docs=2, d_sae=D_SAE)
    with pytest.raises(ValueError, match="top_indices"):
        pool_documents(hand_codes(), DOCUMENT, n_docs=2, d_sae=4)


@pytest.mark.parametrize("pooling", ["mean", "max", "sum"])
def test_pool_dense_documents_matches_a_per_document_reduction_of_signed_vectors(pooling):
    tokens = torch.tensor([[1.0, -2.0], [-3.0, -1.0], [0.5, 4.0], [-6.0, -7.0]])
    document = np.array([1, 0, 1, 1])
    reduce = {"mean": lambda x: x.mean(0), "max": lambda x: x.max(0).values, "sum": lambda x: x.sum(0)}[pooling]
    expected = torch.stack([reduce(tokens[torch.from_numpy(document == d)]) for d in (0, 1)])
    # max over negative values stays negative: the pool starts from -inf, not from 0.
    torch.testing.assert_close(pool_dense_documents(tokens, document, 2, pooling), expected)


def test_pool_dense_documents_rejects_a_document_without_tokens_and_a_bad_shape():
    with pytest.raises(ValueError, match="have no tokens"):
        pool_dense_documents(torch.ones(2, 3), np.array([0, 0]), 2)
    with pytest.raises(ValueError, match=r"\(n_tokens, d\)"):
        pool_dense_documents(torch.ones(3), np.array([0, 0, 0]), 1)


def test_top_activating_tokens_ranks_each_latent_strongest_first():
    top = top_activating_tokens(hand_codes(), n_per_latent=10)
    assert list(top.columns) == ["latent", "rank", "token_index", "activation"]
    # Latent 4 fires only on token 3: the ReLU'd zero on token 2 does not count as firing.
    expected = pd.DataFrame(
        {
            "latent": [0, 0, 1, 2, 2, 3, 4],
            "rank": [1, 2, 1, 1, 2, 1, 1],
            "token_index": [0, 2, 3, 1, 0, 1, 3],
            "activation": np.array([1.0, 0.5, 6.0, 4.0, 2.0, 3.0, 1.0], dtype=np.float32),
        }
    )
    pd.testing.assert_frame_equal(top.reset_index(drop=True), expected, check_dtype=False)


def test_top_activating_tokens_keeps_n_per_latent_and_filters_latents():
    top = top_activating_tokens(hand_codes(), n_per_latent=1, latents=[2, 0])
    assert top[["latent", "token_index"]].values.tolist() == [[0, 0], [2, 1]]
    assert (top["rank"] == 1).all()


def test_top_activating_tokens_agrees_with_a_dense_per_latent_sort():
    generator = torch.Generator().manual_seed(0)
    n_tokens, d_sae, k = 200, 16, 3
    sae = TopKSae(SaeConfig(d_in=4, expansion_factor=4, k=k), generator=generator)
    codes = encode_tokens(sae, torch.randn(n_tokens, 4, generator=generator))
    dense = torch.zeros(n_tokens, d_sae).scatter_(1, codes.top_indices, codes.top_acts).numpy()
    top = top_activating_tokens(codes, n_per_latent=5)
    for latent in range(d_sae):
        firing = np.flatnonzero(dense[:, latent] > 0)
        expected = firing[np.argsort(-dense[firing, latent], kind="stable")][:5]
        assert top.loc[top["latent"] == latent, "token_index"].tolist() == expected.tolist()


def test_the_strongest_tokens_of_each_day_ranked_together_are_the_strongest_of_the_corpus():
    generator = torch.Generator().manual_seed(1)
    sae = TopKSae(SaeConfig(d_in=4, expansion_factor=4, k=3), generator=generator)
    tokens = torch.randn(300, 4, generator=generator)
    where = pd.DataFrame({"document": np.repeat([f"T{i:02d}" for i in range(10)], 30), "position": np.tile(range(30), 10)})

    def with_places(top: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
        return top.join(rows.iloc[top.pop("token_index").to_numpy()].reset_index(drop=True))

    corpus = with_places(top_activating_tokens(encode_tokens(sae, tokens), n_per_latent=4), where)
    days = [slice(0, 120), slice(120, 150), slice(150, 300)]  # three days of 4, 1 and 5 texts
    per_day = [with_places(top_activating_tokens(encode_tokens(sae, tokens[d]), 4), where.iloc[d]) for d in days]
    merged = strongest_tokens(pd.concat(per_day, ignore_index=True), n_per_latent=4)
    columns = ["latent", "rank", "document", "position"]
    assert merged[columns].values.tolist() == corpus[columns].values.tolist()
    np.testing.assert_allclose(merged.activation, corpus.activation, rtol=1e-5)
    assert strongest_tokens(merged, 1)["rank"].eq(1).all() and strongest_tokens(merged, 1).latent.is_unique


def test_strongest_tokens_names_a_missing_column():
    with pytest.raises(ValueError, match=r"lacks columns \['position'\]"):
        strongest_tokens(pd.DataFrame({"latent": [0], "activation": [1.0], "document": ["A"]}), 3)


def test_encode_tokens_in_batches_matches_one_encode_call():
    generator = torch.Generator().manual_seed(1)
    sae = TopKSae(SaeConfig(d_in=8, expansion_factor=2, k=3), generator=generator)
    tokens = torch.randn(50, 8, generator=generator)
    codes = encode_tokens(sae, tokens, batch_size=7)
    reference = sae.encode(tokens)
    assert codes.top_acts.shape == (50, 3) and codes.top_indices.dtype == torch.long
    dense = torch.zeros(50, 16).scatter_(1, codes.top_indices, codes.top_acts)
    reference_dense = torch.zeros(50, 16).scatter_(1, reference.top_indices, reference.top_acts)
    torch.testing.assert_close(dense, reference_dense.detach())
    assert not codes.top_acts.requires_grad
    assert not codes.top_acts.is_inference()  # callers may modify them in place
    codes.top_acts.mul_(2.0)


def test_encode_tokens_rejects_the_wrong_width():
    sae = TopKSae(SaeConfig(d_in=8, expansion_factor=2, k=3))
    with pytest.raises(ValueError, match="d_in=8"):
        encode_tokens(sae, torch.zeros(4, 6))


@pytest.mark.parametrize("architecture", ["batchtopk", "relu"])
def test_encode_tokens_joins_variable_width_codes_across_batches(architecture):
    from sae_core.architectures import build_sae
    from sae_core.config import SaeConfig

    torch.manual_seed(0)
    sae = build_sae(SaeConfig(d_in=8, expansion_factor=4, architecture=architecture)).eval()
    tokens = torch.randn(50, 8)
    joined = encode_tokens(sae, tokens, batch_size=7)
    one_shot = encode_tokens(sae, tokens, batch_size=50)
    dense = lambda codes: torch.zeros(50, 32).scatter_add_(1, codes.top_indices, codes.top_acts)
    torch.testing.assert_close(dense(joined), dense(one_shot))


# --- token shares -----------------------------------------------------------------------------------


def test_token_shares_are_each_tokens_projection_on_its_documents_summed_code():
    # Document 0 sums to S = [1.5, 0, 6, 3, 0], ‖S‖² = 47.25; document 1 is one token.
    shares = token_shares(hand_codes(), DOCUMENT, n_docs=2, d_sae=D_SAE)
    expected = torch.tensor([1.5 * 1 + 6 * 2, 6 * 4 + 3 * 3, 1.5 * 0.5, 47.25], dtype=torch.float64) / 47.25
    torch.testing.assert_close(shares, expected)
    torch.testing.assert_close(torch.zeros(2, dtype=torch.float64).index_add_(0, torch.tensor(DOCUMENT), shares),
                               torch.ones(2, dtype=torch.float64))


def test_one_giant_token_dominates_its_documents_shares():
    generator = torch.Generator().manual_seed(0)
    acts = torch.rand(50, 3, generator=generator)
    indices = torch.stack([torch.randperm(D_SAE, generator=generator)[:3] for _ in range(50)])
    acts[0] *= 100  # one token's code a hundred times the others'
    shares = token_shares(SparseCodes(acts, indices), np.zeros(50, dtype=np.int64), n_docs=1, d_sae=D_SAE)
    assert shares[0] > 0.5 and shares[1:].max() < 0.05
