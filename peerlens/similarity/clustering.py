"""Company clusters: the paper's MST-threshold method, code-based baselines, and a size summary.

Interpretable Company Similarity clusters companies per year on a complete graph whose edge
weights are cosine distances between their feature vectors, z-scored over all pairs; it keeps the
minimum spanning tree, deletes tree edges heavier than a threshold theta and reads the clusters off
as connected components. Baselines (SIC codes, GICS) assign clusters from shared codes instead.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import breadth_first_order, connected_components, minimum_spanning_tree


def cosine_distance_matrix(X: np.ndarray) -> np.ndarray:
    """Pairwise cosine distance ``D[i, j] = 1 - <x_i, x_j> / (|x_i| |x_j|)``.

    Args:
        X: (n, d) array, one row per company.

    Returns:
        (n, n) symmetric array with zero diagonal and values in [0, 2].

    Raises:
        ValueError: if X is not 2-D, has non-finite values, or a row has zero norm (its angle to
            anything is undefined).
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-D (n, d) array, got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError("X has NaN or infinite values")
    norms = np.linalg.norm(X, axis=1)
    zero_rows = np.flatnonzero(norms == 0)
    if zero_rows.size:
        raise ValueError(f"X has {zero_rows.size} rows with zero norm (first rows: {zero_rows[:10].tolist()})")
    unit = X / norms[:, None]
    distances = 1.0 - unit @ unit.T
    # Rounding leaves tiny negatives and last-bit asymmetry; downstream checks expect neither.
    distances = np.clip((distances + distances.T) / 2, 0.0, 2.0)
    np.fill_diagonal(distances, 0.0)
    return distances


def _check_distance_matrix(distances: np.ndarray) -> np.ndarray:
    distances = np.asarray(distances, dtype=np.float64)
    if distances.ndim != 2 or distances.shape[0] != distances.shape[1]:
        raise ValueError(f"distances must be a square (n, n) array, got shape {distances.shape}")
    if distances.shape[0] == 0:
        raise ValueError("distances is empty: there is nothing to cluster")
    if not np.isfinite(distances).all():
        raise ValueError("distances has NaN or infinite values")
    if not np.allclose(distances, distances.T, rtol=0.0, atol=1e-9):
        raise ValueError("distances is not symmetric")
    return distances


def _relabel_by_first_appearance(labels: np.ndarray) -> np.ndarray:
    """Map arbitrary integer labels to 0..k-1 in the order they first appear."""
    _, first_index, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank_of_unique = np.empty(first_index.size, dtype=np.int64)
    rank_of_unique[np.argsort(first_index, kind="stable")] = np.arange(first_index.size)
    return rank_of_unique[inverse.reshape(-1)]


def mst_threshold_clusters(distances: np.ndarray, theta: float) -> np.ndarray:
    """Cluster by cutting the minimum spanning tree of z-scored distances at ``theta``.

    With w_ij = distances[i, j] over all pairs i < j,

        z_ij = (w_ij - mean(w)) / std(w)        (population std over the n(n-1)/2 pairs)

    build the minimum spanning tree of the complete graph weighted by z, delete the tree edges with
    z_ij > theta, and return the connected components. Lower theta gives more, smaller clusters.
    When every pair is equally distant (std = 0) all z are 0.

    scipy's ``minimum_spanning_tree`` reads a zero weight as "no edge", and z is often negative, so
    the tree is built on ``z - min(z) + 1`` (strictly positive; a constant shift leaves the tree
    unchanged) while the cut compares the unshifted z with theta.

    The result equals single-linkage clustering cut at theta, so ties in the tree do not change it.

    Args:
        distances: (n, n) symmetric dissimilarities, e.g. from :func:`cosine_distance_matrix`.
        theta: cut threshold on the z-score scale.

    Returns:
        (n,) int64 cluster labels, renumbered 0..k-1 in order of first appearance.
    """
    return cut_spanning_tree(minimum_spanning_tree_z(distances), theta)


