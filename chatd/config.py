"""Settings: built-in defaults, overridden by a TOML file, then by flags.

Every setting lives in SETTINGS once, with its section, type, bounds and
meaning; README's configuration table is generated from the same data.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Generic, TypeVar, get_args, get_origin, overload

from . import sandbox
from .protocol import DEFAULT_LIMITS as LIMITS
from .protocol import NICK_RE

T = TypeVar("T")


@dataclass(frozen=True)
class Setting:
    section: str
    name: str
    default: Any
    doc: str
    low: float | None = None
    high: float | None = None
    attr: str = ""

    @property
    def key(self) -> str:
        """Attribute name on Config (unique across sections)."""
        return self.attr or self.name


SETTINGS: tuple[Setting, ...] = (
    Setting("server", "name", "chatd", "server name sent in welcome", attr="server_name"),
    Setting("server", "motd", "Welcome to chatd. Type /help for commands.",
            "message of the day (it and `server.name` must leave 1800 bytes of "
            "`limits.max_frame` for the rest of the welcome frame)"),
    Setting("limits", "max_sessions", 1000, "sessions in total", 1, 1_000_000),
    Setting("limits", "max_sessions_per_ip", 50, "sessions from one source address (IPv6: "
            "one /64)", 1, 1_000_000),
    Setting("limits", "conn_rate_per_ip", 10.0,
            "new connections per second from one source address (IPv6: one /64), steady; "
            "more are refused before anything is forked, and each refusal costs a token "
            "too", 0.01, 1e9),
    Setting("limits", "conn_burst_per_ip", 50, "new connections from one source address in "
            "a burst", 1, 1_000_000_000),
    Setting("limits", "conn_sources", 10000, "source addresses the per-source connection "
            "rate remembers (the least recently seen is forgotten first)", 16, 10_000_000),
    Setting("limits", "session_rate", 200.0, "new sessions per second from all sources "
            "together, steady (each costs the parent a fork)", 0.01, 1e9),
    Setting("limits", "session_burst", 400, "new sessions from all sources in a burst", 1,
            1_000_000_000),
    Setting("limits", "max_frame", LIMITS["max_frame"], "largest frame payload in bytes, "
            "both directions (2048 to 16 MiB)", 2048, 16 << 20),
    Setting("limits", "max_text", LIMITS["max_text"], "largest message text in UTF-8 bytes",
            1, 60000),
    Setting("limits", "max_rooms", LIMITS["max_rooms"], "rooms one session may be in", 1, 10000),
    Setting("history", "page", LIMITS["history_page"], "most messages per history reply", 1,
            5000, attr="history_page"),
    Setting("history", "on_join", LIMITS["history_on_join"], "messages sent after a plain join",
            0, 5000, attr="history_on_join"),
    Setting("history", "recent", 256, "newest messages of each room the parent keeps in "
            "memory, so that most catch-up needs no disk read (0: none)", 0, 100_000,
            attr="history_recent"),
    Setting("history", "recent_mb", 32, "memory for those messages, all rooms together, "
            "in MiB (the least recently active rooms give way first)", 0, 1 << 16,
            attr="history_recent_mb"),
    Setting("keepalive", "ping_interval", LIMITS["ping_interval"],
            "seconds of client silence before a ping", 0.05, 86400),
    Setting("keepalive", "ping_timeout", LIMITS["ping_timeout"], "seconds to answer a ping",
            0.05, 86400),
    Setting("keepalive", "handshake_timeout", 10.0, "seconds to a successful hello", 0.05,
            3600),
    Setting("keepalive", "broker_grace", 10.0,
            "seconds a session outlives a vanished parent, waiting for it", 0.0, 3600),
    Setting("keepalive", "stop_timeout", 3.0,
            "seconds a session process told to end may take beyond queues.close_grace "
            "before the parent kills it (SIGKILL) and frees its slot; at shutdown too",
            0.5, 3600),
    Setting("keepalive", "tcp_keepalive", 60.0,
            "TCP keepalive idle seconds (probes every third of it, 3 tries)", 1, 86400),
    Setting("rate", "msg_rate", LIMITS["msg_rate"], "msg requests per second (steady)", 0.01,
            1e9),
    Setting("rate", "msg_burst", LIMITS["msg_burst"], "msg requests in a burst", 1,
            1_000_000_000),
    Setting("rate", "history_rate", LIMITS["history_rate"], "join/history requests per second",
            0.01, 1e9),
    Setting("rate", "history_burst", LIMITS["history_burst"], "join/history requests in a burst",
            1, 1_000_000_000),
    Setting("rate", "cmd_rate", LIMITS["cmd_rate"],
            "other requests (and invalid frames) per second", 0.01, 1e9),
    Setting("rate", "cmd_burst", LIMITS["cmd_burst"], "other requests in a burst", 1,
            1_000_000_000),
    Setting("rate", "flood_strikes", 50, "refusals without a 10 s pause before disconnect",
            1, 1_000_000_000),
    Setting("queues", "child_queue", 1 << 20,
            "bytes the parent buffers for one session before it is a slow consumer",
            4096, 1 << 30),
    Setting("queues", "client_queue", 1 << 20,
            "bytes a session buffers towards its client (its socket send buffer too) "
            "before it is a slow consumer", 4096, 1 << 30),
    Setting("queues", "close_grace", 5.0,
            "seconds an ending session keeps delivering its last frames (a fatal error "
            "last) to a client that does not read them, before it resets the connection",
            0.0, 3600),
    Setting("resources", "max_memory_mb", 256, "address-space limit of a session process "
            "(0: none)", 0, 1 << 20),
    Setting("resources", "max_files", 64, "open-file limit of a session process", 16, 65536),
    Setting("resources", "max_cpu_seconds", 86400, "CPU-time limit of a session process "
            "(0: none)", 0, 1 << 31),
    Setting("server", "spare_children", -1,
            "spare session processes kept waiting for connections, forked ahead by the "
            "fork server; -1: as many as the recent arrival rate wants (at least 2, at most "
            "`server.spare_max`); 0: each session is forked when its client comes", -1,
            65536),
    Setting("server", "spare_max", 128, "the most spare session processes "
            "`server.spare_children = -1` keeps (an idle spare holds 0.6-1.3 MiB)", 0, 65536),
    Setting("server", "user", "", "when chatd runs as root, the user (and its groups) "
            "session processes run as: the fork server switches to it for good before it "
            "forks any (a session the parent forks itself switches right after the fork), "
            "so a session never reads from its client as root; empty: sessions keep "
            "chatd's user. An unknown user or root is "
            "a configuration error (see [Security](#security-unprivileged-sandboxed-"
            "sessions))"),
    Setting("server", "sandbox", True, "session processes lose the file system, new sockets "
            "and connections, and other processes (a seccomp filter); where the kernel or "
            "the CPU architecture has no seccomp filters the log says so once at start-up"),
    Setting("server", "operators", [], "accounts that are server operators: operators of "
            "every room, who may also end any session (protocol.md §14), e.g. "
            "`[\"alice\"]`; a reload changes them for the requests that follow"),
    Setting("retention", "max_age_days", 0.0,
            "delete messages older than this many days (0: keep them forever)", 0, 1e6),
    Setting("retention", "max_messages", 0,
            "keep at most this many messages, deleting the oldest (0: no limit)", 0, 1 << 62),
    Setting("retention", "room_idle_days", 0.0, "drop the topic of a room that has had no "
            "member and no message for this many days (0: keep it)", 0, 1e6),
    Setting("retention", "max_topics", 10000, "topics kept in all; beyond it those of the "
            "empty rooms unused longest are dropped (0: no limit)", 0, 1 << 62),
    Setting("retention", "interval", 60.0, "seconds between retention runs (each deletes in "
            "small batches between routing)", 0.05, 86400, attr="retention_interval"),
    Setting("tls", "cert", "", "PEM certificate (chain) file; setting it opens the TLS "
            "listener. Relative paths start at the config file's directory. Reloaded on "
            "SIGHUP for new connections", attr="tls_cert"),
    Setting("tls", "key", "", "PEM private key file of `tls.cert` (empty: it is in the "
            "cert file)", attr="tls_key"),
    Setting("tls", "port", 7778, "TCP port of the TLS listener, on `--host` (0 picks a free "
            "one, logged as `listening for TLS on HOST:PORT`); a change needs a restart",
            0, 65535, attr="tls_port"),
    Setting("tls", "plain", True, "also listen for plain TCP on `--port` when TLS is on "
            "(false: TLS only); a change needs a restart", attr="tls_plain"),
    Setting("accounts", "iterations", 300_000, "PBKDF2 iterations of new password "
            "verifiers (protocol.md §12.2): each costs a registration and a PLAIN login that "
            "much work in the auth helper, and a SCRAM client as much; a change (SIGHUP) "
            "restarts the auth helper, and existing accounts keep their count", 4096,
            10_000_000,
            attr="accounts_iterations"),
    Setting("irc", "port", 6667, "TCP port of the IRC listener (protocol.md §13), on "
            "`--host`; 0 turns it off, -1 picks a free one (logged as `listening for IRC on "
            "HOST:PORT`); a change needs a restart", -1, 65535, attr="irc_port"),
    Setting("irc", "tls_port", 0, "TCP port of the IRC listener over TLS (the certificate "
            "and key of `tls.cert`, which it needs), on `--host`; 0 turns it off, -1 picks a "
            "free one (logged as `listening for IRC over TLS on HOST:PORT`); a change needs "
            "a restart", -1, 65535, attr="irc_tls_port"),
    Setting("cluster", "redis_url", "", "the Redis (7 or later) that joins this host to a "
            "cluster, e.g. `redis://10.0.0.5:6379/0` (empty: one host, nothing else to "
            "run). See [Running a cluster](#running-a-cluster); a change needs a restart"),
    Setting("cluster", "node", "", "this host's name in the cluster, unique among its hosts "
            "(letters, digits, `.`, `_`, `-`; empty: the host name)", attr="cluster_node"),
    Setting("cluster", "lease", 15.0, "seconds after its last sign of life a host that "
            "vanished is taken out of the cluster (its sessions leave their rooms, their "
            "nicks are free)", 1.0, 3600, attr="cluster_lease"),
    Setting("cluster", "write_timeout", 10.0, "seconds a message may wait for an "
            "unreachable Redis before its sender gets `storage_unavailable`", 0.1, 100),
    Setting("cluster", "stream_length", 1_000_000, "entries Redis keeps in the stream "
            "that hosts read from: how far behind a host may fall (while stopped or cut "
            "off) and still catch up without a gap", 1000, 1 << 40),
)
BY_KEY = {f"{s.section}.{s.name}": s for s in SETTINGS}
NODE_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
FRAME_OVERHEAD = 512  # bytes of a msg/message frame besides its text, with room to spare
# Bytes of a welcome besides the motd and the server name, at the worst (the longest label,
# nick and previous reason), with room to spare; tests/test_broker.py measures it.
WELCOME_OVERHEAD = 1800


class Value(Generic[T]):
    """A setting read as a typed attribute of Config (declared below, checked against
    SETTINGS at import: SETTINGS stays the one source of names, defaults and bounds)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, config: None, owner: type) -> Value[T]: ...
    @overload
    def __get__(self, config: Config, owner: type) -> T: ...
    def __get__(self, config: Config | None, owner: type) -> Value[T] | T:
        if config is None:
            return self
        value: T = config.values[self.name]
        return value


