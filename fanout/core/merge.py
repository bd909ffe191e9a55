"""Field filtering of one backend's JSON and merging of several backends' answers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

# A parsed set of dotted paths: each key maps to the paths below it, or to None when the
# path ends there (the whole subtree is meant).
_Tree: TypeAlias = "dict[str, _Tree | None]"

# Marks "nothing selected here" in allow filtering; distinct from a JSON null.
_MISSING: Any = object()


@dataclass(frozen=True)
class Part:
    """One backend's answer: its name, the group it nests under (if any) and its data."""

    name: str
    group: str | None
    data: Any


def filter_fields(data: Any, *, allow: Sequence[str] = (), deny: Sequence[str] = ()) -> Any:
    """Keep only the ``allow`` dotted paths of ``data``, then drop its ``deny`` paths.

    A path level whose value is a list applies the rest of the path to every element.
    With ``allow``, dict keys and list elements where no listed path matched are left out
    (a list itself is kept, possibly empty). With both, ``allow`` applies first.
    Non-dict data is returned unchanged. The input is never mutated; the result may share
    untouched subtrees with it.
    """
    if not isinstance(data, dict):
        return data
    result: Any = data
    if allow:
        result = _allow(result, _tree(allow))
        if result is _MISSING:
            result = {}
    if deny:
        result = _deny(result, _tree(deny))
    return result


def merge_parts(parts: Sequence[Part], on_conflict: str | None = None) -> dict[str, Any]:
    """Merge the backends' answers into one object, applying ``parts`` in the given order.

    A part with a group is stored as ``result[group]``. A part without a group has its keys
    merged into the top level when its data is a dict, or is stored as ``result[name]``
    otherwise. On a clash (two parts writing the same top-level key) ``on_conflict``
    decides (see merge_conflicts; by default the later part wins, replacing the earlier
    value whole), so the outcome depends only on the order of ``parts``.
    """
    result: dict[str, Any] = {}
    for part in parts:
        if part.group is not None:
            merge_conflicts(result, part.group, part.data, on_conflict)
        elif isinstance(part.data, dict):
            for key, value in part.data.items():
                merge_conflicts(result, key, value, on_conflict)
        else:
            merge_conflicts(result, part.name, part.data, on_conflict)
    return settle(result) if on_conflict == "list" else result


def merge_conflicts(result: dict[str, Any], key: str, value: Any, rule: str | None) -> None:
    """Store ``value`` at ``key`` of the merged ``result`` as the endpoint's ``on_conflict`` says.

    None and ``last``: the later backend wins; ``first``: the earlier one
    stays; ``list``: every backend's value, in config order.
    """
    if key not in result or rule in (None, "last"):
        result[key] = value
    elif rule == "list":
        earlier = result[key]
        values = earlier.values if isinstance(earlier, _Clash) else [earlier]
        result[key] = _Clash([*values, value])


class _Clash:
    """The values several backends wrote at one key (``on_conflict = "list"``), in order."""

    def __init__(self, values: list[Any]) -> None:
        self.values = values


def settle(result: dict[str, Any]) -> dict[str, Any]:
    """Turn ``list`` clashes into plain JSON lists once every part is merged."""
    return {
        key: value.values if isinstance(value, _Clash) else value for key, value in result.items()
    }


def _tree(paths: Sequence[str]) -> _Tree:
    root: _Tree = {}
    for path in paths:
        node = root
        *parents, last = path.split(".")
        for key in parents:
            child = node.setdefault(key, {})
            if child is None:
                # A shorter path already covers this whole subtree.
                break
            node = child
        else:
            node[last] = None
    return root


def _allow(value: Any, tree: _Tree) -> Any:
    if isinstance(value, list):
        kept = (_allow(item, tree) for item in value)
        return [item for item in kept if item is not _MISSING]
    if not isinstance(value, dict):
        # A scalar has no fields, so nothing below it can be allowed.
        return _MISSING
    result: dict[str, Any] = {}
    # Walk the data, not the paths, so the answer keeps the upstream's key order.
    for key, item in value.items():
        if key not in tree:
            continue
        subtree = tree[key]
        kept = item if subtree is None else _allow(item, subtree)
        if kept is not _MISSING:
            result[key] = kept
    return result if result else _MISSING


def _deny(value: Any, tree: _Tree) -> Any:
    if isinstance(value, list):
        return [_deny(item, tree) for item in value]
    if not isinstance(value, dict) or not any(key in value for key in tree):
        return value
    result = dict(value)
    for key, subtree in tree.items():
        if key not in result:
            continue
        if subtree is None:
            del result[key]
        else:
            result[key] = _deny(result[key], subtree)
    return result
