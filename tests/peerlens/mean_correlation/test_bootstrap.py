"""Specification of the cluster bootstrap and paired differences (peerlens.mean_correlation.bootstrap)."""

from __future__ import annotations

import numpy as np
import pytest

from peerlens.mean_correlation.bootstrap import cluster_bootstrap, paired_difference
from peerlens.mean_correlation.correlation import ClusterScores


def clusters_with_means(means: np.ndarray, pairs: np.ndarray | None = None) -> ClusterScores:
    pairs = np.ones(len(means), dtype=np.int64) if pairs is None else pairs
    return ClusterScores(
        cluster=np.arange(len(means)),
        n_members=np.full(len(means), 2),
        n_pairs=pairs,
        pair_sum=means * pairs,
        n_companies=2 * len(means),
        n_covered=2 * len(means),
    )


def test_replicates_center_on_the_estimate_with_the_standard_error_of_a_mean():
    rng = np.random.default_rng(0)
    values = rng.normal(0.4, 0.2, size=200)
    replicates = cluster_bootstrap([clusters_with_means(values)], n_boot=4000, rng=rng)
    assert replicates.mc_cluster.mean() == pytest.approx(values.mean(), abs=0.003)
    assert replicates.mc_cluster.std() == pytest.approx(values.std() / np.sqrt(200), rel=0.1)


def test_pair_replicates_resample_whole_clusters_and_weigh_them_by_pairs():
    scores = clusters_with_means(np.array([1.0, 0.0]), pairs=np.array([3, 1]))
    replicates = cluster_bootstrap([scores], n_boot=500, rng=np.random.default_rng(1))
    # Draws: both clusters (pooled 3/4), only the big one (1), only the small one (0).
    assert set(np.round(replicates.mc_pair, 6)) <= {0.75, 1.0, 0.0}
    assert set(np.round(replicates.mc_cluster, 6)) <= {0.5, 1.0, 0.0}


def test_several_draws_are_picked_among_at_random():
    draws = [clusters_with_means(np.full(5, 0.1)), clusters_with_means(np.full(5, 0.9))]
    replicates = cluster_bootstrap(draws, n_boot=2000, rng=np.random.default_rng(2))
    assert set(np.round(replicates.mc_cluster, 6)) == {0.1, 0.9}
    assert (replicates.mc_cluster > 0.5).mean() == pytest.approx(0.5, abs=0.05)


def test_interval_covers_the_true_difference_in_about_95_percent_of_samples():
    """Two methods whose clusters' MC are drawn around 0.5 and 0.3: the true difference is 0.2."""
    rng = np.random.default_rng(3)
    years, covered, trials = [2014, 2015, 2016], 0, 200
    for _ in range(trials):
        a = {y: clusters_with_means(rng.normal(0.5 + 0.1 * i, 0.25, size=40)) for i, y in enumerate(years)}
        b = {y: clusters_with_means(rng.normal(0.3 + 0.1 * i, 0.25, size=60)) for i, y in enumerate(years)}
        result = paired_difference(
            {y: s.mc_cluster for y, s in a.items()},
            {y: s.mc_cluster for y, s in b.items()},
            {y: cluster_bootstrap([s], 300, rng).mc_cluster for y, s in a.items()},
            {y: cluster_bootstrap([s], 300, rng).mc_cluster for y, s in b.items()},
        )
        covered += result.ci_low <= 0.2 <= result.ci_high
    assert 0.88 <= covered / trials <= 0.99


def test_paired_difference_uses_only_years_both_score():
    a_points = {2013: 0.5, 2014: 0.6, 2015: np.nan}
    b_points = {2014: 0.4, 2015: 0.3, 2016: 0.2}
    constant = lambda points: {y: np.full(10, v) for y, v in points.items()}  # noqa: E731
    result = paired_difference(a_points, b_points, constant(a_points), constant(b_points))
    assert result.n_years == 1 and result.diff == pytest.approx(0.2) and result.years_ahead == 1
    assert result.ci_low == pytest.approx(0.2) and result.ci_high == pytest.approx(0.2)


def test_no_common_year_gives_nan_not_an_error_and_bad_input_is_rejected():
    empty = paired_difference({2013: 0.1}, {2014: 0.2}, {}, {})
    assert empty.n_years == 0 and np.isnan(empty.diff)
    with pytest.raises(ValueError, match="confidence"):
        paired_difference({}, {}, {}, {}, confidence=1.0)
    with pytest.raises(ValueError, match="n_boot"):
        cluster_bootstrap([clusters_with_means(np.ones(2))], n_boot=0, rng=np.random.default_rng(0))
