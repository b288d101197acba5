"""In-memory stand-ins for the client's connection: a virtual clock, a stream the test
plays the server on, and an opener that hands them out. No sockets, no real waiting.

Like httpcore's MockStream: the test scripts what the "server" says, and reads back what
the client wrote.
"""

from __future__ import annotations

import asyncio
import errno
import heapq
import itertools
from collections.abc import Callable
from datetime import UTC
from typing import Any

from chat_client.clock import Clock
from chatd.protocol import FrameDecoder, decode_payload, pack

Frame = dict[str, Any]
WALL = 1_763_719_200.0  # a fixed wall-clock moment for stamps: no test reads the date


class FakeClock:
    """Virtual monotonic time. `sleep()` parks the caller until `run_until()` moves time
    forward to its deadline; nothing ever waits for real."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.slept: list[float] = []  # every sleep asked for, in order
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(0.0, seconds), next(self._order),
                                        future))
        await future

    def clock(self) -> Clock:
        """A client Clock on this virtual time (wall clock pinned, zone UTC)."""
        return Clock(now=lambda: WALL, zone=UTC, monotonic=self.monotonic, sleep=self.sleep)

    @staticmethod
    async def settle() -> None:
        """Let every task that can run, run (no real time passes)."""
        for _ in range(50):
            await asyncio.sleep(0)

    async def advance(self, seconds: float) -> None:
        """Move time forward by `seconds`, waking every sleeper due on the way."""
        target = self.now + seconds
        while True:
            await self.settle()
            while self._sleepers and self._sleepers[0][2].done():
                heapq.heappop(self._sleepers)
            if not self._sleepers or self._sleepers[0][0] > target:
                break
            when, _, future = heapq.heappop(self._sleepers)
            self.now = max(self.now, when)
            future.set_result(None)
        self.now = target
        await self.settle()

    async def run_until(self, pred: Callable[[], Any], within: float = 3600.0) -> None:
        """Advance virtual time, one sleeper at a time, until pred() holds; after `within`
        seconds of it, time stands at that deadline and AssertionError says so."""
        deadline = self.now + within
        while True:
            await self.settle()
            if pred():
                return
            while self._sleepers and self._sleepers[0][2].done():  # cancelled sleeps
                heapq.heappop(self._sleepers)
            if not self._sleepers:
                raise AssertionError("condition not met and nothing left to happen")
            if self._sleepers[0][0] > deadline:
                self.now = deadline
                raise AssertionError(f"condition not met within {within}s of virtual time")
            when, _, future = heapq.heappop(self._sleepers)
            self.now = max(self.now, when)
            future.set_result(None)


class FakeStream:
    """One connection; the test is the server. `auto_pong` answers the client's pings."""

    def __init__(self, auto_pong: bool = False) -> None:
        self.auto_pong = auto_pong
        self.closed = False
        self.written = bytearray()
        self._incoming: asyncio.Queue[bytes | BaseException] = asyncio.Queue()
        self._decoder = FrameDecoder(max_frame=1 << 24)
        self.frames: list[Frame] = []  # what the client sent, decoded

    # The client's side (the Stream protocol)
    async def read(self, max_bytes: int) -> bytes:
        item = await self._incoming.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        self.written += data
        self._decoder.receive_data(data)
        for payload in self._decoder.payloads():
            frame = decode_payload(payload)
            self.frames.append(frame)
            if self.auto_pong and frame["type"] == "ping":
                self.send({"type": "pong", "token": frame["token"]})

    async def aclose(self) -> None:
        self.closed = True

    # The server's side
    def send(self, frame: Frame) -> None:
        self._incoming.put_nowait(pack(frame))

    def send_raw(self, data: bytes) -> None:
        self._incoming.put_nowait(data)

    def close(self) -> None:
        """The server closes: the client reads end of stream."""
        self._incoming.put_nowait(b"")

    def fail(self, exc: BaseException) -> None:
        """The link breaks: the client's next read raises exc."""
        self._incoming.put_nowait(exc)

    def sent(self, ftype: str) -> list[Frame]:
        return [f for f in self.frames if f["type"] == ftype]

    def welcome(self, nick: str = "alice", **extra: Any) -> None:
        """Answer the client's (last) hello."""
        hello = self.sent("hello")[-1]
        self.send({"type": "welcome", "version": 1, "server": "fake", "session": "s1",
                   "nick": nick, "label": hello["label"], "limits": {}, **extra})


def refused() -> OSError:
    return ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed ('fake', 7777)")


class FakeOpener:
    """Hands out the streams (or raises the errors) in `plan`, in order; once the plan
    is used up, every attempt is refused. Records when each attempt was made."""

    peer = "fake:7777"

    def __init__(self, clock: FakeClock, *plan: FakeStream | BaseException) -> None:
        self.clock = clock
        self.plan = list(plan)
        self.attempts: list[float] = []  # virtual times
        self.opened: list[FakeStream] = []

    async def __call__(self) -> FakeStream:
        self.attempts.append(self.clock.now)
        item = self.plan.pop(0) if self.plan else refused()
        if isinstance(item, BaseException):
            raise item
        self.opened.append(item)
        return item
