"""The gateway file's composition keys: dependent backends, for_each, shaping, writes.

Read and checked here rather than in config.py, which stays the file's
general reader; every problem is still one ``<file>: <key path>: <problem>``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fanout.core import config as base
from fanout.core.references import ITEM, Reference, is_reference, parse_reference
from fanout.core.shaping import CONFLICT_RULES

if TYPE_CHECKING:
    from fanout.core.config import BackendConfig, _Parser

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
#: The largest for_each list and concurrency the file may ask for.
MAX_ITEMS_LIMIT = 10_000
MAX_CONCURRENCY = 100


@dataclass(frozen=True)
class EndpointComposition:
    """The endpoint-level composition keys, once checked."""

    on_conflict: str | None
    allow_partial_writes: bool


def placeholders(backend: BackendConfig) -> list[str]:
    """The placeholder names of a backend's path, in order."""
    return [match[1] for match in _PLACEHOLDER.finditer(backend.path)]


def references(backend: BackendConfig) -> list[Reference]:
    """The references to earlier answers a backend reads: its for_each, then its path's."""
    found = [parse_reference(backend.for_each)] if backend.for_each else []
    for name in placeholders(backend):
        if is_reference(name, for_each=backend.for_each is not None):
            reference = parse_reference(name)
            if reference.group != ITEM:
                found.append(reference)
    return found


def backend_fields(
    parser: _Parser, table: Mapping[str, object], path: str, *, group: str | None
) -> dict[str, Any]:
    """The composition keys of one backend, checked on their own (no other backend needed)."""
    d = base.BackendConfig(upstream="", path="")
    if group == ITEM:
        parser.fail(base._key(path, "group"), f"{ITEM!r} is reserved for a for_each item")
    for_each = None
    if "for_each" in table:
        where = base._key(path, "for_each")
        for_each = parser.string(table["for_each"], where)
        _reference(parser, for_each, where)
        if group is None:
            parser.fail(base._key(path, "group"), "required with for_each (the list's key)")
    else:
        for key in ("max_items", "concurrency"):
            if key in table:
                parser.fail(base._key(path, key), "only applies with for_each")
    _check_placeholders(parser, table, path, for_each=for_each is not None)
    collection = parser.boolean(table, "collection", path, d.collection)
    if collection and group is None:
        parser.fail(base._key(path, "group"), "required with collection = true (the list's key)")
    required = parser.boolean(table, "required", path, d.required)
    fallback = None
    if "fallback" in table:
        where = base._key(path, "fallback")
        if required:
            parser.fail(
                where, "a required backend fails the endpoint; fallback is for optional ones"
            )
        fallback = table["fallback"]
        if not isinstance(fallback, dict | list):
            parser.fail(where, f"expected a table or an array, got {base._describe(fallback)}")
    return {
        "for_each": for_each,
        "max_items": parser.integer(table, "max_items", path, d.max_items, 1, MAX_ITEMS_LIMIT),
        "concurrency": parser.integer(
            table, "concurrency", path, d.concurrency, 1, MAX_CONCURRENCY
        ),
        "target": _target(parser, table, path),
        "rename": _rename(parser, table, path),
        "collection": collection,
        "fallback": fallback,
        "write": parser.boolean(table, "write", path, d.write),
    }


def endpoint_fields(
    parser: _Parser,
    table: Mapping[str, object],
    path: str,
    method: str,
    backends: Sequence[BackendConfig],
) -> EndpointComposition:
    """The endpoint's composition keys, and the checks that need all its backends."""
    where = base._key(path, "backends")
    groups = {backend.group: index for index, backend in enumerate(backends) if backend.group}
    for index, backend in enumerate(backends):
        _check_order(parser, f"{where}[{index}]", index, backend, groups)
    on_conflict = None
    if "on_conflict" in table:
        on_conflict = parser.string(table["on_conflict"], base._key(path, "on_conflict"))
        if on_conflict not in CONFLICT_RULES:
            parser.fail(
                base._key(path, "on_conflict"),
                f"expected one of {', '.join(CONFLICT_RULES)}, got {on_conflict!r}",
            )
    else:
        _check_clashes(parser, where, backends)
    partial = parser.boolean(table, "allow_partial_writes", path, False)
    _check_writes(parser, where, method, backends, partial=partial)
    return EndpointComposition(on_conflict=on_conflict, allow_partial_writes=partial)


def _reference(parser: _Parser, text: str, where: str) -> Reference:
    try:
        return parse_reference(text)
    except ValueError as exc:
        parser.fail(where, str(exc))


def _check_placeholders(
    parser: _Parser, table: Mapping[str, object], path: str, *, for_each: bool
) -> None:
    target = table.get("path")
    if not isinstance(target, str):
        return  # config.py reports it
    where = base._key(path, "path")
    uses_item = False
    for match in _PLACEHOLDER.finditer(target):
        if not is_reference(match[1], for_each=for_each):
            continue
        reference = _reference(parser, match[1], where)
        if reference.expands:
            parser.fail(where, f"{match[0]}: [*] is for for_each; a path takes one value")
        if reference.group == ITEM:
            if not for_each:
                parser.fail(where, f"{match[0]} needs for_each (the list it takes items from)")
            uses_item = True
    if for_each and not uses_item:
        parser.fail(where, "expected an {item} placeholder (for_each calls once per item)")


