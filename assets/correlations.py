"""Mean correlation: do a method's clusters move together — three ways, θ out of sample, with intervals."""

import numpy as np
import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetExecutionContext,
    AssetOut,
    Config,
    MetadataValue,
    Output,
    asset_check,
    multi_asset,
)
from pydantic import Field

from assets.metadata import figure_markdown, plt
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


@multi_asset(
    group_name="evaluation",
    outs={
        "cluster_correlations": AssetOut(
            kinds={"pandas", "parquet"}, is_required=False, description="MC three ways per method and year."
        ),
        "mc_comparisons": AssetOut(
            kinds={"pandas", "parquet"},
            is_required=False,
            description="Method − baseline MC differences with bootstrap 95% intervals.",
        ),
    },
    # A job may select either table alone (the monthly refresh names cluster_correlations); both come from
    # one study, so the unselected one is simply not written.
    can_subset=True,
)
def mean_correlations(
    context: AssetExecutionContext,
    config: MeanCorrelationConfig,
    company_clusters: pd.DataFrame,
    current_company_clusters: pd.DataFrame,
    monthly_returns: pd.DataFrame,
):
    """Per method and year: MC per cluster (the paper's), per pair, at the reference's cluster sizes, coverage.

    The headline rows are point in time (timing "point in time"): year Y is scored with the clusters dated
    on or before 1 January of Y (company_clusters' partitions, all of them), made from texts known before
    then, on that date's universe. The same years scored with today's clusters (current_company_clusters)
    follow as "look-ahead reference" rows: what a backtest that ignores time would have reported. When the texts are newer than every
    scored year (the 2024 vintage) only the reference exists, and the comparisons are its own.
    Threshold methods also get "(rolling θ)" rows (θ chosen on earlier years only) and "(in-sample θ)"
    rows (θ fitted on all years: a reference). Comparisons: every method against every baseline on the
    years both score, with cluster-bootstrap intervals.
    """
    study_config = StudyConfig(**config.model_dump())
    clusters = company_clusters.drop(columns=["text_id", "company_id"])
    latest = current_company_clusters.drop(columns=["as_of", "text_id", "company_id"])
    if len(clusters) and years_served_by_clusterings(monthly_returns, clusters.as_of):
        headline = mean_correlation_study(monthly_returns, clusters, study_config)
        years = sorted(headline.yearly.year.unique())
        reference = mean_correlation_study(monthly_returns, latest, study_config, years=years)
        yearly = pd.concat(
            [headline.yearly.assign(timing=POINT_IN_TIME), reference.yearly.assign(timing=LOOK_AHEAD)],
            ignore_index=True,
        )
        comparisons = headline.comparisons.assign(timing=POINT_IN_TIME)
    else:
        context.log.warning(
            "every text is newer than every year of returns: only the look-ahead reference can be scored"
        )
        headline = reference = mean_correlation_study(monthly_returns, latest, study_config)
        yearly = reference.yearly.assign(timing=LOOK_AHEAD)
        comparisons = reference.comparisons.assign(timing=LOOK_AHEAD)
    overall = (
        yearly.groupby(["timing", "method", "selection"])
        .agg(**{m: (m, "mean") for m in (*MEASURES, "coverage", "n_clusters")}, n_years=("year", "nunique"))
        .reset_index()
        .sort_values(["timing", "mc_matched"], ascending=[False, False])
    )
    selected = context.selected_output_names
    if "cluster_correlations" in selected:
        yield Output(
            yearly,
            output_name="cluster_correlations",
            metadata={
                "years": int(yearly.year.nunique()),
                "point_in_time_years": str(sorted(yearly.year[yearly.timing == POINT_IN_TIME].unique().tolist())),
                "years_without_enough_months": str(headline.unscored_years),
                "matched_to": config.reference,
                "mean_over_years": MetadataValue.md(overall.to_markdown(index=False, floatfmt=".3f")),
                "by_year": MetadataValue.md(yearly.to_markdown(index=False, floatfmt=".3f")),
                "theta_choices": MetadataValue.md(headline.theta_choices.to_markdown(index=False, floatfmt=".3f")),
                "mc_by_year_plot": _mc_plot(yearly[yearly.timing == yearly.timing.iloc[0]]),
            },
        )
    if "mc_comparisons" in selected:
        sae = comparisons.method.str.startswith("sae")
        yield Output(
            comparisons,
            output_name="mc_comparisons",
            metadata={
                "timing": str(comparisons.timing.iloc[0]) if len(comparisons) else "none",
                "interval": "95% percentile bootstrap; clusters resampled within each year, years paired",
                "n_boot": config.n_boot,
                "sae_vs_baselines": MetadataValue.md(_interval_table(comparisons[sae]).to_markdown(index=False)),
                "all": MetadataValue.md(_interval_table(comparisons).to_markdown(index=False)),
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


@asset_check(asset="cluster_correlations")
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
        passed=bool(
            ((finite >= -1) & (finite <= 1)).all()
            and cluster_correlations.coverage.dropna().between(0, 1).all()
            and complete
        ),
        metadata={"years_per_method": MetadataValue.json(years_per_method)},
    )


@asset_check(asset="cluster_correlations")
def random_baseline_scores_near_the_universe_average(cluster_correlations: pd.DataFrame) -> AssetCheckResult:
    """A grouping that knows nothing scores what any pair does: random's MC per pair, averaged over years, is
    within 4 standard errors of the all-pairs mean.

    Standard error of year y: universe_sd_y / sqrt(n_pairs_y), as if random's pairs were independent (they
    share members, so the true error is somewhat larger: hence 4, not 2).
    """
    scored = cluster_correlations[cluster_correlations.timing == cluster_correlations.timing.iloc[0]]
    random = scored[(scored.method == "random") & (scored.n_pairs > 0)]
    if random.empty:
        return AssetCheckResult(passed=False, metadata={"reason": "no scored `random` rows"})
    gap = float((random.mc_pair - random.universe_mc).mean())
    standard_error = float(np.sqrt((random.universe_sd**2 / random.n_pairs).sum()) / len(random))
    return AssetCheckResult(
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
            "outside": MetadataValue.md(
                outside.head(20).to_markdown(index=False, floatfmt=".3f") if len(outside) else "none"
            ),
        },
    )
