"""`chatd bench history`: sessions reading history at their allowed rate, seen by a bystander.

A room is filled with messages first. Then an attacker process opens N sessions (default
40) in that room; on "go" each asks for a page of 200 messages at a random place in the
room's past (`history before=ID`, so no page comes from memory: every one is a database
read), using its whole allowance: the burst at once, then `history_rate` per second (the
spawned server keeps the default history_rate and history_burst). A bystander chats in
its own room meanwhile, timing each message from its send to its own copy coming back
through the broker. Its round trips are measured idle, under attack, and right after the
attack (when whatever the attack queued up is still being worked off), and compared with
the issue's target: p99 under attack below 2x the idle p99.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
from collections import Counter
from typing import Any

import msgpack

from chatd.protocol import HEADER, pack

from .load import (
    Conn,
    ServerRef,
    Stats,
    Window,
    attacker_report,
    chat,
    chat_phase,
    open_session,
    until,
)
from .probes import ServerProbe, own_cpu
from .report import COL, chat_line, target

CHAT_RATE = 50.0  # bystander messages per second
GOAL_X = 2.0
PAGE = 200
TEXT = 200  # bytes of each seeded message: a page of 200 is ~50 KB
PACE = 0.95  # of the allowed rate: arrival jitter must not push a request over it
ADMISSION = False  # admission is lifted; the history allowance is the default (prepare())
# clients: the sessions that read history; messages: the messages in their room
SCENARIOS: dict[str, dict[str, Any]] = {
    "history": {"clients": 40, "senders": 0, "messages": 5000, "rate": 0.0, "room_size": -1,
                "inflight": [1], "phase_seconds": 10.0},
}
DESCRIPTION = ("a bystander chats ({chat:g} messages/s), idle, then while {clients} sessions "
               "read history pages of {page} at random places in a room of {messages:,} "
               "messages at their allowed rate ({rate:g}/s, burst {burst}), then after")


# ---------------------------------------------------------------------------------------
# the attacker (a process of its own, so the bystander's timing is not its own CPU)


class Reader(asyncio.Protocol):
    """One attacking session: counts replies by their frame headers, decodes only small
    frames (errors), so the load generator stays cheap."""

    def __init__(self, stats: Counter[str]) -> None:
        self.stats = stats
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.labels: dict[Any, asyncio.Future[dict[str, Any]]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def call(self, obj: dict[str, Any], label: str) -> asyncio.Future[dict[str, Any]]:
        fut = asyncio.get_running_loop().create_future()
        self.labels[label] = fut
        assert self.transport is not None
        self.transport.write(pack({**obj, "label": label}))
        return fut

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        self.stats["bytes"] += len(data)
        pos = 0
        while len(buf) - pos >= 4:
            (size,) = HEADER.unpack_from(buf, pos)
            if len(buf) - pos - 4 < size:
                break
            if size > 1024:
                self.stats["pages"] += 1
            else:
                obj = msgpack.unpackb(bytes(buf[pos + 4 : pos + 4 + size]), raw=False)
                kind = obj.get("type")
                if kind == "error":
                    self.stats[f"error {obj.get('code')}"] += 1
                elif kind == "history":
                    self.stats["pages"] += 1
                if kind != "joined":  # a join's answer is its history reply
                    fut = self.labels.pop(obj.get("label"), None)
                    if fut is not None and not fut.done():
                        fut.set_result(obj)
            pos += 4 + size
        del buf[:pos]


async def _attack(host: str, port: int, room: str, low: int, high: int, sessions: int,
                  rate: float, burst: int, seconds: float, tag: str) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    stats: Counter[str] = Counter()
    conns: list[Reader] = []
    for i in range(sessions):
        _t, conn = await loop.create_connection(lambda: Reader(stats), host, port)
        conns.append(conn)
        await conn.call({"type": "hello", "version": 1, "nick": f"{tag}_a{i}"}, "h")
        await conn.call({"type": "join", "room": room}, "j")
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    rng = random.Random(1)
    cpu0 = own_cpu()
    t0 = loop.time()
    end = t0 + seconds

    async def hammer(conn: Reader) -> None:
        assert conn.transport is not None
        sent = 0
        while loop.time() < end:
            due = t0 + max(0, sent - burst + 1) / (rate * PACE)  # the bucket's pace
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            before = rng.randint(low + PAGE, high + 1)
            conn.transport.write(pack({"type": "history", "room": room, "before": before,
                                        "limit": PAGE}))
            sent += 1
            stats["requests"] += 1

    await asyncio.gather(*(hammer(c) for c in conns))
    wall = loop.time() - t0
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()
    out: dict[str, Any] = dict(stats)
    out.update({"sessions": sessions, "seconds": round(wall, 3),
                "cpu_s": round(own_cpu() - cpu0, 3),
                "requests_per_second": round(stats["requests"] / wall, 1) if wall else 0,
                "pages_per_second": round(stats["pages"] / wall, 1) if wall else 0})
    return out


def attack(argv: list[str]) -> None:
    host, port, room, low, high, sessions, rate, burst, seconds, tag = argv
    print(json.dumps(asyncio.run(_attack(
        host, int(port), room, int(low), int(high), int(sessions), float(rate), int(burst),
        float(seconds), tag))), flush=True)


# ---------------------------------------------------------------------------------------
# the bench process: seeding, the bystander, the phases


async def seed(host: str, port: int, room: str, count: int, tag: str) -> tuple[int, int]:
    """Fill `room` with `count` messages; returns their lowest and highest id."""
    loop = asyncio.get_running_loop()
    _t, conn = await loop.create_connection(lambda: Reader(Counter()), host, port)
    try:
        await conn.call({"type": "hello", "version": 1, "nick": f"{tag}_seed"}, "h")
        await conn.call({"type": "join", "room": room}, "j")
        ids: list[int] = []
        pad = "x" * TEXT
        for start in range(0, count, 500):
            waits = [conn.call({"type": "msg", "room": room, "text": f"{pad} {k}"},
                               f"s{k}") for k in range(start, min(count, start + 500))]
            ids += [r["id"] for r in await asyncio.gather(*waits)]
        return min(ids), max(ids)
    finally:
        if conn.transport is not None:
            conn.transport.close()


class Bystander:
    def __init__(self, host: str, port: int, tag: str, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.stats = Stats(tag + " ")
        self.room = f"#{tag}-by"
        self.conn: Conn | None = None

    async def start(self) -> None:
        self.conn = await open_session(self.host, self.port, self.stats,
                                       f"{self.stats.tag.strip()}_by", self.room, self.timeout)

    async def phase(self, name: str, seconds: float, probe: ServerProbe) -> dict[str, Any]:
        stats, conn = self.stats, self.conn
        assert conn is not None
        stats.new_phase()
        win = Window(probe).start()
        sent = await chat(conn, CHAT_RATE, seconds, name)
        await until(lambda: stats.received >= sent, self.timeout, 0.01)  # the last ones back
        return chat_phase(name, win.stop(), stats, sent)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def _start_attacker(host: str, port: int, room: str, low: int, high: int,
                    opts: argparse.Namespace, tag: str) -> subprocess.Popen[str]:
    args = [host, str(port), room, str(low), str(high), str(opts.clients),
            str(opts.history_rate), str(opts.history_burst), str(opts.phase_seconds), tag]
    code = "import sys; from chatd.bench.history import attack; attack(sys.argv[1:])"
    return subprocess.Popen([sys.executable, "-c", code, *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def prepare(opts: argparse.Namespace, extra: dict[str, dict[str, Any]]) -> None:
    """The attackers read at the server's default allowance, not at a lifted one."""
    rate = extra.setdefault("rate", {})
    opts.history_rate = float(rate.setdefault("history_rate", 20.0))
    opts.history_burst = int(rate.setdefault("history_burst", 100))


