"""Running an endpoint's backends: in dependency order, per item, failing fast.

Every backend starts as soon as the answers it reads are in (independent
ones at once); a ``for_each`` backend calls once per item, a bounded number
at a time. As soon as a required backend has failed, every other call is
cancelled (its connection closed, not left to finish) and the endpoint
answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from clients.errors import BadUpstreamPayload, UpstreamError
from fanout.core.aggregate import BackendFailure
from fanout.core.config import BackendConfig, EndpointConfig
from fanout.core.config_composition import placeholders
from fanout.core.forwarding import Forwarded
from fanout.core.paths import PathTemplate, append_query
from fanout.core.references import (
    ITEM,
    MissingValue,
    Reference,
    is_reference,
    parse_reference,
    path_text,
    resolve,
)
from fanout.core.shaping import ShapeError, shape
from handlers.errors import upstream_status

#: Calls one backend at a path and returns its JSON, or raises UpstreamError.
Fetch = Callable[[BackendConfig, str, Forwarded], Awaitable[Any]]


@dataclass(frozen=True)
class BackendPlan:
    """One backend, parsed once: its path template, what it reads and whose answers."""

    backend: BackendConfig
    template: PathTemplate
    #: Path placeholders that read an earlier answer (``{item...}`` ones included).
    references: tuple[Reference, ...]
    for_each: Reference | None
    #: Indexes of the backends whose answers it reads.
    needs: frozenset[int]

    @property
    def label(self) -> str:
        """How its answer and failures are named: its group, or its upstream."""
        return self.backend.group or self.backend.upstream

    @property
    def static(self) -> bool:
        """Whether its path needs only the route's values (known before any call)."""
        return not self.references and self.for_each is None


def plan(endpoint: EndpointConfig) -> tuple[BackendPlan, ...]:
    """The endpoint's backends as plans (the config already checked their references)."""
    groups = {b.group: index for index, b in enumerate(endpoint.backends) if b.group}
    plans = []
    for backend in endpoint.backends:
        each = backend.for_each is not None
        references = tuple(
            parse_reference(name)
            for name in placeholders(backend)
            if is_reference(name, for_each=each)
        )
        for_each = parse_reference(backend.for_each) if backend.for_each else None
        read = [r.group for r in references if r.group != ITEM]
        if for_each is not None:
            read.append(for_each.group)
        plans.append(
            BackendPlan(
                backend=backend,
                template=PathTemplate(backend.path),
                references=references,
                for_each=for_each,
                needs=frozenset(groups[name] for name in read),
            )
        )
    return tuple(plans)


_ABSENT: Any = object()


@dataclass
class BackendOutcome:
    """What one backend gave: its (shaped) data or fallback, and its failures."""

    data: Any = _ABSENT
    failures: list[BackendFailure] = field(default_factory=list)

    @property
    def answered(self) -> bool:
        """Whether there is data to merge (a fallback counts)."""
        return self.data is not _ABSENT


