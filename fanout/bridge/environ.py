"""Translate an ASGI HTTP scope into a WSGI environ (pure; no I/O)."""

from __future__ import annotations

import io
import sys
from typing import IO, Any


def build_environ(scope: dict[str, Any], body: io.RawIOBase | IO[bytes]) -> dict[str, Any]:
    """Return the WSGI environ (PEP 3333) for an ASGI HTTP ``scope``."""
    root_path: str = scope.get("root_path", "")
    path: str = scope["path"]
    # ASGI's path includes root_path; WSGI splits it into SCRIPT_NAME + PATH_INFO.
    if root_path and path.startswith(root_path):
        path = path[len(root_path) :]
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": root_path.encode("utf-8").decode("latin-1"),
        "PATH_INFO": path.encode("utf-8").decode("latin-1"),
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": body,
        # The body stream signals its own end, so Werkzeug may read bodies
        # without a Content-Length (chunked uploads) up to MAX_CONTENT_LENGTH.
        "wsgi.input_terminated": True,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "asgi.scope": scope,
    }
    server = scope.get("server")
    if server:
        environ["SERVER_NAME"] = str(server[0])
        environ["SERVER_PORT"] = str(server[1]) if server[1] is not None else "0"
    else:
        environ["SERVER_NAME"], environ["SERVER_PORT"] = "localhost", "80"
    client = scope.get("client")
    if client:
        environ["REMOTE_ADDR"] = str(client[0])
        environ["REMOTE_PORT"] = str(client[1])
    for raw_name, raw_value in scope.get("headers", ()):
        name = raw_name.decode("latin-1").upper().replace("-", "_")
        value = raw_value.decode("latin-1")
        key = name if name in ("CONTENT_LENGTH", "CONTENT_TYPE") else f"HTTP_{name}"
        if key in environ:
            # Repeated headers fold into one value (RFC 9110 5.3); HTTP/2 sends
            # each cookie as its own header, and those join with "; ".
            separator = "; " if key == "HTTP_COOKIE" else ","
            value = f"{environ[key]}{separator}{value}"
        environ[key] = value
    return environ
