"""asyncio connection: open a stream, keep it alive, reconnect with back-off.

All protocol decisions live in Core; this module only moves frames and keeps time. Like
httpcore's `AsyncHTTP11Connection(origin, stream)`, it takes what it depends on as
arguments: the stream `Opener` (stream.py), the clock (`core.model.clock`: monotonic time
and sleep) and the random source for the back-off jitter. Tests run it on an in-memory
stream with a fake clock. Its life is one `ConnState` advanced in `_advance()`, and every
connection ends with a `ConnectionEnded` exception (lifecycle.py), never a reason string.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import NoReturn

from chatd.protocol import FrameDecoder, ProtocolError, decode_payload, pack

from .buffer import SERVER
from .core import Core
from .lifecycle import (
    TRANSITIONS,
    BadFrame,
    BadTransition,
    ConnectError,
    ConnectionEnded,
    ConnectionLost,
    ConnectTimeout,
    ConnState,
    ServerClosed,
    ServerSilent,
    map_exceptions,
)
from .store import ClientState, StateStore
from .stream import Opener, Stream

BACKOFF_BASE = 0.5  # first retry delay (s); doubles per failed attempt
BACKOFF_CAP = 30.0
KEEPALIVE = 15.0  # ping this often (lag display, and dead-server detection)
DEAD_AFTER = 10.0  # no pong (or any frame) this long after a ping: the server is gone
SAVE_EVERY = 2.0
READ_SIZE = 65536
# Frames from the server may exceed our own max_frame (a history page); this only bounds
# memory if the server goes mad.
MAX_SERVER_FRAME = 1 << 24

log = logging.getLogger(__name__)


def backoff_delay(attempt: int, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP,
                  rand: Callable[[], float] = random.random) -> float:
    """Exponential back-off with jitter: uniform in [d/2, d], d = min(cap, base * 2**attempt).

    The jitter spreads out many clients reconnecting to a restarted server.
    """
    ceiling = min(cap, base * 2.0 ** min(attempt, 30))
    return ceiling / 2 + rand() * ceiling / 2


class Connection:
    def __init__(self, opener: Opener, core: Core, store: StateStore | None = None,
                 on_change: Callable[[], None] = lambda: None, *,
                 keepalive: float = KEEPALIVE, dead_after: float = DEAD_AFTER,
                 backoff_base: float = BACKOFF_BASE, backoff_cap: float = BACKOFF_CAP,
                 first_failure_fatal: bool = False,
                 rand: Callable[[], float] = random.random) -> None:
        self.opener = opener
        self.core = core
        self.clock = core.model.clock
        self.store = store
        self.on_change = on_change
        self.keepalive, self.dead_after = keepalive, dead_after
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        self.first_failure_fatal = first_failure_fatal
        self.rand = rand
        self.state = ConnState.CONNECTING
        self.ended: ConnectionEnded | None = None  # why the last connection ended
        self.welcomed_once = False
        self.closed = asyncio.Event()
        self._started = False
        self._stream: Stream | None = None
        self._saved_at: float | None = None
        self._saved: ClientState | None = None  # what was written last
        self._pinged_at: float | None = None  # our last keepalive ping
        self._unanswered_since: float | None = None  # a ping nothing has arrived after

    def _advance(self, new: ConnState, retry_at: float | None = None) -> None:
        """The one place the state changes; the model mirrors it for the status bar."""
        if new not in TRANSITIONS[self.state]:
            raise BadTransition(f"{self.state.value} -> {new.value}")
        log.info("connection %s -> %s", self.state.value, new.value)
        self.state = new
        self.core.model.conn_state, self.core.model.retry_at = new, retry_at
        self.on_change()

    # Sending
    def flush(self) -> None:
        """Send everything Core queued. Without a connection, requests are dropped:
        Core refuses new requests while not registered, so only pings/pongs get lost."""
        frames = self.core.take_outbox()
        if self._stream is None:
            return
        for frame in frames:
            self._stream.write(pack(frame))

    def save_state(self, force: bool = False) -> None:
        """Write what a restart restores (Core.snapshot()) when it changed, at most every
        SAVE_EVERY seconds unless forced."""
        now = self.clock.monotonic()
        # A new welcome's secret is written at once: the one in the file is worthless now.
        new_secret = self._saved is not None and self._saved.resume != self.core.resume
        due = force or new_secret or self._saved_at is None or now - self._saved_at >= SAVE_EVERY
        if self.store is None or not due:
            return
        self._saved_at = now
        state = self.core.snapshot()
        if state != self._saved:
            self._saved = state
            self.store.save(state)
        problem = self.store.take_problem()
        if problem is not None:
            self.core.model.note(self.core.model.buffers[SERVER], problem, "error")

    # Main loop
    async def run(self) -> None:
        """Stay connected until the user quits (returns), or until retrying cannot help
        (raises the ConnectionEnded that says why)."""
        if self._started or self.state is ConnState.CLOSED:
            raise BadTransition("a Connection runs once")
        self._started = True
        m = self.core.model
        attempt = 0
        try:
            while True:
                try:
                    await self._attempt()
                except ConnectionEnded as exc:
                    ended = exc
                self.ended = ended
                log.info("connection ended: %s", ended)
                if self.state is ConnState.CONNECTED:  # it worked for a while: start over
                    attempt = 0
                said = self.core.disconnected(str(ended))
                self.save_state(force=True)
                if self.core.quitting:
                    return
                if not ended.retry or (self.first_failure_fatal and not self.welcomed_once):
                    raise ended
                delay = backoff_delay(attempt, self.backoff_base, self.backoff_cap, self.rand)
                attempt += 1
                self._advance(ConnState.RECONNECTING, self.clock.monotonic() + delay)
                why = "" if said else f"{ended}; "  # (else said just above, in every buffer)
                m.note(m.buffers[SERVER], f"{why}reconnecting in {delay:.1f}s", "notice",
                       activity=False)
                self.on_change()
                await self.clock.sleep(delay)
                if self.core.quitting:
                    return
                self._advance(ConnState.CONNECTING)
        finally:
            self._advance(ConnState.CLOSED)
            self.closed.set()

    async def _attempt(self) -> NoReturn:
        """One connection, from opening the stream to its end (always an exception)."""
        with map_exceptions({TimeoutError: ConnectTimeout, OSError: ConnectError},
                            f"cannot connect to {self.opener.peer}: "):
            stream = await self.opener()
        self._stream = stream
        self._pinged_at = self._unanswered_since = None
        self._advance(ConnState.HANDSHAKE)
        self.core.connected()
        self.flush()
        # Reading and keepalive run side by side; whichever ends first ends the connection.
        tasks = [asyncio.create_task(self._read(stream)), asyncio.create_task(self._keepalive())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._stream = None
            await stream.aclose()
        exc = next(iter(done)).exception()
        raise exc if exc is not None else RuntimeError("a connection task ended silently")

    async def _read(self, stream: Stream) -> NoReturn:
        decoder = FrameDecoder(MAX_SERVER_FRAME)
        while True:
            with map_exceptions({OSError: ConnectionLost}, "connection lost: "):
                data = await stream.read(READ_SIZE)
            if not data:
                raise ServerClosed()
            self._unanswered_since = None  # any bytes are a sign of life
            decoder.receive_data(data)
            try:
                for payload in decoder.payloads():
                    self._handle(payload)
            except ProtocolError as exc:  # cannot find the next frame: drop the link
                raise BadFrame(f"bad frame from the server: {exc.message}") from exc
            self.flush()
            self.save_state()
            self.on_change()
            if self.core.refused is not None:
                raise self.core.refused

    def _handle(self, payload: bytes) -> None:
        try:
            frame = decode_payload(payload)
        except ProtocolError as exc:
            self.core.model.note(None, f"ignored an undecodable frame: {exc.message}", "error")
            return
        now = self.clock.monotonic()
        self.core.receive(frame, now)
        if self.core.registered and self.state is ConnState.HANDSHAKE:
            self.welcomed_once = True
            self._advance(ConnState.CONNECTED)
            self._ping(now)  # a first lag figure right away

    def _ping(self, now: float) -> None:
        self._pinged_at = self._unanswered_since = now
        self.core.ping(now)

    async def _keepalive(self) -> NoReturn:
        """Ping every `keepalive` s; if nothing arrives for `dead_after` s after a ping,
        the server is gone (a stopped process or a dead link keeps TCP quiet)."""
        while True:
            await self.clock.sleep(min(1.0, self.keepalive / 4))
            now = self.clock.monotonic()
            if self._unanswered_since is not None:
                if now - self._unanswered_since > self.dead_after:
                    raise ServerSilent(self.dead_after)
            elif self._pinged_at is None or now - self._pinged_at >= self.keepalive:
                self._ping(now)
                self.core.tick()
                self.flush()
            self.save_state()

    async def quit(self, reason: str = "", timeout: float = 2.0) -> None:
        """Send quit and wait (bounded) for the server to close."""
        if not self.core.quitting:
            self.core.quit(reason)
        if self._stream is None:
            return
        self.flush()
        waiter = asyncio.ensure_future(self.closed.wait())
        timer = asyncio.ensure_future(self.clock.sleep(timeout))
        try:
            await asyncio.wait({waiter, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            timer.cancel()
        self.save_state(force=True)
