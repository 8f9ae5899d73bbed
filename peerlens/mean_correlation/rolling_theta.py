"""Choosing the MST cut θ out of sample: on the years before the year it is scored on.

The paper tuned θ to maximise MC and scored the tuned clustering on the same years — the score then
includes the luck of the tuning. Here, for every scored year Y,

    θ_Y = argmax_{θ in grid} mean_{y in F_Y} MC_cluster(θ, y),    F_Y = {y : Y − lookback <= y < Y}

(the paper's criterion, MC per cluster, averaged over up to ``lookback`` previous years: five in the
paper), and the clustering cut at θ_Y is scored on Y alone. The first year has no past and is not
scored (no warm-up guess: any θ for it would be in-sample or arbitrary). Ties go to the smaller θ
(the finer clustering the grid reached first); a θ whose clustering has no scored cluster in any
fit year is never chosen. The grid itself is read off the features' spanning tree and keeps only
cuts that cluster at least a set share of companies (:func:`theta_grid`).

The in-sample variant (θ maximising the mean over *all* years) is kept as a reference row only.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from peerlens.similarity.clustering import SpanningTree


def theta_grid(tree: SpanningTree, n_points: int = 40, min_coverage: float = 0.5) -> np.ndarray:
    """Candidate θ: ``n_points`` evenly spaced quantiles of the tree's edge weights that reach ``min_coverage``.

    The clustering only changes when θ passes a tree edge, so a grid on the edges' quantiles spends
    every point on a different clustering (a fixed z grid would waste points where no edge lies).

    Why a coverage floor: MC per cluster, maximised without one, picks the θ that keeps only the
    lightest edge — one near-duplicate pair (two share classes of one company correlate at ~1) and
    every other company alone — and scores ~1 while clustering nothing. A company is in a cluster of
    >= 2 at θ iff its lightest tree edge has z <= θ, so

        coverage(θ) = #{i : min_{e ∋ i} z_e <= θ} / n,

    and the grid starts at the smallest θ with coverage(θ) >= min_coverage and ends at the heaviest
    edge (one cluster). It reads the features' tree only, never returns, so it adds no look-ahead.
    """
    if n_points < 2:
        raise ValueError(f"n_points must be >= 2, got {n_points}")
    if not 0 <= min_coverage <= 1:
        raise ValueError(f"min_coverage must be in [0, 1], got {min_coverage}")
    if tree.z.size == 0:
        raise ValueError("the tree has no edges: one company cannot be clustered at different θ")
    lightest_edge = np.full(tree.n, np.inf)
    np.minimum.at(lightest_edge, tree.row, tree.z)
    np.minimum.at(lightest_edge, tree.col, tree.z)
    needed = max(int(np.ceil(min_coverage * tree.n)), 2)  # a cluster needs two members
    lowest = np.sort(lightest_edge)[needed - 1]
    admissible = np.sort(tree.z[tree.z >= lowest])
    return np.unique(np.quantile(admissible, np.linspace(0.0, 1.0, n_points)))


def _check_grid_table(mc_on_grid: pd.DataFrame) -> None:
    if not isinstance(mc_on_grid, pd.DataFrame):
        raise TypeError(f"mc_on_grid must be a DataFrame (θ x year), got {type(mc_on_grid).__name__}")
    if mc_on_grid.empty:
        raise ValueError("mc_on_grid is empty: no θ or no year to choose from")
    if not mc_on_grid.index.is_monotonic_increasing or mc_on_grid.index.has_duplicates:
        raise ValueError("mc_on_grid's index (θ) must be strictly increasing")
    if not mc_on_grid.columns.is_monotonic_increasing or mc_on_grid.columns.has_duplicates:
        raise ValueError("mc_on_grid's columns (years) must be strictly increasing")


class ThetaFit(NamedTuple):
    """θ chosen on a set of fit years."""

    theta: float
    """The grid θ with the highest mean MC over the fit years (NaN when none scores)."""
    fit_mc: float
    """That mean MC per cluster over the fit years."""
    fit_years: tuple[int, ...]
    """The years θ was chosen on."""


def _best_theta(mc_on_grid: pd.DataFrame, fit_years: list[int]) -> ThetaFit:
    fit = mc_on_grid.loc[:, fit_years].to_numpy(dtype=float)
    # Mean over the years where the cut scores at all; NaN for a θ that scores in none of them.
    scored_years = (~np.isnan(fit)).sum(axis=1)
    mean_fit = np.where(scored_years > 0, np.nansum(fit, axis=1) / np.maximum(scored_years, 1), np.nan)
    if np.isnan(mean_fit).all():
        return ThetaFit(float("nan"), float("nan"), tuple(fit_years))
    best = int(np.nanargmax(mean_fit))  # first maximum = smallest θ on ties
    return ThetaFit(float(mc_on_grid.index[best]), float(mean_fit[best]), tuple(int(y) for y in fit_years))


def choose_theta_rolling(mc_on_grid: pd.DataFrame, lookback_years: int = 5) -> pd.DataFrame:
    """θ_Y for every year Y that has at least one earlier year (module docstring).

    Args:
        mc_on_grid: (θ x year) MC per cluster of the clustering cut at each grid θ, scored on each
            year; NaN where nothing scores. Index ascending θ, columns ascending years.
        lookback_years: how many previous years to fit on (the paper: 5).

    Returns:
        Frame with columns year, theta, fit_mc, fit_years (e.g. "2013–2015"); one row per scored year
        (the first year and years where no θ scores on the past are absent).
    """
    _check_grid_table(mc_on_grid)
    if lookback_years < 1:
        raise ValueError(f"lookback_years must be >= 1, got {lookback_years}")
    years = [int(y) for y in mc_on_grid.columns]
    rows = []
    for year in years:
        past = [y for y in years if year - lookback_years <= y < year]
        choice = _best_theta(mc_on_grid, past)
        if not past or np.isnan(choice.theta):
            continue
        rows.append(
            {"year": year, "theta": choice.theta, "fit_mc": choice.fit_mc, "fit_years": f"{past[0]}–{past[-1]}"}
        )
    return pd.DataFrame(rows, columns=["year", "theta", "fit_mc", "fit_years"])


def choose_theta_in_sample(mc_on_grid: pd.DataFrame) -> ThetaFit:
    """The static θ fitted on every year at once: a reference, never an out-of-sample score."""
    _check_grid_table(mc_on_grid)
    return _best_theta(mc_on_grid, [int(y) for y in mc_on_grid.columns])
