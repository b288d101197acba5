"""A raw-socket IRC client for the integration tests: lines out, parsed lines back."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable

from wire import recv_by

from chatd.irc import Line, parse

CAPS = ("message-tags server-time echo-message labeled-response batch draft/chathistory "
        "extended-join userhost-in-names")


class IrcClient:
    """One TCP connection speaking IRC, with a backlog of the lines not yet waited for."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.buffer = b""
        self.backlog: list[Line] = []
        self.closed = False

    def send(self, *lines: str) -> None:
        self.sock.sendall(b"".join(line.encode() + b"\r\n" for line in lines))

    def _read_more(self, deadline: float) -> bool:
        data = recv_by(self.sock, deadline)
        if data is None:
            return False
        if not data:
            self.closed = True
            return False
        self.buffer += data
        *whole, self.buffer = self.buffer.split(b"\r\n")
        self.backlog += [parse(raw) for raw in whole]
        return True

    def wait(self, pred: Callable[[Line], bool], timeout: float | None = None) -> Line:
        """Return (and remove) the first line matching pred, reading as needed."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            for i, line in enumerate(self.backlog):
                if pred(line):
                    return self.backlog.pop(i)
            if self.closed or not self._read_more(deadline):
                raise TimeoutError(f"no matching line (closed={self.closed}); backlog: "
                                   f"{[str(x) for x in self.backlog[-8:]]}")

    def wait_command(self, command: str, *params: str, timeout: float | None = None) -> Line:
        """The next `command` line whose parameters start with `params`."""
        return self.wait(lambda x: x.command == command
                         and x.params[:len(params)] == list(params), timeout)

    def register(self, nick: str, caps: str = CAPS) -> Line:
        if caps:
            self.send("CAP LS 302", f"CAP REQ :{caps}")
        self.send(f"NICK {nick}", f"USER {nick} 0 * :{nick}")
        if caps:
            ack = self.wait_command("CAP", "*", "ACK")
            assert set(ack.params[-1].split()) == set(caps.split()), ack
            self.send("CAP END")
        return self.wait_command("001", nick)

    def wait_closed(self, timeout: float | None = None) -> list[Line]:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self.closed:
            if not self._read_more(deadline) and not self.closed:
                raise TimeoutError("connection did not close")
        return self.backlog

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def irc_connect(server: object, nick: str | None = None, caps: str = CAPS) -> IrcClient:
    client = IrcClient(server.host, server.irc_port)  # type: ignore[attr-defined]
    if nick:
        client.register(nick, caps)
    return client
