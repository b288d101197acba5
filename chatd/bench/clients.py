"""`chatd bench burst|steady|idle|connect`: many clients, their messages and their memory.

  burst    100 clients in one room, 10 senders x 100 messages, as fast as possible
  steady   the same at 200 messages/s in total
  idle     1,000 clients connected and joined (rooms of 100), then memory
  connect  1,000 clients connecting, with 50 and with 1,000 attempts in flight
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import Awaitable
from typing import Any

from .generators import Helper
from .ircload import opener
from .load import BaseConn, Progress, ServerRef, Stats, Window, percentiles, until
from .probes import ServerProbe
from .report import COL, arrival_line, cpu_line, latency_line, target

ADMISSION = False  # the server's admission limits are lifted: not what is measured
SCENARIOS: dict[str, dict[str, Any]] = {
    # Decoding a burst's deliveries takes a generator process a core: two share them.
    "burst": {"clients": 100, "senders": 10, "messages": 100, "rate": 0.0, "room_size": 0,
              "inflight": [100], "generators": 2},
    "steady": {"clients": 100, "senders": 10, "messages": 100, "rate": 200.0, "room_size": 0,
               "inflight": [100]},
    "idle": {"clients": 1000, "senders": 0, "messages": 0, "rate": 0.0, "room_size": 100,
             "inflight": [100]},
    "connect": {"clients": 1000, "senders": 0, "messages": 0, "rate": 0.0, "room_size": -1,
                "inflight": [50, 1000]},
}
DESCRIPTIONS = {
    "burst": "{clients} clients in {rooms}, {senders} senders x {messages} messages, "
             "as fast as possible",
    "steady": "{clients} clients in {rooms}, {senders} senders x {messages} messages at "
              "{rate:g} messages/s in total",
    "idle": "{clients} clients connected and joined ({rooms}), then memory",
    "connect": "{clients} clients connecting (hello -> welcome) with {inflight} attempts "
               "in flight",
}


def rooms_label(opts: argparse.Namespace) -> str:
    size = opts.room_size
    if size < 0:
        return "no room"
    if size == 0 or size >= opts.clients:
        return "one room"
    return f"{math.ceil(opts.clients / size)} rooms of {size}"


def describe(opts: argparse.Namespace) -> str:
    return DESCRIPTIONS[opts.scenario].format(
        clients=opts.clients, senders=opts.senders, messages=opts.messages, rate=opts.rate,
        inflight=" and ".join(map(str, opts.inflight)), rooms=rooms_label(opts))


class Bench:
    def __init__(self, host: str, port: int, probe: ServerProbe, opts: argparse.Namespace,
                 tag: str, baseline_sessions: int, spare: int = 0) -> None:
        self.host, self.port, self.probe, self.opts = host, port, probe, opts
        self.tag = tag
        self.stats = Stats(self.tag + " ")
        self.conns: list[BaseConn] = []
        self.baseline_sessions = baseline_sessions
        self.spare = spare
        self.helpers: list[Helper] = []  # other load generator processes (generators.py)
        self.helper_rooms: list[list[str | None]] = []  # the rooms of each one's clients
        # The wire: native frames, or IRC lines (`chatd bench irc`, chatd/bench/ircload.py)
        self.wire: str = getattr(opts, "wire", "native")
        self.open_session = opener(self.wire)

    async def settle(self) -> None:
        """Wait (bounded) until the server has refilled its pool of spare processes."""
        if self.probe.pid is None or not self.spare:
            return
        await until(lambda: (self.probe.spare_count() or 0) >= self.spare,
                    max(30.0, self.opts.timeout))

    def room_of(self, i: int) -> str | None:
        size = self.opts.room_size
        if size < 0:
            return None
        if size == 0:
            return f"#{self.tag}-0"
        return f"#{self.tag}-{i // size}"

    async def _open(self, i: int, sem: asyncio.Semaphore, failures: Counter[str],
                    times: list[float]) -> BaseConn | None:
        async with sem:
            t0 = time.monotonic()
            try:
                conn = await self.open_session(self.host, self.port, self.stats,
                                               f"{self.tag}_{i}", self.room_of(i),
                                               self.opts.timeout)
            except (OSError, ConnectionError, TimeoutError) as exc:
                why = "timeout" if isinstance(exc, TimeoutError) else (
                    str(exc) if isinstance(exc, ConnectionError) and str(exc) else
                    type(exc).__name__)
                failures[why] += 1
                return None
            times.append(time.monotonic() - t0)
            return conn

    def share(self, clients: int) -> list[list[int]]:
        """Which clients each generator process holds: the senders and every n-th of
        the rest are ours ([0]), the others the helpers'."""
        n = 1 + len(self.helpers)
        out: list[list[int]] = [list(range(min(self.opts.senders, clients)))] + \
            [[] for _ in self.helpers]
        for k, i in enumerate(range(len(out[0]), clients)):
            out[k % n].append(i)
        return out

    async def connect(self, clients: int, inflight: int, name: str) -> dict[str, Any]:
        shares = self.share(clients)
        sem = asyncio.Semaphore(max(1, inflight * len(shares[0]) // clients))
        failures: Counter[str] = Counter()
        times: list[float] = []
        before = self.probe.serving()
        win = Window(self.probe).start()
        self.helper_rooms = [[self.room_of(i) for i in share] for share in shares[1:]]
        for helper, share in zip(self.helpers, shares[1:], strict=True):
            helper.order("open", clients=[[f"{self.tag}_{i}", self.room_of(i)]
                                          for i in share],
                         inflight=max(1, inflight * len(share) // clients))
        with Progress(self.opts.progress, name,
                      lambda: f"{len(times)}/{clients} sessions, "
                              f"{sum(failures.values())} failed"):
            opened = await asyncio.gather(*(self._open(i, sem, failures, times)
                                            for i in shares[0]))
            for reply in await asyncio.gather(*(h.answer() for h in self.helpers)):
                failures.update(reply["failures"])
                times += reply["times"]
        out = {"phase": name, "clients": clients, "inflight": inflight,
               "connected": len(times), "failed": sum(failures.values()),
               "failures": dict(failures), **win.stop()}
        self.conns += [c for c in opened if c is not None]
        out["per_second"] = round(out["connected"] / out["seconds"], 1) if out["seconds"] else 0
        out["setup_ms"] = percentiles([int(t * 1e9) for t in times])
        if out["server_cpu_s"] is not None and out["connected"]:
            out["server_cpu_us_per_session"] = round(1e6 * out["server_cpu_s"]
                                                     / out["connected"], 1)
        out["start_costs"] = self.probe.start_costs(before)
        return out

    async def quiesce(self) -> None:
        """A broker round trip on every connection: everything queued before it is in."""
        waits: list[Awaitable[Any]] = []
        for n, conn in enumerate(self.conns):
            if conn.room is not None and conn.transport is not None \
                    and not conn.transport.is_closing():
                waits.append(conn.request({"type": "who", "room": conn.room}, f"q{n}"))
        waits += [h.call("quiesce") for h in self.helpers]
        if waits:
            await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True),
                                   self.opts.timeout * 4)

    async def deliver(self) -> dict[str, Any]:
        opts = self.opts
        senders = self.conns[: opts.senders]
        members: Counter[str | None] = Counter(c.room for c in self.conns)
        for rooms in self.helper_rooms:
            members.update(rooms)
        mute = 0 if not senders or senders[0].echo else 1  # (IRC: no message of one's own)
        expected = sum(members[s.room] - mute for s in senders) * opts.messages
        into: Counter[str | None] = Counter(s.room for s in senders)  # senders per room
        total_msgs = len(senders) * opts.messages
        stats = self.stats
        stats.received = stats.duplicates = stats.acks = 0
        stats.clear_latencies()
        stats.target = sum(into[c.room] - mute * (c in senders)
                           for c in self.conns) * opts.messages
        stats.done = all_ours = asyncio.Event()
        stats.check_done()
        targets = [sum(into[room] for room in rooms) * opts.messages
                   for rooms in self.helper_rooms]
        for helper, theirs in zip(self.helpers, targets, strict=True):
            helper.progress = 0
            helper.order("expect", target=theirs)
        # Each helper counts from zero once it has the order: none may miss a delivery
        # that comes before it reads it (a fast server delivers within microseconds).
        await asyncio.gather(*(h.answer() for h in self.helpers))
        finals = [asyncio.ensure_future(h.answer()) for h in self.helpers]

        def received() -> int:
            return stats.received + sum(h.progress for h in self.helpers)

        def done() -> bool:
            return all_ours.is_set() and all(
                h.progress >= t for h, t in zip(self.helpers, targets, strict=True))
        pad = "x" * max(0, opts.size - 30)
        loop = asyncio.get_running_loop()
        last = [0, time.monotonic()]  # received count and when it last moved

        def msg(conn: BaseConn, seq: int) -> bytes:
            text = f"{stats.tag}{pad}{conn.nick}:{seq} {time.monotonic_ns()}"
            return conn.msg(text)

        async def send_all() -> None:
            if opts.rate <= 0:  # burst: every sender writes everything at once
                for conn in senders:
                    assert conn.transport is not None
                    conn.transport.write(b"".join(msg(conn, k) for k in range(opts.messages)))
                return
            t0 = loop.time()
            for k in range(total_msgs):
                delay = t0 + k / opts.rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                conn = senders[k % len(senders)]
                assert conn.transport is not None
                conn.transport.write(msg(conn, k // len(senders)))

        win = Window(self.probe).start()
        with Progress(opts.progress, "deliver",
                      lambda: f"{received()}/{expected} deliveries"):
            started = time.monotonic_ns()  # (before the first send: never later)
            sender = loop.create_task(send_all())
            while not done():
                if all_ours.is_set():  # (waiting on a set Event would never yield)
                    await asyncio.sleep(0.02)  # for the helpers' counts
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(all_ours.wait(), 0.05 if self.helpers else 0.5)
                if received() != last[0]:
                    last[:] = [received(), time.monotonic()]
                elif sender.done() and time.monotonic() - last[1] > opts.timeout:
                    break  # stalled: report the loss
            await sender
        out = {"phase": "deliver", "senders": len(senders), "messages": total_msgs,
               "generators": 1 + len(self.helpers), **win.stop()}
        latencies, arrivals, errors = stats.latencies, stats.arrivals, Counter(stats.errors)
        last_arrival = stats.last_arrival
        got, dups, acks = stats.received, stats.duplicates, stats.acks
        for helper in self.helpers:
            helper.order("stop")
        for reply in await asyncio.gather(*finals):
            got, dups, acks = got + reply["received"], dups + reply["duplicates"], \
                acks + reply["acks"]
            latencies = latencies + reply["latencies"]
            arrivals = arrivals + reply.get("arrivals", [])
            last_arrival = max(last_arrival, reply.get("last_arrival", 0))
            errors.update(reply["errors"])
            out["loadgen_cpu_s"] = round(out["loadgen_cpu_s"] + reply["cpu_s"], 4)
        if self.helpers and out["seconds"]:  # (of all its processes, over the phase)
            out["loadgen_cpu_pct"] = round(100 * out["loadgen_cpu_s"] / out["seconds"], 1)
        out.update({"acks": acks, "expected": expected, "received": got,
                    "lost": expected - got, "duplicates": dups, "errors": dict(errors)})
        out["deliveries_per_second"] = round(out["received"] / out["seconds"]) \
            if out["seconds"] else 0
        out["latency_ms"] = percentiles(latencies)
        if arrivals:  # (the kernel's receive times: see load.StampedSocket)
            out["arrival_ms"] = percentiles(arrivals)
            # The rate the server put them into the clients' sockets, from the first send
            # to the last arrival there: what the generator's reading does not slow.
            if got == expected and last_arrival > started:
                out["deliveries_per_second_at_sockets"] = round(
                    got / ((last_arrival - started) / 1e9))
        if out["server_cpu_s"] is not None and out["received"]:
            received = out["received"]
            out["server_cpu_us_per_delivery"] = round(1e6 * out["server_cpu_s"] / received, 3)
            out["parent_cpu_us_per_delivery"] = round(
                1e6 * out["server_cpu_parent_s"] / received, 3)
            out["session_cpu_us_per_delivery"] = round(
                1e6 * out["server_cpu_sessions_s"] / received, 3)
            # Steady, a message wakes each member's process once; a burst should batch
            # many messages per wakeup (issue 15: at most one session wakeup per message).
            out["session_wakeups_per_message"] = round(out["session_wakeups"] / total_msgs, 2)
            out["parent_wakeups_per_message"] = round(out["parent_wakeups"] / total_msgs, 2)
        return out

    async def probe_answer(self) -> dict[str, Any]:
        """Is the server still prompt? One new session, and one broker round trip."""
        out: dict[str, Any] = {}
        times: list[float] = []
        conn = await self._open(10**6, asyncio.Semaphore(1), Counter(), times)
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
            await until(lambda: (self.probe.session_count() or 0) <= self.baseline_sessions,
                        max(30.0, self.opts.timeout))

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
                if scenario in ("burst", "steady"):
                    self.helpers = [await Helper.start(self.host, self.port, self.tag,
                                                       opts.timeout, self.wire)
                                    for _ in range(opts.generators - 1)]
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
            for helper in self.helpers:
                await helper.close()
            await self.close_all(wait=False)
        return {"phases": phases, "memory": memory, "parent_fds": fds,
                "responsiveness": answer}


async def run(server: ServerRef, opts: argparse.Namespace, tag: str) -> dict[str, Any]:
    bench = Bench(server.host, server.port, server.probe, opts, tag,
                  server.probe.session_count() or 0, server.spare)
    return await bench.run(opts.scenario)


# ---------------------------------------------------------------------------------------
# report

# The targets for this kind of machine (2 cores shared with the load generator),
# each with the reason it is missed when it is (see README, "Benchmark").
WHY = {
    "cpu": "each delivery costs a wakeup, a recv and a send in the member's own process",
    "batch": "sessions woke for fewer messages at a time than the burst offered",
    "rate": "the Python load generator shares the 2 cores; see its CPU share above",
    "p99": "every message wakes every member's process",
    "pss": "CPython writes into pages it touches (reference counts with 3.11, counters "
           "in the code it runs), making shared pages private: a forked Python that only "
           "sleeps holds ~0.4-0.45 MiB, a spare that has served nobody ~0.5 MiB with "
           "3.12/3.13 (immortal heap), ~0.9-1.15 MiB with 3.11",
    "connect": "the fork server forks off the parent's loop, but each new session process "
               "spends ~1.5 ms of its own CPU copying the pages it writes (see pss), and "
               "the load generator shares the cores",
    "fork": "the parent forks on accept, and a fork copies page tables in proportion to its "
            "memory",
    "busy": "the parent's loop was busy (or the machine was)",
}


def connect_why(ph: dict[str, Any]) -> str:
    """Why connects/s falls short, from what this phase's new sessions cost."""
    costs, total = ph.get("start_costs"), ph.get("server_cpu_us_per_session")
    if not costs or not total or "session_cpu_ms" not in costs:
        return WHY["connect"]
    total_ms = total / 1000
    parent_ms = 1000 * ph["server_cpu_parent_s"] / ph["connected"]
    cores = costs["cores"]
    spare = (f"; {costs['spare_cpu_ms']:.2f} ms and {costs['spare_faults']} faults of that to "
             "start as a spare" if "spare_cpu_ms" in costs else "")
    return (f"the server spent {total_ms:.2f} ms of CPU per new session, so {cores} cores do "
            f"at most {1000 * cores / total_ms:,.0f} a second with nothing else running: "
            f"each session's process {costs['session_cpu_ms']:.2f} ms, with "
            f"{costs['session_faults']} minor page faults (copies of pages it shared with the "
            f"fork server above all, see pss){spare}; the parent {parent_ms:.2f} ms; the rest "
            "the helpers' (the fork server's forks above all)")


def ok(report: dict[str, Any]) -> bool:
    """No failed connection, no lost or duplicated delivery (targets are information)."""
    return all(ph["failed"] == 0 if ph["phase"].startswith("connect")
               else ph["lost"] == 0 and ph["duplicates"] == 0 for ph in report["phases"])


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets this scenario measures, met or missed (and by how much, and why)."""
    out = []
    for ph in report["phases"]:
        if report["scenario"] == "burst" and ph["phase"] == "deliver":
            out.append(target("server CPU per delivery", ph.get("server_cpu_us_per_delivery"),
                              0.5, "us", True, WHY["cpu"]))
            out.append(target("session wakeups per message",
                              ph.get("session_wakeups_per_message"), 1, "", True,
                              WHY["batch"]))
            clean = ph["lost"] == 0 and ph["duplicates"] == 0
            # The server's pace, where the kernel tells when each delivery reached its
            # socket; else what the generator read, which its own speed may set.
            at_sockets = ph.get("deliveries_per_second_at_sockets")
            out.append(target("deliveries per second" + (" into the clients' sockets"
                                                         if at_sockets else ""),
                              (at_sockets or ph["deliveries_per_second"]) if clean else 0,
                              1_000_000, "/s", False, WHY["rate"]))
        elif report["scenario"] == "steady" and ph["phase"] == "deliver":
            per = ph.get("server_cpu_us_per_delivery")
            for q, limit in (("p50", 2), ("p99", 4)):
                why = WHY["p99"] + (f", {per:.0f} us of server CPU a delivery here"
                                    if per is not None else "")
                if ph.get("arrival_ms"):  # how much of it was the load generator's
                    why += (f" (at the clients' sockets {ph['arrival_ms'][q]} ms: the rest is "
                            "the load generator's delay in reading)")
                out.append(target(f"latency {q}", ph["latency_ms"][q], limit, "ms", True, why))
        elif ph["phase"].startswith("connect") and ph["inflight"] >= 1000:
            rate = ph["per_second"] if ph["failed"] == 0 else 0
            out.append(target("new sessions per second", rate, 1500, "/s", False,
                              connect_why(ph)))
    mem = report.get("memory")
    if report["scenario"] == "idle" and mem and mem.get("per_session"):
        out.append(target("PSS per idle session", round(mem["per_session"]["pss"] / 1024, 2),
                          1, "MiB", True, WHY["pss"]))
    answer = report.get("responsiveness") or {}
    if report["scenario"] == "idle" and answer:  # (issue 15: with 10,000 sessions held)
        out.append(target("new session", answer.get("new_session_ms"), 50, "ms", True,
                          WHY["fork"]))
        out.append(target("broker round trip", answer.get("broker_round_trip_ms"), 5, "ms",
                          True, WHY["busy"]))
    return out


def render(report: dict[str, Any]) -> list[str]:
    lines = []
    for ph in report["phases"]:
        own = f"loadgen CPU {ph['loadgen_cpu_s']:.3f} s ({ph['loadgen_cpu_pct']:.0f}% of a core)"
        if ph["phase"].startswith("connect"):
            s = ph["setup_ms"]
            lines.append(f"{ph['phase']:<{COL}} {ph['connected']}/{ph['clients']} sessions in "
                         f"{ph['seconds']:.3f} s = {ph['per_second']:,.0f}/s with "
                         f"{ph['inflight']} in flight; {ph['failed']} failed"
                         + (f" {ph['failures']}" if ph["failures"] else ""))
            lines.append(f"{'':<{COL}} setup p50 {s['p50']} ms, p99 {s['p99']} ms, max "
                         f"{s['max']} ms")
            per = ph.get("server_cpu_us_per_session")
            lines.append(f"{'':<{COL}} {cpu_line(ph)}"
                         + (f" = {per:,.0f} us/session" if per is not None else ""))
            costs = ph.get("start_costs")
            if costs and "session_cpu_ms" in costs:
                lines.append(f"{'':<{COL}} a session's process, median of {costs['sessions']}: "
                             f"{costs['session_cpu_ms']:.2f} ms CPU, "
                             f"{costs['session_faults']} minor page faults"
                             + (f"; a spare's start, median of {costs['spares']}: "
                                f"{costs['spare_cpu_ms']:.2f} ms, {costs['spare_faults']} faults"
                                if "spare_cpu_ms" in costs else ""))
        else:
            lat = ph["latency_ms"]
            at_sockets = ph.get("deliveries_per_second_at_sockets")
            lines.append(f"{'deliver':<{COL}} {ph['received']:,}/{ph['expected']:,} deliveries "
                         f"of {ph['messages']:,} messages in {ph['seconds']:.3f} s = "
                         f"{ph['deliveries_per_second']:,}/s"
                         + (f" (into the clients' sockets: {at_sockets:,}/s)"
                            if at_sockets else ""))
            lines.append(f"{'':<{COL}} lost {ph['lost']}, duplicates {ph['duplicates']}, acks "
                         f"{ph['acks']}/{ph['messages']}"
                         + (f", errors {ph['errors']}" if ph["errors"] else ""))
            lines.append(latency_line(lat))
            if ph.get("arrival_ms"):
                lines.append(arrival_line(ph["arrival_ms"]))
            per = ph.get("server_cpu_us_per_delivery")
            lines.append(f"{'':<{COL}} {cpu_line(ph)}"
                         + (f" = {per:.3f} us/delivery" if per is not None else ""))
            if per is not None:
                lines.append(f"{'':<{COL}} per delivery: parent "
                             f"{ph['parent_cpu_us_per_delivery']:.3f} us, sessions "
                             f"{ph['session_cpu_us_per_delivery']:.3f} us; wakeups per "
                             f"message: sessions {ph['session_wakeups_per_message']:.2f}, "
                             f"parent {ph['parent_wakeups_per_message']:.2f}")
        lines.append(f"{'':<{COL}} {own}")
    return lines
