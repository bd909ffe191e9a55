"""A real aiohttp upstream that echoes what it was sent, and serves a JWKS; test RSA keys."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

ISSUER = "https://issuer.test"
AUDIENCE = "fanout-tests"


@dataclass
class EchoUpstream:
    """What the upstream saw; its base URL once started."""

    url: str = ""
    calls: int = 0
    jwks_fetches: int = 0
    jwks: dict[str, Any] = field(default_factory=lambda: {"keys": []})
    seen: list[dict[str, Any]] = field(default_factory=list)


STATE_KEY = web.AppKey("echo_upstream", EchoUpstream)


async def _echo(request: web.Request) -> web.Response:
    # GET /echo?ms=N: after N ms, answer the headers and query it was sent.
    state = request.app[STATE_KEY]
    state.calls += 1
    milliseconds = int(request.query.get("ms", "0"))
    await asyncio.sleep(milliseconds / 1000)
    answer = {
        "authorization": request.headers.get("Authorization"),
        "user": request.headers.get("X-User-Id"),
        "cookie": request.headers.get("Cookie"),
        "language": request.headers.get("Accept-Language"),
        "query": request.query_string,
        "call": state.calls,
    }
    state.seen.append(answer)
    return web.json_response(answer)


async def _jwks(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    state.jwks_fetches += 1
    return web.json_response(state.jwks)


@asynccontextmanager
async def echo_upstream() -> AsyncIterator[EchoUpstream]:
    """Run the echo upstream for the duration of the block."""
    state = EchoUpstream()
    app = web.Application()
    app[STATE_KEY] = state
    app.router.add_get("/echo", _echo)
    app.router.add_get("/jwks.json", _jwks)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    state.url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    await web.SockSite(runner, listener).start()
    try:
        yield state
    finally:
        await runner.cleanup()


@dataclass(frozen=True)
class SigningKey:
    """A test RSA key pair with its key id."""

    kid: str
    private: rsa.RSAPrivateKey

    @classmethod
    def new(cls, kid: str) -> SigningKey:
        """A fresh 2048-bit key."""
        return cls(kid, rsa.generate_private_key(public_exponent=65537, key_size=2048))

    def jwk(self) -> dict[str, Any]:
        """The public key as a JWK with its kid."""
        data: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(self.private.public_key()))
        return {**data, "kid": self.kid, "use": "sig", "alg": "RS256"}

    def public_pem(self) -> str:
        """The public key as PEM."""
        return (
            self.private.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    def token(self, claims: Mapping[str, Any] | None = None, **changes: Any) -> str:
        """A token for ``sub=alice`` valid for a minute, with ``claims`` and ``changes`` applied."""
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "alice",
            "iat": now,
            "exp": now + 60,
            "scope": "orders:read",
        }
        body.update(claims or {})
        body.update(changes)
        return jwt.encode(body, self.private, algorithm="RS256", headers={"kid": self.kid})
