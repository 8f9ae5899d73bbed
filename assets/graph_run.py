"""Materialize the whole graph run by run, as `make demo` and the end-to-end test do.

The UI does the same with "Materialize all" (each partitioned asset becomes a backfill); from Python we
order the runs ourselves: sources, every month of returns in one run over the partition range, each
day of texts, every day's activations in one run, the corpus and the SAE release, every day's company
features in one run, then what the dated assets need, every clustering date in one run, every scored
year in one run, then the reports.
"""

from collections.abc import Callable, Collection

from dagster import AssetKey, AssetSelection, DagsterInstance, Definitions, build_input_context, execute_job, materialize
from dagster._core.definitions.assets.job.asset_job import IMPLICIT_ASSET_JOB_NAME
from dagster._core.definitions.reconstruct import ReconstructableRepository
from dagster._core.definitions.data_version import (
    CachingStaleStatusResolver,
    StaleStatus,
    extract_data_version_from_entry,
)
from dagster._core.loader import LoadingContext

from assets.metadata import frame_version
from assets.partitions import TEXT_DATES
from peerlens.sources.texts import text_days, texts_known_on

PARTITION_RANGE_START = "dagster/asset_partition_range_start"
PARTITION_RANGE_END = "dagster/asset_partition_range_end"
PARTITION_KEY = "dagster/partition"

RETURN_EVALUATIONS = AssetSelection.assets("monthly_returns", "backtest_daily", "backtest_pairs", "backtest_windows")
"""What scores clusters on returns; with what lies downstream of it, left out of a graph run when the source
has no prices (the clusters, peers and explanations are still made)."""

RunLauncher = Callable[[Collection[AssetKey], dict, dict | None], object]
"""Runs one selection of assets with its run config and tags, returns the run's result (`.success`, events)."""


def in_process_runs(defs: Definitions, instance: DagsterInstance, resources: dict) -> RunLauncher:
    """Each run executed in this process, with `resources` (what `make demo` and the end-to-end test use)."""
    assets = list(defs.assets) + list(defs.asset_checks or [])

    def launch(keys, run_config, tags):
        return materialize(
            assets, selection=AssetSelection.assets(*keys), instance=instance, resources=resources,
            run_config=run_config, tags=tags,
        )

    return launch


def executor_runs(module: str, instance: DagsterInstance, working_directory: str | None = None) -> RunLauncher:
    """Each run executed on the executor of the Definitions `defs` in `module` (e.g. `celery_definitions`): the
    run's steps go wherever that executor sends them (celery workers), which rebuild the job from the same module
    and resources from their own environment. `instance` must be persistent, one every worker reaches."""
    repository = ReconstructableRepository.for_module(module, "defs", working_directory=working_directory)
    job = repository.get_reconstructable_job(IMPLICIT_ASSET_JOB_NAME)

    def launch(keys, run_config, tags):
        return execute_job(job, instance, run_config=run_config, tags=tags, asset_selection=sorted(keys))

    return launch


