"""materialize_graph(only_stale=True): a second run over unchanged sources and code recomputes nothing
downstream; a changed source reruns exactly what depends on it, every clustering date in one run; a new
day of texts is encoded alone with the release there is, and a new release re-encodes every day."""

from __future__ import annotations

import pandas as pd
from dagster import (
    AllPartitionMapping,
    AssetIn,
    BackfillPolicy,
    DataVersion,
    DagsterInstance,
    Definitions,
    MonthlyPartitionsDefinition,
    Output,
    TimeWindowPartitionsDefinition,
    asset,
    map_asset_specs,
    materialize,
)

from assets.graph_run import contiguous_ranges, materialize_graph
from assets.partitions import TEXT_DATES
from peerlens.sources.texts import text_days, texts_known_on
from assets.metadata import frame_version
from resources import TableIOManager

MONTHS = MonthlyPartitionsDefinition(start_date="2020-01-01", end_date="2020-03-01")
HALF_YEARS = TimeWindowPartitionsDefinition(cron_schedule="0 0 1 1,7 *", start="2019-01-01", end="2020-01-01", fmt="%Y-%m-%d")
SOURCE = {"texts": pd.DataFrame({"text_id": ["a"], "description": ["x"], "known_by": pd.to_datetime(["2017-05-18"])})}
RUNS: list[str] = []
RELEASE = {"version": "r1"}


def source(name: str, frame=lambda: pd.DataFrame({"value": [1]})):
    @asset(name=name)
    def _source() -> Output[pd.DataFrame]:
        value = frame()
        return Output(value, data_version=frame_version(value))

    return _source


@asset(name="company_descriptions")
def company_descriptions(context) -> Output[pd.DataFrame]:
    texts = SOURCE["texts"]
    days = [day for day in text_days(texts) if not context.instance.has_dynamic_partition(TEXT_DATES.name, day)]
    context.instance.add_dynamic_partitions(TEXT_DATES.name, days)
    return Output(texts, data_version=frame_version(texts))


@asset(partitions_def=TEXT_DATES)
def daily_texts(context, company_descriptions: pd.DataFrame):
    RUNS.append("daily_texts " + context.partition_key)
    texts = texts_known_on(company_descriptions, context.partition_key)
    return Output(texts, data_version=frame_version(texts))


@asset(partitions_def=TEXT_DATES, backfill_policy=BackfillPolicy.single_run())
def llm_activations(context, daily_texts: pd.DataFrame):
    RUNS.append("llm_activations " + ",".join(context.partition_keys))
    return {key: {"texts": 1} for key in context.partition_keys} if len(context.partition_keys) > 1 else {"texts": 1}


@asset(deps=[llm_activations])
def activation_corpus(company_descriptions: pd.DataFrame) -> pd.DataFrame:
    RUNS.append("activation_corpus")
    return company_descriptions


@asset(partitions_def=MONTHS, backfill_policy=BackfillPolicy.single_run())
def monthly_returns(context, daily_prices: pd.DataFrame):
    return {key: daily_prices for key in context.partition_keys}


@asset
def group_saes(activation_corpus: pd.DataFrame):
    """As the real one: a release of the recipe is reused (same data version) until it is retrained."""
    RUNS.append("group_saes")
    return Output({"release": RELEASE["version"]}, data_version=DataVersion(RELEASE["version"]))


@asset(partitions_def=TEXT_DATES, backfill_policy=BackfillPolicy.single_run(), deps=[llm_activations])
def features(context, daily_texts: pd.DataFrame, group_saes: dict):
    RUNS.append("features " + ",".join(context.partition_keys))
    return {key: daily_texts for key in context.partition_keys} if len(context.partition_keys) > 1 else daily_texts


@asset(
    partitions_def=HALF_YEARS,
    backfill_policy=BackfillPolicy.single_run(),
    ins={"features": AssetIn(partition_mapping=AllPartitionMapping())},
)
def company_clusters(context, features: pd.DataFrame):
    RUNS.append("company_clusters " + ",".join(context.partition_keys))
    return {key: features for key in context.partition_keys}


@asset
def report(company_clusters: pd.DataFrame, monthly_returns: pd.DataFrame, industry_codes: pd.DataFrame) -> pd.DataFrame:
    RUNS.append("report")
    return company_clusters


def definitions() -> Definitions:
    assets = [
        company_descriptions,
        source("daily_prices"),
        source("industry_codes"),
        source("index_membership"),
        monthly_returns,
        daily_texts,
        llm_activations,
        activation_corpus,
        group_saes,
        features,
        company_clusters,
        report,
    ]
    return Definitions(assets=map_asset_specs(lambda spec: spec.replace_attributes(code_version="1"), assets))


def test_a_second_run_recomputes_only_what_a_changed_source_makes_stale(tmp_path):
    defs = definitions()
    resources = {"io_manager": TableIOManager(root=str(tmp_path))}
    with DagsterInstance.ephemeral() as instance:
        RUNS.clear()
        assert all(r.success for r in materialize_graph(defs, instance, resources=resources, log=lambda _: None,
                                                        only_stale=True))
        assert RUNS == [
            "daily_texts 2017-05-18", "llm_activations 2017-05-18", "activation_corpus", "group_saes",
            "features 2017-05-18", "company_clusters 2019-01-01,2019-07-01", "report",
        ]

        RUNS.clear()
        results = materialize_graph(defs, instance, resources=resources, log=lambda _: None, only_stale=True)
        assert RUNS == [] and len(results) == 2  # sources reread, nothing downstream run

        RUNS.clear()
        SOURCE["texts"] = pd.DataFrame(
            {"text_id": ["a", "b"], "description": ["x", "a new filing"], "known_by": pd.to_datetime(["2017-05-18", "2019-03-01"])}
        )
        materialize_graph(defs, instance, resources=resources, log=lambda _: None, only_stale=True)
        # The new day of texts is captured and encoded alone; the day before it is not run again.
        assert RUNS == [
            "daily_texts 2019-03-01", "llm_activations 2019-03-01", "activation_corpus", "group_saes",
            "features 2019-03-01", "company_clusters 2019-01-01,2019-07-01", "report",
        ]

        RELEASE["version"] = "r2"  # a deliberate retrain (a launch of group_saes alone)
        assets = list(defs.assets)
        assert materialize(assets, selection=[group_saes.key], instance=instance, resources=resources).success
        RUNS.clear()
        materialize_graph(defs, instance, resources=resources, log=lambda _: None, only_stale=True)
        # Every day was encoded with the old release: all are encoded again, in one run.
        assert RUNS == ["features 2017-05-18,2019-03-01", "company_clusters 2019-01-01,2019-07-01", "report"]


def test_contiguous_ranges_split_the_wanted_keys_where_an_unwanted_one_lies_between():
    keys = ["a", "b", "c", "d", "e"]
    assert contiguous_ranges(keys, ["a", "b", "d"]) == [("a", "b"), ("d", "d")]
    assert contiguous_ranges(keys, keys) == [("a", "e")]
    assert contiguous_ranges(keys, []) == []
