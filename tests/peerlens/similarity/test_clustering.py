"""Specification of the MST-threshold clustering and code-based baselines (peerlens.similarity.clustering)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.sparse.csgraph import connected_components

from peerlens.similarity.clustering import (
    cluster_size_summary,
    cosine_distance_matrix,
    cut_spanning_tree,
    labels_from_codes,
    minimum_spanning_tree_z,
    mst_threshold_clusters,
    random_clusters_like,
    root_spanning_tree,
    spanning_tree_from_parents,
    theta_for_cluster_count,
    theta_for_cluster_count_on_tree,
)


def test_cosine_distance_is_one_minus_cosine():
    X = np.array([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0], [1.0, 1.0]])
    D = cosine_distance_matrix(X)
    assert D.shape == (4, 4)
    np.testing.assert_allclose(np.diag(D), 0.0)
    assert D[0, 1] == pytest.approx(1.0)  # orthogonal
    assert D[0, 2] == pytest.approx(2.0)  # opposite
    assert D[0, 3] == pytest.approx(1 - 1 / np.sqrt(2))
    np.testing.assert_array_equal(D, D.T)


def test_cosine_distance_rejects_zero_rows_by_position():
    with pytest.raises(ValueError, match=r"zero norm.*\[1\]"):
        cosine_distance_matrix(np.array([[1.0, 2.0], [0.0, 0.0]]))


def three_blobs() -> np.ndarray:
    """Nine points: three tight groups far apart on the unit circle, in interleaved order."""
    rng = np.random.default_rng(0)
    angles = np.repeat([0.0, 2.1, 4.2], 3) + rng.normal(scale=0.02, size=9)
    points = np.column_stack([np.cos(angles), np.sin(angles)])
    order = np.array([0, 3, 6, 1, 4, 7, 2, 5, 8])
    return points[order]


def test_mst_threshold_recovers_separated_groups_and_numbers_them_by_first_appearance():
    labels = mst_threshold_clusters(cosine_distance_matrix(three_blobs()), theta=0.0)
    np.testing.assert_array_equal(labels, [0, 1, 2, 0, 1, 2, 0, 1, 2])


def test_mst_threshold_extremes_give_one_cluster_or_all_singletons():
    distances = cosine_distance_matrix(three_blobs())
    assert set(mst_threshold_clusters(distances, theta=10.0)) == {0}
    np.testing.assert_array_equal(mst_threshold_clusters(distances, theta=-10.0), np.arange(9))


def test_mst_threshold_cut_uses_unshifted_z_scores():
    # Pair distances 0.1 (x1), 0.2 (x1), 0.3 (x1): z = -1.22, 0, 1.22. The tree keeps 0.1 and 0.2;
    # theta = -0.5 must cut the 0.2 edge (z = 0) even though its shifted weight is positive.
    distances = np.array([[0.0, 0.1, 0.3], [0.1, 0.0, 0.2], [0.3, 0.2, 0.0]])
    np.testing.assert_array_equal(mst_threshold_clusters(distances, theta=-0.5), [0, 0, 1])
    np.testing.assert_array_equal(mst_threshold_clusters(distances, theta=0.01), [0, 0, 0])


def test_mst_threshold_equals_components_of_the_thresholded_graph():
    # Cutting an MST at theta is single linkage: same partition as all edges with z <= theta.
    rng = np.random.default_rng(1)
    distances = cosine_distance_matrix(rng.normal(size=(40, 5)))
    rows, cols = np.triu_indices(40, k=1)
    weights = distances[rows, cols]
    z = (weights - weights.mean()) / weights.std()
    for theta in (-2.0, -1.0, -0.5):
        adjacency = np.zeros((40, 40))
        keep = z <= theta
        adjacency[rows[keep], cols[keep]] = 1
        _, expected = connected_components(adjacency, directed=False)
        labels = mst_threshold_clusters(distances, theta)
        assert pd.crosstab(labels, expected).gt(0).sum(axis=1).eq(1).all()
        assert len(set(labels)) == len(set(expected))


def test_mst_threshold_with_equal_distances_is_all_or_nothing():
    distances = 1.0 - np.eye(4)
    np.testing.assert_array_equal(mst_threshold_clusters(distances, theta=0.0), [0, 0, 0, 0])
    np.testing.assert_array_equal(mst_threshold_clusters(distances, theta=-0.1), [0, 1, 2, 3])


def test_mst_threshold_rejects_asymmetric_or_non_square_input():
    with pytest.raises(ValueError, match="symmetric"):
        mst_threshold_clusters(np.array([[0.0, 1.0], [0.5, 0.0]]), theta=0.0)
    with pytest.raises(ValueError, match="square"):
        mst_threshold_clusters(np.zeros((2, 3)), theta=0.0)


def test_single_item_is_its_own_cluster():
    np.testing.assert_array_equal(mst_threshold_clusters(np.zeros((1, 1)), theta=0.0), [0])


def test_labels_from_codes_shares_clusters_and_makes_missing_codes_singletons():
    codes = pd.Series(["3711", None, "2834", "3711", "", np.nan, "2834", " "])
    np.testing.assert_array_equal(labels_from_codes(codes), [0, 1, 2, 0, 3, 4, 2, 5])


def test_labels_from_numeric_codes():
    np.testing.assert_array_equal(labels_from_codes(pd.Series([7370.0, np.nan, 7370.0, 2834.0])), [0, 1, 0, 2])


def test_cluster_size_summary_counts_sizes_and_coverage():
    summary = cluster_size_summary(np.array([0, 0, 0, 1, 2, 2, 3]))
    assert summary == {"n_items": 7, "n_clusters": 4, "n_singletons": 2, "largest": 3, "coverage": 5 / 7}
    with pytest.raises(ValueError, match="non-empty"):
        cluster_size_summary(np.array([], dtype=int))


def test_theta_for_cluster_count_gives_exactly_that_many_clusters():
    from peerlens.similarity.clustering import theta_for_cluster_count

    rng = np.random.default_rng(7)
    points = rng.normal(size=(40, 5))
    distances = np.linalg.norm(points[:, None] - points[None], axis=-1)
    for k in (1, 2, 5, 17, 40):
        labels = mst_threshold_clusters(distances, theta_for_cluster_count(distances, k))
        assert len(np.unique(labels)) == k


def test_theta_for_cluster_count_rejects_impossible_counts():
    from peerlens.similarity.clustering import theta_for_cluster_count

    with pytest.raises(ValueError, match="n_clusters"):
        theta_for_cluster_count(np.zeros((3, 3)), 4)


def test_cut_spanning_tree_equals_mst_threshold_clusters_at_every_theta():
    distances = cosine_distance_matrix(np.random.default_rng(5).normal(size=(30, 4)))
    tree = minimum_spanning_tree_z(distances)
    for theta in np.linspace(-3, 3, 13):
        np.testing.assert_array_equal(cut_spanning_tree(tree, theta), mst_threshold_clusters(distances, theta))


def test_rooted_tree_round_trips_to_the_same_edges_and_cuts():
    distances = cosine_distance_matrix(np.random.default_rng(6).normal(size=(25, 3)))
    tree = minimum_spanning_tree_z(distances)
    rooted = root_spanning_tree(tree)
    assert rooted.parent[0] == -1 and np.isnan(rooted.z[0]) and (rooted.parent[1:] >= 0).all()
    rebuilt = spanning_tree_from_parents(rooted.parent, rooted.z)
    as_set = lambda t: {(min(a, b), max(a, b), round(z, 12)) for a, b, z in zip(t.row, t.col, t.z)}  # noqa: E731
    assert as_set(rebuilt) == as_set(tree)
    for theta in (-1.0, 0.0, 1.0):
        np.testing.assert_array_equal(cut_spanning_tree(rebuilt, theta), cut_spanning_tree(tree, theta))


def test_spanning_tree_from_parents_rejects_two_roots_and_cycles():
    with pytest.raises(ValueError, match="exactly one root"):
        spanning_tree_from_parents(np.array([-1, -1, 0]), np.array([np.nan, np.nan, 0.1]))
    with pytest.raises(ValueError, match="one tree"):
        spanning_tree_from_parents(np.array([-1, 2, 1]), np.array([np.nan, 0.1, 0.2]))


def test_random_clusters_like_keeps_the_sizes_is_seeded_and_mixes_members():
    reference = np.repeat(np.arange(5), [10, 6, 3, 1, 1])
    shuffled = random_clusters_like(reference, seed=1)
    assert sorted(np.bincount(shuffled)) == sorted(np.bincount(reference))
    np.testing.assert_array_equal(shuffled, random_clusters_like(reference, seed=1))
    assert not np.array_equal(shuffled, random_clusters_like(reference, seed=2))
    # Members of the reference's largest cluster are spread over several random clusters.
    assert len(np.unique(shuffled[:10])) > 1


def test_theta_for_cluster_count_on_tree_matches_the_distance_version():
    distances = cosine_distance_matrix(np.random.default_rng(7).normal(size=(20, 3)))
    tree = minimum_spanning_tree_z(distances)
    for k in (1, 5, 20):
        assert theta_for_cluster_count_on_tree(tree, k) == theta_for_cluster_count(distances, k)
        assert len(np.unique(cut_spanning_tree(tree, theta_for_cluster_count_on_tree(tree, k)))) == k