def materialize_graph(
    defs: Definitions,
    instance: DagsterInstance,
    run_config: dict | None = None,
    resources: dict | None = None,
    log=print,
    only_stale: bool = False,
    launcher: RunLauncher | None = None,
) -> list:
    """Materialize every asset (and run every check) of `defs`; returns the run results.

    `run_config` is one config for the whole graph ({"ops": {asset_name: {"config": ...}}, "resources": ...});
    each run receives the part for its own assets, and all of "resources". `resources` replace those of `defs`
    by key. Runs execute in this process unless a `launcher` is given (`executor_runs`: on the celery
    workers, whose resources are their own; "resources" run config reaches them). With `only_stale`
    the sources and returns are reread (cheap, and how a changed input is noticed: their data versions
    hash their content) and of the rest only what is missing or stale is run, with what lies downstream
    of it: a second run over unchanged inputs and code recomputes nothing heavy.
    """
    graph = defs.resolve_asset_graph()
    resources = {**(defs.resources or {}), **(resources or {})}
    launcher = launcher or in_process_runs(defs, instance, resources)
    months = graph.get(AssetKey("monthly_returns")).partitions_def.get_partition_keys()
    ops_config = (run_config or {}).get("ops", {})

    # A multi-asset's config is its op's (trade_windows configures backtest_daily, _pairs and _windows), a
    # graph-backed asset's its graph's (per_layer_saes).
    op_keys = {
        definition.node_def.name: set(definition.keys) for definition in defs.assets if hasattr(definition, "node_def")
    }

    def run(selection: AssetSelection, tags: dict | None = None):
        keys = selection.resolve(graph)
        config = {"ops": {op: c for op, c in ops_config.items() if op_keys.get(op, {AssetKey(op)}) & keys}}
        if "resources" in (run_config or {}):
            config["resources"] = run_config["resources"]
        log(f"materializing {sorted(k.to_user_string() for k in keys)}")
        return launcher(keys, config, tags)

    def run_range(selection: AssetSelection, first: str, last: str):
        return run(selection, tags={PARTITION_RANGE_START: first, PARTITION_RANGE_END: last})

    def run_days(selection: AssetSelection, wanted: list[str]) -> list:
        # One run per stretch of consecutive days (usually one for them all): each model is loaded once per run.
        return [run_range(selection, first, last) for first, last in contiguous_ranges(days, wanted)]

    upstream = AssetSelection.assets("daily_prices", "company_descriptions", "industry_codes", "index_membership")
    returns = AssetSelection.assets("monthly_returns")
    texts_by_day = AssetSelection.assets("daily_texts")
    per_day = [key for key in ("llm_activations", "text_embeddings") if graph.has(AssetKey(key))]
    activations = AssetSelection.assets(*per_day)
    results = [run(upstream)]
    priced = len(_load(resources, "daily_prices")) > 0
    skipped = AssetSelection.assets() if priced else RETURN_EVALUATIONS.downstream()
    if priced:
        results.append(run_range(returns, months[0], months[-1]))
    else:
        log(f"the source has no prices: leaving out {sorted(k.to_user_string() for k in skipped.resolve(graph))}")
    # The days of texts, one run each (a partition's data version hashes its own rows): only days whose
    # texts are new or changed are run, and only they leave their activations stale.
    texts = _load(resources, "company_descriptions")
    held = text_days(texts)
    for day in changed_days(instance, texts) if only_stale else held:
        results.append(run(texts_by_day, tags={PARTITION_KEY: day}))
    upstream_runs = len(results)
    days = TEXT_DATES.get_partition_keys(dynamic_partitions_store=instance)
    to_capture = held
    if only_stale:
        to_capture = outdated_partitions(instance, graph, [AssetKey(key) for key in per_day], held)
    results += run_days(activations, to_capture)

    rest = (AssetSelection.all() - upstream - returns - texts_by_day - activations - skipped).resolve(graph)
    # What is encoded per day (company features) needs the SAE release, built from the corpus of every day:
    # the release first, then the days whose features are missing or stale (all of them after a retrain).
    encoded_by_day = {key for key in rest if graph.get(key).partitions_def == TEXT_DATES}
    release = (AssetSelection.assets(*encoded_by_day).upstream().resolve(graph) & rest) - encoded_by_day
    todo = rest
    if only_stale:
        todo = _outdated_downstream(instance, graph, rest, encoded_by_day, held, texts_changed=len(results) > upstream_runs)
    if release & todo:
        results.append(run(AssetSelection.assets(*(release & todo))))
    if encoded_by_day & todo:
        feature_days = outdated_partitions(instance, graph, encoded_by_day, held) if only_stale else held
        results += run_days(AssetSelection.assets(*encoded_by_day), feature_days)

    for keys, partitions in downstream_stages(graph, rest - release - encoded_by_day):
        if not keys & todo:
            continue
        if partitions is None:
            results.append(run(AssetSelection.assets(*(keys & todo))))
        else:
            # Every partition in one run (the assets' single-run backfill policy): what a date or a year needs
            # is loaded once. A multi-asset's outputs run together.
            results.append(run_range(AssetSelection.assets(*keys), partitions[0], partitions[-1]))
    if len(results) == upstream_runs:
        log("nothing downstream of the sources is missing or stale: nothing to recompute")
    return results


def _load(resources: dict, asset: str):
    return resources["io_manager"].load_input(build_input_context(asset_key=AssetKey(asset)))


