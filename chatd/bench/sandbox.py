"""`chatd bench sandbox`: what the session sandbox costs (issue 10 §3; target: under 5 %).

Runs an existing scenario (`chatd bench burst`, `connect`, ...) with the sandbox on and
off, alternately, several rounds, each against a fresh spawned server, and compares the
medians of the figure the sandbox could make worse: the server's CPU per delivery (the
filter runs on every system call of every session) or per new session (the user switch
and the filter are set up once per fork), and for `idle` the memory per session. "On" is
everything §3 adds: the seccomp filter and, when run as root, the switch to `nobody`.
Each run is a separate `chatd bench SCENARIO --json` process, so this relies only on its
command line and report.

`start` is no `chatd bench` scenario: it measures what a new session costs where the
sandbox adds to it, the session process's own start, without the clients, the parent
and the rest of the machine that make `connect` vary by 10 % from run to run. Each run
(`python -m chatd.bench.sandbox [COUNT]`) starts COUNT (300) session processes with the
sandbox and as many without, alternately, and gives the medians of their CPU.
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
    "start": "CPU of a session process's start (us)",
}
STARTS = 300  # session processes started per run of `start`


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
    if scenario == "start":  # both sides at once (see starts())
        cmd = [sys.executable, "-m", "chatd.bench.sandbox", *(extra or [str(STARTS)])]
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
        if scenario == "start":  # one run measures both sides, interleaved
            report = run(scenario, True, extra)
            for side in ("on", "off"):
                values[side].append(report[side])
            if progress:
                print(f"  start round {i + 1}/{rounds}: on {report['on']}, off "
                      f"{report['off']}", file=sys.stderr)
            continue
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


def starts(count: int) -> dict[str, Any]:
    """`start`: the CPU of session process starts (fork, chatd/child.py's prepare(),
    exit), each measured by wait4(), `count` with the sandbox and `count` without,
    alternately. Each side's sessions are forked by a process set up as chatd's fork
    server is (chatd imported, the sandbox primed, gc frozen, and for "on" the fork
    server's own lock: chatd/zygote.py), as they are in `chatd serve`. Unlike `connect`,
    no client, parent or other process is in the figure: only the part of a new session
    the sandbox adds to."""
    import tempfile
    from pathlib import Path

    import chatd.zygote  # noqa: F401  (what the fork server has imported when it forks)
    from chatd import sandbox
    from chatd.config import Config

    with tempfile.TemporaryDirectory(prefix="chatd-bench-") as tmp:
        sides = {side: Config(data_dir=Path(tmp)) for side in ("on", "off")}
        sides["off"].values["sandbox"] = False
        if os.geteuid() == 0 and _has_nobody():
            sides["on"].values["user"] = "nobody"
            sandbox.resolve_user("nobody")
        sandbox.probe(sides["on"])
        forkers = {side: _forker(config) for side, config in sides.items()}
        cpu: dict[str, list[float]] = {"on": [], "off": []}
        faults: dict[str, list[int]] = {"on": [], "off": []}
        for i in range(2 * count):
            side = ("on", "off")[(i + i // 2) % 2]  # on off off on on off ...
            ask, answer = forkers[side]
            os.write(ask, b"s")
            said = os.read(answer, 64).decode().split()
            if len(said) != 2:
                raise SystemExit("a session process start failed")
            cpu[side].append(float(said[0]))
            faults[side].append(int(said[1]))
        for ask, answer in forkers.values():
            os.close(ask)
            os.close(answer)
        for _side in forkers:
            os.wait()
    return {"ok": True, **{side: round(statistics.median(cpu[side]), 1) for side in cpu},
            "page_faults": {side: statistics.median(f) for side, f in faults.items()}}


def _forker(config: Any) -> tuple[int, int]:
    """A process standing for the fork server: each byte on the first pipe forks a
    session start (chatd/child.py's prepare(), exit); it answers "CPU_US FAULTS" on the
    second. Returns (the pipe to ask on, the pipe to read answers from)."""
    import gc

    from chatd import child, sandbox

    ask_r, ask_w = os.pipe()
    ans_r, ans_w = os.pipe()
    if os.fork() != 0:
        os.close(ask_r)
        os.close(ans_w)
        return ask_w, ans_r
    status = 1
    try:  # the stand-in fork server; it never returns
        os.close(ask_w)
        os.close(ans_r)
        sandbox.prime(sandbox.verdict(), config.user)
        sandbox.lock_fork_server(config)
        gc.collect()
        gc.freeze()
        while os.read(ask_r, 1):
            pid = os.fork()
            if pid == 0:
                try:
                    child.prepare(config, set(), "bench")
                finally:
                    os._exit(0)
            _pid, code, usage = os.wait4(pid, 0)
            if code != 0:
                break
            cpu = (usage.ru_utime + usage.ru_stime) * 1e6
            os.write(ans_w, f"{cpu:.1f} {usage.ru_minflt}".encode())
        status = 0
    finally:
        os._exit(status)


if __name__ == "__main__":  # python -m chatd.bench.sandbox COUNT: one run of `start`
    import logging

    logging.disable(logging.WARNING)  # (the probe's lines, once per run)
    print(json.dumps(starts(int(sys.argv[1]))))
