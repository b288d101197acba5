"""The load generator: many client connections in one process, and what a phase costs.

One process with non-blocking sockets (asyncio protocols) that decodes the server's frames
with a streaming msgpack Unpacker, so it stays well below one core; its own CPU use is in
every phase of the report, so a reader can check it was not the bottleneck. Each message
carries its send time (monotonic ns) at the end of its text: a delivery's latency is its
arrival minus that. Arrival is counted twice: when this process reads the frame (what a
client sees) and, where the kernel says (SO_TIMESTAMPNS, Linux), when the frame reached
the client's socket (the server's share: without the generator's own delay in getting to
the read, which grows with its load).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import platform
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgpack

from chatd.protocol import pack

from .probes import CpuSample, ServerProbe, own_cpu

P = TypeVar("P", bound=asyncio.Protocol)
PROGRESS_EVERY = 2.0  # seconds between progress lines (only on runs longer than that)
# SO_TIMESTAMPNS (= SCM_TIMESTAMPNS), which the socket module does not name: the generic
# Linux value, which x86-64 and arm64 use (alpha, mips, parisc and sparc differ).
SO_TIMESTAMPNS = 35 if sys.platform == "linux" and platform.machine() in (
    "x86_64", "amd64", "aarch64", "arm64") else None
TIMESPEC = struct.Struct("qq")  # the kernel's struct timespec on those (64-bit)


class StampedSocket(socket.socket):
    """A client socket whose recv() (what asyncio's transports read with) also keeps the
    kernel's receive time of the data returned, in CLOCK_REALTIME ns (`stamp`; 0 when
    the kernel gave none). For a read of several segments TCP reports the last one's:
    a frame from an earlier one is counted as arriving later than it did, never earlier."""

    stamp = 0

    def stamping(self) -> None:
        """Ask the kernel for receive times, where it can be asked (else `stamp` stays 0)."""
        if SO_TIMESTAMPNS is not None:
            with contextlib.suppress(OSError):
                self.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data, ancdata, _flags, _addr = self.recvmsg(bufsize, socket.CMSG_SPACE(TIMESPEC.size),
                                                    flags)
        self.stamp = 0  # (never an earlier read's)
        for level, kind, value in ancdata:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and \
                    len(value) >= TIMESPEC.size:
                sec, nsec = TIMESPEC.unpack_from(value)
                self.stamp = sec * 1_000_000_000 + nsec
        return data


def clock_offset() -> int:
    """CLOCK_REALTIME minus CLOCK_MONOTONIC now, in ns: a kernel receive time minus this
    is on the clock the messages' send times are read from."""
    return time.time_ns() - time.monotonic_ns()


async def stamped_connection(host: str, port: int,
                             local_addr: tuple[str, int] | None) -> StampedSocket:
    """A connected non-blocking StampedSocket, as loop.create_connection would make: each
    address `host` resolves to in turn, until one takes the connection."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    error: OSError = ConnectionError(f"cannot resolve {host}")
    for family, kind, proto, _name, addr in infos:
        sock = StampedSocket(family, kind, proto)
        try:
            sock.setblocking(False)
            sock.stamping()
            if local_addr is not None:
                sock.bind(local_addr)
            await loop.sock_connect(sock, addr)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    raise error


async def connect(factory: Callable[[StampedSocket], P], host: str, port: int,
                  timeout: float, local_addr: tuple[str, int] | None = None) -> P:
    """A client connection of either wire (`factory` makes its protocol) on a
    StampedSocket: loop.create_connection, but with the kernel's receive times."""
    sock = await asyncio.wait_for(stamped_connection(host, port, local_addr), timeout)
    try:
        _transport, conn = await asyncio.wait_for(asyncio.get_running_loop().create_connection(
            lambda: factory(sock), sock=sock), timeout)
    except BaseException:
        sock.close()
        raise
    return conn


@dataclass
class Stats:
    """Delivery counters shared by all connections of a run."""

    tag: str
    received: int = 0
    duplicates: int = 0
    foreign: int = 0
    acks: int = 0
    latencies: list[int] = field(default_factory=list)
    # what the kernel says of the same deliveries: arrival at the client's socket
    arrivals: list[int] = field(default_factory=list)
    # CLOCK_REALTIME minus CLOCK_MONOTONIC, to put the kernel's stamps on the send times'
    # clock (read at each phase's start: a step of the wall clock mid-phase skews them)
    realtime_offset: int = field(default_factory=clock_offset)
    last_arrival: int = 0  # the latest of those, in monotonic ns (0: none)
    errors: Counter[str] = field(default_factory=Counter)
    target: int = 0
    done: asyncio.Event | None = None

    def check_done(self) -> None:
        if self.done is not None and self.received >= self.target:
            self.done.set()

    def new_phase(self) -> None:
        """Count a bystander's next phase from zero."""
        self.received = self.duplicates = 0
        self.clear_latencies()
        self.errors.clear()

    def clear_latencies(self) -> None:
        self.latencies, self.arrivals, self.last_arrival = [], [], 0
        self.realtime_offset = clock_offset()


