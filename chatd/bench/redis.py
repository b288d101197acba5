"""A real `redis-server` for `chatd bench cluster` and the cluster tests: its own
directory, a loopback port, append-only persistence (`appendfsync everysec`, as README
recommends), started and stopped by its pid only."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Self

from .probes import cpu_usage


class RedisServer:
    def __init__(self, directory: Path, port: int, persist: bool = True) -> None:
        self.dir = directory
        self.port = port
        self.persist = persist
        self.proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 10.0) -> Self:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.dir), "--save", "", "--daemonize", "no",
                "--logfile", str(self.dir / "redis.log"),
                "--appendonly", "yes" if self.persist else "no",
                "--appendfsync", "everysec"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log()[-500:]}")
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith(b"+PONG"):
                    return self
            time.sleep(0.02)
        raise TimeoutError("redis-server did not answer PING")

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "redis.log").read_text(errors="replace")
        return ""

    def stop(self, sig: int = signal.SIGKILL) -> None:
        """Kill it (SIGKILL by default: a crash; what it wrote to its AOF survives)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)
        self.proc.wait(timeout=10)
        self.proc = None

    def cpu_seconds(self) -> float:
        """CPU time Redis has used so far, all its threads (their /proc schedstat)."""
        usage = cpu_usage(self.pid)
        return usage[0] / 1e9 if usage else 0.0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
