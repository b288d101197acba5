"""`chatd bench`: drive a chatd server over loopback and report speed, memory and scale.

It starts its own `chatd serve` (ephemeral loopback port, temporary data dir, rate
limits lifted) or targets a running one (`--target HOST:PORT`). The load generator is
one process with non-blocking sockets (asyncio protocols) and decodes the server's
frames with a streaming msgpack Unpacker, so it stays well below one core; its own CPU
use is in the report so a reader can check it was not the bottleneck.

Scenarios (scale parameters can be overridden by flags, e.g. for a smoke run):
  burst    100 clients in one room, 10 senders x 100 messages, as fast as possible
  steady   the same at 200 messages/s in total
  idle     1,000 clients connected and joined (rooms of 100), then memory
  connect  1,000 clients connecting, with 50 and with 1,000 attempts in flight
  churn    a bystander's welcome and chat, idle and while another address connects and
           resets as fast as it can (chatd/bench_churn.py)
  history  a bystander's chat, idle, while 40 sessions read history at their allowed rate,
           and after (chatd/bench_history.py)

Server CPU comes from /proc/PID/stat (utime+stime) of the parent and every session
process, with sessions that ended counted through the parent's cutime+cstime; memory
from /proc/PID/smaps_rollup (RSS, PSS, USS = private clean + private dirty).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import resource
import secrets
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

HEADER = struct.Struct(">I")
TICK = os.sysconf("SC_CLK_TCK")
PROGRESS_EVERY = 2.0  # seconds between progress lines (only on runs longer than that)

SCENARIOS: dict[str, dict[str, Any]] = {
    "burst": {"clients": 100, "senders": 10, "messages": 100, "rate": 0.0, "room_size": 0,
              "inflight": [100]},
    "steady": {"clients": 100, "senders": 10, "messages": 100, "rate": 200.0, "room_size": 0,
               "inflight": [100]},
    "idle": {"clients": 1000, "senders": 0, "messages": 0, "rate": 0.0, "room_size": 100,
             "inflight": [100]},
    "connect": {"clients": 1000, "senders": 0, "messages": 0, "rate": 0.0, "room_size": -1,
                "inflight": [50, 1000]},
    "churn": {"clients": 1, "senders": 0, "messages": 0, "rate": 0.0, "room_size": -1,
              "inflight": [1]},
    # clients: the sessions that read history; messages: the messages in their room
    "history": {"clients": 40, "senders": 0, "messages": 5000, "rate": 0.0, "room_size": -1,
                "inflight": [1]},
}
DESCRIPTIONS = {
    "burst": "{clients} clients in {rooms}, {senders} senders x {messages} messages, "
             "as fast as possible",
    "steady": "{clients} clients in {rooms}, {senders} senders x {messages} messages at "
              "{rate:g} messages/s in total",
    "idle": "{clients} clients connected and joined ({rooms}), then memory",
    "connect": "{clients} clients connecting (hello -> welcome) with {inflight} attempts "
               "in flight",
    "churn": "",  # chatd/bench_churn.py describes itself
    "history": "",  # chatd/bench_history.py describes itself
}


# ---------------------------------------------------------------------------------------
# /proc probes


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2 :].decode().split()


def cpu_times(pid: int) -> tuple[float, float] | None:
    """(own CPU time, reaped children's cutime+cstime) in seconds."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    # fields[0] is the state (field 3); utime is field 14 -> index 11.
    own = (int(fields[11]) + int(fields[12])) / TICK
    reaped = (int(fields[13]) + int(fields[14])) / TICK
    # utime+stime is in whole clock ticks per process, which undercounts many short-lived
    # or lightly loaded sessions; schedstat holds the same CPU time in nanoseconds.
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as fh:
            ns = int(fh.read().split()[0])
        if ns:
            own = ns / 1e9
    except (OSError, ValueError, IndexError):
        pass
    return own, reaped


def children_of(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
        for tid in tasks:
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                kids += [int(x) for x in fh.read().split()]
        return kids
    except OSError:
        pass
    for entry in os.listdir("/proc"):  # no CONFIG_PROC_CHILDREN: scan
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields and int(fields[1]) == pid:
                kids.append(int(entry))
    return kids


def is_reader(pid: int) -> bool:
    """Whether `pid` is a server's history reader (a helper, not a session)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return b"chatd.reader" in fh.read().split(b"\0")
    except OSError:
        return False


def sessions_of(pid: int) -> list[int]:
    return [kid for kid in children_of(pid) if not is_reader(kid)]


def smaps_rollup(pid: int) -> dict[str, int] | None:
    """RSS, PSS and USS of one process in KiB."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            text = fh.read()
    except OSError:
        return None
    vals: dict[str, int] = {}
    for line in text.splitlines()[1:]:
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            vals[name] = int(parts[0])
    return {"rss": vals.get("Rss", 0), "pss": vals.get("Pss", 0),
            "uss": vals.get("Private_Clean", 0) + vals.get("Private_Dirty", 0)}


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def find_listener_pid(port: int) -> int | None:
    """The pid holding a listening TCP socket on `port` (same host only)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                rows = fh.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{cols[9]}]")
    if not inodes:
        return None
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{entry}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/fd/{fd}") in inodes:
                        found.append(int(entry))
                        break
    return min(found) if found else None


@dataclass
class CpuSample:
    parent: float
    sessions: float  # live session processes plus those reaped by the parent
    reader: float = 0.0  # the live history reader


class ServerProbe:
    """CPU and memory of the server parent and all its session processes."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid

    def cpu(self) -> CpuSample | None:
        if self.pid is None:
            return None
        times = cpu_times(self.pid)  # read the parent first: a child reaped after this
        if times is None:  # is still counted live below
            return None
        live = reader = 0.0
        for kid in children_of(self.pid):
            t = cpu_times(kid)
            if t is None:
                continue
            if is_reader(kid):
                reader += t[0]
            else:
                live += t[0]
        return CpuSample(times[0], times[1] + live, reader)

    def memory(self) -> dict[str, Any] | None:
        if self.pid is None:
            return None
        parent = smaps_rollup(self.pid)
        if parent is None:
            return None
        total = {"rss": 0, "pss": 0, "uss": 0}
        n = 0
        for kid in sessions_of(self.pid):
            m = smaps_rollup(kid)
            if m is None:
                continue
            n += 1
            for k in total:
                total[k] += m[k]
        per = {k: round(v / n) for k, v in total.items()} if n else None
        everything = {k: total[k] + parent[k] for k in total}
        return {"unit": "KiB", "parent": parent, "sessions": n, "sessions_total": total,
                "per_session": per, "total": everything,
                "total_per_session": {k: round(v / n) for k, v in everything.items()}
                if n else None}

    def fds(self) -> int | None:
        return None if self.pid is None else open_fds(self.pid)

    def session_count(self) -> int | None:
        return None if self.pid is None else len(sessions_of(self.pid))


def own_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


# ---------------------------------------------------------------------------------------
# the server under test


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def bench_settings(clients: int, extra: dict[str, dict[str, Any]],
                   admission: bool = False) -> dict[str, dict[str, Any]]:
    """Server settings that lift the per-client limits a load test would trip (and the
    connection rates too, unless `admission` is what the scenario measures)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    spare = int(extra.get("server", {}).get("spare_children", 0))
    cap = clients + 64
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard - 64 - spare - 1)
    huge = 1_000_000_000
    settings: dict[str, dict[str, Any]] = {
        "limits": {"max_sessions": cap, "max_sessions_per_ip": cap},
        "rate": {"msg_rate": 1e9, "msg_burst": huge, "history_rate": 1e9,
                 "history_burst": huge, "cmd_rate": 1e9, "cmd_burst": huge,
                 "flood_strikes": huge},
        "history": {"on_join": 0},
        "keepalive": {"ping_interval": 3600.0, "handshake_timeout": 120.0},
        "queues": {"child_queue": 64 << 20, "client_queue": 64 << 20},
    }
    if admission:  # what is measured is the server's own admission: its defaults
        del settings["limits"]
    else:  # every bench client connects from one address, as fast as it can
        settings["limits"].update({"conn_rate_per_ip": 1e9, "conn_burst_per_ip": huge,
                                   "session_rate": 1e9, "session_burst": huge})
    for section, values in extra.items():
        settings.setdefault(section, {}).update(values)
    return settings


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


class SpawnedServer:
    """A `chatd serve` subprocess on a free loopback port with a temporary data dir."""

    def __init__(self, settings: dict[str, dict[str, Any]], host: str = "127.0.0.1") -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="chatd-bench-")
        self.dir = Path(self.tmp.name)
        self.host = host
        self.port = free_port(host)
        self.settings = settings
        lines = []
        for section, values in settings.items():
            lines.append(f"[{section}]")
            lines += [f"{k} = {_toml(v)}" for k, v in values.items()]
        self.config = self.dir / "bench.toml"
        self.config.write_text("\n".join(lines) + "\n")
        self.log = self.dir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        cmd = [sys.executable, "-m", "chatd", "serve", "--host", self.host, "--port",
               str(self.port), "--data-dir", str(self.dir / "data"), "--config",
               str(self.config), "--log-level", "warning"]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chatd serve exited with {self.proc.returncode}:\n"
                                   + self.log_tail())
            try:
                with socket.create_connection((self.host, self.port), timeout=1.0):
                    break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError("chatd serve did not start listening:\n" + self.log_tail())
        # The probe connection became a session; let it end, and let the pool of spare
        # session processes fill, before measuring.
        probe = ServerProbe(self.proc.pid)
        spare = self.spare
        wait_for(lambda: (probe.session_count() or 0) == spare, 30.0)

    @property
    def spare(self) -> int:
        return int(self.settings.get("server", {}).get("spare_children", 0))

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            kids = children_of(proc.pid)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                for pid in kids:  # only the sessions of the server we started
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                proc.kill()
                proc.wait(5)
            # Sessions exit after the parent; their teardown would bleed into the next run.
            wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in kids), 30.0)
        return proc.returncode

    def cleanup(self) -> None:
        self.tmp.cleanup()


def wait_for(pred: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# ---------------------------------------------------------------------------------------
# the load generator


def frame(obj: dict[str, Any]) -> bytes:
    payload = msgpack.packb(obj, use_bin_type=True)
    return HEADER.pack(len(payload)) + payload


@dataclass
class Stats:
    """Delivery counters shared by all connections of a run."""

    tag: str
    received: int = 0
    duplicates: int = 0
    foreign: int = 0
    acks: int = 0
    latencies: list[int] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    target: int = 0
    done: asyncio.Event | None = None

    def check_done(self) -> None:
        if self.done is not None and self.received >= self.target:
            self.done.set()


class Conn(asyncio.Protocol):
    """One client connection; counts deliveries with their latency as frames arrive."""

    def __init__(self, stats: Stats, nick: str, room: str | None) -> None:
        self.stats = stats
        self.nick = nick
        self.room = room
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False,
                                         max_buffer_size=64 << 20)
        self.fed = 0
        self.need_header = True
        self.transport: asyncio.Transport | None = None
        self.seen: set[int] = set()
        self.replies: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def request(self, obj: dict[str, Any], label: Any) -> asyncio.Future[dict[str, Any]]:
        fut = asyncio.get_running_loop().create_future()
        self.replies[label] = fut
        assert self.transport is not None
        self.transport.write(frame({**obj, "label": label}))
        return fut

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        unp = self.unpacker
        unp.feed(data)
        self.fed += len(data)
        stats = self.stats
        seen = self.seen
        lat = stats.latencies
        tag = stats.tag
        got = 0
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
                lat.append(now - int(text[text.rindex(" ") + 1 :]))
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
                        "server_cpu_reader_s": round(reader, 3)})
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
    if not samples_ns:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    data = sorted(samples_ns)
    n = len(data)

    def at(q: float) -> float:
        return round(data[max(0, math.ceil(q * n) - 1)] / 1e6, 3)

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99),
            "max": round(data[-1] / 1e6, 3)}


class Bench:
    def __init__(self, host: str, port: int, probe: ServerProbe, opts: argparse.Namespace,
                 baseline_sessions: int, spare: int = 0) -> None:
        self.host, self.port, self.probe, self.opts = host, port, probe, opts
        self.tag = "b" + secrets.token_hex(3)
        self.stats = Stats(self.tag + " ")
        self.conns: list[Conn] = []
        self.baseline_sessions = baseline_sessions
        self.spare = spare

    async def settle(self) -> None:
        """Wait (bounded) until the server has refilled its pool of spare processes."""
        if self.probe.pid is None or not self.spare:
            return
        want = len(self.conns) + self.spare
        deadline = time.monotonic() + max(30.0, self.opts.timeout)
        while (self.probe.session_count() or 0) < want and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    def room_of(self, i: int, clients: int) -> str | None:
        size = self.opts.room_size
        if size < 0:
            return None
        if size == 0:
            return f"#{self.tag}-0"
        return f"#{self.tag}-{i // size}"

    def rooms_label(self, clients: int) -> str:
        size = self.opts.room_size
        if size < 0:
            return "no room"
        if size == 0 or size >= clients:
            return "one room"
        return f"{math.ceil(clients / size)} rooms of {size}"

    async def _open(self, i: int, clients: int, sem: asyncio.Semaphore,
                    failures: Counter[str], times: list[float]) -> Conn | None:
        room = self.room_of(i, clients)
        async with sem:
            t0 = time.monotonic()
            conn: Conn | None = None
            try:
                loop = asyncio.get_running_loop()
                _transport, conn = await asyncio.wait_for(loop.create_connection(
                    lambda: Conn(self.stats, f"{self.tag}_{i}", room), self.host, self.port),
                    self.opts.timeout)
                welcome = conn.request({"type": "hello", "version": 1, "nick": conn.nick,
                                        "client": "chatd-bench"}, 0)
                waits = [welcome]
                if room is not None:
                    waits.append(conn.request({"type": "join", "room": room}, 1))
                replies = await asyncio.wait_for(asyncio.gather(*waits), self.opts.timeout)
                for reply in replies:
                    if reply.get("type") == "error":
                        raise ConnectionError(reply.get("code", "error"))
                times.append(time.monotonic() - t0)
                return conn
            except (OSError, ConnectionError, TimeoutError) as exc:
                why = "timeout" if isinstance(exc, TimeoutError) else (
                    str(exc) if isinstance(exc, ConnectionError) and str(exc) else
                    type(exc).__name__)
                failures[why] += 1
                if conn is not None:
                    conn.close()
                return None

    async def connect(self, clients: int, inflight: int, name: str) -> dict[str, Any]:
        sem = asyncio.Semaphore(inflight)
        failures: Counter[str] = Counter()
        times: list[float] = []
        win = Window(self.probe).start()
        with Progress(self.opts.progress, name,
                      lambda: f"{len(times)}/{clients} sessions, "
                              f"{sum(failures.values())} failed"):
            tasks = [self._open(i, clients, sem, failures, times) for i in range(clients)]
            opened = await asyncio.gather(*tasks)
        out = {"phase": name, "clients": clients, "inflight": inflight,
               "connected": len(times), "failed": sum(failures.values()),
               "failures": dict(failures), **win.stop()}
        self.conns += [c for c in opened if c is not None]
        out["per_second"] = round(out["connected"] / out["seconds"], 1) if out["seconds"] else 0
        lat = percentiles([int(t * 1e9) for t in times])
        out["setup_ms"] = lat
        if out["server_cpu_s"] is not None and out["connected"]:
            out["server_cpu_us_per_session"] = round(1e6 * out["server_cpu_s"]
                                                     / out["connected"], 1)
        return out

    async def quiesce(self) -> None:
        """A broker round trip on every connection: everything queued before it is in."""
        waits = []
        for n, conn in enumerate(self.conns):
            if conn.room is not None and conn.transport is not None \
                    and not conn.transport.is_closing():
                waits.append(conn.request({"type": "who", "room": conn.room}, f"q{n}"))
        if waits:
            await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True),
                                   self.opts.timeout * 4)

    async def deliver(self) -> dict[str, Any]:
        opts = self.opts
        senders = [c for c in self.conns[: opts.senders]]
        members: Counter[str | None] = Counter(c.room for c in self.conns)
        expected = sum(members[s.room] for s in senders) * opts.messages
        total_msgs = len(senders) * opts.messages
        stats = self.stats
        stats.received = stats.duplicates = stats.acks = 0
        stats.latencies = []
        stats.target = expected
        stats.done = asyncio.Event()
        pad = "x" * max(0, opts.size - 30)
        loop = asyncio.get_running_loop()
        last = [0, time.monotonic()]  # received count and when it last moved

        def msg(conn: Conn, seq: int) -> bytes:
            text = f"{stats.tag}{pad}{conn.nick}:{seq} {time.monotonic_ns()}"
            return frame({"type": "msg", "room": conn.room, "text": text})

        async def send_all() -> None:
            if opts.rate <= 0:  # burst: every sender writes everything at once
                for conn in senders:
                    assert conn.transport is not None
                    conn.transport.write(b"".join(msg(conn, k) for k in range(opts.messages)))
                return
            t0 = loop.time()
            for k in range(total_msgs):
                due = t0 + k / opts.rate
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                conn = senders[k % len(senders)]
                assert conn.transport is not None
                conn.transport.write(msg(conn, k // len(senders)))

        win = Window(self.probe).start()
        with Progress(opts.progress, "deliver",
                      lambda: f"{stats.received}/{expected} deliveries"):
            sender = loop.create_task(send_all())
            while not stats.done.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stats.done.wait(), 0.5)
                if stats.received != last[0]:
                    last[:] = [stats.received, time.monotonic()]
                elif sender.done() and time.monotonic() - last[1] > opts.timeout:
                    break  # stalled: report the loss
            await sender
        out = {"phase": "deliver", "senders": len(senders), "messages": total_msgs,
               "acks": stats.acks, "expected": expected, "received": stats.received,
               "lost": expected - stats.received, "duplicates": stats.duplicates,
               "errors": dict(stats.errors), **win.stop()}
        out["deliveries_per_second"] = round(out["received"] / out["seconds"]) \
            if out["seconds"] else 0
        out["latency_ms"] = percentiles(stats.latencies)
        if out["server_cpu_s"] is not None and out["received"]:
            out["server_cpu_us_per_delivery"] = round(1e6 * out["server_cpu_s"]
                                                      / out["received"], 3)
        return out

    async def probe_answer(self) -> dict[str, Any]:
        """Is the server still prompt? One new session, and one broker round trip."""
        out: dict[str, Any] = {}
        failures: Counter[str] = Counter()
        times: list[float] = []
        n = len(self.conns)
        conn = await self._open(10**6, n + 1, asyncio.Semaphore(1), failures, times)
        out["new_session_ms"] = round(times[0] * 1e3, 2) if times else None
        if conn is not None:
            self.conns.append(conn)
        live = [c for c in self.conns if c.transport and not c.transport.is_closing()]
        if live:
            t0 = time.monotonic()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(live[0].request({"type": "rooms"}, "probe"),
                                       self.opts.timeout)
                out["broker_round_trip_ms"] = round((time.monotonic() - t0) * 1e3, 2)
        return out

    async def close_all(self, wait: bool = True) -> None:
        conns, self.conns = self.conns, []
        for conn in conns:
            conn.close()
        if conns:
            await asyncio.wait([c.closed for c in conns], timeout=self.opts.timeout)
        if wait and self.probe.pid is not None:
            # Let the sessions end so the next phase starts from the same place.
            deadline = time.monotonic() + max(30.0, self.opts.timeout)
            while (self.probe.session_count() or 0) > self.baseline_sessions \
                    and time.monotonic() < deadline:
                await asyncio.sleep(0.05)

    async def run(self, scenario: str) -> dict[str, Any]:
        opts = self.opts
        phases: list[dict[str, Any]] = []
        memory = None
        answer = None
        try:
            if scenario == "connect":
                for inflight in opts.inflight:
                    await self.settle()
                    phases.append(await self.connect(opts.clients, inflight,
                                                     f"connect x{inflight}"))
                    memory = self.probe.memory()
                    await self.close_all()
            else:
                phases.append(await self.connect(opts.clients, opts.inflight[0], "connect"))
                await self.quiesce()
                await self.settle()
                if scenario in ("burst", "steady"):
                    phases.append(await self.deliver())
                else:
                    await asyncio.sleep(opts.settle)
                memory = self.probe.memory()
                answer = await self.probe_answer()
        finally:
            fds = self.probe.fds()
            await self.close_all(wait=False)
        return {"phases": phases, "memory": memory, "parent_fds": fds,
                "responsiveness": answer}


# ---------------------------------------------------------------------------------------
# report


def kib(v: int | None) -> str:
    return "-" if v is None else f"{v / 1024:.2f} MiB"


# The targets for this kind of machine (2 cores shared with the load generator),
# each with the reason it is missed when it is (see README, "Benchmark").
WHY = {
    "cpu": "each delivery costs a wakeup, a recv and a send in the member's own process",
    "rate": "the Python load generator shares the 2 cores; see its CPU share above",
    "p99": "every message wakes every member's process, ~50 us of CPU each on such a VM",
    "pss": "CPython's reference-count writes make pages shared with the parent private; "
           "a bare forked Python is already ~0.8 MiB",
    "connect": "a fork costs the parent ~2 ms; pre-fork with --spare (server.spare_children)",
}


def _target(name: str, value: float | None, goal: float, unit: str, low: bool,
            why: str) -> dict[str, Any]:
    met = value is not None and (value <= goal if low else value >= goal)
    shown = f"{int(goal):,}" if float(goal).is_integer() else f"{goal:g}"
    out: dict[str, Any] = {"target": f"{'<=' if low else '>='} {shown} {unit}",
                           "name": name, "value": value, "met": met}
    if not met and value:
        out["missed_by"] = round(value / goal if low else goal / value, 2)
        out["why"] = why
    return out


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets this scenario measures, met or missed (and by how much, and why)."""
    out = []
    for ph in report["phases"]:
        if report["scenario"] == "burst" and ph["phase"] == "deliver":
            out.append(_target("server CPU per delivery", ph.get("server_cpu_us_per_delivery"),
                               0.6, "us", True, WHY["cpu"]))
            clean = ph["lost"] == 0 and ph["duplicates"] == 0
            out.append(_target("deliveries per second", ph["deliveries_per_second"]
                               if clean else 0, 1_000_000, "/s", False, WHY["rate"]))
        elif report["scenario"] == "steady" and ph["phase"] == "deliver":
            out.append(_target("latency p99", ph["latency_ms"]["p99"], 3, "ms", True,
                               WHY["p99"]))
        elif ph["phase"].startswith("connect") and ph["inflight"] >= 1000:
            rate = ph["per_second"] if ph["failed"] == 0 else 0
            out.append(_target("new sessions per second", rate, 1000, "/s", False,
                               WHY["connect"]))
    mem = report.get("memory")
    if report["scenario"] == "idle" and mem and mem.get("per_session"):
        out.append(_target("PSS per idle session", round(mem["per_session"]["pss"] / 1024, 2),
                           1, "MiB", True, WHY["pss"]))
    return out


def render(report: dict[str, Any]) -> str:
    lines = [f"chatd bench: {report['scenario']} - {report['description']}"]
    srv = report["server"]
    who = f"spawned pid {srv['pid']}" if srv["spawned"] else \
        f"target {srv['address']} (pid {srv['pid'] or 'unknown'})"
    lines.append(f"server: {who}; spare_children={srv.get('spare_children', '?')}; "
                 f"{report['machine']['cpus']} CPUs, Python {report['machine']['python']}")
    if report["scenario"] == "churn":
        from chatd import bench_churn

        lines += bench_churn.render(report)
    if report["scenario"] == "history":
        from chatd import bench_history

        lines += bench_history.render(report)
    own = ("churn", "history")  # these scenarios render their own phases
    for ph in report["phases"] if report["scenario"] not in own else []:
        cpu = ph.get("server_cpu_s")
        cpu_txt = "server CPU -" if cpu is None else (
            f"server CPU {cpu:.3f} s (parent {ph['server_cpu_parent_s']:.3f}, "
            f"sessions {ph['server_cpu_sessions_s']:.3f})")
        own = f"loadgen CPU {ph['loadgen_cpu_s']:.3f} s ({ph['loadgen_cpu_pct']:.0f}% of a core)"
        if ph["phase"].startswith("connect"):
            s = ph["setup_ms"]
            lines.append(f"{ph['phase']:<14} {ph['connected']}/{ph['clients']} sessions in "
                         f"{ph['seconds']:.3f} s = {ph['per_second']:,.0f}/s with "
                         f"{ph['inflight']} in flight; {ph['failed']} failed"
                         + (f" {ph['failures']}" if ph["failures"] else ""))
            lines.append(f"{'':<14} setup p50 {s['p50']} ms, p99 {s['p99']} ms, max "
                         f"{s['max']} ms")
            per = ph.get("server_cpu_us_per_session")
            lines.append(f"{'':<14} {cpu_txt}"
                         + (f" = {per:,.0f} us/session" if per is not None else ""))
            lines.append(f"{'':<14} {own}")
        else:
            lat = ph["latency_ms"]
            lines.append(f"{'deliver':<14} {ph['received']:,}/{ph['expected']:,} deliveries of "
                         f"{ph['messages']:,} messages in {ph['seconds']:.3f} s = "
                         f"{ph['deliveries_per_second']:,}/s")
            lines.append(f"{'':<14} lost {ph['lost']}, duplicates {ph['duplicates']}, acks "
                         f"{ph['acks']}/{ph['messages']}"
                         + (f", errors {ph['errors']}" if ph["errors"] else ""))
            lines.append(f"{'':<14} latency p50 {lat['p50']} ms, p90 {lat['p90']} ms, "
                         f"p99 {lat['p99']} ms, max {lat['max']} ms")
            per = ph.get("server_cpu_us_per_delivery")
            lines.append(f"{'':<14} {cpu_txt}"
                         + (f" = {per:.3f} us/delivery" if per is not None else ""))
            lines.append(f"{'':<14} {own}")
    mem = report["memory"]
    if mem:
        p, t = mem["parent"], mem["sessions_total"]
        lines.append(f"{'memory':<14} parent RSS {kib(p['rss'])}, PSS {kib(p['pss'])}, "
                     f"USS {kib(p['uss'])}")
        lines.append(f"{'':<14} {mem['sessions']} sessions: RSS {kib(t['rss'])}, PSS "
                     f"{kib(t['pss'])}, USS {kib(t['uss'])}")
        if mem["per_session"]:
            ps, tp = mem["per_session"], mem["total_per_session"]
            lines.append(f"{'':<14} per session: RSS {kib(ps['rss'])}, PSS {kib(ps['pss'])}, "
                         f"USS {kib(ps['uss'])}; (parent + sessions) PSS / sessions = "
                         f"{kib(tp['pss'])}")
    if report["parent_fds"] is not None:
        lines.append(f"{'parent fds':<14} {report['parent_fds']}")
    resp = report.get("responsiveness")
    if resp:
        lines.append(f"{'responsive':<14} new session {resp.get('new_session_ms')} ms, broker "
                     f"round trip {resp.get('broker_round_trip_ms')} ms")
    for t in report.get("targets", []):
        verdict = "met" if t["met"] else (f"missed by {t['missed_by']}x: {t['why']}"
                                          if "missed_by" in t else "missed")
        lines.append(f"{'target':<14} {t['name']} {t['target']}: {t['value']} - {verdict}")
    lines.append(f"{'result':<14} {'OK' if report['ok'] else 'FAILED'}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# command line


def parse_set(items: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot:
            raise SystemExit(f"chatd bench: --set wants SECTION.NAME=VALUE, got {item!r}")
        value: Any = raw
        for conv in (int, float):
            try:
                value = conv(raw)
                break
            except ValueError:
                continue
        if raw in ("true", "false"):
            value = raw == "true"
        out.setdefault(section, {})[name] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatd bench", description="Load-test a chatd server over loopback and print a "
        "report. Without --target it starts its own server with rate limits lifted.")
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--target", metavar="HOST:PORT",
                        help="bench a running server instead of starting one (its rate "
                        "limits and session caps must allow the load)")
    parser.add_argument("--server-pid", type=int, help="pid of the --target server's parent "
                        "(default: found from the listening port, on this host)")
    parser.add_argument("--clients", type=int, help="client connections")
    parser.add_argument("--senders", type=int, help="clients that send (burst, steady)")
    parser.add_argument("--messages", type=int, help="messages per sender")
    parser.add_argument("--rate", type=float, help="messages/s in total (0: as fast as "
                        "possible)")
    parser.add_argument("--room-size", type=int, help="clients per room (0: all in one room, "
                        "-1: no room)")
    parser.add_argument("--inflight", help="connection attempts in flight, comma-separated "
                        "for several connect runs")
    parser.add_argument("--size", type=int, default=0, help="pad message texts to about "
                        "this many bytes")
    parser.add_argument("--spare", type=int, help="server.spare_children of the spawned "
                        "server")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.NAME=VALUE",
                        help="extra setting for the spawned server (repeatable)")
    parser.add_argument("--settle", type=float, default=1.0,
                        help="seconds to wait before measuring idle memory (default 1)")
    parser.add_argument("--attack-rate", type=float, default=0.0,
                        help="churn: the attacker's connections per second (default 0: as "
                        "fast as it can)")
    parser.add_argument("--attack-bytes", type=int, default=0,
                        help="churn: bytes the attacker writes before each reset (default "
                        "0; with any, the server's kernel hands the connection over)")
    parser.add_argument("--phase-seconds", type=float,
                        help="churn, history: seconds of each measured phase (default 4 for "
                        "churn, 10 for history)")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds without progress before giving up (default 30)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument("--server-log", type=Path, help="keep the spawned server's log here")
    return parser


def options(argv: list[str]) -> argparse.Namespace:
    opts = build_parser().parse_args(argv)
    defaults = SCENARIOS[opts.scenario]
    if opts.phase_seconds is None:
        opts.phase_seconds = 10.0 if opts.scenario == "history" else 4.0
    for key in ("clients", "senders", "messages", "rate", "room_size"):
        if getattr(opts, key) is None:
            setattr(opts, key, defaults[key])
    opts.inflight = ([int(x) for x in opts.inflight.split(",")] if opts.inflight
                     else list(defaults["inflight"]))
    opts.senders = min(opts.senders, opts.clients)
    opts.progress = not opts.quiet
    if opts.clients < 1 or any(n < 1 for n in opts.inflight):
        raise SystemExit("chatd bench: --clients and --inflight must be at least 1")
    if opts.scenario in ("burst", "steady") and opts.room_size < 0:
        raise SystemExit("chatd bench: burst and steady need rooms (--room-size >= 0)")
    return opts


def raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, need)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < need:
        print(f"chatd bench: warning: {need} open files wanted, the limit is {want}",
              file=sys.stderr)


