"""Settings: defaults, then FANOUT_* environment, then the mapping; validated."""

from __future__ import annotations

import pytest

from app import create_app
from fanout.process.settings import DEFAULTS, SettingsError


def test_defaults_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FANOUT_JOB_STORE")
    app = create_app()
    for key, value in DEFAULTS.items():
        assert app.config[key] == value


def test_environment_overrides_defaults_and_the_mapping_overrides_both(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FANOUT_SYNC_THREADS", "8")
    monkeypatch.setenv("FANOUT_MAX_CONTENT_LENGTH", "2048")
    app = create_app({"MAX_CONTENT_LENGTH": 4096})
    assert app.config["SYNC_THREADS"] == 8
    assert app.config["MAX_CONTENT_LENGTH"] == 4096


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FANOUT_SYNC_THREAD": "8"}, "unknown setting(s) in the environment: FANOUT_SYNC_THREAD"),
        ({"FANOUT_SYNC_THREADS": "eight"}, "SYNC_THREADS (env FANOUT_SYNC_THREADS) must be int"),
        ({"FANOUT_KEEPALIVE_SECONDS": "true"}, "KEEPALIVE_SECONDS"),
        ({"FANOUT_MAX_CONTENT_LENGTH": "-1"}, "must be >= 0"),
        ({"FANOUT_SYNC_THREADS": "0"}, "FANOUT_SYNC_THREADS) must be >= 1, got 0"),
    ],
)
def test_bad_settings_are_refused_with_their_name(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        create_app()
    assert message in str(caught.value)


def test_a_float_setting_accepts_an_int() -> None:
    assert create_app({"KEEPALIVE_SECONDS": 5}).config["KEEPALIVE_SECONDS"] == 5


def test_a_pool_of_no_threads_is_refused_from_the_mapping_too() -> None:
    with pytest.raises(SettingsError, match=r"SYNC_THREADS .* must be >= 1"):
        create_app({"SYNC_THREADS": 0})