@dataclass(frozen=True)
class Config:
    """Every setting as a flat, typed attribute (see SETTINGS for meanings)."""

    host: str = "127.0.0.1"
    port: int = 7777
    data_dir: Path = field(default_factory=lambda: default_data_dir())
    config_file: Path | None = None
    log_level: str = "info"
    values: dict[str, Any] = field(default_factory=lambda: {
        s.key: s.default for s in SETTINGS})

    server_name = Value[str]()
    motd = Value[str]()
    max_sessions = Value[int]()
    max_sessions_per_ip = Value[int]()
    conn_rate_per_ip = Value[float]()
    conn_burst_per_ip = Value[int]()
    conn_sources = Value[int]()
    session_rate = Value[float]()
    session_burst = Value[int]()
    max_frame = Value[int]()
    max_text = Value[int]()
    max_rooms = Value[int]()
    history_page = Value[int]()
    history_on_join = Value[int]()
    history_recent = Value[int]()
    history_recent_mb = Value[int]()
    ping_interval = Value[float]()
    ping_timeout = Value[float]()
    handshake_timeout = Value[float]()
    broker_grace = Value[float]()
    stop_timeout = Value[float]()
    tcp_keepalive = Value[float]()
    msg_rate = Value[float]()
    msg_burst = Value[int]()
    history_rate = Value[float]()
    history_burst = Value[int]()
    cmd_rate = Value[float]()
    cmd_burst = Value[int]()
    flood_strikes = Value[int]()
    child_queue = Value[int]()
    client_queue = Value[int]()
    close_grace = Value[float]()
    max_memory_mb = Value[int]()
    max_files = Value[int]()
    max_cpu_seconds = Value[int]()
    spare_children = Value[int]()
    spare_max = Value[int]()
    max_age_days = Value[float]()
    max_messages = Value[int]()
    room_idle_days = Value[float]()
    max_topics = Value[int]()
    retention_interval = Value[float]()
    tls_cert = Value[str]()
    tls_key = Value[str]()
    tls_port = Value[int]()
    tls_plain = Value[bool]()
    irc_port = Value[int]()
    accounts_iterations = Value[int]()
    irc_tls_port = Value[int]()
    user = Value[str]()
    sandbox = Value[bool]()
    operators = Value[list[str]]()
    redis_url = Value[str]()
    cluster_node = Value[str]()
    cluster_lease = Value[float]()
    write_timeout = Value[float]()
    stream_length = Value[int]()

    @property
    def node(self) -> str:
        """cluster.node, or the host name."""
        name: str = self.values["cluster_node"] or socket.gethostname()
        return name

    def with_values(self, values: dict[str, Any]) -> Config:
        return replace(self, values=values)

    def limits(self) -> dict[str, Any]:
        """The limits a client is told about in welcome (the keys of DEFAULT_LIMITS)."""
        v = self.values
        return {key: type(default)(v[key]) for key, default in LIMITS.items()}


