"""The gateway file (DESIGN.md section 3): parse and validate TOML into frozen dataclasses.

Every problem is a ``ConfigError`` whose message names the file, the key path
(``endpoints[0].backends[1].upstream``) and what was expected, so an invalid
file stops startup with a message a user can act on.
"""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import date, datetime, time
from types import MappingProxyType
from typing import Any, NoReturn
from urllib.parse import urlsplit

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from limits import parse as limits_parse

from fanout.core import config_composition as composition
from fanout.core.references import is_reference

__all__ = [
    "AUTH_MODES",
    "JOB_STORE_PREFIXES",
    "METHODS",
    "RESERVED_PREFIXES",
    "AppConfig",
    "AuthConfig",
    "BackendConfig",
    "CircuitBreakerConfig",
    "ConfigError",
    "CorsConfig",
    "EndpointConfig",
    "GatewayConfig",
    "JobsConfig",
    "JwtConfig",
    "OutlierDetectionConfig",
    "RateLimitsConfig",
    "ServerConfig",
    "UpstreamConfig",
    "load_gateway_config",
    "parse_gateway_config",
    "route_shape",
    "route_variables",
    "split_import_string",
]

#: Methods an aggregate endpoint may answer.
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
#: Paths Fanout serves itself; an endpoint may not live under them.
RESERVED_PREFIXES = ("/jobs", "/proxy", "/healthz", "/readyz", "/metrics", "/openapi.json", "/demo")
#: Who may call a route: ``required`` (a valid key or token), ``optional``
#: (anonymous allowed, a bad token still refused), ``none`` (credentials ignored).
AUTH_MODES = ("required", "optional", "none")
#: The job stores Fanout knows.
JOB_STORE_PREFIXES = ("memory://", "sqlite:///", "redis://")

