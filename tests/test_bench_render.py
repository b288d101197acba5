"""A tiny run of `chat-client --bench-render`: the report's shape, every key redrawn.

Keeps the benchmark working; it asserts no timing (the figures live in README).
"""

from __future__ import annotations

import json
import subprocess
import sys

from chat_client.benchrender import KEYS


def test_bench_render_reports_every_key_and_the_target() -> None:
    cmd = [sys.executable, "-m", "chat_client", "--bench-render", "--lines", "3000",
           "--page", "1000", "--rounds", "1", "--rate", "50", "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] and report["keys_without_redraw"] == []
    assert set(report["keys"]) == {name for name, _ in KEYS}
    assert report["all_keys"]["n"] == len(KEYS) == report["cpu_per_key"]["n"]
    assert report["fill"] == {**report["fill"], "pages": 3, "page_size": 1000}
    assert report["lines_held"] == 3000
    (target,) = report["targets"]
    assert target["target"] == "every key under 30 ms" and isinstance(target["met"], bool)
