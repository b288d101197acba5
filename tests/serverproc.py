"""Start the real `chatd serve` as a subprocess on an ephemeral loopback port."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

LISTEN_RE = re.compile(r"listening on (\S+):(\d+)")
SESSION_RE = re.compile(r"session (\S+) from \S+: pid (\d+)")


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def write_config(path: Path, settings: dict[str, Any]) -> Path:
    """Write a flat-or-sectioned dict as TOML (sections are nested dicts)."""
    lines = [f"{k} = {toml_value(v)}" for k, v in settings.items() if not isinstance(v, dict)]
    for section, values in settings.items():
        if isinstance(values, dict):
            lines.append(f"[{section}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


# Every test client connects from 127.0.0.1, a module's tests often dozens a second, which
# the server's default per-address connection rate would refuse. Tests of that rate set
# their own (tests/test_hardening_admission.py).
HARNESS_LIMITS = {"conn_rate_per_ip": 1000.0, "conn_burst_per_ip": 1000}


def with_harness_limits(config: dict[str, Any]) -> dict[str, Any]:
    limits = config.get("limits", {})
    if any(key in limits for key in HARNESS_LIMITS):
        return config
    return {**config, "limits": {**HARNESS_LIMITS, **limits}}


class ServerProcess:
    """One `chatd serve` subprocess; collects its log lines for assertions."""

    def __init__(self, data_dir: Path, config: dict[str, Any] | None = None,
                 host: str = "127.0.0.1", extra_args: list[str] | None = None) -> None:
        self.data_dir = data_dir
        self.config_path = data_dir / "chatd.toml"
        write_config(self.config_path, with_harness_limits(config or {}))
        self.host = host
        self.extra_args = extra_args or []
        self.port = 0
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._drained = False  # the server closed its stderr (exited)
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 15.0, port_from_log: bool = True) -> ServerProcess:
        """Start and learn the port from the "listening on" line, or (port_from_log=False,
        for quiet log levels) from the kernel's table of listening sockets."""
        cmd = [sys.executable, "-m", "chatd", "serve", "--host", self.host, "--port", "0",
               "--data-dir", str(self.data_dir), "--config", str(self.config_path),
               "--log-level", "debug", *self.extra_args]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, env=env)
        threading.Thread(target=self._drain, daemon=True).start()
        if not port_from_log:
            proc = self.proc
            ports = wait_until(lambda: listening_ports(proc.pid) or proc.poll() is not None,
                               timeout, message="a listening socket")
            assert proc.poll() is None, "server exited:\n" + "\n".join(self.lines)
            self.port = sorted(ports)[0]
            return self
        line = self.wait_for_log(LISTEN_RE, timeout)
        match = LISTEN_RE.search(line)
        assert match
        self.port = int(match.group(2))
        return self

    def mark(self) -> int:
        """Index of the next log line, for wait_for_log(start=...)."""
        with self._cond:
            return len(self.lines)

    def wait_exit(self, timeout: float = 15.0) -> int:
        assert self.proc
        return self.proc.wait(timeout)

    def _drain(self) -> None:
        assert self.proc and self.proc.stderr
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._drained = True
            self._cond.notify_all()

    def wait_for_log(self, pattern: str | re.Pattern[str], timeout: float = 10.0,
                     start: int = 0) -> str:
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[start:]:
                    if regex.search(line):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._drained:  # the log ended: no line will come
                    raise AssertionError(f"no log line matching {regex.pattern!r}; log:\n"
                                         + "\n".join(self.lines[-60:]))
                self._cond.wait(min(remaining, 0.2))

    @property
    def pid(self) -> int:
        assert self.proc
        return self.proc.pid

    def children(self) -> list[int]:
        """PIDs of the server's session processes (zombies included)."""
        return [pid for pid, _state in child_states(self.pid)]

    def reader(self) -> int:
        """PID of the server's history reader (waits for it to be started)."""
        def find() -> int | None:
            pids = [pid for pid, st in child_states(self.pid, helpers=True)
                    if st != "Z" and is_reader(pid)]
            return pids[0] if len(pids) == 1 else None
        pid: int = wait_until(find, message="the history reader")
        return pid

    def signal(self, sig: int) -> None:
        assert self.proc
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; SIGKILL the server and its children if it hangs."""
        assert self.proc
        if self.proc.poll() is None:
            kids = [pid for pid, _state in child_states(self.pid, helpers=True)]
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                for pid in kids:
                    kill_quietly(pid)
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def kill_quietly(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, ppid) of a process, or None when it is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = data[data.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def is_reader(pid: int) -> bool:
    """Whether `pid` is the server's history reader (its helper process, not a session):
    it runs `python -m chatd.reader`, which its command line says from its first moment."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"chatd.reader" in args


def child_states(ppid: int, helpers: bool = False) -> list[tuple[int, str]]:
    """(pid, state letter) of each child of `ppid`: its session processes, and with
    `helpers` its history reader too."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = proc_stat(int(entry))
            if st and st[1] == ppid and (helpers or not is_reader(int(entry))):
                out.append((int(entry), st[0]))
    return out


def listening_ports(pid: int) -> set[int]:
    """TCP ports that process `pid` listens on (IPv4 and IPv6), from /proc."""
    inodes = set()
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{name}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    except OSError:
        return set()
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                cols = row.split()
                if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


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
    deadline = time.monotonic() + timeout
    while True:
        try:
            got, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if got == pid:
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"pid {pid} did not exit within {timeout}s")
        time.sleep(0.02)


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.02,
               message: str = "condition") -> Any:
    """Poll `predicate` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        time.sleep(interval)


def newest_session(server: ServerProcess, start: int) -> tuple[str, int]:
    """(session id, pid) of the first session forked after log line `start`."""
    match = SESSION_RE.search(server.wait_for_log(SESSION_RE, start=start))
    assert match
    return match.group(1), int(match.group(2))