# Upstream, group and API key names: they appear in URLs (/proxy/<name>), JSON and logs.
_NAME = re.compile(r"[A-Za-z0-9_-]+")
_NAME_RULE = "letters, digits, '_' or '-'"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# RFC 9110 section 5.6.2: a header name is a token.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Keys that need no quotes in a TOML key path.
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
# Werkzeug's rule syntax: <name>, <converter:name>, <converter(arguments):name>.
_ROUTE_VARIABLE = re.compile(
    r"<(?:(?P<converter>[A-Za-z_][A-Za-z0-9_]*)(?:\((?P<arguments>[^)]*)\))?:)?"
    r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)>"
)
# Werkzeug's built-in converters; anything else would only fail later, at route registration.
_CONVERTERS = frozenset({"default", "string", "path", "int", "float", "uuid", "any"})
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FIELD_PATH = re.compile(r"[^.\s]+(?:\.[^.\s]+)*")
# Connection-level and framing headers (RFC 9110 section 7.6.1, plus Host and
# Content-Length): the gateway and aiohttp own them, so config may not set or forward them.
_MANAGED_HEADERS = frozenset(
    {
        "connection",
        "content-length",
        "host",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# JWT algorithms (RFC 7518): signatures with a public key, and HMAC with a shared secret.
_JWT_ASYMMETRIC = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
_JWT_HMAC = frozenset({"HS256", "HS384", "HS512"})
# The merged response reports failed backends under this member.
_ERRORS_MEMBER = "_errors"


class ConfigError(ValueError):
    """The gateway file is invalid."""

    def __init__(self, source: str, key_path: str, problem: str) -> None:
        self.source = source
        self.key_path = key_path
        self.problem = problem
        where = f"{source}: {key_path}" if key_path else source
        super().__init__(f"{where}: {problem}")

    def __reduce__(self) -> tuple[type[ConfigError], tuple[str, str, str]]:
        # ValueError would rebuild from the message alone, which this __init__ does not take.
        return (type(self), (self.source, self.key_path, self.problem))


def _no_headers() -> Mapping[str, str]:
    return MappingProxyType({})


def _no_upstreams() -> Mapping[str, UpstreamConfig]:
    return MappingProxyType({})


@dataclass(frozen=True)
class CircuitBreakerConfig:
    """When an upstream's circuit opens (consecutive failures) and how long it stays open."""

    failures: int = 5
    reset_after: float = 30.0


@dataclass(frozen=True)
class OutlierDetectionConfig:
    """When one host of several is skipped: after failures in a row, for a growing time."""

    consecutive_failures: int = 5
    base_ejection_seconds: float = 10.0
    #: The longest an ejection lasts, however often the host was ejected.
    max_ejection_seconds: float = 300.0


@dataclass(frozen=True)
class UpstreamConfig:
    """One upstream HTTP API: where it is and how it is called."""

    name: str
    base_url: str
    timeout: float = 2.0
    connect_timeout: float = 0.5
    retries: int = 0
    max_connections: int = 100
    # Read-only mappings are not hashable: leave them out of the hash (equality still uses them).
    headers: Mapping[str, str] = field(default_factory=_no_headers, hash=False)
    circuit_breaker: CircuitBreakerConfig = CircuitBreakerConfig()
    internal: bool = False
    forward_headers: tuple[str, ...] = ()
    follow_redirects: int = 0
    max_body_bytes: int = 8 * 1024 * 1024
    retry_budget: float = 0.2
    #: Query parameters of the client passed to this upstream's backends by default.
    forward_query: tuple[str, ...] = ()
    #: A header that carries the caller's name (key name or token ``sub``) upstream.
    forward_identity: str | None = None
    #: For ``/proxy/<name>``: who may call it (None: ``required`` once auth is configured).
    auth: str | None = None
    scopes: tuple[str, ...] = ()
    rate_limit: str | None = None
    #: Every host of the upstream (``base_urls``); base_url is the first.
    base_urls: tuple[str, ...] = ()
    outlier_detection: OutlierDetectionConfig = OutlierDetectionConfig()

    @property
    def urls(self) -> tuple[str, ...]:
        """The base URL of every host, in the file's order."""
        return self.base_urls or (self.base_url,)


@dataclass(frozen=True)
class BackendConfig:
    """One upstream call of an endpoint, and how its answer is merged."""

    upstream: str
    path: str
    pass_query: bool = False
    group: str | None = None
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    required: bool = False
    #: None: the upstream's own setting (its default for every backend on it).
    forward_headers: tuple[str, ...] | None = None
    forward_query: tuple[str, ...] | None = None
    forward_identity: str | None = None
    # Composition (fanout.core.config_composition reads and checks these).
    #: ``group.path[*]``: one call per element, ``{item}`` in ``path``.
    for_each: str | None = None
    max_items: int = 100
    concurrency: int = 10
    #: The dotted sub-object of the answer used as the answer.
    target: str | None = None
    #: (dotted source, new top-level key) pairs, in the file's order.
    rename: tuple[tuple[str, str], ...] = ()
    #: The answer is a JSON array, kept under the group, filtered element by element.
    collection: bool = False
    #: The JSON an optional backend's answer is replaced with when it fails.
    fallback: Any = field(default=None, hash=False)
    #: On a non-GET endpoint, this backend receives the request body (and the method).
    write: bool = False


@dataclass(frozen=True)
class EndpointConfig:
    """One aggregate route: the client calls it, Fanout calls its backends."""

    path: str
    method: str = "GET"
    timeout: float = 3.0
    cache_ttl: float = 0.0
    background: bool = False
    #: None: ``required`` once API keys or JWT are configured, else open.
    auth: str | None = None
    scopes: tuple[str, ...] = ()
    rate_limit: str | None = None
    #: Two backends writing the same key: ``last``, ``first`` or ``list`` (None: a config error
    #: where the file shows the clash, the later backend at run time).
    on_conflict: str | None = None
    #: A non-GET endpoint may send its body to several backends (one may fail after another wrote).
    allow_partial_writes: bool = False
    # Keyword-only so it can stay required after the defaulted fields.
    backends: tuple[BackendConfig, ...] = field(kw_only=True)


@dataclass(frozen=True)
class ServerConfig:
    """Per-process server limits."""

    max_body_bytes: int = 1_048_576
    sync_threads: int = 64
    trusted_proxies: int = 0
    #: Bytes per second a proxied upload must keep up, averaged over each
    #: window of the upstream's ``timeout`` (0: only idleness ends it).
    min_upload_rate: int = 500


@dataclass(frozen=True)
class JobsConfig:
    """Where background jobs are kept, and their bounds."""

    store: str = "sqlite:///var/fanout/jobs.db"
    max_running: int = 100
    max_pending: int = 1000
    default_timeout: float = 300.0
    result_ttl: float = 86400.0
    #: The largest result (body and headers) a job may store; larger fails it.
    max_result_bytes: int = 16 * 1024 * 1024


@dataclass(frozen=True)
class JwtConfig:
    """Bearer tokens (JWT) the gateway accepts: whose keys, for whom, which algorithms."""

    issuer: str
    audiences: tuple[str, ...]
    jwks_url: str | None = None
    #: PEM public keys, for tests and offline use (beside or instead of jwks_url).
    public_keys: tuple[str, ...] = ()
    algorithms: tuple[str, ...] = ("RS256",)
    #: The shared secret of HS256/384/512; those algorithms are refused without it.
    secret: str | None = None
    leeway: float = 0.0
    scopes_claim: str = "scope"


@dataclass(frozen=True)
class AuthConfig:
    """API keys by name and JWT; neither means the gateway is open."""

    api_keys: Mapping[str, str] = field(default_factory=_no_headers, hash=False)
    jwt: JwtConfig | None = None

    @property
    def enabled(self) -> bool:
        """Whether any credential is configured (routes then default to ``required``)."""
        return bool(self.api_keys) or self.jwt is not None


@dataclass(frozen=True)
class RateLimitsConfig:
    """Where rate-limit counters live, and the limit of routes that set none."""

    #: ``memory://`` (per process) or ``redis://host:port/db`` (shared).
    storage: str = "memory://"
    #: e.g. "100/second"; None: only routes with their own ``rate_limit`` are limited.
    default: str | None = None
    #: ``moving-window`` (exact) or ``fixed-window`` (cheaper, bursts at the edges).
    strategy: str = "moving-window"


#: What CORS lets a browser read by default, beyond the CORS-safelisted headers.
DEFAULT_EXPOSE_HEADERS = (
    "X-Fanout-Completed",
    "X-Request-ID",
    "Location",
    "Retry-After",
    "RateLimit-Policy",
    "RateLimit",
)


@dataclass(frozen=True)
class CorsConfig:
    """Which browser origins may call the gateway, and what they may send and read."""

    allow_origins: tuple[str, ...]
    allow_methods: tuple[str, ...] = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
    allow_headers: tuple[str, ...] = (
        "Authorization",
        "Content-Type",
        "Idempotency-Key",
        "Prefer",
        "X-Request-ID",
    )
    expose_headers: tuple[str, ...] = DEFAULT_EXPOSE_HEADERS
    max_age: int = 600
    allow_credentials: bool = False


@dataclass(frozen=True)
class AppConfig:
    """Code registered beside the gateway's own routes, as ``module:attribute`` strings."""

    #: Flask blueprints, served like the built-in routes.
    blueprints: tuple[str, ...] = ()
    #: Job kinds (``fanout.jobs.JobKind``), started by ``POST /jobs/<name>``.
    job_kinds: tuple[str, ...] = ()


@dataclass(frozen=True)
class GatewayConfig:
    """The whole gateway file."""

    app: AppConfig = AppConfig()
    server: ServerConfig = ServerConfig()
    jobs: JobsConfig = JobsConfig()
    auth: AuthConfig = AuthConfig()
    rate_limits: RateLimitsConfig = RateLimitsConfig()
    cors: CorsConfig | None = None
    upstreams: Mapping[str, UpstreamConfig] = field(default_factory=_no_upstreams, hash=False)
    endpoints: tuple[EndpointConfig, ...] = ()

    def internal_hosts(self) -> frozenset[str]:
        """Lower-cased hosts of the upstreams marked ``internal = true``."""
        return frozenset(
            _host(url)
            for upstream in self.upstreams.values()
            if upstream.internal
            for url in upstream.urls
        )


def route_variables(route: str) -> frozenset[str]:
    """Names of the ``<var>`` and ``<converter:var>`` parts of a Flask route."""
    return frozenset(match["name"] for match in _ROUTE_VARIABLE.finditer(route))


def split_import_string(text: str) -> tuple[str, str] | None:
    """``(module, attribute)`` of a ``module:attribute`` string (dotted names), else None."""
    module, colon, attribute = text.partition(":")
    if not colon:
        return None
    for dotted in (module, attribute):
        if not all(part.isidentifier() for part in dotted.split(".")):
            return None
    return module, attribute


def parse_gateway_config(text: str, *, source: str, env: Mapping[str, str]) -> GatewayConfig:
    """Parse and validate the gateway file's text; ``${NAME}`` values come from ``env``."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "", f"invalid TOML: {exc}") from None
    return _Parser(source, env).gateway(document)


def load_gateway_config(path: str | os.PathLike[str], env: Mapping[str, str]) -> GatewayConfig:
    """Read, parse and validate the gateway file at ``path``."""
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as file:
            text = file.read()
    except FileNotFoundError:
        raise ConfigError(source, "", "no such file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(source, "", f"not valid UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read the file: {exc.strerror or exc}") from None
    return parse_gateway_config(text, source=source, env=env)


def _host(url: str) -> str:
    # urlsplit lower-cases the host already; validated URLs always have one.
    return urlsplit(url).hostname or ""


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return (parts.scheme, parts.hostname or "", parts.port)


def _key(path: str, key: str) -> str:
    """``path.key``, with the key quoted as TOML would need it."""
    # TOML basic strings share JSON's escapes, so json.dumps gives a valid quoted key.
    part = key if _BARE_KEY.fullmatch(key) else json.dumps(key)
    return f"{path}.{part}" if path else part


def _keys_of(cls: type, *, without: Collection[str] = ()) -> tuple[str, ...]:
    """The TOML keys of a config section: its dataclass fields."""
    return tuple(f.name for f in fields(cls) if f.name not in without)


def _describe(value: object) -> str:
    """A value as an error message shows it after "got"."""
    if isinstance(value, bool):
        return f"{'true' if value else 'false'} (a boolean)"
    if isinstance(value, str):
        return repr(value) if len(value) <= 80 else f"{value[:77]!r}..."
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, datetime | date | time):
        return f"a date/time ({value.isoformat()})"
    return type(value).__name__


def _bounds(low: float | None, high: float | None, *, above: float | None = None) -> str:
    """The range part of "expected a number ..."."""
    if above is not None:
        return f"> {above}"
    if high is None:
        return f">= {low}"
    return f"from {low} to {high}"


def _has_control(text: str, *, allow_tab: bool = False) -> bool:
    return any(
        (ord(ch) < 0x20 and not (allow_tab and ch == "\t")) or ord(ch) == 0x7F for ch in text
    )


def route_shape(route: str) -> str:
    """A route with variable names erased, so that /a/<x> and /a/<string:y> compare equal."""

    def shape(match: re.Match[str]) -> str:
        converter = match["converter"] or "string"
        converter = "string" if converter == "default" else converter
        return f"<{converter}({match['arguments'] or ''})>"

    return _ROUTE_VARIABLE.sub(shape, route)


class _Parser:
    """Turns the decoded TOML document into a GatewayConfig, or raises ConfigError."""

    def __init__(self, source: str, env: Mapping[str, str]) -> None:
        self.source = source
        self.env = env

    def fail(self, key_path: str, problem: str) -> NoReturn:
        raise ConfigError(self.source, key_path, problem)

    # -- generic readers ---------------------------------------------------------

    def check_keys(self, table: Mapping[str, object], path: str, allowed: Iterable[str]) -> None:
        known = sorted(allowed)
        for key in table:
            if key not in known:
                self.fail(_key(path, key), f"unknown key; expected one of {', '.join(known)}")

    def table(self, value: object, path: str) -> dict[str, object]:
        if not isinstance(value, dict):
            self.fail(path, f"expected a table, got {_describe(value)}")
        return value

    def sub_table(self, parent: Mapping[str, object], key: str, path: str) -> dict[str, object]:
        # TOML has no null, so None can only mean the key is absent.
        value = parent.get(key)
        return {} if value is None else self.table(value, _key(path, key))

    def tables(self, value: object, path: str, header: str) -> list[dict[str, object]]:
        if not isinstance(value, list):
            self.fail(path, f"expected an array of tables ({header}), got {_describe(value)}")
        return [self.table(item, f"{path}[{index}]") for index, item in enumerate(value)]

    def interpolate(self, text: str, path: str) -> str:
        """Replace ``${NAME}`` and ``${NAME:-default}`` from the environment, ``$$`` by ``$``."""
        if "$" not in text:
            return text
        out: list[str] = []
        start = 0
        while (dollar := text.find("$", start)) >= 0:
            out.append(text[start:dollar])
            following = text[dollar + 1 : dollar + 2]
            if following == "$":
                out.append("$")
                start = dollar + 2
                continue
            close = text.find("}", dollar + 2) if following == "{" else -1
            name = text[dollar + 2 : close] if close >= 0 else ""
            # ${NAME:-default}, as in the shell: the default when NAME is unset or empty.
            name, has_default, default = name.partition(":-")
            # A lone "$" is refused rather than kept: "$HOME" was surely meant as "${HOME}".
            if not _ENV_NAME.fullmatch(name):
                self.fail(
                    path,
                    f"invalid interpolation at character {dollar + 1}: write ${{NAME}} for an "
                    "environment variable, or $$ for a literal '$'",
                )
            if has_default and not self.env.get(name):
                # Taken literally, like a value from the environment.
                out.append(default)
                start = close + 1
                continue
            if name not in self.env:
                self.fail(path, f"environment variable {name} is not set (used as ${{{name}}})")
            # The value is inserted as is, never interpolated again.
            out.append(self.env[name])
            start = close + 1
        out.append(text[start:])
        return "".join(out)

    def string(self, value: object, path: str) -> str:
        if not isinstance(value, str):
            self.fail(path, f"expected a string, got {_describe(value)}")
        return self.interpolate(value, path)

    def required_string(self, table: Mapping[str, object], key: str, path: str, hint: str) -> str:
        if key not in table:
            self.fail(_key(path, key), f"required; expected {hint}")
        return self.string(table[key], _key(path, key))

    def optional_string(
        self, table: Mapping[str, object], key: str, path: str, default: str
    ) -> str:
        return self.string(table[key], _key(path, key)) if key in table else default

    def strings(self, table: Mapping[str, object], key: str, path: str) -> tuple[str, ...] | None:
        """An array of strings, or None when the key is absent."""
        if key not in table:
            return None
        where = _key(path, key)
        value = table[key]
        if not isinstance(value, list):
            self.fail(where, f"expected an array of strings, got {_describe(value)}")
        return tuple(self.string(item, f"{where}[{index}]") for index, item in enumerate(value))

    def boolean(self, table: Mapping[str, object], key: str, path: str, default: bool) -> bool:
        value = table.get(key, default)
        if not isinstance(value, bool):
            self.fail(_key(path, key), f"expected true or false, got {_describe(value)}")
        return value

    def integer(
        self,
        table: Mapping[str, object],
        key: str,
        path: str,
        default: int,
        low: int,
        high: int | None = None,
    ) -> int:
        value = table.get(key, default)
        # bool is an int in Python, but "retries = true" is a mistake, not 1.
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < low
            or (high is not None and value > high)
        ):
            self.fail(
                _key(path, key),
                f"expected an integer {_bounds(low, high)}, got {_describe(value)}",
            )
        return value

    def number(
        self,
        table: Mapping[str, object],
        key: str,
        path: str,
        default: float,
        *,
        above: float | None = None,
        low: float | None = None,
        high: float | None = None,
    ) -> float:
        value = table.get(key, default)
        expected = f"expected a number {_bounds(low, high, above=above)}"
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(_key(path, key), f"{expected}, got {_describe(value)}")
        if not math.isfinite(value):
            self.fail(_key(path, key), f"{expected}, got {_describe(value)} (not a finite number)")
        if (
            (above is not None and value <= above)
            or (low is not None and value < low)
            or (high is not None and value > high)
        ):
            self.fail(_key(path, key), f"{expected}, got {_describe(value)}")
        return float(value)

    def name(self, value: str, path: str, what: str) -> str:
        if not _NAME.fullmatch(value):
            self.fail(path, f"invalid {what} {value!r}; expected {_NAME_RULE}")
        return value

    def header_name(self, value: str, path: str) -> str:
        if not _TOKEN.fullmatch(value):
            self.fail(
                path,
                f"invalid header name {value!r}; expected an HTTP token "
                "(letters, digits and !#$%&'*+-.^_`|~)",
            )
        if value.lower() in _MANAGED_HEADERS:
            self.fail(path, f"{value} is managed by the gateway and cannot be configured")
        return value

    # -- sections --------------------------------------------------------------

    def gateway(self, document: Mapping[str, object]) -> GatewayConfig:
        self.check_keys(document, "", _keys_of(GatewayConfig))
        # Sections in the order the file usually has them, so the first error reported is the
        # first a reader meets; endpoints come last because they refer to upstreams.
        app = self.app(self.sub_table(document, "app", ""))
        server = self.server(self.sub_table(document, "server", ""))
        jobs = self.jobs(self.sub_table(document, "jobs", ""))
        auth_table = self.sub_table(document, "auth", "")
        api_keys = self.api_keys(auth_table)
        rate_limits = self.rate_limits(self.sub_table(document, "rate_limits", ""))
        cors = self.cors(document.get("cors"))
        upstreams = self.upstreams(self.sub_table(document, "upstreams", ""))
        # After the upstreams: a jwks_url on an internal host must be one of theirs.
        jwt = self.jwt(auth_table, upstreams)
        endpoints = self.endpoints(document.get("endpoints"), upstreams)
        if not api_keys and jwt is None:
            self.check_needs_auth(upstreams, endpoints)
        return GatewayConfig(
            app=app,
            server=server,
            jobs=jobs,
            auth=AuthConfig(api_keys=api_keys, jwt=jwt),
            rate_limits=rate_limits,
            cors=cors,
            upstreams=MappingProxyType(upstreams),
            endpoints=endpoints,
        )

    def check_needs_auth(
        self, upstreams: Mapping[str, UpstreamConfig], endpoints: Iterable[EndpointConfig]
    ) -> None:
        """Without credentials, ``auth = "required"`` or ``scopes`` would refuse every call."""
        places = [(_key("upstreams", name), u.auth, u.scopes) for name, u in upstreams.items()]
        places += [(f"endpoints[{i}]", e.auth, e.scopes) for i, e in enumerate(endpoints)]
        for path, auth, scopes in places:
            key = "auth" if auth == "required" else "scopes" if scopes else None
            if key is not None:
                self.fail(
                    _key(path, key),
                    "needs [auth] api_keys or [auth.jwt]: without them every call is refused",
                )

    def app(self, table: Mapping[str, object]) -> AppConfig:
        path = "app"
        self.check_keys(table, path, _keys_of(AppConfig))
        return AppConfig(
            blueprints=self.import_strings(table, "blueprints", path),
            job_kinds=self.import_strings(table, "job_kinds", path),
        )

    def import_strings(self, table: Mapping[str, object], key: str, path: str) -> tuple[str, ...]:
        """Checked for form only: importing runs code, so it is done when the app is built."""
        entries = self.strings(table, key, path) or ()
        where = _key(path, key)
        for index, entry in enumerate(entries):
            if split_import_string(entry) is None:
                self.fail(
                    f"{where}[{index}]",
                    "expected 'module:attribute' with dotted names, e.g. "
                    f"'shop.views:blueprint', got {_describe(entry)}",
                )
            if entry in entries[:index]:
                self.fail(f"{where}[{index}]", f"{entry!r} is listed twice")
        return entries

    def server(self, table: Mapping[str, object]) -> ServerConfig:
        path = "server"
        self.check_keys(table, path, _keys_of(ServerConfig))
        d = ServerConfig()
        return ServerConfig(
            max_body_bytes=self.integer(table, "max_body_bytes", path, d.max_body_bytes, 0),
            sync_threads=self.integer(table, "sync_threads", path, d.sync_threads, 1),
            trusted_proxies=self.integer(table, "trusted_proxies", path, d.trusted_proxies, 0),
            min_upload_rate=self.integer(table, "min_upload_rate", path, d.min_upload_rate, 0),
        )

    def jobs(self, table: Mapping[str, object]) -> JobsConfig:
        path = "jobs"
        self.check_keys(table, path, _keys_of(JobsConfig))
        d = JobsConfig()
        store = self.optional_string(table, "store", path, d.store)
        prefix = next((p for p in JOB_STORE_PREFIXES if store.startswith(p)), None)
        # "memory://" needs nothing more; a file or a server must be named.
        if prefix is None or (prefix != "memory://" and store == prefix):
            self.fail(
                _key(path, "store"),
                "expected memory://, sqlite:///<path> or redis://<host>[:port][/db], "
                f"got {_describe(store)}",
            )
        return JobsConfig(
            store=store,
            max_running=self.integer(table, "max_running", path, d.max_running, 1),
            max_pending=self.integer(table, "max_pending", path, d.max_pending, 0),
            default_timeout=self.number(table, "default_timeout", path, d.default_timeout, above=0),
            result_ttl=self.number(table, "result_ttl", path, d.result_ttl, above=0),
            max_result_bytes=self.integer(table, "max_result_bytes", path, d.max_result_bytes, 1),
        )

    def api_keys(self, table: Mapping[str, object]) -> Mapping[str, str]:
        path = "auth"
        self.check_keys(table, path, _keys_of(AuthConfig))
        where = _key(path, "api_keys")
        keys: dict[str, str] = {}
        owners: dict[str, str] = {}
        for name, value in self.sub_table(table, "api_keys", path).items():
            key_path = _key(where, name)
            self.name(name, key_path, "API key name")
            key = self.string(value, key_path)
            # Never echo a key: error messages end up in logs.
            if len(key) < 16:
                self.fail(key_path, f"expected a key of at least 16 characters, got {len(key)}")
            if not key.isascii() or any(ch.isspace() for ch in key) or _has_control(key):
                self.fail(
                    key_path,
                    "expected a key of visible ASCII characters (it is sent as a Bearer token)",
                )
            if key in owners:
                self.fail(key_path, f"the same key as {_key(where, owners[key])}; keys must differ")
            owners[key] = name
            keys[name] = key
        return MappingProxyType(keys)

    def upstreams(self, table: Mapping[str, object]) -> dict[str, UpstreamConfig]:
        upstreams: dict[str, UpstreamConfig] = {}
        for name, value in table.items():
            path = _key("upstreams", name)
            self.name(name, path, "upstream name")
            upstreams[name] = self.upstream(name, self.table(value, path), path)
        # The address guard decides per host, so one host cannot be both allowed and refused.
        first_by_host: dict[str, UpstreamConfig] = {}
        for upstream, host in (
            (each, _host(url)) for each in upstreams.values() for url in each.urls
        ):
            other = first_by_host.setdefault(host, upstream)
            if other.internal != upstream.internal:
                self.fail(
                    _key(_key("upstreams", upstream.name), "internal"),
                    f"host {host!r} is also used by upstream {other.name!r} with internal = "
                    f"{'true' if other.internal else 'false'}; upstreams on one host must agree",
                )
        return upstreams

    def upstream(self, name: str, table: Mapping[str, object], path: str) -> UpstreamConfig:
        self.check_keys(table, path, _keys_of(UpstreamConfig, without={"name"}))
        d = UpstreamConfig(name=name, base_url="")
        timeout = self.number(table, "timeout", path, d.timeout, above=0)
        connect_timeout = self.number(table, "connect_timeout", path, d.connect_timeout, above=0)
        if connect_timeout > timeout:
            self.fail(
                _key(path, "connect_timeout"),
                f"expected a number > 0 and <= timeout ({timeout:g}), got {connect_timeout:g}",
            )
        return UpstreamConfig(
            name=name,
            **composition.upstream_hosts(self, table, path),
            timeout=timeout,
            connect_timeout=connect_timeout,
            retries=self.integer(table, "retries", path, d.retries, 0, 10),
            max_connections=self.integer(table, "max_connections", path, d.max_connections, 1),
            headers=self.headers(table, path),
            circuit_breaker=self.circuit_breaker(table, path),
            internal=self.boolean(table, "internal", path, d.internal),
            forward_headers=self.forward_headers(table, path),
            follow_redirects=self.integer(table, "follow_redirects", path, 0, 0, 10),
            max_body_bytes=self.integer(table, "max_body_bytes", path, d.max_body_bytes, 1),
            retry_budget=self.number(table, "retry_budget", path, d.retry_budget, low=0, high=1),
            forward_query=self.query_names(table, path) or (),
            forward_identity=self.identity_header(table, path),
            auth=self.auth_mode(table, path),
            scopes=self.scopes(table, path),
            rate_limit=self.rate_limit(table, "rate_limit", path),
        )

    def base_url(self, table: Mapping[str, object], path: str) -> str:
        url = self.required_string(table, "base_url", path, "an http or https URL")
        return self.checked_base_url(url, _key(path, "base_url"))

    def checked_base_url(self, url: str, where: str) -> str:
        """An upstream's base URL, checked, without its trailing '/'."""
        if any(ch.isspace() for ch in url) or _has_control(url):
            self.fail(where, "expected a URL without spaces or control characters")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            self.fail(where, f"not a valid URL ({exc})")
        # Checked first and never echoed: user info is a password.
        if "@" in parts.netloc:
            self.fail(where, "must not contain user info (user:password@); use headers instead")
        if parts.scheme.lower() not in ("http", "https"):
            self.fail(where, f"expected an http or https URL, got {_describe(url)}")
        if not parts.hostname:
            self.fail(where, f"expected a URL with a host, got {_describe(url)}")
        if port == 0:
            self.fail(where, f"expected a port from 1 to 65535, got {_describe(url)}")
        # Paths are appended to the base URL, so a query or fragment there would swallow them.
        if "?" in url or "#" in url:
            self.fail(where, f"expected a URL without query or fragment, got {_describe(url)}")
        return url.rstrip("/")

    def headers(self, table: Mapping[str, object], path: str) -> Mapping[str, str]:
        where = _key(path, "headers")
        headers: dict[str, str] = {}
        seen: dict[str, str] = {}
        for name, value in self.sub_table(table, "headers", path).items():
            key_path = _key(where, name)
            self.header_name(name, key_path)
            if name.lower() in seen:
                self.fail(key_path, f"the same header as {_key(where, seen[name.lower()])}")
            seen[name.lower()] = name
            text = self.string(value, key_path)
            # Values often hold tokens: describe the problem, never the value.
            if _has_control(text, allow_tab=True):
                self.fail(key_path, "header values must not contain control characters (CR, LF)")
            if text != text.strip(" \t"):
                self.fail(key_path, "header values must not start or end with whitespace")
            headers[name] = text
        return MappingProxyType(headers)

    def forward_headers(self, table: Mapping[str, object], path: str) -> tuple[str, ...]:
        return self.forwarded_header_names(table, path) or ()

    def forwarded_header_names(
        self, table: Mapping[str, object], path: str
    ) -> tuple[str, ...] | None:
        names = self.strings(table, "forward_headers", path)
        if names is None:
            return None
        where = _key(path, "forward_headers")
        seen: set[str] = set()
        for index, name in enumerate(names):
            self.header_name(name, f"{where}[{index}]")
            if name.lower() in seen:
                self.fail(f"{where}[{index}]", f"{name} is listed twice")
            seen.add(name.lower())
        return names

    def query_names(self, table: Mapping[str, object], path: str) -> tuple[str, ...] | None:
        names = self.strings(table, "forward_query", path)
        if names is None:
            return None
        where = _key(path, "forward_query")
        for index, name in enumerate(names):
            if not name or _has_control(name) or any(ch in name for ch in "&=#? "):
                self.fail(
                    f"{where}[{index}]",
                    f"expected a query parameter name (no '&', '=', '#', '?' or spaces), "
                    f"got {_describe(name)}",
                )
            if name in names[:index]:
                self.fail(f"{where}[{index}]", f"{name!r} is listed twice")
        return names

    def identity_header(self, table: Mapping[str, object], path: str) -> str | None:
        if "forward_identity" not in table:
            return None
        where = _key(path, "forward_identity")
        name = self.header_name(self.string(table["forward_identity"], where), where)
        if name.lower() in ("authorization", "cookie"):
            self.fail(where, f"{name} carries credentials; name a header such as X-User-Id")
        return name

    def auth_mode(self, table: Mapping[str, object], path: str) -> str | None:
        if "auth" not in table:
            return None
        mode = self.string(table["auth"], _key(path, "auth"))
        if mode not in AUTH_MODES:
            self.fail(_key(path, "auth"), f"expected one of {', '.join(AUTH_MODES)}, got {mode!r}")
        return mode

    def scopes(self, table: Mapping[str, object], path: str) -> tuple[str, ...]:
        scopes = self.strings(table, "scopes", path) or ()
        if scopes and table.get("auth") == "none":
            self.fail(_key(path, "scopes"), 'scopes need a credential; auth = "none" takes none')
        where = _key(path, "scopes")
        for index, scope in enumerate(scopes):
            # RFC 6749 3.3: scope tokens are visible ASCII without '"' or '\\'.
            if not scope or any(not 0x21 <= ord(ch) <= 0x7E or ch in '"\\' for ch in scope):
                self.fail(f"{where}[{index}]", f"expected a scope token, got {_describe(scope)}")
        return scopes

    def rate_limit(self, table: Mapping[str, object], key: str, path: str) -> str | None:
        if key not in table:
            return None
        where = _key(path, key)
        text = self.string(table[key], where)
        try:
            limits_parse(text)
        except ValueError:
            self.fail(where, f"expected a rate such as '10/minute' or '100/second', got {text!r}")
        return text

    def rate_limits(self, table: Mapping[str, object]) -> RateLimitsConfig:
        path = "rate_limits"
        self.check_keys(table, path, _keys_of(RateLimitsConfig))
        d = RateLimitsConfig()
        storage = self.optional_string(table, "storage", path, d.storage)
        if not (
            storage == "memory://" or (storage.startswith("redis://") and storage != "redis://")
        ):
            # Never echo it: a Redis URL may hold a password.
            self.fail(_key(path, "storage"), "expected memory:// or redis://<host>[:port][/db]")
        strategy = self.optional_string(table, "strategy", path, d.strategy)
        if strategy not in ("moving-window", "fixed-window"):
            self.fail(
                _key(path, "strategy"),
                f"expected moving-window or fixed-window, got {strategy!r}",
            )
        return RateLimitsConfig(
            storage=storage, default=self.rate_limit(table, "default", path), strategy=strategy
        )

    def cors(self, value: object) -> CorsConfig | None:
        if value is None:
            return None
        path = "cors"
        table = self.table(value, path)
        self.check_keys(table, path, _keys_of(CorsConfig))
        origins = self.strings(table, "allow_origins", path)
        where = _key(path, "allow_origins")
        if not origins:
            self.fail(where, "required; expected at least one origin such as 'https://app.example'")
        for index, origin in enumerate(origins):
            parts = urlsplit(origin)
            exact = (
                parts.scheme in ("http", "https")
                and parts.netloc
                and not parts.path
                and not parts.query
                and not parts.fragment
                and origin == origin.lower()
            )
            if origin != "*" and not exact:
                self.fail(
                    f"{where}[{index}]",
                    f"expected '*' or an origin such as 'https://app.example' (scheme, host and "
                    f"port, lower case, no path), got {_describe(origin)}",
                )
        d = CorsConfig(allow_origins=())
        credentials = self.boolean(table, "allow_credentials", path, d.allow_credentials)
        if credentials and "*" in origins:
            self.fail(
                _key(path, "allow_credentials"),
                "cannot be true with allow_origins = ['*']; list the origins",
            )
        methods = self.strings(table, "allow_methods", path)
        for index, method in enumerate(methods or ()):
            if method.upper() not in (*METHODS, "HEAD", "OPTIONS"):
                self.fail(f"{_key(path, 'allow_methods')}[{index}]", f"unknown method {method!r}")
        allow_headers = self.strings(table, "allow_headers", path)
        expose_headers = self.strings(table, "expose_headers", path)
        for key, names in (("allow_headers", allow_headers), ("expose_headers", expose_headers)):
            for index, name in enumerate(names or ()):
                if not _TOKEN.fullmatch(name):
                    self.fail(f"{_key(path, key)}[{index}]", f"invalid header name {name!r}")
        return CorsConfig(
            allow_origins=origins,
            allow_methods=tuple(m.upper() for m in methods) if methods else d.allow_methods,
            allow_headers=allow_headers if allow_headers is not None else d.allow_headers,
            expose_headers=expose_headers if expose_headers is not None else d.expose_headers,
            max_age=self.integer(table, "max_age", path, d.max_age, 0, 86400),
            allow_credentials=credentials,
        )

    def jwt(
        self, auth: Mapping[str, object], upstreams: Mapping[str, UpstreamConfig]
    ) -> JwtConfig | None:
        if auth.get("jwt") is None:
            return None
        path = "auth.jwt"
        table = self.table(auth["jwt"], path)
        self.check_keys(table, path, _keys_of(JwtConfig))
        issuer = self.required_string(table, "issuer", path, "the issuer (iss) tokens must carry")
        audiences = self.strings(table, "audiences", path)
        if not audiences:
            self.fail(_key(path, "audiences"), "required; expected at least one audience (aud)")
        secret = self.optional_string(table, "secret", path, "") if "secret" in table else None
        if secret is not None and len(secret) < 32:
            self.fail(_key(path, "secret"), f"expected at least 32 characters, got {len(secret)}")
        d = JwtConfig(issuer="", audiences=())
        algorithms = self.strings(table, "algorithms", path) or d.algorithms
        where = _key(path, "algorithms")
        for index, algorithm in enumerate(algorithms):
            if algorithm.upper().startswith("HS") and algorithm in _JWT_HMAC:
                if secret is None:
                    self.fail(
                        f"{where}[{index}]",
                        f"{algorithm} needs a shared secret: set {path}.secret explicitly",
                    )
            elif algorithm not in _JWT_ASYMMETRIC:
                known = ", ".join(sorted(_JWT_ASYMMETRIC | _JWT_HMAC))
                self.fail(f"{where}[{index}]", f"expected one of {known}, got {algorithm!r}")
        if secret is not None and not any(a in _JWT_HMAC for a in algorithms):
            self.fail(_key(path, "secret"), "set, but algorithms lists no HS256/HS384/HS512")
        public_keys = self.strings(table, "public_keys", path) or ()
        for index, pem in enumerate(public_keys):
            try:
                load_pem_public_key(pem.encode())
            except (ValueError, UnsupportedAlgorithm):
                self.fail(
                    f"{_key(path, 'public_keys')}[{index}]",
                    "expected a PEM public key (-----BEGIN PUBLIC KEY-----)",
                )
        jwks_url = self.jwks_url(table, path, upstreams)
        asymmetric = any(a in _JWT_ASYMMETRIC for a in algorithms)
        if asymmetric and jwks_url is None and not public_keys:
            self.fail(path, "expected jwks_url or public_keys (where the signing keys come from)")
        scopes_claim = self.optional_string(table, "scopes_claim", path, d.scopes_claim)
        if not scopes_claim:
            self.fail(_key(path, "scopes_claim"), "expected a claim name such as 'scope' or 'scp'")
        return JwtConfig(
            issuer=issuer,
            audiences=audiences,
            jwks_url=jwks_url,
            public_keys=public_keys,
            algorithms=algorithms,
            secret=secret,
            leeway=self.number(table, "leeway", path, d.leeway, low=0, high=300),
            scopes_claim=scopes_claim,
        )

    def jwks_url(
        self, table: Mapping[str, object], path: str, upstreams: Mapping[str, UpstreamConfig]
    ) -> str | None:
        if "jwks_url" not in table:
            return None
        where = _key(path, "jwks_url")
        url = self.string(table["jwks_url"], where)
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            self.fail(where, f"not a valid URL ({exc})")
        if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
            self.fail(where, "expected an http or https URL with a host and no user info")
        internal = {_host(url) for u in upstreams.values() if u.internal for url in u.urls}
        if parts.hostname in internal:
            # The session lets internal hosts be private only on their upstreams' origins.
            origins = {_origin(url) for u in upstreams.values() if u.internal for url in u.urls}
            if (parts.scheme, parts.hostname, port) not in origins:
                self.fail(
                    where,
                    "an internal host is allowed only on the origin (scheme, host, port) of an "
                    "upstream with internal = true",
                )
        return url

    def circuit_breaker(self, table: Mapping[str, object], path: str) -> CircuitBreakerConfig:
        where = _key(path, "circuit_breaker")
        section = self.sub_table(table, "circuit_breaker", path)
        self.check_keys(section, where, _keys_of(CircuitBreakerConfig))
        d = CircuitBreakerConfig()
        return CircuitBreakerConfig(
            failures=self.integer(section, "failures", where, d.failures, 1),
            reset_after=self.number(section, "reset_after", where, d.reset_after, above=0),
        )

    def endpoints(
        self, value: object, upstreams: Mapping[str, UpstreamConfig]
    ) -> tuple[EndpointConfig, ...]:
        if value is None:
            return ()
        endpoints: list[EndpointConfig] = []
        defined: dict[tuple[str, str], str] = {}
        for index, table in enumerate(self.tables(value, "endpoints", "[[endpoints]]")):
            path = f"endpoints[{index}]"
            endpoint = self.endpoint(table, path, upstreams)
            # Flask would silently route the second of two equal rules to the first.
            route = (endpoint.method, route_shape(endpoint.path))
            if route in defined:
                self.fail(
                    _key(path, "path"),
                    f"{endpoint.method} {endpoint.path} is already defined by {defined[route]}",
                )
            defined[route] = path
            endpoints.append(endpoint)
        return tuple(endpoints)

    def endpoint(
        self, table: Mapping[str, object], path: str, upstreams: Mapping[str, UpstreamConfig]
    ) -> EndpointConfig:
        self.check_keys(table, path, _keys_of(EndpointConfig))
        route = self.route(table, path)
        written = self.optional_string(table, "method", path, "GET")
        method = written.upper()
        if method not in METHODS:
            self.fail(
                _key(path, "method"), f"expected one of {', '.join(METHODS)}, got {written!r}"
            )
        d = EndpointConfig(path=route, backends=())
        where = _key(path, "backends")
        if "backends" not in table:
            self.fail(where, "required; expected at least one [[endpoints.backends]] table")
        raw_backends = self.tables(table["backends"], where, "[[endpoints.backends]]")
        if not raw_backends:
            self.fail(where, "expected at least one backend, got an empty array")
        variables = route_variables(route)
        backends: list[BackendConfig] = []
        groups: dict[str, str] = {}
        for index, backend_table in enumerate(raw_backends):
            backend_path = f"{where}[{index}]"
            backend = self.backend(backend_table, backend_path, route, variables, upstreams)
            if backend.group is not None:
                if backend.group in groups:
                    self.fail(
                        _key(backend_path, "group"),
                        f"group {backend.group!r} is already used by {groups[backend.group]}",
                    )
                groups[backend.group] = backend_path
            backends.append(backend)
        composed = composition.endpoint_fields(self, table, path, method, backends)
        return EndpointConfig(
            path=route,
            method=method,
            timeout=self.number(table, "timeout", path, d.timeout, above=0),
            cache_ttl=self.number(table, "cache_ttl", path, d.cache_ttl, low=0),
            background=self.boolean(table, "background", path, d.background),
            auth=self.auth_mode(table, path),
            scopes=self.scopes(table, path),
            rate_limit=self.rate_limit(table, "rate_limit", path),
            on_conflict=composed.on_conflict,
            allow_partial_writes=composed.allow_partial_writes,
            backends=tuple(backends),
        )

    def route(self, table: Mapping[str, object], path: str) -> str:
        where = _key(path, "path")
        route = self.required_string(table, "path", path, "a route such as '/profiles/<user_id>'")
        if not route.startswith("/"):
            self.fail(where, f"expected a route starting with '/', got {_describe(route)}")
        if any(ch.isspace() for ch in route) or _has_control(route) or "?" in route or "#" in route:
            self.fail(
                where,
                f"expected a route without spaces, '?' or '#', got {_describe(route)}",
            )
        seen: set[str] = set()
        for match in _ROUTE_VARIABLE.finditer(route):
            converter = match["converter"]
            if converter is not None and converter not in _CONVERTERS:
                self.fail(
                    where,
                    f"unknown converter {converter!r} in {match[0]}; "
                    f"expected one of {', '.join(sorted(_CONVERTERS))}",
                )
            if match["name"] in seen:
                self.fail(where, f"variable {match['name']!r} appears twice")
            seen.add(match["name"])
        rest = _ROUTE_VARIABLE.sub("", route)
        if "<" in rest or ">" in rest:
            self.fail(
                where,
                f"malformed variable in {_describe(route)}; expected <name> or <converter:name>",
            )
        # Compared by path segment: "/jobs/x" clashes with Fanout's routes, "/jobsearch" does not.
        for prefix in RESERVED_PREFIXES:
            if route == prefix or route.startswith(f"{prefix}/"):
                self.fail(where, f"{prefix} is reserved for the gateway's own routes")
        return route

    def backend(
        self,
        table: Mapping[str, object],
        path: str,
        route: str,
        variables: frozenset[str],
        upstreams: Mapping[str, UpstreamConfig],
    ) -> BackendConfig:
        self.check_keys(table, path, _keys_of(BackendConfig))
        d = BackendConfig(upstream="", path="")
        upstream = self.required_string(table, "upstream", path, "the name of an upstream")
        if upstream not in upstreams:
            configured = (
                f"configured: {', '.join(sorted(upstreams))}"
                if upstreams
                else "no [upstreams.<name>] is configured"
            )
            self.fail(_key(path, "upstream"), f"unknown upstream {upstream!r}; {configured}")
        group = self.optional_string(table, "group", path, "") if "group" in table else None
        if group is not None:
            self.name(group, _key(path, "group"), "group name")
            if group == _ERRORS_MEMBER:
                self.fail(_key(path, "group"), f"{_ERRORS_MEMBER} is where failures are reported")
        allow = self.field_paths(table, "allow", path)
        deny = self.field_paths(table, "deny", path)
        if allow is not None and deny is not None:
            self.fail(_key(path, "deny"), "allow and deny are mutually exclusive; keep one")
        pass_query = self.boolean(table, "pass_query", path, d.pass_query)
        forward_query = self.query_names(table, path)
        if pass_query and forward_query is not None:
            self.fail(
                _key(path, "forward_query"),
                "pass_query = true already passes every parameter; keep one",
            )
        return BackendConfig(
            upstream=upstream,
            path=self.backend_path(table, path, route, variables),
            pass_query=pass_query,
            group=group,
            allow=allow or (),
            deny=deny or (),
            required=self.boolean(table, "required", path, d.required),
            forward_headers=self.forwarded_headers_of(table, path, upstreams[upstream]),
            forward_query=forward_query,
            forward_identity=self.identity_header(table, path),
            **composition.backend_fields(self, table, path, group=group),
        )

    def forwarded_headers_of(
        self, table: Mapping[str, object], path: str, upstream: UpstreamConfig
    ) -> tuple[str, ...] | None:
        names = self.forwarded_header_names(table, path)
        fixed = {name.lower() for name in upstream.headers}
        for index, name in enumerate(names or ()):
            if name.lower() in fixed:
                self.fail(
                    f"{_key(path, 'forward_headers')}[{index}]",
                    f"upstream {upstream.name!r} sets {name} in its headers, which would replace "
                    "the client's; forward it or set it, not both",
                )
        return names

    def backend_path(
        self, table: Mapping[str, object], path: str, route: str, variables: frozenset[str]
    ) -> str:
        where = _key(path, "path")
        target = self.required_string(table, "path", path, "a path such as '/users/{user_id}'")
        # "//host" would be read as another host by anything that resolves it as a reference.
        if not target.startswith("/") or target.startswith("//"):
            self.fail(where, f"expected a path starting with a single '/', got {_describe(target)}")
        if any(ch.isspace() for ch in target) or _has_control(target) or "#" in target:
            self.fail(where, f"expected a path without spaces or '#', got {_describe(target)}")
        for match in _PLACEHOLDER.finditer(target):
            name = match[1]
            if is_reference(name, for_each="for_each" in table):
                continue  # an earlier answer's value: config_composition checks it
            if not _IDENTIFIER.fullmatch(name):
                self.fail(where, f"invalid placeholder {match[0]}; expected {{name}}")
            if name not in variables:
                known = ", ".join(sorted(variables)) or "none"
                self.fail(
                    where,
                    f"placeholder {match[0]} is not a variable of the endpoint path {route!r} "
                    f"(variables: {known})",
                )
        if any(brace in _PLACEHOLDER.sub("", target) for brace in "{}"):
            self.fail(where, f"unbalanced '{{' or '}}' in {_describe(target)}")
        return target

    def field_paths(
        self, table: Mapping[str, object], key: str, path: str
    ) -> tuple[str, ...] | None:
        entries = self.strings(table, key, path)
        if entries is None:
            return None
        where = _key(path, key)
        # An empty list would read as "keep nothing" or "filter nothing": refuse the ambiguity.
        if not entries:
            self.fail(where, "expected at least one field path, got an empty array")
        for index, entry in enumerate(entries):
            if not _FIELD_PATH.fullmatch(entry):
                self.fail(
                    f"{where}[{index}]",
                    f"expected a dotted field path such as 'user.name', got {_describe(entry)}",
                )
            if entry in entries[:index]:
                self.fail(f"{where}[{index}]", f"{entry!r} is listed twice")
        return entries
