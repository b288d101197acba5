"""`chatd bench cluster`: several hosts sharing rooms through one Redis (issue 13).

Starts its own `redis-server` (append-only, `appendfsync everysec`, a temporary
directory, a free loopback port) and `--hosts` `chatd serve` hosts joined to it, spreads
`--clients` clients over them (round-robin) in rooms of `--room-size`, and runs the two
shapes of `chatd bench burst` and `steady`: every sender sends `--messages` messages as
fast as it can, then (steady) `--rate` messages/s in all for `--seconds`. Each message
carries its send time and its sender's host, so each delivery's latency is counted as
*within one host* or *across hosts*. Reported per shape: deliveries/s, latency
percentiles of both kinds, Redis's own CPU (its /proc schedstat) and the hosts' (each
host's whole process tree), and any message lost or delivered twice.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatd.protocol import FrameDecoder, decode_payload, pack

from .probes import tree_usage
from .redis import RedisServer
from .server import Server, bench_settings, spawn


@dataclass
class Tally:
    expected: int = 0
    received: int = 0
    duplicates: int = 0
    within: list[float] = field(default_factory=list)  # ms
    across: list[float] = field(default_factory=list)
    refused: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Client:
    def __init__(self, host: int, index: int, room: str) -> None:
        self.host, self.index, self.room = host, index, room
        self.nick = f"c{index}h{host}"
        self.decoder = FrameDecoder(max_frame=1 << 24)
        self.seen: set[tuple[str, int]] = set()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.acks = 0
        self.tally: Tally | None = None

    async def connect(self, port: int) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(100):  # a host that has not reached Redis yet refuses hellos
            self.writer.write(pack({"type": "hello", "version": 1, "nick": self.nick}))
            reply = await self.until(lambda f: f.get("type") in ("welcome", "error"))
            if reply["type"] == "welcome":
                break
            await asyncio.sleep(0.1)
        self.writer.write(pack({"type": "join", "room": self.room, "label": 1}))
        await self.until(lambda f: f.get("type") == "history")

    async def until(self, pred: Any) -> dict[str, Any]:
        assert self.reader is not None
        while True:
            for payload in self.decoder.payloads():
                frame = decode_payload(payload)
                if pred(frame):
                    return frame
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError(f"{self.nick}: the server closed the connection")
            self.decoder.receive_data(data)

    async def listen(self) -> None:
        assert self.reader is not None
        while data := await self.reader.read(262144):
            self.decoder.receive_data(data)
            now = time.monotonic_ns()
            for payload in self.decoder.payloads():
                self.frame(decode_payload(payload), now)

    def frame(self, frame: dict[str, Any], now: int) -> None:
        tally = self.tally
        kind = frame.get("type")
        if kind == "ack":
            self.acks += 1
            return
        if tally is None:
            return
        if kind == "error":
            tally.refused += 1
            return
        if kind != "message" or frame.get("room") != self.room:
            return
        sent_host, _, sent_ns = str(frame["text"]).split()[:3]
        key = (str(frame["from"]), int(frame["id"]))
        if key in self.seen:
            tally.duplicates += 1
            return
        self.seen.add(key)
        ms = (now - int(sent_ns)) / 1e6
        (tally.within if int(sent_host) == self.host else tally.across).append(ms)
        tally.received += 1
        if tally.received >= tally.expected:
            tally.done.set()

    def send(self, text: str) -> None:
        assert self.writer is not None
        self.writer.write(pack({"type": "msg", "room": self.room, "text": text}))


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


async def phase(name: str, clients: list[Client], senders: list[Client], per_sender: int,
                rate: float, pad: str, redis: RedisServer, hosts: list[Server],
                timeout: float) -> dict[str, Any]:
    members: dict[str, int] = {}
    for c in clients:
        members[c.room] = members.get(c.room, 0) + 1
    tally = Tally(expected=sum(members[s.room] for s in senders) * per_sender)
    for c in clients:
        c.tally = tally
    redis_cpu, host_cpu = redis.cpu_seconds(), sum(tree_usage(h.pid)[0] for h in hosts) / 1e9
    start = time.monotonic()
    total = per_sender * len(senders)
    interval = len(senders) / rate if rate else 0.0
    for n in range(per_sender):
        for s in senders:
            s.send(f"{s.host} {n} {time.monotonic_ns()} {pad}")
        if interval:
            await asyncio.sleep(max(0.0, start + (n + 1) * interval - time.monotonic()))
        elif n % 10 == 9:
            await asyncio.sleep(0)  # let the writers drain
    with contextlib.suppress(TimeoutError):  # what did not come is counted as lost
        await asyncio.wait_for(tally.done.wait(), timeout)
    elapsed = time.monotonic() - start
    redis_cpu = redis.cpu_seconds() - redis_cpu
    host_cpu = sum(tree_usage(h.pid)[0] for h in hosts) / 1e9 - host_cpu
    for c in clients:
        c.tally = None
    lost = tally.expected - tally.received
    return {
        "phase": name, "messages": total, "deliveries": tally.received, "lost": lost,
        "duplicates": tally.duplicates, "refused": tally.refused,
        "seconds": round(elapsed, 3),
        "deliveries_per_s": round(tally.received / elapsed) if elapsed else None,
        "latency_within_ms": {"p50": pct(tally.within, 0.5), "p99": pct(tally.within, 0.99),
                              "n": len(tally.within)},
        "latency_across_ms": {"p50": pct(tally.across, 0.5), "p99": pct(tally.across, 0.99),
                              "n": len(tally.across)},
        "redis_cpu_s": round(redis_cpu, 3),
        "redis_cpu_pct": round(100 * redis_cpu / elapsed, 1) if elapsed else None,
        "redis_cpu_us_per_message": round(1e6 * redis_cpu / total, 1) if total else None,
        "hosts_cpu_s": round(host_cpu, 3),
        "hosts_cpu_us_per_delivery": (round(1e6 * host_cpu / tally.received, 1)
                                      if tally.received else None),
    }


async def bench(opts: argparse.Namespace, redis: RedisServer, hosts: list[Server]
                ) -> list[dict[str, Any]]:
    clients = [Client(i % len(hosts), i, f"#bench{i // opts.room_size}"
                      if opts.room_size else "#bench") for i in range(opts.clients)]
    for c in clients:
        await c.connect(hosts[c.host].port)
    await asyncio.sleep(1.0)  # joins reach every host (they travel the stream too)
    listeners = [asyncio.create_task(c.listen()) for c in clients]
    senders = clients[:opts.senders]
    pad = "x" * max(0, opts.size)
    try:
        out = [await phase("burst", clients, senders, opts.messages, 0.0, pad, redis, hosts,
                           opts.timeout)]
        steady = max(1, int(opts.rate * opts.seconds / len(senders)))
        out.append(await phase("steady", clients, senders, steady, opts.rate, pad, redis,
                               hosts, opts.timeout))
    finally:
        for task in listeners:
            task.cancel()
        for c in clients:
            if c.writer is not None:
                c.writer.close()
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def render(report: dict[str, Any]) -> str:
    p = report["params"]
    lines = [f"chatd bench cluster: {p['hosts']} hosts, one Redis "
             f"(appendfsync everysec), {p['clients']} clients round-robin over the hosts, "
             f"rooms of {p['room_size'] or p['clients']}, {p['senders']} senders",
             f"machine: {report['machine']['cpus']} CPUs, shared with everything else "
             f"running on it (figures vary from run to run)"]
    for ph in report["phases"]:
        w, a = ph["latency_within_ms"], ph["latency_across_ms"]
        lines += [
            f"{ph['phase']}: {ph['messages']} messages, {ph['deliveries']} deliveries in "
            f"{ph['seconds']} s = {ph['deliveries_per_s']} deliveries/s; lost {ph['lost']}, "
            f"duplicated {ph['duplicates']}, refused {ph['refused']}",
            f"  latency within a host: p50 {w['p50']} ms, p99 {w['p99']} ms ({w['n']}); "
            f"across hosts: p50 {a['p50']} ms, p99 {a['p99']} ms ({a['n']})",
            f"  Redis CPU {ph['redis_cpu_s']} s ({ph['redis_cpu_pct']} % of a core, "
            f"{ph['redis_cpu_us_per_message']} us per message); hosts' CPU "
            f"{ph['hosts_cpu_s']} s ({ph['hosts_cpu_us_per_delivery']} us per delivery)"]
    return "\n".join(lines)


OPTIONS = (
    ("--hosts", int, 3, "chatd hosts"),
    ("--clients", int, 60, "clients"),
    ("--senders", int, 12, "clients that send"),
    ("--messages", int, 100, "burst: messages per sender"),
    ("--rate", float, 200.0, "steady: messages/s in all"),
    ("--seconds", float, 5.0, "steady: how long"),
    ("--room-size", int, 20, "clients per room (0: one room)"),
    ("--size", int, 0, "pad texts to about this many bytes"),
    ("--timeout", float, 60.0, "seconds a phase may take to deliver everything"),
)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="chatd bench cluster", description=__doc__)
    for flag, kind, default, meaning in OPTIONS:
        parser.add_argument(flag, type=kind, default=default,
                            help=f"{meaning} (default {default:g})")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    opts = parser.parse_args(argv)
    if shutil.which("redis-server") is None:
        print("chatd bench cluster: redis-server is not installed", file=sys.stderr)
        return 2
    opts.senders = min(opts.senders, opts.clients)
    with tempfile.TemporaryDirectory(prefix="chatd-bench-cluster-") as tmp:
        base = Path(tmp)
        redis = RedisServer(base / "redis", free_port()).start()
        hosts: list[Server] = []
        try:
            for n in range(opts.hosts):
                settings = bench_settings(opts.clients, {"cluster": {
                    "redis_url": redis.url, "node": f"bench{n}"}})
                (base / f"h{n}").mkdir()
                hosts.append(spawn(settings, base / f"h{n}"))
            phases = asyncio.run(bench(opts, redis, hosts))
        finally:
            for server in hosts:
                with contextlib.suppress(Exception):
                    server.stop(20.0, wait_sessions=30.0)
            redis.stop()
    report = {"scenario": "cluster", "params": {k: getattr(opts, k) for k in (
        "hosts", "clients", "senders", "messages", "rate", "seconds", "room_size", "size")},
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "phases": phases,
        "ok": all(ph["lost"] == 0 and ph["duplicates"] == 0 for ph in phases)}
    print(json.dumps(report, indent=2) if opts.json else render(report))
    return 0 if report["ok"] else 1
