"""Size-matched clusterings: a method's grouping forced into the cluster sizes of a reference.

The paper's MC averages over clusters, so it rewards a clustering for its size distribution as much
as for its grouping: a method made of a few tight pairs and many singletons beats one that puts
every company somewhere. To compare how two methods *group*, we redraw the method's clusters at the
reference's exact sizes s_1 >= s_2 >= ... >= s_K (sum s_k = n, singletons included) and score that.

Construction (best-fit packing of the method's own clusters, seeded):

    pool  <- the method's clusters, members in random order
    for s in s_1 >= s_2 >= ... (the reference's sizes, largest first):
        while the new cluster has fewer than s members, with r = s - (members so far):
            piece <- the smallest pool cluster with >= r members (ties at random),
                     or, when none is that large, the largest one (ties at random)
            move r members of piece (or all of it, if smaller) into the new cluster

Properties that make it a fair yardstick:
    * sizes equal the reference's exactly, so MC per cluster and per pair weigh clusters alike;
    * a method identical to the reference is returned unchanged (every step finds an exact fit);
    * a method with no grouping (all singletons) gives a uniformly random clustering of those sizes,
      the floor; a coarser method (sector vs. sub-industry) is split into random chunks of its
      clusters, a finer one has its clusters merged in the order they fit.

Threshold (MST) methods are first re-cut to the reference's cluster count K, so the draw starts
from the method's own granularity at K rather than from one giant component; see
:func:`peerlens.similarity.clustering.theta_for_cluster_count_on_tree`.
"""

from __future__ import annotations

import numpy as np


def cluster_sizes(labels: np.ndarray) -> np.ndarray:
    """(K,) sizes of the clusters in ``labels``, largest first."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
    _, sizes = np.unique(labels, return_counts=True)
    return np.sort(sizes)[::-1]


def size_matched_clusters(labels: np.ndarray, target_sizes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Redraw the clustering ``labels`` with exactly the cluster sizes ``target_sizes`` (module docstring).

    Args:
        labels: (n,) cluster ids of the method being matched.
        target_sizes: (K,) positive sizes of the reference's clusters, summing to n (any order).
        rng: the draw's random generator (seed it for reproducible draws).

    Returns:
        (n,) int64 labels 0..K-1; label k has the k-th largest target size.
    """
    labels = np.asarray(labels)
    target_sizes = np.sort(np.asarray(target_sizes, dtype=np.int64))[::-1]
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
    if target_sizes.size == 0 or target_sizes.min() < 1:
        raise ValueError("target_sizes must be a non-empty list of positive cluster sizes")
    if int(target_sizes.sum()) != labels.size:
        raise ValueError(
            f"target_sizes sum to {int(target_sizes.sum())} but there are {labels.size} items to cluster; "
            "the reference must cluster the same companies"
        )

    _, codes = np.unique(labels, return_inverse=True)
    order = rng.permutation(labels.size)  # random member order inside every piece
    grouped = order[np.argsort(codes[order], kind="stable")]
    pieces = np.split(grouped, np.cumsum(np.bincount(codes))[:-1])
    remaining = np.array([len(piece) for piece in pieces])

    matched = np.empty(labels.size, dtype=np.int64)
    for new_label, size in enumerate(target_sizes.tolist()):
        needed = size
        while needed:
            fits = remaining >= needed
            candidates_size = remaining[fits].min() if fits.any() else remaining.max()
            candidates = np.flatnonzero(remaining == candidates_size)
            chosen = candidates[rng.integers(candidates.size)] if candidates.size > 1 else candidates[0]
            taken = min(needed, int(remaining[chosen]))
            start = len(pieces[chosen]) - int(remaining[chosen])
            matched[pieces[chosen][start : start + taken]] = new_label
            remaining[chosen] -= taken
            needed -= taken
    return matched
