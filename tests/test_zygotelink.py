"""The parent's link to its fork server (chatd/zygotelink.py), driven over a real
SOCK_SEQPACKET pair whose far end plays the fork server, with the clock moved by hand.

A fork server answers every spare it is asked for (a pid with the spare's channel, or -1
when a fork failed) for as long as it lives; a slow one must not be asked again for what
it still owes, or those spares come on top, unwanted, and are forked only to be retired.
"""

from __future__ import annotations

import selectors
import socket
from collections.abc import Iterator

import pytest

from chatd import zygote, zygotelink
from chatd.config import Config
from chatd.zygotelink import ZygoteLink

pytestmark = pytest.mark.timeout(10)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(zygotelink.time, "monotonic", fake)
    return fake


@pytest.fixture
def pair() -> Iterator[tuple[ZygoteLink, socket.socket, list[int]]]:
    """(the link, the fork server's end of its channel, the pids handed to on_spare)."""
    ours, server = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    server.setblocking(False)
    sel = selectors.DefaultSelector()
    got: list[int] = []

    def on_spare(pid: int, chan: socket.socket) -> None:
        got.append(pid)
        chan.close()

    link = ZygoteLink(Config(), sel, on_spare, lambda: None)
    link.chan, link.pid = ours, 4242
    sel.register(ours, selectors.EVENT_READ, link.ready)
    yield link, server, got
    sel.close()
    ours.close()
    server.close()


def requested(server: socket.socket) -> list[int]:
    """The counts the parent has asked for so far (zygote.fork_request messages)."""
    counts: list[int] = []
    while True:
        try:
            data = server.recv(64)
        except BlockingIOError:
            return counts
        assert data[:1] == zygote.FORK
        counts.append(zygote.COUNT.unpack_from(data, 1)[0])


def answer(server: socket.socket, pid: int) -> None:
    """The fork server hands over a spare (pid > 0, with a channel end) or a failure."""
    if pid > 0:
        mine, theirs = socket.socketpair()
        socket.send_fds(server, [zygote.PID.pack(pid)], [theirs.fileno()])
        mine.close()
        theirs.close()
    else:
        server.send(zygote.PID.pack(pid))


def test_a_slow_fork_server_is_not_asked_again_for_what_it_owes(
        pair: tuple[ZygoteLink, socket.socket, list[int]], clock: Clock) -> None:
    link, server, got = pair
    link.ask(4)
    assert requested(server) == [4]
    assert link.asked == 4
    clock.now += 60.0  # a loaded machine: nothing for a minute
    assert link.stalled(clock.now, 2.0)
    link.ask(0)  # the pool's next turn: it wants nothing beyond what is owed
    assert link.asked == 4
    assert requested(server) == []
    for pid in (101, -1, 102, 103):  # one fork failed
        answer(server, pid)
    link.ready(link.chan, selectors.EVENT_READ)  # type: ignore[arg-type]
    assert got == [101, 102, 103]
    assert link.asked == 0
    assert not link.stalled(clock.now, 2.0)


def test_asks_stop_at_max_asked_and_resume_as_spares_come(
        pair: tuple[ZygoteLink, socket.socket, list[int]], clock: Clock) -> None:
    link, server, got = pair
    link.ask(zygotelink.MAX_ASKED + 10)
    link.ask(5)
    assert requested(server) == [zygotelink.MAX_ASKED]
    answer(server, 200)
    answer(server, 201)
    link.ready(link.chan, selectors.EVENT_READ)  # type: ignore[arg-type]
    assert got == [200, 201]
    link.ask(5)
    assert requested(server) == [2]
    assert link.asked == zygotelink.MAX_ASKED


def test_a_lost_fork_server_owes_nothing(
        pair: tuple[ZygoteLink, socket.socket, list[int]], clock: Clock) -> None:
    link, server, _got = pair
    link.running = True
    link.ask(3)
    server.close()  # it died: its channel reads as the end
    link.ready(link.chan, selectors.EVENT_READ)  # type: ignore[arg-type]
    assert not link.up
    assert link.asked == 0
    assert link.restart_at is not None
