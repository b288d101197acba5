"""The client's config file: `$XDG_CONFIG_HOME/chat-client/config.toml` (or `--config`).

Everything in it is checked once, on start: an unknown key, a value of the wrong type, a
bad nick, room, colour or key is a clear error naming the file and the key (and the key
that was probably meant), never a traceback and never silently ignored. The command line
wins over a `[servers.NAME]` table, which wins over the top level.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .commands import UsageError, nick_arg, room_arg

HYPERLINKS = ("auto", True, False)
SERVER_KEYS = ("address", "nick", "account", "rooms", "highlight", "tls", "ca", "tofu")
TOP_KEYS = ("nick", "account", "rooms", "highlight", "scrollback", "hyperlinks", "server",
            "servers", "colours", "keys", "log")
LOG_KEYS = ("enabled", "directory")
MAX_HIGHLIGHT = 100  # words; each is a pattern tried on every message


class ConfigError(Exception):
    """The config file cannot be used; the message says where and why."""


@dataclass
class Server:
    address: str
    nick: str | None = None
    rooms: list[str] | None = None
    highlight: list[str] | None = None
    account: str | None = None
    tls: bool = False  # as --tls; `ca` (as --ca) and `tofu` (as --tofu) imply it
    ca: Path | None = None
    tofu: bool = False


@dataclass
class Config:
    path: Path | None = None  # None: there was no file
    nick: str | None = None
    account: str | None = None  # log in as this account (never a password in this file)
    rooms: list[str] | None = None
    highlight: list[str] = field(default_factory=list)
    scrollback: int | None = None
    hyperlinks: str | bool = "auto"
    server: str | None = None  # the default server's name
    servers: dict[str, Server] = field(default_factory=dict)
    colours: dict[str, str] = field(default_factory=dict)
    keys: dict[str, list[str]] = field(default_factory=dict)
    log: bool = False
    log_dir: Path | None = None

    def pick(self, name: str | None) -> tuple[str, Server] | None:
        """The server the command line names, else the default one, else the first;
        None when the name is not a server of this file (it is then an address)."""
        if name is not None:
            return (name, self.servers[name]) if name in self.servers else None
        if self.server is not None:
            return self.server, self.servers[self.server]
        return next(iter(self.servers.items()), None)


def default_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "chat-client" / "config.toml"


def load(path: Path | None) -> Config:
    """The config at `path` (which must exist), or at the default place (if it exists)."""
    explicit = path is not None
    path = path or default_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{path}: no such file") from None
        return Config()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return parse(data, path)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def parse(data: dict[str, Any], path: Path | None = None) -> Config:
    _known(data, TOP_KEYS, "")
    cfg = Config(path)
    cfg.nick = _nick(data, "nick", "")
    cfg.account = _nick(data, "account", "")
    cfg.rooms = _rooms(data, "rooms", "")
    cfg.highlight = _words(data, "highlight", "") or []
    if "scrollback" in data:
        value = data["scrollback"]
        if not isinstance(value, int) or isinstance(value, bool) or not 10 <= value <= 10**7:
            raise ConfigError(f"scrollback: must be a whole number of lines from 10 to "
                              f"10000000, not {value!r}")
        cfg.scrollback = value
    if "hyperlinks" in data:
        if data["hyperlinks"] not in HYPERLINKS or not isinstance(data["hyperlinks"], str | bool):
            raise ConfigError(f'hyperlinks: must be "auto", true or false, not '
                              f'{data["hyperlinks"]!r}')
        cfg.hyperlinks = data["hyperlinks"]
    servers = _table(data, "servers", "")
    for name, table in servers.items():
        where = f"servers.{name}."
        if not isinstance(table, dict):
            raise ConfigError(f"servers.{name}: must be a table ([servers.{name}])")
        _known(table, SERVER_KEYS, where)
        address = table.get("address")
        if not isinstance(address, str) or not address:
            raise ConfigError(f"{where}address: required, a string such as "
                              '"chat.example.org:7777"')
        server = cfg.servers[name] = Server(address, _nick(table, "nick", where),
                                            _rooms(table, "rooms", where),
                                            _words(table, "highlight", where),
                                            _nick(table, "account", where))
        _tls(server, table, where, path)
    if "server" in data:
        if data["server"] not in cfg.servers:
            raise ConfigError(f"server: {data['server']!r} is not one of the [servers.NAME] "
                              f"tables ({', '.join(cfg.servers) or 'there are none'})")
        cfg.server = data["server"]
    cfg.colours = _colours(_table(data, "colours", ""))
    cfg.keys = _keys(_table(data, "keys", ""))
    log = _table(data, "log", "")
    _known(log, LOG_KEYS, "log.")
    if "enabled" in log:
        if not isinstance(log["enabled"], bool):
            raise ConfigError(f"log.enabled: must be true or false, not {log['enabled']!r}")
        cfg.log = log["enabled"]
    if "directory" in log:
        if not isinstance(log["directory"], str) or not log["directory"]:
            raise ConfigError("log.directory: must be a path (a string)")
        cfg.log_dir = Path(log["directory"]).expanduser()
    return cfg


def _tls(server: Server, table: dict[str, Any], where: str, path: Path | None) -> None:
    """A server's `tls`, `ca` and `tofu`, as the flags of the same names; a relative `ca`
    is relative to the config file."""
    for key in ("tls", "tofu"):
        if key in table and not isinstance(table[key], bool):
            raise ConfigError(f"{where}{key}: must be true or false, not {table[key]!r}")
    server.tofu = table.get("tofu", False)
    if "ca" in table:
        if not isinstance(table["ca"], str) or not table["ca"]:
            raise ConfigError(f"{where}ca: must be a path (a string)")
        if server.tofu:
            raise ConfigError(f"{where}ca: give either ca (a CA to trust) or tofu (trust "
                              "on first use), not both")
        ca = Path(table["ca"]).expanduser()
        server.ca = ca if ca.is_absolute() or path is None else path.parent / ca
    server.tls = table.get("tls", False) or server.ca is not None or server.tofu


def _known(table: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    for key in table:
        if key not in known:
            near = difflib.get_close_matches(key, known, 1) or \
                [k for k in known if k.startswith(key[:3])][:1]
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f"unknown key {where}{key}{hint}; known keys here: "
                              + ", ".join(known))


def _table(data: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}{key}: must be a table ([{where}{key}])")
    return value


def _nick(data: dict[str, Any], key: str, where: str) -> str | None:
    if key not in data:
        return None
    if not isinstance(data[key], str):
        raise ConfigError(f"{where}{key}: must be a string, not {data[key]!r}")
    try:
        return nick_arg(data[key])
    except UsageError as exc:
        raise ConfigError(f"{where}{key}: {exc}") from None


def _strings(data: dict[str, Any], key: str, where: str) -> list[str] | None:
    if key not in data:
        return None
    value = data[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}{key}: must be a list of strings, such as "
                          f'["one", "two"], not {value!r}')
    return value


def _rooms(data: dict[str, Any], key: str, where: str) -> list[str] | None:
    rooms = _strings(data, key, where)
    if rooms is None:
        return None
    try:
        return list(dict.fromkeys(room_arg(r) for r in rooms))
    except UsageError as exc:
        raise ConfigError(f"{where}{key}: {exc}") from None


def _words(data: dict[str, Any], key: str, where: str) -> list[str] | None:
    words = _strings(data, key, where)
    if words is None:
        return None
    if len(words) > MAX_HIGHLIGHT:
        raise ConfigError(f"{where}{key}: at most {MAX_HIGHLIGHT} words")
    for word in words:
        if not word.strip() or not word.isprintable():
            raise ConfigError(f"{where}{key}: {word!r} is not a word to look for")
    return words


def _colours(table: dict[str, Any]) -> dict[str, str]:
    from prompt_toolkit.styles import Style

    from .tui import STYLES

    _known(table, tuple(STYLES), "colours.")
    for name, value in table.items():
        if not isinstance(value, str):
            raise ConfigError(f"colours.{name}: must be a style string such as "
                              f'"fg:ansired bold", not {value!r}')
        try:
            Style.from_dict({name: value})
        except (ValueError, AssertionError) as exc:
            raise ConfigError(f"colours.{name}: bad style {value!r}: {exc}") from None
    return dict(table)


def _keys(table: dict[str, Any]) -> dict[str, list[str]]:
    from prompt_toolkit.key_binding import KeyBindings

    from .keys import ACTIONS

    _known(table, tuple(ACTIONS), "keys.")
    out: dict[str, list[str]] = {}
    for action, value in table.items():
        keys = [value] if isinstance(value, str) else value
        if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
            raise ConfigError(f"keys.{action}: must be a key such as \"c-r\" or \"alt-a\", "
                              f"or a list of them, not {value!r}")
        out[action] = []
        for key in keys:
            words = _key_words(key)
            try:
                if not words:
                    raise ValueError("no key")
                if len(words[0]) == 1:
                    raise ValueError("a key you type text with cannot be bound")
                KeyBindings().add(*words)(lambda event: None)
            except (ValueError, TypeError, AssertionError) as exc:
                raise ConfigError(f"keys.{action}: bad key {key!r}: {exc}") from None
            out[action].append(" ".join(words))
    return out


def _key_words(key: str) -> list[str]:
    """prompt_toolkit's key names; "alt-x" is "escape x", what a terminal sends."""
    out: list[str] = []
    for word in key.split():
        if word.lower().startswith("alt-") and len(word) > 4:
            out += ["escape", word[4:]]
        else:
            out.append(word)
    return out
