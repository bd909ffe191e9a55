"""Building an upstream path from a backend's path template and the route's values."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

# Segments a server or a URL library would resolve against the parent ("", "." and ".."
# after /users/ reach /users/ itself or above it), so a value must not produce them.
_UNSAFE_SEGMENTS = frozenset({"", ".", ".."})


def expand_path(template: str, values: Mapping[str, Any]) -> str:
    """Replace each ``{name}`` in ``template`` with ``values[name]``, percent-encoded.

    Every character but the unreserved ones is encoded, "/" and "?" included, so a value
    stays inside its path segment or query value. ``{{`` and ``}}`` are literal braces.
    Raises KeyError naming an unknown placeholder, and ValueError for an unbalanced brace
    or when values would make a path segment empty, "." or "..".
    """
    out: list[str] = []
    segment: list[str] = []
    segment_has_value = in_query = False
    i = 0
    while i < len(template):
        char = template[i]
        if template.startswith(("{{", "}}"), i):
            out.append(char)
            segment.append(char)
            i += 2
        elif char == "{":
            end = template.find("}", i + 1)
            name = template[i + 1 : end]
            if end == -1 or not name or "{" in name:
                raise ValueError(f"unbalanced '{{' at offset {i} in path template {template!r}")
            if name not in values:
                raise KeyError(name)
            encoded = quote(str(values[name]), safe="")
            out.append(encoded)
            segment.append(encoded)
            segment_has_value = True
            i = end + 1
        elif char == "}":
            raise ValueError(f"unbalanced '}}' at offset {i} in path template {template!r}")
        else:
            if not in_query and char in "/?":
                # A segment ends here: check it, the separator itself belongs to none.
                _check_segment(segment, segment_has_value, template)
                segment, segment_has_value = [], False
                in_query = char == "?"
            else:
                segment.append(char)
            out.append(char)
            i += 1
    if not in_query:
        _check_segment(segment, segment_has_value, template)
    return "".join(out)


def append_query(path: str, query_string: str) -> str:
    """Append the client's raw query string to ``path`` with "?" or "&" as needed."""
    query_string = query_string.removeprefix("?")
    if not query_string:
        return path
    if "?" not in path:
        return f"{path}?{query_string}"
    if path.endswith(("?", "&")):
        return path + query_string
    return f"{path}&{query_string}"


def _check_segment(segment: list[str], has_value: bool, template: str) -> None:
    if has_value and "".join(segment) in _UNSAFE_SEGMENTS:
        raise ValueError(
            f"values for path template {template!r} make the path segment "
            f"{''.join(segment)!r}, which would leave its place in the path"
        )
