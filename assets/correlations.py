"""Mean correlation: do a method's clusters move together — three ways, θ out of sample, with intervals."""

import numpy as np
import pandas as pd
from dagster import (
    AllPartitionMapping,
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    BackfillPolicy,
    Config,
    MetadataValue,
    Output,
    asset,
    asset_check,
)
from pydantic import Field

from assets.metadata import figure_markdown, markdown_table, plt
from assets.partitions import FOLLOWS_UPSTREAM, YEARS, partitions_value
from peerlens.mean_correlation.mc_study import (
    FIXED,
    MEASURES,
    ROLLING,
    StudyConfig,
    mean_correlation_study,
    years_served_by_clusterings,
)

_DEFAULTS = StudyConfig()
POINT_IN_TIME, LOOK_AHEAD = "point in time", "look-ahead reference"
"""Values of the `timing` column of cluster_correlations and mc_comparisons."""
YEARLY_COLUMNS = [
    "timing", "method", "selection", "year", "mc_cluster", "mc_pair", "mc_matched", "coverage", "n_clusters",
    "n_pairs", "n_companies", "theta", "universe_mc", "universe_sd", "as_of",
]
"""Columns of cluster_correlations: `mean_correlation_study`'s yearly rows and their timing."""


class MeanCorrelationConfig(Config):
    reference: str = Field(default=_DEFAULTS.reference, description="Method whose cluster sizes mc_matched copies.")
    baselines: list[str] = Field(
        default=list(_DEFAULTS.baselines), description="Methods every method is compared with."
    )
    min_months: int = Field(default=_DEFAULTS.min_months, description="Months of overlapping returns a pair needs.")
    theta_grid_points: int = Field(default=_DEFAULTS.theta_grid_points, description="Candidate θ per threshold method.")
    theta_min_coverage: float = Field(
        default=_DEFAULTS.theta_min_coverage,
        description="Share of companies a candidate θ must put in clusters of ≥ 2.",
    )
    lookback_years: int = Field(default=_DEFAULTS.lookback_years, description="Past years θ is chosen on (paper: 5).")
    matched_draws: int = Field(
        default=_DEFAULTS.matched_draws, description="Size-matched draws averaged in mc_matched."
    )
    n_boot: int = Field(default=_DEFAULTS.n_boot, description="Bootstrap replicates (clusters resampled within year).")
    seed: int = Field(default=_DEFAULTS.seed, description="Seed of the matched draws and the bootstrap.")


@asset(
    group_name="evaluation",
    kinds={"pandas", "parquet"},
    partitions_def=YEARS,
    backfill_policy=BackfillPolicy.single_run(),
    ins={"monthly_returns": AssetIn(partition_mapping=AllPartitionMapping())},
    automation_condition=FOLLOWS_UPSTREAM,
    check_specs=[
        AssetCheckSpec("correlations_are_in_range_for_every_method_and_year", asset="cluster_correlations"),
        AssetCheckSpec("random_baseline_scores_near_the_universe_average", asset="cluster_correlations"),
    ],
)
def cluster_correlations(
    context: AssetExecutionContext,
    config: MeanCorrelationConfig,
    company_clusters: pd.DataFrame,
    current_company_clusters: pd.DataFrame,
    monthly_returns: pd.DataFrame,
):
    """One partition per year Y: MC per cluster (the paper's), per pair and at the reference's cluster sizes,
    and coverage, per method.

    Point in time (timing "point in time"): the clustering dated 1 January of Y (company_clusters), made
    from texts known before then, on that date's universe; the same year scored with today's clusters
    follows as the "look-ahead reference". A year with no clustering on its 1 January is an empty
    partition. Threshold methods also get "(rolling θ)" rows (θ chosen on earlier years of returns only)
    and "(in-sample θ)" rows (θ fitted on every year: a reference). A new month of returns changes its
    own year's partition; the years before keep their scores.
    """
    study_config = StudyConfig(**config.model_dump())
    parts = {}
    for key in context.partition_keys:
        as_of, year = pd.Timestamp(key), pd.Timestamp(key).year
        dated = company_clusters[company_clusters.as_of == as_of].drop(columns=["as_of", "text_id", "company_id"])
        parts[key] = pd.DataFrame(columns=YEARLY_COLUMNS)
        if dated.empty or year not in _years_of(monthly_returns):
            continue
        headline = mean_correlation_study(monthly_returns, dated, study_config, years=[year])
        today = current_company_clusters.drop(columns=["as_of", "text_id", "company_id"])
        reference = mean_correlation_study(monthly_returns, today, study_config, years=[year])
        parts[key] = pd.concat(
            [headline.yearly.assign(timing=POINT_IN_TIME, as_of=as_of), reference.yearly.assign(timing=LOOK_AHEAD)],
            ignore_index=True,
        )[YEARLY_COLUMNS]
        context.log.info(f"{year}: {len(headline.yearly)} methods scored on the clustering of {as_of.date()}")
    yearly = pd.concat(parts.values(), ignore_index=True)
    yield Output(
        partitions_value(parts),
        metadata={
            "years_scored": str(sorted(yearly.year.unique().tolist())),
            "matched_to": config.reference,
            "by_year": markdown_table(yearly, floatfmt=".3f", empty="none"),
        },
    )
    yield correlations_are_in_range_for_every_method_and_year(yearly)
    yield random_baseline_scores_near_the_universe_average(yearly)


