"""materialize_graph(only_stale=True): a second run over unchanged sources and code recomputes nothing
downstream; a changed source reruns exactly what depends on it, every clustering date in one run."""

from __future__ import annotations

import pandas as pd
from dagster import (
    BackfillPolicy,
    DagsterInstance,
    Definitions,
    MonthlyPartitionsDefinition,
    Output,
    TimeWindowPartitionsDefinition,
    asset,
    map_asset_specs,
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
def features(activation_corpus: pd.DataFrame) -> pd.DataFrame:
    RUNS.append("features")
    return activation_corpus


@asset(partitions_def=HALF_YEARS, backfill_policy=BackfillPolicy.single_run())
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
            "daily_texts 2017-05-18", "llm_activations 2017-05-18", "activation_corpus", "features", "company_clusters 2019-01-01,2019-07-01", "report"
        ]

        RUNS.clear()
        results = materialize_graph(defs, instance, resources=resources, log=lambda _: None, only_stale=True)
        assert RUNS == [] and len(results) == 2  # sources reread, nothing downstream run

        RUNS.clear()
        SOURCE["texts"] = pd.DataFrame(
            {"text_id": ["a", "b"], "description": ["x", "a new filing"], "known_by": pd.to_datetime(["2017-05-18", "2019-03-01"])}
        )
        materialize_graph(defs, instance, resources=resources, log=lambda _: None, only_stale=True)
        # The new day of texts is captured alone; the day before it is not run again.
        assert RUNS == [
            "daily_texts 2019-03-01", "llm_activations 2019-03-01", "activation_corpus", "features", "company_clusters 2019-01-01,2019-07-01", "report"
        ]


def test_contiguous_ranges_split_the_wanted_keys_where_an_unwanted_one_lies_between():
    keys = ["a", "b", "c", "d", "e"]
    assert contiguous_ranges(keys, ["a", "b", "d"]) == [("a", "b"), ("d", "d")]
    assert contiguous_ranges(keys, keys) == [("a", "e")]
    assert contiguous_ranges(keys, []) == []
