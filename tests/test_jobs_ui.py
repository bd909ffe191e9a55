"""The jobs page in headless Chromium: a job's bar advances live, and Cancel stops it."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.async_api import Browser, Route, async_playwright

from tests.fault_upstream import FaultUpstream
from tests.gateway_serving import Gateway, gateway_serving

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
#: Where the screenshot is kept (CI may point this at its artifacts).
ARTIFACTS = Path(os.environ.get("FANOUT_TEST_ARTIFACTS", ROOT / "test-artifacts"))


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless (installed by .ci/run; never skipped)."""
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
def screenshot() -> Path:
    """Where the test's screenshot goes (its folder made here, outside the loop)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    target = ARTIFACTS / "jobs-ui.png"
    target.unlink(missing_ok=True)
    return target


@pytest.fixture
async def gateway(fault: FaultUpstream, tmp_path: Path) -> AsyncIterator[Gateway]:
    """The gateway with the fault upstream."""
    config = f'[upstreams.fault]\nbase_url = "{fault.url}"\ninternal = true\ntimeout = 5.0\n'
    async with gateway_serving(config, tmp_path) as served:
        yield served


async def test_the_page_shows_live_progress_and_cancels(
    browser: Browser, gateway: Gateway, screenshot: Path
) -> None:
    page = await browser.new_page()
    opened: list[str] = []  # paths the page requested
    page.on("request", lambda request: opened.append(urlsplit(request.url).path))
    await page.goto(f"{gateway.url}/jobs/ui")
    assert await page.title() == "Fanout: jobs"
    batch = {
        "upstream": "fault",
        # Five quick items, then fifteen of 4 s (each under the 5 s timeout):
        # the job cannot end before a slow browser has seen it move and cancelled it.
        "path": "/json?ms={item}",
        "items": [300 + n for n in range(5)] + [4000 + n for n in range(15)],
        "concurrency": 1,
    }
    async with gateway.client.post("/jobs/batch", json=batch) as response:
        job = await response.json()
    row = page.locator(f'tr[data-id="{job["id"]}"]')
    await row.wait_for(timeout=10_000)  # the page's refresh picked it up
    # From now on every reload of the list fails: whatever the bar does next
    # comes from the job's event stream, which the page opened for it.
    blocked = asyncio.Event()

    async def refuse(route: Route) -> None:
        blocked.set()
        await route.fulfill(status=503, json={"title": "blocked by the test"})

    await page.route(lambda url: urlsplit(url).path == "/jobs", refuse)
    await asyncio.wait_for(blocked.wait(), timeout=10)  # the page did try a reload
    bar = await row.locator("progress").element_handle()
    for _ in range(2):  # two advances, both after the list stopped answering
        before = await bar.evaluate("el => el.value")
        await page.wait_for_function(f"el => el.value > {before}", arg=bar, timeout=15_000)
    assert opened.count(f"/jobs/{job['id']}/events") == 1  # one stream, never reopened
    await row.locator("button.cancel").click()
    await page.wait_for_function(
        "el => el.dataset.status === 'cancelled'", arg=await row.element_handle(), timeout=10_000
    )
    assert await row.locator(".status").text_content() == "cancelled"
    assert not await row.locator("button.cancel").is_visible()
    image = await page.screenshot(path=str(screenshot), full_page=True)
    assert image.startswith(b"\x89PNG")
    async with gateway.client.get(f"/jobs/{job['id']}") as response:
        assert (await response.json())["status"] == "cancelled"
