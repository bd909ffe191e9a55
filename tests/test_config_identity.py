"""The gateway file's auth, forwarding, rate-limit and CORS keys: one-line errors."""

from __future__ import annotations

import pytest

from fanout.core.config import ConfigError, parse_gateway_config

UPSTREAM = '[upstreams.u]\nbase_url = "http://127.0.0.1:9"\ninternal = true\n'
ENDPOINT = (
    '[[endpoints]]\npath = "/e"\n{extra}\n'
    '  [[endpoints.backends]]\n  upstream = "u"\n  path = "/x"\n{backend}\n'
)
JWT = '[auth.jwt]\nissuer = "https://i"\naudiences = ["a"]\n'


def _parse(text: str) -> None:
    parse_gateway_config(text, source="g.toml", env={})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            UPSTREAM + ENDPOINT.format(extra='auth = "maybe"', backend=""),
            "g.toml: endpoints[0].auth: expected one of required, optional, none, got 'maybe'",
        ),
        (
            UPSTREAM + ENDPOINT.format(extra='auth = "none"\nscopes = ["a"]', backend=""),
            "g.toml: endpoints[0].scopes: scopes need a credential",
        ),
        (
            UPSTREAM + ENDPOINT.format(extra='rate_limit = "lots"', backend=""),
            "g.toml: endpoints[0].rate_limit: expected a rate such as '10/minute'",
        ),
        (
            UPSTREAM + ENDPOINT.format(extra="", backend='  forward_identity = "Authorization"'),
            "g.toml: endpoints[0].backends[0].forward_identity: Authorization carries credentials",
        ),
        (
            UPSTREAM
            + ENDPOINT.format(extra="", backend='  pass_query = true\n  forward_query = ["a"]'),
            "g.toml: endpoints[0].backends[0].forward_query: pass_query = true already passes",
        ),
        (
            UPSTREAM + ENDPOINT.format(extra="", backend='  forward_headers = ["Connection"]'),
            "g.toml: endpoints[0].backends[0].forward_headers[0]: Connection is managed",
        ),
        (
            JWT + 'jwks_url = "https://keys.example/jwks"\nalgorithms = ["none"]\n',
            "g.toml: auth.jwt.algorithms[0]: expected one of",
        ),
        (
            JWT + 'public_keys = []\nalgorithms = ["HS256"]\n',
            "g.toml: auth.jwt.algorithms[0]: HS256 needs a shared secret",
        ),
        (JWT, "g.toml: auth.jwt: expected jwks_url or public_keys"),
        (
            JWT
            + 'public_keys = ["-----BEGIN PUBLIC KEY-----\\nnope\\n-----END PUBLIC KEY-----"]\n',
            "g.toml: auth.jwt.public_keys[0]: expected a PEM public key",
        ),
        (
            UPSTREAM + JWT + 'jwks_url = "http://127.0.0.1:10/jwks"\n',
            "g.toml: auth.jwt.jwks_url: an internal host is allowed only on the origin",
        ),
        (
            '[auth.jwt]\nissuer = "https://i"\njwks_url = "https://k/j"\n',
            "g.toml: auth.jwt.audiences: required",
        ),
        ('[rate_limits]\nstorage = "redis://"\n', "g.toml: rate_limits.storage: expected"),
        (
            UPSTREAM + ENDPOINT.format(extra='scopes = ["a"]', backend=""),
            "g.toml: endpoints[0].scopes: needs [auth] api_keys or [auth.jwt]",
        ),
        (
            UPSTREAM.replace("internal = true", 'internal = true\nauth = "required"'),
            "g.toml: upstreams.u.auth: needs [auth] api_keys or [auth.jwt]",
        ),
        (
            UPSTREAM.replace(
                "internal = true", 'internal = true\nheaders = { Authorization = "x" }'
            )
            + ENDPOINT.format(extra="", backend='  forward_headers = ["authorization"]'),
            "g.toml: endpoints[0].backends[0].forward_headers[0]: upstream 'u' sets authorization",
        ),
        ('[rate_limits]\nstrategy = "token-bucket"\n', "g.toml: rate_limits.strategy: expected"),
        (
            '[cors]\nallow_origins = ["*"]\nallow_credentials = true\n',
            "g.toml: cors.allow_credentials: cannot be true with allow_origins = ['*']",
        ),
        (
            '[cors]\nallow_origins = ["https://app.example/"]\n',
            "g.toml: cors.allow_origins[0]: expected '*' or an origin",
        ),
    ],
)
def test_errors_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _parse(text)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_a_full_section_parses() -> None:
    config = parse_gateway_config(
        UPSTREAM.replace("internal = true", 'internal = true\nforward_identity = "X-User-Id"')
        + JWT
        + 'jwks_url = "http://127.0.0.1:9/jwks.json"\nscopes_claim = "scp"\n'
        + '[rate_limits]\nstorage = "redis://127.0.0.1:6379/0"\ndefault = "100/second"\n'
        + '[cors]\nallow_origins = ["http://localhost:3000"]\n'
        + ENDPOINT.format(
            extra='auth = "optional"\nscopes = ["orders:read"]\nrate_limit = "5/second"',
            backend='  forward_headers = ["Authorization"]\n  forward_query = ["lang"]',
        ),
        source="g.toml",
        env={},
    )
    assert config.auth.jwt is not None and config.auth.jwt.scopes_claim == "scp"
    endpoint = config.endpoints[0]
    assert (endpoint.auth, endpoint.scopes, endpoint.rate_limit) == (
        "optional",
        ("orders:read",),
        "5/second",
    )
    assert endpoint.backends[0].forward_query == ("lang",)
    assert config.upstreams["u"].forward_identity == "X-User-Id"
    assert config.rate_limits.default == "100/second"
    assert config.cors is not None and "RateLimit" in config.cors.expose_headers