def _declared() -> dict[str, type]:
    """The typed attributes Config declares, by name (their type from Value[...])."""
    declared = {name: attr for name, attr in vars(Config).items() if isinstance(attr, Value)}
    types = {name: get_args(attr.__orig_class__)[0]  # type: ignore[attr-defined]
             for name, attr in declared.items()}
    return {name: get_origin(t) or t for name, t in types.items()}  # list[str] -> list


_missing = {s.key for s in SETTINGS} ^ set(_declared())
_mistyped = [s.key for s in SETTINGS if _declared().get(s.key) is not type(s.default)]
if _missing or _mistyped:  # a setting added or retyped in SETTINGS alone
    raise TypeError(f"Config's declared settings disagree with SETTINGS: "
                    f"{sorted(_missing) + _mistyped}")


class ConfigError(Exception):
    """The configuration file is unreadable or holds unknown keys or bad values."""


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"),
                                                           ".local", "share")
    return Path(base) / "chatd"


def _check(setting: Setting, value: Any) -> str | None:
    want = type(setting.default)
    key = f"{setting.section}.{setting.name}"
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, want) or isinstance(value, bool) != (want is bool):
        return f"{key}: expected {want.__name__}, got {type(value).__name__} {value!r}"
    if want is list and not all(isinstance(v, str) and NICK_RE.match(v) for v in value):
        return f"{key}: expected a list of account names (each a valid nick), got {value!r}"
    if setting.low is not None and value < setting.low:
        return f"{key}: {value!r} is below the minimum {setting.low:g}"
    if setting.high is not None and value > setting.high:
        return f"{key}: {value!r} is above the maximum {setting.high:g}"
    return None


