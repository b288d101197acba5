"""`chatd bench irc`: chatd's IRC port side by side with ngIRCd and InspIRCd.

The scenarios of clients.py (burst, steady, idle, connect), spoken in IRC lines
(ircload.py) to each server in turn, interleaved: every round runs each scenario against
every server before the next scenario, in an order that rotates from round to round, so
a drift of a shared machine falls on all of them alike. Each run has a server of its own,
started by the benchmark (peers.py); one that is not installed is skipped with a line
saying so. The
table has the medians of the rounds: server CPU per delivery (schedstat over the process
tree, as for `chatd bench`), deliveries/s, latency, memory per idle joined client (the
growth of the tree's PSS while they are connected, over their number) and connects/s.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import secrets
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import cli, clients, peers
from .load import ServerRef
from .probes import ServerProbe

SCENARIOS = ("burst", "steady", "idle", "connect")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="chatd bench irc", description="Run the burst, steady, idle and connect "
        "scenarios over IRC against chatd's IRC port and, if installed, ngIRCd and "
        "InspIRCd (each started here on a loopback port with a config of its own), "
        "interleaved, and print one table of the medians.")
    parser.add_argument("--servers", default=",".join(peers.NAMES),
                        help="comma-separated, of chatd, ngircd, inspircd (default all)")
    for name in peers.STARTERS:
        parser.add_argument(f"--{name}", default=name, metavar="PROGRAM",
                            help=f"the {name} executable (default: {name} on PATH or in "
                            "/usr/sbin)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help="comma-separated, of burst, steady, idle, connect (default all)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each (default 3)")
    parser.add_argument("--clients", type=int, default=100,
                        help="burst, steady: clients in the one room (default 100)")
    parser.add_argument("--senders", type=int, default=10, help="burst, steady (default 10)")
    parser.add_argument("--messages", type=int, default=100,
                        help="burst, steady: messages per sender (default 100)")
    parser.add_argument("--rate", type=float, default=200.0,
                        help="steady: messages/s in total (default 200)")
    parser.add_argument("--idle-clients", type=int, default=1000,
                        help="idle: clients joined in rooms of 100 (default 1,000)")
    parser.add_argument("--connect-clients", type=int, default=1000,
                        help="connect: clients registering, all in flight (default 1,000)")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds without progress before giving up (default 30)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    opts = parser.parse_args(argv)
    opts.servers = [s.strip().lower() for s in opts.servers.split(",") if s.strip()]
    opts.scenarios = [s.strip() for s in opts.scenarios.split(",") if s.strip()]
    bad = set(opts.servers) - set(peers.NAMES) or set(opts.scenarios) - set(SCENARIOS)
    if bad or opts.rounds < 1:
        raise SystemExit(f"chatd bench irc: unknown {sorted(bad)} or --rounds < 1")
    return opts


def scenario_argv(scenario: str, opts: argparse.Namespace) -> list[str]:
    """The `chatd bench SCENARIO` options of one run."""
    common = ["--timeout", str(opts.timeout), "--quiet"]
    if scenario in ("burst", "steady"):
        rate = "0" if scenario == "burst" else f"{opts.rate:g}"
        return [scenario, "--clients", str(opts.clients), "--senders", str(opts.senders),
                "--messages", str(opts.messages), "--rate", rate, *common]
    if scenario == "idle":
        return ["idle", "--clients", str(opts.idle_clients), "--room-size", "100", *common]
    n = str(opts.connect_clients)
    return ["connect", "--clients", n, "--inflight", n, *common]


def run_one(server: peers.Running, scenario: str, opts: argparse.Namespace) -> dict[str, Any]:
    """One scenario against one server; its report (clients.py's) and what the table uses."""
    sopts = cli.options(scenario_argv(scenario, opts))
    sopts.wire = "irc"
    sopts.progress = not opts.quiet
    probe = ServerProbe(server.pid)
    before = probe.memory()
    ref = ServerRef("127.0.0.1", server.port, probe)
    gc.disable()  # no collector pauses inside the measured windows
    try:
        report = asyncio.run(clients.run(ref, sopts, "i" + secrets.token_hex(3)))
    finally:
        gc.enable()
    report["scenario"] = scenario
    report["ok"] = clients.ok(report)
    if scenario == "idle" and before and report.get("memory"):
        grown = report["memory"]["total"]["pss"] - before["total"]["pss"]
        report["pss_kib_per_client"] = round(grown / sopts.clients, 1)
    return report


def med(reports: list[dict[str, Any]], get: Callable[[dict[str, Any]], Any]) -> Any:
    values = [v for r in reports if (v := get(r)) is not None]
    return statistics.median(values) if values else None


def phase(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(ph for ph in report["phases"] if ph["phase"].startswith(name))


def at_sockets(deliver: dict[str, Any], q: str) -> float | None:
    """A quantile of the kernel's receive times (load.StampedSocket), if there were any."""
    arr = deliver.get("arrival_ms")
    return arr[q] if arr else None


ROWS: list[tuple[str, str, Callable[[dict[str, Any]], Any], str]] = [
    ("server CPU per delivery, burst", "burst",
     lambda r: phase(r, "deliver").get("server_cpu_us_per_delivery"), "{:.3f} us"),
    ("deliveries/s, burst", "burst",
     lambda r: phase(r, "deliver")["deliveries_per_second"], "{:,.0f}"),
    ("deliveries/s into the clients' sockets, burst", "burst",
     lambda r: phase(r, "deliver").get("deliveries_per_second_at_sockets"), "{:,.0f}"),
    ("load generator CPU, burst", "burst",
     lambda r: phase(r, "deliver")["loadgen_cpu_pct"], "{:.0f}% of a core"),
    ("latency p50, steady", "steady",
     lambda r: phase(r, "deliver")["latency_ms"]["p50"], "{:.2f} ms"),
    ("latency p99, steady", "steady",
     lambda r: phase(r, "deliver")["latency_ms"]["p99"], "{:.2f} ms"),
    ("latency p50 at the clients' sockets, steady", "steady",
     lambda r: at_sockets(phase(r, "deliver"), "p50"), "{:.2f} ms"),
    ("latency p99 at the clients' sockets, steady", "steady",
     lambda r: at_sockets(phase(r, "deliver"), "p99"), "{:.2f} ms"),
    ("server CPU per delivery, steady", "steady",
     lambda r: phase(r, "deliver").get("server_cpu_us_per_delivery"), "{:.1f} us"),
    ("memory per idle joined client (PSS)", "idle",
     lambda r: r.get("pss_kib_per_client"), "{:,.1f} KiB"),
    ("connects/s, all in flight", "connect",
     lambda r: phase(r, "connect")["per_second"], "{:,.0f}/s"),
    ("connects failed (timeout: --timeout)", "connect",
     lambda r: phase(r, "connect")["failed"], "{:,.0f}"),
]


def table(results: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """Medians per row and server; and every run's loss or failure."""
    rows = []
    for label, scenario, get, fmt in ROWS:
        cells = {name: med(runs.get(scenario, []), get) for name, runs in results.items()}
        if any(runs.get(scenario) for runs in results.values()):
            rows.append({"metric": label, "format": fmt, "values": cells})
    ok = {name: all(r["ok"] for rs in runs.values() for r in rs)
          for name, runs in results.items()}
    return {"rows": rows, "ok": ok}


def render(out: dict[str, Any]) -> str:
    names = list(out["table"]["ok"])
    lines = [f"chatd bench irc - {out['description']}",
             f"Python {out['python']}, {out['cpus']} CPUs, load average "
             f"{out['load_before']} before, {out['load_after']} after; medians of "
             f"{out['rounds']} interleaved rounds", *out["skipped"],
             "| metric | " + " | ".join(names) + " |",
             "|---|" + "---|" * len(names)]
    for row in out["table"]["rows"]:
        cells = [("-" if (v := row["values"].get(n)) is None else row["format"].format(v))
                 for n in names]
        lines.append(f"| {row['metric']} | " + " | ".join(cells) + " |")
    bad = [n for n, good in out["table"]["ok"].items() if not good]
    lines.append("result: " + (f"FAILED (loss or failed connections: {', '.join(bad)})"
                               if bad else "OK"))
    return "\n".join(lines)


def describe(opts: argparse.Namespace) -> str:
    """The shape of each scenario that runs."""
    room = f"{opts.clients} clients in one room, {opts.senders} senders x {opts.messages}"
    shapes = {"burst": f"{room} messages flat out",
              "steady": f"{room} messages at {opts.rate:g} msg/s",
              "idle": f"{opts.idle_clients} clients in rooms of 100",
              "connect": f"{opts.connect_clients} clients, all in flight"}
    return "; ".join(f"{name}: {shapes[name]}" for name in opts.scenarios)


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str]) -> int:
    opts = parse(argv)
    cli.raise_fd_limit(max(opts.clients, opts.idle_clients, opts.connect_clients) + 64)
    out: dict[str, Any] = {
        "description": describe(opts),
        "python": sys.version.split()[0], "cpus": os.cpu_count(), "rounds": opts.rounds,
        "load_before": loadavg(), "skipped": []}
    names = []
    for name in opts.servers:
        why = peers.missing(name, getattr(opts, name, ""))
        if why is None:
            names.append(name)
        else:
            out["skipped"].append(why)
            print(why, file=sys.stderr)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    clients_max = max(opts.clients, opts.idle_clients, opts.connect_clients)
    for k in range(opts.rounds):
        for scenario in opts.scenarios:
            if not names:
                break
            for name in names[k % len(names):] + names[:k % len(names)]:
                if not opts.quiet:
                    print(f"[bench] round {k + 1}: {scenario} on {name}", file=sys.stderr,
                          flush=True)
                # A server of its own for each run: what one run allocated and freed (its
                # heap keeps it) is not there for the next to reuse, unmeasured.
                with tempfile.TemporaryDirectory(prefix=f"chatd-bench-{name}-") as tmp:
                    try:
                        server = peers.start(name, Path(tmp), clients_max,
                                             getattr(opts, name, ""))
                    except (RuntimeError, TimeoutError) as exc:
                        out["skipped"].append(f"{name} did not start: skipped ({exc})")
                        names.remove(name)
                        continue
                    try:
                        report = run_one(server, scenario, opts)
                    finally:
                        server.stop()
                results.setdefault(server.name, {}).setdefault(scenario, []).append(report)
    out["load_after"] = loadavg()
    out["table"] = table(results)
    out["results"] = results
    print(json.dumps(out, indent=2) if opts.json else render(out))
    return 0 if all(out["table"]["ok"].values()) else 1
