"""The UI tests' browser and pages (tests/ui/browser.py); each test module brings its own `webserver`."""

import pytest

from tests.ui.browser import CHROMIUM, SCREENSHOTS, UI_SECONDS, needs_chromium, playwright


def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.parent.name == "ui":
            item.add_marker(needs_chromium)


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as driver:
        chromium = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, webserver, request):
    context = browser.new_context(viewport={"width": 1600, "height": 3000}, base_url=webserver)
    context.set_default_timeout(UI_SECONDS)
    opened = context.new_page()
    yield opened
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    opened.screenshot(path=str(SCREENSHOTS / f"{request.node.name}.png"), full_page=True)
    context.close()
