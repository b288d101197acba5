"""The load generator's IRC wire: the same client connection as load.Conn, in IRC lines.

`chatd bench irc` drives chatd's IRC port, ngIRCd and InspIRCd with the scenarios of
clients.py; this module is all that differs from the native generator. A connection
registers (NICK, USER -> 001), joins its room (JOIN -> 366), sends PRIVMSG lines and
counts the PRIVMSGs it receives with their latency, exactly as load.Conn counts native
messages: each text ends with its send time (monotonic ns), and "nick:seq" in it names
the message (IRC has no message ids). No IRC server sends a sender its own message back
without the echo-message capability, which is not asked for: `echo` is False. Every
request the scenarios make (a broker round trip in the native protocol) is a PING here,
answered by the PONG with its token.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .load import BaseConn, StampedSocket, Stats, connect, open_session

ERRORS = frozenset({b"ERROR", b"KILL"})  # the server ends the connection
NOT_ERRORS = frozenset({b"422"})  # "MOTD file is missing": a numeric in the 4xx range


class IrcConn(BaseConn):
    """One IRC client connection; counts deliveries with their latency as lines arrive."""

    echo = False  # a sender does not receive its own messages

    def __init__(self, stats: Stats, nick: str, room: str | None,
                 sock: StampedSocket | None = None) -> None:
        super().__init__(stats, nick, room, sock)
        self.buf = b""
        self.seen: set[bytes] = set()

    def send(self, *lines: str) -> None:
        assert self.transport is not None
        self.transport.write("".join(f"{line}\r\n" for line in lines).encode())

    def expect(self, label: Any) -> asyncio.Future[dict[str, Any]]:
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.replies[label] = fut
        return fut

    def request(self, obj: dict[str, Any], label: Any) -> asyncio.Future[dict[str, Any]]:
        """A round trip (whatever `obj` asks of a native server): PING, answered by PONG."""
        fut = self.expect(str(label))
        self.send(f"PING :{label}")
        return fut

    def msg(self, text: str) -> bytes:
        return f"PRIVMSG {self.room} :{text}\r\n".encode()

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        lines = (self.buf + data).split(b"\r\n")
        self.buf = lines.pop()
        stats = self.stats
        tag = stats.tag.encode()
        got = 0
        arrived = self.arrived()
        for line in lines:
            parts = line.split(b" ", 3)
            if len(parts) < 2:
                continue
            if not parts[0].startswith(b":"):  # a command without a prefix: PING, ERROR
                parts.insert(0, b"")
            command = parts[1]
            if command == b"PRIVMSG" and len(parts) == 4:
                text = parts[3].partition(b":")[2]
                if not text.startswith(tag):
                    stats.foreign += 1
                    continue
                key, _, sent = text.rpartition(b" ")
                if key in self.seen:
                    stats.duplicates += 1
                    continue
                self.seen.add(key)
                got += 1
                stats.latencies.append(now - int(sent))
                if arrived:
                    stats.arrivals.append(arrived - int(sent))
            else:
                self.other(command, parts)
        if got:
            stats.received += got
            stats.check_done()

    def other(self, command: bytes, parts: list[bytes]) -> None:
        """Anything but a PRIVMSG: registration and join replies, PING, PONG, errors."""
        rest = parts[2:]
        if command == b"PING":
            self.send(f"PONG {b' '.join(rest).decode(errors='replace')}")
        elif command in (b"PONG", b"001", b"366"):
            token = {b"PONG": rest[-1].rsplit(b":", 1)[-1].decode(errors="replace"),
                     b"001": "001", b"366": "366"}[command]
            fut = self.replies.pop(token, None)
            if fut is not None and not fut.done():
                fut.set_result({"type": command.decode()})
        elif command in ERRORS or (len(command) == 3 and command[:1] in (b"4", b"5")
                                     and command not in NOT_ERRORS):
            name = command.decode(errors="replace")
            self.stats.errors[name] += 1
            for fut in self.replies.values():  # during registration or join: refused
                if not fut.done():
                    fut.set_result({"type": "error", "code": name})


async def open_irc_session(host: str, port: int, stats: Stats, nick: str, room: str | None,
                           timeout: float,
                           local_addr: tuple[str, int] | None = None) -> IrcConn:
    """Connect, register and (with a room) join; ConnectionError if either is refused."""
    conn = await connect(lambda sock: IrcConn(stats, nick, room, sock), host, port, timeout,
                         local_addr)
    try:
        steps = [("001", [f"NICK {nick}", f"USER {nick} 0 * :chatd bench"])]
        if room is not None:
            steps.append(("366", [f"JOIN {room}"]))
        for label, lines in steps:
            waiting = conn.expect(label)
            conn.send(*lines)
            reply = await asyncio.wait_for(waiting, timeout)
            if reply.get("type") == "error":
                raise ConnectionError(reply.get("code", "error"))
    except BaseException:
        conn.close()
        raise
    return conn


Opener = Callable[[str, int, Stats, str, "str | None", float], Awaitable[BaseConn]]
WIRES: dict[str, Opener] = {"native": open_session, "irc": open_irc_session}


def opener(wire: str) -> Opener:
    """How a client of this wire connects: `open_session` (native) or the IRC one."""
    return WIRES[wire]
