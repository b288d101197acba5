"""The client's Connection without a server: an in-memory stream, a virtual clock and an
injected random source (tests/fakeconn.py). Reconnects, back-off with jitter, dead-server
detection, the state machine and how a connection ends, all in virtual time.
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
from fakeconn import FakeClock, FakeOpener, FakeStream, refused
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from chat_client.buffer import SERVER
from chat_client.connection import Connection, backoff_delay
from chat_client.core import Core
from chat_client.lifecycle import (
    TRANSITIONS,
    BadFrame,
    BadTransition,
    ConnectError,
    ConnectionEnded,
    ConnectionLost,
    ConnectTimeout,
    ConnState,
    HelloRefused,
    ServerClosed,
    ServerSilent,
    map_exceptions,
)
from chat_client.tui import ChatUI

S = ConnState


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


class Rig:
    """A Core and a Connection on a fake clock and opener; records every state."""

    def __init__(self, *plan: FakeStream | BaseException, rand: Iterator[float] | None = None,
                 rooms: tuple[str, ...] = (), **opts: Any) -> None:
        self.time = FakeClock()
        self.core = Core("alice", list(rooms), clock=self.time.clock())
        self.opener = FakeOpener(self.time, *plan)
        self.rands = rand if rand is not None else iter(lambda: 0.5, None)
        self.states: list[ConnState] = []
        self.conn = Connection(self.opener, self.core, on_change=self._changed,
                               rand=lambda: next(self.rands), **opts)
        self.task: asyncio.Task[None] | None = None

    def _changed(self) -> None:
        if not self.states or self.states[-1] is not self.conn.state:
            self.states.append(self.conn.state)

    def start(self) -> None:
        self.task = asyncio.create_task(self.conn.run())

    async def until(self, pred: Callable[[], Any], within: float = 3600.0) -> None:
        await self.time.run_until(pred, within)

    async def welcomed(self, stream: FakeStream) -> None:
        await self.until(lambda: stream.sent("hello"))
        stream.welcome()
        await self.until(lambda: self.conn.state is S.CONNECTED)

    async def result(self) -> BaseException | None:
        """How run() ended: None for a plain return, else its exception."""
        assert self.task is not None
        await self.until(self.task.done)
        return self.task.exception()

    def server_notes(self) -> list[str]:
        return [line.text for line in self.core.model.buffers[SERVER].lines]


# Back-off ---------------------------------------------------------------------------

def test_backoff_doubles_up_to_the_cap_with_jitter_from_the_random_source() -> None:
    low = [backoff_delay(n, 0.5, 30.0, rand=lambda: 0.0) for n in range(9)]
    high = [backoff_delay(n, 0.5, 30.0, rand=lambda: 1.0) for n in range(9)]
    assert high == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert low == [d / 2 for d in high]  # jitter spreads each delay over [d/2, d]
    assert backoff_delay(10_000, 0.5, 30.0, rand=lambda: 1.0) == 30.0  # no overflow


def test_reconnects_with_backoff_and_jitter_then_starts_over_after_a_welcome() -> None:
    async def test() -> None:
        first, second = FakeStream(), FakeStream()
        rig = Rig(refused(), refused(), refused(), first, refused(), second,
                  rand=iter([0.0, 1.0, 0.5, 0.5, 0.0]), backoff_base=1.0, backoff_cap=3.0)
        rig.start()
        await rig.until(lambda: rig.opener.opened)
        # Three refusals: ceilings 1, 2, 3 (capped); jitter 0.0, 1.0, 0.5 of each upper half.
        at = rig.opener.attempts
        gaps = [b - a for a, b in zip(at, at[1:], strict=False)]
        assert gaps == [0.5, 2.0, 2.25]
        assert rig.time.slept[:3] == [0.5, 2.0, 2.25]  # the clock's sleep, not asyncio's
        assert any(n == "cannot connect to fake:7777: Connection refused; "
                   "reconnecting in 2.2s" for n in rig.server_notes())
        await rig.welcomed(first)
        first.close()  # it worked for a while, so the back-off starts over at the base
        await rig.until(lambda: len(rig.opener.opened) == 2)
        # Why it ended is said once: in every buffer, then when the next try is.
        notes = rig.server_notes()
        gone = notes.index("disconnected: connection closed by the server")
        assert notes[gone + 1] == "reconnecting in 0.8s", notes
        assert [b - a for a, b in zip(at[3:], at[4:], strict=False)] == [0.75, 1.0]
        await rig.welcomed(second)
        assert rig.conn.welcomed_once and rig.core.registered

    run(test)


def test_the_status_bar_countdown_reads_the_injected_monotonic_clock() -> None:
    async def test() -> None:
        rig = Rig(refused(), FakeStream(), rand=iter(lambda: 1.0, None), backoff_base=8.0)
        with create_pipe_input() as pipe:
            ui = ChatUI(rig.core, pipe, DummyOutput())

            def status() -> str:
                return "".join(text for _, text in ui.status())

            assert "connecting…" in status()
            rig.start()
            await rig.until(lambda: rig.conn.state is S.RECONNECTING)
            m = rig.core.model
            assert m.conn_state is S.RECONNECTING and m.retry_at == rig.time.now + 8.0
            assert "reconnecting in 8s" in status()
            await rig.time.advance(5.0)
            assert "reconnecting in 3s" in status()
            await rig.until(lambda: rig.conn.state is S.HANDSHAKE)
            assert m.retry_at is None and "connecting…" in status()
        assert rig.task is not None
        rig.task.cancel()
        await rig.time.settle()

    run(test)


# Dead-server detection ------------------------------------------------------------------

def test_a_silent_server_is_dropped_after_dead_after_and_a_new_connection_made() -> None:
    async def test() -> None:
        silent, fresh = FakeStream(), FakeStream(auto_pong=True)
        rig = Rig(silent, fresh, keepalive=8.0, dead_after=3.0)
        rig.start()
        await rig.welcomed(silent)
        pinged_at = rig.time.now
        assert len(silent.sent("ping")) == 1  # right after the welcome: a first lag figure
        await rig.until(lambda: rig.conn.state is not S.CONNECTED)
        # Ticks come every min(1, keepalive/4) s; the first after more than 3 s of silence.
        assert rig.time.now == pinged_at + 4.0
        assert isinstance(rig.conn.ended, ServerSilent)
        assert str(rig.conn.ended) == "no answer from the server for 3s"
        assert silent.closed
        assert any("disconnected: no answer from the server for 3s" in line.text
                   for line in rig.core.model.buffers[SERVER].lines)
        await rig.welcomed(fresh)

    run(test)


def test_a_server_that_answers_pings_stays_connected_and_lag_is_measured() -> None:
    async def test() -> None:
        stream = FakeStream(auto_pong=True)
        rig = Rig(stream, keepalive=5.0, dead_after=2.0)
        rig.start()
        await rig.welcomed(stream)
        start = rig.time.now
        with pytest.raises(AssertionError, match="within 120"):
            await rig.until(lambda: rig.conn.state is not S.CONNECTED, within=120.0)
        assert rig.time.now - start >= 119
        assert len(stream.sent("ping")) >= 120 // 5  # one every keepalive seconds
        assert rig.core.model.lag_ms == 0.0  # answered in the same virtual instant
        assert rig.opener.attempts == [1000.0]

    run(test)


def test_any_bytes_after_a_ping_count_as_a_sign_of_life() -> None:
    async def test() -> None:
        stream = FakeStream()
        rig = Rig(stream, keepalive=5.0, dead_after=2.0)
        rig.start()
        await rig.welcomed(stream)
        for _ in range(10):  # no pong ever, but a ping from the server every 1.5 s
            with pytest.raises(AssertionError, match="within"):
                await rig.until(lambda: rig.conn.state is not S.CONNECTED, within=1.5)
            stream.send({"type": "ping", "token": 1})
        await rig.time.settle()
        assert rig.conn.state is S.CONNECTED and rig.time.now >= 1015
        assert len(stream.sent("pong")) == 10

    run(test)


def test_the_keepalive_also_reclaims_a_nick_taken_at_hello() -> None:
    async def test() -> None:
        stream = FakeStream(auto_pong=True)
        rig = Rig(stream, keepalive=4.0)
        rig.start()
        await rig.until(lambda: stream.sent("hello"))
        stream.send({"type": "error", "code": "nick_taken", "message": "in use",
                     "fatal": False, "label": stream.sent("hello")[0]["label"]})
        await rig.until(lambda: len(stream.sent("hello")) == 2)
        stream.welcome(nick="alice_")
        await rig.until(lambda: stream.sent("nick"))
        assert stream.sent("nick")[0]["nick"] == "alice"

    run(test)


# States -------------------------------------------------------------------------------

def test_state_machine_walks_the_documented_transitions() -> None:
    async def test() -> None:
        first, second = FakeStream(), FakeStream()
        rig = Rig(refused(), first, second)
        rig.start()
        await rig.welcomed(first)
        first.close()
        await rig.until(lambda: rig.conn.state is S.HANDSHAKE and len(rig.opener.opened) == 2)
        await rig.welcomed(second)
        quitting = asyncio.create_task(rig.conn.quit("bye"))  # waits for the server
        await rig.time.settle()
        assert second.sent("quit") == [{"type": "quit", "reason": "bye"}]
        assert not quitting.done()
        second.close()
        assert await rig.result() is None
        await rig.until(quitting.done)
        assert rig.states == [S.RECONNECTING, S.CONNECTING, S.HANDSHAKE, S.CONNECTED,
                              S.RECONNECTING, S.CONNECTING, S.HANDSHAKE, S.CONNECTED,
                              S.CLOSED]
        for old, new in zip([S.CONNECTING, *rig.states], rig.states, strict=False):
            assert new in TRANSITIONS[old], (old, new)
        assert rig.core.model.conn_state is S.CLOSED and rig.conn.closed.is_set()

    run(test)


def test_forbidden_transitions_and_a_second_run_are_bugs() -> None:
    async def test() -> None:
        rig = Rig()
        with pytest.raises(BadTransition):
            rig.conn._advance(S.CONNECTED)  # not without a stream and a handshake
        rig.conn._advance(S.CLOSED)
        with pytest.raises(BadTransition):
            await rig.conn.run()
        assert TRANSITIONS[S.CLOSED] == frozenset()

    run(test)


def test_cancelling_during_the_backoff_closes() -> None:
    async def test() -> None:
        rig = Rig(backoff_base=60.0)
        rig.start()
        await rig.until(lambda: rig.conn.state is S.RECONNECTING)
        assert rig.task is not None
        rig.task.cancel()
        await rig.time.settle()
        assert rig.task.cancelled() and rig.conn.state is S.CLOSED

    run(test)


# How it ends ---------------------------------------------------------------------------

@pytest.mark.parametrize(("error", "kind", "text"), [
    (refused(), ConnectError, "cannot connect to fake:7777: Connection refused"),
    (TimeoutError(), ConnectTimeout, "cannot connect to fake:7777: timed out"),
    (OSError(errno.EHOSTUNREACH, "x"), ConnectError, "No route to host"),
])
def test_first_failure_fatal_raises_why_it_could_not_connect(
        error: BaseException, kind: type[ConnectionEnded], text: str) -> None:
    async def test() -> None:
        rig = Rig(error, first_failure_fatal=True)
        rig.start()
        exc = await rig.result()
        assert type(exc) is kind and text in str(exc)
        assert isinstance(exc.__cause__, type(error))  # map_exceptions chains the cause
        assert rig.conn.state is S.CLOSED and len(rig.opener.attempts) == 1

    run(test)


def test_first_failure_fatal_no_longer_applies_once_welcomed() -> None:
    async def test() -> None:
        first, second = FakeStream(), FakeStream()
        rig = Rig(first, refused(), second, first_failure_fatal=True)
        rig.start()
        await rig.welcomed(first)
        first.fail(ConnectionResetError(errno.ECONNRESET, "reset"))
        await rig.welcomed(second)
        assert len(rig.opener.attempts) == 3

    run(test)


def test_a_refused_hello_ends_the_run_with_hello_refused_and_no_retry() -> None:
    async def test() -> None:
        stream = FakeStream()
        rig = Rig(stream, FakeStream())
        rig.start()
        await rig.until(lambda: stream.sent("hello"))
        stream.send({"type": "error", "code": "unsupported_version", "message": "no",
                     "fatal": False, "label": stream.sent("hello")[0]["label"],
                     "supported": [2]})
        exc = await rig.result()
        assert isinstance(exc, HelloRefused) and exc.code == "unsupported_version"
        assert str(exc) == "unsupported_version: no" and not exc.retry
        assert len(rig.opener.attempts) == 1 and stream.closed
        assert rig.states[-2:] == [S.HANDSHAKE, S.CLOSED]

    run(test)


def test_a_server_ban_ends_the_run_with_no_retry_even_after_welcome() -> None:
    """A server ban comes without a label (the server refuses the connection, or ends a
    session the ban matches): reconnecting would only be refused again."""
    async def test() -> None:
        stream = FakeStream()
        rig = Rig(stream, FakeStream())
        rig.start()
        await rig.welcomed(stream)
        stream.send({"type": "error", "code": "server_banned", "fatal": True,
                     "message": "banned from this server: spam"})
        exc = await rig.result()
        assert isinstance(exc, HelloRefused) and not exc.retry
        assert str(exc) == "server_banned: banned from this server: spam"
        assert len(rig.opener.attempts) == 1

    run(test)


@pytest.mark.parametrize(("breakage", "kind", "text"), [
    (lambda s: s.close(), ServerClosed, "connection closed by the server"),
    (lambda s: s.fail(ConnectionResetError(errno.ECONNRESET, "x")), ConnectionLost,
     "connection lost: Connection reset by peer"),
    (lambda s: s.send_raw(b"\xff\xff\xff\xff"), BadFrame,
     "bad frame from the server: frame of 4294967295 bytes is over"),
])
def test_each_way_a_connection_breaks_is_its_own_exception_then_a_reconnect(
        breakage: Callable[[FakeStream], None], kind: type[ConnectionEnded], text: str) -> None:
    async def test() -> None:
        broken, fresh = FakeStream(), FakeStream()
        rig = Rig(broken, fresh)
        rig.start()
        await rig.welcomed(broken)
        breakage(broken)
        await rig.until(lambda: rig.conn.ended is not None)
        assert type(rig.conn.ended) is kind and str(rig.conn.ended).startswith(text)
        assert rig.conn.ended.retry and broken.closed
        assert any(n.startswith(f"disconnected: {text}") for n in rig.server_notes())
        await rig.welcomed(fresh)

    run(test)


def test_quit_returns_after_a_bounded_wait_when_the_server_never_closes() -> None:
    async def test() -> None:
        stream = FakeStream()
        rig = Rig(stream)
        rig.start()
        await rig.welcomed(stream)
        start = rig.time.now
        quitting = asyncio.create_task(rig.conn.quit(timeout=2.0))
        await rig.until(quitting.done)
        assert rig.time.now - start == 2.0 and stream.sent("quit")
        assert rig.task is not None
        rig.task.cancel()
        await rig.time.settle()
        assert rig.conn.state is S.CLOSED

    run(test)


def test_map_exceptions_maps_the_first_matching_type_and_passes_the_rest() -> None:
    table: dict[type[BaseException], type[ConnectionEnded]] = {
        TimeoutError: ConnectTimeout, OSError: ConnectError}
    with pytest.raises(ConnectTimeout, match="^x: timed out$"), map_exceptions(table, "x: "):
        raise TimeoutError  # a subclass of OSError: the first key wins
    with pytest.raises(ConnectError, match="Connection refused") as info, map_exceptions(table):
        raise refused()
    assert isinstance(info.value.__cause__, ConnectionRefusedError)
    with pytest.raises(KeyError), map_exceptions(table):
        raise KeyError("a bug stays a bug")
    already = ServerClosed()
    with pytest.raises(ServerClosed) as passed, map_exceptions({Exception: ConnectionLost}):
        raise already
    assert passed.value is already
