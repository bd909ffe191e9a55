"""References into earlier answers, and shaping one answer (pure)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from fanout.core.references import MissingValue, parse_reference, path_text, resolve
from fanout.core.shaping import ShapeError, shape

ORDER = {"order": {"id": 7, "items": [{"sku": "a", "n": 1}, {"sku": "b", "n": 2.5}]}}


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("order.id", 7),
        ("order.items[1].sku", "b"),
        ("order.items[*].sku", ["a", "b"]),
        ("order.items[*]", ORDER["order"]["items"]),
    ],
)
def test_a_reference_reads_keys_indexes_and_every_element(text: str, value: Any) -> None:
    assert resolve(parse_reference(text), ORDER) == value


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("order.nope", "{order.nope}: no value at 'nope'"),
        ("order.items[5].sku", "{order.items[5].sku}: no element [5]"),
        ("order.id[*]", "{order.id[*]}: not a list at [*]"),
        ("user.id", "{user.id}: user gave no answer"),
    ],
)
def test_a_missing_value_says_where(text: str, message: str) -> None:
    with pytest.raises(MissingValue) as caught:
        resolve(parse_reference(text), ORDER)
    assert str(caught.value) == message


@pytest.mark.parametrize("text", ["", ".a", "a..b", "a.b[x]", "a[1", "a b"])
def test_malformed_references_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_reference(text)


def test_values_in_a_path_are_scalars() -> None:
    reference = parse_reference("g.v")
    assert [path_text(v, reference) for v in ("x", 3, 2.5, True)] == ["x", "3", "2.5", "true"]
    nothing: tuple[Any, ...] = (None, {}, [])
    for value in nothing:
        with pytest.raises(MissingValue):
            path_text(value, reference)


def test_shaping_never_mutates_the_answer() -> None:
    answer = {"data": {"user": {"name": "n", "address": {"city": "Lyon", "zip": "1"}}}}
    before = copy.deepcopy(answer)
    shaped = shape(
        answer, target="data.user", deny=["address.zip"], rename=[("address.city", "city")]
    )
    assert shaped == {"name": "n", "address": {}, "city": "Lyon"}
    assert answer == before
    with pytest.raises(ShapeError):
        shape(answer, target="data.nobody")
