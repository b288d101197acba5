"""A scripted chat server for client tests: real TCP on loopback, the real framing
(chatd.protocol's codec), and whatever the test makes it say, including what no honest
chatd would (hostile strings, unusable limits, late acks).

It runs its own event loop on a thread, so a test can run the real `chat-client` (a
subprocess, or the full-screen client on its own loop) against it and block while waiting.
`honest()` answers like a minimal chatd; a test's handler answers some frames itself and
hands the rest to it.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

from chatd.protocol import FrameDecoder, decode_payload, pack

Frame = dict[str, Any]
TS = 1_763_719_200_000  # a fixed server time (ms): no test reads the date


class Peer:
    """One client connection, seen from the server."""

    def __init__(self, server: FakeServer, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.writer = writer
        self.frames: list[Frame] = []  # everything the client sent, decoded
        self.nick = ""
        self.closed = False

    def send(self, frame: Frame | bytes) -> None:
        """Queue a frame (or raw bytes); callable from any thread."""
        data = frame if isinstance(frame, bytes) else pack(frame)
        self.server.call(lambda: self.writer.is_closing() or self.writer.write(data))

    def close(self) -> None:
        self.server.call(self.writer.close)

    def wait(self, ftype: str, timeout: float = 10.0, **match: Any) -> Frame:
        """The first frame the client sent of this type (and these field values)."""
        return self.server.wait(lambda: next(
            (f for f in self.frames if f.get("type") == ftype
             and all(f.get(k) == v for k, v in match.items())), None),
            f"a {ftype} {match or ''} from the client", timeout)

    def sent(self, ftype: str) -> list[Frame]:
        with self.server.cond:
            return [f for f in self.frames if f.get("type") == ftype]


Handler = Callable[[Peer, Frame], None]


class FakeServer:
    def __init__(self, handler: Handler | None = None) -> None:
        self.handler = handler or honest
        self.peers: list[Peer] = []
        self.cond = threading.Condition()
        self.ids = itertools.count(1)  # message ids
        self.loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self.host, self.port = "127.0.0.1", 0
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> FakeServer:
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(self._start(), self.loop)
        started.result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            for peer in self.peers:
                peer.writer.close()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(self, writer)
        with self.cond:
            self.peers.append(peer)
            self.cond.notify_all()
        decoder = FrameDecoder(1 << 24)
        try:
            while data := await reader.read(65536):
                decoder.receive_data(data)
                for payload in decoder.payloads():
                    frame = decode_payload(payload)
                    with self.cond:
                        peer.frames.append(frame)
                        self.cond.notify_all()
                    self.handler(peer, frame)
        except (ConnectionError, OSError):
            pass
        finally:
            peer.closed = True
            writer.close()
            with self.cond:
                self.cond.notify_all()

    def call(self, fn: Callable[[], Any]) -> None:
        """Run fn on the server's loop (from any thread)."""
        if threading.current_thread() is self._thread:
            fn()
        else:
            self.loop.call_soon_threadsafe(fn)

    def wait(self, pred: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not (value := pred()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out waiting for {what}")
                self.cond.wait(remaining)
            return value

    def peer(self, index: int = 0, timeout: float = 10.0) -> Peer:
        return self.wait(lambda: self.peers[index] if len(self.peers) > index else None,
                         f"connection {index}", timeout)


def welcome(hello: Frame, **extra: Any) -> Frame:
    return {"type": "welcome", "version": 1, "server": "fake", "session": "s1",
            "nick": hello["nick"], "motd": "", "time": TS, "label": hello.get("label"),
            "limits": {}, **extra}


def honest(peer: Peer, f: Frame) -> None:
    """Answer like a minimal chatd: one room per join, acks and echoes, pongs."""
    ftype, label = f.get("type"), f.get("label")
    if ftype == "hello":
        peer.nick = f["nick"]
        peer.send(welcome(f))
    elif ftype == "join":
        peer.send({"type": "joined", "room": f["room"], "topic": "", "members": [peer.nick],
                   "label": label})
        peer.send({"type": "history", "room": f["room"], "messages": [], "more": False,
                   "label": label})
    elif ftype == "msg":
        ack(peer, f)
    elif ftype == "ping":
        peer.send({"type": "pong", "token": f.get("token"), "label": label})
    elif ftype == "quit":
        peer.close()
    elif ftype in ("who", "rooms", "topic", "history", "part", "nick") and label is not None:
        peer.send({"type": "error", "code": "internal", "message": "not in this fake",
                   "fatal": False, "label": label})


def ack(peer: Peer, f: Frame) -> None:
    """Acknowledge a msg and deliver it back to its sender."""
    mid = next(peer.server.ids)
    where = {"room": f["room"]} if "room" in f else {"to": f["to"]}
    peer.send({"type": "ack", "label": f.get("label"), "id": mid, "ts": TS + mid, **where})
    peer.send({"type": "message", "id": mid, "ts": TS + mid, **where, "from": peer.nick,
               "text": f["text"], "action": bool(f.get("action"))})
