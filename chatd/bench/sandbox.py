"""`chatd bench sandbox`: what the session sandbox costs (issue 10 §3; target: under 5 %).

Runs an existing scenario (`chatd bench burst`, `connect`, ...) with the sandbox on and
off, alternately, several rounds, each against a fresh spawned server, and compares the
medians of the figure the sandbox could make worse: the server's CPU per delivery (the
filter runs on every system call of every session) or per new session (the user switch
and the filter are set up once per fork), and for `idle` the memory per session. "On" is
everything §3 adds: the seccomp filter and, when run as root, the switch to `nobody`.
Each run is a separate `chatd bench SCENARIO --json` process, so this relies only on its
command line and report.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import statistics
import subprocess
import sys
from typing import Any

TARGET_PCT = 5.0
# scenario -> (what is compared, how to read it from a report)
FIGURES = {
    "burst": "server CPU per delivery (us)",
    "steady": "server CPU per delivery (us)",
    "connect": "server CPU per new session (us)",
    "idle": "PSS per idle session (KiB)",
}


def figure(scenario: str, report: dict[str, Any]) -> float | None:
    if scenario == "idle":
        per = (report.get("memory") or {}).get("per_session")
        return per["pss"] if per else None
    key = "server_cpu_us_per_session" if scenario == "connect" else \
        "server_cpu_us_per_delivery"
    values = [ph[key] for ph in report["phases"] if ph.get(key) is not None]
    return values[0] if values else None


def run(scenario: str, sandbox: bool, extra: list[str]) -> dict[str, Any]:
    setting = ["--set", f"server.sandbox={'true' if sandbox else 'false'}"]
    if sandbox and os.geteuid() == 0 and _has_nobody():
        setting += ["--set", "server.user=nobody"]
    cmd = [sys.executable, "-m", "chatd", "bench", scenario, "--json", "--quiet",
           *setting, *extra]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode not in (0, 1) or not done.stdout.strip():
        raise SystemExit(f"chatd bench sandbox: {' '.join(cmd[2:])} failed:\n{done.stderr}")
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def _has_nobody() -> bool:
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        return False
    return True


def compare(scenario: str, rounds: int, extra: list[str], progress: bool) -> dict[str, Any]:
    values: dict[str, list[float]] = {"on": [], "off": []}
    ok = True
    for i in range(rounds):
        # Alternate which goes first, so a drift of the machine does not favour one side.
        for side in (("on", "off") if i % 2 == 0 else ("off", "on")):
            report = run(scenario, side == "on", extra)
            ok = ok and bool(report.get("ok"))
            value = figure(scenario, report)
            if value is not None:
                values[side].append(value)
            if progress:
                print(f"  {scenario} round {i + 1}/{rounds}, sandbox {side}: {value}",
                      file=sys.stderr)
    out: dict[str, Any] = {"scenario": scenario, "figure": FIGURES[scenario],
                           "rounds": rounds, "on": values["on"], "off": values["off"],
                           "ok": ok}
    if values["on"] and values["off"] and min(values["off"]) > 0:
        on, off = statistics.median(values["on"]), statistics.median(values["off"])
        out["median_on"], out["median_off"] = on, off
        out["cost_pct"] = round((on / off - 1) * 100, 1)
        # The spread of the runs without the sandbox: a cost below it is noise.
        out["noise_pct"] = round((max(values["off"]) / min(values["off"]) - 1) * 100, 1)
        out["met"] = out["cost_pct"] < TARGET_PCT
    return out


def render(results: list[dict[str, Any]], user: str) -> str:
    lines = [f"chatd bench sandbox: the seccomp filter{user}, on vs off (medians); "
             f"target: under {TARGET_PCT:g} %"]
    for r in results:
        if "cost_pct" not in r:
            lines.append(f"{r['scenario']:<9} no figure ({r['figure']}) to compare")
            continue
        verdict = "met" if r["met"] else "missed"
        lines.append(f"{r['scenario']:<9} {r['figure']}: on {r['median_on']:g}, off "
                     f"{r['median_off']:g} -> {r['cost_pct']:+.1f} % (runs without it "
                     f"vary by {r['noise_pct']:.1f} %) - {verdict}")
        lines.append(f"{'':<9} on {r['on']}, off {r['off']}")
    lines.append(f"{'result':<9} {'OK' if all(r['ok'] for r in results) else 'FAILED'}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="chatd bench sandbox", description="Compare a `chatd bench` scenario with the "
        "session sandbox on and off. Options after `--` go to each `chatd bench` run.")
    parser.add_argument("--scenario", action="append", choices=sorted(FIGURES),
                        help="scenario to compare (repeatable; default: burst and connect)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="runs of each side per scenario (default 3)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument("extra", nargs=argparse.REMAINDER,
                        help="-- then options for `chatd bench` (e.g. -- --clients 50)")
    opts = parser.parse_args(argv)
    if opts.rounds < 1:
        raise SystemExit("chatd bench sandbox: --rounds must be at least 1")
    extra = opts.extra[1:] if opts.extra[:1] == ["--"] else opts.extra
    results = [compare(s, opts.rounds, extra, not opts.quiet)
               for s in opts.scenario or ["burst", "connect"]]
    user = " and the switch to nobody" if os.geteuid() == 0 and _has_nobody() else ""
    print(json.dumps(results, indent=2) if opts.json else render(results, user))
    return 0 if all(r["ok"] for r in results) else 1
