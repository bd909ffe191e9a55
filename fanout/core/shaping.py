"""Shaping one backend's answer: target, collection, allow/deny, rename (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fanout.core.merge import filter_fields

#: How an endpoint merges two backends that write the same key.
CONFLICT_RULES = ("last", "first", "list")


class ShapeError(ValueError):
    """The answer does not have the shape the backend's config expects."""


def shape(
    data: Any,
    *,
    target: str | None = None,
    collection: bool = False,
    allow: Sequence[str] = (),
    deny: Sequence[str] = (),
    rename: Sequence[tuple[str, str]] = (),
) -> Any:
    """Apply a backend's shaping to its answer, in KrakenD's order.

    ``target`` first (that sub-object becomes the answer), then the
    ``collection`` check (the answer must be a JSON array; every element is
    shaped alone), then ``allow``/``deny``, then ``rename`` (a dotted source
    moves that nested value to the new top-level key; a missing source is
    left out).
    """
    if target is not None:
        data = _target(data, target)
    if collection:
        if not isinstance(data, list):
            raise ShapeError(f"expected a JSON array (collection = true), got {_kind(data)}")
        return [_fields(item, allow, deny, rename) for item in data]
    return _fields(data, allow, deny, rename)


def _fields(
    data: Any, allow: Sequence[str], deny: Sequence[str], rename: Sequence[tuple[str, str]]
) -> Any:
    data = filter_fields(data, allow=allow, deny=deny)
    if rename and isinstance(data, dict):
        data = _rename(data, rename)
    return data


def _target(data: Any, target: str) -> Any:
    for key in target.split("."):
        if not isinstance(data, dict) or key not in data:
            raise ShapeError(f"the answer has no {target!r} (target)")
        data = data[key]
    return data


def _rename(data: dict[str, Any], rename: Sequence[tuple[str, str]]) -> dict[str, Any]:
    result = dict(data)
    moved: dict[str, Any] = {}
    for source, new in rename:
        *parents, last = source.split(".")
        holder: Any = result
        for key in parents:
            holder = holder.get(key) if isinstance(holder, dict) else None
        if not isinstance(holder, dict) or last not in holder:
            continue
        moved[new] = holder[last]
        if not parents:
            del result[last]
        else:
            _drop(result, parents, last)
    result.update(moved)
    return result


def _drop(data: dict[str, Any], parents: list[str], last: str) -> None:
    # Copy the nested dicts on the way down: the input may share them (never mutated).
    node = data
    for key in parents:
        node[key] = dict(node[key])
        node = node[key]
    del node[last]


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if value is None:
        return "null"
    return f"a {type(value).__name__}"
