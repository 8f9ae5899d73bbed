"""Descriptions and names are untrusted text: in the Dagster UI, a company whose description holds HTML, script
or markdown links shows that text, and nothing in the page is made of it (Chromium through Playwright).

A universe of hostile companies (PEERLENS_UNIVERSE) has its sources materialized; `dagster dev` serves it on
127.0.0.1, and the preview in company_descriptions' metadata (names and the start of each description) is
opened as a person would.
"""

from __future__ import annotations

import pandas as pd
import pytest
from dagster import DagsterInstance, materialize

from assets.sources import company_descriptions, industry_codes
from definitions import resources_from_environment
from resources import ArtifactStorage, TableIOManager, UniverseResource
from tests.ui.browser import SCREENSHOTS, dagster_dev, playwright, visit

pytestmark = pytest.mark.e2e

PAYLOADS = {
    "script": "<script>window.__injected = 'script'</script>",
    "image": "<img src=x onerror=\"window.__injected = 'image'\">",
    "link": "[open](javascript:window.__injected='link')",
    "html_link": "<a href=\"https://phish.example\">sign in</a>",
    "autolink": "https://phish.example/login",
    "emphasis": "**loud** and `code`",
}
"""What a hostile source could put in a name or a description: each must be shown as its own text."""


@pytest.fixture(scope="module")
def webserver(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    universe, storage, home = folder / "universe", folder / "peerlens", folder / "dagster_home"
    for path in (universe, home):
        path.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    companies = [{"id": kind, "ticker": kind[:4].upper(), "name": f"Acme {payload}",
                  "description": f"Makes anvils. {payload}", "known_by": "2021-03-15"} for kind, payload in PAYLOADS.items()]
    pd.DataFrame(companies).to_csv(universe / "companies.csv", index=False)
    resources = {**resources_from_environment(), "company_data": UniverseResource(path=str(universe)),
                 "io_manager": TableIOManager(root=str(storage)), "artifacts": ArtifactStorage(root=str(storage))}
    with DagsterInstance.from_config(str(home)) as instance:
        assert materialize([company_descriptions, industry_codes], instance=instance, resources=resources).success
    with dagster_dev(home, storage, folder, {"PEERLENS_UNIVERSE": str(universe)}) as url:
        yield url


def test_html_script_and_links_in_descriptions_and_names_are_shown_as_text(page):
    alerts = []
    page.on("dialog", lambda dialog: (alerts.append(dialog.message), dialog.dismiss()))
    visit(page, "/assets/company_descriptions")
    row = page.get_by_role("row").filter(has=page.get_by_text("preview", exact=True))
    row.get_by_text("Show Markdown").click()
    shown = page.get_by_role("dialog")
    playwright.expect(shown.locator("table")).to_be_visible()
    for payload in PAYLOADS.values():
        playwright.expect(shown).to_contain_text(f"Acme {payload}")  # the name, whole, as text
        playwright.expect(shown).to_contain_text(f"Makes anvils. {payload}")
    for element in ("script", "img", "a", "strong", "em"):
        made = shown.locator(f"table {element}").evaluate_all("found => found.map(e => e.outerHTML)")
        assert not made, f"elements were made of the text: {made}"
    # A bare URL would become a link by itself: it is shown as code instead, and nothing else is.
    assert set(shown.locator("table code").all_inner_texts()) == {PAYLOADS["autolink"], 'https://phish.example">sign'}
    assert page.evaluate("() => window.__injected") is None and not alerts
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shown.screenshot(path=str(SCREENSHOTS / "untrusted_text_preview.png"))