class SpanningTree(NamedTuple):
    """The minimum spanning tree of the z-scored distance graph: n − 1 edges (row[e], col[e]) of weight z[e]."""

    n: int
    row: np.ndarray
    col: np.ndarray
    z: np.ndarray


def minimum_spanning_tree_z(distances: np.ndarray) -> SpanningTree:
    """Minimum spanning tree of the complete graph on z-scored distances (see `mst_threshold_clusters`)."""
    distances = _check_distance_matrix(distances)
    n = distances.shape[0]
    if n == 1:
        empty = np.zeros(0, dtype=np.int64)
        return SpanningTree(1, empty, empty, np.zeros(0))
    rows, cols = np.triu_indices(n, k=1)
    weights = distances[rows, cols]
    spread = weights.std()
    z = (weights - weights.mean()) / spread if spread > 0 else np.zeros_like(weights)

    shifted = coo_matrix((z - z.min() + 1.0, (rows, cols)), shape=(n, n)).tocsr()
    tree = minimum_spanning_tree(shifted).tocoo()
    z_matrix = np.zeros((n, n))
    z_matrix[rows, cols] = z
    z_of_tree_edges = z_matrix[np.minimum(tree.row, tree.col), np.maximum(tree.row, tree.col)]
    return SpanningTree(n, tree.row, tree.col, z_of_tree_edges)


def cut_spanning_tree(tree: SpanningTree, theta: float) -> np.ndarray:
    """Connected components of the tree after deleting its edges with z > theta.

    Returns:
        (n,) int64 cluster labels, renumbered 0..k-1 in order of first appearance.
    """
    if not np.isfinite(theta):
        raise ValueError(f"theta must be finite, got {theta}")
    kept = tree.z <= theta
    forest = coo_matrix((np.ones(int(kept.sum())), (tree.row[kept], tree.col[kept])), shape=(tree.n, tree.n))
    _, labels = connected_components(forest, directed=False)
    return _relabel_by_first_appearance(labels)


class RootedTree(NamedTuple):
    """A spanning tree stored one row per item: the item's parent and the z weight of the edge to it."""

    parent: np.ndarray
    """(n,) int64 position of each item's parent; -1 for the root."""
    z: np.ndarray
    """(n,) float64 z weight of the edge item → parent; NaN for the root."""


def root_spanning_tree(tree: SpanningTree) -> RootedTree:
    """Orient the tree away from item 0, so it fits in a table with one row per item.

    A spanning tree has exactly n − 1 edges, so every item but the root owns the edge to its parent.
    """
    parent = np.full(tree.n, -1, dtype=np.int64)
    z = np.full(tree.n, np.nan)
    if tree.n > 1:
        graph = coo_matrix((np.ones(tree.n - 1), (tree.row, tree.col)), shape=(tree.n, tree.n)).tocsr()
        _, predecessors = breadth_first_order(graph, 0, directed=False, return_predecessors=True)
        if (predecessors[1:] < 0).any():
            raise ValueError("the tree does not connect every item")
        edges = zip(tree.row.tolist(), tree.col.tolist(), tree.z.tolist())
        z_of_edge = {(min(a, b), max(a, b)): weight for a, b, weight in edges}
        parent[1:] = predecessors[1:]
        z[1:] = [z_of_edge[(min(child, up), max(child, up))] for child, up in enumerate(parent[1:].tolist(), start=1)]
    return RootedTree(parent, z)


def spanning_tree_from_parents(parent: np.ndarray, z: np.ndarray) -> SpanningTree:
    """Inverse of `root_spanning_tree`: the n − 1 edges (item, parent) with their z weights."""
    parent = np.asarray(parent, dtype=np.int64)
    z = np.asarray(z, dtype=np.float64)
    if parent.ndim != 1 or parent.shape != z.shape:
        raise ValueError(f"parent and z must be 1-D of one length, got shapes {parent.shape} and {z.shape}")
    n = parent.size
    has_parent = parent >= 0
    if int((~has_parent).sum()) != 1:
        raise ValueError(f"a rooted tree has exactly one root (parent -1); got {int((~has_parent).sum())}")
    if (parent >= n).any() or not np.isfinite(z[has_parent]).all():
        raise ValueError("parent positions must be < n and every non-root edge needs a finite z")
    children = np.flatnonzero(has_parent)
    tree = SpanningTree(n, children, parent[has_parent], z[has_parent])
    if n > 1 and connected_components(coo_matrix((np.ones(n - 1), (tree.row, tree.col)), shape=(n, n)))[0] != 1:
        raise ValueError("parent links do not form one tree (a cycle or a detached item)")
    return tree


