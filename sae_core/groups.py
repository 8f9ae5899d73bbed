"""AMAD layer groups (Group-SAE): which layers can share one SAE.

Given the mean angular distance matrix D̄ (L, L) between layers (see `distances`):
  1. Leave out the final layer L−1; it always gets its own SAE.
  2. For every G in 1..L−1, cluster layers 0..L−2 into G groups by complete-linkage agglomerative
     clustering with D̄ as a precomputed distance. (The paper's code fed the rows of D̄ to the
     clustering as feature vectors, i.e. Euclidean distances between rows; we follow the paper's
     text, so the linkage sees D̄ itself.)
  3. AMAD(G) = (1/G) Σ_groups max_{i,j ∈ group} D̄(i, j)       (a singleton group contributes 0)
  4. Ĝ = the smallest G with AMAD(G) < threshold (0.2 in the paper); or, by quality, the smallest G whose
     measured mean FVU gap to per-layer SAEs stays within a bound (`smallest_g_within_fvu_gap`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.cluster.hierarchy import linkage
from scipy.spatial.distance import squareform

_SYMMETRY_TOLERANCE = 1e-5


def _validated_distances(distances: np.ndarray) -> np.ndarray:
    """D̄ as a float64 array, exactly symmetric with a zero diagonal, after checking it is a distance
    matrix of angular distances (square, symmetric and zero on the diagonal up to tolerance, in [0, 1])."""
    matrix = np.asarray(distances, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise ValueError(f"distances must be a non-empty square (L, L) matrix, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise ValueError("distances contain NaN/inf")
    if not np.allclose(matrix, matrix.T, rtol=0, atol=_SYMMETRY_TOLERANCE):
        raise ValueError(f"distances must be symmetric (max |D − Dᵀ| = {np.abs(matrix - matrix.T).max():.3g})")
    if np.abs(np.diag(matrix)).max() > _SYMMETRY_TOLERANCE:
        raise ValueError(f"distances must have a zero diagonal (max |D_ii| = {np.abs(np.diag(matrix)).max():.3g})")
    if matrix.min() < -_SYMMETRY_TOLERANCE or matrix.max() > 1 + _SYMMETRY_TOLERANCE:
        raise ValueError(f"angular distances must lie in [0, 1], got [{matrix.min():.3g}, {matrix.max():.3g}]")
    matrix = np.clip((matrix + matrix.T) / 2, 0.0, 1.0)
    np.fill_diagonal(matrix, 0.0)
    return matrix


def _canonical(groups: list[list[int]]) -> list[list[int]]:
    """Layers sorted within each group, groups sorted by their smallest layer."""
    return sorted((sorted(int(layer) for layer in group) for group in groups), key=lambda group: group[0])


def _groups_for_each_g(distances: np.ndarray) -> dict[int, list[list[int]]]:
    """Complete-linkage groups of the L layers of a validated D̄ for every G in 1..L.

    Replays the merges of the linkage tree: after L − G merges exactly G groups remain, even when
    merge heights tie. (scipy 1.17's cut_tree, asked for several cuts at once, returns the G = L cut
    as one group; fcluster's maxclust may return fewer than G groups on ties.) Complete linkage is
    monotone, so each cut is a valid G-clustering.
    """
    n_layers = distances.shape[0]
    clusters = {layer: [layer] for layer in range(n_layers)}
    groups_by_g = {n_layers: _canonical(list(clusters.values()))}
    if n_layers == 1:
        return groups_by_g
    tree = linkage(squareform(distances, checks=False), method="complete")
    for merge, (left, right) in enumerate(tree[:, :2].astype(int)):
        clusters[n_layers + merge] = clusters.pop(left) + clusters.pop(right)
        groups_by_g[n_layers - merge - 1] = _canonical(list(clusters.values()))
    return groups_by_g


def complete_linkage_groups(distances: np.ndarray, n_groups: int) -> list[list[int]]:
    """Partition the L layers of D̄ (L, L) into `n_groups` groups by complete-linkage clustering on
    D̄ as a precomputed distance. Groups are sorted by their smallest layer, layers within a group
    ascending."""
    matrix = _validated_distances(distances)
    n_layers = matrix.shape[0]
    if not 1 <= n_groups <= n_layers:
        raise ValueError(f"n_groups must be in 1..{n_layers} (the number of layers), got {n_groups}")
    return _groups_for_each_g(matrix)[n_groups]


def amad(distances: np.ndarray, groups: list[list[int]]) -> float:
    """Average maximum angular distance (1/G) Σ_g max_{i,j ∈ g} D̄(i, j); a singleton group gives 0."""
    matrix = _validated_distances(distances)
    if not groups or any(len(group) == 0 for group in groups):
        raise ValueError(f"groups must be a non-empty list of non-empty layer lists, got {groups!r}")
    n_layers = matrix.shape[0]
    for group in groups:
        if any(not 0 <= layer < n_layers for layer in group):
            raise ValueError(f"group {group} names a layer outside 0..{n_layers - 1}")
    return float(np.mean([matrix[np.ix_(group, group)].max() for group in groups]))


def is_contiguous(groups: list[list[int]]) -> bool:
    """True when every group is a run of consecutive layers, e.g. [[0, 1], [2, 3, 4]] but not [[0, 2], [1]]."""
    return all(sorted(group) == list(range(min(group), max(group) + 1)) for group in groups if group)


@dataclass(frozen=True)
class LayerGrouping:
    """The AMAD grouping of a model's layers, for every G and the chosen one."""

    groups_by_g: dict[int, list[list[int]]]
    """G → the G groups of layers 0..L−2 (the final layer is never grouped)."""
    amad_by_g: dict[int, float]
    """G → AMAD of those groups."""
    chosen_g: int
    """Ĝ: the smallest G with AMAD(G) < threshold."""
    chosen_groups: list[list[int]]
    """The Ĝ groups plus [L−1], the final layer on its own: one SAE per entry."""
    contiguous: bool
    """Whether every chosen group is a run of consecutive layers."""
    threshold: float
    """The AMAD threshold Ĝ was chosen with."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (G keys as strings)."""
        return {
            "groups_by_g": {str(g): groups for g, groups in self.groups_by_g.items()},
            "amad_by_g": {str(g): value for g, value in self.amad_by_g.items()},
            "chosen_g": self.chosen_g,
            "chosen_groups": self.chosen_groups,
            "contiguous": self.contiguous,
            "threshold": self.threshold,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerGrouping:
        """Inverse of `to_dict`."""
        return cls(
            groups_by_g={int(g): groups for g, groups in data["groups_by_g"].items()},
            amad_by_g={int(g): float(value) for g, value in data["amad_by_g"].items()},
            chosen_g=int(data["chosen_g"]),
            chosen_groups=[list(group) for group in data["chosen_groups"]],
            contiguous=bool(data["contiguous"]),
            threshold=float(data["threshold"]),
        )


def choose_layer_groups(distances: np.ndarray, threshold: float = 0.2) -> LayerGrouping:
    """Group layers 0..L−2 of D̄ (L, L), all layers including the final one, for every G in 1..L−1,
    and pick Ĝ = the smallest G with AMAD(G) < threshold. The final layer L−1 gets its own group."""
    matrix = _validated_distances(distances)
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    n_layers = matrix.shape[0]
    if n_layers < 2:
        raise ValueError(f"need at least 2 layers (the final one is grouped on its own), got {n_layers}")

    groupable = matrix[:-1, :-1]
    g_values = list(range(1, n_layers))
    groups_by_g = _groups_for_each_g(groupable)
    amad_by_g = {g: amad(groupable, groups_by_g[g]) for g in g_values}
    # G = L−1 puts every layer alone (AMAD 0 < threshold), so a choice always exists.
    chosen_g = next(g for g in g_values if amad_by_g[g] < threshold)
    chosen_groups = groups_by_g[chosen_g] + [[n_layers - 1]]
    return LayerGrouping(
        groups_by_g=groups_by_g,
        amad_by_g=amad_by_g,
        chosen_g=chosen_g,
        chosen_groups=chosen_groups,
        contiguous=is_contiguous(chosen_groups),
        threshold=float(threshold),
    )


def smallest_g_within_fvu_gap(fvu_gap_by_g: dict[int, float], bound: float) -> int:
    """Ĝ chosen by quality instead of by AMAD: the smallest measured G whose mean FVU gap to per-layer SAEs,
    (1/L) Σ_l FVU_group(l) − FVU_per_layer(l), is at most `bound`.

    `fvu_gap_by_g` maps each G that was trained and scored (e.g. by benchmarks/group_partitions.py) to its
    mean gap. Raises ValueError when no measured G is within the bound: measure larger G, or loosen it.
    """
    if not fvu_gap_by_g:
        raise ValueError("fvu_gap_by_g is empty: measure the FVU gap of at least one G first")
    within = sorted(g for g, gap in fvu_gap_by_g.items() if gap <= bound)
    if not within:
        best = min(fvu_gap_by_g, key=fvu_gap_by_g.get)
        raise ValueError(
            f"no measured G keeps the mean FVU gap within {bound}: the smallest gap is {fvu_gap_by_g[best]:.4f} "
            f"at G = {best} (measured: {sorted(fvu_gap_by_g)})"
        )
    return within[0]
