"""Expanding a backend's path template and appending the client's query string."""

from __future__ import annotations

from typing import Any

import pytest

from fanout.core.paths import PathTemplate, append_query, expand_path


@pytest.mark.parametrize(
    ("template", "values", "expected"),
    [
        pytest.param("/users/{id}", {"id": 7}, "/users/7", id="int"),
        pytest.param("/users", {}, "/users", id="no-placeholders"),
        pytest.param("", {}, "", id="empty"),
        pytest.param("/u/{a}/o/{b}", {"a": "x", "b": "y"}, "/u/x/o/y", id="two"),
        pytest.param("/u/{a}/{a}", {"a": "x"}, "/u/x/x", id="repeated"),
        pytest.param("/u/{id}", {"id": "a/b"}, "/u/a%2Fb", id="slash-encoded"),
        pytest.param("/u/{id}", {"id": "../admin"}, "/u/..%2Fadmin", id="traversal-encoded"),
        pytest.param("/u/{id}", {"id": "a?b#c"}, "/u/a%3Fb%23c", id="query-and-fragment"),
        pytest.param("/u/{id}", {"id": "100%"}, "/u/100%25", id="percent"),
        pytest.param("/u/{id}", {"id": "a b+c"}, "/u/a%20b%2Bc", id="space-plus"),
        pytest.param("/u/{id}", {"id": "Zoë"}, "/u/Zo%C3%AB", id="unicode"),
        pytest.param("/u/{id}", {"id": "日本"}, "/u/%E6%97%A5%E6%9C%AC", id="cjk"),
        pytest.param("/u/{id}", {"id": "a-b_c.d~e"}, "/u/a-b_c.d~e", id="unreserved-kept"),
        pytest.param("/u/{id}.json", {"id": "."}, "/u/..json", id="dot-inside-segment"),
        pytest.param("/u/...{id}", {"id": ""}, "/u/...", id="empty-inside-literal-segment"),
        pytest.param(
            "/orders?user={id}&x=1", {"id": "a&b=c"}, "/orders?user=a%26b%3Dc&x=1", id="query"
        ),
        pytest.param("/o?u={id}", {"id": ""}, "/o?u=", id="empty-query-value"),
        pytest.param("/o?u={id}", {"id": ".."}, "/o?u=..", id="dots-in-query-are-fine"),
        pytest.param("/o?u={id}/x?y", {"id": "/"}, "/o?u=%2F/x?y", id="second-question-mark"),
        pytest.param("/u/{id}", {"id": True, "x": 1}, "/u/True", id="extra-values-ignored"),
        pytest.param("/lit/{{id}}", {}, "/lit/{id}", id="escaped-braces"),
        pytest.param("/lit/{{{id}}}", {"id": 5}, "/lit/{5}", id="escaped-around-placeholder"),
        pytest.param("/{{}}", {}, "/{}", id="escaped-empty"),
    ],
)
def test_expand(template: str, values: dict[str, Any], expected: str) -> None:
    assert expand_path(template, values) == expected


def test_unknown_placeholder_names_itself() -> None:
    with pytest.raises(KeyError) as caught:
        expand_path("/users/{user_id}/x/{other}", {"user_id": 1})
    assert caught.value.args == ("other",)


@pytest.mark.parametrize("template", ["/u/{id", "/u/id}", "/u/{}", "/u/{a{b}", "/u/{{id}", "}"])
def test_unbalanced_braces(template: str) -> None:
    with pytest.raises(ValueError, match="unbalanced"):
        expand_path(template, {"id": 1, "a{b": 2})


@pytest.mark.parametrize(
    ("template", "values"),
    [
        ("/u/{id}", {"id": ".."}),
        ("/u/{id}", {"id": "."}),
        ("/u/{id}/orders", {"id": ""}),
        ("/u/{id}", {"id": ""}),
        ("/u/{a}{b}", {"a": ".", "b": "."}),
        ("/u/{id}?q=1", {"id": ".."}),
        ("{id}", {"id": ".."}),
    ],
)
def test_values_cannot_make_dot_or_empty_segments(template: str, values: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="segment"):
        expand_path(template, values)


def test_literal_dot_segments_in_the_template_are_the_author_s_choice() -> None:
    assert expand_path("/a/../b/./{id}", {"id": 1}) == "/a/../b/./1"


@pytest.mark.parametrize(
    ("path", "query", "expected"),
    [
        ("/users", "", "/users"),
        ("/users?a=1", "", "/users?a=1"),
        ("/users", "b=2", "/users?b=2"),
        ("/users?a=1", "b=2", "/users?a=1&b=2"),
        ("/users?", "b=2", "/users?b=2"),
        ("/users?a=1&", "b=2", "/users?a=1&b=2"),
        ("/users", "?b=2", "/users?b=2"),
        ("/users", "?", "/users"),
        ("/users", "b=%20x&c", "/users?b=%20x&c"),
        ("", "b=2", "?b=2"),
    ],
)
def test_append_query(path: str, query: str, expected: str) -> None:
    assert append_query(path, query) == expected


@pytest.mark.parametrize(
    ("path", "query", "expected"),
    [
        pytest.param("/o?user=7", "user=999", "/o?user=7", id="same-name"),
        pytest.param("/o?user=7", "user=999&page=2", "/o?user=7&page=2", id="others-kept"),
        pytest.param("/o?user=7", "page=2&user=1&user=2", "/o?user=7&page=2", id="repeated"),
        pytest.param("/o?user=7", "us%65r=999", "/o?user=7", id="percent-encoded-name"),
        pytest.param("/o?a+b=1", "a%20b=2&a+b=3", "/o?a+b=1", id="plus-is-space"),
        pytest.param("/o?user=7", "user", "/o?user=7", id="no-value"),
        pytest.param("/o?user=7", "x=1;user=9&y=2", "/o?user=7&y=2", id="semicolon-split"),
        pytest.param("/o?user=7&kind=a", "kind=b&users=1", "/o?user=7&kind=a&users=1", id="two"),
        pytest.param("/o", "user=999", "/o?user=999", id="nothing-bound"),
        pytest.param("/o?user=7", "user=1&user=2", "/o?user=7", id="everything-dropped"),
        pytest.param("/o?user=7", "?user=1&x=2", "/o?user=7&x=2", id="leading-mark"),
    ],
)
def test_the_client_s_copy_of_a_bound_parameter_is_dropped(
    path: str, query: str, expected: str
) -> None:
    assert append_query(path, query) == expected


def test_a_template_parsed_once_expands_each_request_s_values() -> None:
    template = PathTemplate("/u/{id}/o?x={q}&{{lit}}")
    assert template.expand({"id": "a/b", "q": "1"}) == "/u/a%2Fb/o?x=1&{lit}"
    assert template.expand({"id": 7, "q": ".."}) == "/u/7/o?x=..&{lit}"
    with pytest.raises(ValueError, match="leave its place"):
        template.expand({"id": "..", "q": 1})


def test_an_unbalanced_template_fails_when_parsed() -> None:
    with pytest.raises(ValueError, match="unbalanced"):
        PathTemplate("/u/{id")
