"""The full mean-correlation study: every clustering scored three ways per year, θ out of sample,
and paired differences against the baselines with bootstrap intervals.

Inputs are the long tables the pipeline already has: monthly log returns (month, ticker, log_return)
and clusterings (method, ticker, cluster[, tree_parent, tree_z]). A method whose rows carry its
minimum spanning tree (``tree_parent``: the ticker of the company's parent, None for the root;
``tree_z``: the z weight of that edge) is a threshold method and can be re-cut at any θ.

Per (method, year) — see :mod:`peerlens.mean_correlation.correlation` for MC and :mod:`peerlens.mean_correlation.matched_sizes`:

    mc_cluster  the paper's MC, mean over clusters
    mc_pair     the pooled within-cluster pair mean
    mc_matched  mean over ``matched_draws`` draws of mc_cluster of the method redrawn at the
                reference's exact cluster sizes (threshold methods re-cut to the reference's count
                first, so all θ variants of one representation share it)
    coverage    share of companies in a cluster of >= 2

Threshold methods get two more rows each (:mod:`peerlens.mean_correlation.rolling_theta`): "<m> (rolling θ)", cut
each year at the θ that maximised MC per cluster on earlier years (the out-of-sample score; the
first year is not scored), and "<m> (in-sample θ)", cut at the θ fitted on all years (a reference).
Comparisons (:mod:`peerlens.mean_correlation.bootstrap`): every method minus every baseline, each measure.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd

from peerlens.mean_correlation.bootstrap import cluster_bootstrap, paired_difference
from peerlens.similarity.clustering import (
    SpanningTree,
    cut_spanning_tree,
    spanning_tree_from_parents,
    theta_for_cluster_count_on_tree,
)
from peerlens.mean_correlation.correlation import ClusterScores, CorrelationWindow, score_clusters, yearly_correlation_windows
from peerlens.mean_correlation.matched_sizes import cluster_sizes, size_matched_clusters
from peerlens.mean_correlation.rolling_theta import choose_theta_in_sample, choose_theta_rolling, theta_grid

MEASURES = ("mc_cluster", "mc_pair", "mc_matched")
FIXED, ROLLING, IN_SAMPLE = "fixed clustering", "rolling θ", "in-sample θ (reference only)"
"""Values of the ``selection`` column: how a row's clustering was chosen."""
ROLLING_SUFFIX, IN_SAMPLE_SUFFIX = "rolling θ", "in-sample θ"
"""Method names of the θ variants: "<method> (<suffix>)"."""
YEARLY_COLUMNS = ("method", "selection", "year", *MEASURES, "coverage", "n_clusters", "n_pairs", "n_companies",
                  "theta", "universe_mc", "universe_sd", "as_of")


@dataclass(frozen=True)
class StudyConfig:
    """Knobs of the study; the defaults are the ones the sample report uses."""

    reference: str = "gics_sub_industry"
    """Method whose exact cluster sizes mc_matched redraws every method at."""
    baselines: tuple[str, ...] = (
        "random", "gics_sub_industry", "gics_sector", "sic4", "sic2", "sic_division", "minilm", "tfidf",
    )
    """Methods every other method is compared with (those absent from the clusters are skipped)."""
    min_months: int = 6
    """Months a company, and a pair in common, need in a year to count."""
    theta_grid_points: int = 40
    """Candidate θ per threshold method (quantiles of its tree's edge weights)."""
    theta_min_coverage: float = 0.5
    """Share of companies a candidate θ must put in clusters of >= 2 (see rolling_theta.theta_grid)."""
    lookback_years: int = 5
    """Past years θ is chosen on (the paper: 5)."""
    matched_draws: int = 20
    """Random draws averaged in mc_matched."""
    n_boot: int = 2000
    """Bootstrap replicates per comparison."""
    confidence: float = 0.95
    seed: int = 0


