"""Materialize the whole graph in three runs, as `make demo` and the end-to-end test do.

The UI does the same with "Materialize all" (the monthly partitions become one single-run
backfill); from Python we order the runs ourselves: sources, then every month of returns in one
run over the partition range, then everything downstream.
"""

from dagster import AssetKey, AssetSelection, DagsterInstance, Definitions, materialize
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.loader import LoadingContext

PARTITION_RANGE_START = "dagster/asset_partition_range_start"
PARTITION_RANGE_END = "dagster/asset_partition_range_end"


def materialize_graph(
    defs: Definitions,
    instance: DagsterInstance,
    run_config: dict | None = None,
    resources: dict | None = None,
    log=print,
    only_stale: bool = False,
) -> list:
    """Materialize every asset (and run every check) of `defs`; returns the run results.

    `run_config` is one config for the whole graph ({"ops": {asset_name: {"config": ...}}}); each run
    receives the part for its own assets. `resources` replace those of `defs` by key. With `only_stale`
    the sources and returns are reread (cheap, and how a changed input is noticed: their data versions
    hash their content) and of the rest only what is missing or stale is run, with what lies downstream
    of it: a second run over unchanged inputs and code recomputes nothing heavy.
    """
    graph = defs.resolve_asset_graph()
    assets = list(defs.assets) + list(defs.asset_checks or [])
    resources = {**(defs.resources or {}), **(resources or {})}
    months = graph.get(AssetKey("monthly_returns")).partitions_def.get_partition_keys()
    ops_config = (run_config or {}).get("ops", {})

    def run(selection: AssetSelection, tags: dict | None = None):
        keys = selection.resolve(graph)
        config = {"ops": {k.path[-1]: v for k, v in ((AssetKey(n), c) for n, c in ops_config.items()) if k in keys}}
        log(f"materializing {sorted(k.to_user_string() for k in keys)}")
        return materialize(
            assets, selection=selection, instance=instance, resources=resources, run_config=config, tags=tags
        )

    upstream = AssetSelection.assets("daily_prices", "company_descriptions", "industry_codes", "index_membership")
    returns = AssetSelection.assets("monthly_returns")
    rest = AssetSelection.all() - upstream - returns
    results = [
        run(upstream),
        run(returns, tags={PARTITION_RANGE_START: months[0], PARTITION_RANGE_END: months[-1]}),
    ]
    if only_stale:
        outdated = stale_or_missing(instance, graph, rest.resolve(graph))
        if not outdated:
            log("nothing downstream of the sources is missing or stale: nothing to recompute")
            return results
        rest = (AssetSelection.assets(*outdated).downstream() & rest)
    return [*results, run(rest)]


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


def stale_or_missing(instance: DagsterInstance, graph, keys) -> list[AssetKey]:
    """The keys Dagster reports as never materialized or stale (code version or an input's data version changed)."""
    resolver = CachingStaleStatusResolver(instance, graph, _InstanceLoadingContext(instance))
    return sorted(key for key in keys if resolver.get_status(key) in (StaleStatus.STALE, StaleStatus.MISSING))
