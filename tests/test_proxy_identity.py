"""The proxy on behalf of its caller: per-upstream auth and rate limit, forwarded identity."""

from __future__ import annotations

from pathlib import Path

from tests.gateway_serving import gateway_serving
from tests.identity_upstream import echo_upstream

KEY = "alice-key-0123456789abcdef"


async def test_per_upstream_policy_limit_and_identity(tmp_path: Path) -> None:
    async with echo_upstream() as echo:
        config = f"""
[auth]
api_keys = {{ alice = "{KEY}" }}

[upstreams.echo]
base_url = "{echo.url}"
internal = true
forward_identity = "X-User-Id"
rate_limit = "2/minute"

[upstreams.open]
base_url = "{echo.url}"
internal = true
auth = "none"
forward_identity = "X-User-Id"
"""
        async with gateway_serving(config, tmp_path) as gateway:
            sent = {"Authorization": f"Bearer {KEY}", "X-User-Id": "root"}
            statuses, users = [], []
            for _ in range(3):
                async with gateway.client.get("/proxy/echo/echo", headers=sent) as response:
                    statuses.append(response.status)
                    body = await response.json(content_type=None)
                    users.append(body.get("user"))
            # The caller's name, not the client's claim; the key itself stays here.
            assert statuses == [200, 200, 429]
            assert users[:2] == ["alice", "alice"]
            assert echo.seen[0]["authorization"] is None
            assert echo.calls == 2
            async with gateway.client.get("/proxy/echo/echo") as anonymous:
                assert anonymous.status == 401
            async with gateway.client.get(
                "/proxy/open/echo", headers={"X-User-Id": "root"}
            ) as opened:
                assert opened.status == 200
                # Anonymous: no identity sent, and the client's own claim dropped.
                assert (await opened.json())["user"] is None
