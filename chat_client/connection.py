"""asyncio connection: connect, reconnect with back-off, keepalive/lag, state on disk.

All protocol decisions live in Core; this module only moves frames and keeps time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import time
from collections.abc import Callable
from pathlib import Path

from chatd.protocol import FrameDecoder, ProtocolError, decode_payload, pack

from .core import Core

BACKOFF_BASE = 0.5  # first retry delay (s); doubles per failed attempt
BACKOFF_CAP = 30.0
KEEPALIVE = 15.0  # ping this often (lag display, and dead-server detection)
DEAD_AFTER = 10.0  # no pong (or any frame) this long after a ping: the server is gone
CONNECT_TIMEOUT = 10.0
SAVE_EVERY = 2.0
# Frames from the server may exceed our own max_frame (a history page); this only bounds
# memory if the server goes mad.
MAX_SERVER_FRAME = 1 << 24


def backoff_delay(attempt: int, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP,
                  rand: Callable[[], float] = random.random) -> float:
    """Exponential back-off with jitter: uniform in [d/2, d], d = min(cap, base * 2**attempt).

    The jitter spreads out many clients reconnecting to a restarted server.
    """
    ceiling = min(cap, base * (2 ** min(attempt, 30)))
    return ceiling / 2 + rand() * ceiling / 2


def state_dir() -> Path:
    """Per-user state dir: $CHAT_CLIENT_STATE_DIR, else $XDG_STATE_HOME/chat-client,
    else ~/.local/state/chat-client."""
    override = os.environ.get("CHAT_CLIENT_STATE_DIR")
    if override:
        return Path(override)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "chat-client"


class StateStore:
    """Last-seen message id per room, per server and starting nick, as JSON."""

    def __init__(self, server: str, nick: str, directory: Path | None = None) -> None:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{server}-{nick.lower()}")
        self.path = (directory or state_dir()) / f"{safe}.json"

    def load(self) -> dict[str, int]:
        try:
            data = json.loads(self.path.read_text())
            rooms = data.get("rooms", {})
            return {str(k): int(v) for k, v in rooms.items() if isinstance(v, int)}
        except (OSError, ValueError, AttributeError):
            return {}

    def save(self, rooms: dict[str, int]) -> None:
        """Merge (ids only grow) and write atomically; a failed write is not fatal."""
        merged = self.load()
        for room, last in rooms.items():
            merged[room] = max(merged.get(room, 0), last)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps({"version": 1, "rooms": merged}, indent=1))
            os.replace(tmp, self.path)
        except OSError:
            pass


class ConnectFailed(Exception):
    pass


class Connection:
    def __init__(self, host: str, port: int, core: Core, store: StateStore | None = None,
                 on_change: Callable[[], None] = lambda: None, *,
                 keepalive: float = KEEPALIVE, dead_after: float = DEAD_AFTER,
                 backoff_base: float = BACKOFF_BASE, backoff_cap: float = BACKOFF_CAP,
                 first_failure_fatal: bool = False) -> None:
        self.host, self.port = host, port
        self.core = core
        self.store = store
        self.on_change = on_change
        self.keepalive, self.dead_after = keepalive, dead_after
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        self.first_failure_fatal = first_failure_fatal
        self.writer: asyncio.StreamWriter | None = None
        self.welcomed_once = False
        self.closed = asyncio.Event()
        self._saved_at = 0.0

    # Sending
    def flush(self) -> None:
        """Send everything Core queued. Without a connection, requests are dropped:
        Core refuses new requests while not registered, so only pings/pongs get lost."""
        frames = self.core.take_outbox()
        if self.writer is None or self.writer.is_closing():
            return
        for frame in frames:
            self.writer.write(pack(frame))

    def save_state(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.store and self.core.dirty and (force or now - self._saved_at >= SAVE_EVERY):
            self.core.dirty = False
            self._saved_at = now
            self.store.save(self.core.model.last_seen()["rooms"])

    def finished(self) -> bool:
        return self.core.quitting or self.core.stop_reason is not None

    # Main loop
    async def run(self) -> None:
        """Connect and stay connected until quit, or a reason to stop."""
        m = self.core.model
        attempt = 0
        try:
            while True:
                m.conn_state, m.retry_at = "connecting", None
                self.on_change()
                error = ""
                try:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection(self.host, self.port), CONNECT_TIMEOUT)
                except (OSError, TimeoutError) as exc:
                    why = "timed out"
                    if not isinstance(exc, TimeoutError):
                        why = os.strerror(exc.errno) if exc.errno else str(exc)
                    error = f"cannot connect to {self.host}:{self.port}: {why}"
                else:
                    error = await self._session(reader, writer)
                    if self.core.registered:  # it worked for a while: start over
                        attempt = 0
                self.core.disconnected(error or "connection closed")
                self.save_state(force=True)
                if self.finished():
                    return
                if self.first_failure_fatal and not self.welcomed_once:
                    raise ConnectFailed(error or "connection closed before welcome")
                delay = backoff_delay(attempt, self.backoff_base, self.backoff_cap)
                attempt += 1
                m.conn_state, m.retry_at = "reconnecting", time.monotonic() + delay
                m.note(m.buffers["*server*"], f"{error or 'connection closed'}; "
                       f"reconnecting in {delay:.1f}s", "notice")
                self.on_change()
                await asyncio.sleep(delay)
        finally:
            m.conn_state = "closed"
            self.closed.set()
            self.on_change()

    async def _session(self, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> str:
        """One TCP connection; returns why it ended."""
        core = self.core
        self.writer = writer
        decoder = FrameDecoder(MAX_SERVER_FRAME)
        core.connected()
        self.flush()
        state = {"heard": time.monotonic(), "pinged": 0.0}
        keeper = asyncio.create_task(self._keepalive(writer, state))
        reason = "connection closed by the server"
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                state["heard"] = time.monotonic()
                decoder.receive_data(data)
                try:
                    for payload in decoder.payloads():
                        self._handle(payload)
                except ProtocolError as exc:  # cannot find the next frame: drop the link
                    reason = f"bad frame from the server: {exc.message}"
                    break
                self.flush()
                self.save_state()
                self.on_change()
                if core.stop_reason:
                    reason = core.stop_reason
                    break
        except OSError as exc:
            reason = f"connection lost: {exc.strerror or exc}"
        except asyncio.CancelledError:
            reason = "cancelled"
            raise
        finally:
            keeper.cancel()
            self.writer = None
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
        if keeper.done() and not keeper.cancelled() and keeper.exception() is None \
                and keeper.result():
            reason = keeper.result()
        return reason

    def _handle(self, payload: bytes) -> None:
        try:
            frame = decode_payload(payload)
        except ProtocolError as exc:
            self.core.model.note(None, f"ignored an undecodable frame: {exc.message}", "error")
            return
        if frame.get("type") == "welcome":
            self.welcomed_once = True
        self.core.receive(frame, time.monotonic())
        if frame.get("type") == "welcome":
            self.core.ping(time.monotonic())  # a first lag figure right away

    async def _keepalive(self, writer: asyncio.StreamWriter, state: dict[str, float]) -> str:
        """Ping every `keepalive` s; if nothing is heard for `dead_after` s after a ping,
        close the connection so the reconnect logic takes over."""
        core = self.core
        while True:
            await asyncio.sleep(min(1.0, self.keepalive / 4))
            now = time.monotonic()
            if state["pinged"] and state["heard"] < state["pinged"]:  # awaiting an answer
                if now - state["pinged"] > self.dead_after:
                    writer.close()  # makes the reader see EOF
                    return f"no answer from the server for {self.dead_after:.0f}s"
            elif now - state["pinged"] >= self.keepalive:
                state["pinged"] = now
                core.ping(now)
                core.tick()
                self.flush()
            self.save_state()

    async def quit(self, reason: str = "", timeout: float = 2.0) -> None:
        """Send quit and wait (bounded) for the server to close."""
        if not self.core.quitting:
            self.core.quit(reason)
        if self.writer is None:
            return
        self.flush()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closed.wait(), timeout)
        self.save_state(force=True)
