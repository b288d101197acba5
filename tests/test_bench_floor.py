"""A tiny run of `chatd bench floor`: the relays deliver everything, the report's shape.

Asserts no timing (the numbers live in README).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from chatd.bench import floor


def run_floor(*extra: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "chatd", "bench", "floor", "--json", "--rounds", "1",
           "--members", "4", "--messages", "20", "--rate", "400", "--timeout", "20", *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


@pytest.mark.parametrize("use_c", [False, True])
def test_floor_relay_delivers_every_frame_once_per_wakeup(tmp_path: Any,
                                                          use_c: bool) -> None:
    binary = floor.build_c(tmp_path) if use_c else None
    if use_c and binary is None:
        pytest.skip("no C compiler here")
    out = floor.floor_run(3, 30, 300.0, binary, timeout=20.0)
    assert out["deliveries"] == out["expected"] == 90
    assert out["relay_us_per_delivery"] > 0 and out["send_us_per_delivery"] > 0
    assert out["wakeups_per_delivery"] > 0
    assert out["latency_ms"]["max"] >= out["latency_ms"]["p50"] > 0


def test_floor_reports_chatd_against_the_floors() -> None:
    report = run_floor()
    assert report["shape"]["members"] == 4
    assert report["floor_python"]["relay_us_per_delivery"] > 0
    floor_py = report["floor_python"]
    assert report["floor_design_us_per_delivery"] == pytest.approx(
        floor_py["relay_us_per_delivery"] + floor_py["send_us_per_delivery"], abs=0.002)
    assert (report["floor_c"] is None) == (not report["compiler"])
    for scenario in ("steady", "burst"):
        row = report[scenario]
        assert row["server_cpu_us_per_delivery"] > 0
        assert row["session_wakeups_per_message"] > 0
    assert [t["name"] for t in report["targets"]] == [
        "steady server CPU per delivery vs the Python floor"]


def test_floor_alone_skips_chatd() -> None:
    report = run_floor("--no-chatd")
    assert "steady" not in report and "burst" not in report and report["targets"] == []
