"""The sans-I/O cores wired together in memory, like h11's ConnectionPair.

`Hub` is Session -> Broker -> Session without processes: IRC front ends and native
clients, each with a real Session, on one real Broker (with a Store on a SQLite file),
the process loops' work done by hand. `decode_all` and `answer_reads` read what the
cores produce and answer the broker's history reads as the reader process does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chatd.broker import Broker
from chatd.config import Config, parse_settings
from chatd.irc import IrcFrontEnd, Line, parse
from chatd.protocol import FrameDecoder, decode_payload, pack
from chatd.reader import answer
from chatd.session import Session
from chatd.store import Store

EPOCH_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: the broker's clock starts here


def decode_all(data: bytes) -> list[dict[str, Any]]:
    decoder = FrameDecoder(max_frame=1 << 24)
    decoder.receive_data(data)
    frames = [decode_payload(p) for p in decoder.payloads()]
    assert decoder.buffered == 0, "trailing partial frame"
    return frames


def answer_reads(broker: Broker, reader: Store | None = None) -> None:
    """Answer the broker's history reads, and the reads those lead to, as the reader
    process does: after a commit, with chatd.reader's own code, through `reader` (a
    read-only Store on the same file), or through the broker's store for an in-memory
    database."""
    store = reader or broker.store
    while True:
        broker.store.flush()
        reads = broker.take_reads()
        if not reads:
            return
        for _sid, read in reads:
            broker.read_done(answer(store, read))


class Conn:
    """One session: its Session, and its IrcFrontEnd when the client speaks IRC."""

    def __init__(self, hub: Hub, sid: int, irc: bool) -> None:
        self.hub, self.sid = hub, sid
        self.session = Session(hub.config, hub.now_ms)
        self.front = IrcFrontEnd(hub.config, hub.now) if irc else None
        self.received = bytearray()  # what the client got: IRC lines or native frames
        self.detached = False
        hub.broker.attach(sid, f"sess{sid}")

    # the client's side
    def send(self, text: str) -> None:
        """One IRC line (CR LF added), or several separated by CR LF already."""
        self.raw(text.encode() + (b"" if text.endswith("\n") else b"\r\n"))

    def raw(self, data: bytes) -> None:
        assert self.front is not None
        self.front.receive_data(data, self.hub.now)
        self._take_lines()
        self._to_session()
        self.hub.pump()

    def request(self, **frame: Any) -> None:
        self.session.receive_data(pack(frame), self.hub.now_ms)
        self.hub.pump()

    def lines(self) -> list[Line]:
        """The IRC lines received since the last call."""
        data, self.received = bytes(self.received), bytearray()
        assert data == b"" or data.endswith(b"\r\n"), data[-80:]
        return [parse(raw) for raw in data.split(b"\r\n")[:-1]]

    def text(self) -> list[str]:
        return [raw.decode() for raw in bytes(self.received).split(b"\r\n")[:-1]]

    def frames(self) -> list[dict[str, Any]]:
        decoder = FrameDecoder(1 << 24)
        decoder.receive_data(bytes(self.received))
        self.received.clear()
        return [decode_payload(payload) for payload in decoder.payloads()]

    # the session process's side
    def _to_session(self, liveness: bool = True) -> None:
        """The front end's requests to the Session; with `liveness` also when there are
        none (after client bytes: b"" tells the keepalive the client is alive)."""
        if self.front is not None and not self.session.ended:
            data = b"".join(self.front.to_session)
            self.front.to_session.clear()
            if data or liveness:
                self.session.receive_data(data, self.hub.now_ms)

    def _to_client(self, data: bytes) -> None:
        if self.front is None:
            self.received += data
            return
        self.front.receive_frames(data, self.hub.now)
        self._take_lines()
        self._to_session(liveness=False)

    def _take_lines(self) -> None:
        assert self.front is not None
        self.received += b"".join(self.front.to_client)
        self.front.to_client.clear()

    def step(self) -> bool:
        moved = False
        if self.session.to_client:
            data = b"".join(self.session.to_client)
            self.session.to_client.clear()
            self._to_client(data)
            moved = True
        if self.session.to_broker:
            decoder = FrameDecoder(1 << 24)
            decoder.receive_data(b"".join(self.session.to_broker))
            self.session.to_broker.clear()
            for payload in decoder.payloads():
                self.hub.broker.receive(self.sid, payload, self.hub.ms)
            moved = True
        if self.session.ended and not self.detached:
            self.detached = True
            self.hub.broker.detach(self.sid, "connection closed", self.hub.ms, "closed")
            moved = True
        return moved


class Hub:
    def __init__(self, tmp_path: Path, **settings: Any) -> None:
        self.config = Config().with_values(parse_settings(settings))
        self.broker = Broker(Store(tmp_path / "history.sqlite3"), self.config)
        # History reads are answered as the reader process does, from its own connection.
        self.reader = Store(tmp_path / "history.sqlite3", readonly=True)
        self.now = 100.0  # the monotonic clock, in seconds (the IRC front ends')
        self.conns: dict[int, Conn] = {}

    @property
    def now_ms(self) -> int:
        """The sessions' clock: the same monotonic clock in milliseconds."""
        return round(self.now * 1000)

    @property
    def ms(self) -> int:
        return EPOCH_MS + int(self.now * 1000)

    def irc(self, nick: str | None = None, caps: str = "") -> Conn:
        conn = self._conn(True)
        if caps:
            conn.send(f"CAP LS 302\r\nCAP REQ :{caps}")
        if nick:
            conn.send(f"NICK {nick}\r\nUSER {nick} 0 * :{nick}" + ("\r\nCAP END" if caps else ""))
            assert any(line.command == "001" for line in conn.lines())
        return conn

    def native(self, nick: str | None = None) -> Conn:
        conn = self._conn(False)
        if nick:
            conn.request(type="hello", version=1, nick=nick)
            assert conn.frames()[-1]["type"] == "welcome"
        return conn

    def _conn(self, irc: bool) -> Conn:
        sid = len(self.conns) + 1
        self.conns[sid] = conn = Conn(self, sid, irc)
        return conn

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for conn in self.conns.values():
            conn.session.tick(self.now_ms)
        self.pump()

    def pump(self) -> None:
        """Move everything until nothing moves (each step is one loop's work)."""
        for _ in range(10_000):
            moved = any([conn.step() for conn in self.conns.values()])
            out = self.broker.drain()
            for sid, items in out.items():
                conn = self.conns[sid]
                for item in items:
                    if isinstance(item, dict):
                        conn.session.control(item)
                    else:
                        conn._to_client(item)
                moved = True
            if self.broker.history.reads:
                answer_reads(self.broker, self.reader)
                moved = True
            if not moved:
                return
        raise AssertionError("the cores never went quiet")
