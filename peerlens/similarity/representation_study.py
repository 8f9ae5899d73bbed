"""The representation study: which representation of a company's text finds peers whose returns move together.

Every representation is clustered and scored the one way, point in time, on the same companies:

    on each scoring date D (1 January of a scored year), the universe is each company's latest text known
    before D (`peerlens.similarity.point_in_time.universe_as_of`);
    distances   standardise → PCA → 1 − cos (`reduced_cosine_distances`, as company_clusters does for the SAE
                and TF-IDF; a representation may ask for the plain cosine instead), except the
                specificity-weighted pooling, whose point is its weights (which standardising would undo):
                1 − cos of the companies' profiles w ⊙ x / ‖w ⊙ x‖, w_j = ln(n / df_j) over D's universe,
                the similarity `peerlens peers` answers with (`company_profiles`);
    clusters    the minimum spanning tree of the z-scored distances, cut to the reference code's cluster
                count on D (so representations differ in how they group, not in how finely);
    MC          `mean_correlation_study`: year Y scored with the clusters of its 1 January; per pair and
                at the reference's exact cluster sizes (mc_matched), every representation against every
                other with cluster-bootstrap intervals;
    agreement   the share of a company's k nearest neighbours (on the same distances) that carry its
                industry label, averaged over the companies with that label, on each D's universe.

The reference code and a random clustering of its sizes are scored beside them as yardsticks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd

from peerlens.mean_correlation.mc_study import StudyConfig, mean_correlation_study
from peerlens.similarity.clustering import (
    cosine_distance_matrix,
    cut_spanning_tree,
    labels_from_codes,
    minimum_spanning_tree_z,
    random_clusters_like,
    theta_for_cluster_count_on_tree,
)
from peerlens.similarity.company_latents import company_profiles
from peerlens.similarity.embeddings import reduced_cosine_distances, tfidf_matrix
from peerlens.similarity.point_in_time import codes_as_of, universe_as_of

SPECIFICITY = "specificity"
"""The pooling that weights mean-pooled latents by ln(n / df) and compares unit profiles."""
RANDOM = "random"
TABLE_COLUMNS = [
    "representation", "family", "layer", "pooling", "width", "seed", "mc_matched", "mc_pair", "mc_cluster",
    "matched_vs_anchor", "matched_vs_anchor_low", "matched_vs_anchor_high",
    "pair_vs_anchor", "pair_vs_anchor_low", "pair_vs_anchor_high",
    "matched_vs_reference", "matched_vs_reference_low", "matched_vs_reference_high",
    "counterpart", "matched_vs_counterpart", "matched_vs_counterpart_low", "matched_vs_counterpart_high", "n_years",
]


@dataclass(frozen=True)
class Representation:
    """One way of turning a company's text into a vector.

    `features` holds (text_ids, (n_texts, m) matrix), one row per text the study may meet; None for a
    representation built from each universe's descriptions (TF-IDF, whose vocabulary is fit on the universe).
    """

    name: str
    family: str
    """sae, raw_residual, minilm or tfidf."""
    layer: int | None = None
    pooling: str | None = None
    width: int | None = None
    """SAE latents (d_sae), or the residual's width."""
    seed: int | None = None
    features: tuple[list[str], np.ndarray] | None = field(default=None, repr=False)
    reduced: bool = True
    """Standardise → PCA before the cosine; False: the plain cosine of the rows (company_clusters' MiniLM)."""
    counterpart: str | None = None
    """The representation this one is built from (an SAE's: the raw residual at its layer, pooled alike), if
    scored too: the table gives the difference to it."""

    def distances(self, universe: pd.DataFrame, pca_components: int) -> np.ndarray:
        """(n, n) distances between the universe's texts (rows of `universe`, in order)."""
        if self.features is None:
            return reduced_cosine_distances(tfidf_matrix(universe.description.tolist()), n_components=pca_components)
        known, matrix = self.features
        position = pd.Index(known).get_indexer(universe.text_id)
        if (position < 0).any():
            missing = universe.text_id[position < 0].tolist()
            raise ValueError(f"representation {self.name!r} has no features for texts {missing[:5]}")
        rows = matrix[position]
        if self.pooling == SPECIFICITY:
            return profile_distances(rows)
        if not self.reduced:
            return cosine_distance_matrix(rows)
        return reduced_cosine_distances(rows, n_components=pca_components)


