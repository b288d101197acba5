"""A small blocking protocol client for tests: real sockets, deadlines, no sleeps."""

from __future__ import annotations

import contextlib
import itertools
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chatd.protocol import FrameDecoder, decode_payload, pack

Frame = dict[str, Any]


def recv_by(sock: socket.socket, deadline: float) -> bytes | None:
    """What the socket has by `deadline` (monotonic): None if nothing came in time, b""
    at the end of the stream (a reset counts as one)."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return None
    sock.settimeout(remaining)
    try:
        return sock.recv(65536)
    except TimeoutError:
        return None
    except (ConnectionResetError, BrokenPipeError):
        return b""


class Client:
    """One TCP connection speaking chatd frames, with a receive backlog."""

    def __init__(self, host: str, port: int, timeout: float = 10.0,
                 source: str | None = None) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.timeout = timeout
        self.decoder = FrameDecoder(max_frame=1 << 24)
        self.backlog: list[Frame] = []
        self.received: list[Frame] = []  # every frame in arrival order (never consumed)
        self.largest = 0  # the largest frame payload received so far, in bytes
        self.labels = itertools.count(1)
        self.closed = False
        self.nick = ""

    def send(self, frame: Frame) -> None:
        self.sock.sendall(pack(frame))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, frame: Frame) -> int:
        label = next(self.labels)
        self.send({**frame, "label": label})
        return label

    def _read_more(self, deadline: float) -> bool:
        data = recv_by(self.sock, deadline)
        if data is None:
            return False
        if not data:
            self.closed = True
            return False
        self.decoder.receive_data(data)
        for payload in self.decoder.payloads():
            self.largest = max(self.largest, len(payload))
            frame = decode_payload(payload)
            self.backlog.append(frame)
            self.received.append(frame)
        return True

    def wait(self, pred: Callable[[Frame], bool], timeout: float | None = None) -> Frame:
        """Return (and remove) the first frame matching pred, reading as needed."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            for i, frame in enumerate(self.backlog):
                if pred(frame):
                    return self.backlog.pop(i)
            if self.closed or not self._read_more(deadline):
                if self.closed:
                    raise ConnectionError(f"closed; backlog: {_short(self.backlog[-5:])}")
                raise TimeoutError(f"no matching frame; backlog: {_short(self.backlog[-5:])}")

    def wait_type(self, ftype: str, timeout: float | None = None, **fields: Any) -> Frame:
        return self.wait(lambda f: f.get("type") == ftype
                         and all(f.get(k) == v for k, v in fields.items()), timeout)

    def reply(self, label: int, timeout: float | None = None) -> Frame:
        return self.wait(lambda f: f.get("label") == label, timeout)

    def call(self, frame: Frame, timeout: float | None = None) -> Frame:
        return self.reply(self.request(frame), timeout)

    def hello(self, nick: str) -> Frame:
        frame = self.call({"type": "hello", "version": 1, "nick": nick})
        assert frame["type"] == "welcome", frame
        self.nick = nick
        return frame

    def join(self, room: str, **extra: Any) -> tuple[Frame, Frame]:
        label = self.request({"type": "join", "room": room, **extra})
        joined = self.reply(label)
        assert joined["type"] == "joined", joined
        history = self.reply(label)
        assert history["type"] == "history", history
        return joined, history

    def say(self, room: str, text: str, **extra: Any) -> Frame:
        ack = self.call({"type": "msg", "room": room, "text": text, **extra})
        assert ack["type"] == "ack", ack
        return ack

    def wait_closed(self, timeout: float | None = None) -> list[Frame]:
        """Read until EOF; returns every frame still in the backlog."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self.closed:
            if not self._read_more(deadline) and not self.closed:
                raise TimeoutError("connection did not close")
        return self.backlog

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    # ---- helpers added for the server integration tests ----

    def collect(self, pred: Callable[[Frame], bool], count: int,
                timeout: float | None = None) -> list[Frame]:
        """Return (and remove) the first `count` frames matching pred, in arrival order."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        out: list[Frame] = []
        while len(out) < count:
            out.append(self.wait(pred, max(0.0, deadline - time.monotonic())))
        return out

    def messages(self, room: str, count: int, timeout: float | None = None) -> list[Frame]:
        """The next `count` `message` frames of `room`, in arrival order."""
        return self.collect(lambda f: f.get("type") == "message" and f.get("room") == room,
                            count, timeout)

    def sync(self, timeout: float | None = None) -> Frame:
        """A broker round trip: everything the broker queued for us before it has arrived."""
        frame = self.call({"type": "rooms"}, timeout)
        assert frame["type"] == "rooms", frame
        return frame

    def error(self, frame: Frame, timeout: float | None = None) -> Frame:
        """Send a labelled request that must fail; returns its `error` frame."""
        reply = self.call(frame, timeout)
        assert reply["type"] == "error", reply
        return reply

    def pending(self, ftype: str | None = None, **fields: Any) -> list[Frame]:
        """Frames already received and not yet consumed (without waiting)."""
        return [f for f in self.backlog if (ftype is None or f.get("type") == ftype)
                and all(f.get(k) == v for k, v in fields.items())]

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _short(frames: list[Frame], width: int = 300) -> str:
    """Frames for an error message, each cut to `width` characters."""
    return "[" + ", ".join(r if len(r := repr(f)) <= width else r[:width] + "...}"
                           for f in frames) + "]"


def connect(server: Any, nick: str | None = None) -> Client:
    client = Client(server.host, server.port)
    if nick:
        client.hello(nick)
    return client


def tls_connect(host: str, port: int, context: ssl.SSLContext, nick: str | None = None,
                server_hostname: str = "localhost") -> Client:
    """A Client over TLS (the handshake done here, blocking)."""
    client = Client(host, port)
    # Else Nagle holds the hello behind the client's Finished until the server's delayed
    # ACK (40 ms); chat-client (asyncio) sets this too.
    client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.sock = context.wrap_socket(client.sock, server_hostname=server_hostname)
    if nick:
        client.hello(nick)
    return client


def register_account(host: str, tls_port: int, cafile: Path, account: str,
                     password: str) -> None:
    """An account, registered the native way (protocol.md §12.3: over TLS, with its
    password), for tests that log in to it."""
    client = tls_connect(host, tls_port, ssl.create_default_context(cafile=cafile))
    try:
        reply = client.call({"type": "register", "account": account, "password": password})
        assert reply["type"] == "registered", reply
    finally:
        client.close()
