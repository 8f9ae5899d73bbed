"""Sparse probing (peerlens.similarity.probing): planted features with known answers, and bad input named."""

import numpy as np
import pytest

from peerlens.similarity.probing import sparse_probe_accuracy


def planted(n_per_class: int = 40, noise_features: int = 50, seed: int = 0):
    """Three industries, each with one feature of its own that fires for it, among noise features."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(["banks", "oil", "software"], n_per_class)
    sparse = rng.normal(0, 0.3, size=(len(labels), noise_features + 3))
    for column, industry in enumerate(["banks", "oil", "software"]):
        sparse[labels == industry, column] += 3.0
    return sparse, labels, rng


def test_a_label_carried_by_one_feature_per_class_is_found_at_small_k_and_a_rotated_copy_needs_more():
    sparse, labels, rng = planted()
    rotation, _ = np.linalg.qr(rng.normal(size=(sparse.shape[1], sparse.shape[1])))
    dense = sparse @ rotation  # the same information, spread over every feature
    at_sparse = sparse_probe_accuracy(sparse, labels, ks=[1, 3, 1000]).set_index("k")
    at_dense = sparse_probe_accuracy(dense, labels, ks=[1, 3, 1000]).set_index("k")
    assert at_sparse.loc[3, "accuracy"] > 0.95
    assert at_dense.loc[1, "accuracy"] < at_sparse.loc[3, "accuracy"] - 0.2
    assert at_dense.loc[53, "accuracy"] > 0.9  # k above m uses every feature: nothing is lost, only spread
    assert at_sparse.loc[1, "majority_rate"] == pytest.approx(1 / 3)


def test_rows_without_a_label_and_classes_too_small_to_stratify_are_left_out_and_counted():
    sparse, labels, _ = planted()
    labels = labels.astype(object)
    labels[:5] = None
    labels[5:8] = "tiny"  # three members: fewer than five folds
    result = sparse_probe_accuracy(sparse, labels, ks=[3]).iloc[0]
    assert result["companies"] == 120 - 8 and result["classes"] == 3 and result["classes_left_out"] == 1


@pytest.mark.parametrize(
    ("features", "labels", "message"),
    [
        (np.zeros((4, 2)), ["a", "b", "a"], "one row per label"),
        (np.array([[np.nan, 1.0]] * 10), ["a", "b"] * 5, "NaN"),
        (np.ones((10, 2)), ["a"] * 10, "fewer than 2 classes"),
    ],
)
def test_bad_input_is_named(features, labels, message):
    with pytest.raises(ValueError, match=message):
        sparse_probe_accuracy(features, labels, ks=[1], folds=2)