class MeanCorrelationStudy(NamedTuple):
    """Everything the study measured, as tidy frames."""

    yearly: pd.DataFrame
    """One row per (method, scored year): method, selection, year, mc_cluster, mc_pair, mc_matched,
    coverage, n_clusters, n_pairs, n_companies, theta (the cut used, threshold variants only),
    universe_mc and universe_sd (mean and standard deviation of the correlation over all pairs that
    year: what a random grouping scores on average, and the spread of one random pair), as_of (the
    date of the clustering that scored the year; NaT for an undated clustering)."""
    comparisons: pd.DataFrame
    """One row per (method, baseline, measure): diff (method − baseline, mean over common years),
    ci_low, ci_high, n_years, years_ahead."""
    theta_choices: pd.DataFrame
    """One row per threshold variant and year: method, year, theta, fit_mc, fit_years, n_clusters."""
    unscored_years: list[int]
    """Years with returns but too few months for any correlation (e.g. a partial last year)."""


def _method_seed(seed: int, method: str) -> np.random.Generator:
    # Seeded by name, not by position: adding a method does not change another method's draws.
    return np.random.default_rng([seed, zlib.crc32(method.encode())])


def _labels_and_trees(clusters: pd.DataFrame) -> tuple[pd.Index, dict[str, np.ndarray], dict[str, SpanningTree]]:
    required = ["method", "ticker", "cluster"]
    if not isinstance(clusters, pd.DataFrame) or any(c not in clusters.columns for c in required):
        raise ValueError(f"clusters must be a DataFrame with columns {required}")
    if clusters.duplicated(["method", "ticker"]).any():
        raise ValueError("clusters has repeated (method, ticker) rows")
    if clusters["cluster"].isna().any():
        raise ValueError("clusters has missing cluster ids")
    universe = pd.Index(sorted(clusters["ticker"].unique()))
    labels, trees = {}, {}
    for method, rows in clusters.groupby("method", sort=True):
        rows = rows.set_index("ticker")
        if len(rows) != len(universe):
            raise ValueError(
                f"method {method!r} clusters {len(rows)} of the {len(universe)} companies; every method "
                "must cluster the same companies for sizes and pairs to be comparable"
            )
        rows = rows.loc[universe]
        labels[method] = pd.factorize(rows["cluster"])[0]
        if "tree_parent" in rows.columns and rows["tree_parent"].notna().any():
            parent = universe.get_indexer(rows["tree_parent"].where(rows["tree_parent"].notna(), None))
            unknown = rows["tree_parent"].notna().to_numpy() & (parent < 0)
            if unknown.any():
                raise ValueError(f"method {method!r} has tree_parent tickers outside the universe")
            trees[method] = spanning_tree_from_parents(parent, rows["tree_z"].to_numpy(dtype=float))
    return universe, labels, trees


class _Scorer:
    """Scores universe-wide labels on every year's correlation window."""

    def __init__(self, universe: pd.Index, windows: dict[int, CorrelationWindow]):
        self.windows = windows
        self.positions = {year: universe.get_indexer(window.tickers) for year, window in windows.items()}

    def __call__(self, labels: np.ndarray, year: int) -> ClusterScores:
        return score_clusters(self.windows[year], labels[self.positions[year]])


class _ThetaVariant(NamedTuple):
    method: str
    """"<method> (rolling θ)" or "<method> (in-sample θ)"."""
    selection: str
    choices: pd.DataFrame
    """Indexed by year: theta, fit_mc, fit_years, n_clusters (of the cut)."""
    scores: dict[int, ClusterScores]


