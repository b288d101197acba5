"""`chatd bench admin`: what `chatd admin` queries cost the parent's routing loop.

The admin socket is served from the parent's own loop (chatd/admin.py), between turns of
routing. 1,000 clients (rooms of 50) connect; 20 of them chat at 50 messages/s in total
(2,500 deliveries/s), first for a baseline phase, then once while `status` is asked back
to back, then once while `sessions` (a list of every session, made 200 at a time with
routing in between) is. The queries come from a separate process (`python -m
chatd.bench.admin`, the same client code as `chatd admin`), so that parsing a long
answer does not hold up the load generator's own event loop.

The report gives, per phase, the bystanders' delivery latency, how many queries were
answered and how long each took, and the parent's CPU per query (its CPU in the phase
less its CPU in as long a stretch of the baseline, per query). Target: the queries add
at most 5 ms to the delivery latency p99.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from .clients import Bench, rooms_label
from .load import ServerRef, percentiles
from .report import COL, cpu_line, latency_line, target

ADMISSION = False
SCENARIOS: dict[str, dict[str, Any]] = {
    "admin": {"clients": 1000, "senders": 20, "messages": 20, "rate": 50.0,
              "room_size": 50, "inflight": [100]},
}
QUERIES = ("status", "sessions")
ADDED_P99_GOAL_MS = 5.0
WHY = ("asked back to back, the queries keep the parent busy about half the time, and a "
       "delivery waits behind the answer being made (see the parent CPU per query)")


def describe(opts: argparse.Namespace) -> str:
    return (f"{opts.clients} clients in {rooms_label(opts)}, {opts.senders} senders at "
            f"{opts.rate:g} messages/s in total; a phase without admin queries, then one "
            f"with each of {', '.join(QUERIES)} asked back to back")


class AdminBench(Bench):
    async def query_phase(self, data_dir: Path, cmd: str) -> dict[str, Any]:
        """Deliver while a helper process asks `cmd` back to back; its counts."""
        asker = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "chatd.bench.admin", str(data_dir), cmd,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        assert asker.stdin is not None and asker.stdout is not None
        try:
            if (await asker.stdout.readline()).strip() != b"asking":
                raise SystemExit("chatd bench admin: the admin query process did not start")
            out = await self.deliver()
        finally:
            asker.stdin.close()  # stop: it reports and exits
        line = await asyncio.wait_for(asker.stdout.readline(), 60)
        await asker.wait()
        if not line:
            raise SystemExit("chatd bench admin: the admin query process failed")
        counts = json.loads(line)
        return {**out, "phase": cmd, "queries": counts["answered"],
                "query_failures": counts["failed"], "query_ms": counts["ms"],
                "answer_bytes": counts["bytes"]}


async def run(server: ServerRef, opts: argparse.Namespace, tag: str) -> dict[str, Any]:
    if server.data_dir is None:
        raise SystemExit("chatd bench admin starts its own server (no --target)")
    bench = AdminBench(server.host, server.port, server.probe, opts, tag,
                       server.probe.session_count() or 0, server.spare)
    phases: list[dict[str, Any]] = []
    try:
        phases.append(await bench.connect(opts.clients, opts.inflight[0], "connect"))
        await bench.quiesce()
        await bench.settle()
        phases.append({**await bench.deliver(), "phase": "baseline"})
        for cmd in QUERIES:
            phases.append(await bench.query_phase(server.data_dir, cmd))
        memory = bench.probe.memory()
    finally:
        fds = bench.probe.fds()
        await bench.close_all(wait=False)
    per_query(phases)
    return {"phases": phases, "memory": memory, "parent_fds": fds}


def per_query(phases: list[dict[str, Any]]) -> None:
    """Each query phase's parent CPU per query, less what routing took in the baseline."""
    base = next(ph for ph in phases if ph["phase"] == "baseline")
    rate = (base["server_cpu_parent_s"] / base["seconds"]
            if base.get("server_cpu_parent_s") is not None and base["seconds"] else None)
    for ph in phases:
        if ph["phase"] not in QUERIES:
            continue
        ph["added_p99_ms"] = (round(ph["latency_ms"]["p99"] - base["latency_ms"]["p99"], 3)
                              if None not in (ph["latency_ms"]["p99"],
                                              base["latency_ms"]["p99"]) else None)
        if rate is None or ph.get("server_cpu_parent_s") is None or not ph["queries"]:
            ph["parent_cpu_us_per_query"] = None
            continue
        extra = ph["server_cpu_parent_s"] - rate * ph["seconds"]
        ph["parent_cpu_us_per_query"] = round(max(0.0, extra) / ph["queries"] * 1e6, 1)


