"""A tiny run of `chatd bench irc` against chatd's own IRC port only (CI has no ngIRCd or
InspIRCd): every scenario over IRC lines, nothing lost, one table.

Asserts no timing (the numbers live in README).
"""

from __future__ import annotations

import json
import subprocess
import sys

from chatd.bench import irc, load

TINY = ["--servers", "chatd", "--rounds", "1", "--clients", "5", "--senders", "2",
        "--messages", "10", "--rate", "100", "--idle-clients", "6", "--connect-clients", "4",
        "--timeout", "20"]


def test_irc_bench_runs_every_scenario_over_irc_against_chatd() -> None:
    done = subprocess.run([sys.executable, "-m", "chatd", "bench", "irc", "--json",
                           "--quiet", *TINY], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    out = json.loads(done.stdout)
    assert list(out["results"]) == ["chatd"] and out["skipped"] == []
    runs = out["results"]["chatd"]
    assert sorted(runs) == ["burst", "connect", "idle", "steady"]
    for scenario in ("burst", "steady"):
        (report,) = runs[scenario]
        connect, deliver = report["phases"]
        assert connect["connected"] == 5 and connect["failed"] == 0
        # IRC sends a sender no copy of its own message: 4 deliveries of each of 20.
        assert deliver["messages"] == 20 and deliver["expected"] == 20 * 4
        assert deliver["received"] == deliver["expected"]
        assert deliver["lost"] == 0 and deliver["duplicates"] == 0 and deliver["errors"] == {}
        assert deliver["server_cpu_us_per_delivery"] > 0
        assert deliver["latency_ms"]["max"] >= deliver["latency_ms"]["p50"] > 0
        if load.SO_TIMESTAMPNS is not None:  # each line reached its socket before it was read
            arrival = deliver["arrival_ms"]
            assert all(0 <= arrival[q] <= deliver["latency_ms"][q] for q in arrival)
    (idle,) = runs["idle"]
    assert idle["phases"][0]["connected"] == 6 and idle["pss_kib_per_client"] > 0
    (connect,) = runs["connect"]
    assert connect["phases"][0]["connected"] == 4 and connect["phases"][0]["failed"] == 0
    rows = out["table"]["rows"]
    assert [row["metric"] for row in rows] == [label for label, *_rest in irc.ROWS]
    stamped = load.SO_TIMESTAMPNS is not None  # (else no figures at the sockets)
    assert all(row["values"]["chatd"] is not None for row in rows
               if stamped or "sockets" not in row["metric"])
    assert out["table"]["ok"] == {"chatd": True}


def test_irc_bench_table_and_a_missing_server_skipped() -> None:
    """A server that is not installed (here: a program that is not there) is a line in
    the report, not a failure."""
    done = subprocess.run([sys.executable, "-m", "chatd", "bench", "irc", *TINY,
                           "--servers", "chatd,ngircd", "--ngircd", "/nonexistent/ngircd",
                           "--scenarios", "steady"],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    skipped = "ngircd is not installed: skipped (no /nonexistent/ngircd"
    assert any(line.startswith(skipped) for line in lines)
    assert "| metric | chatd |" in lines and lines[-1] == "result: OK"
    assert any(line.startswith("| latency p99, steady | ") for line in lines)
