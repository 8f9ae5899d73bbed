"""materialize_graph(only_stale=True): a second run over unchanged sources and code recomputes nothing
downstream; a changed source reruns exactly what depends on it."""

from __future__ import annotations

import pandas as pd
from dagster import (
    BackfillPolicy,
    DagsterInstance,
    Definitions,
    MonthlyPartitionsDefinition,
    Output,
    asset,
    map_asset_specs,
)

from assets.graph_run import materialize_graph
from assets.metadata import frame_version
from resources import TableIOManager

MONTHS = MonthlyPartitionsDefinition(start_date="2020-01-01", end_date="2020-03-01")
SOURCE = {"texts": pd.DataFrame({"text_id": ["a"], "description": ["x"]})}
RUNS: list[str] = []


def source(name: str, frame=lambda: pd.DataFrame({"value": [1]})):
    @asset(name=name)
    def _source() -> Output[pd.DataFrame]:
        value = frame()
        return Output(value, data_version=frame_version(value))

    return _source


@asset(partitions_def=MONTHS, backfill_policy=BackfillPolicy.single_run())
def monthly_returns(context, daily_prices: pd.DataFrame):
    return {key: daily_prices for key in context.partition_keys}


@asset
def features(company_descriptions: pd.DataFrame) -> pd.DataFrame:
    RUNS.append("features")
    return company_descriptions


@asset
def report(features: pd.DataFrame, monthly_returns: pd.DataFrame, industry_codes: pd.DataFrame) -> pd.DataFrame:
    RUNS.append("report")
    return features


def definitions() -> Definitions:
    assets = [
        source("company_descriptions", lambda: SOURCE["texts"]),
        source("daily_prices"),
        source("industry_codes"),
        source("index_membership"),
        monthly_returns,
        features,
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
        assert RUNS == ["features", "report"]

        RUNS.clear()
        results = materialize_graph(defs, instance, resources=resources, log=lambda _: None, only_stale=True)
        assert RUNS == [] and len(results) == 2  # sources reread, nothing downstream run

        RUNS.clear()
        SOURCE["texts"] = pd.DataFrame({"text_id": ["a", "b"], "description": ["x", "a new filing"]})
        materialize_graph(defs, instance, resources=resources, log=lambda _: None, only_stale=True)
        assert RUNS == ["features", "report"]
