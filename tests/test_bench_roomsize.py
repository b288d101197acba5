"""A tiny run of `chatd bench roomsize`: one row per size, nothing lost, the table.

Asserts no timing (the numbers live in README).
"""

from __future__ import annotations

import json
import subprocess
import sys


def test_roomsize_tabulates_each_size_at_the_same_deliveries_per_second() -> None:
    cmd = [sys.executable, "-m", "chatd", "bench", "roomsize", "--json", "--sizes", "2,4",
           "--deliveries", "40", "--seconds", "0.5"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert [r["members"] for r in report["rows"]] == [2, 4]
    assert [r["rate"] for r in report["rows"]] == [20, 10]
    for r in report["rows"]:
        assert r["ok"] and r["runs"] == 1 and r["lost"] == 0
        assert r["server_us"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0 and r["pss_mib"] > 0
    assert report["targets"] == []  # (only a room of 1,000 at 20 msg/s has one)


def test_roomsize_renders_a_markdown_table() -> None:
    cmd = [sys.executable, "-m", "chatd", "bench", "roomsize", "--sizes", "3",
           "--deliveries", "30", "--seconds", "0.3"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[1].startswith("| members |") and lines[3].startswith("| 3 | 10 |")
    assert lines[-1] == "result: OK"


def test_a_room_too_big_for_the_memory_is_skipped_with_a_line() -> None:
    cmd = [sys.executable, "-m", "chatd", "bench", "roomsize", "--json", "--sizes",
           "2,100000000", "--deliveries", "20", "--seconds", "0.3"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert [r["members"] for r in report["rows"]] == [2]
    (note,) = report["skipped"]
    assert note.startswith("a room of 100,000,000 skipped: its sessions need ~")
    assert "room of 100,000,000 skipped" in done.stderr
