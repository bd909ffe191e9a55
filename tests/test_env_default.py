"""``${NAME:-default}`` in the gateway file, and where a relative sqlite store lives."""

from __future__ import annotations

from pathlib import Path

import pytest

from fanout.core.config import ConfigError, GatewayConfig, parse_gateway_config
from fanout.jobs.store_factory import anchored_store_url

UPSTREAM = '[upstreams.demo]\nbase_url = "{}"\ninternal = true\n'


def _parse(base_url: str, env: dict[str, str]) -> GatewayConfig:
    return parse_gateway_config(UPSTREAM.format(base_url), source="gateway.toml", env=env)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "http://127.0.0.1:8081"),
        ({"DEMO_URL": ""}, "http://127.0.0.1:8081"),  # empty counts as unset, as in the shell
        ({"DEMO_URL": "http://127.0.0.1:9000"}, "http://127.0.0.1:9000"),
    ],
)
def test_a_default_is_used_when_the_variable_is_unset_or_empty(
    env: dict[str, str], expected: str
) -> None:
    config = _parse("${DEMO_URL:-http://127.0.0.1:8081}", env)
    assert config.upstreams["demo"].base_url == expected


def test_a_default_is_taken_literally_and_may_sit_inside_a_value() -> None:
    config = _parse("http://${HOST:-127.0.0.1}:${PORT:-8081}/v$${X:-1}", {"PORT": "9000"})
    assert config.upstreams["demo"].base_url == "http://127.0.0.1:9000/v${X:-1}"


def test_without_a_default_an_unset_variable_is_still_an_error() -> None:
    with pytest.raises(ConfigError) as error:
        _parse("${DEMO_URL}", {})
    assert str(error.value) == (
        "gateway.toml: upstreams.demo.base_url: "
        "environment variable DEMO_URL is not set (used as ${DEMO_URL})"
    )


def test_a_bad_name_before_the_default_is_an_error() -> None:
    with pytest.raises(ConfigError, match="invalid interpolation at character 1"):
        _parse("${1X:-http://127.0.0.1}", {})


def test_the_shipped_gateway_file_follows_the_demo_url_setting() -> None:
    shipped = (Path(__file__).resolve().parent.parent / "gateway.toml").read_text()
    default = parse_gateway_config(shipped, source="gateway.toml", env={})
    assert default.upstreams["demo"].base_url == "http://127.0.0.1:8081"
    moved = parse_gateway_config(
        shipped,
        source="gateway.toml",
        env={"FANOUT_DEMO_UPSTREAM_URL": "http://127.0.0.1:9000"},
    )
    assert moved.upstreams["demo"].base_url == "http://127.0.0.1:9000"


def test_a_relative_sqlite_store_is_taken_from_the_given_directory(tmp_path: Path) -> None:
    assert anchored_store_url("sqlite:///var/jobs.db", str(tmp_path)) == (
        f"sqlite:///{tmp_path}/var/jobs.db"
    )
    # Absolute paths, other stores and what open_store_from_url refuses stay as they are.
    for url in ("sqlite:////srv/jobs.db", "memory://", "redis://h:6379/0", "sqlite:///:memory:"):
        assert anchored_store_url(url, str(tmp_path)) == url
    # A relative directory (the gateway file named relatively) is made absolute.
    assert anchored_store_url("sqlite:///jobs.db", "").startswith("sqlite:////")
