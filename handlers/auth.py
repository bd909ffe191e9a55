"""Who is calling: API keys and JWTs, each route's ``auth`` and ``scopes``, the caller.

Every request gets a caller (``fanout.core.identity.current_caller()``):
the API key's name, the token's ``sub`` and scopes, or anonymous with the
client's address. With keys or JWT configured, routes default to
``auth = "required"``; the probes, /metrics and /openapi.json are open.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, current_app, request

from clients.jwks import JwksCache, JwksUnavailable
from fanout.core.config import EndpointConfig, GatewayConfig
from fanout.core.headers import client_address
from fanout.core.identity import CURRENT_CALLER, Caller, CallerKind
from handlers.errors import problem_response
from handlers.tokens import InvalidToken, TokenVerifier, token_scopes

logger = logging.getLogger(__name__)

#: Routes open without a key: probes, metrics, the API description (clients
#: read it before they have a key) and the jobs page (static: it asks for the
#: caller's key or token, and shows nothing without one). None holds secrets.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json", "/jobs/ui"})
AUTH_KEY = "fanout.auth"
#: The Flask endpoint of the proxy view, whose policy is its upstream's.
PROXY_ENDPOINT = "proxy.proxy"
_REALM = 'Bearer realm="fanout"'


@dataclass(frozen=True)
class Policy:
    """Who may call a route."""

    mode: str  # required, optional or none
    scopes: tuple[str, ...] = ()


class Auth:
    """The app's credentials and per-route policies."""

    def __init__(
        self,
        gateway: GatewayConfig,
        endpoint_names: Mapping[str, EndpointConfig],
        verifier: TokenVerifier | None,
    ) -> None:
        self.keys = gateway.auth.api_keys
        self.enabled = gateway.auth.enabled
        self.verifier = verifier
        self.trusted_proxies = gateway.server.trusted_proxies
        default = "required" if self.enabled else "none"
        self.default = Policy(default)
        self.open = Policy("none")
        self.by_endpoint = {
            name: Policy(endpoint.auth or default, endpoint.scopes)
            for name, endpoint in endpoint_names.items()
        }
        self.by_upstream = {
            name: Policy(upstream.auth or default, upstream.scopes)
            for name, upstream in gateway.upstreams.items()
        }

    def policy(self) -> Policy:
        """The policy of the current request's route."""
        if request.path in OPEN_PATHS:
            return self.open
        endpoint = request.endpoint
        if endpoint == PROXY_ENDPOINT and request.view_args:
            return self.by_upstream.get(request.view_args.get("upstream", ""), self.default)
        if endpoint is not None:
            return self.by_endpoint.get(endpoint, self.default)
        return self.default

    def address(self) -> str:
        """The client's address, X-Forwarded-For believed only as deep as trusted_proxies."""
        return client_address(
            request.headers.get("X-Forwarded-For"), request.remote_addr or "", self.trusted_proxies
        )

    def key_name(self, offered: str) -> str | None:
        """The name of the API key ``offered``, or None."""
        found: str | None = None
        offered_bytes = offered.encode()
        for name, key in self.keys.items():
            # Compare with every key, in constant time, so timing tells nothing.
            if hmac.compare_digest(key.encode(), offered_bytes):
                found = name
        return found


def auth_of(app: Flask | None = None) -> Auth:
    """The app's auth."""
    found: Auth = (app if app is not None else current_app).extensions[AUTH_KEY]
    return found


