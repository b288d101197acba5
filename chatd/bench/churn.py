"""`chatd bench churn`: connection churn from one address, seen by a bystander.

An attacker process connects and resets (SO_LINGER 0, so no TIME_WAIT) from one
loopback address at a fixed rate, each connection costing the server an accept and,
unless it is refused first, a fork. A bystander at another loopback address (every
127.x.y.z is loopback on Linux) chats in a room, timing each message from its send to its
own copy coming back through the broker, and opens a fresh session now and then, timing
connect -> welcome. Both are measured idle and then under attack, and compared with the
issue's targets: the bystander's welcome under 50 ms and its chat p99 under 2x idle.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from typing import Any

from .load import (
    Conn,
    ServerRef,
    Stats,
    Window,
    attacker_report,
    chat,
    chat_phase,
    open_session,
    percentiles,
    until,
)
from .probes import ServerProbe
from .report import COL, chat_line, cpu_line, target

ATTACKER = "127.0.0.1"
BYSTANDER = "127.0.0.2"
CHAT_RATE = 50.0  # bystander messages per second: p99 of a 4 s phase rests on 200 samples
WELCOME_EVERY = 0.2  # seconds between the bystander's new sessions
WELCOME_GOAL_MS = 50.0
CHAT_GOAL_X = 2.0
ADMISSION = True  # the server keeps its admission defaults: they are what is measured
SCENARIOS: dict[str, dict[str, Any]] = {
    "churn": {"clients": 1, "senders": 0, "messages": 0, "rate": 0.0, "room_size": -1,
              "inflight": [1], "phase_seconds": 4.0},
}
DESCRIPTION = ("a bystander at {bystander} chats ({chat:g} messages/s) and opens a session "
               "every {every:g} s, idle and then while {attacker} connects{say} and resets "
               "at {rate}")


# ---------------------------------------------------------------------------------------
# the attacker (a process of its own, so the bystander's timing is not its own CPU)


def attack(host: str, port: int, source: str, rate: float, seconds: float,
           say: int = 0) -> dict[str, Any]:
    """Connect, write `say` zero bytes, and reset, from `source` at `rate`/s (0: flat out)
    for `seconds`. Without a byte the server's kernel never hands the connection over."""
    linger = struct.pack("ii", 1, 0)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    errors: Counter[str] = Counter()
    attempts = connected = 0
    t0 = time.monotonic()
    end = t0 + seconds
    due = t0
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if rate > 0:
            if due > now:
                time.sleep(due - now)
            due = max(due + 1.0 / rate, time.monotonic() - 0.05)  # no catch-up bursts
        attempts += 1
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            sock.bind((source, 0))
            sock.settimeout(1.0)
            sock.connect((host, port))
            if say:
                sock.sendall(bytes(say))
            connected += 1
        except OSError as exc:
            errors[type(exc).__name__] += 1
        finally:
            sock.close()
    wall = time.monotonic() - t0
    return {"source": source, "bytes": say, "attempts": attempts, "connected": connected,
            "seconds": round(wall, 3), "per_second": round(connected / wall, 1) if wall else 0,
            "errors": dict(errors)}


def start_attacker(host: str, port: int, rate: float, seconds: float,
                   say: int) -> subprocess.Popen[str]:
    code = ("import json, sys; from chatd.bench.churn import attack; "
            "print(json.dumps(attack(sys.argv[1], int(sys.argv[2]), sys.argv[3], "
            "float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6]))))")
    return subprocess.Popen([sys.executable, "-c", code, host, str(port), ATTACKER,
                             str(rate), str(seconds), str(say)], stdout=subprocess.PIPE,
                            text=True)


# ---------------------------------------------------------------------------------------
# the bystander