def parse_settings(doc: dict[str, Any]) -> dict[str, Any]:
    """Validate a parsed TOML document; returns flat values or raises ConfigError."""
    values = {s.key: s.default for s in SETTINGS}
    errors = []
    for section, table in doc.items():
        if not isinstance(table, dict):
            errors.append(f"{section}: unknown top-level key (settings live in sections "
                          f"such as [limits])")
            continue
        for name, value in table.items():
            setting = BY_KEY.get(f"{section}.{name}")
            if setting is None:
                errors.append(f"{section}.{name}: unknown setting")
                continue
            problem = _check(setting, value)
            if problem:
                errors.append(problem)
            else:
                values[setting.key] = float(value) if isinstance(setting.default, float) \
                    else value
    if not errors and values["max_text"] + FRAME_OVERHEAD > values["max_frame"]:
        # A message of max_text bytes must fit in one frame, both ways (with room, label...).
        errors.append(f"limits.max_text ({values['max_text']}) must be at least "
                      f"{FRAME_OVERHEAD} bytes below limits.max_frame ({values['max_frame']})")
    welcome = len(values["motd"].encode()) + len(values["server_name"].encode())
    if not errors and welcome + WELCOME_OVERHEAD > values["max_frame"]:
        # The welcome frame must fit in max_frame like every other frame.
        errors.append(f"server.motd and server.name ({welcome} bytes) must be at least "
                      f"{WELCOME_OVERHEAD} bytes below limits.max_frame "
                      f"({values['max_frame']})")
    if not errors and not values["tls_cert"] and (values["tls_key"] or not values["tls_plain"]):
        errors.append("tls.key and tls.plain = false need tls.cert (without it there is no "
                      "TLS listener)")
    if not errors and not values["tls_cert"] and values["irc_tls_port"]:
        errors.append("irc.tls_port needs tls.cert (the IRC listener over TLS uses its "
                      "certificate)")
    if not errors and values["user"]:
        # Looked up here, in the parent (at start-up and on SIGHUP): a session process
        # makes no user-database look-up after the fork.
        problem = sandbox.resolve_user(values["user"])
        if problem:
            errors.append(problem)
    if not errors and values["redis_url"] and importlib.util.find_spec("redis") is None:
        errors.append("cluster.redis_url needs the redis package: pip install 'chatd[cluster]'")
    if not errors and values["redis_url"] and not values["redis_url"].startswith(
            ("redis://", "rediss://", "unix://")):
        errors.append(f"cluster.redis_url: {values['redis_url']!r} is not a redis://, "
                      f"rediss:// or unix:// URL")
    node = values["cluster_node"]
    if not errors and node and not NODE_RE.fullmatch(node):
        errors.append(f"cluster.node: {node!r} is not 1-64 letters, digits, "
                      f"'.', '_' or '-'")
    if errors:
        raise ConfigError("; ".join(errors))
    return values


def load_file(path: Path | None) -> dict[str, Any]:
    if path is None:
        return parse_settings({})
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return parse_settings(doc)


def diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [f"{k}: {old[k]!r} -> {new[k]!r}" for k in new if old.get(k) != new[k]]


def toml_value(value: Any) -> str:
    """A TOML literal for a setting's value, as `load_file` reads it back."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):  # a JSON string is a TOML basic string, but for DEL
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    return repr(value)


def dump_toml(settings: dict[str, Any]) -> str:
    """A config file: top-level keys first, then one table per nested dict (a section)."""
    lines = [f"{k} = {toml_value(v)}" for k, v in settings.items() if not isinstance(v, dict)]
    for section, values in settings.items():
        if isinstance(values, dict):
            lines.append(f"[{section}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def settings_table() -> str:
    """Markdown table of all settings, for README."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    rows += [f"| `{s.section}.{s.name}` | `{toml_value(s.default)}` | {s.doc} |" for s in SETTINGS]
    return "\n".join(rows)


