"""A tiny stand-in for chatd, to play a hostile or broken server to the real client.

It speaks the real framing (chatd.protocol) on a loopback port and by default answers the
way a minimal chatd does (`honest()`): `hello`, `join` (the history comes from the test),
`msg` (ack, then the message itself), `history` (empty), pings and `quit`. A test's
`handler(peer, frame)` answers what it wants to itself (including what no honest chatd
would: hostile strings, unusable limits, late acks) and hands the rest to `honest()`;
`send()` pushes frames to every client. It runs its own event loop on its own thread, so
tests drive it with plain calls (and can run the real `chat-client` against it as a
subprocess); every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

from chatd.protocol import FrameDecoder, decode_payload, pack

Frame = dict[str, Any]
T0 = 1_763_719_200_000  # a fixed server time (ms) for the frames tests build


def message(mid: int, text: str | None = None, room: str = "#a", sender: str = "bob",
            ts: Any = None) -> Frame:
    return {"type": "message", "id": mid, "ts": T0 + mid * 1000 if ts is None else ts,
            "room": room, "from": sender, "text": text or f"m{mid}", "action": False}


class Peer:
    """One client connection, seen from the server."""

    def __init__(self, server: FakeChatd, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.writer = writer
        self.frames: list[Frame] = []  # what this client sent, decoded
        self.nick = ""

    def send(self, frame: Frame) -> None:
        """Queue a frame to this client; callable from any thread."""
        data = pack(frame)
        self.server.call(lambda: self.writer.is_closing() or self.writer.write(data))

    def close(self) -> None:
        self.server.call(self.writer.close)

    def later(self, seconds: float, fn: Callable[..., Any], *args: Any) -> None:
        """Run fn(*args) on the server's loop in `seconds` (a slow server)."""
        self.server.call(lambda: self.server.loop.call_later(seconds, fn, *args))

    def sent(self, ftype: str) -> list[Frame]:
        with self.server.cond:
            return [f for f in self.frames if f.get("type") == ftype]


Handler = Callable[[Peer, Frame], None]


class FakeChatd:
    def __init__(self, history: Callable[[str], list[Frame]] = lambda room: [],
                 handler: Handler | None = None) -> None:
        self.history = history  # the messages a join of `room` gets, in the order to send
        self.handler = handler or honest
        self.received: list[Frame] = []  # from every client
        self.peers: list[Peer] = []
        self.cond = threading.Condition()
        self.ids = itertools.count(10_000)  # ids of acknowledged messages
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = self._run(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.host, self.port = self.server.sockets[0].getsockname()[:2]

    def __enter__(self) -> FakeChatd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(self, writer)
        with self.cond:
            self.peers.append(peer)
            self.cond.notify_all()
        decoder = FrameDecoder(max_frame=1 << 20)
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                decoder.receive_data(data)
                for payload in decoder.payloads():
                    frame = decode_payload(payload)
                    with self.cond:
                        self.received.append(frame)
                        peer.frames.append(frame)
                        self.cond.notify_all()
                    self.handler(peer, frame)
        writer.close()

    def call(self, fn: Callable[[], Any]) -> None:
        """Run fn on the server's loop, from any thread."""
        if threading.current_thread() is self.thread:
            fn()
        else:
            self.loop.call_soon_threadsafe(fn)

    def send(self, *frames: Frame) -> None:
        """Send frames to every connected client, in order."""
        def write() -> None:
            for peer in self.peers:
                for frame in frames:
                    if not peer.writer.is_closing():
                        peer.writer.write(pack(frame))
        self.call(write)

    def wait_for(self, pred: Callable[[Frame], bool], timeout: float = 10.0) -> Frame:
        return self._wait(lambda: next((f for f in self.received if pred(f)), None),
                          f"no such frame from the client; got {self.received[-5:]}",
                          timeout)

    def peer(self, index: int = 0, timeout: float = 10.0) -> Peer:
        """The index-th connection (waiting for it)."""
        return self._wait(lambda: self.peers[index] if len(self.peers) > index else None,
                          f"no connection {index}", timeout)

    def _wait(self, pred: Callable[[], Any], what: str, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not (value := pred()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(what)
                self.cond.wait(remaining)
            return value

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            for peer in self.peers:
                peer.writer.close()
            await self.server.wait_closed()

        with contextlib.suppress(Exception):
            self._run(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def welcome(hello: Frame, **extra: Any) -> Frame:
    """The welcome for a hello (`extra` replaces any field)."""
    return {"type": "welcome", "version": 1, "server": "fake", "session": "0123456789abcdef",
            "nick": hello.get("nick"), "time": T0,
            "limits": {"max_text": 4000, "history_page": 200, "history_on_join": 50},
            **({"label": hello["label"]} if "label" in hello else {}), **extra}


def honest(peer: Peer, f: Frame) -> None:
    """Answer like a minimal chatd; other requests get no answer."""
    ftype, label = f.get("type"), ({"label": f["label"]} if "label" in f else {})
    if ftype == "hello":
        peer.nick = str(f.get("nick"))
        peer.send(welcome(f))
    elif ftype == "join":
        room = str(f.get("room"))
        peer.send({"type": "joined", "room": room, "topic": "", "members": [peer.nick, "bob"],
                   **label})
        peer.send({"type": "history", "room": room, "messages": peer.server.history(room),
                   "more": False, **label})
    elif ftype == "msg":
        ack(peer, f)
    elif ftype == "history":  # nothing older than what a join gave
        where = {k: f[k] for k in ("room", "with") if k in f}
        peer.send({"type": "history", **where, "messages": [], "more": False, **label})
    elif ftype == "ping":
        peer.send({"type": "pong", **({"token": f["token"]} if "token" in f else {})})
    elif ftype == "quit":
        peer.close()


def ack(peer: Peer, f: Frame) -> None:
    """Acknowledge a msg, then deliver it back to its sender."""
    mid = next(peer.server.ids)
    where = {"room": f["room"]} if "room" in f else {"to": f["to"]}
    peer.send({"type": "ack", "label": f.get("label"), "id": mid, "ts": T0 + mid, **where})
    peer.send({"type": "message", "id": mid, "ts": T0 + mid, **where, "from": peer.nick,
               "text": f["text"], "action": bool(f.get("action"))})
