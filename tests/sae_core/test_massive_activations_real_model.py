"""Massive activations in the real default model (SmolLM2-135M, Instruct, Q4_1) on descriptions that
trigger them: the first token of AMZN, MSFT, DAL, OMC, MMC and KMB's descriptions becomes a second
attention sink; of their natural peers' and of JPM's and XOM's, none does.

Kept, that one token makes up most of each company's pooled SAE vector, and the six are one
another's nearest neighbours. Excluded, no token dominates any company, at most one of the six has
another of the six as its nearest neighbour (by chance 5 of the 13 others are), and most find the peer
a reader would name.
"""

from __future__ import annotations

import numpy as np
import pytest

from peerlens.similarity.company_latents import company_profiles
from resources import SampleDataResource
from sae_core.activation_store import STORE_DTYPE, ActivationStoreWriter
from sae_core.capture import capture_documents, load_model, tokenize
from sae_core.config import SaeConfig, TrainConfig
from sae_core.features import encode_tokens, pool_documents, token_shares
from sae_core.massive_activations import find_massive_tokens
from sae_core.train import train_sae

pytestmark = pytest.mark.e2e

TRIGGERING = ["AMZN", "MSFT", "DAL", "OMC", "MMC", "KMB"]
NATURAL_PEER = {"AMZN": "EBAY", "MSFT": "ORCL", "DAL": "LUV", "OMC": "IPG", "MMC": "AJG", "KMB": "CL"}
TICKERS = sorted([*TRIGGERING, *NATURAL_PEER.values(), "JPM", "XOM"])
FEATURE_LAYER = 19  # two thirds of the way up SmolLM2's 30 layers, as company_features picks


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    # The 2024 vintage: the one whose texts were measured to trigger the sinks.
    descriptions = SampleDataResource(vintage="2024").company_texts().frame.set_index("ticker").loc[TICKERS]
    model = load_model()
    token_ids = tokenize(model.tokenizer, descriptions.description.tolist(), 512, names=TICKERS)
    writer = ActivationStoreWriter(tmp_path_factory.mktemp("store") / "store", model.n_layers, model.d_model)
    for batch, captured in capture_documents(model, token_ids, dtype=STORE_DTYPE):
        documents = [TICKERS[batch[i]] for i in captured.document.tolist()]
        writer.add(captured.activations, documents, captured.position, captured.token_id)
    return writer.close()


def company_vectors(store, treatment: str) -> tuple[np.ndarray, np.ndarray]:
    """As company_features does: an SAE trained on the usable tokens of the feature layer, codes mean-pooled.

    Returns (each company's largest token share, (n, d_sae) pooled vectors), rows in TICKERS order.
    """
    usable = find_massive_tokens(store.token_norms(), treatment=treatment).usable_mask(store.n_tokens)
    x = store.layer(FEATURE_LAYER)[usable]
    document = store.index.document[usable.numpy()].map({t: i for i, t in enumerate(TICKERS)}).to_numpy()
    config = SaeConfig(d_in=store.d_model, expansion_factor=2, k=16)
    sae = train_sae(x, config, TrainConfig(total_tokens=30_000, batch_size=512)).sae
    codes = encode_tokens(sae, x)
    largest = np.zeros(len(TICKERS))
    np.maximum.at(largest, document, token_shares(codes, document, len(TICKERS), config.d_sae).numpy())
    return largest, pool_documents(codes, document, len(TICKERS), config.d_sae).numpy()


def nearest_neighbours(pooled: np.ndarray) -> dict[str, str]:
    profiles = company_profiles(pooled)  # the peer query's similarity
    similarity = profiles @ profiles.T
    np.fill_diagonal(similarity, -np.inf)
    return {ticker: TICKERS[j] for ticker, j in zip(TICKERS, similarity.argmax(axis=1))}


def test_the_first_token_of_exactly_the_triggering_descriptions_is_massive(store):
    found = find_massive_tokens(store.token_norms())
    massive = store.index.iloc[list(found.rows)]
    assert sorted(massive.document) == sorted(TRIGGERING)
    assert (massive.position == 0).all()
    assert min(found.peak_ratios) > 25 and set(found.peak_layers) == {11}


def test_kept_one_token_dominates_each_triggering_company_and_they_pair_up(store):
    largest, pooled = company_vectors(store, "keep")
    shares = dict(zip(TICKERS, largest))
    assert all(shares[ticker] > 0.5 for ticker in TRIGGERING), shares
    assert all(shares[ticker] < 0.1 for ticker in TICKERS if ticker not in TRIGGERING), shares
    neighbours = nearest_neighbours(pooled)
    assert all(neighbours[ticker] in TRIGGERING for ticker in TRIGGERING), neighbours


def test_excluded_no_token_dominates_and_the_triggering_companies_find_their_peers(store):
    largest, pooled = company_vectors(store, "exclude")
    assert largest.max() < 0.1, dict(zip(TICKERS, largest))
    neighbours = nearest_neighbours(pooled)
    # A small SAE (30k tokens) leaves one company's neighbour to chance: with packages resolved on 2026-12-02
    # MSFT's was KMB (both triggering, unrelated), while the other five found their natural peers.
    assert sum(neighbours[ticker] in TRIGGERING for ticker in TRIGGERING) <= 1, neighbours
    assert sum(neighbours[ticker] == NATURAL_PEER[ticker] for ticker in TRIGGERING) >= 4, neighbours