class BaseConn(asyncio.Protocol):
    """What a client connection of either wire has: its counters, its pending replies,
    TCP_NODELAY, and its end. Conn speaks native frames, ircload.IrcConn IRC lines."""

    echo = True  # a sender receives its own messages too (IRC: not)

    def __init__(self, stats: Stats, nick: str, room: str | None,
                 sock: StampedSocket | None = None) -> None:
        self.stats = stats
        self.sock = sock
        self.nick = nick
        self.room = room
        self.transport: asyncio.Transport | None = None
        self.replies: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def arrived(self) -> int:
        """When what was just read reached the socket, in monotonic ns (0: not known)."""
        stamp = self.sock.stamp if self.sock is not None else 0
        if not stamp:
            return 0
        arrived = stamp - self.stats.realtime_offset
        if arrived > self.stats.last_arrival:
            self.stats.last_arrival = arrived
        return arrived

    def request(self, obj: dict[str, Any], label: Any) -> asyncio.Future[dict[str, Any]]:
        raise NotImplementedError

    def msg(self, text: str) -> bytes:
        """A message into the connection's room, as it goes on the wire."""
        raise NotImplementedError

    def connection_lost(self, exc: Exception | None) -> None:
        for fut in self.replies.values():
            if not fut.done():
                fut.set_exception(ConnectionError("connection closed by the server"))
        self.replies.clear()
        if not self.closed.done():
            self.closed.set_result(None)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Conn(BaseConn):
    """One client connection; counts deliveries with their latency as frames arrive."""

    def __init__(self, stats: Stats, nick: str, room: str | None,
                 sock: StampedSocket | None = None) -> None:
        super().__init__(stats, nick, room, sock)
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False,
                                         max_buffer_size=64 << 20)
        self.fed = 0
        self.need_header = True
        self.seen: set[int] = set()

    def request(self, obj: dict[str, Any], label: Any) -> asyncio.Future[dict[str, Any]]:
        fut = asyncio.get_running_loop().create_future()
        self.replies[label] = fut
        assert self.transport is not None
        self.transport.write(pack({**obj, "label": label}))
        return fut

    def msg(self, text: str) -> bytes:
        return pack({"type": "msg", "room": self.room, "text": text})

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        unp = self.unpacker
        unp.feed(data)
        self.fed += len(data)
        stats = self.stats
        seen = self.seen
        lat, arrivals = stats.latencies, stats.arrivals
        tag = stats.tag
        got = 0
        arrived = self.arrived()
        while True:
            if self.need_header:
                if self.fed - unp.tell() < 4:
                    break
                unp.read_bytes(4)
                self.need_header = False
            try:
                obj = unp.unpack()
            except msgpack.OutOfData:
                break
            self.need_header = True
            kind = obj.get("type")
            if kind == "message":
                text = obj["text"]
                if not text.startswith(tag):
                    stats.foreign += 1
                    continue
                mid = obj["id"]
                if mid in seen:
                    stats.duplicates += 1
                    continue
                seen.add(mid)
                got += 1
                sent = int(text[text.rindex(" ") + 1 :])
                lat.append(now - sent)
                if arrived:
                    arrivals.append(arrived - sent)
            elif kind == "ack":
                stats.acks += 1
            else:
                if kind == "error":
                    stats.errors[obj.get("code", "?")] += 1
                label = obj.get("label")
                if label is not None and kind != "joined":
                    fut = self.replies.pop(label, None)
                    if fut is not None and not fut.done():
                        fut.set_result(obj)
        if got:
            stats.received += got
            stats.check_done()

async def open_session(host: str, port: int, stats: Stats, nick: str, room: str | None,
                       timeout: float, local_addr: tuple[str, int] | None = None) -> Conn:
    """Connect, say hello and (with a room) join; ConnectionError if either is refused."""
    conn = await connect(lambda sock: Conn(stats, nick, room, sock), host, port, timeout,
                         local_addr)
    try:
        waits = [conn.request({"type": "hello", "version": 1, "nick": nick,
                               "client": "chatd-bench"}, 0)]
        if room is not None:
            waits.append(conn.request({"type": "join", "room": room}, 1))
        for reply in await asyncio.wait_for(asyncio.gather(*waits), timeout):
            if reply.get("type") == "error":
                raise ConnectionError(reply.get("code", "error"))
    except BaseException:
        conn.close()
        raise
    return conn


