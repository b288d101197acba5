"""`chatd bench roomsize`: how the cost of a delivery grows with the size of a room.

Runs `chatd bench steady` once per room size (`--sizes`, default 10, 100 and 1,000
members, all in one room), each at the message rate that makes the same deliveries/s
(`--deliveries`, default 20,000/s: 2,000 msg/s into 10 members, 200 into 100, 20 into
1,000, 4 into 5,000), for about `--seconds` each, `--rounds` times in turn, and prints a
table of the medians: CPU per delivery (parent and sessions), session wakeups per message,
latency and memory per session. The target is issue 15's: a room of 1,000 at 20 msg/s
with p99 <= 10 ms. Each run is a separate `chatd bench steady --json` process.

5,000 members take as many session processes (~3.5 MiB each with CPython 3.11, with the
kernel's share): ask for them with `--sizes 10,100,1000,5000` on a machine with the memory
to spare. A size whose sessions would not fit in the memory available now (MemAvailable,
at `--mib-per-session` each, 1 GiB kept free) is skipped with a line saying so.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from .report import target, verdicts

P99_GOAL_MS = 10.0  # a room of 1,000 at 20 msg/s (issue 15)
MIB_PER_SESSION = 4  # a session's PSS (~3.5 MiB with 3.11) and its kernel memory
KEEP_FREE_MIB = 1024


def too_big(members: int, mib_per_session: float = MIB_PER_SESSION) -> str | None:
    """Why a room of `members` would not fit in the memory available now, or None."""
    try:
        meminfo = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    avail = int(meminfo.split("MemAvailable:")[1].split()[0]) // 1024
    need = members * mib_per_session
    if need + KEEP_FREE_MIB <= avail:
        return None
    return (f"a room of {members:,} skipped: its sessions need ~{need / 1024:.1f} GiB, "
            f"{avail / 1024:.1f} GiB of memory is available")


def run(members: int, opts: argparse.Namespace) -> dict[str, Any] | None:
    """One steady run with a room of `members`; its report, or None if it failed."""
    rate = opts.deliveries / members
    senders = min(10, members)
    messages = max(1, math.ceil(rate * opts.seconds / senders))
    cmd = [sys.executable, "-m", "chatd", "bench", "steady", "--json", "--quiet",
           "--clients", str(members), "--senders", str(senders), "--messages",
           str(messages), "--rate", f"{rate:g}", "--settle", "0",
           "--timeout", str(max(30, members // 20)), *opts.extra]
    done = subprocess.run(cmd, capture_output=True, text=True)
    try:
        report: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        print(f"chatd bench roomsize: {' '.join(cmd[2:])} failed:\n{done.stderr[-2000:]}",
              file=sys.stderr)
        return None
    return report


def row(members: int, reports: list[dict[str, Any]], deliveries: float) -> dict[str, Any]:
    """The medians of one room size's runs."""
    phases = [ph for r in reports for ph in r["phases"] if ph["phase"] == "deliver"]

    def med(get: Any) -> float | None:
        values = [v for ph in phases if (v := get(ph)) is not None]
        return round(statistics.median(values), 3) if values else None

    per = [r["memory"]["per_session"]["pss"] for r in reports
           if r.get("memory") and r["memory"].get("per_session")]
    return {"members": members, "rate": round(deliveries / members, 3), "runs": len(phases),
            "ok": bool(reports) and all(r["ok"] for r in reports),
            "deliveries_per_second": med(lambda ph: ph["deliveries_per_second"]),
            "server_us": med(lambda ph: ph.get("server_cpu_us_per_delivery")),
            "parent_us": med(lambda ph: ph.get("parent_cpu_us_per_delivery")),
            "sessions_us": med(lambda ph: ph.get("session_cpu_us_per_delivery")),
            "wakeups": med(lambda ph: ph.get("session_wakeups_per_message")),
            "p50_ms": med(lambda ph: ph["latency_ms"]["p50"]),
            "p99_ms": med(lambda ph: ph["latency_ms"]["p99"]),
            "lost": sum(ph["lost"] for ph in phases),
            "pss_mib": round(statistics.median(per) / 1024, 2) if per else None}


