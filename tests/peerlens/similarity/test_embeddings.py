"""Specification of the baseline text representations (peerlens.similarity.embeddings)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from peerlens.similarity.embeddings import minilm_embeddings, reduced_cosine_distances, tfidf_matrix


def test_minilm_embeddings_are_unit_vectors_that_put_banking_near_banking():
    texts = ["bank lending deposits", "commercial banking loans", "oil drilling rigs"]
    embeddings = minilm_embeddings(texts)
    assert embeddings.shape == (3, 384) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    bank, banking, oil = embeddings
    assert bank @ banking > bank @ oil


def test_minilm_embeddings_name_the_empty_text():
    with pytest.raises(ValueError, match=r"texts\[1\]: the description is empty"):
        minilm_embeddings(["a bank", "   ", "an oil company"])


TEXTS = [
    "The bank provides lending and deposit services to commercial customers.",
    "A commercial bank offering loans, deposits and wealth services.",
    "The company drills oil and gas wells with offshore rigs.",
    "Offshore drilling rigs for oil and gas exploration.",
]


def test_tfidf_matrix_keeps_words_shared_by_min_df_texts_without_stop_words():
    texts = ["the bank and its loans", "a bank taking deposits", "the oil rigs", "oil and gas"]
    matrix = tfidf_matrix(texts, min_df=2)
    assert isinstance(matrix, sparse.csr_matrix)
    # Only "bank" and "oil" are in two texts ("the", "and", "a" are stop words): columns bank, oil.
    assert matrix.shape == (4, 2)
    np.testing.assert_allclose(matrix.toarray(), [[1, 0], [1, 0], [0, 1], [0, 1]])


def test_tfidf_matrix_rows_are_nonnegative_unit_vectors():
    matrix = tfidf_matrix(TEXTS, min_df=1)
    assert matrix.shape[0] == 4 and matrix.shape[1] > 10
    assert (matrix.data >= 0).all()
    np.testing.assert_allclose(np.sqrt(matrix.multiply(matrix).sum(axis=1)).A1, 1.0)


def test_tfidf_matrix_rejects_a_vocabulary_that_filters_to_nothing():
    with pytest.raises(ValueError, match="no vocabulary"):
        tfidf_matrix(["alpha beta", "gamma delta"], min_df=2)


def test_reduced_cosine_distances_is_symmetric_with_zero_diagonal_and_zero_for_twins():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(8, 20))
    X[5] = X[2]  # identical companies
    D = reduced_cosine_distances(X, n_components=4)
    assert D.shape == (8, 8)
    np.testing.assert_array_equal(D, D.T)
    np.testing.assert_array_equal(np.diag(D), 0.0)
    assert D[2, 5] == pytest.approx(0.0, abs=1e-12)
    off_diagonal = D[~np.eye(8, dtype=bool)]
    assert np.sort(off_diagonal)[2] > 1e-3  # only the twin pair (counted twice) is at zero


def test_reduced_cosine_distances_is_deterministic_and_accepts_sparse_input():
    matrix = tfidf_matrix(TEXTS + TEXTS[:2], min_df=2)
    first = reduced_cosine_distances(matrix, n_components=3)
    np.testing.assert_array_equal(first, reduced_cosine_distances(matrix, n_components=3))
    # The two banks are closer to each other than to the drillers.
    assert first[0, 1] < first[0, 2] and first[0, 1] < first[0, 3]


def test_reduced_cosine_distances_standardizes_columns_before_pca():
    # Column 0 separates two groups by a small amount; column 1 is large-scale noise. Scaled,
    # both weigh the same and the groups appear; unscaled, the noise column dominates.
    rng = np.random.default_rng(1)
    group = np.repeat([-1.0, 1.0], 10)
    X = np.column_stack(
        [group + rng.normal(scale=0.05, size=20), rng.normal(scale=1000, size=20), rng.normal(size=20)]
    )
    scaled = reduced_cosine_distances(X, n_components=2, standardize=True)
    unscaled = reduced_cosine_distances(X, n_components=2, standardize=False)
    within, across = scaled[:10, :10].mean(), scaled[:10, 10:].mean()
    assert within < across
    assert np.abs(scaled - unscaled).max() > 0.1


def test_reduced_cosine_distances_rejects_a_single_row():
    with pytest.raises(ValueError, match="at least 2 rows"):
        reduced_cosine_distances(np.ones((1, 3)))
