"""Building an upstream path from a backend's path template and the route's values."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote_plus

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
    return PathTemplate(template).expand(values)


# Kinds of the pieces a template is parsed into.
_LITERAL, _VALUE, _SEPARATOR = 0, 1, 2


class PathTemplate:
    """A path template parsed once (as expand_path reads it): expanding it is quoting and joins.

    Endpoints keep one per backend, so a request does not scan templates
    character by character. Raises ValueError for an unbalanced brace.
    """

    def __init__(self, template: str) -> None:
        self.template = template
        self._pieces = _parse(template)

    def expand(self, values: Mapping[str, Any]) -> str:
        """The path with ``values`` in place (see expand_path)."""
        out: list[str] = []
        segment: list[str] = []
        segment_has_value = in_query = False
        for kind, text in self._pieces:
            if kind == _LITERAL:
                out.append(text)
                segment.append(text)
            elif kind == _VALUE:
                if text not in values:
                    raise KeyError(text)
                encoded = quote(str(values[text]), safe="")
                out.append(encoded)
                segment.append(encoded)
                segment_has_value = True
            else:
                # A segment ends here: check it, the separator itself belongs to none.
                _check_segment(segment, segment_has_value, self.template)
                segment, segment_has_value = [], False
                in_query = text == "?"
                out.append(text)
        if not in_query:
            _check_segment(segment, segment_has_value, self.template)
        return "".join(out)


def _parse(template: str) -> tuple[tuple[int, str], ...]:
    pieces: list[tuple[int, str]] = []
    literal: list[str] = []
    in_query = False

    def flush() -> None:
        if literal:
            pieces.append((_LITERAL, "".join(literal)))
            literal.clear()

    i = 0
    while i < len(template):
        char = template[i]
        if template.startswith(("{{", "}}"), i):
            literal.append(char)
            i += 2
        elif char == "{":
            end = template.find("}", i + 1)
            name = template[i + 1 : end]
            if end == -1 or not name or "{" in name:
                raise ValueError(f"unbalanced '{{' at offset {i} in path template {template!r}")
            flush()
            pieces.append((_VALUE, name))
            i = end + 1
        elif char == "}":
            raise ValueError(f"unbalanced '}}' at offset {i} in path template {template!r}")
        else:
            if not in_query and char in "/?":
                flush()
                pieces.append((_SEPARATOR, char))
                in_query = char == "?"
            else:
                literal.append(char)
            i += 1
    flush()
    return tuple(pieces)


def append_query(path: str, query_string: str) -> str:
    """Append the client's raw query string to ``path`` with "?" or "&" as needed.

    Parameters ``path`` already sets (from the config or the route's values)
    win: the client's parameters of the same name are dropped, so an
    upstream that reads the last (or any) copy still gets the route's value.
    """
    _, mark, bound_query = path.partition("?")
    if mark:
        bound = _names(bound_query)
        query_string = "&".join(
            part
            for part in query_string.removeprefix("?").split("&")
            # Some servers also split on ";": a part naming a bound parameter
            # after one is dropped as well.
            if not bound & _names(part.replace(";", "&"))
        )
    query_string = query_string.removeprefix("?")
    if not query_string:
        return path
    if "?" not in path:
        return f"{path}?{query_string}"
    if path.endswith(("?", "&")):
        return path + query_string
    return f"{path}&{query_string}"


def _names(query: str) -> set[str]:
    """The decoded names of a raw query's parameters ("us%65r=1&x" has user and x)."""
    return {unquote_plus(part.partition("=")[0]) for part in query.split("&") if part}


def _check_segment(segment: list[str], has_value: bool, template: str) -> None:
    if has_value and "".join(segment) in _UNSAFE_SEGMENTS:
        raise ValueError(
            f"values for path template {template!r} make the path segment "
            f"{''.join(segment)!r}, which would leave its place in the path"
        )
