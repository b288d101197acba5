"""A tiny run of `chatd bench history`: the report's shape, never its timing."""

from __future__ import annotations

import json
import subprocess
import sys

TINY = ["--clients", "3", "--messages", "400", "--phase-seconds", "0.5", "--timeout", "20"]


def test_history_reports_the_bystander_idle_under_attack_and_after() -> None:
    cmd = [sys.executable, "-m", "chatd", "bench", "history", "--json", "--quiet", *TINY]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["scenario"] == "history" and report["ok"] is True
    assert [ph["phase"] for ph in report["phases"]] == ["idle", "attack", "after"]
    for phase in report["phases"]:
        assert phase["messages"] > 0 and phase["received"] == phase["messages"]
        assert phase["lost"] == 0 and phase["duplicates"] == 0
        assert set(phase["chat_ms"]) == {"p50", "p90", "p99", "max"}
        assert phase["server_cpu_reader_s"] is not None
    attacker = report["attacker"]
    assert attacker["sessions"] == 3 and attacker["requests"] > 0 and attacker["pages"] > 0
    (target,) = report["targets"]
    assert "chat p99 under attack" in target["name"] and isinstance(target["met"], bool)


def test_history_human_report() -> None:
    cmd = [sys.executable, "-m", "chatd", "bench", "history", "--quiet", *TINY]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    for word in ("attacker", "history requests", "idle           bystander chat round trip",
                 "attack         bystander chat round trip", "history reader",
                 "target         bystander chat p99 under attack", "result         OK"):
        assert word in done.stdout, done.stdout