@dataclass(frozen=True)
class RepresentationStudyConfig:
    reference: str = "gics_sub_industry"
    """Code whose cluster count every representation is cut to and whose sizes mc_matched copies."""
    anchor: str = "minilm"
    """The representation every other is compared with in the table (the issue's strongest text baseline)."""
    agreement_labels: tuple[str, ...] = ("gics_sector", "gics_sub_industry")
    neighbours: int = 5
    pca_components: int = 256
    random_seed: int = 0
    matched_draws: int = 20
    n_boot: int = 1000
    min_companies: int = 10


class RepresentationStudy(NamedTuple):
    table: pd.DataFrame
    """One row per representation and yardstick (TABLE_COLUMNS + agreement_<label>), best mc_matched first."""
    yearly: pd.DataFrame
    """`mean_correlation_study`'s yearly rows (method = representation name)."""
    comparisons: pd.DataFrame
    """Every representation minus every other: method, baseline, measure, diff, ci_low, ci_high, n_years."""
    agreement: pd.DataFrame
    """One row per (as_of, representation, label): agreement, companies."""
    universes: pd.DataFrame
    """One row per scoring date: as_of, companies, newest_text_known_by."""


def profile_distances(features: np.ndarray) -> np.ndarray:
    """(n, n) 1 − p_a · p_b of the companies' specificity-weighted unit profiles (`company_profiles`); a
    company whose every latent fires in all companies has the zero profile and is at distance 1 from all."""
    profiles = company_profiles(features)
    distances = np.clip(1.0 - profiles @ profiles.T, 0.0, 2.0)
    np.fill_diagonal(distances, 0.0)
    return distances


