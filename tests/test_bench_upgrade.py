"""A tiny run of `chatd bench upgrade`: the report's shape and its counts, never timing."""

from __future__ import annotations

import json
import subprocess
import sys


def test_upgrade_bench_keeps_every_connection_and_delivery() -> None:
    cmd = [sys.executable, "-m", "chatd", "bench", "upgrade", "--json", "--quiet",
           "--clients", "12", "--senders", "3", "--room-size", "6", "--messages", "20",
           "--rate", "20", "--timeout", "30"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["scenario"] == "upgrade" and report["ok"] is True
    _connect, baseline, upgraded = report["phases"]
    assert (baseline["phase"], upgraded["phase"]) == ("baseline", "upgrade")
    assert upgraded["upgraded"] is True and "serves 12 sessions" in upgraded["outcome"]
    assert upgraded["dropped"] == 0 and upgraded["connections"] == 12
    for phase in (baseline, upgraded):
        assert phase["expected"] == 3 * 20 * 6 == phase["received"]
        assert phase["lost"] == 0 and phase["duplicates"] == 0
    (pause,) = report["targets"]
    assert pause["name"].startswith("delivery pause") and isinstance(pause["met"], bool)
