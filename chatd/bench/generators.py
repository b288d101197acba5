"""Helper load-generator processes: the receiving share of a burst's or steady's clients.

Decoding every delivery is most of the load generator's work: one process decoding a
burst's 100,000 frames takes a whole core, and then it, not the server, sets the
deliveries/s. `--generators N` keeps the senders (and a share of the rest) in the main
process and moves the other clients into N-1 helper processes, each a `python -m
chatd.bench.generators HOST PORT TAG TIMEOUT WIRE` (WIRE: native, or irc for `chatd bench
irc`) with its own event loop and its own `Stats`. They take orders as
JSON lines on stdin and answer on stdout:

  {"op": "open", "clients": [[nick, room], ...], "inflight": N}  -> connected, failures, times
  {"op": "quiesce"}                                                 -> {} (a round trip each)
  {"op": "expect", "target": N}  -> {"expecting": N} at once (deliveries count from then
                                    on: the main generator starts sending only after it),
                                    {"progress": n} twice a second, then, once N deliveries
                                    came or {"op": "stop"} did: received, duplicates, ...
  {"op": "close"}                                                   -> exits
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from typing import Any

from .ircload import opener
from .load import BaseConn, Stats
from .probes import own_cpu

PROGRESS = 0.5  # seconds between a helper's progress reports


class Helper:
    """One helper process, seen from the main load generator."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.progress = 0  # deliveries it has counted in the current phase

    @classmethod
    async def start(cls, host: str, port: int, tag: str, timeout: float,
                    wire: str = "native") -> Helper:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "chatd.bench.generators", host, str(port), tag,
            str(timeout), wire, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            limit=1 << 26)
        return cls(proc)

    def order(self, op: str, **args: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}).encode() + b"\n")

    async def answer(self) -> dict[str, Any]:
        """Its next answer that is not a progress report (counted meanwhile)."""
        assert self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                raise ConnectionError("a load generator helper exited")
            reply: dict[str, Any] = json.loads(line)
            if set(reply) == {"progress"}:
                self.progress = reply["progress"]
                continue
            return reply

    async def call(self, op: str, **args: Any) -> dict[str, Any]:
        self.order(op, **args)
        return await self.answer()

    async def close(self) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            self.order("close")
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 30)
        except TimeoutError:
            self.proc.kill()  # our own child, by its handle
            await self.proc.wait()


async def serve(host: str, port: int, tag: str, timeout: float, wire: str) -> None:
    """A helper's life: follow orders from stdin until "close" or its end."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    stats = Stats(tag + " ")
    conns: list[BaseConn] = []
    open_session = opener(wire)  # native frames or IRC lines (ircload.py)

    def say(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    async def open_one(nick: str, room: str | None, sem: asyncio.Semaphore,
                       failures: Counter[str], times: list[float]) -> None:
        async with sem:
            t0 = time.monotonic()
            try:
                conns.append(await open_session(host, port, stats, nick, room, timeout))
            except (OSError, ConnectionError, TimeoutError) as exc:
                failures["timeout" if isinstance(exc, TimeoutError) else
                         str(exc) or type(exc).__name__] += 1
                return
            times.append(time.monotonic() - t0)

    while line := await reader.readline():
        order = json.loads(line)
        op = order["op"]
        if op == "open":
            sem = asyncio.Semaphore(max(1, order["inflight"]))
            failures: Counter[str] = Counter()
            times: list[float] = []
            await asyncio.gather(*(open_one(nick, room, sem, failures, times)
                                   for nick, room in order["clients"]))
            say({"connected": len(times), "failures": dict(failures), "times": times})
        elif op == "quiesce":
            waits = [c.request({"type": "who", "room": c.room}, f"q{n}")
                     for n, c in enumerate(conns) if c.room is not None]
            await asyncio.gather(*waits, return_exceptions=True)
            say({})
        elif op == "expect":
            await expect(stats, order["target"], reader, say)
        elif op == "close":
            break
    for conn in conns:
        conn.close()


async def expect(stats: Stats, target: int, reader: asyncio.StreamReader,
                 say: Any) -> None:
    """Count deliveries until `target` came or the main generator says stop."""
    stats.new_phase()
    stats.acks = 0
    stats.target = target
    stats.done = asyncio.Event()
    stats.check_done()
    say({"expecting": target})
    cpu0 = own_cpu()
    stop = asyncio.ensure_future(reader.readline())  # the only order now is "stop"
    done = asyncio.ensure_future(stats.done.wait())
    while not stop.done():
        await asyncio.wait([stop, done], timeout=PROGRESS,
                           return_when=asyncio.FIRST_COMPLETED)
        say({"progress": stats.received})
        if done.done():
            await stop
    done.cancel()
    say({"received": stats.received, "duplicates": stats.duplicates,
         "errors": dict(stats.errors), "acks": stats.acks,
         "latencies": stats.latencies, "arrivals": stats.arrivals,
         "last_arrival": stats.last_arrival,
         "cpu_s": own_cpu() - cpu0})


def main() -> None:
    host, port, tag, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    asyncio.run(serve(host, port, tag, timeout, sys.argv[5]))


if __name__ == "__main__":
    main()