async def run(server: ServerRef, opts: argparse.Namespace, tag: str) -> dict[str, Any]:
    host, port, probe = server.host, server.port, server.probe
    room = f"#{tag}-old"
    low, high = await seed(host, port, room, opts.messages, tag)
    bystander = Bystander(host, port, tag, opts.timeout)
    phases = []
    attacker: dict[str, Any] = {}
    proc = _start_attacker(host, port, room, low, high, opts, tag)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        ready = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), opts.timeout)
        if ready.strip() != "ready":
            raise RuntimeError(f"the attacker did not start: {ready!r}")
        await bystander.start()
        phases.append(await bystander.phase("idle", opts.phase_seconds, probe))
        proc.stdin.write("go\n")
        proc.stdin.flush()
        phases.append(await bystander.phase("attack", opts.phase_seconds, probe))
        attacker = await asyncio.to_thread(attacker_report, proc, opts.timeout)
        phases.append(await bystander.phase("after", opts.phase_seconds, probe))
    finally:
        bystander.close()
        if proc.poll() is None:
            proc.kill()  # our own child, by its handle
            proc.wait()
    return {"phases": phases, "attacker": attacker, "memory": None, "parent_fds": probe.fds(),
            "responsiveness": None, "seeded": {"room": room, "messages": opts.messages}}


