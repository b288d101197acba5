"""The server under test: one `chatd serve` subprocess on a loopback port.

Used by `chatd bench` (a temporary data dir, rate limits lifted, a quiet log) and by the
test harness (tests/serverproc.py: a debug log the tests read). It writes the config
file, starts the server, learns its port from its log or from /proc, keeps every log line
for assertions, and stops it with SIGTERM (SIGKILL for it and its sessions if it hangs).
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self, TypeVar

from chatd.config import dump_toml
from chatd.sparepool import AUTO, AUTO_MIN

from .probes import (
    child_states,
    children_of,
    is_auth_helper,
    is_reader,
    is_zygote,
    listening_ports,
)

T = TypeVar("T")
LISTEN_RE = re.compile(r"listening on (\S+):(\d+)")


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.02,
               message: str = "condition") -> T:
    """Poll `predicate` until it returns a truthy value (returned), or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {message}")
        time.sleep(interval)


def kill_quietly(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal a process this program started (by its pid), if it still exists."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def write_config(path: Path, settings: dict[str, Any]) -> Path:
    """Write a flat-or-sectioned dict as a TOML config file (sections are nested dicts)."""
    path.write_text(dump_toml(settings))
    return path


class Server:
    """One `chatd serve` subprocess; collects its log lines (stderr) as they come."""

    def __init__(self, data_dir: Path, settings: dict[str, Any] | None = None,
                 host: str = "127.0.0.1", log_level: str = "debug",
                 extra_args: list[str] | None = None) -> None:
        self.data_dir = data_dir
        self.settings = settings = settings or {}
        if "irc" not in settings:  # 6667 is one port for the whole machine: off unless asked
            self.settings = {**settings, "irc": {"port": 0}}
        self.config_path = write_config(data_dir / "chatd.toml", self.settings)
        self.host = host
        self.log_level = log_level
        self.extra_args = extra_args or []
        self.port = 0
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._drained = False  # the server closed its stderr (exited)
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 15.0, port_from_log: bool = True) -> Self:
        """Start and learn the port from the "listening on" line, or (port_from_log=False,
        for quiet log levels) from the kernel's table of listening sockets."""
        cmd = [sys.executable, "-m", "chatd", "serve", "--host", self.host, "--port", "0",
               "--data-dir", str(self.data_dir), "--config", str(self.config_path),
               "--log-level", self.log_level, *self.extra_args]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, encoding="utf-8",
                                     errors="replace", env=env)
        threading.Thread(target=self._drain, daemon=True).start()
        proc = self.proc
        if port_from_log:
            match = LISTEN_RE.search(self.wait_for_log(LISTEN_RE, timeout))
            assert match
            self.port = int(match.group(2))
        else:
            try:
                ports = wait_until(lambda: listening_ports(proc.pid) or proc.poll() is not None,
                                   timeout, message="a listening socket")
            except TimeoutError:
                raise TimeoutError("chatd serve did not start listening:\n"
                                   + self.log_tail()) from None
            if proc.poll() is not None:
                raise RuntimeError(f"chatd serve exited with {proc.returncode}:\n"
                                   + self.log_tail())
            assert isinstance(ports, set)
            self.port = sorted(ports)[0]
        # Right after listening the parent starts its history reader, its auth helper and
        # its fork server. Until each has named itself (or exec'd `python -m
        # chatd.reader`), /proc shows a process just like a session: wait for all, so
        # that counts of sessions are right from the start.
        def helpers_up() -> bool:
            kids = children_of(proc.pid)
            return any(map(is_reader, kids)) and any(map(is_auth_helper, kids)) \
                and any(map(is_zygote, kids))
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: proc.poll() is not None or helpers_up(), timeout, 0.005,
                       "the history reader, the auth helper and the fork server")
        return self

    @property
    def pid(self) -> int:
        assert self.proc
        return self.proc.pid

    def _drain(self) -> None:
        assert self.proc and self.proc.stderr
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._drained = True
            self._cond.notify_all()

    def mark(self) -> int:
        """Index of the next log line, for wait_for_log(start=...)."""
        with self._cond:
            return len(self.lines)

    def wait_for_log(self, pattern: str | re.Pattern[str], timeout: float = 10.0,
                     start: int = 0) -> str:
        """The first log line from index `start` on that matches, waiting for it;
        TimeoutError (with the log's tail) when none comes in time or the log ends."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[start:]:
                    if regex.search(line):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._drained:  # the log ended: no line will come
                    raise TimeoutError(f"no log line matching {regex.pattern!r}; log:\n"
                                       + self.log_tail(60))
                self._cond.wait(min(remaining, 0.2))

    def log_tail(self, lines: int = 30) -> str:
        with self._cond:
            return "\n".join(self.lines[-lines:])

    def children(self) -> list[int]:
        """PIDs of the server's session processes (zombies included)."""
        return [pid for pid, _state in child_states(self.pid)]

    def reader(self) -> int:
        """PID of the server's history reader (waits for it to be started)."""
        def find() -> int:  # 0 until there is exactly one
            pids = [pid for pid, st in child_states(self.pid, helpers=True)
                    if st != "Z" and is_reader(pid)]
            return pids[0] if len(pids) == 1 else 0
        return wait_until(find, message="the history reader")

    def signal(self, sig: int) -> None:
        assert self.proc
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = 15.0) -> int:
        assert self.proc
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 15.0, wait_sessions: float = 0.0) -> int:
        """SIGTERM and wait; SIGKILL the server and its sessions if it hangs. With
        `wait_sessions`, also wait up to that long for the sessions to be gone (they
        exit after the parent, and a benchmark's next run should not see them)."""
        assert self.proc
        if self.proc.poll() is None:
            kids = children_of(self.pid)  # the sessions and the history reader
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                for pid in kids:  # only the sessions of the server we started
                    kill_quietly(pid)
                self.proc.kill()
                self.proc.wait(5)
            if wait_sessions:
                with contextlib.suppress(TimeoutError):
                    wait_until(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in kids),
                               wait_sessions, 0.05, "the sessions to exit")
        return self.proc.returncode


