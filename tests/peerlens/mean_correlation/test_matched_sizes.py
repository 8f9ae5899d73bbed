"""Specification of size-matched clusterings (peerlens.mean_correlation.matched_sizes)."""

from __future__ import annotations

import numpy as np
import pytest

from peerlens.mean_correlation.matched_sizes import cluster_sizes, size_matched_clusters


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when a and b group the items alike, whatever the label names."""
    pairs = {(x, y) for x, y in zip(a.tolist(), b.tolist())}
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_result_has_exactly_the_target_sizes():
    rng = np.random.default_rng(0)
    method = rng.integers(0, 7, size=60)
    target = np.array([20, 15, 10, 5, 5, 2, 1, 1, 1])
    matched = size_matched_clusters(method, target, rng)
    np.testing.assert_array_equal(cluster_sizes(matched), np.sort(target)[::-1])


def test_a_method_equal_to_the_reference_is_returned_unchanged():
    reference = np.repeat(np.arange(6), [9, 7, 7, 3, 1, 1])
    permuted = np.random.default_rng(1).permutation(reference)
    for seed in range(5):
        matched = size_matched_clusters(permuted, cluster_sizes(permuted), np.random.default_rng(seed))
        assert same_partition(matched, permuted)


def test_a_coarser_method_is_split_inside_its_own_clusters():
    sectors = np.repeat([0, 1], 10)  # two sectors of 10
    matched = size_matched_clusters(sectors, [5, 5, 5, 5], np.random.default_rng(2))
    for label in range(4):
        assert len(set(sectors[matched == label])) == 1  # no matched cluster mixes sectors


def test_a_finer_method_keeps_its_groups_whole_inside_the_bigger_clusters():
    pairs = np.repeat(np.arange(6), 2)  # six pairs
    matched = size_matched_clusters(pairs, [4, 4, 4], np.random.default_rng(3))
    for pair in range(6):
        assert len(set(matched[pairs == pair])) == 1


def test_all_singletons_give_a_uniformly_random_clustering():
    # Items 0 and 1 share a size-2 cluster with probability 1 / (n - 1) under a uniform draw.
    n, draws = 10, 4000
    rng = np.random.default_rng(4)
    together = sum(
        (matched := size_matched_clusters(np.arange(n), [2, 2, 2, 2, 2], rng))[0] == matched[1] for _ in range(draws)
    )
    assert together / draws == pytest.approx(1 / (n - 1), abs=0.02)


def test_size_matched_clusters_is_reproducible_from_its_seed():
    method = np.random.default_rng(5).integers(0, 4, size=30)
    target = [10, 10, 5, 5]
    first = size_matched_clusters(method, target, np.random.default_rng(9))
    np.testing.assert_array_equal(first, size_matched_clusters(method, target, np.random.default_rng(9)))


def test_target_sizes_must_cover_every_item():
    with pytest.raises(ValueError, match="sum to 5 but there are 6"):
        size_matched_clusters(np.zeros(6, dtype=int), [3, 2], np.random.default_rng(0))
    with pytest.raises(ValueError, match="positive"):
        size_matched_clusters(np.zeros(2, dtype=int), [2, 0], np.random.default_rng(0))