def main(argv: list[str]) -> int:
    opts = options(argv)
    raise_fd_limit(opts.clients + 64)
    extra = parse_set(opts.set)
    if opts.spare is not None:
        extra.setdefault("server", {})["spare_children"] = opts.spare
    if opts.scenario == "history":  # the attackers read at the default allowance
        rate = extra.setdefault("rate", {})
        opts.history_rate = float(rate.setdefault("history_rate", 20.0))
        opts.history_burst = int(rate.setdefault("history_burst", 100))
    server: SpawnedServer | None = None
    if opts.target:
        host, _, port_s = opts.target.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        port = int(port_s)
        pid = opts.server_pid or find_listener_pid(port)
    else:
        server = SpawnedServer(bench_settings(opts.clients, extra,
                                              admission=opts.scenario == "churn"))
        try:
            server.start()
        except RuntimeError as exc:
            print(f"chatd bench: {exc}", file=sys.stderr)
            server.cleanup()
            return 2
        assert server.proc is not None
        host, port, pid = server.host, server.port, server.proc.pid
    probe = ServerProbe(pid)
    spare = (server.settings.get("server", {}).get("spare_children", 0) if server else None)
    baseline = probe.session_count() or 0
    report: dict[str, Any] = {
        "scenario": opts.scenario,
        "params": {"clients": opts.clients, "senders": opts.senders,
                   "messages": opts.messages, "rate": opts.rate, "room_size": opts.room_size,
                   "inflight": opts.inflight, "size": opts.size},
        "server": {"spawned": server is not None, "pid": pid, "address": f"{host}:{port}",
                   "spare_children": spare},
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                    "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[1]},
    }
    gc_was = gc.isenabled()
    gc.disable()  # no collector pauses inside the measured windows
    try:
        bench = Bench(host, port, probe, opts, baseline, server.spare if server else 0)
        report["description"] = DESCRIPTIONS[opts.scenario].format(
            clients=opts.clients, senders=opts.senders, messages=opts.messages,
            rate=opts.rate, inflight=" and ".join(map(str, opts.inflight)),
            rooms=bench.rooms_label(opts.clients))
        if opts.scenario == "churn":
            from chatd import bench_churn

            report["description"] = bench_churn.describe(opts)
            report.update(asyncio.run(bench_churn.run(host, port, probe, opts, bench.tag)))
        elif opts.scenario == "history":
            from chatd import bench_history

            report["description"] = bench_history.describe(opts)
            report.update(asyncio.run(bench_history.run(host, port, probe, opts, bench.tag)))
        else:
            report.update(asyncio.run(bench.run(opts.scenario)))
    except KeyboardInterrupt:
        return 130
    finally:
        if gc_was:
            gc.enable()
        if server is not None:
            server.stop()
            if opts.server_log:
                with contextlib.suppress(OSError):
                    opts.server_log.write_bytes(server.log.read_bytes())
            server.cleanup()
    ok = True
    for ph in report["phases"]:
        if ph["phase"].startswith("connect"):
            ok = ok and ph["failed"] == 0
        else:
            ok = ok and ph["lost"] == 0 and ph["duplicates"] == 0
    report["ok"] = ok  # loss, duplicates and failures; targets are information
    report["targets"] = targets(report)
    if opts.scenario == "churn":
        from chatd import bench_churn

        report["ok"] = bench_churn.ok(report)
        report["targets"] = bench_churn.targets(report)
    if opts.scenario == "history":
        from chatd import bench_history

        report["ok"] = ok = bench_history.ok(report)
        report["targets"] = bench_history.targets(report)
    print(json.dumps(report, indent=2) if opts.json else render(report))
    return 0 if ok else 1
