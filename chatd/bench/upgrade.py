"""`chatd bench upgrade`: `chatd upgrade` under steady chat, as the clients see it.

1,000 clients (rooms of 50) connect; 20 of them chat at 50 messages/s in total (2,500
deliveries/s), first for a baseline phase, then again while the server is upgraded in
place (the same as `chatd upgrade --data-dir`, one second into the phase). The report
compares the two phases: connections dropped (the target is 0), deliveries lost and
duplicated (0; any is a failure), and the delivery latency p99 of the upgrade phase,
which is the pause the upgrade causes (target under 500 ms): a message sent while the
new code starts waits in its session's channel and arrives after the pause.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from chatd import upgrade

from .clients import Bench, rooms_label
from .load import ServerRef
from .report import COL, cpu_line, latency_line, target

ADMISSION = False
SCENARIOS: dict[str, dict[str, Any]] = {
    "upgrade": {"clients": 1000, "senders": 20, "messages": 10, "rate": 50.0,
                "room_size": 50, "inflight": [100]},
}
UPGRADE_AFTER = 1.0  # seconds into the chat phase
PAUSE_GOAL_MS = 500.0
WHY_PAUSE = ("the new parent is a fresh Python interpreter: its imports and the store's "
             "start-up take that long on this machine")


def describe(opts: argparse.Namespace) -> str:
    return (f"{opts.clients} clients in {rooms_label(opts)}, {opts.senders} senders at "
            f"{opts.rate:g} messages/s in total; an upgrade in place {UPGRADE_AFTER:g} s into "
            f"the second phase")


class UpgradeBench(Bench):
    async def upgrade_phase(self, data_dir: Any) -> dict[str, Any]:
        delivering = asyncio.get_running_loop().create_task(self.deliver())
        await asyncio.sleep(UPGRADE_AFTER)
        ok, message = await asyncio.to_thread(upgrade.request, data_dir,
                                              max(60.0, self.opts.timeout))
        out = await delivering
        dropped = sum(1 for c in self.conns if c.closed.done())
        return {**out, "phase": "upgrade", "upgraded": ok, "outcome": message,
                "dropped": dropped, "connections": len(self.conns)}


async def run(server: ServerRef, opts: argparse.Namespace, tag: str) -> dict[str, Any]:
    if server.data_dir is None:
        raise SystemExit("chatd bench upgrade starts its own server (no --target)")
    bench = UpgradeBench(server.host, server.port, server.probe, opts, tag,
                         server.probe.session_count() or 0, server.spare)
    phases: list[dict[str, Any]] = []
    try:
        phases.append(await bench.connect(opts.clients, opts.inflight[0], "connect"))
        await bench.quiesce()
        await bench.settle()
        phases.append({**await bench.deliver(), "phase": "baseline"})
        phases.append(await bench.upgrade_phase(server.data_dir))
        memory = bench.probe.memory()
    finally:
        fds = bench.probe.fds()
        await bench.close_all(wait=False)
    return {"phases": phases, "memory": memory, "parent_fds": fds}


def ok(report: dict[str, Any]) -> bool:
    """Every client connected, the upgrade done, nothing dropped, lost or duplicated."""
    for ph in report["phases"]:
        if ph["phase"] == "connect" and ph["failed"]:
            return False
        if ph["phase"] != "connect" and (ph["lost"] or ph["duplicates"]):
            return False
        if ph["phase"] == "upgrade" and (not ph["upgraded"] or ph["dropped"]):
            return False
    return True


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for ph in report["phases"]:
        if ph["phase"] == "upgrade":
            out.append(target("delivery pause (latency p99)", ph["latency_ms"]["p99"],
                              PAUSE_GOAL_MS, "ms", True, WHY_PAUSE))
    return out


def render(report: dict[str, Any]) -> list[str]:
    lines = []
    for ph in report["phases"]:
        if ph["phase"] == "connect":
            lines.append(f"{'connect':<{COL}} {ph['connected']}/{ph['clients']} sessions in "
                         f"{ph['seconds']:.3f} s; {ph['failed']} failed")
            continue
        lat = ph["latency_ms"]
        lines.append(f"{ph['phase']:<{COL}} {ph['received']:,}/{ph['expected']:,} deliveries "
                     f"of {ph['messages']:,} messages in {ph['seconds']:.3f} s; lost "
                     f"{ph['lost']}, duplicates {ph['duplicates']}"
                     + (f", errors {ph['errors']}" if ph["errors"] else ""))
        lines.append(latency_line(lat))
        if ph["phase"] == "upgrade":
            lines.append(f"{'':<{COL}} {'' if ph['upgraded'] else 'NOT upgraded: '}"
                         f"{ph['outcome']}; connections dropped {ph['dropped']}/"
                         f"{ph['connections']}")
        lines.append(f"{'':<{COL}} {cpu_line(ph)}")
    return lines