def render(rows: list[dict[str, Any]], targets: list[dict[str, Any]], python: str,
           notes: list[str]) -> str:
    lines = [f"chatd bench roomsize - one room, the same deliveries/s at every size, "
             f"medians (Python {python})",
             "| members | msg/s | deliveries/s | server us/delivery (parent / sessions) | "
             "session wakeups/msg | p50 / p99 ms | lost | PSS/session |",
             "|---|---|---|---|---|---|---|---|"]
    def num(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    for r in rows:
        dps = r["deliveries_per_second"]
        lines.append(f"| {r['members']:,} | {r['rate']:,g} | {dps or 0:,.0f} | "
                     f"{num(r['server_us'], '.1f')} ({num(r['parent_us'], '.1f')} / "
                     f"{num(r['sessions_us'], '.1f')}) | {num(r['wakeups'], ',.1f')} | "
                     f"{num(r['p50_ms'], '.2f')} / {num(r['p99_ms'], '.1f')} | "
                     f"{r['lost']} | {num(r['pss_mib'], '.2f')} MiB |")
    lines += notes + verdicts(targets)
    lines.append(f"result: {'OK' if all(r['ok'] for r in rows) else 'FAILED'}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="chatd bench roomsize", description="Run `chatd bench steady` for several "
        "room sizes at the same deliveries/s and tabulate the cost per delivery.")
    parser.add_argument("--sizes", default="10,100,1000",
                        help="members per room, comma-separated (default 10,100,1000)")
    parser.add_argument("--deliveries", type=float, default=20000.0,
                        help="deliveries/s at every size (default 20,000)")
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="seconds of sending per run (default 5)")
    parser.add_argument("--rounds", type=int, default=1, help="runs per size (default 1)")
    parser.add_argument("--mib-per-session", type=float, default=MIB_PER_SESSION,
                        help="memory a session is reckoned to take, to skip a size that "
                        f"would not fit (default {MIB_PER_SESSION}; ~3 with CPython 3.12)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("extra", nargs="*", help="after --: options for each steady run")
    opts = parser.parse_args(argv)
    sizes = [int(x) for x in opts.sizes.split(",")]
    if opts.rounds < 1 or any(n < 1 for n in sizes) or opts.deliveries <= 0:
        raise SystemExit("chatd bench roomsize: --rounds, --sizes and --deliveries must "
                         "be positive")
    reports: dict[int, list[dict[str, Any]]] = {n: [] for n in sizes}
    skipped: dict[int, str] = {}
    for _ in range(opts.rounds):  # in turn: a drift of the machine hits every size alike
        for members in sizes:
            if (why := too_big(members, opts.mib_per_session)) is not None:
                skipped[members] = why
                print(f"chatd bench roomsize: {why}", file=sys.stderr)
                continue
            report = run(members, opts)
            if report is not None:
                reports[members].append(report)
    rows = [row(n, reports[n], opts.deliveries) for n in sizes
            if reports[n] or n not in skipped]
    targets = [target(f"p99 in a room of {r['members']:,} at {r['rate']:g} msg/s",
                      r["p99_ms"], P99_GOAL_MS, "ms", True,
                      "each message wakes all 1,000 members' processes: at the sessions' "
                      f"{r['sessions_us']} us per wakeup that is "
                      f"{(r['sessions_us'] or 0) * 1000 / 1000:.0f} ms of CPU per message, "
                      "which the machine's cores work through one wakeup after another")
               for r in rows if r["members"] == 1000 and r["rate"] == 20]
    notes = list(dict.fromkeys(skipped.values()))
    print(json.dumps({"rows": rows, "targets": targets, "skipped": notes}, indent=2)
          if opts.json else render(rows, targets, sys.version.split()[0], notes))
    return 0 if all(r["ok"] for r in rows) else 1