def _bearer() -> str | None:
    """The Bearer credential sent, or None when there is none."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _admit(auth: Auth, policy: Policy, caller: Caller) -> Response | None:
    CURRENT_CALLER.set(caller)
    # Scopes imply a credential: an anonymous caller holds none of them.
    if caller.anonymous and (policy.mode == "required" or policy.scopes):
        return problem_response(
            401,
            detail="A valid API key or token is required: Authorization: Bearer <credential>.",
            headers={"WWW-Authenticate": _REALM},
        )
    if policy.scopes and not caller.has_scopes(policy.scopes):
        needed = " ".join(policy.scopes)
        return problem_response(
            403,
            detail=f"This route needs the scope(s): {needed}.",
            headers={"WWW-Authenticate": f'{_REALM}, error="insufficient_scope", scope="{needed}"'},
        )
    return None


def _invalid(reason: str) -> Response:
    return problem_response(
        401,
        detail=f"The credential was refused: {reason}.",
        headers={
            "WWW-Authenticate": f'{_REALM}, error="invalid_token", error_description="{reason}"'
        },
    )


def _from_key(auth: Auth, token: str, address: str) -> Caller | None:
    name = auth.key_name(token) if auth.keys and token else None
    return None if name is None else Caller(CallerKind.API_KEY, name, address)


def _known_caller(auth: Auth) -> tuple[Policy, str, Caller | str]:
    """The route's policy, the client's address, and the caller (or the token to verify)."""
    policy = auth.policy()
    address = auth.address()
    token = _bearer() if policy.mode != "none" else None
    if token is None:
        return policy, address, Caller(CallerKind.ANONYMOUS, None, address)
    caller = _from_key(auth, token, address)
    return policy, address, caller if caller is not None else token


def _authenticate_keys() -> Response | None:
    """Identify the caller by API key (no await: no switch to the loop)."""
    auth = auth_of()
    policy, _, found = _known_caller(auth)
    if isinstance(found, str):
        return _invalid("unknown API key")
    return _admit(auth, policy, found)


async def _authenticate_tokens() -> Response | None:
    """Identify the caller by API key or JWT."""
    auth = auth_of()
    policy, address, found = _known_caller(auth)
    if isinstance(found, str):
        verified = await _verified(auth, found, address)
        if isinstance(verified, Response):
            return verified
        found = verified
    return _admit(auth, policy, found)


async def _verified(auth: Auth, token: str, address: str) -> Caller | Response:
    """The token's caller, or the answer refusing it (401, or 503 without its keys)."""
    assert auth.verifier is not None
    try:
        claims = await auth.verifier.verify(token)
    except InvalidToken as exc:
        return _invalid(str(exc))
    except JwksUnavailable as exc:
        logger.warning("token not verified", extra={"cause": str(exc)})
        return problem_response(
            503,
            detail="The token's signing keys cannot be fetched now; try again later.",
            headers={"Retry-After": "5"},
        )
    scopes = token_scopes(claims, auth.verifier.config.scopes_claim)
    return Caller(CallerKind.JWT, claims["sub"], address, scopes, claims)


#: A check run once the caller is known (the rate limits), in the same hook.
Then = Callable[[], Awaitable[Response | None]]


def _gate(then: Then | None) -> Callable[[], Awaitable[Response | None]]:
    async def gate() -> Response | None:
        # One async hook for auth and what follows it: each async hook is a
        # switch to the loop and back, on every request.
        if auth_of().verifier is not None:
            answer = await _authenticate_tokens()
        else:
            answer = _authenticate_keys()
        if answer is not None or then is None:
            return answer
        return await then()

    return gate


def install_auth(
    app: Flask,
    gateway: GatewayConfig,
    endpoint_names: Sequence[tuple[str, EndpointConfig]],
    session: Callable[[], Any],
    then: Then | None = None,
) -> None:
    """Give every request its caller; refuse what its route's policy refuses.

    ``endpoint_names``: the aggregate endpoints' Flask endpoint names;
    ``session``: the shared aiohttp session (the JWKS is fetched over it);
    ``then``: a check run next, once the caller is known (rate limits).
    """
    jwt = gateway.auth.jwt
    verifier = None
    if jwt is not None:
        jwks = None
        if jwt.jwks_url is not None:
            jwks = JwksCache(
                jwt.jwks_url,
                session,
                refetch_after=float(app.config["JWKS_REFETCH_SECONDS"]),
                max_age=float(app.config["JWKS_MAX_AGE_SECONDS"]),
            )
        verifier = TokenVerifier(jwt, jwks)
    app.extensions[AUTH_KEY] = Auth(gateway, dict(endpoint_names), verifier)
    if verifier is None and then is None:
        app.before_request(_authenticate_keys)
    else:
        app.before_request(_gate(then))