# ---------------------------------------------------------------------------------------
# report


def ok(report: dict[str, Any]) -> bool:
    """Every bystander message came back once, and the attacker ran."""
    return all(ph["lost"] == 0 and ph["duplicates"] == 0 for ph in report["phases"]) \
        and "error" not in report.get("attacker", {})


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    by = {ph["phase"]: ph for ph in report["phases"]}
    if "idle" not in by or "attack" not in by or not by["idle"]["chat_ms"]["p99"]:
        return []
    base = by["idle"]["chat_ms"]["p99"]
    goal = round(GOAL_X * base, 3)
    why = ("the reads run in the history reader at nice 19, but the attacking sessions "
           "forward what it reads to their clients, on the same cores as the bystander "
           "(and whatever else runs on the machine); see the server CPU under attack")
    return [target(f"bystander chat p99 under attack (2x idle {base} ms)",
                    by["attack"]["chat_ms"]["p99"], goal, "ms", True, why)]


def render(report: dict[str, Any]) -> list[str]:
    lines = []
    att = report.get("attacker", {})
    if "error" in att:
        lines.append(f"{'attacker':<{COL}} {att['error']}")
    elif att:
        errors = {k[6:]: v for k, v in att.items() if k.startswith("error ")}
        lines.append(f"{'attacker':<{COL}} {att['sessions']} sessions, {att.get('requests', 0):,} "
                     f"history requests in {att['seconds']:.1f} s = "
                     f"{att['requests_per_second']:,.0f}/s; {att.get('pages', 0):,} pages "
                     f"back ({att.get('bytes', 0) / 1e6:,.1f} MB); its CPU "
                     f"{att.get('cpu_s', 0):.3f} s"
                     + (f"; errors {errors}" if errors else ""))
    for ph in report["phases"]:
        lines.append(f"{ph['phase']:<{COL}} {chat_line(ph)}")
        if ph.get("server_cpu_s") is not None:
            lines.append(f"{'':<{COL}} server CPU {ph['server_cpu_s']:.3f} s (parent "
                         f"{ph['server_cpu_parent_s']:.3f}, history reader "
                         f"{ph['server_cpu_reader_s']:.3f}, sessions "
                         f"{ph['server_cpu_sessions_s']:.3f}) in {ph['seconds']:.1f} s; "
                         f"loadgen CPU {ph['loadgen_cpu_s']:.3f} s")
    return lines


def describe(opts: argparse.Namespace) -> str:
    return DESCRIPTION.format(chat=CHAT_RATE, clients=opts.clients, page=PAGE,
                              messages=opts.messages, rate=opts.history_rate,
                              burst=opts.history_burst)