def _years_of(monthly_returns: pd.DataFrame) -> set[int]:
    return {int(month[:4]) for month in monthly_returns["month"].astype(str)}


@asset(
    group_name="evaluation",
    kinds={"pandas", "parquet"},
    ins={"monthly_returns": AssetIn(partition_mapping=AllPartitionMapping())},
    automation_condition=FOLLOWS_UPSTREAM,
)
def mc_comparisons(
    context: AssetExecutionContext,
    config: MeanCorrelationConfig,
    company_clusters: pd.DataFrame,
    current_company_clusters: pd.DataFrame,
    monthly_returns: pd.DataFrame,
) -> Output[pd.DataFrame]:
    """Method − baseline MC differences over every scored year, with cluster-bootstrap 95% intervals.

    Every method against every baseline on the years both score (clusters resampled within year, years
    paired), from the point-in-time clusterings of all dates (the study cluster_correlations holds year by
    year, run whole here because the bootstrap pairs years). When the texts are newer than every scored
    year (the 2024 vintage) only today's clusters can be scored, and the comparisons are theirs (timing
    "look-ahead reference").
    """
    study_config = StudyConfig(**config.model_dump())
    clusters = company_clusters.drop(columns=["text_id", "company_id"])
    if len(clusters) and years_served_by_clusterings(monthly_returns, clusters.as_of):
        study, timing = mean_correlation_study(monthly_returns, clusters, study_config), POINT_IN_TIME
    else:
        context.log.warning("every text is newer than every year of returns: only the look-ahead reference can be scored")
        today = current_company_clusters.drop(columns=["as_of", "text_id", "company_id"])
        study, timing = mean_correlation_study(monthly_returns, today, study_config), LOOK_AHEAD
    comparisons, yearly = study.comparisons.assign(timing=timing), study.yearly
    overall = (
        yearly.groupby(["method", "selection"])
        .agg(**{m: (m, "mean") for m in (*MEASURES, "coverage", "n_clusters")}, n_years=("year", "nunique"))
        .reset_index()
        .sort_values("mc_matched", ascending=False)
    )
    sae = comparisons.method.str.startswith("sae")
    return Output(
        comparisons,
        metadata={
            "timing": timing,
            "interval": "95% percentile bootstrap; clusters resampled within each year, years paired",
            "n_boot": config.n_boot,
            "years_without_enough_months": str(study.unscored_years),
            "mean_over_years": markdown_table(overall, floatfmt=".3f"),
            "theta_choices": markdown_table(study.theta_choices, floatfmt=".3f"),
            "mc_by_year_plot": _mc_plot(yearly),
            "sae_vs_baselines": markdown_table(_interval_table(comparisons[sae]), floatfmt="g"),
            "all": markdown_table(_interval_table(comparisons), floatfmt="g"),
        },
    )


