"""Parsing JSON a client sent: strict, and bounded in depth (pure)."""

from __future__ import annotations

import json
from typing import Any

#: Deeper documents are refused: no request needs more, and Python's parser
#: and encoder recurse (about 1,000 levels raise RecursionError, a 500).
MAX_DEPTH = 64


class InvalidJSON(ValueError):
    """A client's document is not JSON we accept (answered with 400)."""


def _reject_constant(name: str) -> Any:
    # Python reads NaN and Infinity; RFC 8259 JSON has neither, and NaN != NaN
    # would make an Idempotency-Key's repeated request look like another one.
    raise InvalidJSON(f"{name} is not a JSON value")


def parse_client_json(data: str | bytes, *, max_depth: int = MAX_DEPTH, **options: Any) -> Any:
    """Decode ``data`` (UTF-8, -16 or -32 if bytes); raise InvalidJSON for what is not JSON.

    Refused too: NaN and Infinity, nesting deeper than ``max_depth``, and
    numbers too long to read. ``options`` go to ``json.loads``.
    """
    options.setdefault("parse_constant", _reject_constant)
    try:
        value = json.loads(data, **options)
    except RecursionError:
        raise InvalidJSON(f"nested deeper than {max_depth} levels") from None
    except ValueError as exc:  # UnicodeDecodeError and digit limits included
        raise InvalidJSON(str(exc)) from None
    if _deeper_than(value, max_depth):
        raise InvalidJSON(f"nested deeper than {max_depth} levels")
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    # Level by level, without recursion, looking only at arrays and objects.
    level = [value] if isinstance(value, dict | list) else []
    for _ in range(limit):
        level = [
            child
            for node in level
            for child in (node.values() if isinstance(node, dict) else node)
            if isinstance(child, dict | list)
        ]
        if not level:
            return False
    return bool(level)