class BackendRun:
    """One request's run of its endpoint's backends."""

    def __init__(
        self,
        plans: Sequence[BackendPlan],
        *,
        paths: Sequence[str | None],
        route_values: Mapping[str, Any],
        sent: Sequence[Forwarded],
        fetch: Fetch,
    ) -> None:
        self._plans = plans
        self._paths = paths
        self._route_values = route_values
        self._sent = sent
        self._fetch = fetch
        #: Each group's data, for the backends that read it.
        self._answers: dict[str, Any] = {}

    async def run(self) -> list[BackendOutcome | None]:
        """Each backend's outcome, in config order (None: cancelled when another failed)."""
        outcomes: list[BackendOutcome | None] = [None] * len(self._plans)
        waiting = {index: set(p.needs) for index, p in enumerate(self._plans)}
        tasks: dict[asyncio.Task[BackendOutcome], int] = {}

        def start_ready() -> None:
            for index in [i for i, needs in waiting.items() if not needs]:
                del waiting[index]
                tasks[asyncio.create_task(self._backend(index))] = index

        try:
            start_ready()
            while tasks:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    index = tasks.pop(task)
                    if self._settle(index, task.result(), outcomes, waiting):
                        return outcomes  # fail fast: the finally cancels the rest
                start_ready()
        finally:
            await _cancel(tasks)
        return outcomes

    def _settle(
        self,
        index: int,
        outcome: BackendOutcome,
        outcomes: list[BackendOutcome | None],
        waiting: dict[int, set[int]],
    ) -> bool:
        """Record an outcome and what follows for its dependents; True to fail fast."""
        settled = [(index, outcome)]
        while settled:
            index, outcome = settled.pop()
            outcomes[index] = outcome
            current = self._plans[index]
            if outcome.failures and current.backend.required:
                return True
            if outcome.answered and current.backend.group is not None:
                self._answers[current.backend.group] = outcome.data
            for other, needs in list(waiting.items()):
                if index not in needs:
                    continue
                needs.discard(index)
                if not outcome.answered:
                    # It will never have what it reads: failed without a call.
                    del waiting[other]
                    settled.append((other, self._not_called(other, current.label)))
        return False

    def _not_called(self, index: int, failed: str) -> BackendOutcome:
        current = self._plans[index]
        failure = BackendFailure(
            current.label,
            502,
            "Bad Gateway",
            f"not called: it reads the answer of {failed}, which failed",
            current.backend.required,
        )
        return self._with_fallback(current, [failure])

    async def _backend(self, index: int) -> BackendOutcome:
        current = self._plans[index]
        try:
            if current.for_each is not None:
                return await self._each(index, current, current.for_each)
            data = await self._call(index, {})
        except UpstreamError as error:
            return self._with_fallback(current, [self._failure(current, current.label, error)])
        return BackendOutcome(data)

    async def _each(self, index: int, current: BackendPlan, for_each: Reference) -> BackendOutcome:
        backend = current.backend
        try:
            items = resolve(for_each, self._answers)
        except MissingValue as missing:
            raise BadUpstreamPayload(backend.upstream, f"for_each {missing}") from None
        if not isinstance(items, list):
            items = [items]
        if len(items) > backend.max_items:
            raise BadUpstreamPayload(
                backend.upstream,
                f"for_each {{{for_each.text}}} found {len(items)} items, more than "
                f"max_items ({backend.max_items})",
            )
        slots = asyncio.Semaphore(backend.concurrency)
        data: list[Any] = [None] * len(items)
        failures: list[BackendFailure] = []

        async def one(position: int, item: Any) -> None:
            async with slots:
                try:
                    data[position] = await self._call(index, {ITEM: item})
                except UpstreamError as error:
                    label = f"{current.label}[{position}]"
                    failures.append(self._failure(current, label, error))

        async with asyncio.TaskGroup() as group:
            for position, item in enumerate(items):
                group.create_task(one(position, item))
        failures.sort(key=lambda failure: _index_of(failure.label))
        return BackendOutcome(data, failures)

    async def _call(self, index: int, item: Mapping[str, Any]) -> Any:
        backend = self._plans[index].backend
        path = self._paths[index]
        if path is None:
            path = self._expand(index, item)
        answer = await self._fetch(backend, path, self._sent[index])
        try:
            return shape(
                answer,
                target=backend.target,
                collection=backend.collection,
                allow=backend.allow,
                deny=backend.deny,
                rename=backend.rename,
            )
        except ShapeError as wrong:
            raise BadUpstreamPayload(backend.upstream, f"{backend.upstream}: {wrong}") from None

    def _expand(self, index: int, item: Mapping[str, Any]) -> str:
        current = self._plans[index]
        upstream = current.backend.upstream
        values = dict(self._route_values)
        answers = {**self._answers, **item}
        try:
            for reference in current.references:
                values[reference.text] = path_text(resolve(reference, answers), reference)
        except MissingValue as missing:
            raise BadUpstreamPayload(upstream, f"no value for {missing}") from None
        try:
            path = current.template.expand(values)
        except ValueError:
            raise BadUpstreamPayload(
                upstream, "a referenced value would make a path segment empty, '.' or '..'"
            ) from None
        query = self._sent[index].query
        return append_query(path, query) if query else path

    def _failure(self, current: BackendPlan, label: str, error: UpstreamError) -> BackendFailure:
        status, title = upstream_status(error)
        return BackendFailure(label, status, title, str(error), current.backend.required)

    def _with_fallback(
        self, current: BackendPlan, failures: list[BackendFailure]
    ) -> BackendOutcome:
        fallback = current.backend.fallback
        return BackendOutcome(_ABSENT if fallback is None else fallback, failures)


def _index_of(label: str) -> int:
    return int(label.rpartition("[")[2].rstrip("]"))


async def _cancel(tasks: Mapping[asyncio.Task[BackendOutcome], int]) -> None:
    """Cancel the calls still running and wait until they let their connections go."""
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)
