"""The whole Definitions, loaded and asserted in one place: an accidental rename or lost edge fails here."""

from dagster import AssetKey

from definitions import defs

LINEAGE = {
    "company_descriptions": set(),
    "industry_codes": {"company_descriptions"},
    "daily_prices": set(),
    "index_membership": set(),
    "monthly_returns": {"daily_prices"},
    "daily_texts": {"company_descriptions"},
    "llm_activations": {"daily_texts"},
    "activation_corpus": {"llm_activations", "company_descriptions"},
    "massive_activations": {"activation_corpus"},
    "layer_distances": {"activation_corpus", "massive_activations"},
    "layer_groups": {"layer_distances"},
    "group_saes": {"activation_corpus", "massive_activations", "layer_groups"},
    # Per day of texts: its own activations, with the SAE release (whose massive-token rule judges them).
    "company_features": {"daily_texts", "llm_activations", "group_saes"},
    "latent_top_tokens": {"daily_texts", "llm_activations", "group_saes"},
    "text_embeddings": {"daily_texts"},
    "company_clusters": {
        "company_features", "text_embeddings", "company_descriptions", "industry_codes", "index_membership",
        "daily_prices",
    },
    "current_company_clusters": {
        "company_features", "text_embeddings", "company_descriptions", "industry_codes", "index_membership",
        "daily_prices",
    },
    "cluster_correlations": {"company_clusters", "current_company_clusters", "monthly_returns"},
    "backtest_daily": {"company_clusters", "daily_prices"},
    "backtest_pairs": {"company_clusters", "daily_prices"},
    "backtest_windows": {"company_clusters", "daily_prices"},
    "pairs_backtest": {"backtest_daily", "backtest_pairs", "backtest_windows", "current_company_clusters", "daily_prices"},
    "cluster_explanations": {"company_features", "latent_top_tokens", "current_company_clusters", "activation_corpus"},
    "company_top_latents": {"company_features", "latent_top_tokens", "company_descriptions", "activation_corpus"},
    "latent_descriptions": {"company_features", "latent_top_tokens", "company_descriptions", "activation_corpus"},
    "mc_comparisons": {"company_clusters", "current_company_clusters", "monthly_returns"},
    "per_layer_saes": {"activation_corpus", "massive_activations"},
    "transfer_saes": {"activation_corpus", "massive_activations", "per_layer_saes"},
    "sae_comparison": {"activation_corpus", "massive_activations", "group_saes", "per_layer_saes", "transfer_saes"},
    "representation_study": {
        "activation_corpus", "massive_activations", "group_saes", "text_embeddings", "company_descriptions",
        "industry_codes", "index_membership", "daily_prices", "monthly_returns",
    },
}


def test_every_asset_of_the_design_lineage_is_defined_with_its_upstream_edges():
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert keys == set(LINEAGE)
    for name, parents in LINEAGE.items():
        upstream = {key.to_user_string() for key in graph.get(AssetKey(name)).parent_keys}
        assert upstream == parents, name


def test_every_asset_has_at_least_one_check():
    graph = defs.resolve_asset_graph()
    checked = {key.asset_key.to_user_string() for key in graph.asset_check_keys}
    assert checked == set(LINEAGE)


def test_blocking_checks_guard_the_stages_whose_failure_would_poison_what_follows():
    graph = defs.resolve_asset_graph()
    blocking = {
        key.asset_key.to_user_string()
        for key in graph.asset_check_keys
        if graph.get_check_spec(key).blocking
    }
    for name in ["company_descriptions", "daily_prices", "activation_corpus", "layer_groups", "group_saes",
                 "company_features", "company_clusters", "current_company_clusters", "backtest_windows",
                 "backtest_daily"]:
        assert name in blocking, name


def test_monthly_returns_is_partitioned_by_month_over_the_2017_vintage_window():
    partitions = defs.resolve_asset_graph().get(AssetKey("monthly_returns")).partitions_def
    keys = partitions.get_partition_keys()
    assert keys[0] == "2007-02-01" and keys[-1] == "2020-09-01" and len(keys) == 164


def test_clusterings_are_partitioned_by_date_from_the_first_half_year_to_the_last_one_traded():
    partitions = defs.resolve_asset_graph().get(AssetKey("company_clusters")).partitions_def
    keys = partitions.get_partition_keys()
    # Every 1 January and 1 July from the first in the monthly window to the last before its end.
    assert keys[0] == "2007-07-01" and keys[-1] == "2020-07-01" and len(keys) == 27
    assert {key[5:] for key in keys} == {"01-01", "07-01"}


def test_schedule_sensor_and_jobs_are_registered():
    assert defs.resolve_schedule_def("monthly_refresh_schedule").job_name == "monthly_refresh"
    sensor = defs.resolve_sensor_def("new_10k_filings")
    assert sensor.job_name == "filings_refresh"
    refresh = defs.resolve_job_def("filings_refresh")
    selected = {key.to_user_string() for key in refresh.asset_layer.selected_asset_keys}
    assert "company_descriptions" in selected and "cluster_explanations" in selected
    assert "daily_prices" not in selected
    # A filing made today cannot change a clustering dated before it: no dated partition is rerun.
    assert "company_clusters" not in selected and "current_company_clusters" in selected
    assert "backtest_windows" not in selected and "pairs_backtest" in selected  # the windows are dated too
    # The release is reused, not retrained: the grouping it was trained with is not recomputed either.
    assert "group_saes" in selected and "company_features" in selected
    assert "layer_distances" not in selected and "layer_groups" not in selected


def test_what_is_dated_follows_new_partitions_and_new_prices_by_declarative_automation():
    graph = defs.resolve_asset_graph()
    condition = lambda name: graph.get(AssetKey(name)).automation_condition  # noqa: E731
    assert condition("company_clusters") is not None
    for name in ("backtest_daily", "backtest_pairs", "backtest_windows", "cluster_correlations", "mc_comparisons",
                 "pairs_backtest"):
        assert condition(name) is not None, name
    assert condition("group_saes") is None and condition("per_layer_saes") is None  # training is deliberate


def test_definitions_validate_with_every_resource_requirement_met():
    from dagster import Definitions

    Definitions.validate_loadable(defs)


def test_the_edgar_user_agent_is_named_in_what_the_ui_shows_never_copied(monkeypatch):
    """The UI shows each resource's configured values (the repository snapshot): the EDGAR user agent, a name and
    an e-mail address, appears there as its environment variable only."""
    from dagster import Definitions
    from dagster._core.remote_representation.external_data import RepositorySnap
    from dagster._serdes import serialize_value

    import definitions

    monkeypatch.setenv(definitions.EDGAR_USER_AGENT_ENV, "Jane Roe jane.roe@example.com")
    shown = Definitions(
        assets=defs.assets, asset_checks=defs.asset_checks, jobs=defs.jobs, schedules=defs.schedules,
        sensors=defs.sensors, resources=definitions.resources_from_environment(),
    )
    snapshot = serialize_value(RepositorySnap.from_def(shown.get_repository_def()))
    assert "jane.roe@example.com" not in snapshot and definitions.EDGAR_USER_AGENT_ENV in snapshot
