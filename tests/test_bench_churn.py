"""A tiny run of `chatd bench churn`: the report's shape, never its timing."""

from __future__ import annotations

import json
import subprocess
import sys


def test_churn_reports_the_bystander_idle_and_under_attack() -> None:
    cmd = [sys.executable, "-m", "chatd", "bench", "churn", "--json", "--quiet",
           "--timeout", "20", "--phase-seconds", "0.6", "--attack-rate", "100"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["scenario"] == "churn" and report["ok"] is True
    idle, attack = report["phases"]
    assert (idle["phase"], attack["phase"]) == ("idle", "attack")
    for phase in (idle, attack):
        assert phase["messages"] > 0 and phase["received"] == phase["messages"]
        assert phase["lost"] == 0 and phase["duplicates"] == 0
        assert phase["welcomes"] > 0 and phase["welcome_failures"] == {}
        assert set(phase["chat_ms"]) == set(phase["welcome_ms"]) == {"p50", "p90", "p99",
                                                                      "max"}
    attacker = report["attacker"]
    assert attacker["source"] == "127.0.0.1" and attacker["connected"] > 0
    names = [t["name"] for t in report["targets"]]
    assert len(names) == 2 and all(isinstance(t["met"], bool) for t in report["targets"])
    assert any("welcome" in n for n in names) and any("chat p99" in n for n in names)


def test_churn_human_report() -> None:
    cmd = [sys.executable, "-m", "chatd", "bench", "churn", "--quiet", "--timeout", "20",
           "--phase-seconds", "0.4", "--attack-rate", "50", "--attack-bytes", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    for word in ("writes 1 byte(s) and resets", "attacker", "bystander welcome p50",
                 "bystander chat round trip p50",
                 "target         bystander welcome p99 under attack", "result         OK"):
        assert word in done.stdout, done.stdout
