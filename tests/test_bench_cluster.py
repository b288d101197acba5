"""A tiny run of `chatd bench cluster`: the report's shape and no loss, never its timing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from redisproc import REDIS


@pytest.mark.skipif(REDIS is None, reason="redis-server is not installed")
@pytest.mark.timeout(120)
def test_bench_cluster_smoke() -> None:
    """Two hosts, a few clients: every message delivered once, within and across hosts."""
    done = subprocess.run([sys.executable, "-m", "chatd", "bench", "cluster", "--json",
                           "--hosts", "2", "--clients", "6", "--senders", "2",
                           "--messages", "5", "--rate", "20", "--seconds", "0.5",
                           "--room-size", "0"], capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["ok"] and [ph["phase"] for ph in report["phases"]] == ["burst", "steady"]
    for ph in report["phases"]:
        assert ph["lost"] == ph["duplicates"] == ph["refused"] == 0
        assert ph["latency_within_ms"]["n"] and ph["latency_across_ms"]["n"]
        assert ph["redis_cpu_s"] >= 0