def ok(report: dict[str, Any]) -> bool:
    """Every client connected, nothing lost or duplicated, every query answered."""
    for ph in report["phases"]:
        if ph["phase"] == "connect" and ph["failed"]:
            return False
        if ph["phase"] != "connect" and (ph["lost"] or ph["duplicates"]):
            return False
        if ph["phase"] in QUERIES and (ph["query_failures"] or not ph["queries"]):
            return False
    return True


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [target(f"latency p99 added by {ph['phase']} queries", ph["added_p99_ms"],
                   ADDED_P99_GOAL_MS, "ms", True, WHY)
            for ph in report["phases"] if ph["phase"] in QUERIES]


def render(report: dict[str, Any]) -> list[str]:
    lines = []
    for ph in report["phases"]:
        if ph["phase"] == "connect":
            lines.append(f"{'connect':<{COL}} {ph['connected']}/{ph['clients']} sessions in "
                         f"{ph['seconds']:.3f} s; {ph['failed']} failed")
            continue
        lines.append(f"{ph['phase']:<{COL}} {ph['received']:,}/{ph['expected']:,} deliveries "
                     f"of {ph['messages']:,} messages in {ph['seconds']:.3f} s; lost "
                     f"{ph['lost']}, duplicates {ph['duplicates']}"
                     + (f", errors {ph['errors']}" if ph["errors"] else ""))
        lines.append(latency_line(ph["latency_ms"]))
        if ph["phase"] in QUERIES:
            q = ph["query_ms"]
            lines.append(f"{'':<{COL}} {ph['queries']} {ph['phase']} queries answered "
                         f"({ph['query_failures']} failed), {ph['answer_bytes']:,} bytes "
                         f"each; each took p50 {q['p50']} ms, max {q['max']} ms; parent CPU "
                         f"{ph['parent_cpu_us_per_query']} us per query; p99 "
                         f"{ph['added_p99_ms']:+} ms on the baseline's")
        lines.append(f"{'':<{COL}} {cpu_line(ph)}")
    return lines


# ---- the query process: python -m chatd.bench.admin DATA_DIR CMD ----


def ask_until_stdin_closes(data_dir: Path, cmd: str) -> dict[str, Any]:
    """Ask `cmd` back to back (each waits for its answer) until stdin is closed."""
    import selectors
    import threading

    from chatd.admincli import Unreachable, ask

    stop = threading.Event()

    def watch() -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(sys.stdin, selectors.EVENT_READ)
            sel.select()
        stop.set()

    threading.Thread(target=watch, daemon=True).start()
    times: list[int] = []
    failed = size = 0
    print("asking", flush=True)
    while not stop.is_set():
        t0 = time.monotonic_ns()
        try:
            answer = ask(data_dir, {"cmd": cmd}, 30.0)
        except Unreachable:
            failed += 1
            continue
        times.append(time.monotonic_ns() - t0)
        if not answer.get("ok"):
            failed += 1
        size = size or len(json.dumps(answer))  # (about what came over the socket)
    return {"answered": len(times), "failed": failed, "ms": percentiles(times),
            "bytes": size}


if __name__ == "__main__":
    print(json.dumps(ask_until_stdin_closes(Path(sys.argv[1]), sys.argv[2])), flush=True)
