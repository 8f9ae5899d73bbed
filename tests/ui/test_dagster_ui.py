"""PeerLens in the Dagster UI, as a person sees it: Debian's Chromium, driven by Playwright, on a webserver that
serves the session's materialization of the end-to-end slice (tests/conftest.py `materialized_slice`).

`dagster dev` is started on 127.0.0.1 with the slice's Dagster instance and storage, and stopped after. Every
test leaves a full-page screenshot in test-artifacts/ui/<test name>.png (kept by CI as the test's artifact).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterEventType, DagsterInstance, DagsterRunStatus

from tests.ui.browser import PLOT, SCREENSHOTS, dagster_dev, playwright, visit

PLOTTED = {"massive_activations", "layer_distances", "layer_groups", "company_clusters", "current_company_clusters",
           "mc_comparisons", "pairs_backtest", "sae_comparison", "representation_study"}
"""The assets whose materialization carries plots (assets.metadata.figure_markdown): one or more per stage."""

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def webserver(materialized_slice, tmp_path_factory):
    """The base URL of the UI over the materialized slice."""
    with dagster_dev(materialized_slice.dagster_home, materialized_slice.storage, tmp_path_factory.mktemp("webserver")) as url:
        yield url


def _events(dagster_home: Path, event_type: DagsterEventType) -> list:
    """Every event of `event_type` in the instance's runs, oldest first: what the UI has to show."""
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        runs = reversed(instance.get_runs())
        return [entry.dagster_event for run in runs for entry in instance.all_logs(run.run_id, of_type=event_type)]


def _plots_by_asset(dagster_home: Path) -> dict[str, list[str]]:
    """Asset → the metadata keys of the inline PNG plots its latest materialization carries."""
    plots = {}
    for event in _events(dagster_home, DagsterEventType.ASSET_MATERIALIZATION):
        materialization = event.event_specific_data.materialization
        keys = [key for key, value in materialization.metadata.items() if PLOT in str(getattr(value, "value", ""))]
        if keys:
            plots[materialization.asset_key.to_user_string()] = keys
    return plots


def _checks(dagster_home: Path) -> dict[tuple[str, str], bool]:
    """(asset, check) → passed, as each check was last evaluated."""
    return {
        (event.event_specific_data.asset_key.to_user_string(), event.event_specific_data.check_name):
            event.event_specific_data.passed
        for event in _events(dagster_home, DagsterEventType.ASSET_CHECK_EVALUATION)
    }


def test_the_lineage_shows_every_group_and_the_catalog_every_asset(page, materialized_slice):
    from definitions import defs

    graph = defs.resolve_asset_graph()
    groups = {graph.get(key).group_name for key in graph.get_all_asset_keys()}
    visit(page, "/asset-groups")
    for group in sorted(groups):
        playwright.expect(page.get_by_text(group, exact=True).first).to_be_visible()
    visit(page, "/assets")
    for key in sorted(graph.get_all_asset_keys()):
        playwright.expect(page.get_by_text(key.to_user_string(), exact=True).first).to_be_visible()


def test_each_stage_s_plots_load_as_images_on_its_asset_page(page, materialized_slice):
    plots = _plots_by_asset(materialized_slice.dagster_home)
    assert set(plots) == PLOTTED, plots
    for asset, keys in sorted(plots.items()):
        visit(page, f"/assets/{asset}")
        for key in keys:
            # A markdown value is a "Show Markdown" link in its metadata row; the dialog renders it.
            row = page.get_by_role("row").filter(has=page.get_by_text(key, exact=True))
            row.get_by_text("Show Markdown").click()
            image = page.get_by_role("dialog").locator(f'img[src^="{PLOT}"]')
            playwright.expect(image).to_be_visible()
            assert image.evaluate("i => i.complete && i.naturalWidth > 0"), f"{asset} {key}: the plot did not load"
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.wait_for_timeout(500)  # the dialog fades in: the screenshot should show it, not the fade
            page.get_by_role("dialog").screenshot(path=str(SCREENSHOTS / f"plot_{asset}_{key}.png"))
            page.keyboard.press("Escape")
            playwright.expect(page.get_by_role("dialog")).to_have_count(0)


def test_check_results_show_which_passed_and_which_failed(page, materialized_slice):
    checks = _checks(materialized_slice.dagster_home)
    passed = [key for key, ok in sorted(checks.items()) if ok]
    failed = [key for key, ok in sorted(checks.items()) if not ok]
    assert passed, checks
    for (asset, check), verdict in [(passed[0], "Passed"), *[(key, "Failed") for key in failed[:1]]]:
        visit(page, f"/assets/{asset}?view=checks")
        page.locator(f'[title="{check}"]').first.click()  # the list shows the name truncated, whole in its title
        detail = page.locator("body")
        playwright.expect(detail).to_contain_text(re.compile(rf"{check}\s*Execute"))  # the check now on the right
        playwright.expect(detail).to_contain_text(re.compile(rf"Evaluation result\s*{verdict}"))


def test_the_schedule_and_the_sensor_are_listed(page):
    visit(page, "/automation")
    for name in ("monthly_refresh_schedule", "new_10k_filings"):
        playwright.expect(page.get_by_text(name, exact=True).first).to_be_visible()


def test_a_materialization_launched_from_the_ui_succeeds_and_its_run_is_listed(page, materialized_slice):
    key = AssetKey("industry_codes")  # a source: cheap to run again, and it changes nothing downstream
    with DagsterInstance.from_config(str(materialized_slice.dagster_home)) as instance:
        before = {run.run_id for run in instance.get_runs()}
        visit(page, "/assets/industry_codes")
        page.locator("button", has_text=re.compile(r"^Materialize$")).first.click()
        run = _launched_run(instance, key, before, deadline=time.monotonic() + 300)
    assert run.status == DagsterRunStatus.SUCCESS, run.status
    visit(page, "/runs")
    playwright.expect(page.get_by_text(run.run_id[:8]).first).to_be_visible()


def _launched_run(instance, key: AssetKey, before: set[str], deadline: float):
    """The one run of `key` that is not in `before`, once it has finished (AssertionError past `deadline`)."""
    while not (launched := [r for r in instance.get_runs() if r.run_id not in before and key in (r.asset_selection or ())]):
        assert time.monotonic() < deadline, "no run was launched"
        time.sleep(1)
    (run,) = launched
    while not run.is_finished:
        assert time.monotonic() < deadline, f"run {run.run_id} is still {run.status}"
        time.sleep(2)
        run = instance.get_run_by_id(run.run_id)
    return run