def bench_settings(clients: int, extra: dict[str, dict[str, Any]],
                   admission: bool = False) -> dict[str, dict[str, Any]]:
    """Server settings that lift the per-client limits a load test would trip (and the
    connection rates too, unless `admission` is what the scenario measures)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    spare = int(extra.get("server", {}).get("spare_children", 0))
    cap = clients + 64
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard - 64 - spare - 1)
    huge = 1_000_000_000
    settings: dict[str, dict[str, Any]] = {
        "limits": {"max_sessions": cap, "max_sessions_per_ip": cap},
        "rate": {"msg_rate": 1e9, "msg_burst": huge, "history_rate": 1e9,
                 "history_burst": huge, "cmd_rate": 1e9, "cmd_burst": huge,
                 "flood_strikes": huge},
        "history": {"on_join": 0},
        "keepalive": {"ping_interval": 3600.0, "handshake_timeout": 120.0},
        "queues": {"child_queue": 64 << 20, "client_queue": 64 << 20},
    }
    if admission:  # what is measured is the server's own admission: its defaults
        del settings["limits"]
    else:  # every bench client connects from one address, as fast as it can
        settings["limits"].update({"conn_rate_per_ip": 1e9, "conn_burst_per_ip": huge,
                                   "session_rate": 1e9, "session_burst": huge})
    for section, values in extra.items():
        settings.setdefault(section, {}).update(values)
    return settings


def spawn(settings: dict[str, dict[str, Any]], data_dir: Path) -> Server:
    """A quiet server for a benchmark, started, with its pool of spare sessions full."""
    server = Server(data_dir, settings, log_level="warning")
    try:
        server.start(timeout=20.0, port_from_log=False)
        spare = int(settings.get("server", {}).get("spare_children", AUTO))
        spare = AUTO_MIN if spare == AUTO else spare  # (an idle auto pool's size)
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: len(server.children()) == spare, 30.0, 0.05, "the spares")
    except BaseException:
        if server.proc is not None:
            server.stop()
        raise
    return server
