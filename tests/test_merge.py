"""Field filtering (allow/deny dotted paths) and the merging of backend parts."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from fanout.core.merge import Part, filter_fields, merge_parts

USER: dict[str, Any] = {
    "id": 7,
    "name": "Zoë",
    "secret": "s3",
    "address": {"city": "Łódź", "zip": "90-001", "geo": {"lat": 51.7, "lon": 19.4}},
    "orders": [
        {"id": 1, "total": 10, "items": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 2}]},
        {"id": 2, "total": 20, "items": []},
    ],
    "tags": ["x", "y"],
    "nothing": None,
}


@pytest.mark.parametrize(
    ("allow", "expected"),
    [
        pytest.param(["id"], {"id": 7}, id="top-level"),
        pytest.param(["id", "name"], {"id": 7, "name": "Zoë"}, id="two-keys"),
        pytest.param(["address.city"], {"address": {"city": "Łódź"}}, id="nested"),
        pytest.param(["address.geo.lat"], {"address": {"geo": {"lat": 51.7}}}, id="deep"),
        pytest.param(["address"], {"address": USER["address"]}, id="whole-subtree"),
        pytest.param(["address", "address.city"], {"address": USER["address"]}, id="parent-wins"),
        pytest.param(["address.city", "address"], {"address": USER["address"]}, id="parent-later"),
        pytest.param(
            ["orders.id"], {"orders": [{"id": 1}, {"id": 2}]}, id="list-applies-to-each-element"
        ),
        pytest.param(
            ["orders.items.sku"],
            {"orders": [{"items": [{"sku": "a"}, {"sku": "b"}]}, {"items": []}]},
            id="nested-lists",
        ),
        pytest.param(["tags"], {"tags": ["x", "y"]}, id="list-of-scalars-whole"),
        pytest.param(["tags.x"], {"tags": []}, id="scalars-have-no-fields"),
        pytest.param(["nothing"], {"nothing": None}, id="null-is-a-value"),
        pytest.param(["missing"], {}, id="missing-key"),
        pytest.param(["missing.deeper"], {}, id="missing-parent"),
        pytest.param(["id.deeper"], {}, id="path-through-scalar"),
        pytest.param(["address.missing"], {}, id="empty-parent-dropped"),
    ],
)
def test_allow(allow: list[str], expected: Any) -> None:
    assert filter_fields(USER, allow=allow) == expected


@pytest.mark.parametrize(
    ("deny", "expected_missing"),
    [
        pytest.param(["secret"], [("secret",)], id="top-level"),
        pytest.param(["address.geo"], [("address", "geo")], id="subtree"),
        pytest.param(["address.geo.lat"], [("address", "geo", "lat")], id="deep"),
        pytest.param(["missing", "address.missing", "id.deeper"], [], id="missing-is-a-no-op"),
    ],
)
def test_deny(deny: list[str], expected_missing: list[tuple[str, ...]]) -> None:
    result = filter_fields(USER, deny=deny)
    expected = copy.deepcopy(USER)
    for path in expected_missing:
        node = expected
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
    assert result == expected


def test_deny_applies_to_every_list_element_and_nested_lists() -> None:
    result = filter_fields(USER, deny=["orders.total", "orders.items.qty", "tags.x"])
    assert result["orders"] == [
        {"id": 1, "items": [{"sku": "a"}, {"sku": "b"}]},
        {"id": 2, "items": []},
    ]
    assert result["tags"] == ["x", "y"]


def test_list_elements_that_are_not_objects() -> None:
    data = {"rows": [{"a": 1, "b": 2}, 3, None, [{"a": 4, "b": 5}], {"b": 6}]}
    assert filter_fields(data, allow=["rows.a"]) == {"rows": [{"a": 1}, [{"a": 4}]]}
    assert filter_fields(data, deny=["rows.a"]) == {
        "rows": [{"b": 2}, 3, None, [{"b": 5}], {"b": 6}]
    }


def test_allow_then_deny() -> None:
    result = filter_fields(USER, allow=["address"], deny=["address.geo"])
    assert result == {"address": {"city": "Łódź", "zip": "90-001"}}


def test_no_lists_returns_the_data_itself() -> None:
    assert filter_fields(USER) is USER


@pytest.mark.parametrize("data", [[{"id": 1, "secret": 2}], "text", 3, None, True])
def test_non_dict_data_is_returned_unchanged(data: Any) -> None:
    assert filter_fields(data, allow=["id"], deny=["secret"]) is data


def test_empty_dict() -> None:
    assert filter_fields({}, allow=["a"]) == {}
    assert filter_fields({}, deny=["a"]) == {}


def test_allowed_empty_object_is_kept() -> None:
    assert filter_fields({"a": {}, "b": 1}, allow=["a"]) == {"a": {}}


def test_input_is_never_mutated() -> None:
    before = copy.deepcopy(USER)
    filter_fields(USER, allow=["orders.items.sku", "address.city"])
    filter_fields(USER, deny=["orders.items.sku", "address.city", "secret"])
    assert before == USER


def test_allow_keeps_the_order_of_the_data_deny_too() -> None:
    data = {"c": 1, "a": 2, "b": 3}
    assert list(filter_fields(data, allow=["b", "c"])) == ["c", "b"]
    assert list(filter_fields(data, deny=["a"])) == ["c", "b"]


def test_keys_with_unicode() -> None:
    data = {"città": {"nome": "Roma", "ñ": 1}}
    assert filter_fields(data, allow=["città.ñ"]) == {"città": {"ñ": 1}}


def test_part_is_frozen() -> None:
    part = Part("users", None, {})
    with pytest.raises(AttributeError):
        part.name = "other"  # type: ignore[misc]


def test_merge_groups_and_top_level() -> None:
    parts = [
        Part("users", None, {"id": 1, "name": "a"}),
        Part("orders", "orders", [{"id": 9}]),
        Part("stats", "stats", {"count": 3}),
    ]
    assert merge_parts(parts) == {
        "id": 1,
        "name": "a",
        "orders": [{"id": 9}],
        "stats": {"count": 3},
    }


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ([1, 2], {"tags": [1, 2]}),
        ("text", {"tags": "text"}),
        (None, {"tags": None}),
        (0, {"tags": 0}),
    ],
)
def test_ungrouped_non_dict_goes_under_the_name(data: Any, expected: dict[str, Any]) -> None:
    assert merge_parts([Part("tags", None, data)]) == expected


def test_later_parts_win_on_clashes() -> None:
    first = Part("a", None, {"id": 1, "only_a": True, "shared": {"x": 1}})
    second = Part("b", None, {"id": 2, "shared": {"y": 2}})
    assert merge_parts([first, second]) == {"id": 2, "only_a": True, "shared": {"y": 2}}
    assert merge_parts([second, first]) == {"id": 1, "only_a": True, "shared": {"x": 1}}


def test_group_clashes_follow_the_order_too() -> None:
    grouped = Part("orders", "user", {"id": 9})
    top = Part("users", None, {"user": "plain"})
    assert merge_parts([top, grouped]) == {"user": {"id": 9}}
    assert merge_parts([grouped, top]) == {"user": "plain"}
    same_group = [Part("a", "g", 1), Part("b", "g", 2)]
    assert merge_parts(same_group) == {"g": 2}


def test_merge_keeps_insertion_order() -> None:
    parts = [Part("b", "b", 1), Part("a", None, {"z": 1, "y": 2}), Part("c", "c", 3)]
    assert list(merge_parts(parts)) == ["b", "z", "y", "c"]


def test_merge_nothing() -> None:
    assert merge_parts([]) == {}


def test_merge_does_not_mutate_parts() -> None:
    data = {"id": 1}
    merge_parts([Part("a", None, data), Part("b", None, {"id": 2})])
    assert data == {"id": 1}
