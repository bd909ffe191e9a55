"""References to an earlier backend's answer: ``{user.company_id}``, ``order.items[*].sku`` (pure).

A reference names a group, then a path into that group's answer: keys
separated by ``.``, list indexes as ``[0]``, and ``[*]`` for every element
of a list (the value is then the list of what each element gives).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: The placeholder a ``for_each`` backend's path uses for the current item.
ITEM = "item"

# A path step: ".key" (or a leading "key"), "[3]" or "[*]".
_STEP = re.compile(r"\.?(?P<key>[^.\[\]\s]+)|\[(?P<index>\d+|\*)\]")
_GROUP = re.compile(r"[A-Za-z0-9_-]+")


class Star:
    """The ``[*]`` step: every element of a list."""

    def __repr__(self) -> str:
        return "[*]"


#: The one ``[*]`` step.
EVERY = Star()
Step = str | int | Star


class MissingValue(LookupError):
    """A reference found no usable value in the answer it points into."""


@dataclass(frozen=True)
class Reference:
    """A parsed reference: the group it reads and the steps into its answer."""

    text: str
    group: str
    steps: tuple[Step, ...]

    @property
    def expands(self) -> bool:
        """Whether a ``[*]`` step makes the value a list of every element's value."""
        return any(step is EVERY for step in self.steps)


def is_reference(name: str, *, for_each: bool) -> bool:
    """Whether a path placeholder reads an answer, not the route: ``{group.path}``, and
    ``{item}`` on a ``for_each`` backend (elsewhere it may be a route variable)."""
    return "." in name or "[" in name or (for_each and name == ITEM)


def parse_reference(text: str) -> Reference:
    """Parse ``group.key[0].other``; raise ValueError saying what is wrong."""
    group_match = _GROUP.match(text)
    if group_match is None:
        raise ValueError(f"expected group.path such as 'user.company_id', got {text!r}")
    group = group_match[0]
    steps: list[Step] = []
    position = group_match.end()
    while position < len(text):
        match = _STEP.match(text, position)
        if match is None or match[0][0] not in ".[":
            raise ValueError(
                f"cannot read {text!r} at character {position + 1}: expected '.key', "
                "'[index]' or '[*]'"
            )
        if match["key"] is not None:
            steps.append(match["key"])
        elif match["index"] == "*":
            steps.append(EVERY)
        else:
            steps.append(int(match["index"]))
        position = match.end()
    return Reference(text, group, tuple(steps))


def resolve(reference: Reference, answers: Mapping[str, Any]) -> Any:
    """The value ``reference`` points at among the groups' ``answers``; MissingValue if none."""
    if reference.group not in answers:
        raise MissingValue(f"{{{reference.text}}}: {reference.group} gave no answer")
    return _walk(answers[reference.group], reference.steps, reference)


def _walk(value: Any, steps: tuple[Step, ...], reference: Reference) -> Any:
    for position, step in enumerate(steps):
        if step is EVERY:
            if not isinstance(value, list):
                raise MissingValue(f"{{{reference.text}}}: not a list at [*]")
            rest = steps[position + 1 :]
            return [_walk(item, rest, reference) for item in value]
        if isinstance(step, int):
            if not isinstance(value, list) or step >= len(value):
                raise MissingValue(f"{{{reference.text}}}: no element [{step}]")
            value = value[step]
        elif isinstance(value, dict) and step in value:
            value = value[step]
        else:
            raise MissingValue(f"{{{reference.text}}}: no value at {step!r}")
    return value


def path_text(value: Any, reference: Reference) -> str:
    """A referenced value as it goes into a path: a string, number or boolean, never null."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int):
        return str(value)
    if isinstance(value, float):
        # JSON's spelling: 2.0 stays "2.0", no exponent surprises from str() on ints.
        return json.dumps(value)
    kind = "null" if value is None else type(value).__name__
    raise MissingValue(f"{{{reference.text}}}: a {kind}, not a string or number")