def _check_order(
    parser: _Parser, where: str, index: int, backend: BackendConfig, groups: Mapping[str, int]
) -> None:
    for reference in references(backend):
        key = base._key(where, "for_each" if reference.text == backend.for_each else "path")
        name = reference.group
        if name not in groups:
            known = ", ".join(sorted(g for g, at in groups.items() if at < index)) or "none"
            parser.fail(
                key, f"{{{reference.text}}}: unknown group {name!r} (earlier groups: {known})"
            )
        if groups[name] == index:
            parser.fail(key, f"{{{reference.text}}}: a cycle (the backend reads its own answer)")
        if groups[name] > index:
            parser.fail(
                key,
                f"{{{reference.text}}}: group {name!r} is a later backend "
                f"(backends[{groups[name]}]); list it before the backends that read it",
            )


def _check_clashes(parser: _Parser, where: str, backends: Sequence[BackendConfig]) -> None:
    # Only what the file shows: a group name, an ungrouped backend's allowed or
    # renamed top-level keys. Other keys are known only at run time (later wins).
    writers: dict[str, int] = {}
    for index, backend in enumerate(backends):
        keys: set[str] = set()
        if backend.group is not None:
            keys.add(backend.group)
        else:
            keys.update(path.split(".")[0] for path in backend.allow)
            keys.update(new for _, new in backend.rename)
        for key in sorted(keys):
            if key in writers:
                parser.fail(
                    f"{where}[{index}]",
                    f"writes {key!r}, as backends[{writers[key]}] does; set the endpoint's "
                    f"on_conflict to {', '.join(CONFLICT_RULES)}",
                )
            writers[key] = index


def _check_writes(
    parser: _Parser,
    where: str,
    method: str,
    backends: Sequence[BackendConfig],
    *,
    partial: bool,
) -> None:
    writers = [index for index, backend in enumerate(backends) if backend.write]
    if method == "GET":
        if writers:
            parser.fail(f"{where}[{writers[0]}].write", "only for an endpoint with a body")
        return
    if len(backends) == 1 or partial:
        return
    if not writers:
        parser.fail(
            where,
            f"a {method} endpoint with several backends sends its body to one: mark it "
            "write = true (the others are called with GET), or set allow_partial_writes = true",
        )
    if len(writers) > 1:
        parser.fail(
            f"{where}[{writers[1]}].write",
            f"backends[{writers[0]}] already receives the body; one write can fail after "
            "another succeeded, so set allow_partial_writes = true to allow it",
        )


def _target(parser: _Parser, table: Mapping[str, object], path: str) -> str | None:
    if "target" not in table:
        return None
    where = base._key(path, "target")
    target = parser.string(table["target"], where)
    if not base._FIELD_PATH.fullmatch(target):
        parser.fail(where, f"expected a dotted field path such as 'data.user', got {target!r}")
    return target


def _rename(parser: _Parser, table: Mapping[str, object], path: str) -> tuple[tuple[str, str], ...]:
    where = base._key(path, "rename")
    pairs: list[tuple[str, str]] = []
    for source, value in parser.sub_table(table, "rename", path).items():
        key_path = base._key(where, source)
        if not base._FIELD_PATH.fullmatch(source):
            parser.fail(key_path, "expected a dotted field path such as 'a.b'")
        new = parser.string(value, key_path)
        if not new or "." in new or any(ch.isspace() for ch in new):
            parser.fail(key_path, f"expected a top-level key (no '.' or spaces), got {new!r}")
        if any(new == other for _, other in pairs):
            parser.fail(key_path, f"{new!r} is already the new name of another key")
        pairs.append((source, new))
    return tuple(pairs)


def upstream_hosts(parser: _Parser, table: Mapping[str, object], path: str) -> dict[str, Any]:
    """An upstream's ``base_url``, or its ``base_urls`` and ``outlier_detection``."""
    if "base_urls" not in table:
        if "outlier_detection" in table:
            parser.fail(base._key(path, "outlier_detection"), "only applies with base_urls")
        return {"base_url": parser.base_url(table, path)}
    where = base._key(path, "base_urls")
    if "base_url" in table:
        parser.fail(where, "base_url and base_urls are mutually exclusive; keep one")
    written = parser.strings(table, "base_urls", path) or ()
    if not written:
        parser.fail(where, "expected at least one URL, got an empty array")
    urls: list[str] = []
    for index, url in enumerate(written):
        checked = parser.checked_base_url(url, f"{where}[{index}]")
        if checked in urls:
            parser.fail(f"{where}[{index}]", "listed twice")
        urls.append(checked)
    return {
        "base_url": urls[0],
        "base_urls": tuple(urls),
        "outlier_detection": _outlier_detection(parser, table, path),
    }


def _outlier_detection(
    parser: _Parser, table: Mapping[str, object], path: str
) -> base.OutlierDetectionConfig:
    where = base._key(path, "outlier_detection")
    section = parser.sub_table(table, "outlier_detection", path)
    parser.check_keys(section, where, base._keys_of(base.OutlierDetectionConfig))
    d = base.OutlierDetectionConfig()
    ejection = parser.number(
        section, "base_ejection_seconds", where, d.base_ejection_seconds, above=0
    )
    longest = parser.number(
        section, "max_ejection_seconds", where, max(d.max_ejection_seconds, ejection), above=0
    )
    if longest < ejection:
        parser.fail(
            base._key(where, "max_ejection_seconds"),
            f"expected a number >= base_ejection_seconds ({ejection:g}), got {longest:g}",
        )
    return base.OutlierDetectionConfig(
        consecutive_failures=parser.integer(
            section, "consecutive_failures", where, d.consecutive_failures, 1
        ),
        base_ejection_seconds=ejection,
        max_ejection_seconds=longest,
    )
