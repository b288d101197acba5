"""A tiny run of `chatd bench admin`: the report's shape and its counts, never timing."""

from __future__ import annotations

import json
import subprocess
import sys


def test_admin_bench_answers_queries_while_chat_goes_on() -> None:
    cmd = [sys.executable, "-m", "chatd", "bench", "admin", "--json", "--quiet",
           "--clients", "12", "--senders", "3", "--room-size", "6", "--messages", "10",
           "--rate", "20", "--timeout", "30"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["scenario"] == "admin" and report["ok"] is True
    _connect, baseline, status, sessions = report["phases"]
    assert [p["phase"] for p in (baseline, status, sessions)] == ["baseline", "status",
                                                                   "sessions"]
    for phase in (baseline, status, sessions):
        assert phase["expected"] == 3 * 10 * 6 == phase["received"]
        assert phase["lost"] == 0 and phase["duplicates"] == 0
    for phase in (status, sessions):
        assert phase["queries"] > 0 and phase["query_failures"] == 0
        assert phase["query_ms"]["max"] >= phase["query_ms"]["p50"] > 0
        assert isinstance(phase["added_p99_ms"], float)
    assert sessions["answer_bytes"] > status["answer_bytes"]  # twelve sessions described
    assert [t["name"] for t in report["targets"]] == [
        "latency p99 added by status queries", "latency p99 added by sessions queries"]
