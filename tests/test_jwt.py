"""Bearer JWTs through the real stack: keys from a JWKS URL on a test upstream."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import jwt
import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator

from handlers.tokens import token_scopes
from tests.gateway_serving import Gateway, gateway_serving
from tests.identity_upstream import AUDIENCE, ISSUER, EchoUpstream, SigningKey, echo_upstream

API_KEY = "ops-key-0123456789abcdef"
#: How often an unknown kid may refetch the set in these tests (the default is 60 s).
REFETCH_SECONDS = 0.3


@pytest.fixture(scope="module")
def keys() -> tuple[SigningKey, SigningKey, SigningKey]:
    """The published key, the key it rotates to, and a key never published."""
    return SigningKey.new("k1"), SigningKey.new("k2"), SigningKey.new("k1")


def _config(url: str, *, jwks: bool = True, pem: str = "") -> str:
    source = f'jwks_url = "{url}/jwks.json"' if jwks else f"public_keys = ['''{pem}''']"
    return f"""
[auth]
api_keys = {{ ops = "{API_KEY}" }}

[auth.jwt]
issuer = "{ISSUER}"
audiences = ["{AUDIENCE}"]
{source}

[upstreams.echo]
base_url = "{url}"
internal = true
forward_identity = "X-User-Id"

[[endpoints]]
path = "/orders"
scopes = ["orders:read"]
  [[endpoints.backends]]
  upstream = "echo"
  path = "/echo"

[[endpoints]]
path = "/admin"
scopes = ["admin"]
  [[endpoints.backends]]
  upstream = "echo"
  path = "/echo"

[[endpoints]]
path = "/public"
auth = "optional"
  [[endpoints.backends]]
  upstream = "echo"
  path = "/echo"
