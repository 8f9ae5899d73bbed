"""Bootstrap confidence intervals for differences in mean correlation between two clusterings.

What is resampled, and why. The sample has five scored years; a bootstrap over five numbers has at
most 126 distinct resamples and its percentile interval is too narrow (it treats the observed spread
of five values as the population's). The noise that decides "is method A's MC really above B's?" is
which clusters each method happened to form: MC per cluster is a mean over a few hundred clusters,
some of them a single lucky pair. So we resample **clusters within each year** (stratified by year;
years are held fixed and paired, so a market-wide correlation swing in one year moves both methods
alike and cancels in the difference):

    for b = 1..B, for every year y, for each method separately:
        draw k_y clusters with replacement from the method's k_y scored clusters of year y
        MC*_cluster(y) = mean of the drawn clusters' MC_c
        MC*_pair(y)    = sum of the drawn clusters' pair sums / sum of their pair counts
                         (the pooled pair mean, resampled by whole clusters since pairs that share
                          a cluster share members and are not independent)
    diff*_b = mean_y [MC*_A(y) − MC*_B(y)]        over the years both methods score
    CI      = the 2.5% and 97.5% percentiles of diff*_1..diff*_B

For a size-matched measure, which is a mean over several random draws of the matched clustering,
each replicate first picks one draw at random, then resamples its clusters: the interval then also
carries the Monte-Carlo noise of the matching.

A and B are resampled independently, although they cluster the same companies: their estimates are
positively correlated, so the interval of the difference is conservative (too wide), never too narrow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from peerlens.mean_correlation.correlation import ClusterScores


class ReplicateMC(NamedTuple):
    """Bootstrap replicates of one method's MC in one year."""

    mc_cluster: np.ndarray
    """(n_boot,) MC per cluster of each resample."""
    mc_pair: np.ndarray
    """(n_boot,) pooled pair MC of each resample."""


def cluster_bootstrap(draws: Sequence[ClusterScores], n_boot: int, rng: np.random.Generator) -> ReplicateMC:
    """Resample the scored clusters of one (method, year); several draws are picked among at random.

    Args:
        draws: one :class:`ClusterScores` per clustering draw (one for a fixed clustering).
        n_boot: number of replicates B.
        rng: seeded generator.

    Returns:
        Replicates of shape (n_boot,); NaN where the chosen draw has no scored cluster.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not draws:
        raise ValueError("draws is empty: nothing to resample")
    mc_cluster = np.full(n_boot, np.nan)
    mc_pair = np.full(n_boot, np.nan)
    chosen = rng.integers(len(draws), size=n_boot) if len(draws) > 1 else np.zeros(n_boot, dtype=np.int64)
    for draw_index, scores in enumerate(draws):
        replicates = np.flatnonzero(chosen == draw_index)
        k = scores.n_pairs.size
        if k == 0 or replicates.size == 0:
            continue
        # (replicates, k) multiplicities: how often each cluster is drawn; each row sums to k.
        weights = rng.multinomial(k, np.full(k, 1.0 / k), size=replicates.size)
        mc_cluster[replicates] = weights @ (scores.pair_sum / scores.n_pairs) / k
        mc_pair[replicates] = (weights @ scores.pair_sum) / (weights @ scores.n_pairs)
    return ReplicateMC(mc_cluster, mc_pair)


class PairedDifference(NamedTuple):
    """Method A minus method B, averaged over the years both score, with a bootstrap interval."""

    diff: float
    """mean_y [MC_A(y) − MC_B(y)] over the common years."""
    ci_low: float
    """Lower end of the percentile interval."""
    ci_high: float
    """Upper end of the percentile interval."""
    n_years: int
    """Years both methods score."""
    years_ahead: int
    """Of those, years where A's MC is above B's."""


def paired_difference(
    point_a: Mapping[int, float],
    point_b: Mapping[int, float],
    replicates_a: Mapping[int, np.ndarray],
    replicates_b: Mapping[int, np.ndarray],
    confidence: float = 0.95,
) -> PairedDifference:
    """Difference of two methods' yearly MC with a percentile interval (module docstring).

    Args:
        point_a, point_b: year -> MC estimate (NaN where the method scores nothing that year).
        replicates_a, replicates_b: year -> (n_boot,) bootstrap replicates of that estimate.
        confidence: coverage of the interval (0.95 -> 2.5% and 97.5% percentiles).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    years = sorted(
        y for y in set(point_a) & set(point_b) if np.isfinite(point_a[y]) and np.isfinite(point_b[y])
    )
    if not years:
        return PairedDifference(float("nan"), float("nan"), float("nan"), 0, 0)
    differences = np.array([point_a[y] - point_b[y] for y in years])
    replicate_differences = np.mean([replicates_a[y] - replicates_b[y] for y in years], axis=0)
    replicate_differences = replicate_differences[np.isfinite(replicate_differences)]
    tail = (1 - confidence) / 2 * 100
    low, high = (
        np.percentile(replicate_differences, [tail, 100 - tail]) if replicate_differences.size else (np.nan, np.nan)
    )
    return PairedDifference(
        diff=float(differences.mean()),
        ci_low=float(low),
        ci_high=float(high),
        n_years=len(years),
        years_ahead=int((differences > 0).sum()),
    )
