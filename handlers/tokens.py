"""Bearer JWTs: verified with PyJWT against the configured keys, issuer and audiences."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.exceptions import PyJWTError

from clients.jwks import JwksCache
from fanout.core.config import JwtConfig

#: Claims every accepted token must carry.
REQUIRED_CLAIMS = ["exp", "iss", "aud", "sub"]
#: A verified token is taken on trust again, without checking its signature,
#: for at most this many seconds (and never past its ``exp``): a client sends
#: the same token with every request, and verifying costs far more than the
#: rest of the gateway's auth work. A key withdrawn from the JWKS stops its
#: tokens within this time.
VERIFIED_SECONDS = 60.0
#: How many verified tokens are remembered (least recently used dropped).
VERIFIED_ENTRIES = 4096
_HMAC = frozenset({"HS256", "HS384", "HS512"})


class InvalidToken(Exception):
    """The token is malformed, expired, badly signed, or not for this gateway."""


class TokenVerifier:
    """Checks a token's signature (algorithm allow-list), ``exp``, ``iss`` and ``aud``."""

    def __init__(self, config: JwtConfig, jwks: JwksCache | None) -> None:
        self.config = config
        self._jwks = jwks
        self._algorithms = frozenset(config.algorithms)
        # Loaded once: PEM parsing is far slower than a verification.
        self._pem_keys = [load_pem_public_key(pem.encode()) for pem in config.public_keys]
        # token -> (trusted until, epoch seconds; its claims)
        self._verified: OrderedDict[str, tuple[float, Mapping[str, Any]]] = OrderedDict()

    async def verify(self, token: str) -> Mapping[str, Any]:
        """Return the token's verified claims; raise InvalidToken (or JwksUnavailable)."""
        now = time.time()
        known = self._verified.get(token)
        if known is not None:
            if now < known[0]:
                self._verified.move_to_end(token)
                return known[1]
            del self._verified[token]
        # Read-only: every request with this token shares the one mapping.
        claims = MappingProxyType(dict(await self._verify(token)))
        until = min(float(claims["exp"]) + self.config.leeway, now + VERIFIED_SECONDS)
        self._verified[token] = (until, claims)
        if len(self._verified) > VERIFIED_ENTRIES:
            self._verified.popitem(last=False)
        return claims

    async def _verify(self, token: str) -> Mapping[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except PyJWTError:
            raise InvalidToken("malformed token") from None
        algorithm = header.get("alg")
        # Checked here, not only by decode(): the key is chosen by algorithm,
        # and "none" or an unlisted one must not reach any key.
        if not isinstance(algorithm, str) or algorithm not in self._algorithms:
            raise InvalidToken("algorithm not allowed")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("malformed key id")
        for key in await self._candidate_keys(algorithm, kid):
            try:
                claims: dict[str, Any] = jwt.decode(
                    token,
                    key=key,
                    algorithms=[algorithm],
                    audience=list(self.config.audiences),
                    issuer=self.config.issuer,
                    leeway=self.config.leeway,
                    options={"require": REQUIRED_CLAIMS},
                )
            except (jwt.InvalidSignatureError, jwt.InvalidKeyError):
                continue  # another of the candidate keys may have signed it
            except PyJWTError as exc:
                raise InvalidToken(_reason(exc)) from None
            subject = claims.get("sub")
            # The subject names the caller in logs and in forward_identity's header.
            if not isinstance(subject, str) or not subject or not subject.isprintable():
                raise InvalidToken("unusable subject")
            return claims
        raise InvalidToken("signature not verified by any known key")

    async def _candidate_keys(self, algorithm: str, kid: str | None) -> list[Any]:
        if algorithm in _HMAC:
            return [self.config.secret] if self.config.secret is not None else []
        keys: list[Any] = []
        if self._jwks is not None:
            keys += [jwk.key for jwk in await self._jwks.keys_for(kid)]
        return keys + self._pem_keys


def _reason(error: PyJWTError) -> str:
    """What was wrong, without echoing any of the token."""
    if isinstance(error, jwt.ExpiredSignatureError):
        return "token expired"
    if isinstance(error, jwt.InvalidAudienceError):
        return "wrong audience"
    if isinstance(error, jwt.InvalidIssuerError):
        return "wrong issuer"
    if isinstance(error, jwt.ImmatureSignatureError):
        return "token not yet valid"
    if isinstance(error, jwt.MissingRequiredClaimError):
        return f"missing claim {error.claim}"
    return "invalid token"


def token_scopes(claims: Mapping[str, Any], claim: str) -> frozenset[str]:
    """The scopes a token grants: a space-separated string claim, or a list of strings."""
    value = claims.get(claim)
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list):
        return frozenset(item for item in value if isinstance(item, str))
    return frozenset()
