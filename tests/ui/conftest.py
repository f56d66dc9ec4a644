"""One Chromium, one logged-in page, for every browser test (on the shared running stack)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from browser import CHROMIUM_ARGS, INSTALL_HINT, AirflowUI, find_chromium
from stack_fixtures import ADMIN_PASSWORD, DemoStack

from mlpipeline.local.airflow_api import AirflowApi


@pytest.fixture(scope="session")
def chromium_path() -> str:
    found = find_chromium()
    if not found:
        # Never a silent skip: CI installs Chromium through `make setup`, so a missing one is a bug.
        pytest.fail(INSTALL_HINT)
    return found


@pytest.fixture(scope="session")
def screenshots_dir(tmp_path_factory) -> Path:
    """``UI_SCREENSHOTS`` (``make screenshots`` sets ``docs/screenshots``), else a temp folder."""
    wanted = os.environ.get("UI_SCREENSHOTS")
    return Path(wanted) if wanted else tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="session")
def ui(demo_stack: DemoStack, chromium_path: str, screenshots_dir: Path):
    """A logged-in page on the stack's Airflow UI (one browser session for all flows)."""
    from playwright.sync_api import sync_playwright

    demo_stack.require_demo()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        context.set_default_timeout(30_000)
        page = context.new_page()
        airflow = AirflowUI(page, demo_stack.airflow_url, screenshots_dir)
        airflow.login("admin", ADMIN_PASSWORD, shot="login")
        yield airflow
        context.close()
        browser.close()


@pytest.fixture(scope="session")
def api(demo_stack: DemoStack) -> AirflowApi:
    """The REST API, to wait for what the clicks started and to check what they changed."""
    return AirflowApi(demo_stack.airflow_url, "admin", ADMIN_PASSWORD)
