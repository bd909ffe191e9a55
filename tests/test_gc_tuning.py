"""The served process's garbage collector: frozen startup, fewer young passes, restored after."""

from __future__ import annotations

import gc

import pytest

from app import create_served_app
from fanout.bridge import ASGIBridge
from fanout.bridge.gc_tuning import tuned_gc
from tests.asgi_driver import lifespan


async def test_tuned_gc_freezes_startup_and_restores_everything() -> None:
    before = gc.get_threshold()
    async with tuned_gc(50_000):
        assert gc.get_threshold() == (50_000, *before[1:])
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


async def test_zero_leaves_the_collector_alone() -> None:
    before = gc.get_threshold()
    async with tuned_gc(0):
        assert gc.get_threshold() == before
        assert gc.get_freeze_count() == 0


@pytest.mark.parametrize(("setting", "expected"), [(None, 50_000), ("1234", 1234), ("0", None)])
async def test_the_served_app_tunes_the_collector_while_serving(
    monkeypatch: pytest.MonkeyPatch, setting: str | None, expected: int | None
) -> None:
    if setting is not None:
        monkeypatch.setenv("FANOUT_GC_THRESHOLD", setting)
    before = gc.get_threshold()
    async with lifespan(ASGIBridge(create_served_app)):
        if expected is None:
            assert gc.get_threshold() == before and gc.get_freeze_count() == 0
        else:
            assert gc.get_threshold()[0] == expected
            # The app built at startup is among the frozen objects.
            assert gc.get_freeze_count() > 1000
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