class Bystander:
    def __init__(self, host: str, port: int, tag: str, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.tag = tag
        self.stats = Stats(tag + " ")
        self.room = f"#{tag}"
        self.talker: Conn | None = None
        self.opened = 0

    async def _session(self, nick: str, room: str | None) -> Conn:
        return await open_session(self.host, self.port, self.stats, nick, room, self.timeout,
                                  local_addr=(BYSTANDER, 0))

    async def start(self) -> None:
        self.talker = await self._session(f"{self.tag}_talk", self.room)

    async def welcomes(self, seconds: float, out: list[float], failures: Counter[str]) -> None:
        """A new session every WELCOME_EVERY s: connect -> welcome time, then close."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.monotonic()
            self.opened += 1
            try:
                conn = await self._session(f"{self.tag}_w{self.opened}", None)
                out.append(time.monotonic() - t0)
                conn.close()
            except (OSError, ConnectionError, TimeoutError) as exc:
                failures[str(exc) or type(exc).__name__] += 1
            await asyncio.sleep(max(0.0, t0 + WELCOME_EVERY - time.monotonic()))

    async def phase(self, name: str, seconds: float, probe: ServerProbe) -> dict[str, Any]:
        stats, talker = self.stats, self.talker
        assert talker is not None
        stats.new_phase()
        times: list[float] = []
        failures: Counter[str] = Counter()
        win = Window(probe).start()
        sent, _ = await asyncio.gather(chat(talker, CHAT_RATE, seconds),
                                       self.welcomes(seconds, times, failures))
        # Let the last messages come back.
        await until(lambda: stats.received >= sent, self.timeout, 0.01)
        return {**chat_phase(name, win.stop(), stats, sent),
                "welcomes": len(times), "welcome_failures": dict(failures),
                "welcome_ms": percentiles([int(t * 1e9) for t in times])}

    def close(self) -> None:
        if self.talker is not None:
            self.talker.close()


async def run(server: ServerRef, opts: argparse.Namespace, tag: str) -> dict[str, Any]:
    host, port, probe = server.host, server.port, server.probe
    bystander = Bystander(host, port, tag, opts.timeout)
    phases = []
    attacker: dict[str, Any] = {}
    try:
        await bystander.start()
        phases.append(await bystander.phase("idle", opts.phase_seconds, probe))
        proc = start_attacker(host, port, opts.attack_rate, opts.phase_seconds,
                              opts.attack_bytes)
        try:
            phases.append(await bystander.phase("attack", opts.phase_seconds, probe))
        finally:
            attacker = await asyncio.to_thread(attacker_report, proc, opts.timeout)
    finally:
        bystander.close()
    return {"phases": phases, "attacker": attacker, "memory": None, "parent_fds": probe.fds(),
            "responsiveness": None}


# ---------------------------------------------------------------------------------------
# report


def ok(report: dict[str, Any]) -> bool:
    """Every bystander message came back once and every bystander session opened."""
    return all(ph["lost"] == 0 and ph["duplicates"] == 0 and not ph["welcome_failures"]
               for ph in report["phases"]) and "error" not in report.get("attacker", {})


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    by = {ph["phase"]: ph for ph in report["phases"]}
    if "idle" not in by or "attack" not in by:
        return []
    idle, hit = by["idle"], by["attack"]
    why = "the attacker shares these cores: each of its connections costs the kernel (and, " \
          "if it writes first, the parent a refusal) CPU the bystander's processes wait for"
    out = [target("bystander welcome p99 under attack", hit["welcome_ms"]["p99"],
                   WELCOME_GOAL_MS, "ms", True, why)]
    base = idle["chat_ms"]["p99"]
    if base:
        goal = round(CHAT_GOAL_X * base, 3)
        out.append(target(f"bystander chat p99 under attack (2x idle {base} ms)",
                           hit["chat_ms"]["p99"], goal, "ms", True, why))
    return out


def render(report: dict[str, Any]) -> list[str]:
    lines = []
    att = report.get("attacker", {})
    if "error" in att:
        lines.append(f"{'attacker':<{COL}} {att['error']}")
    elif att:
        lines.append(f"{'attacker':<{COL}} {att['connected']:,}/{att['attempts']:,} connections "
                     f"from {att['source']} in {att['seconds']:.1f} s = "
                     f"{att['per_second']:,.0f}/s"
                     + (f"; errors {att['errors']}" if att["errors"] else ""))
    for ph in report["phases"]:
        w = ph["welcome_ms"]
        lines.append(f"{ph['phase']:<{COL}} bystander welcome p50 {w['p50']} ms, p99 {w['p99']} "
                     f"ms, max {w['max']} ms ({ph['welcomes']} sessions"
                     + (f", failed {ph['welcome_failures']}" if ph["welcome_failures"] else "")
                     + ")")
        lines.append(f"{'':<{COL}} {chat_line(ph)}")
        if ph.get("server_cpu_s") is not None:
            lines.append(f"{'':<{COL}} {cpu_line(ph)} in {ph['seconds']:.1f} s; "
                         f"loadgen CPU {ph['loadgen_cpu_s']:.3f} s")
    return lines


def describe(opts: argparse.Namespace) -> str:
    return DESCRIPTION.format(bystander=BYSTANDER, attacker=ATTACKER, chat=CHAT_RATE,
                              every=WELCOME_EVERY, rate=f"{opts.attack_rate:g} connections/s"
                              if opts.attack_rate > 0 else "full speed",
                              say=f", writes {opts.attack_bytes} byte(s)"
                              if opts.attack_bytes else "")
