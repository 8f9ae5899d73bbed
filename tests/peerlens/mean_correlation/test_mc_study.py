"""Specification of the mean-correlation study (peerlens.mean_correlation.mc_study) on planted groups with a known answer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from peerlens.similarity.clustering import (
    cosine_distance_matrix,
    cut_spanning_tree,
    minimum_spanning_tree_z,
    random_clusters_like,
    root_spanning_tree,
    theta_for_cluster_count_on_tree,
)
from peerlens.mean_correlation.mc_study import StudyConfig, mean_correlation_study

N_GROUPS, GROUP_SIZE = 4, 6
TICKERS = [f"T{i:02d}" for i in range(N_GROUPS * GROUP_SIZE)]
GROUP = np.repeat(np.arange(N_GROUPS), GROUP_SIZE)
YEARS = [2013, 2014, 2015, 2016]
# r = 0.8 * group factor + 0.6 * own noise: within-group correlation 0.64, across groups 0.
WITHIN = 0.64
CONFIG = StudyConfig(reference="codes", baselines=("random", "codes"), n_boot=300, matched_draws=20)


def planted_returns(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    months = [f"{year}-{month:02d}" for year in YEARS for month in range(1, 13)]
    factors = rng.normal(size=(len(months), N_GROUPS))
    returns = 0.8 * factors[:, GROUP] + 0.6 * rng.normal(size=(len(months), len(TICKERS)))
    wide = pd.DataFrame(returns, index=pd.Index(months, name="month"), columns=TICKERS)
    return wide.reset_index().melt("month", var_name="ticker", value_name="log_return")


def planted_clusters() -> pd.DataFrame:
    """codes = the planted groups; random = their sizes shuffled; singletons; feat = MST on noisy centroids."""
    rng = np.random.default_rng(1)
    centroids = rng.normal(size=(N_GROUPS, 8))
    features = centroids[GROUP] + 0.3 * rng.normal(size=(len(TICKERS), 8))
    tree = minimum_spanning_tree_z(cosine_distance_matrix(features))
    rooted = root_spanning_tree(tree)
    tickers = np.array(TICKERS, dtype=object)
    labels = {
        "codes": GROUP,
        "random": random_clusters_like(GROUP, seed=0),
        "singletons": np.arange(len(TICKERS)),
        "feat": cut_spanning_tree(tree, theta_for_cluster_count_on_tree(tree, N_GROUPS)),
    }
    frames = []
    for method, method_labels in labels.items():
        frame = pd.DataFrame({"method": method, "ticker": tickers, "cluster": method_labels})
        if method == "feat":
            frame["tree_parent"] = np.where(rooted.parent >= 0, tickers[np.maximum(rooted.parent, 0)], None)
            frame["tree_z"] = rooted.z
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def study():
    return mean_correlation_study(planted_returns(), planted_clusters(), CONFIG)


def mean_by_method(study, measure: str) -> pd.Series:
    return study.yearly.groupby("method")[measure].mean()


def test_planted_groups_score_their_within_group_correlation(study):
    codes = study.yearly[study.yearly.method == "codes"]
    assert codes.mc_cluster.mean() == pytest.approx(WITHIN, abs=0.08)
    assert codes.mc_pair.mean() == pytest.approx(WITHIN, abs=0.08)
    assert (codes.coverage == 1.0).all() and (codes.n_clusters == N_GROUPS).all()


def test_random_grouping_at_the_same_sizes_scores_the_universe_average(study):
    universe = study.yearly.universe_mc.mean()
    assert universe == pytest.approx(WITHIN * (N_GROUPS * 15) / (24 * 23 / 2), abs=0.05)
    # Singletons redrawn at the planted sizes are uniformly random clusterings: the floor.
    assert mean_by_method(study, "mc_matched")["singletons"] == pytest.approx(universe, abs=0.06)
    assert mean_by_method(study, "mc_cluster")["random"] < mean_by_method(study, "mc_cluster")["codes"] - 0.3


def test_the_reference_matched_to_itself_is_unchanged(study):
    codes = study.yearly[study.yearly.method == "codes"]
    np.testing.assert_allclose(codes.mc_matched, codes.mc_cluster)


def test_threshold_methods_get_rolling_and_in_sample_rows_and_the_first_year_is_not_scored(study):
    rows = study.yearly.set_index("method")
    assert sorted(rows.loc["feat (rolling θ)"].year) == YEARS[1:]
    assert sorted(rows.loc["feat (in-sample θ)"].year) == YEARS
    assert set(rows.loc["feat (in-sample θ)"].selection) == {"in-sample θ (reference only)"}
    assert rows.loc["feat (rolling θ)"].theta.notna().all() and rows.loc["feat"].theta.isna().all()
    # Every θ variant of one representation shares its size-matched score.
    matched = study.yearly[study.yearly.year == 2016].set_index("method").mc_matched
    assert matched["feat (rolling θ)"] == matched["feat (in-sample θ)"] == matched["feat"]
    assert set(study.theta_choices.method) == {"feat (rolling θ)", "feat (in-sample θ)"}


def test_rolling_theta_for_a_year_never_reads_that_years_returns(study):
    returns = planted_returns()
    in_2015 = returns.month.str.startswith("2015")
    returns.loc[in_2015, "log_return"] = np.random.default_rng(7).normal(size=int(in_2015.sum()))
    perturbed = mean_correlation_study(returns, planted_clusters(), CONFIG)

    def rolling(result):
        return result.theta_choices[result.theta_choices.method == "feat (rolling θ)"].set_index("year")

    before, after = rolling(study), rolling(perturbed)
    assert after.loc[2014, "theta"] == before.loc[2014, "theta"]
    assert after.loc[2015, "theta"] == before.loc[2015, "theta"]
    assert after.loc[2015, "fit_mc"] == before.loc[2015, "fit_mc"]
    # The perturbation is real: 2015's score moved, and so did the fit that 2016's θ is chosen on.
    score = lambda result: result.yearly.set_index(["method", "year"]).loc[("codes", 2015), "mc_cluster"]  # noqa: E731
    assert abs(score(perturbed) - score(study)) > 0.3
    assert after.loc[2016, "fit_mc"] != before.loc[2016, "fit_mc"]


def test_comparisons_find_the_planted_groups_above_the_floor_with_intervals(study):
    comparisons = study.comparisons
    assert list(comparisons.columns) == [
        "method", "baseline", "measure", "diff", "ci_low", "ci_high", "n_years", "years_ahead"
    ]
    codes_vs_random = comparisons[(comparisons.method == "codes") & (comparisons.baseline == "random")]
    codes_vs_random = codes_vs_random.set_index("measure")
    assert set(codes_vs_random.index) == {"mc_cluster", "mc_pair", "mc_matched"}
    assert (codes_vs_random.ci_low > 0.2).all() and (codes_vs_random.n_years == len(YEARS)).all()
    scored = comparisons.dropna(subset=["diff"])
    assert ((scored.ci_low <= scored["diff"]) & (scored["diff"] <= scored.ci_high)).all()
    rolling = comparisons[comparisons.method == "feat (rolling θ)"]
    assert (rolling.n_years == len(YEARS) - 1).all()
    assert not ((comparisons.method == "codes") & (comparisons.baseline == "codes")).any()


def test_study_is_reproducible_from_its_seed(study):
    again = mean_correlation_study(planted_returns(), planted_clusters(), CONFIG)
    pd.testing.assert_frame_equal(again.yearly, study.yearly)
    pd.testing.assert_frame_equal(again.comparisons, study.comparisons)


def test_study_rejects_an_unknown_reference_and_methods_on_different_companies():
    clusters = planted_clusters()
    with pytest.raises(ValueError, match="reference method 'gics'"):
        mean_correlation_study(planted_returns(), clusters, StudyConfig(reference="gics"))
    short = clusters[~((clusters.method == "random") & (clusters.ticker == "T00"))]
    with pytest.raises(ValueError, match="'random' clusters 23 of the 24"):
        mean_correlation_study(planted_returns(), short, CONFIG)