def _theta_variants(
    method: str, tree: SpanningTree, score: _Scorer, years: list[int], config: StudyConfig
) -> list[_ThetaVariant]:
    """Cut the method's tree at the rolling θ of each year and at the in-sample θ (see rolling_theta)."""
    grid = theta_grid(tree, config.theta_grid_points, config.theta_min_coverage)
    cuts = [cut_spanning_tree(tree, theta) for theta in grid]
    mc_on_grid = pd.DataFrame(
        [[score(cut, year).mc_cluster for year in years] for cut in cuts], index=grid, columns=years
    )
    rolling = choose_theta_rolling(mc_on_grid, config.lookback_years).set_index("year")
    fitted = choose_theta_in_sample(mc_on_grid)
    in_sample = pd.DataFrame(
        {"theta": fitted.theta, "fit_mc": fitted.fit_mc, "fit_years": f"{years[0]}–{years[-1]}"},
        index=pd.Index(years, name="year"),
    ).dropna(subset=["theta"])
    variants = []
    for suffix, selection, choices in ((ROLLING_SUFFIX, ROLLING, rolling), (IN_SAMPLE_SUFFIX, IN_SAMPLE, in_sample)):
        cuts_by_year = {year: cut_spanning_tree(tree, theta) for year, theta in choices.theta.items()}
        choices = choices.assign(n_clusters=[int(cut.max()) + 1 for cut in cuts_by_year.values()])
        scores = {year: score(cut, year) for year, cut in cuts_by_year.items()}
        variants.append(_ThetaVariant(f"{method} ({suffix})", selection, choices, scores))
    return variants


def _row(method: str, selection: str, year: int, scores: ClusterScores, theta: float) -> dict[str, object]:
    return {
        "method": method,
        "selection": selection,
        "year": year,
        "mc_cluster": scores.mc_cluster,
        "mc_pair": scores.mc_pair,
        "coverage": scores.coverage,
        "n_clusters": int(scores.n_pairs.size),
        "n_pairs": int(scores.n_pairs.sum()),
        "n_companies": scores.n_companies,
        "theta": theta,
    }


def mean_correlation_study(
    monthly_returns: pd.DataFrame,
    clusters: pd.DataFrame,
    config: StudyConfig | None = None,
    years: list[int] | None = None,
) -> MeanCorrelationStudy:
    """Score every clustering three ways per year, choose θ out of sample, compare with baselines.

    Args:
        monthly_returns: long frame month ("YYYY-MM"), ticker, log_return.
        clusters: long frame method, ticker, cluster, optionally tree_parent and tree_z (module
            docstring), and optionally as_of. With as_of (a date per row) the clusterings are point in
            time: year Y is scored only with the clustering of the latest as_of on or before 1 January
            of Y (made from what was known before that day), on that clustering's companies; years no
            clustering precedes are not scored. Without as_of one clustering scores every year.
        config: study knobs; defaults reproduce the sample report.
        years: score only these years (undated clusters only; None: every year with returns).
    """
    config = config or StudyConfig()
    if not isinstance(monthly_returns, pd.DataFrame) or "ticker" not in monthly_returns.columns:
        raise ValueError("monthly_returns must be a DataFrame with columns month, ticker, log_return")
    if not isinstance(clusters, pd.DataFrame) or "as_of" not in clusters.columns:
        parts = [_study_of_one_clustering(monthly_returns, clusters, config, score_years=years, as_of=pd.NaT)]
    else:
        served = years_served_by_clusterings(monthly_returns, clusters["as_of"])
        if not served:
            raise ValueError(
                "no year of monthly_returns starts after a clustering's as_of: nothing can be scored "
                f"out of sample (first as_of {pd.Timestamp(clusters['as_of'].min()).date()})"
            )
        parts = [
            _study_of_one_clustering(monthly_returns, rows.drop(columns="as_of"), config, served[as_of], as_of)
            for as_of, rows in clusters.groupby("as_of", sort=True)
            if as_of in served
        ]
    scores, matched = _merged(part.scores for part in parts), _merged(part.matched for part in parts)
    yearly = pd.concat([part.yearly for part in parts], ignore_index=True)
    yearly = yearly.sort_values(["method", "year"], kind="stable").reset_index(drop=True)
    variant_base = {k: v for part in parts for k, v in part.variant_base.items()}
    comparisons = _compare(yearly, scores, matched, variant_base, config)
    theta_choices = pd.concat([part.theta_choices for part in parts], ignore_index=True)
    scored = set(yearly.year)
    unscored = sorted({y for part in parts for y in part.unscored_years} - scored)
    return MeanCorrelationStudy(yearly, comparisons, theta_choices, unscored)