def _interval_table(comparisons: pd.DataFrame) -> pd.DataFrame:
    """(method, baseline) rows, one "diff [ci_low, ci_high]" column per measure."""
    estimates = zip(comparisons["diff"], comparisons.ci_low, comparisons.ci_high)
    cells = comparisons.assign(cell=[f"{d:+.3f} [{low:+.3f}, {high:+.3f}]" for d, low, high in estimates])
    table = cells.pivot_table(
        index=["method", "baseline", "n_years"], columns="measure", values="cell", aggfunc="first"
    )
    return table.reindex(columns=[m for m in MEASURES if m in table.columns]).reset_index()


def _mc_plot(table: pd.DataFrame) -> MetadataValue:
    figure, axes = plt.subplots(1, 3, figsize=(14, 4), sharey=True)
    for method, rows in table.groupby("method"):
        style = "--" if "(" in method else "-"  # θ variants dashed next to the clusterings they come from
        for axis, measure in zip(axes, MEASURES):
            axis.plot(rows.year, rows[measure], style, marker="o", markersize=3, label=method)
    for axis, title in zip(axes, ["MC per cluster", "MC per pair", "MC at matched sizes"]):
        axis.set_title(title)
        axis.set_xlabel("year")
    axes[-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return figure_markdown(figure)


def correlations_are_in_range_for_every_method_and_year(cluster_correlations: pd.DataFrame) -> AssetCheckResult:
    """MC values lie in [−1, 1], coverage in [0, 1]; within each timing, fixed clusterings score every year it
    scores and rolling θ at most those."""
    values = cluster_correlations[list(MEASURES)].to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    complete, years_per_method = True, {}
    for timing, rows in cluster_correlations.groupby("timing"):
        by_method = rows.groupby("method")
        years, selection = by_method.year.nunique(), by_method.selection.first()
        all_years = rows.year.nunique()
        complete &= bool((years[selection == FIXED] == all_years).all() and (years[selection == ROLLING] <= all_years).all())
        years_per_method[timing] = {m: int(n) for m, n in years.items()}
    return AssetCheckResult(
        check_name="correlations_are_in_range_for_every_method_and_year",
        passed=bool(
            ((finite >= -1) & (finite <= 1)).all()
            and cluster_correlations.coverage.dropna().between(0, 1).all()
            and complete
        ),
        metadata={"years_per_method": MetadataValue.json(years_per_method)},
    )


def random_baseline_scores_near_the_universe_average(cluster_correlations: pd.DataFrame) -> AssetCheckResult:
    """A grouping that knows nothing scores what any pair does: random's MC per pair, averaged over years, is
    within 4 standard errors of the all-pairs mean.

    Standard error of year y: universe_sd_y / sqrt(n_pairs_y), as if random's pairs were independent (they
    share members, so the true error is somewhat larger: hence 4, not 2).
    """
    check = "random_baseline_scores_near_the_universe_average"
    if cluster_correlations.empty:
        return AssetCheckResult(check_name=check, passed=True, metadata={"reason": "no year scored in this run"})
    scored = cluster_correlations[cluster_correlations.timing == cluster_correlations.timing.iloc[0]]
    random = scored[(scored.method == "random") & (scored.n_pairs > 0)]
    if random.empty:
        return AssetCheckResult(check_name=check, passed=False, metadata={"reason": "no scored `random` rows"})
    gap = float((random.mc_pair - random.universe_mc).mean())
    standard_error = float(np.sqrt((random.universe_sd**2 / random.n_pairs).sum()) / len(random))
    return AssetCheckResult(
        check_name=check,
        passed=bool(abs(gap) <= 4 * standard_error),
        metadata={
            "random_mc_pair": float(random.mc_pair.mean()),
            "universe_mc": float(random.universe_mc.mean()),
            "gap": gap,
            "standard_error": standard_error,
        },
    )


@asset_check(asset="mc_comparisons")
def confidence_intervals_contain_their_point_estimates(mc_comparisons: pd.DataFrame) -> AssetCheckResult:
    """Every scored comparison has ci_low <= diff <= ci_high (percentile intervals of resampled clusters)."""
    scored = mc_comparisons.dropna(subset=["diff", "ci_low", "ci_high"])
    outside = scored[(scored.ci_low > scored["diff"]) | (scored["diff"] > scored.ci_high)]
    return AssetCheckResult(
        passed=bool(len(scored) and outside.empty),
        metadata={
            "comparisons": len(scored),
            "outside": markdown_table(outside.head(20), floatfmt=".3f", empty="none"),
        },
    )
