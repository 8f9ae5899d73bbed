"""Specification of Mean Correlation (peerlens.mean_correlation.correlation)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from peerlens.mean_correlation.correlation import (
    cluster_correlation_table,
    correlation_window,
    mean_correlation,
    score_clusters,
    yearly_correlation_windows,
    yearly_mean_correlation,
)

MONTHS = [f"2020-{m:02d}" for m in range(1, 13)]


def known_answer_window() -> tuple[pd.DataFrame, pd.Series]:
    """Cluster 1 = {A, B, C} move together (3 pairs at +1), cluster 2 = {D, E} mirror (1 pair at -1).

    F is a singleton, G has too few months to count, H is not clustered at all.
    """
    rng = np.random.default_rng(0)
    f, g = rng.normal(size=12), rng.normal(size=12)
    returns = pd.DataFrame(
        {"A": f, "B": 2 * f, "C": 0.5 * f + 0.01, "D": g, "E": -g, "F": rng.normal(size=12), "H": f},
        index=pd.Index(MONTHS, name="month"),
    )
    returns["G"] = np.where(np.arange(12) < 4, f, np.nan)
    clusters = pd.Series({"A": 1, "B": 1, "C": 1, "D": 2, "E": 2, "F": 3, "G": 1})
    return returns, clusters


def test_mean_correlation_per_cluster_per_pair_and_coverage_on_known_answer():
    returns, clusters = known_answer_window()
    score = mean_correlation(returns, clusters, min_months=6)
    assert score.mc_cluster == pytest.approx((1.0 + -1.0) / 2)  # unweighted over clusters
    assert score.mc_pair == pytest.approx((3 * 1.0 - 1.0) / 4)  # pooled over pairs
    assert score.coverage == pytest.approx(5 / 6)  # A-E clustered; F alone; G, H do not count
    assert (score.n_clusters, score.n_pairs, score.n_companies) == (2, 4, 6)


def test_mean_correlation_matches_brute_force_pearson_on_random_data():
    rng = np.random.default_rng(3)
    returns = pd.DataFrame(rng.normal(size=(24, 9)), columns=list("ABCDEFGHI"))
    clusters = pd.Series([0, 0, 0, 1, 1, 2, 2, 2, 2], index=list("ABCDEFGHI"))
    corr = np.corrcoef(returns.to_numpy().T)
    per_cluster = []
    pooled = []
    for cluster_id in range(3):
        members = np.flatnonzero(clusters.to_numpy() == cluster_id)
        values = [corr[i, j] for k, i in enumerate(members) for j in members[k + 1 :]]
        per_cluster.append(np.mean(values))
        pooled.extend(values)
    score = mean_correlation(returns, clusters)
    assert score.mc_cluster == pytest.approx(np.mean(per_cluster))
    assert score.mc_pair == pytest.approx(np.mean(pooled))


def test_mean_correlation_uses_pairwise_complete_months():
    rng = np.random.default_rng(4)
    a = rng.normal(size=12)
    b = a + rng.normal(scale=0.5, size=12)
    returns = pd.DataFrame({"A": a, "B": b}, index=MONTHS)
    returns.iloc[[0, 5], 0] = np.nan
    returns.iloc[[9], 1] = np.nan
    both = returns.dropna()
    score = mean_correlation(returns, pd.Series({"A": 0, "B": 0}), min_months=6)
    assert score.mc_pair == pytest.approx(np.corrcoef(both["A"], both["B"])[0, 1])


def test_pairs_with_too_few_common_months_do_not_count_and_give_nan_not_error():
    first_half = [0.1, -0.2, 0.3, 0.0, 0.2, -0.1] + [np.nan] * 6
    returns = pd.DataFrame({"A": first_half, "B": first_half[6:] + first_half[:6]})
    score = mean_correlation(returns, pd.Series({"A": 0, "B": 0}), min_months=6)
    assert np.isnan(score.mc_cluster) and np.isnan(score.mc_pair)
    assert (score.n_clusters, score.n_pairs, score.n_companies) == (0, 0, 2)


def test_all_singletons_give_nan_and_zero_coverage():
    returns, _ = known_answer_window()
    singletons = pd.Series(np.arange(7), index=list("ABCDEFG"))
    score = mean_correlation(returns, singletons)
    assert np.isnan(score.mc_cluster) and score.coverage == 0.0 and score.n_pairs == 0


def test_mean_correlation_rejects_missing_cluster_ids_and_tiny_min_months():
    returns, clusters = known_answer_window()
    with pytest.raises(ValueError, match="missing cluster ids"):
        mean_correlation(returns, clusters.astype(float).where(clusters != 3))
    with pytest.raises(ValueError, match="min_months"):
        mean_correlation(returns, clusters, min_months=2)


def long_returns(wide_by_year: dict[int, pd.DataFrame]) -> pd.DataFrame:
    frames = []
    for year, wide in wide_by_year.items():
        months = [f"{year}-{m:02d}" for m in range(1, 13)]
        long = wide.set_axis(months).rename_axis("month").reset_index()
        frames.append(long.melt("month", var_name="ticker", value_name="log_return"))
    return pd.concat(frames, ignore_index=True)


def test_yearly_mean_correlation_scores_each_method_on_each_calendar_year():
    returns, clusters = known_answer_window()
    flipped = returns.copy()
    flipped["C"] = -flipped["C"]  # in 2021 C turns against A and B
    monthly = long_returns({2020: returns, 2021: flipped})
    cluster_frame = pd.concat(
        [
            clusters.rename("cluster").rename_axis("ticker").reset_index().assign(method="sic"),
            pd.DataFrame({"method": "singletons", "ticker": list("ABCDEFG"), "cluster": range(7)}),
        ]
    )
    table = yearly_mean_correlation(monthly, cluster_frame, min_months=6)
    assert list(table.columns) == [
        "method", "year", "mc_cluster", "mc_pair", "coverage", "n_clusters", "n_pairs", "n_companies"
    ]
    assert table[["method", "year"]].values.tolist() == [
        ["sic", 2020], ["sic", 2021], ["singletons", 2020], ["singletons", 2021]
    ]
    sic = table[table["method"] == "sic"].set_index("year")
    assert sic.loc[2020, "mc_cluster"] == pytest.approx(0.0)
    assert sic.loc[2021, "mc_cluster"] == pytest.approx(((1 - 1 - 1) / 3 + -1) / 2)
    assert table[table["method"] == "singletons"]["n_pairs"].tolist() == [0, 0]


def test_yearly_clusters_with_a_year_column_score_each_year_with_its_own_clustering():
    returns, _ = known_answer_window()
    monthly = long_returns({2020: returns, 2021: returns})
    cluster_frame = pd.DataFrame(
        {
            "method": "sae",
            "year": [2020, 2020, 2021, 2021],
            "ticker": ["A", "B", "A", "D"],
            "cluster": [0, 0, 0, 0],
        }
    )
    table = yearly_mean_correlation(monthly, cluster_frame).set_index("year")
    assert table.loc[2020, "mc_pair"] == pytest.approx(1.0)
    assert table.loc[2021, "mc_pair"] == pytest.approx(returns["A"].corr(returns["D"]))


def test_cluster_correlation_table_lists_each_scored_cluster():
    returns, clusters = known_answer_window()
    monthly = long_returns({2020: returns})
    cluster_frame = clusters.rename("cluster").rename_axis("ticker").reset_index().assign(method="sic")
    table = cluster_correlation_table(monthly, cluster_frame)
    assert table[["cluster", "n_members", "n_pairs"]].values.tolist() == [[1, 3, 3], [2, 2, 1]]
    np.testing.assert_allclose(table["mean_corr"], [1.0, -1.0])


def test_yearly_mean_correlation_rejects_malformed_months():
    bad = pd.DataFrame({"month": ["2020/01"], "ticker": ["A"], "log_return": [0.1]})
    with pytest.raises(ValueError, match="YYYY-MM"):
        yearly_mean_correlation(bad, pd.DataFrame({"method": ["m"], "ticker": ["A"], "cluster": [0]}))



def test_score_clusters_on_a_window_gives_the_known_answer_sums_per_cluster():
    returns, clusters = known_answer_window()
    window = correlation_window(returns, min_months=6)
    assert list(window.tickers) == list("ABCDEFH")  # G has 4 months: left out
    labels = np.array([0, 0, 0, 1, 1, 2, 0])  # A B C | D E | F | H with A B C
    scores = score_clusters(window, labels)
    np.testing.assert_array_equal(scores.cluster, [0, 1])
    np.testing.assert_array_equal(scores.n_members, [4, 2])
    np.testing.assert_array_equal(scores.n_pairs, [6, 1])
    np.testing.assert_allclose(scores.pair_sum, [6.0, -1.0])  # H = A exactly, so all six pairs at +1
    assert scores.mc_cluster == pytest.approx((1.0 - 1.0) / 2)
    assert scores.mc_pair == pytest.approx(5 / 7)
    assert scores.coverage == pytest.approx(6 / 7)


def test_score_clusters_rejects_labels_not_aligned_with_the_window():
    returns, _ = known_answer_window()
    window = correlation_window(returns)
    with pytest.raises(ValueError, match="one entry per window ticker"):
        score_clusters(window, np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match="non-negative integers"):
        score_clusters(window, -np.ones(len(window.tickers), dtype=int))


def test_yearly_correlation_windows_split_by_calendar_year():
    returns, _ = known_answer_window()
    flipped = returns.copy()
    flipped["C"] = -flipped["C"]
    windows = yearly_correlation_windows(long_returns({2020: returns, 2021: flipped}))
    assert sorted(windows) == [2020, 2021]
    a, c = list(windows[2021].tickers).index("A"), list(windows[2021].tickers).index("C")
    pair = (windows[2021].first == a) & (windows[2021].second == c)
    assert windows[2021].correlation[pair] == pytest.approx([-1.0])