def years_served_by_clusterings(monthly_returns: pd.DataFrame, as_of: pd.Series) -> dict[pd.Timestamp, list[int]]:
    """as_of → the calendar years of `monthly_returns` whose 1 January is on or after it and before the next as_of."""
    dates = sorted(pd.to_datetime(pd.Series(as_of).unique()))
    years = sorted({int(month[:4]) for month in monthly_returns["month"].astype(str)})
    served: dict[pd.Timestamp, list[int]] = {}
    for year in years:
        usable = [day for day in dates if day <= pd.Timestamp(year, 1, 1)]
        if usable:
            served.setdefault(usable[-1], []).append(year)
    return served


def _merged(parts) -> dict[str, dict[int, list[ClusterScores]]]:
    """method → year → draws, over studies that score disjoint years."""
    merged: dict[str, dict[int, list[ClusterScores]]] = {}
    for part in parts:
        for method, by_year in part.items():
            merged.setdefault(method, {}).update(by_year)
    return merged


class _ClusteringStudy(NamedTuple):
    yearly: pd.DataFrame
    scores: dict[str, dict[int, list[ClusterScores]]]
    matched: dict[str, dict[int, list[ClusterScores]]]
    variant_base: dict[str, str]
    theta_choices: pd.DataFrame
    unscored_years: list[int]


def _study_of_one_clustering(
    monthly_returns: pd.DataFrame,
    clusters: pd.DataFrame,
    config: StudyConfig,
    score_years: list[int] | None,
    as_of: pd.Timestamp,
) -> _ClusteringStudy:
    """One set of clusterings (made as of `as_of`, NaT if undated) scored on `score_years` (None: every
    year); rolling θ is chosen on the years before each scored one, with the same clusterings."""
    universe, labels, trees = _labels_and_trees(clusters)
    if config.reference not in labels:
        raise ValueError(f"reference method {config.reference!r} is not among the clusterings {sorted(labels)}")
    # Returns of companies nobody clustered would enter the universe average; leave them out.
    windows = yearly_correlation_windows(monthly_returns[monthly_returns["ticker"].isin(universe)], config.min_months)
    unscored = sorted(year for year, window in windows.items() if len(window.tickers) == 0)
    windows = {year: window for year, window in windows.items() if len(window.tickers) > 0}
    if not windows:
        raise ValueError(f"no year of monthly_returns has {config.min_months} months for any clustered company")
    all_years = sorted(windows)
    years = [y for y in all_years if score_years is None or y in score_years]
    score = _Scorer(universe, windows)

    # scores[method][year] is a list of draws: one for a fixed clustering, several for matched ones.
    scores: dict[str, dict[int, list[ClusterScores]]] = {}
    rows, theta_rows = [], []
    for method, method_labels in labels.items():
        scores[method] = {year: [score(method_labels, year)] for year in years}
        rows += [_row(method, FIXED, y, scores[method][y][0], np.nan) for y in years]

    for method, tree in trees.items():
        for variant in _theta_variants(method, tree, score, all_years, config):
            kept = {year: s for year, s in variant.scores.items() if year in years}
            scores[variant.method] = {year: [year_scores] for year, year_scores in kept.items()}
            rows += [
                _row(variant.method, variant.selection, year, year_scores, variant.choices.theta[year])
                for year, year_scores in kept.items()
            ]
            theta_rows.append(variant.choices.loc[list(kept)].reset_index().assign(method=variant.method))

    # Size-matched draws, one set per representation, shared by its θ variants.
    reference_sizes = cluster_sizes(labels[config.reference])
    matched: dict[str, dict[int, list[ClusterScores]]] = {}
    for method, method_labels in labels.items():
        base = (
            cut_spanning_tree(trees[method], theta_for_cluster_count_on_tree(trees[method], reference_sizes.size))
            if method in trees
            else method_labels
        )
        rng = _method_seed(config.seed, method)
        draws = [size_matched_clusters(base, reference_sizes, rng) for _ in range(config.matched_draws)]
        matched[method] = {year: [score(draw, year) for draw in draws] for year in years}
    variant_base = {f"{m} ({suffix})": m for m in trees for suffix in (ROLLING_SUFFIX, IN_SAMPLE_SUFFIX)}

    yearly = pd.DataFrame(rows, columns=[c for c in YEARLY_COLUMNS if c not in ("mc_matched", "universe_mc", "universe_sd", "as_of")])
    yearly["mc_matched"] = [
        float(np.mean([draw.mc_cluster for draw in matched[variant_base.get(method, method)][year]]))
        for method, year in zip(yearly.method, yearly.year)
    ]
    yearly["universe_mc"] = yearly.year.map({y: float(w.correlation.mean()) for y, w in windows.items()})
    yearly["universe_sd"] = yearly.year.map({y: float(w.correlation.std()) for y, w in windows.items()})
    yearly["as_of"] = pd.Series(pd.Timestamp(as_of), index=yearly.index, dtype="datetime64[ns]")
    theta_columns = ["method", "year", "theta", "fit_mc", "fit_years", "n_clusters"]
    theta_choices = (
        pd.concat(theta_rows, ignore_index=True)[theta_columns] if theta_rows else pd.DataFrame(columns=theta_columns)
    )
    return _ClusteringStudy(yearly.loc[:, list(YEARLY_COLUMNS)], scores, matched, variant_base, theta_choices, unscored)