"""


@pytest.fixture
async def echo() -> AsyncIterator[EchoUpstream]:
    """The echo upstream, serving the first key in its JWKS."""
    async with echo_upstream() as state:
        yield state


async def _call(gateway: Gateway, path: str, token: str) -> tuple[int, str, dict[str, object]]:
    headers = {"Authorization": f"Bearer {token}"}
    async with gateway.client.get(path, headers=headers) as response:
        body: dict[str, object] = await response.json(content_type=None)
        return response.status, response.headers.get("WWW-Authenticate", ""), body


#: Why each bad token is refused (WWW-Authenticate's error_description).
REASONS = {
    "expired": "token expired",
    "wrong audience": "wrong audience",
    "wrong issuer": "wrong issuer",
    "alg none": "algorithm not allowed",
    "unknown key, same kid": "signature not verified by any known key",
    "unknown kid": "signature not verified by any known key",
    "tampered payload": "signature not verified by any known key",
    "HS256 with the public key": "algorithm not allowed",
    "garbage": "malformed token",
    "subject with a newline": "unusable subject",
}


def _segment(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _bad_tokens(good: SigningKey, stranger: SigningKey) -> dict[str, str]:
    now = int(time.time())
    valid = good.token()
    header, payload, signature = valid.split(".")
    claims = jwt.decode(valid, options={"verify_signature": False})
    return {
        "expired": good.token(exp=now - 120, iat=now - 300),
        "wrong audience": good.token(aud="someone-else"),
        "wrong issuer": good.token(iss="https://evil.test"),
        "alg none": f"{_segment({'alg': 'none', 'typ': 'JWT'})}.{payload}.",
        "unknown key, same kid": stranger.token(),
        "unknown kid": SigningKey("nobody", stranger.private).token(),
        "tampered payload": f"{header}.{_segment({**claims, 'sub': 'mallory'})}.{signature}",
        "HS256 with the public key": _hs256_with(good.public_pem(), claims),
        "garbage": "not.a.token",
        "subject with a newline": good.token(sub="alice\r\nX-Admin: yes"),
    }


def _hs256_with(secret: str, claims: dict[str, object]) -> str:
    # PyJWT refuses to sign HS256 with a PEM key; an attacker's own code would not.
    signing_input = f"{_segment({'alg': 'HS256', 'typ': 'JWT'})}.{_segment(claims)}"
    mac = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


async def test_tokens_from_a_jwks_url(
    echo: EchoUpstream, keys: tuple[SigningKey, SigningKey, SigningKey], tmp_path: Path
) -> None:
    published, rotated, stranger = keys
    echo.jwks = {"keys": [published.jwk()]}
    settings = {"JWKS_REFETCH_SECONDS": REFETCH_SECONDS}
    async with gateway_serving(_config(echo.url), tmp_path, settings) as gateway:
        status, _, body = await _call(gateway, "/orders", published.token())
        assert (status, body["user"]) == (200, "alice")
        assert echo.jwks_fetches == 1

        for case, token in _bad_tokens(published, stranger).items():
            status, challenge, body = await _call(gateway, "/orders", token)
            assert status == 401, case
            assert 'error="invalid_token"' in challenge, case
            assert f'error_description="{REASONS[case]}"' in challenge, case
            assert body["status"] == 401, case
        # Unknown kids refetched the set at most once in the refetch interval.
        assert echo.jwks_fetches <= 2

        status, challenge, body = await _call(gateway, "/admin", published.token())
        assert status == 403
        assert 'error="insufficient_scope"' in challenge
        assert "admin" in str(body["detail"])

        # Rotation: a token with the new kid refetches the set once the
        # interval has passed, and is accepted.
        echo.jwks = {"keys": [rotated.jwk()]}
        await asyncio.sleep(REFETCH_SECONDS * 1.5)
        fetches = echo.jwks_fetches
        tokens = [rotated.token(sub=f"user{n}") for n in range(5)]
        answers = await asyncio.gather(*(_call(gateway, "/orders", t) for t in tokens))
        assert [(status, body["user"]) for status, _, body in answers] == [
            (200, f"user{n}") for n in range(5)
        ]
        assert echo.jwks_fetches == fetches + 1

        # API keys still work beside tokens; an optional route admits anonymous callers.
        status, _, body = await _call(gateway, "/orders", API_KEY)
        assert (status, body["user"]) == (200, "ops")
        async with gateway.client.get("/public") as anonymous:
            assert anonymous.status == 200
            assert (await anonymous.json())["user"] is None
        # ... but not a bad token.
        assert (await _call(gateway, "/public", "not.a.token"))[0] == 401
        async with gateway.client.get("/openapi.json") as described:
            document = await described.json()
        OpenAPIV31SpecValidator(document).validate()
        paths = document["paths"]
        assert "403" in paths["/orders"]["get"]["responses"]
        assert paths["/public"]["get"]["security"] == [{"bearer": []}, {}]


async def test_public_keys_without_a_jwks(
    echo: EchoUpstream, keys: tuple[SigningKey, SigningKey, SigningKey], tmp_path: Path
) -> None:
    published, _, stranger = keys
    config = _config(echo.url, jwks=False, pem=published.public_pem())
    async with gateway_serving(config, tmp_path) as gateway:
        assert (await _call(gateway, "/orders", published.token()))[0] == 200
        assert (await _call(gateway, "/orders", stranger.token()))[0] == 401
    assert echo.jwks_fetches == 0


def test_scopes_from_a_string_or_a_list_claim() -> None:
    assert token_scopes({"scope": "a b  c"}, "scope") == {"a", "b", "c"}
    assert token_scopes({"scp": ["a", "b", 3]}, "scp") == {"a", "b"}
    assert token_scopes({"scope": 7}, "scope") == frozenset()


async def test_a_jwks_url_on_a_private_address_is_refused_by_the_guard(
    echo: EchoUpstream, keys: tuple[SigningKey, SigningKey, SigningKey], tmp_path: Path
) -> None:
    # 10.0.0.1 is no internal upstream's host: the shared session's guard
    # refuses it before connecting, so no key is known and no token passes.
    config = _config(echo.url).replace(f"{echo.url}/jwks.json", "http://10.0.0.1:9/jwks.json")
    async with gateway_serving(config, tmp_path) as gateway:
        status, _, body = await _call(gateway, "/orders", keys[0].token())
    assert status == 503
    assert body["status"] == 503
