"""ASGI scope to WSGI environ (pure)."""

from __future__ import annotations

import io

from fanout.bridge.environ import build_environ


def _scope(**overrides: object) -> dict[str, object]:
    scope: dict[str, object] = {
        "type": "http",
        "http_version": "1.1",
        "method": "POST",
        "scheme": "https",
        "path": "/api/caf\u00e9",
        "root_path": "/api",
        "query_string": b"a=1&b=%20",
        "headers": [
            (b"host", b"example.com"),
            (b"content-type", b"application/json"),
            (b"content-length", b"12"),
            (b"accept", b"text/html"),
            (b"accept", b"application/json"),
            (b"cookie", b"a=1"),
            (b"cookie", b"b=2"),
            (b"x-request-id", b"abc"),
        ],
        "server": ("10.0.0.1", 8443),
        "client": ("192.0.2.7", 51234),
    }
    scope.update(overrides)
    return scope


def test_environ_carries_the_request() -> None:
    body = io.BytesIO()
    environ = build_environ(_scope(), body)
    assert environ["REQUEST_METHOD"] == "POST"
    assert environ["SCRIPT_NAME"] == "/api"
    # PEP 3333: the path is UTF-8 bytes decoded as latin-1.
    assert environ["PATH_INFO"] == "/caf\u00e9".encode().decode("latin-1")
    assert environ["QUERY_STRING"] == "a=1&b=%20"
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert environ["wsgi.url_scheme"] == "https"
    assert environ["wsgi.input"] is body
    assert environ["wsgi.input_terminated"] is True
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("10.0.0.1", "8443")
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("192.0.2.7", "51234")
    assert environ["CONTENT_TYPE"] == "application/json"
    assert environ["CONTENT_LENGTH"] == "12"
    assert "HTTP_CONTENT_TYPE" not in environ
    assert environ["HTTP_HOST"] == "example.com"
    assert environ["HTTP_X_REQUEST_ID"] == "abc"


def test_repeated_headers_are_folded() -> None:
    environ = build_environ(_scope(), io.BytesIO())
    assert environ["HTTP_ACCEPT"] == "text/html,application/json"
    assert environ["HTTP_COOKIE"] == "a=1; b=2"


def test_missing_optional_scope_keys_get_defaults() -> None:
    environ = build_environ(
        {"type": "http", "method": "GET", "path": "/", "headers": []}, io.BytesIO()
    )
    assert environ["SCRIPT_NAME"] == "" and environ["PATH_INFO"] == "/"
    assert environ["QUERY_STRING"] == ""
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("localhost", "80")
    assert "REMOTE_ADDR" not in environ