def _compare(
    yearly: pd.DataFrame,
    scores: dict[str, dict[int, list[ClusterScores]]],
    matched: dict[str, dict[int, list[ClusterScores]]],
    variant_base: dict[str, str],
    config: StudyConfig,
) -> pd.DataFrame:
    """Every method minus every baseline, per measure, with the cluster-bootstrap interval."""
    replicates: dict[tuple[str, str], dict[int, np.ndarray]] = {}
    for method, by_year in scores.items():
        rng = _method_seed(config.seed + 1, method)
        fixed = {year: cluster_bootstrap(draws, config.n_boot, rng) for year, draws in by_year.items()}
        replicates[method, "mc_cluster"] = {y: r.mc_cluster for y, r in fixed.items()}
        replicates[method, "mc_pair"] = {y: r.mc_pair for y, r in fixed.items()}
    for method, by_year in matched.items():
        rng = _method_seed(config.seed + 2, method)
        replicates[method, "mc_matched"] = {
            year: cluster_bootstrap(draws, config.n_boot, rng).mc_cluster for year, draws in by_year.items()
        }
    points = {
        (method, measure): dict(zip(rows.year, rows[measure]))
        for method, rows in yearly.groupby("method")
        for measure in MEASURES
    }
    rows = []
    baselines = [b for b in config.baselines if b in scores]
    for method in sorted(scores):
        for baseline in baselines:
            if baseline == method:
                continue
            for measure in MEASURES:
                replicate_key = (variant_base.get(method, method) if measure == "mc_matched" else method, measure)
                result = paired_difference(
                    points[method, measure],
                    points[baseline, measure],
                    replicates[replicate_key],
                    replicates[baseline, measure],
                    config.confidence,
                )
                rows.append({"method": method, "baseline": baseline, "measure": measure, **result._asdict()})
    columns = ["method", "baseline", "measure", "diff", "ci_low", "ci_high", "n_years", "years_ahead"]
    return pd.DataFrame(rows, columns=columns)
