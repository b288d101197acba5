"""Configuration parsing and validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatd.config import SETTINGS, Config, ConfigError, diff, load_file, parse_settings


def test_defaults_cover_every_setting() -> None:
    config = Config()
    for setting in SETTINGS:
        assert getattr(config, setting.key) == setting.default


def test_values_override_and_ints_widen_to_floats() -> None:
    values = parse_settings({"keepalive": {"ping_interval": 5}, "limits": {"max_text": 10}})
    assert values["ping_interval"] == 5.0 and isinstance(values["ping_interval"], float)
    assert values["max_text"] == 10


@pytest.mark.parametrize(("doc", "fragment"), [
    ({"limits": {"nope": 1}}, "limits.nope: unknown setting"),
    ({"limits": {"max_text": "10"}}, "limits.max_text: expected int"),
    ({"limits": {"max_text": True}}, "limits.max_text: expected int"),
    ({"limits": {"max_text": 0}}, "below the minimum"),
    ({"limits": {"max_frame": 1 << 30}}, "above the maximum"),
    ({"server": {"motd": 5}}, "server.motd: expected str"),
    ({"max_text": 5}, "unknown top-level key"),
    ({"limits": {"max_frame": 2047, "max_text": 100}}, "below the minimum"),
    ({"limits": {"max_frame": 4096, "max_text": 100}, "server": {"motd": "m" * 2300}},
     "server.motd and server.name"),
    ({"tls": {"port": 65536}}, "tls.port: 65536 is above the maximum"),
    ({"tls": {"plain": "no"}}, "tls.plain: expected bool"),
    ({"tls": {"plain": False}}, "tls.key and tls.plain = false need tls.cert"),
    ({"tls": {"key": "key.pem"}}, "tls.key and tls.plain = false need tls.cert"),
    ({"irc": {"tls_port": 6697}}, "irc.tls_port needs tls.cert"),
])
def test_bad_settings_are_reported_clearly(doc: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        parse_settings(doc)


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings({"limits": {"a": 1, "b": 2}})
    assert "limits.a" in str(info.value) and "limits.b" in str(info.value)


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_file(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[limits\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_file(bad)
    good = tmp_path / "good.toml"
    good.write_text('[server]\nmotd = "hi"\n')
    assert load_file(good)["motd"] == "hi"


def test_diff_names_the_changes() -> None:
    old = parse_settings({})
    new = parse_settings({"limits": {"max_rooms": 3}})
    assert diff(old, new) == ["max_rooms: 50 -> 3"]
