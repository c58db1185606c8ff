"""The web console in a real browser: Debian's Chromium driven by Playwright (never a
downloaded browser) against `crunchql serve` (embedded queue and bus).

A newcomer signs up, submits a Monte Carlo pi job that runs for a few seconds, sees its
progress bar advance and the convergence chart gain points, and sees the result; renders
a Mandelbrot set and the image decodes; and no request leaves the server's origin.
Screenshots go to var/artifacts/. Chromium missing: a skip locally, a failure in CI.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI
from tests.e2e.processes import ROOT, embedded_api

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "var" / "artifacts"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
PASSWORD = "plum quartz lantern 7319 orbit"  # strong enough for any password policy
TIMEOUT_MS = 120_000  # a cold kernel compile on a loaded machine

# Records every change of the progress bars and of the chart's point count (a
# MutationObserver sees each one, where polling could miss a quick job's middle).
WATCH = """() => {
  window.__seen = { progress: [], points: [] };
  new MutationObserver((changes) => {
    for (const change of changes) {
      const node = change.target;
      if (change.attributeName === 'aria-valuenow') window.__seen.progress.push(
        [node.getAttribute('aria-label'), Number(node.getAttribute('aria-valuenow'))]);
      if (change.attributeName === 'data-points') window.__seen.points.push(
        Number(node.dataset.points));
    }
  }).observe(document.body, { subtree: true, attributes: true,
                             attributeFilter: ['aria-valuenow', 'data-points'] });
}"""


def require_chromium() -> None:
    try:
        import playwright  # noqa: F401
    except ImportError:
        problem = "the playwright package is not installed"
    else:
        if Path(CHROMIUM).exists():
            return
        problem = f"{CHROMIUM} is missing (apt-get install chromium)"
    if IN_CI:
        pytest.fail(f"{problem}: CI=true requires it (.ci/run installs it)")
    pytest.skip(f"!!! {problem}: skipping the browser test — it runs in CI")


@pytest.fixture(scope="module")
def server_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("console")


@pytest.fixture(scope="module")
async def server(server_dir: Path) -> AsyncIterator[str]:
    require_chromium()
    async with embedded_api(server_dir) as base:
        yield base


@pytest.fixture
async def page(server: str) -> AsyncIterator[tuple[Any, list[str], list[str]]]:
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=TIMEOUT_MS)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        context = await browser.new_context(viewport={"width": 1400, "height": 1000})
        context.set_default_timeout(TIMEOUT_MS)
        tab = await context.new_page()
        requests: list[str] = []
        tab.on("request", lambda request: requests.append(request.url))
        subscriptions: list[str] = []

        def on_socket(socket: Any) -> None:
            requests.append(socket.url)
            socket.on(
                "framesent",
                lambda frame: subscriptions.append(frame) if '"subscribe"' in frame else None,
            )

        tab.on("websocket", on_socket)
        errors: list[str] = []
        tab.on("pageerror", lambda error: errors.append(str(error)))
        tab.on(
            "console",
            lambda message: errors.append(message.text) if message.type == "error" else None,
        )
        try:
            yield tab, requests, subscriptions
        finally:
            await context.close()
            await browser.close()
        assert errors == []  # no script error, no CSP violation


async def test_sign_up_submit_watch_live_and_see_the_results(
    page: tuple[Any, list[str], list[str]], server: str
) -> None:
    from playwright.async_api import expect

    tab, requests, subscriptions = page
    await tab.goto(f"http://{server}/")
    await tab.get_by_label("Email").fill(f"browser-{uuid.uuid4().hex[:8]}@example.com")
    await tab.get_by_label("Password").fill(PASSWORD)
    await tab.get_by_role("button", name="Create account").click()
    await expect(tab.get_by_role("button", name="Sign out")).to_be_visible()

    # Validated before sending: the message sits next to the field.
    await tab.get_by_label("Kind").select_option("monteCarloPi")
    await tab.get_by_label("samples", exact=True).fill("0")
    await tab.get_by_role("button", name="Submit", exact=True).click()
    await expect(tab.locator("#field-samples-error")).to_contain_text("at least 1")
    await expect(tab.get_by_role("progressbar")).to_have_count(0)  # nothing was sent

    await tab.evaluate(WATCH)
    await tab.get_by_label("samples", exact=True).fill("1000000000")
    await tab.get_by_role("button", name="Submit", exact=True).click()
    row = tab.locator("li.row").first
    await expect(row.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100")
    await expect(row).to_have_attribute("data-status", "SUCCEEDED")
    await expect(tab.get_by_text("Final estimate")).to_be_visible()
    seen = await tab.evaluate("window.__seen")
    progress = [value for _, value in seen["progress"]]
    assert any(0 < value < 100 for value in progress), progress  # it moved, live
    assert progress == sorted(progress)
    assert len(set(seen["points"])) >= 2 and max(seen["points"]) >= 2, seen["points"]
    chart = tab.get_by_role("img", name="Convergence")
    assert int(await chart.get_attribute("data-points")) >= 2
    await tab.screenshot(path=ARTIFACTS / "console-monte-carlo.png", full_page=True)

    # A Mandelbrot render: the server's BAD_USER_INPUT shows next to its field, then
    # a valid one renders and the PNG decodes.
    await tab.get_by_label("Kind").select_option("mandelbrot")
    await tab.get_by_label("width", exact=True).fill("240")
    await tab.get_by_label("height", exact=True).fill("160")
    await tab.get_by_label("maxIterations", exact=True).fill("200")
    await tab.get_by_label("xMin", exact=True).fill("1")
    await tab.get_by_label("xMax", exact=True).fill("0")
    await tab.get_by_role("button", name="Submit", exact=True).click()
    await expect(tab.locator("#field-xMax-error")).to_contain_text("greater than xMin")
    await tab.get_by_label("xMin", exact=True).fill("")
    await tab.get_by_label("xMax", exact=True).fill("")
    await tab.get_by_role("button", name="Submit", exact=True).click()
    image = tab.get_by_alt_text("Mandelbrot render")
    await expect(image).to_be_visible()
    await tab.wait_for_function(
        "() => { const i = document.querySelector('img[alt=\"Mandelbrot render\"]');"
        " return i && i.complete && i.naturalWidth > 0; }"
    )
    assert await image.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [240, 160]
    await expect(tab.get_by_role("progressbar")).to_have_count(2)  # one row each
    await tab.screenshot(path=ARTIFACTS / "console-mandelbrot.png", full_page=True)

    # kMeans: the centroids, as a scatter of their first two coordinates.
    await tab.get_by_label("Kind").select_option("kMeans")
    await tab.get_by_label("n", exact=True).fill("3000")
    await tab.get_by_label("dimensions", exact=True).fill("2")
    await tab.get_by_label("k", exact=True).fill("3")
    await tab.get_by_role("button", name="Submit", exact=True).click()
    scatter = tab.get_by_role("img", name="Centroids")
    await expect(scatter.locator("circle")).to_have_count(3)
    await tab.screenshot(path=ARTIFACTS / "console-kmeans.png", full_page=True)

    # Cancel a long job from its row; Resubmit the Mandelbrot render from its row.
    rows = tab.locator("li.row")
    await expect(rows).to_have_count(3)
    await tab.get_by_label("Kind").select_option("monteCarloPi")
    await tab.get_by_label("samples", exact=True).fill("10000000000")
    await tab.get_by_role("button", name="Submit", exact=True).click()
    await expect(rows).to_have_count(4)
    long_row = tab.locator(f'li.row[data-id="{await rows.first.get_attribute("data-id")}"]')
    await long_row.get_by_role("button", name="Cancel").click()
    await expect(long_row).to_have_attribute("data-status", "CANCELLED")
    await expect(long_row.get_by_role("button", name="Cancel")).to_have_count(0)
    render = rows.filter(has_text="mandelbrot")
    await render.get_by_role("button", name="Resubmit").click()
    await expect(rows).to_have_count(5)
    await expect(
        tab.locator('li.row[data-status="SUCCEEDED"]', has_text="mandelbrot")
    ).to_have_count(2)

    # The whole list, every calculation, lived on one subscription.
    assert len(subscriptions) == 1 and "myCalculationUpdates" in subscriptions[0]

    await tab.get_by_role("button", name="Sign out").click()
    await expect(tab.get_by_role("button", name="Sign in")).to_be_visible()

    origins = (f"http://{server}/", f"ws://{server}/", "data:")
    strays = [url for url in requests if not url.startswith(origins)]
    assert strays == [], strays
    assert any(url.startswith(f"ws://{server}/") for url in requests)  # live over WebSocket


async def test_an_admin_sees_the_administration_panel(
    page: tuple[Any, list[str], list[str]], server: str, server_dir: Path
) -> None:
    from playwright.async_api import expect

    email = f"admin-{uuid.uuid4().hex[:8]}@example.com"
    database = f"sqlite+aiosqlite:///{server_dir / 'crunchql.sqlite3'}"
    created = subprocess.run(
        [sys.executable, "-m", "crunchql", "users", "create-admin", email],
        input=PASSWORD + "\n", capture_output=True, text=True, cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database},
        timeout=120, check=False,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    tab, _, _ = page
    await tab.goto(f"http://{server}/")
    await tab.get_by_label("Email").fill(email)
    await tab.get_by_label("Password").fill(PASSWORD)
    await tab.get_by_role("button", name="Sign in").click()
    panel = tab.get_by_role("region", name="Administration")
    await expect(panel).to_contain_text("Live workers: embedded")
    # The queue as the API reports it (behind a proxy, /metrics is not reachable).
    await expect(panel).to_contain_text(re.compile(r"Queued: \d+\+?"))