def theta_for_cluster_count(distances: np.ndarray, n_clusters: int) -> float:
    """The θ at which `mst_threshold_clusters` yields `n_clusters` clusters.

    Cutting the K − 1 heaviest of the n − 1 tree edges leaves exactly K components, so θ is set
    midway between the lightest edge cut, z_(K−1), and the heaviest edge kept, z_(K), with edges
    sorted heaviest first. Comparing methods at the same K compares how they group, not how
    finely: a θ fixed on the z scale means a different granularity for every representation.
    Tied edge weights at the cut can make the count differ from K; the caller should check.
    """
    return theta_for_cluster_count_on_tree(minimum_spanning_tree_z(distances), n_clusters)


def theta_for_cluster_count_on_tree(tree: SpanningTree, n_clusters: int) -> float:
    """`theta_for_cluster_count` on an already built spanning tree (cheap: a sort of n − 1 weights)."""
    if not 1 <= n_clusters <= tree.n:
        raise ValueError(f"n_clusters must be in 1..{tree.n} (the number of items), got {n_clusters}")
    heaviest_first = np.sort(tree.z)[::-1]
    if n_clusters == 1:
        return float(heaviest_first[0] + 1.0) if len(heaviest_first) else 0.0
    if n_clusters == tree.n:
        return float(heaviest_first[-1] - 1.0)
    return float((heaviest_first[n_clusters - 2] + heaviest_first[n_clusters - 1]) / 2)


def labels_from_codes(codes: pd.Series) -> np.ndarray:
    """Cluster labels from industry codes: companies that share a code share a cluster.

    A missing code (NaN, None, or a blank string) gives that company a singleton cluster of its
    own: an unknown code is not evidence that two companies are alike.

    Args:
        codes: one code per company (any hashable dtype), in company order.

    Returns:
        (n,) int64 labels aligned with ``codes``, renumbered 0..k-1 in order of first appearance.
    """
    if not isinstance(codes, pd.Series):
        codes = pd.Series(codes)
    labels = np.empty(len(codes), dtype=np.int64)
    label_of_code: dict[object, int] = {}
    next_label = 0
    for position, code in enumerate(codes.tolist()):
        if pd.isna(code) or (isinstance(code, str) and not code.strip()):
            labels[position] = next_label
            next_label += 1
            continue
        if code not in label_of_code:
            label_of_code[code] = next_label
            next_label += 1
        labels[position] = label_of_code[code]
    return labels


def cluster_size_summary(labels: np.ndarray) -> dict[str, int | float]:
    """Sizes of a clustering, as plain numbers (JSON- and metadata-ready).

    Returns:
        n_items; n_clusters; n_singletons (clusters of one); largest (members of the biggest
        cluster); coverage = (items in clusters of size >= 2) / n_items.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
    _, sizes = np.unique(labels, return_counts=True)
    return {
        "n_items": int(labels.size),
        "n_clusters": int(sizes.size),
        "n_singletons": int((sizes == 1).sum()),
        "largest": int(sizes.max()),
        "coverage": float(sizes[sizes >= 2].sum() / labels.size),
    }


def random_clusters_like(labels: np.ndarray, seed: int) -> np.ndarray:
    """A random clustering with exactly the cluster sizes of ``labels``: a seeded permutation of them.

    Every partition with those sizes is equally likely, so its mean correlation estimates what a
    grouping that knows nothing about the companies scores at that granularity: the floor.

    Returns:
        (n,) int64 labels, renumbered 0..k-1 in order of first appearance.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
    shuffled = np.random.default_rng(seed).permutation(labels)
    return _relabel_by_first_appearance(shuffled)
