"""The jobs page with API keys on, in headless Chromium: the key asked once, its jobs only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser

from tests.gateway_serving import Gateway, gateway_serving
from tests.identity_upstream import echo_upstream
from tests.test_jobs_ui import browser  # noqa: F401 - the Chromium fixture

ALICE_KEY = "alice-key-0123456789abcdef"
BOB_KEY = "bob-key-0123456789abcdef00"


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    """The gateway with two API keys and the echo upstream."""
    async with echo_upstream() as echo:
        config = f"""
[auth]
api_keys = {{ alice = "{ALICE_KEY}", bob = "{BOB_KEY}" }}

[upstreams.echo]
base_url = "{echo.url}"
internal = true
timeout = 5.0
"""
        # Jobs still running at the end are interrupted at once, not waited for.
        settings = {"JOB_GRACE_SECONDS": 0.2}
        async with gateway_serving(config, tmp_path, settings) as served:
            yield served


async def _start(gateway: Gateway, key: str) -> dict[str, Any]:
    batch = {
        "upstream": "echo",
        # Quick items first, then slow ones: the job runs long enough for a
        # slow browser to see its bar move, and never ends by itself here.
        "path": "/echo?ms={item}",
        "items": [300 + n for n in range(4)] + [1500 + n for n in range(30)],
        "concurrency": 1,
    }
    headers = {"Authorization": f"Bearer {key}"}
    async with gateway.client.post("/jobs/batch", json=batch, headers=headers) as response:
        assert response.status == 202
        job: dict[str, Any] = await response.json()
        return job


async def test_the_page_asks_for_a_key_and_shows_that_keys_job_live(
    browser: Browser,  # noqa: F811
    gateway: Gateway,
) -> None:
    mine = await _start(gateway, ALICE_KEY)
    theirs = await _start(gateway, BOB_KEY)
    page = await browser.new_page()
    await page.goto(f"{gateway.url}/jobs/ui")
    form = page.locator("#login")
    await form.wait_for(state="visible", timeout=10_000)  # /jobs answered 401
    await page.fill("#credential", ALICE_KEY)
    await page.click("#login button")
    row = page.locator(f'tr[data-id="{mine["id"]}"]')
    await row.wait_for(timeout=10_000)
    bar = await row.locator("progress").element_handle()
    for _ in range(2):  # live: the bar advances twice, from the job's event stream
        before = await bar.evaluate("el => el.value")
        await page.wait_for_function(f"el => el.value > {before}", arg=bar, timeout=15_000)
    # Another key's job never shows, though the list was refreshed meanwhile (every 2 s).
    assert await page.locator(f'tr[data-id="{theirs["id"]}"]').count() == 0
    assert await page.locator("tbody tr").count() == 1
    # The key is in this tab's session storage only: not a cookie, not the URL.
    stored = await page.evaluate("sessionStorage.getItem('fanout.jobs-ui.credential')")
    assert stored == ALICE_KEY
    assert await page.context.cookies() == []
    assert ALICE_KEY not in page.url
    await row.locator("button.cancel").click()
    await page.wait_for_function(
        "el => el.dataset.status === 'cancelled'", arg=await row.element_handle(), timeout=10_000
    )
    await page.close()
