"""Specification of the out-of-sample θ choice (peerlens.mean_correlation.rolling_theta)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from peerlens.similarity.clustering import SpanningTree, cut_spanning_tree
from peerlens.mean_correlation.rolling_theta import choose_theta_in_sample, choose_theta_rolling, theta_grid

YEARS = [2013, 2014, 2015, 2016, 2017]


def grid_table() -> pd.DataFrame:
    """MC per cluster at three θ over five years; the best θ changes after 2014."""
    return pd.DataFrame(
        [
            [0.50, 0.50, 0.10, 0.10, 0.10],  # θ = -1: best early
            [0.30, 0.30, 0.90, 0.90, 0.90],  # θ = 0: best late
            [0.20, 0.20, 0.20, 0.20, 0.20],  # θ = 1
        ],
        index=[-1.0, 0.0, 1.0],
        columns=YEARS,
    )


def test_rolling_choice_uses_only_earlier_years_and_skips_the_first():
    choices = choose_theta_rolling(grid_table(), lookback_years=5).set_index("year")
    assert list(choices.index) == [2014, 2015, 2016, 2017]  # 2013 has no past
    assert choices.loc[2014, "theta"] == -1.0 and choices.loc[2014, "fit_years"] == "2013–2013"
    assert choices.loc[2015, "theta"] == -1.0  # 2013-2014 favour -1; 2015 itself is not read
    assert choices.loc[2016, "theta"] == 0.0  # mean(0.3, 0.3, 0.9) > mean(0.5, 0.5, 0.1)
    assert choices.loc[2016, "fit_mc"] == pytest.approx(0.5)


def test_changing_the_scored_year_and_later_never_changes_its_theta():
    table = grid_table()
    before = choose_theta_rolling(table).set_index("year").theta
    for year in YEARS[1:]:
        perturbed = table.copy()
        perturbed.loc[:, year:] = np.random.default_rng(year).uniform(-1, 1, size=perturbed.loc[:, year:].shape)
        after = choose_theta_rolling(perturbed).set_index("year").theta
        assert after[year] == before[year]


def test_lookback_limits_the_fit_window():
    choices = choose_theta_rolling(grid_table(), lookback_years=1).set_index("year")
    assert choices.loc[2016, "fit_years"] == "2015–2015" and choices.loc[2016, "theta"] == 0.0


def test_theta_with_nothing_scored_is_never_chosen_and_ties_go_to_the_smaller_theta():
    table = pd.DataFrame([[np.nan, np.nan], [0.4, 0.4], [0.4, 0.4]], index=[-2.0, 0.0, 1.0], columns=[2013, 2014])
    assert choose_theta_rolling(table).theta.tolist() == [0.0]
    assert choose_theta_in_sample(table).theta == 0.0


def test_in_sample_choice_fits_every_year():
    fit = choose_theta_in_sample(grid_table())
    assert fit.theta == 0.0 and fit.fit_years == tuple(YEARS)
    assert fit.fit_mc == pytest.approx(np.mean([0.3, 0.3, 0.9, 0.9, 0.9]))


def test_theta_grid_starts_where_coverage_reaches_the_floor():
    # A path 0-1-2-3-4-5 with edge weights -3, -2, -1, 0, 1: at θ = -2 items {0, 1, 2} are clustered (0.5).
    tree = SpanningTree(6, np.arange(5), np.arange(1, 6), np.array([-3.0, -2.0, -1.0, 0.0, 1.0]))
    grid = theta_grid(tree, n_points=5, min_coverage=0.5)
    assert grid[0] == -2.0 and grid[-1] == 1.0

    def coverage_at(theta: float) -> float:
        labels = cut_spanning_tree(tree, theta)
        return float((np.bincount(labels)[labels] >= 2).mean())

    assert coverage_at(grid[0]) >= 0.5 and coverage_at(grid[0] - 0.5) < 0.5
    assert theta_grid(tree, n_points=5, min_coverage=0.0)[0] == -3.0


def test_grid_and_choice_reject_bad_input():
    tree = SpanningTree(3, np.array([0, 1]), np.array([1, 2]), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="n_points"):
        theta_grid(tree, n_points=1)
    with pytest.raises(ValueError, match="strictly increasing"):
        choose_theta_rolling(grid_table().iloc[::-1])
    with pytest.raises(ValueError, match="lookback_years"):
        choose_theta_rolling(grid_table(), lookback_years=0)
