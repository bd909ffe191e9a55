"""The gateway file: parsing, defaults, interpolation, and one precise error per mistake."""

from __future__ import annotations

import pickle
from pathlib import Path
from types import MappingProxyType

import pytest

from fanout.core.config import (
    AppConfig,
    AuthConfig,
    BackendConfig,
    CircuitBreakerConfig,
    ConfigError,
    EndpointConfig,
    GatewayConfig,
    JobsConfig,
    ServerConfig,
    UpstreamConfig,
    load_gateway_config,
    parse_gateway_config,
    route_variables,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "gateway.toml"

USERS = """
[upstreams.users]
base_url = "https://users.example.com"
"""

ENDPOINT = """
[[endpoints]]
path = "/profiles/<user_id>"

  [[endpoints.backends]]
  upstream = "users"
  path = "/users/{user_id}"
"""

SECOND_BACKEND = """
  [[endpoints.backends]]
  upstream = "users"
  path = "/users/{user_id}/avatar"
"""


def parse(text: str, env: dict[str, str] | None = None) -> GatewayConfig:
    return parse_gateway_config(text, source="gateway.toml", env=env or {})


# -- the example file ------------------------------------------------------------------


def test_the_example_file_parses_and_uses_only_the_demo_upstream() -> None:
    config = load_gateway_config(EXAMPLE, env={})
    assert list(config.upstreams) == ["demo"]
    demo = config.upstreams["demo"]
    assert demo.base_url == "http://127.0.0.1:8081"
    assert demo.internal
    assert config.internal_hosts() == frozenset({"127.0.0.1"})
    assert config.jobs.store == "sqlite:///var/fanout/jobs.db"
    assert config.auth.api_keys == {}
    assert 2 <= len(config.endpoints) <= 3

    profiles = config.endpoints[0]
    assert profiles.path == "/profiles/<int:user_id>"
    assert profiles.method == "GET"
    by_group = {backend.group: backend for backend in profiles.backends}
    assert by_group["user"].allow == ("id", "name", "plan")
    assert by_group["user"].path == "/users/{user_id}"
    assert by_group["orders"].required is False
    assert by_group["orders"].path == "/orders?user={user_id}"
    assert "recommendations" in by_group
    assert any(endpoint.path == "/weather/<city>" for endpoint in config.endpoints)


def test_the_example_file_registers_the_demo_view() -> None:
    config = load_gateway_config(EXAMPLE, env={})
    assert config.app == AppConfig(blueprints=("handlers.demo:blueprint",), job_kinds=())


def test_the_app_table_keeps_its_import_strings_in_order() -> None:
    config = parse(
        '[app]\nblueprints = ["shop.views:blueprint", "${VIEWS}:bp"]\n'
        'job_kinds = ["shop.jobs:REPORT", "shop.jobs:kinds.nightly"]',
        env={"VIEWS": "reports.views"},
    )
    assert config.app.blueprints == ("shop.views:blueprint", "reports.views:bp")
    assert config.app.job_kinds == ("shop.jobs:REPORT", "shop.jobs:kinds.nightly")
    assert parse("").app == AppConfig()


def test_the_example_file_needs_no_environment() -> None:
    # A user must be able to start from the template without setting anything:
    # a variable it reads has a default (${NAME:-default}).
    values = "".join(
        line.split("#", 1)[0] for line in EXAMPLE.read_text(encoding="utf-8").splitlines()
    )
    assert all(":-" in used.split("}", 1)[0] for used in values.split("${")[1:])


# -- defaults --------------------------------------------------------------------------


def test_an_empty_file_is_a_valid_config_of_defaults() -> None:
    config = parse("")
    assert config == GatewayConfig()
    assert config.server == ServerConfig(
        max_body_bytes=1_048_576, sync_threads=64, trusted_proxies=0
    )
    assert config.jobs == JobsConfig(
        store="sqlite:///var/fanout/jobs.db",
        max_running=100,
        max_pending=1000,
        default_timeout=300.0,
        result_ttl=86400.0,
    )
    assert config.auth == AuthConfig(api_keys={})
    assert config.upstreams == {}
    assert config.endpoints == ()
    assert config.internal_hosts() == frozenset()


def test_upstream_endpoint_and_backend_defaults() -> None:
    config = parse(USERS + ENDPOINT)
    upstream = config.upstreams["users"]
    assert upstream == UpstreamConfig(
        name="users",
        base_url="https://users.example.com",
        timeout=2.0,
        connect_timeout=0.5,
        retries=0,
        max_connections=100,
        headers={},
        circuit_breaker=CircuitBreakerConfig(failures=5, reset_after=30.0),
        internal=False,
        forward_headers=(),
        follow_redirects=0,
        max_body_bytes=8 * 1024 * 1024,
        retry_budget=0.2,
    )
    assert config.endpoints == (
        EndpointConfig(
            path="/profiles/<user_id>",
            method="GET",
            timeout=3.0,
            cache_ttl=0.0,
            background=False,
            backends=(
                BackendConfig(
                    upstream="users",
                    path="/users/{user_id}",
                    pass_query=False,
                    group=None,
                    allow=(),
                    deny=(),
                    required=False,
                ),
            ),
        ),
    )


def test_values_are_normalised() -> None:
    config = parse(
        """
        [upstreams.users]
        base_url = "https://Users.Example.com/api/v1/"
        timeout = 5
        internal = true

        [[endpoints]]
        path = "/x/<int:id>"
        method = "post"
        cache_ttl = 10

          [[endpoints.backends]]
          upstream = "users"
          path = "/things/{id}"
        """
    )
    upstream = config.upstreams["users"]
    assert upstream.base_url == "https://Users.Example.com/api/v1"  # trailing "/" stripped
    assert upstream.timeout == 5.0
    assert isinstance(upstream.timeout, float)
    assert config.endpoints[0].method == "POST"
    assert config.endpoints[0].cache_ttl == 10.0
    assert config.internal_hosts() == frozenset({"users.example.com"})


def test_the_config_is_frozen_read_only_and_hashable() -> None:
    config = parse(USERS + 'headers = { "X-Api-Key" = "k" }\n' + ENDPOINT)
    upstream = config.upstreams["users"]
    with pytest.raises(AttributeError):
        upstream.timeout = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        upstream.headers["X-Api-Key"] = "other"  # type: ignore[index]
    with pytest.raises(TypeError):
        config.upstreams["other"] = upstream  # type: ignore[index]
    assert isinstance(config.upstreams, MappingProxyType)
    # Usable as a dict key or cache key, and equal configs hash equal.
    assert hash(config) == hash(parse(USERS + 'headers = { "X-Api-Key" = "k" }\n' + ENDPOINT))


def test_a_full_upstream_and_backend() -> None:
    config = parse(
        """
        [upstreams.users]
        base_url = "http://[::1]:8080"
        timeout = 1.5
        connect_timeout = 1.5
        retries = 10
        max_connections = 1
        headers = { Authorization = "Bearer abc", "X-Trace" = "on" }
        circuit_breaker = { failures = 1, reset_after = 0.5 }
        internal = true
        forward_headers = ["Authorization", "Cookie"]
        follow_redirects = 3
        max_body_bytes = 1
        retry_budget = 0

        [[endpoints]]
        path = "/a/<path:rest>"
        method = "DELETE"
        timeout = 0.25
        background = true

          [[endpoints.backends]]
          upstream = "users"
          path = "/b/{rest}?q=1"
          pass_query = true
          group = "b-1"
          deny = ["secret", "nested.token"]
          required = true
        """
    )
    upstream = config.upstreams["users"]
    assert upstream.headers == {"Authorization": "Bearer abc", "X-Trace": "on"}
    assert upstream.circuit_breaker == CircuitBreakerConfig(failures=1, reset_after=0.5)
    assert upstream.forward_headers == ("Authorization", "Cookie")
    assert (upstream.retries, upstream.follow_redirects, upstream.retry_budget) == (10, 3, 0.0)
    assert config.internal_hosts() == frozenset({"::1"})
    backend = config.endpoints[0].backends[0]
    assert backend.deny == ("secret", "nested.token")
    assert (backend.group, backend.pass_query, backend.required) == ("b-1", True, True)


def test_api_keys() -> None:
    config = parse(
        '[auth]\napi_keys = { reporting = "0123456789abcdef", ops = "fedcba9876543210" }'
    )
    assert config.auth.api_keys == {"reporting": "0123456789abcdef", "ops": "fedcba9876543210"}


# -- interpolation ---------------------------------------------------------------------


def test_interpolation_fills_every_string_value_from_the_mapping_given() -> None:
    env = {
        "USERS_URL": "https://users.internal.example/",
        "TOKEN": "s3cret",
        "FWD": "Authorization",
        "KEY": "k" * 20,
        "STORE": "redis://cache:6379/0",
    }
    config = parse(
        """
        [jobs]
        store = "${STORE}"
        [auth]
        api_keys = { reporting = "${KEY}" }
        [upstreams.users]
        base_url = "${USERS_URL}"
        headers = { Authorization = "Bearer ${TOKEN}" }
        forward_headers = ["${FWD}"]
        """,
        env,
    )
    upstream = config.upstreams["users"]
    # Validated after substitution: the trailing "/" of the variable's value is stripped.
    assert upstream.base_url == "https://users.internal.example"
    assert upstream.headers == {"Authorization": "Bearer s3cret"}
    assert upstream.forward_headers == ("Authorization",)
    assert config.auth.api_keys == {"reporting": "k" * 20}
    assert config.jobs.store == "redis://cache:6379/0"


def test_interpolated_values_are_validated() -> None:
    with pytest.raises(ConfigError) as caught:
        parse(USERS.replace("https://users.example.com", "${URL}"), {"URL": "ftp://files"})
    assert caught.value.key_path == "upstreams.users.base_url"
    assert "'ftp://files'" in str(caught.value)


def test_a_missing_variable_names_the_key_and_the_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        parse(USERS + 'headers = { Authorization = "Bearer ${USERS_TOKEN}" }', {"OTHER": "x"})
    error = caught.value
    assert error.key_path == "upstreams.users.headers.Authorization"
    assert "USERS_TOKEN" in error.problem
    assert str(error) == (
        "gateway.toml: upstreams.users.headers.Authorization: "
        "environment variable USERS_TOKEN is not set (used as ${USERS_TOKEN})"
    )


def test_a_missing_variable_inside_an_array_names_the_item() -> None:
    with pytest.raises(ConfigError) as caught:
        parse(USERS + 'forward_headers = ["Cookie", "${HEADER}"]')
    assert caught.value.key_path == "upstreams.users.forward_headers[1]"
    assert "HEADER" in caught.value.problem


def test_double_dollar_is_a_literal_dollar_and_values_are_not_interpolated_twice() -> None:
    config = parse(
        USERS + 'headers = { "X-Price" = "$$5 ${A} $${B}", "X-Raw" = "${C}" }',
        {"A": "a", "C": "${A}$$"},
    )
    assert config.upstreams["users"].headers == {"X-Price": "$5 a ${B}", "X-Raw": "${A}$$"}


@pytest.mark.parametrize("value", ["$HOME", "${", "${}", "${1X}", "${A B}", "tail $"])
def test_a_malformed_interpolation_is_an_error(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(USERS + f'headers = {{ "X-A" = "{value}" }}', {"HOME": "/root"})
    assert caught.value.key_path == "upstreams.users.headers.X-A"
    assert "$$" in caught.value.problem


# -- errors ----------------------------------------------------------------------------

BROKEN: list[tuple[str, str | None, str, str]] = [
    # (id, file text or None for no file, key path, part of the problem)
    ("missing file", None, "", "no such file"),
    ("invalid TOML", "[server\nsync_threads = 3", "", "invalid TOML: "),
    ("invalid TOML value", "[server]\nsync_threads = three", "", "invalid TOML: "),
    ("unknown top-level key", "timout = 1", "timout", "unknown key; expected one of app, auth,"),
    (
        "unknown [app] key",
        '[app]\nviews = ["shop:bp"]',
        "app.views",
        "unknown key; expected one of blueprints, job_kinds",
    ),
    ("[app] not a table", 'app = "shop:bp"', "app", "expected a table, got 'shop:bp'"),
    (
        "blueprints not an array",
        '[app]\nblueprints = "shop:bp"',
        "app.blueprints",
        "expected an array of strings, got 'shop:bp'",
    ),
    (
        "blueprint not a string",
        "[app]\nblueprints = [1]",
        "app.blueprints[0]",
        "expected a string, got 1",
    ),
    (
        "blueprint without an attribute",
        '[app]\nblueprints = ["shop.views"]',
        "app.blueprints[0]",
        "expected 'module:attribute' with dotted names, e.g. 'shop.views:blueprint', "
        "got 'shop.views'",
    ),
    (
        "job kind with a path, not a module",
        '[app]\njob_kinds = ["ok:kind", "shop/jobs.py:kind"]',
        "app.job_kinds[1]",
        "expected 'module:attribute' with dotted names",
    ),
    (
        "job kind with an empty attribute",
        '[app]\njob_kinds = ["shop.jobs:"]',
        "app.job_kinds[0]",
        "expected 'module:attribute'",
    ),
    (
        "blueprint with a bad dotted name",
        '[app]\nblueprints = ["shop..views:bp"]',
        "app.blueprints[0]",
        "expected 'module:attribute'",
    ),
    (
        "blueprint listed twice",
        '[app]\nblueprints = ["shop:bp", "shop:bp"]',
        "app.blueprints[1]",
        "'shop:bp' is listed twice",
    ),
    ("unknown server key", "[server]\nmax_body = 1", "server.max_body", "unknown key"),
    ("unknown jobs key", "[jobs]\nttl = 1", "jobs.ttl", "expected one of default_timeout,"),
    ("unknown auth key", "[auth]\nkeys = {}", "auth.keys", "unknown key"),
    ("unknown upstream key", USERS + "timout = 2", "upstreams.users.timout", "unknown key"),
    (
        "unknown circuit breaker key",
        USERS + "circuit_breaker = { failure = 3 }",
        "upstreams.users.circuit_breaker.failure",
        "expected one of failures, reset_after",
    ),
    (
        "unknown endpoint key",
        USERS + ENDPOINT.replace("path", "cache = 1\npath", 1),
        "endpoints[0].cache",
        "unknown key",
    ),
    (
        "unknown backend key",
        USERS + ENDPOINT + "fields = []",
        "endpoints[0].backends[0].fields",
        "unknown key",
    ),
    ("section not a table", "server = 1", "server", "expected a table, got 1"),
    ("upstream not a table", "[upstreams]\nusers = 'x'", "upstreams.users", "expected a table"),
    (
        "endpoints not an array",
        "[endpoints]\npath = '/x'",
        "endpoints",
        "expected an array of tables",
    ),
    (
        "string for a number",
        USERS + "timeout = 'fast'",
        "upstreams.users.timeout",
        "expected a number > 0, got 'fast'",
    ),
    (
        "bool for an int",
        USERS + "retries = true",
        "upstreams.users.retries",
        "expected an integer from 0 to 10, got true (a boolean)",
    ),
    ("bool for a number", USERS + "timeout = false", "upstreams.users.timeout", "got false"),
    (
        "float for an int",
        USERS + "max_connections = 1.5",
        "upstreams.users.max_connections",
        "expected an integer >= 1, got 1.5",
    ),
    (
        "string for a bool",
        USERS + "internal = 'yes'",
        "upstreams.users.internal",
        "expected true or false, got 'yes'",
    ),
    ("number for a string", "[jobs]\nstore = 5", "jobs.store", "expected a string, got 5"),
    (
        "string for an array",
        USERS + "forward_headers = 'Cookie'",
        "upstreams.users.forward_headers",
        "expected an array of strings",
    ),
    (
        "number in a string array",
        USERS + "forward_headers = ['Cookie', 3]",
        "upstreams.users.forward_headers[1]",
        "expected a string, got 3",
    ),
    ("zero timeout", USERS + "timeout = 0", "upstreams.users.timeout", "> 0, got 0"),
    ("infinite timeout", USERS + "timeout = inf", "upstreams.users.timeout", "not a finite number"),
    ("not-a-number timeout", USERS + "timeout = nan", "upstreams.users.timeout", "got nan"),
    (
        "connect timeout over timeout",
        USERS + "timeout = 1\nconnect_timeout = 2",
        "upstreams.users.connect_timeout",
        "<= timeout (1)",
    ),
    ("too many retries", USERS + "retries = 11", "upstreams.users.retries", "from 0 to 10, got 11"),
    (
        "negative redirects",
        USERS + "follow_redirects = -1",
        "upstreams.users.follow_redirects",
        "got -1",
    ),
    (
        "retry budget over 1",
        USERS + "retry_budget = 1.5",
        "upstreams.users.retry_budget",
        "expected a number from 0 to 1, got 1.5",
    ),
    ("zero max body", USERS + "max_body_bytes = 0", "upstreams.users.max_body_bytes", ">= 1"),
    (
        "zero breaker failures",
        USERS + "circuit_breaker = { failures = 0 }",
        "upstreams.users.circuit_breaker.failures",
        ">= 1",
    ),
    ("zero sync threads", "[server]\nsync_threads = 0", "server.sync_threads", ">= 1, got 0"),
    (
        "negative trusted proxies",
        "[server]\ntrusted_proxies = -1",
        "server.trusted_proxies",
        ">= 0",
    ),
    ("zero max running", "[jobs]\nmax_running = 0", "jobs.max_running", ">= 1"),
    ("zero result ttl", "[jobs]\nresult_ttl = 0", "jobs.result_ttl", "> 0"),
    ("unknown job store", "[jobs]\nstore = 'postgres://db'", "jobs.store", "'postgres://db'"),
    (
        "sqlite store without a path",
        "[jobs]\nstore = 'sqlite:///'",
        "jobs.store",
        "sqlite:///<path>",
    ),
    ("missing base_url", "[upstreams.users]\ntimeout = 1", "upstreams.users.base_url", "required"),
    (
        "ftp base_url",
        USERS.replace("https://", "ftp://"),
        "upstreams.users.base_url",
        "expected an http or https URL, got 'ftp://users.example.com'",
    ),
    (
        "base_url without a scheme",
        USERS.replace("https://", ""),
        "upstreams.users.base_url",
        "expected an http or https URL",
    ),
    (
        "base_url without a host",
        USERS.replace("users.example.com", ""),
        "upstreams.users.base_url",
        "expected a URL with a host",
    ),
    (
        "base_url with userinfo",
        USERS.replace("https://", "https://bob:hunter2@"),
        "upstreams.users.base_url",
        "must not contain user info",
    ),
    (
        "base_url with a query",
        USERS.replace(".com", ".com/?v=1"),
        "upstreams.users.base_url",
        "without query or fragment",
    ),
    (
        "base_url with a fragment",
        USERS.replace(".com", ".com#top"),
        "upstreams.users.base_url",
        "without query or fragment",
    ),
    (
        "base_url with a bad port",
        USERS.replace(".com", ".com:99999"),
        "upstreams.users.base_url",
        "not a valid URL",
    ),
    (
        "base_url with a space",
        USERS.replace(".com", ".com/a b"),
        "upstreams.users.base_url",
        "without spaces",
    ),
    (
        "bad upstream name",
        "[upstreams.'bad name']\nbase_url = 'https://x.example'",
        'upstreams."bad name"',
        "invalid upstream name 'bad name'",
    ),
    (
        "bad header name",
        USERS + "headers = { 'Bad Header' = 'x' }",
        'upstreams.users.headers."Bad Header"',
        "expected an HTTP token",
    ),
    (
        "header value with a newline",
        USERS + 'headers = { X-A = "a\\r\\nHost: evil" }',
        "upstreams.users.headers.X-A",
        "control characters",
    ),
    (
        "header twice in another case",
        USERS + "headers = { X-A = 'a', x-a = 'b' }",
        "upstreams.users.headers.x-a",
        "the same header as upstreams.users.headers.X-A",
    ),
    (
        "framing header",
        USERS + "headers = { Content-Length = '3' }",
        "upstreams.users.headers.Content-Length",
        "managed by the gateway",
    ),
    (
        "hop-by-hop forwarded header",
        USERS + "forward_headers = ['Connection']",
        "upstreams.users.forward_headers[0]",
        "managed by the gateway",
    ),
    (
        "internal host clash",
        USERS + "internal = false\n[upstreams.admin]\n"
        "base_url = 'http://USERS.example.com:8080'\ninternal = true",
        "upstreams.admin.internal",
        "'users.example.com' is also used by upstream 'users'",
    ),
    (
        "short api key",
        "[auth]\napi_keys = { reporting = 'short' }",
        "auth.api_keys.reporting",
        "at least 16 characters, got 5",
    ),
    (
        "empty api key",
        "[auth]\napi_keys = { reporting = '' }",
        "auth.api_keys.reporting",
        "at least 16 characters, got 0",
    ),
    (
        "api key with a space",
        "[auth]\napi_keys = { reporting = '0123456789 abcdef' }",
        "auth.api_keys.reporting",
        "visible ASCII",
    ),
    (
        "duplicate api key",
        "[auth]\napi_keys = { a = '0123456789abcdef', b = '0123456789abcdef' }",
        "auth.api_keys.b",
        "the same key as auth.api_keys.a",
    ),
    (
        "bad api key name",
        "[auth]\napi_keys = { 'a b' = '0123456789abcdef' }",
        'auth.api_keys."a b"',
        "invalid API key name",
    ),
    (
        "endpoint without a path",
        USERS + ENDPOINT.replace('path = "/profiles/<user_id>"', ""),
        "endpoints[0].path",
        "required",
    ),
    (
        "endpoint path without a slash",
        USERS + ENDPOINT.replace('"/profiles/', '"profiles/'),
        "endpoints[0].path",
        "starting with '/'",
    ),
    (
        "malformed route variable",
        USERS + ENDPOINT.replace("<user_id>", "<user_id"),
        "endpoints[0].path",
        "malformed variable",
    ),
    (
        "unknown route converter",
        USERS + ENDPOINT.replace("<user_id>", "<number:user_id>"),
        "endpoints[0].path",
        "unknown converter 'number'",
    ),
    (
        "route variable twice",
        USERS + ENDPOINT.replace("<user_id>", "<user_id>/<int:user_id>"),
        "endpoints[0].path",
        "'user_id' appears twice",
    ),
    (
        "reserved prefix",
        USERS + ENDPOINT.replace("/profiles", "/jobs/report"),
        "endpoints[0].path",
        "/jobs is reserved",
    ),
    (
        "reserved path",
        USERS + ENDPOINT.replace("/profiles/<user_id>", "/metrics"),
        "endpoints[0].path",
        "/metrics is reserved",
    ),
    (
        "bad method",
        USERS + ENDPOINT.replace("path =", "method = 'fetch'\npath =", 1),
        "endpoints[0].method",
        "expected one of GET, POST, PUT, PATCH, DELETE, got 'fetch'",
    ),
    (
        "negative cache ttl",
        USERS + ENDPOINT.replace("path =", "cache_ttl = -1\npath =", 1),
        "endpoints[0].cache_ttl",
        ">= 0, got -1",
    ),
    (
        "duplicate endpoint",
        USERS
        + ENDPOINT
        + ENDPOINT.replace("<user_id>", "<string:uid>").replace("{user_id}", "{uid}"),
        "endpoints[1].path",
        "GET /profiles/<string:uid> is already defined by endpoints[0]",
    ),
    (
        "endpoint without backends",
        USERS + '[[endpoints]]\npath = "/x"',
        "endpoints[0].backends",
        "required",
    ),
    (
        "empty backends",
        USERS + '[[endpoints]]\npath = "/x"\nbackends = []',
        "endpoints[0].backends",
        "at least one backend",
    ),
    (
        "backend without an upstream",
        USERS + ENDPOINT.replace('upstream = "users"', ""),
        "endpoints[0].backends[0].upstream",
        "required",
    ),
    (
        "unknown upstream in a backend",
        USERS + ENDPOINT.replace('"users"', '"orders"'),
        "endpoints[0].backends[0].upstream",
        "unknown upstream 'orders'; configured: users",
    ),
    (
        "upstream with no upstreams configured",
        ENDPOINT,
        "endpoints[0].backends[0].upstream",
        "no [upstreams.<name>] is configured",
    ),
    (
        "placeholder not in the route",
        USERS + ENDPOINT.replace("{user_id}", "{id}"),
        "endpoints[0].backends[0].path",
        "placeholder {id} is not a variable",
    ),
    (
        "unbalanced placeholder",
        USERS + ENDPOINT.replace("{user_id}", "{user_id"),
        "endpoints[0].backends[0].path",
        "unbalanced",
    ),
    (
        "backend path without a slash",
        USERS + ENDPOINT.replace('"/users/', '"users/'),
        "endpoints[0].backends[0].path",
        "starting with a single '/'",
    ),
    (
        "backend path to another host",
        USERS + ENDPOINT.replace('"/users/', '"//evil.example/'),
        "endpoints[0].backends[0].path",
        "starting with a single '/'",
    ),
    (
        "allow and deny together",
        USERS + ENDPOINT + 'allow = ["id"]\ndeny = ["email"]',
        "endpoints[0].backends[0].deny",
        "allow and deny are mutually exclusive",
    ),
    (
        "empty allow",
        USERS + ENDPOINT + "allow = []",
        "endpoints[0].backends[0].allow",
        "at least one field path",
    ),
    (
        "bad field path",
        USERS + ENDPOINT + 'allow = ["user..name"]',
        "endpoints[0].backends[0].allow[0]",
        "dotted field path",
    ),
    (
        "bad group name",
        USERS + ENDPOINT + 'group = "a b"',
        "endpoints[0].backends[0].group",
        "invalid group name 'a b'",
    ),
    (
        "duplicate group",
        USERS + ENDPOINT + 'group = "u"\n' + SECOND_BACKEND + 'group = "u"',
        "endpoints[0].backends[1].group",
        "group 'u' is already used by endpoints[0].backends[0]",
    ),
    (
        "bool for pass_query",
        USERS + ENDPOINT + "pass_query = 1",
        "endpoints[0].backends[0].pass_query",
        "expected true or false, got 1",
    ),
    (
        "missing environment variable",
        USERS.replace("https://users.example.com", "${NOPE}"),
        "upstreams.users.base_url",
        "environment variable NOPE is not set",
    ),
]


@pytest.mark.parametrize(
    ("text", "key_path", "problem"),
    [pytest.param(text, key_path, problem, id=name) for name, text, key_path, problem in BROKEN],
)
def test_a_broken_file_is_refused_naming_the_key(
    tmp_path: Path, text: str | None, key_path: str, problem: str
) -> None:
    path = tmp_path / "gateway.toml"
    if text is not None:
        path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_gateway_config(path, env={})
    error = caught.value
    assert error.source == str(path)
    assert error.key_path == key_path
    # Errors about the file as a whole (missing, not TOML) have no key path.
    where = f"{path}: {key_path}" if key_path else str(path)
    assert str(error) == f"{where}: {error.problem}"
    assert problem in error.problem


def test_there_are_enough_broken_files() -> None:
    assert len(BROKEN) >= 25
    assert len({name for name, *_ in BROKEN}) == len(BROKEN)


def test_invalid_toml_names_the_file_and_the_place(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text("[server]\nsync_threads = = 3\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_gateway_config(path, env={})
    assert caught.value.key_path == ""
    assert str(caught.value).startswith(f"{path}: invalid TOML: ")
    assert "line 2" in str(caught.value)


def test_a_duplicate_upstream_is_invalid_toml() -> None:
    with pytest.raises(ConfigError, match="invalid TOML"):
        parse(USERS + USERS)


def test_a_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    with pytest.raises(ConfigError) as caught:
        load_gateway_config(str(path), env={})
    assert caught.value.key_path == ""
    assert str(caught.value) == f"{path}: no such file"


def test_an_unreadable_path_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_gateway_config(tmp_path, env={})
    assert str(caught.value).startswith(f"{tmp_path}: cannot read the file: ")


def test_a_file_that_is_not_utf8_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_bytes(b'[jobs]\nstore = "memory://\xff"\n')
    with pytest.raises(ConfigError) as caught:
        load_gateway_config(path, env={})
    assert str(caught.value).startswith(f"{path}: not valid UTF-8 text")


def test_the_error_message_format_and_attributes() -> None:
    with pytest.raises(ConfigError) as caught:
        parse(USERS + 'timeout = "fast"')
    error = caught.value
    assert isinstance(error, ValueError)
    assert str(error) == "gateway.toml: upstreams.users.timeout: expected a number > 0, got 'fast'"
    assert (error.source, error.key_path, error.problem) == (
        "gateway.toml",
        "upstreams.users.timeout",
        "expected a number > 0, got 'fast'",
    )
    copy = pickle.loads(pickle.dumps(error))
    assert (str(copy), copy.key_path) == (str(error), error.key_path)


@pytest.mark.parametrize(
    "text",
    [
        USERS.replace("https://", "https://bob:hunter2@"),
        USERS.replace("https://", "ftp://bob:hunter2@"),
        "[auth]\napi_keys = { a = 'hunter2' }",
        "[auth]\napi_keys = { a = 'hunter2 hunter2 hunter2' }",
        "[auth]\napi_keys = { a = 'hunter2hunter2hunter2', b = 'hunter2hunter2hunter2' }",
        USERS + 'headers = { Authorization = "hunter2\\n" }',
        USERS + 'headers = { Authorization = " hunter2" }',
    ],
)
def test_errors_never_echo_secrets(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    assert "hunter2" not in str(caught.value)


def test_an_internal_and_a_public_upstream_on_different_hosts_are_fine() -> None:
    config = parse(
        USERS + "[upstreams.local]\nbase_url = 'http://127.0.0.1:9000'\ninternal = true\n"
        "[upstreams.users2]\nbase_url = 'https://users.example.com/v2'\n"
    )
    assert config.internal_hosts() == frozenset({"127.0.0.1"})


def test_a_prefix_that_only_looks_reserved_is_allowed() -> None:
    config = parse(USERS + ENDPOINT.replace("/profiles", "/jobsearch"))
    assert config.endpoints[0].path == "/jobsearch/<user_id>"


def test_the_same_path_with_another_method_is_another_endpoint() -> None:
    config = parse(USERS + ENDPOINT + ENDPOINT.replace("path =", "method = 'DELETE'\npath =", 1))
    assert [endpoint.method for endpoint in config.endpoints] == ["GET", "DELETE"]


# -- route variables -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "variables"),
    [
        ("/", set()),
        ("/profiles/<user_id>", {"user_id"}),
        ("/x/<int:id>", {"id"}),
        ("/a/<string(length=2):code>/<path:rest>", {"code", "rest"}),
        ("/p/<any(a, b):kind>/<uuid:ref>", {"kind", "ref"}),
        ("/broken/<id", set()),
    ],
)
def test_route_variables(route: str, variables: set[str]) -> None:
    assert route_variables(route) == frozenset(variables)
