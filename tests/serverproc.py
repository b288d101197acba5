"""Start the real `chatd serve` as a subprocess on an ephemeral loopback port.

The spawner, the poller and the /proc probes are the benchmark's (chatd/bench/server.py
and probes.py); this adds what tests want on top: a debug log to assert on, connection
rates that let a module's many clients in, and a failed assertion (not a TimeoutError)
when something a test waits for does not come.
"""

from __future__ import annotations

import os
import pwd
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self, TypeVar

from chatd.bench import server as bench
from chatd.bench.probes import child_states, is_spare, listening_ports, proc_stat
from chatd.bench.server import Server, kill_quietly

T = TypeVar("T")

__all__ = ["FAST", "FORK_SERVER_RE", "ServerProcess", "child_states", "kill_quietly",
           "listening_ports", "newest_session", "proc_stat", "reap", "set_child_subreaper",
           "wait_until", "write_config"]

# Rate limits lifted for tests that send faster than a person types (the rate tests set
# their own).
FAST: dict[str, Any] = {"rate": {
    "msg_rate": 100000.0, "msg_burst": 100000, "history_rate": 100000.0,
    "history_burst": 100000, "cmd_rate": 100000.0, "cmd_burst": 100000}}
IRC_LISTEN_RE = re.compile(r"listening for IRC on (\S+):(\d+)")
IRC_TLS_LISTEN_RE = re.compile(r"listening for IRC over TLS on (\S+):(\d+)")
TLS_LISTEN_RE = re.compile(r"listening for TLS on (\S+):(\d+)")
SESSION_RE = re.compile(r"session (\S+) from \S+: pid (\d+)")
FORK_SERVER_RE = re.compile(r"fork server: pid (\d+)")

# Every test client connects from 127.0.0.1, a module's tests often dozens a second, which
# the server's default per-address connection rate would refuse. Tests of that rate set
# their own (tests/test_server_admission.py).
HARNESS_LIMITS = {"conn_rate_per_ip": 1000.0, "conn_burst_per_ip": 1000}


def harness_user() -> str:
    """As root (CI), test servers run their sessions as `nobody`, the way README tells
    root to run chatd: then every server test also proves that a session does all it
    does without privileges and inside its sandbox (issue 10 §3)."""
    if os.geteuid() != 0:
        return ""
    try:
        return pwd.getpwnam("nobody").pw_name
    except KeyError:
        return ""


HARNESS_USER = harness_user()


def with_harness_limits(config: dict[str, Any]) -> dict[str, Any]:
    server = config.get("server", {})
    if HARNESS_USER and "user" not in server:
        server = {**server, "user": HARNESS_USER}
    # No spare pool unless a test asks for one: the server's children are its sessions
    # (each forked by the fork server when its client comes).
    config = {**config, "server": {"spare_children": 0, **server}}
    limits = config.get("limits", {})
    if any(key in limits for key in HARNESS_LIMITS):
        return config
    return {**config, "limits": {**HARNESS_LIMITS, **limits}}


def write_config(path: Path, settings: dict[str, Any]) -> Path:
    """A test server's config file, with the harness's settings as ServerProcess gives
    them at the start: a file a test writes for a SIGHUP reload (or a restart) must not
    take them away (the sessions' unprivileged user above all: reloaded without it, a
    server run by root went on with sessions as root)."""
    return bench.write_config(path, with_harness_limits(settings))


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.02,
               message: str = "condition") -> T:
    """chatd.bench.server.wait_until, failing the test at the deadline."""
    try:
        return bench.wait_until(predicate, timeout, interval, message)
    except TimeoutError as exc:
        raise AssertionError(str(exc)) from None


class ServerProcess(Server):
    """One `chatd serve` subprocess at log level debug; its log lines are in `lines`. A
    server that does not start, or a log line that does not come, fails the test."""

    def __init__(self, data_dir: Path, config: dict[str, Any] | None = None,
                 host: str = "127.0.0.1", extra_args: list[str] | None = None) -> None:
        super().__init__(data_dir, with_harness_limits(config or {}), host=host,
                         log_level="debug", extra_args=extra_args)

    def start(self, timeout: float = 15.0, port_from_log: bool = True) -> Self:
        try:
            return super().start(timeout, port_from_log)
        except (TimeoutError, RuntimeError) as exc:
            raise AssertionError(str(exc)) from None

    @property
    def irc_port(self) -> int:
        """The IRC listener's port (the server was started with `"irc": {"port": -1}`)."""
        match = IRC_LISTEN_RE.search(self.wait_for_log(IRC_LISTEN_RE))
        assert match
        return int(match.group(2))

    @property
    def tls_port(self) -> int:
        """The native TLS listener's port (`"tls": {"port": 0, ...}`)."""
        match = TLS_LISTEN_RE.search(self.wait_for_log(TLS_LISTEN_RE))
        assert match
        return int(match.group(2))

    @property
    def irc_tls_port(self) -> int:
        """The port of the IRC listener over TLS (`"irc": {"tls_port": -1}`)."""
        match = IRC_TLS_LISTEN_RE.search(self.wait_for_log(IRC_TLS_LISTEN_RE))
        assert match
        return int(match.group(2))

    def sessions(self) -> list[int]:
        """PIDs of the server's session processes (zombies included), without the spares
        waiting for a client. Even with `spare_children = 0` one may come and go: when
        the fork server is slower than chatd.sparepool.WAIT_LIMIT (starting up, on a
        loaded machine) the parent forks the waiting client's session itself, and the
        spare it asked the fork server for comes later, unwanted, and is retired."""
        return [pid for pid in self.children() if not is_spare(pid)]

    def wait_for_log(self, pattern: str | re.Pattern[str], timeout: float = 10.0,
                     start: int = 0) -> str:
        try:
            return super().wait_for_log(pattern, timeout, start)
        except TimeoutError as exc:
            raise AssertionError(str(exc)) from None


def newest_session(server: ServerProcess, start: int) -> tuple[str, int]:
    """(session id, pid) of the first session forked after log line `start`."""
    match = SESSION_RE.search(server.wait_for_log(SESSION_RE, start=start))
    assert match
    return match.group(1), int(match.group(2))


def set_child_subreaper(on: bool) -> bool:
    """Make this process adopt orphaned descendants (Linux prctl), so a test can reap and
    inspect them; returns False where that is not possible."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1 if on else 0, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def reap(pid: int, timeout: float = 10.0) -> int | None:
    """Wait for our own (adopted) child `pid` to exit; its raw wait status, or None if it
    is not our child."""
    def exited() -> tuple[int | None] | None:
        try:
            got, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return (None,)
        return (status,) if got == pid else None

    return wait_until(exited, timeout, message=f"pid {pid} to exit")[0]
