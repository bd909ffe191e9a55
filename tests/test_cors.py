"""CORS from headless Chromium: a page on another port calls the gateway."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp import web
from playwright.async_api import Browser

from tests.gateway_serving import gateway_serving
from tests.identity_upstream import echo_upstream
from tests.test_jobs_ui import browser  # noqa: F401 - the Chromium fixture

KEY = "page-key-0123456789abcdef"

#: The page's script: a preflighted call (Authorization) and a simple GET.
SCRIPT = """
async ([gateway, key]) => {
  const out = {};
  try {
    const answer = await fetch(`${gateway}/limited`, {headers: {Authorization: `Bearer ${key}`}});
    out.preflighted = {status: answer.status, requestId: answer.headers.get("X-Request-ID"),
                       body: await answer.json()};
  } catch (error) { out.preflighted = {blocked: String(error)}; }
  try {
    const answer = await fetch(`${gateway}/public`);
    out.simple = {status: answer.status, body: await answer.json()};
  } catch (error) { out.simple = {blocked: String(error)}; }
  return out;
}
"""


@asynccontextmanager
async def _page_server() -> AsyncIterator[str]:
    """An origin of its own: a blank page on another port."""

    async def page(_request: web.Request) -> web.Response:
        return web.Response(text="<!doctype html><title>page</title>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    await web.SockSite(runner, listener).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        await runner.cleanup()


def _config(upstream: str, allowed: str) -> str:
    return f"""
[auth]
api_keys = {{ page = "{KEY}" }}

[cors]
allow_origins = ["{allowed}"]

[upstreams.echo]
base_url = "{upstream}"
internal = true

[[endpoints]]
path = "/limited"
# One request a minute: a preflight charged to the budget would leave none.
rate_limit = "1/minute"
  [[endpoints.backends]]
  upstream = "echo"
  path = "/echo"
  forward_identity = "X-User-Id"

[[endpoints]]
path = "/public"
auth = "none"
  [[endpoints.backends]]
  upstream = "echo"
  path = "/echo"
"""


async def _run_from(chromium: Browser, origin: str, gateway: str) -> dict[str, Any]:
    page = await chromium.new_page()
    try:
        await page.goto(f"{origin}/")
        result: dict[str, Any] = await page.evaluate(SCRIPT, [gateway, KEY])
        return result
    finally:
        await page.close()


async def test_an_allowed_origin_works_and_another_is_blocked(
    browser: Browser,  # noqa: F811
    tmp_path: Path,
) -> None:
    async with (
        echo_upstream() as echo,
        _page_server() as allowed,
        _page_server() as other,
        gateway_serving(_config(echo.url, allowed), tmp_path) as gateway,
    ):
        answered = await _run_from(browser, allowed, gateway.url)
        assert answered["preflighted"]["status"] == 200
        assert answered["preflighted"]["body"]["user"] == "page"
        # Exposed by default: the page can read the request id.
        assert answered["preflighted"]["requestId"]
        assert answered["simple"]["status"] == 200

        refused = await _run_from(browser, other, gateway.url)
        assert "blocked" in refused["preflighted"]
        assert "blocked" in refused["simple"]
        # The preflight reached neither auth nor the upstream; the other
        # origin's simple GET did reach the gateway (CORS only hides the answer).
        assert echo.calls == 3
