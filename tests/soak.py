"""Soak test for chatd: many clients chatting and reconnecting for a long time.

Runs in CI time-compressed (tests/test_server_soak.py) and for hours by hand:

    python tests/soak.py --duration 7200 --clients 50

`--irc-clients N` adds IRC clients in the same rooms (tests/soak_irc.py): they catch up
with draft/chathistory (`CHATHISTORY AFTER` their last msgid) instead of `join ... after`.

By default it starts its own `chatd serve` (loopback, ephemeral port, a temporary data
directory, keepalive intervals shortened so pings happen all the time); with --host/--port
it drives a server you started (add --server-pid to get the process checks too).

Every client joins a few rooms, sends messages at random intervals, answers pings, goes
quiet now and then, and reconnects (graceful quit or an abrupt close) with
`hello.session` set and `join ... after` = the last id it saw, paging with `history` when
needed. At the end every client must have received every message of its rooms exactly
once and in id order since its first join (checked by id against the acknowledged ids
and, when the soak owns the server, the database). Meanwhile the server's parent and
session processes are sampled from /proc: memory (PSS, from smaps_rollup) and open fds
must stay flat, and no zombie may linger. Exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `chatd` and `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgpack  # noqa: E402

from chatd.bench.probes import child_states, open_fds, smaps_rollup  # noqa: E402
from chatd.bench.server import wait_until  # noqa: E402
from chatd.protocol import HEADER, pack  # noqa: E402
from tests.serverproc import ServerProcess  # noqa: E402

# ---- samples of the server's processes, from /proc ----


@dataclass
class Sample:
    t: float
    parent_pss: int
    parent_uss: int
    parent_rss: int
    parent_fds: int
    children: int
    zombies: list[int]
    child_pss: dict[int, int]
    child_rss: dict[int, int]
    child_fds: dict[int, int]


def sample(server_pid: int, t: float) -> Sample | None:
    rollup, parent_fds = smaps_rollup(server_pid), open_fds(server_pid)
    if rollup is None or parent_fds is None:
        return None
    states = child_states(server_pid)
    child_pss, child_rss, child_fds = {}, {}, {}
    for pid, state in states:
        if state == "Z":
            continue
        kid, fds = smaps_rollup(pid), open_fds(pid)
        if kid is not None and fds is not None:
            child_pss[pid], child_rss[pid], child_fds[pid] = kid["pss"], kid["rss"], fds
    return Sample(t, rollup["pss"], rollup["uss"], rollup["rss"], parent_fds, len(states),
                  [pid for pid, state in states if state == "Z"], child_pss, child_rss,
                  child_fds)


# ---- the clients ----


class Disconnected(Exception):
    pass


@dataclass
class RoomLog:
    baseline: int | None = None  # ids up to this came before our first join
    ids: list[int] = field(default_factory=list)  # in arrival order
    seen: set[int] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)
    # The newest id since the last join: pages and live messages together come in id
    # order (protocol.md §8), none twice.
    newest: int = -1

    @property
    def last(self) -> int:
        """The id to catch up after: everything up to it has been received."""
        return max(self.seen, default=self.baseline or 0)

    def add(self, msg_id: int, how: str) -> None:
        if msg_id in self.seen:
            self.problems.append(f"duplicate id {msg_id} ({how})")
            return
        if msg_id <= self.newest:
            self.problems.append(f"id {msg_id} after {self.newest} ({how})")
        self.newest = msg_id
        self.ids.append(msg_id)
        self.seen.add(msg_id)


@dataclass
class Stats:
    sent: int = 0
    acked: dict[str, set[int]] = field(default_factory=dict)
    connects: int = 0
    quits: int = 0
    aborts: int = 0
    idles: int = 0
    pings_answered: int = 0
    nick_retries: int = 0
    pages: int = 0
    server_ended: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    irc_overlap: int = 0  # messages an IRC client got both live and paged (soak_irc.py)
    irc_catchups: int = 0  # reconnected IRC clients' CHATHISTORY AFTER catch-ups


class SoakClient:
    def __init__(self, soak: Soak, index: int, rooms: list[str], stayer: bool) -> None:
        self.soak = soak
        self.nick = f"soak{index}"
        self.rooms = rooms
        self.stayer = stayer
        self.rng = random.Random(soak.args.seed * 1000 + index)
        self.logs = {room: RoomLog() for room in rooms}
        self.session: str | None = None
        self.labels = itertools.count(1)
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.writer: asyncio.StreamWriter | None = None
        self.reader_task: asyncio.Task[None] | None = None
        self.closing = False
        self.end_code: str | None = None  # fatal error code the server sent, if any
        self.how_we_left: str | None = None  # what welcome.previous should say next time

    # -- wire --

    def send(self, frame: dict[str, Any]) -> None:
        assert self.writer is not None
        self.writer.write(pack(frame))

    async def call(self, frame: dict[str, Any], replies: int = 1,
                   timeout: float = 30.0) -> list[dict[str, Any]]:
        """Send a labelled request; returns its `replies` replies."""
        label = next(self.labels)
        futures = []
        for i in range(replies):
            fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            self.pending[label * 10 + i] = fut
            futures.append(fut)
        self.send({**frame, "label": label})
        try:
            return [await asyncio.wait_for(asyncio.shield(f), timeout) for f in futures]
        finally:
            for i in range(replies):
                self.pending.pop(label * 10 + i, None)

    async def read_loop(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                (size,) = HEADER.unpack(await reader.readexactly(4))
                frame = msgpack.unpackb(await reader.readexactly(size), raw=False)
                self.on_frame(frame)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(Disconnected(self.end_code or "closed"))

    def on_frame(self, frame: dict[str, Any]) -> None:
        ftype = frame.get("type")
        if ftype == "ping":
            self.send({"type": "pong", "token": frame.get("token")})
            self.soak.stats.pings_answered += 1
            return
        if ftype == "message" and "room" in frame and "label" not in frame:
            room = frame["room"]
            log = self.logs.get(room)
            if log is not None and log.baseline is not None:
                log.add(frame["id"], "live")
            return
        if ftype == "history" and frame.get("room") in self.logs:
            # Handled here, in arrival order, so no live message can overtake it.
            room = frame["room"]
            if self.logs[room].baseline is None:  # the reply to our first, plain join
                self.logs[room].baseline = max((m["id"] for m in frame["messages"]),
                                               default=0)
            else:
                self.take_page(room, frame)
        if ftype == "error" and frame.get("fatal"):
            self.end_code = frame["code"]
        label = frame.get("label")
        if isinstance(label, int):
            for i in range(4):
                fut = self.pending.get(label * 10 + i)
                if fut is not None and not fut.done():
                    fut.set_result(frame)
                    return
        if ftype == "error":
            self.soak.stats.errors.append(f"{self.nick}: unexpected {frame}")

    # -- one connection --

    async def connect(self) -> None:
        args = self.soak.args
        for attempt in range(200):
            reader, writer = await asyncio.open_connection(args.host, args.port)
            self.writer, self.closing, self.end_code = writer, False, None
            self.reader_task = asyncio.create_task(self.read_loop(reader))
            hello = {"type": "hello", "version": 1, "nick": self.nick, "client": "soak"}
            if self.session:
                hello["session"] = self.session
            (reply,) = await self.call(hello)
            if reply["type"] == "welcome":
                self.check_previous(reply.get("previous"))
                self.session = reply["session"]
                self.soak.stats.connects += 1
                return
            if reply.get("code") != "nick_taken":  # our old session is still leaving
                raise AssertionError(f"{self.nick}: hello refused: {reply}")
            self.soak.stats.nick_retries += 1
            await self.close(abort=True)
            await asyncio.sleep(0.02 * (attempt + 1))
        raise AssertionError(f"{self.nick}: nick never became free")

    def check_previous(self, previous: dict[str, Any] | None) -> None:
        expected = self.how_we_left
        if expected is None:
            return
        got = previous.get("code") if previous else None
        if got != expected:
            self.soak.stats.errors.append(f"{self.nick}: previous.code {got!r}, "
                                          f"expected {expected!r}")

    async def join_all(self) -> None:
        for room in self.rooms:
            log = self.logs[room]
            if log.baseline is None:
                await self.call({"type": "join", "room": room}, replies=2)
                continue
            log.newest = -1
            joined, history = await self.call({"type": "join", "room": room,
                                               "after": log.last}, replies=2)
            assert joined["type"] == "joined", joined
            while history["more"]:  # the recipe of protocol.md §8, nothing more
                self.soak.stats.pages += 1
                (history,) = await self.call({"type": "history", "room": room,
                                              "after": history["messages"][-1]["id"]})

    def take_page(self, room: str, history: dict[str, Any]) -> None:
        assert history["type"] == "history", history
        for msg in history["messages"]:
            self.logs[room].add(msg["id"], "catch-up")

    async def close(self, abort: bool) -> None:
        if self.writer is None:
            return
        self.closing = True
        if abort:
            self.writer.transport.abort()
        else:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        if self.reader_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader_task
        self.writer = None

    # -- behaviour --

    async def chat_for(self, seconds: float) -> None:
        args = self.soak.args
        end = min(time.monotonic() + seconds, self.soak.deadline)
        while time.monotonic() < end:
            if self.end_code is not None or self.writer is None or self.reader_task is None \
                    or self.reader_task.done():
                raise Disconnected(self.end_code or "closed")
            if self.rng.random() < args.idle_chance:
                self.soak.stats.idles += 1  # quiet: only pongs for a few ping intervals
                await asyncio.sleep(min(end - time.monotonic(), args.ping_interval * 3))
                continue
            room = self.rng.choice(self.rooms)
            text = f"{self.nick} says {self.rng.random():.6f}"
            (ack,) = await self.call({"type": "msg", "room": room, "text": text})
            if ack["type"] != "ack":
                raise AssertionError(f"{self.nick}: msg refused: {ack}")
            self.soak.stats.sent += 1
            self.soak.stats.acked.setdefault(room, set()).add(ack["id"])
            await asyncio.sleep(self.rng.expovariate(1.0 / args.msg_interval))

    async def run(self) -> None:
        args = self.soak.args
        await asyncio.sleep(self.rng.random() * 2.0)  # do not all arrive at once
        while True:
            await self.connect()
            await self.join_all()
            if time.monotonic() >= self.soak.deadline:
                return  # stay connected for the final check
            life = float("inf") if self.stayer else self.rng.expovariate(
                1.0 / args.reconnect_every)
            try:
                await self.chat_for(life)
            except Disconnected as exc:
                self.soak.stats.server_ended.append(f"{self.nick}: {exc}")
                self.how_we_left = str(exc) if str(exc) != "closed" else None
                await self.close(abort=True)
                continue
            if time.monotonic() >= self.soak.deadline:
                return
            if self.rng.random() < 0.5:
                self.soak.stats.quits += 1
                self.how_we_left = "quit"
                self.quit("soak reconnect")
                await self.close(abort=False)
            else:
                self.soak.stats.aborts += 1
                self.how_we_left = "closed"
                await self.close(abort=True)
            if self.rng.random() < 0.5:  # away for a while: catch-up will need pages
                await asyncio.sleep(self.rng.random() * args.away)

    def quit(self, reason: str) -> None:
        self.send({"type": "quit", "reason": reason})

    async def leave(self) -> None:
        if self.writer is not None:
            self.quit("soak over")
            await self.close(abort=False)


# ---- the run ----


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stats = Stats()
        self.samples: list[Sample] = []
        self.deadline = float("inf")
        self.server: ServerProcess | None = None

    async def sampler(self, server_pid: int, started: float) -> None:
        """A sample every `sample_every` seconds of the run, on a fixed schedule (one that
        took long is followed by the next at once), each read in a thread: it reads /proc
        for every session process, which on a loaded machine takes long enough to hold
        up the clients' pongs if it ran on their loop."""
        due = started
        while True:
            got = await asyncio.to_thread(sample, server_pid, time.monotonic() - started)
            if got is not None:
                self.samples.append(got)
            due += self.args.sample_every
            await asyncio.sleep(max(0.0, due - time.monotonic()))

    async def run(self) -> dict[str, Any]:
        args = self.args
        rng = random.Random(args.seed)
        all_rooms = [f"#soak{i}" for i in range(args.rooms)]
        from tests.soak_irc import IrcSoakClient  # (it builds on this module)

        clients: list[SoakClient | IrcSoakClient] = []
        for i in range(args.clients + args.irc_clients):
            rooms = rng.sample(all_rooms, k=min(args.rooms_per_client, len(all_rooms)))
            kind = SoakClient if i < args.clients else IrcSoakClient
            clients.append(kind(self, i, rooms, stayer=i % 4 == 0))
        started = time.monotonic()
        self.deadline = started + args.duration
        sampler = (asyncio.create_task(self.sampler(args.server_pid, started))
                   if args.server_pid else None)
        tasks = [asyncio.create_task(c.run()) for c in clients]
        done, _pending = await asyncio.wait(tasks, timeout=args.duration + 120,
                                            return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                for other in tasks:
                    other.cancel()
                raise task.exception()  # type: ignore[misc]
        if len(done) != len(tasks):
            raise AssertionError("clients did not finish their last cycle in time")
        ran = time.monotonic() - started
        problems = await self.settle(clients)
        if sampler is not None:
            # a last sample with everyone still connected, then stop sampling
            last = sample(args.server_pid, time.monotonic() - started)
            if last is not None:
                self.samples.append(last)
            sampler.cancel()
        for c in clients:
            await c.leave()
        report = self.report(clients, problems, ran)
        return report

    async def settle(self, clients: list[Any]) -> list[str]:
        """Wait until every client has every acknowledged message of its rooms."""
        acked = self.stats.acked
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            missing = sum(len(self.expected(c, room) - c.logs[room].seen)
                          for c in clients for room in c.rooms)
            if not missing:
                break
            await asyncio.sleep(0.1)
        problems = []
        stored = self.database_truth()
        truth = stored if stored is not None else acked
        for c in clients:
            for room in c.rooms:
                log = c.logs[room]
                problems += [f"{c.nick} {room}: {p}" for p in log.problems]
                lost = sorted(self.expected(c, room, truth) - log.seen)
                if lost:
                    problems.append(f"{c.nick} {room}: {len(lost)} lost, e.g. {lost[:5]}")
                phantom = sorted(log.seen - truth.get(room, set()))
                if phantom:
                    problems.append(f"{c.nick} {room}: unknown ids {phantom[:5]}")
        if stored is not None:
            for room, ids in stored.items():
                unacked = ids - acked.get(room, set())
                if unacked:
                    problems.append(f"{room}: stored but never acknowledged: "
                                    f"{sorted(unacked)[:5]}")
        return problems

    def expected(self, c: Any, room: str,
                 truth: dict[str, set[int]] | None = None) -> set[int]:
        base = c.logs[room].baseline or 0
        ids = (truth or self.stats.acked).get(room, set())
        return {i for i in ids if i > base}

    def database_truth(self) -> dict[str, set[int]] | None:
        if self.server is None:
            return None
        db = sqlite3.connect(f"file:{self.server.data_dir / 'history.sqlite3'}?mode=ro",
                             uri=True)
        try:
            rows = db.execute("SELECT room, id FROM messages WHERE room LIKE '#soak%'")
            truth: dict[str, set[int]] = {}
            for room, msg_id in rows:
                truth.setdefault(room, set()).add(msg_id)
            return truth
        finally:
            db.close()

    # ---- verdict ----

    def report(self, clients: list[Any], problems: list[str],
               ran: float) -> dict[str, Any]:
        st = self.stats
        delivered = sum(len(c.logs[r].ids) for c in clients for r in c.rooms)
        report: dict[str, Any] = {
            "seconds": round(ran, 1), "clients": len(clients), "sent": st.sent,
            "delivered": delivered, "connects": st.connects, "quits": st.quits,
            "aborts": st.aborts, "idle_periods": st.idles, "pongs": st.pings_answered,
            "nick_retries": st.nick_retries, "history_pages": st.pages,
            "irc_clients": self.args.irc_clients, "irc_catchups": st.irc_catchups,
            "irc_overlap": st.irc_overlap,
            "server_ended_sessions": st.server_ended[:10],
            "problems": problems[:20] + st.errors[:20],
        }
        if self.samples:
            report["process"] = self.process_verdict(report["problems"])
        report["ok"] = not report["problems"]
        return report

    def process_verdict(self, problems: list[str]) -> dict[str, Any]:
        """Flatness of the server's processes over the run (after the warm-up).

        Growth is the median of the last third of the samples minus the median of the
        first third. Memory is PSS as asked, plus RSS: a session's PSS also rises when the
        parent rewrites pages they shared since the fork (copy-on-write un-sharing; bounded
        by what was shared), while RSS only grows with memory the session itself touches,
        so the leak check on long-lived sessions is on RSS and PSS has a wider bound.
        """
        args = self.args
        samples = self.samples
        warm = [s for s in samples if s.t >= args.warmup]
        if len(warm) < 6:
            problems.append(f"too few samples after warm-up ({len(warm)})")
            return {}
        third = max(2, len(warm) // 3)
        head, tail = warm[:third], warm[-third:]

        def growth(first: list[float], last: list[float]) -> float:
            return statistics.median(last) - statistics.median(first)

        def parent(attr: str) -> float:
            return growth([getattr(s, attr) for s in head], [getattr(s, attr) for s in tail])

        # The parent holds one channel per session process: fds minus children is flat
        # (a sample can catch a session between its exit and the parent closing its
        # channel, so single samples may be off by a few; the trend may not move).
        overhead = [s.parent_fds - s.children for s in warm]
        overhead_trend = growth(overhead[:third], overhead[-third:])
        # A session process's fds: the same count in every session, at every time (the
        # mode per sample; one caught mid-fork, before it closed what it inherited, is
        # not the mode).
        modes = sorted({statistics.mode(s.child_fds.values()) for s in warm if s.child_fds})
        child_fds = sorted({n for s in warm for n in s.child_fds.values()})
        # Long-lived session processes (the stayers') individually.
        long_lived = set(head[0].child_pss) & set(tail[-1].child_pss)
        kid_pss, kid_rss = {}, {}
        for pid in long_lived:
            kid_pss[pid] = growth([s.child_pss[pid] for s in head if pid in s.child_pss],
                                  [s.child_pss[pid] for s in tail if pid in s.child_pss])
            kid_rss[pid] = growth([s.child_rss[pid] for s in head if pid in s.child_rss],
                                  [s.child_rss[pid] for s in tail if pid in s.child_rss])
        fresh = [statistics.median(s.child_pss.values()) for s in warm if s.child_pss]
        zombie_streak = any(set(a.zombies) & set(b.zombies) & set(c.zombies)
                            for a, b, c in zip(samples, samples[1:], samples[2:],
                                               strict=False))
        step = max(1, len(samples) // 8)
        timeline = []
        for s in samples[::step] + samples[-1:]:
            kids = [s.child_pss[p] for p in long_lived if p in s.child_pss]
            kids_rss = [s.child_rss[p] for p in long_lived if p in s.child_rss]
            timeline.append([round(s.t), s.parent_pss, s.parent_rss,
                             statistics.median(kids) if kids else None,
                             statistics.median(kids_rss) if kids_rss else None, s.children,
                             s.parent_fds])
        verdict = {
            "samples": len(samples),
            "parent_pss_kb": [warm[0].parent_pss, warm[-1].parent_pss],
            "parent_growth_kb": {"pss": parent("parent_pss"), "uss": parent("parent_uss"),
                                 "rss": parent("parent_rss")},
            "parent_fds": [min(s.parent_fds for s in warm), max(s.parent_fds for s in warm)],
            "parent_fd_overhead": [min(overhead), max(overhead)],
            "parent_fd_overhead_trend": overhead_trend,
            "children": [min(s.children for s in warm), max(s.children for s in warm)],
            "child_fd_counts": child_fds, "child_fd_modes": modes,
            "child_pss_median_kb": [fresh[0], fresh[-1]],
            "long_lived_children": len(long_lived),
            "long_lived_growth_kb_max": {"pss": max(kid_pss.values(), default=0),
                                         "rss": max(kid_rss.values(), default=0)},
            "zombie_samples": sum(1 for s in samples if s.zombies),
            "timeline [s, parent pss, parent rss, long-lived pss/rss medians, children, "
            "parent fds]":
                timeline,
        }
        grew = verdict["parent_growth_kb"]
        if max(grew["pss"], grew["rss"]) > args.max_parent_growth_kb:
            problems.append(f"parent memory grew: {grew} kB")
        if overhead_trend > 1 or max(overhead) - min(overhead) > 8:
            problems.append(f"parent fds not flat: overhead {min(overhead)}..{max(overhead)}"
                            f", trend {overhead_trend}")
        if len(modes) != 1:
            problems.append(f"session fd counts vary or grow: modes {modes}")
        if kid_rss and max(kid_rss.values()) > args.max_child_growth_kb:
            problems.append(f"a long-lived session's RSS grew {max(kid_rss.values())} kB")
        if kid_pss and max(kid_pss.values()) > args.max_child_pss_growth_kb:
            problems.append(f"a long-lived session's PSS grew {max(kid_pss.values())} kB")
        if growth(fresh[:third], fresh[-third:]) > args.max_child_pss_growth_kb:
            problems.append("the median session PSS grew "
                            f"{growth(fresh[:third], fresh[-third:])} kB")
        if zombie_streak:
            problems.append("a zombie lingered over three samples")
        return verdict


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=150.0, help="seconds of chatting")
    ap.add_argument("--clients", type=int, default=32, help="native clients")
    ap.add_argument("--irc-clients", type=int, default=0,
                    help="IRC clients besides them (tests/soak_irc.py), on the server's IRC "
                    "port (with --host: --irc-port)")
    ap.add_argument("--irc-port", type=int, default=6667)
    ap.add_argument("--rooms", type=int, default=4)
    ap.add_argument("--rooms-per-client", type=int, default=2)
    ap.add_argument("--msg-interval", type=float, default=2.0,
                    help="mean seconds between one client's messages")
    ap.add_argument("--reconnect-every", type=float, default=20.0,
                    help="mean seconds a (non-stayer) client stays connected")
    ap.add_argument("--idle-chance", type=float, default=0.05)
    ap.add_argument("--away", type=float, default=3.0,
                    help="most seconds a reconnecting client stays away")
    ap.add_argument("--history-page", type=int, default=10,
                    help="server history.page for the server the soak starts (small, so "
                    "catch-up after a reconnect pages)")
    ap.add_argument("--ping-interval", type=float, default=1.0,
                    help="server keepalive.ping_interval for the server the soak starts")
    ap.add_argument("--ping-timeout", type=float, default=3.0)
    ap.add_argument("--sample-every", type=float, default=1.0,
                    help="seconds between /proc samples of the server processes")
    ap.add_argument("--warmup", type=float, default=None,
                    help="seconds ignored by the flatness checks (default: a fifth)")
    ap.add_argument("--max-parent-growth-kb", type=int, default=8192,
                    help="most growth of the parent's PSS or RSS; it legitimately grows "
                    "into bounded caches: SQLite's page cache (about 2 MB) and the 4096 "
                    "remembered session endings (about 1 MB)")
    ap.add_argument("--max-child-growth-kb", type=int, default=1024,
                    help="most RSS growth of a long-lived session process")
    ap.add_argument("--max-child-pss-growth-kb", type=int, default=4096,
                    help="most PSS growth of a session process (copy-on-write un-sharing "
                    "with the parent raises PSS without any allocation)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--host", default=None, help="drive this server instead of starting one")
    ap.add_argument("--port", type=int, default=7777)
    ap.add_argument("--server-pid", type=int, default=None,
                    help="with --host: the server's pid, for the process checks")
    ap.add_argument("--data-dir", type=Path, default=None,
                    help="data directory for the server the soak starts (default: temp)")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    return ap


def server_config(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "keepalive": {"ping_interval": args.ping_interval, "ping_timeout": args.ping_timeout,
                      "handshake_timeout": 10.0},
        "limits": {"max_sessions": max(1000, (args.clients + args.irc_clients) * 3),
                   "max_sessions_per_ip": (args.clients + args.irc_clients) * 3},
        "history": {"page": args.history_page},
        "irc": {"port": -1 if args.irc_clients else 0},
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.warmup is None:
        args.warmup = args.duration / 5
    soak = Soak(args)
    if args.host is None:
        with contextlib.ExitStack() as stack:
            data = args.data_dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
            server = ServerProcess(data, server_config(args)).start()
            stack.callback(server.stop)
            soak.server = server
            args.host, args.port, args.server_pid = server.host, server.port, server.pid
            if args.irc_clients:
                args.irc_port = server.irc_port
            report = asyncio.run(soak.run())
            final_process_checks(server, report)
            return report
    return asyncio.run(soak.run())


def final_process_checks(server: ServerProcess, report: dict[str, Any]) -> None:
    """After everyone left: every session process gone and reaped, the parent alive."""
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: not child_states(server.pid), 15, 0.05, "the sessions to end")
    left = child_states(server.pid)
    if left:
        report["problems"].append(f"session processes left after everyone quit: {left}")
    if server.proc is None or server.proc.poll() is not None:
        report["problems"].append("the server died")
    bad = [line for line in server.lines if "Traceback" in line or "crashed" in line]
    if bad:
        report["problems"].append(f"server log: {bad[:3]}")
    report["ok"] = not report["problems"]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = run(args)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        for key, value in report.items():
            print(f"{key}: {value}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