async def chat(conn: Conn, rate: float, seconds: float, label: str = "") -> int:
    """`rate` messages a second into the connection's room for `seconds`, each carrying
    its send time (Conn times its round trip as it comes back); how many were sent."""
    assert conn.transport is not None and conn.room is not None
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    n = int(seconds * rate)
    for k in range(n):
        delay = t0 + k / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        text = f"{conn.stats.tag}{label}{k} {time.monotonic_ns()}"
        conn.transport.write(pack({"type": "msg", "room": conn.room, "text": text}))
    return n


def chat_phase(name: str, window: dict[str, Any], stats: Stats, sent: int) -> dict[str, Any]:
    """A bystander's phase in the report: its chat's round trips, and what the phase cost."""
    return {"phase": name, **window, "messages": sent, "received": stats.received,
            "lost": sent - stats.received, "duplicates": stats.duplicates,
            "errors": dict(stats.errors), "chat_ms": percentiles(stats.latencies)}


async def until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` without blocking the loop; False if the deadline passed first."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)
    return True


def attacker_report(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    """Wait for an attacker process (our own child) and read its report: the JSON object
    on its last line of output, or {"error": ...} when it hangs or says nothing."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()  # by its handle
        proc.communicate()
        return {"error": "the attacker did not finish"}
    try:
        report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": f"the attacker exited with {proc.returncode}"}
    return report


@dataclass
class ServerRef:
    """The server a scenario drives, and how to watch it."""

    host: str
    port: int
    probe: ServerProbe
    spare: int = 0  # its pool of spare session processes (as spawned by the benchmark)
    data_dir: Path | None = None  # a spawned server's (chatd bench upgrade needs it)


@dataclass
class Window:
    """CPU and wall clock around one measured phase."""

    probe: ServerProbe
    wall: float = 0.0
    own: float = 0.0
    server: CpuSample | None = None

    def start(self) -> Window:
        self.server = self.probe.cpu()
        self.own = own_cpu()
        self.wall = time.monotonic()
        return self

    def stop(self) -> dict[str, Any]:
        wall = time.monotonic() - self.wall
        own = own_cpu() - self.own
        end = self.probe.cpu()
        out: dict[str, Any] = {"seconds": round(wall, 4), "loadgen_cpu_s": round(own, 4),
                               "loadgen_cpu_pct": round(100 * own / wall, 1) if wall else 0.0}
        if self.server is not None and end is not None:
            parent = end.parent - self.server.parent
            sessions = end.sessions - self.server.sessions
            reader = max(0.0, end.reader - self.server.reader)  # (0 if it was restarted)
            out.update({"server_cpu_s": round(parent + sessions + reader, 3),
                        "server_cpu_parent_s": round(parent, 3),
                        "server_cpu_sessions_s": round(sessions, 3),
                        "server_cpu_reader_s": round(reader, 3),
                        "parent_wakeups": end.parent_wakeups - self.server.parent_wakeups,
                        "session_wakeups": end.session_wakeups
                        - self.server.session_wakeups})
        else:
            out.update({"server_cpu_s": None, "server_cpu_parent_s": None,
                        "server_cpu_sessions_s": None, "server_cpu_reader_s": None})
        return out


class Progress:
    """Prints a line to stderr every few seconds while a phase runs."""

    def __init__(self, enabled: bool, name: str, count: Callable[[], str]) -> None:
        self.enabled, self.name, self.count = enabled, name, count
        self.task: asyncio.Task[None] | None = None
        self.t0 = time.monotonic()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY)
            print(f"[bench] {self.name}: {self.count()} "
                  f"({time.monotonic() - self.t0:.0f} s)", file=sys.stderr, flush=True)

    def __enter__(self) -> Progress:
        if self.enabled:
            self.task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        if self.task is not None:
            self.task.cancel()


def percentiles(samples_ns: list[int]) -> dict[str, float | None]:
    """p50, p90, p99 and max of durations in ns, in ms."""
    if not samples_ns:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    data = sorted(samples_ns)
    n = len(data)

    def at(q: float) -> float:
        return round(data[max(0, math.ceil(q * n) - 1)] / 1e6, 3)

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99),
            "max": round(data[-1] / 1e6, 3)}