def _outdated_downstream(instance, graph, rest: set, encoded_by_day: set, held: list[str], texts_changed: bool) -> set:
    """What of `rest` is missing or stale, with everything downstream of it. Per-day assets are judged on the
    days the texts hold now (a day registered by another universe is not this one's); new or changed days of
    texts outdate the corpus that combines them."""
    outdated = set(stale_or_missing(instance, graph, rest - encoded_by_day))
    outdated |= {key for key in encoded_by_day if outdated_partitions(instance, graph, [key], held)}
    if texts_changed:
        outdated.add(AssetKey("activation_corpus"))
    return AssetSelection.assets(*outdated).downstream().resolve(graph) & rest


def downstream_stages(graph, keys: set[AssetKey]) -> list[tuple[set[AssetKey], list[str] | None]]:
    """`keys` as runs in order: the unpartitioned ones upstream of every time-partitioned group, then each
    group of one partitions definition (with its partition keys), then the unpartitioned rest.

    Raises ValueError when an unpartitioned asset lies between two groups (it could not run in order)."""
    groups: dict = {}
    for key in graph.toposorted_asset_keys:
        if key in keys and graph.get(key).partitions_def is not None:
            groups.setdefault(graph.get(key).partitions_def, set()).add(key)
    partitioned = set().union(*groups.values()) if groups else set()
    after = (AssetSelection.assets(*partitioned).downstream().resolve(graph) & keys) - partitioned
    between = after & AssetSelection.assets(*partitioned).upstream().resolve(graph)
    if between:
        raise ValueError(f"{sorted(k.to_user_string() for k in between)} lie between time-partitioned assets")
    stages = [(keys - partitioned - after, None)]
    stages += [(group, partitions.get_partition_keys()) for partitions, group in groups.items()]
    return [*stages, (after, None)]


def changed_days(instance: DagsterInstance, texts) -> list[str]:
    """The days of `texts` whose daily_texts partition is missing or was made from other rows than it
    would hold now (its recorded data version against a hash of the day's rows)."""
    changed = []
    for day in text_days(texts):
        record = instance.get_latest_data_version_record(AssetKey("daily_texts"), partition_key=day)
        held = extract_data_version_from_entry(record.event_log_entry) if record else None
        if held != frame_version(texts_known_on(texts, day)):
            changed.append(day)
    return changed


def contiguous_ranges(keys: list[str], wanted: list[str]) -> list[tuple[str, str]]:
    """(first, last) of each run of consecutive `keys` that are all in `wanted`, in `keys` order."""
    ranges, start, previous = [], None, None
    chosen = set(wanted)
    for key in keys:
        if key in chosen:
            start = start or key
            previous = key
        elif start:
            ranges.append((start, previous))
            start = None
    if start:
        ranges.append((start, previous))
    return ranges


class _InstanceLoadingContext(LoadingContext):
    """The minimal loading context Dagster's stale-status resolver needs outside a webserver request."""

    def __init__(self, instance: DagsterInstance):
        self._instance, self._loaders = instance, {}

    @property
    def instance(self) -> DagsterInstance:
        return self._instance

    @property
    def loaders(self) -> dict:
        return self._loaders


_OUTDATED = (StaleStatus.STALE, StaleStatus.MISSING)


def stale_or_missing(instance: DagsterInstance, graph, keys) -> list[AssetKey]:
    """The keys Dagster reports as never materialized or stale (code version or an input's data version
    changed); a time-partitioned key when any of its partitions is."""
    resolver = CachingStaleStatusResolver(instance, graph, _InstanceLoadingContext(instance))

    def is_outdated(key: AssetKey) -> bool:
        partitions = graph.get(key).partitions_def
        if partitions is None:
            return resolver.get_status(key) in _OUTDATED
        keys = partitions.get_partition_keys(dynamic_partitions_store=instance)
        return any(resolver.get_status(key, partition) in _OUTDATED for partition in keys)

    return sorted(key for key in keys if is_outdated(key))


def outdated_partitions(instance: DagsterInstance, graph, keys, partitions: list[str]) -> list[str]:
    """The `partitions` (in their order) that some of `keys` never materialized or holds stale."""
    outdated = {partition for key in keys for partition in stale_or_missing_partitions(instance, graph, key, partitions)}
    return [partition for partition in partitions if partition in outdated]


def stale_or_missing_partitions(instance: DagsterInstance, graph, key: AssetKey, partitions: list[str]) -> list[str]:
    """The `partitions` of `key` that were never materialized or are stale."""
    resolver = CachingStaleStatusResolver(instance, graph, _InstanceLoadingContext(instance))
    return [partition for partition in partitions if resolver.get_status(key, partition) in _OUTDATED]