def nearest_neighbour_agreement(distances: np.ndarray, labels: Sequence, k: int) -> np.ndarray:
    """Per company, the share of its k nearest other companies that carry its label.

    Companies without a label (None/NaN) are left out as points and as neighbours; their entries are NaN.

    Args:
        distances: (n, n) symmetric distances.
        labels: (n,) label per company.
        k: neighbours per company (fewer when fewer labelled companies remain).

    Returns:
        (n,) float64 shares in [0, 1], NaN for unlabelled companies.
    """
    labels = pd.Series(list(labels), dtype=object)
    if distances.shape != (len(labels), len(labels)):
        raise ValueError(f"distances must be ({len(labels)}, {len(labels)}), got {distances.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    labelled = np.flatnonzero(labels.notna().to_numpy())
    shares = np.full(len(labels), np.nan)
    if labelled.size < 2:
        return shares
    within = np.array(distances, dtype=np.float64)[np.ix_(labelled, labelled)]
    np.fill_diagonal(within, np.inf)
    nearest = np.argsort(within, axis=1, kind="stable")[:, : min(k, labelled.size - 1)]
    codes = pd.factorize(labels.iloc[labelled])[0]
    shares[labelled] = (codes[nearest] == codes[:, None]).mean(axis=1)
    return shares


def score_representations(
    representations: Sequence[Representation],
    texts: pd.DataFrame,
    dates: Sequence[pd.Timestamp],
    codes: pd.DataFrame,
    monthly_returns: pd.DataFrame,
    config: RepresentationStudyConfig = RepresentationStudyConfig(),
    members_on: Callable[[pd.Timestamp], set[str]] | None = None,
    tradable_on: Callable[[pd.Timestamp], set[str]] | None = None,
) -> RepresentationStudy:
    """Cluster and score every representation on each of `dates` (module docstring).

    Args:
        representations: distinct names; `config.anchor` must be one of them.
        texts: the text history (TEXT_COLUMNS: text_id, ticker, description, known_by, …).
        dates: scoring dates, each the 1 January of the year it scores (earlier dates score nothing).
        codes: industry_codes (ticker, known_by, the reference and the agreement labels among the columns); each
            date uses the codes in force on it (`codes_as_of`).
        monthly_returns: month ("YYYY-MM"), ticker, log_return.
        members_on, tradable_on: narrow each date's universe (see `universe_as_of`).
    """
    names = [r.name for r in representations]
    if len(set(names)) != len(names) or {config.reference, RANDOM} & set(names):
        raise ValueError(f"representation names must be distinct and not {config.reference!r} or {RANDOM!r}: {names}")
    if config.anchor not in names:
        raise ValueError(f"the anchor {config.anchor!r} is not among the representations {names}")
    missing = [c for c in (config.reference, *config.agreement_labels) if c not in codes.columns]
    if missing:
        raise ValueError(f"codes lack the columns {missing}")
    clusters, agreement, universes = [], [], []
    for day in dates:
        universe = universe_as_of(texts, day, members_on(day) if members_on else None, tradable_on(day) if tradable_on else None)
        if len(universe) < config.min_companies:
            continue
        day_codes = codes_as_of(codes, day).reindex(universe.ticker)
        reference = labels_from_codes(day_codes[config.reference].reset_index(drop=True))
        labels = {config.reference: reference, RANDOM: random_clusters_like(reference, seed=config.random_seed)}
        n_clusters = len(np.unique(reference))
        for representation in representations:
            distances = representation.distances(universe, config.pca_components)
            tree = minimum_spanning_tree_z(distances)
            labels[representation.name] = cut_spanning_tree(tree, theta_for_cluster_count_on_tree(tree, n_clusters))
            for label in config.agreement_labels:
                shares = nearest_neighbour_agreement(distances, day_codes[label].to_numpy(), config.neighbours)
                agreement.append({"as_of": day, "representation": representation.name, "label": label,
                                  "agreement": float(np.nanmean(shares)), "companies": int(np.isfinite(shares).sum())})
        clusters += [pd.DataFrame({"as_of": day, "method": name, "ticker": universe.ticker, "cluster": cut})
                     for name, cut in labels.items()]
        universes.append({"as_of": day, "companies": len(universe), "newest_text_known_by": universe.known_by.max()})
    if not clusters:
        raise ValueError(f"no scoring date in {[str(pd.Timestamp(d).date()) for d in dates]} has {config.min_companies} companies")
    study_config = StudyConfig(
        reference=config.reference, baselines=(*names, config.reference, RANDOM), matched_draws=config.matched_draws,
        n_boot=config.n_boot, seed=config.random_seed,
    )
    study = mean_correlation_study(monthly_returns, pd.concat(clusters, ignore_index=True), study_config)
    agreement = pd.DataFrame(agreement, columns=["as_of", "representation", "label", "agreement", "companies"])
    table = _table(representations, study.yearly, study.comparisons, agreement, config)
    return RepresentationStudy(table, study.yearly, study.comparisons, agreement, pd.DataFrame(universes))


def _table(representations, yearly, comparisons, agreement, config: RepresentationStudyConfig) -> pd.DataFrame:
    """One row per representation and yardstick: mean MC over the scored years, differences with intervals."""
    names = {r.name for r in representations}
    described = pd.DataFrame(
        [{"representation": r.name, "family": r.family, "layer": r.layer, "pooling": r.pooling, "width": r.width,
          "seed": r.seed, "counterpart": r.counterpart if r.counterpart in names else None} for r in representations]
        + [{"representation": config.reference, "family": "industry code"}, {"representation": RANDOM, "family": RANDOM}]
    )
    means = yearly.groupby("method")[["mc_matched", "mc_pair", "mc_cluster"]].mean()
    table = described.join(means, on="representation")
    table["n_years"] = table.representation.map(yearly.groupby("method").year.nunique())
    for measure, baseline, column in (("mc_matched", config.anchor, "matched_vs_anchor"),
                                      ("mc_pair", config.anchor, "pair_vs_anchor"),
                                      ("mc_matched", config.reference, "matched_vs_reference")):
        rows = comparisons[(comparisons.baseline == baseline) & (comparisons.measure == measure)].set_index("method")
        for suffix, source in (("", "diff"), ("_low", "ci_low"), ("_high", "ci_high")):
            table[column + suffix] = table.representation.map(rows[source]).where(table.representation != baseline, 0.0)
    matched = comparisons[comparisons.measure == "mc_matched"].set_index(["method", "baseline"])
    for suffix, source in (("", "diff"), ("_low", "ci_low"), ("_high", "ci_high")):
        table["matched_vs_counterpart" + suffix] = [
            matched[source].get((name, counterpart), np.nan) for name, counterpart in zip(table.representation, table.counterpart)
        ]
    per_label = agreement.groupby(["representation", "label"]).agreement.mean().unstack("label")
    table = table[TABLE_COLUMNS].join(per_label.add_prefix("agreement_"), on="representation")
    return table.sort_values("mc_matched", ascending=False, ignore_index=True)


def winner_margin(study: RepresentationStudy, measure: str = "mc_matched") -> dict[str, object]:
    """The best representation by `measure` (yardsticks excluded) and its margin over the runner-up, with the
    bootstrap interval of that difference."""
    ranked = study.table[~study.table.family.isin(["industry code", RANDOM])].sort_values(measure, ascending=False)
    if len(ranked) < 2:
        raise ValueError("the study needs two representations to name a winner")
    best, second = ranked.representation.iloc[0], ranked.representation.iloc[1]
    row = study.comparisons[(study.comparisons.method == best) & (study.comparisons.baseline == second)
                            & (study.comparisons.measure == measure)].iloc[0]
    return {"measure": measure, "winner": best, "runner_up": second, "margin": float(row["diff"]),
            "ci_low": float(row.ci_low), "ci_high": float(row.ci_high)}
