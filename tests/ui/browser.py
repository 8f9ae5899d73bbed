"""What the UI tests share: `dagster dev` on 127.0.0.1 over a Dagster instance and a storage root, Debian's
Chromium through Playwright, and a page per test that leaves its screenshot in test-artifacts/ui/."""

from __future__ import annotations

import os
import shutil
import sys
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright import sync_api as playwright

from tests.servers import free_port, process_group, wait_until

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-artifacts" / "ui"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PLOT = "data:image/png;base64,"
UI_SECONDS = 60_000
"""Playwright's wait for what a page shows, in ms: the first page waits for the code location to load."""
playwright.expect.set_options(timeout=UI_SECONDS)

needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (scripts/system_packages.sh)")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def dagster_dev(dagster_home: Path, storage: Path, folder: Path, environment: dict | None = None):
    """The base URL of `dagster dev` as `make dev` runs it (the webserver, and the daemon that starts queued runs)
    on 127.0.0.1, over `dagster_home`'s instance and `storage`; its log in `folder`; stopped on exit."""
    port = free_port()
    command = [str(Path(sys.executable).parent / "dagster"), "dev", "-h", "127.0.0.1", "-p", str(port),
               "-w", str(ROOT / "workspace.yaml")]
    environment = {**os.environ, "DAGSTER_HOME": str(dagster_home), "PEERLENS_HOME": str(storage), **(environment or {})}
    # Dagster opens its one-time newsletter dialog a second after a page loads, over whatever a test is
    # clicking, unless the instance records it as seen (dagster._core.nux): record it.
    nux = dagster_home / ".nux"
    nux.mkdir(exist_ok=True)
    (nux / "nux.yaml").write_text("seen: 1\n")
    log = folder / "webserver.log"
    with process_group(command, log, cwd=ROOT, env=environment):
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _answers(f"{url}/server_info"), "dagster dev", timeout=180, log=log)
        yield url


def visit(page, path: str) -> None:
    """Open `path` and wait until the page has settled."""
    page.goto(path, wait_until="networkidle")
