"""A real `redis-server` for the cluster tests (and `chatd bench cluster`): its own
directory, a free loopback port, append-only persistence, killed by its pid only."""

from __future__ import annotations

import shutil
import socket

from chatd.bench.redis import RedisServer

__all__ = ["REDIS", "RedisServer", "free_port"]

REDIS = shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
