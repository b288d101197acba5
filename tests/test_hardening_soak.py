"""Soak (issue 4), time-compressed for CI: >= 30 clients chatting and reconnecting for
about two minutes against the real server, keepalive intervals shortened by config.

Checks (see tests/soak.py): no message lost or duplicated, by id, across reconnects with
join-after catch-up; the parent's and the session processes' memory (PSS) and fd counts
stay flat; no zombie; every session process gone after everyone quit. The same script
runs for hours by hand: `python tests/soak.py --duration 7200 --clients 50`.
CHATD_SOAK_SECONDS overrides the CI duration.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests import soak

SECONDS = float(os.environ.get("CHATD_SOAK_SECONDS", "120"))


@pytest.mark.timeout(int(SECONDS) + 240)
def test_soak_time_compressed(tmp_path: Path) -> None:
    args = soak.build_parser().parse_args([
        "--duration", str(SECONDS), "--clients", "32", "--rooms", "4",
        "--reconnect-every", "15", "--msg-interval", "2", "--ping-interval", "1.0",
        "--ping-timeout", "3.0", "--sample-every", "1.0", "--data-dir", str(tmp_path)])
    report = soak.run(args)
    print("\nsoak report:\n" + json.dumps(report, indent=1, default=str))
    assert report["problems"] == [], report["problems"]
    assert report["ok"]
    # The run really exercised what it claims to.
    assert report["clients"] >= 30
    assert report["quits"] > 0 and report["aborts"] > 0 and report["history_pages"] > 0
    assert report["pongs"] > 0 and report["idle_periods"] > 0
    assert report["server_ended_sessions"] == []
    process = report["process"]
    assert process["long_lived_children"] >= 5
    assert process["samples"] >= SECONDS * 0.8
