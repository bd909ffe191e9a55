"""hypercorn.toml: every key is one Hypercorn knows, and it applies the values."""

from __future__ import annotations

import tomllib
from pathlib import Path

from hypercorn.config import Config

from fanout.bridge.h2c import ALLOW_H2C_UPGRADE

CONFIG_FILE = Path(__file__).resolve().parent.parent / "hypercorn.toml"
#: Keys of Fanout's own in hypercorn.toml, read from Hypercorn's config object.
FANOUT_KEYS = {ALLOW_H2C_UPGRADE}


def test_every_key_is_a_hypercorn_setting_and_is_applied() -> None:
    raw = tomllib.loads(CONFIG_FILE.read_text())
    defaults = Config()
    applied = Config.from_toml(CONFIG_FILE)
    for key, value in raw.items():
        # Config.from_mapping silently sets unknown names: catch typos here.
        # Fanout's own keys ride on Hypercorn's config the same way.
        known = hasattr(defaults, key) or key in FANOUT_KEYS
        assert known, f"hypercorn.toml: {key} is not a Hypercorn setting"
        assert getattr(applied, key) == value, key


def test_the_served_settings_are_the_intended_ones() -> None:
    config = Config.from_toml(CONFIG_FILE)
    assert config.bind == ["127.0.0.1:8000"]
    # Not set: `fanout` chooses (one worker per CPU), `hypercorn` is given -w 0.
    assert "workers" not in tomllib.loads(CONFIG_FILE.read_text())
    assert config.worker_class == "uvloop"
    assert config.backlog >= 1024
    assert config.graceful_timeout == 30.0
    assert config.keep_alive_timeout > 60.0
    assert config.h11_max_incomplete_size == 16384
    assert config.h2_max_header_list_size == 65536
    assert config.accesslog is not None and config.errorlog is not None
    assert getattr(config, ALLOW_H2C_UPGRADE) is False
