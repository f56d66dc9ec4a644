"""Drive the real Airflow 3 UI in Debian's Chromium with Playwright (no browser download).

What the selectors rely on (Airflow 3.3's React UI): the login form's ``username`` and
``password`` fields; the *Trigger* button on a DAG page opening a dialog with *Single Run* and
*Backfill* choices; param fields with ids ``element_<param>``; the Backfill dialog's date-time
pickers (``data-testid="datetime-input"``) that open a popover with a ``YYYY/MM/DD`` and an
``HH:mm`` input; the *Required Actions* page at ``/required_actions``.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

#: Flags the Debian Chromium needs here: root, no GPU, no network but loopback.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
INSTALL_HINT = (
    "no Chromium found for the browser tests: `make setup` installs Debian's `chromium` package "
    "when it runs as root with apt; elsewhere install it (Debian/Ubuntu: `sudo apt-get install "
    "chromium`) or point MLP_CHROMIUM at a Chromium/Chrome binary"
)


def find_chromium() -> str | None:
    """The Chromium binary: ``MLP_CHROMIUM``, else the first of the usual names on PATH."""
    explicit = os.environ.get("MLP_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).exists() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


class AirflowUI:
    """One logged-in browser page on the Airflow UI, and the operator actions the tests click."""

    def __init__(self, page, base_url: str, shots_dir: Path) -> None:
        self.page = page
        self.base = base_url.rstrip("/")
        self.shots_dir = shots_dir
        shots_dir.mkdir(parents=True, exist_ok=True)

    # ---------------------------------------------------------------- basics
    def shot(self, name: str, full_page: bool = False) -> Path:
        """A screenshot for the runbook (``docs/screenshots/<name>.png`` via ``make screenshots``)."""
        path = self.shots_dir / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path

    def goto(self, path: str) -> None:
        self.page.goto(self.base + path)
        self.page.wait_for_load_state("networkidle")

    def login(self, username: str, password: str, shot: str | None = None) -> None:
        self.page.goto(self.base + "/")
        self.page.wait_for_selector("input[name=username]")
        self.page.fill("input[name=username]", username)
        self.page.fill("input[name=password]", password)
        if shot:
            self.shot(shot)
        self.page.keyboard.press("Enter")
        self.page.wait_for_url(lambda url: "/auth/login" not in url, timeout=30_000)
        self.page.wait_for_load_state("networkidle")

    def dialog(self):
        return self.page.locator("[role=dialog][data-state=open][data-scope=dialog]")

    # ---------------------------------------------------------------- trigger form
    def open_trigger_form(self, dag_id: str):
        self.goto(f"/dags/{dag_id}")
        self.page.get_by_role("button", name="Trigger").first.click()
        dialog = self.dialog()
        dialog.wait_for()
        return dialog

    def fill_param(self, name: str, value: str) -> None:
        field = self.dialog().locator(f"#element_{name}")
        field.click()
        field.fill(value)
        field.blur()

    def check_param(self, name: str, checked: bool = True) -> None:
        """Set a boolean param's switch (``<label id="switch:element_<name>">``)."""
        switch = self.dialog().locator(f"[id='switch:element_{name}']")
        if (switch.get_attribute("data-state") == "checked") != checked:
            switch.click()
        expected = "checked" if checked else "unchecked"
        self.page.wait_for_function(
            "([sel, want]) => document.querySelector(sel)?.getAttribute('data-state') === want",
            arg=[f"[id='switch:element_{name}']", expected],
        )

    def refused(self, message: str, label: str = "Trigger") -> str:
        """Submit and expect the form to stay open with ``message`` (the API's validation error)."""
        self.submit_button(label).click()
        error = self.dialog().get_by_text(message, exact=False).first
        error.wait_for(timeout=30_000)
        return self.dialog().inner_text()

    def submit_button(self, label: str = "Trigger"):
        return self.dialog().get_by_role("button", name=label, exact=True)

    def submit(self, label: str = "Trigger", shot: str | None = None) -> None:
        button = self.submit_button(label)
        button.wait_for()
        _wait_enabled(button)
        if shot:
            self.shot(shot)
        button.click()
        self.dialog().wait_for(state="detached", timeout=30_000)

    # ---------------------------------------------------------------- backfill
    def fill_backfill_range(self, start: str, end: str) -> None:
        """Choose *Backfill* in the trigger dialog and set From/To (``YYYY-MM-DD``, midnight UTC)."""
        dialog = self.dialog()
        dialog.get_by_text("Backfill", exact=True).first.click()
        pickers = dialog.locator("[data-testid=datetime-input]")
        pickers.first.wait_for()
        for index, day in enumerate((start, end)):
            pickers.nth(index).click()
            popover = self.page.locator("[data-scope=popover][data-part=content][data-state=open]")
            popover.wait_for()
            date_input = popover.locator("input[placeholder='YYYY/MM/DD']")
            date_input.fill(day.replace("-", "/"))
            date_input.press("Enter")
            time_input = popover.locator("input[placeholder='HH:mm']")
            time_input.fill("00:00")
            time_input.press("Enter")
            self.page.keyboard.press("Escape")
            popover.wait_for(state="hidden")
        dialog.get_by_text("Run Backfill", exact=False).first.wait_for()
        self.page.wait_for_timeout(500)  # let the last popover finish fading out (screenshots)

    # ---------------------------------------------------------------- human in the loop
    def respond_to_required_action(
        self, dag_id: str, run_id: str, option: str, shot: str | None = None
    ) -> None:
        """Open the run's pending approval from the *Required Actions* page and choose ``option``."""
        self.goto(f"/dags/{dag_id}/runs/{run_id}/tasks/approve/required_actions")
        button = self.page.get_by_role("button", name=option, exact=True)
        button.wait_for(timeout=60_000)
        _wait_enabled(button)
        if shot:
            self.shot(shot)
        button.click()
        self.page.wait_for_load_state("networkidle")

    # ---------------------------------------------------------------- extra links
    def open_extra_link(self, dag_id: str, run_id: str, task_id: str, label: str):
        """Click an extra-link button (task instance → *Details* → *Extra Links*); return the new tab."""
        self.goto(f"/dags/{dag_id}/runs/{run_id}/tasks/{task_id}/details")
        self.page.get_by_text("Extra Links", exact=True).wait_for(timeout=60_000)
        button = self.page.get_by_role("button", name=label, exact=True).or_(
            self.page.get_by_role("link", name=label, exact=True)
        )
        button.first.wait_for(timeout=60_000)
        _wait_enabled(button.first)
        with self.page.context.expect_page(timeout=30_000) as opened:
            button.first.click()
        new_page = opened.value
        new_page.wait_for_load_state("load", timeout=60_000)
        return new_page


def _wait_enabled(locator, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while locator.is_disabled():
        if time.monotonic() > deadline:
            raise AssertionError(f"{locator} stayed disabled for {timeout_s:.0f} s")
        time.sleep(0.2)
