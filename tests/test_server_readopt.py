"""Integration: `kill -9` of the parent, then a new `chatd serve` on the same data dir
adopts the sessions the dead one left: the clients keep their connections, nicks and
rooms, and get every message once, in order."""

from __future__ import annotations

import os
import re
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from accountwire import SETTINGS, logged_in, register
from serverproc import (
    FAST,
    ServerProcess,
    newest_session,
    reap,
    set_child_subreaper,
    wait_until,
)
from wire import Client, connect

from chatd.adopt import discover

CONFIG = {**FAST, "keepalive": {"broker_grace": 30.0}}


@pytest.fixture
def subreaper() -> Iterator[None]:
    """Orphaned sessions become ours: the test can see them end, and none is left."""
    if not set_child_subreaper(True):
        pytest.skip("cannot become a child subreaper to watch the orphans")
    yield
    set_child_subreaper(False)


def texts(client: Client, room: str, count: int) -> list[str]:
    return [f["text"] for f in client.messages(room, count, timeout=30)]


def test_server_readopts_sessions_after_kill9_and_they_catch_up(
        tmp_path: Path, subreaper: None) -> None:
    first = ServerProcess(tmp_path, CONFIG).start()
    alice, bob = connect(first, "alice"), connect(first, "bob")
    for c in (alice, bob):
        c.join("#r")
    alice.sync()
    alice.say("#r", "one")
    assert texts(bob, "#r", 1) == ["one"] and texts(alice, "#r", 1) == ["one"]
    # and one that never said hello: nothing to adopt, so no parent waits for it
    mark = first.mark()
    lurker = socket.create_connection(("127.0.0.1", first.port))
    lurker.send(b"\x00")
    lurker_pid = newest_session(first, mark)[1]
    sessions = sorted(first.children())  # (and the history reader)
    os.kill(first.pid, signal.SIGKILL)
    assert first.wait_exit(10) == -signal.SIGKILL
    # The lurker's session closes its adoption socket once it sees its parent gone: a
    # next parent started before that (the session had not run yet) would still find it.
    wait_until(lambda: lurker_pid not in [pid for pid, _addr in discover(tmp_path)],
               timeout=30, message="the lurker's session to close its adoption socket")
    # While no parent runs, bob's request waits in his session.
    during = bob.request({"type": "msg", "room": "#r", "text": "two"})
    second = ServerProcess(tmp_path, CONFIG).start()
    try:
        second.wait_for_log(r"adoption: 2 sessions of an earlier parent found")
        # (each may register until broker_grace)
        second.wait_for_log(r"adopted session \S+ \(pid \d+\) as alice", timeout=30)
        second.wait_for_log(r"adopted session \S+ \(pid \d+\) as bob", timeout=30)
        assert bob.reply(during, timeout=30)["type"] == "ack"
        carol = connect(second, "carol")
        carol.join("#r")
        carol.say("#r", "three")
        for c in (alice, bob):
            assert texts(c, "#r", 2) == ["two", "three"]  # no gap, no duplicate
            assert not c.pending("error"), c.pending("error")
        # the nicks are still theirs, in the new parent's broker too
        err = connect(second, None)
        err.send({"type": "hello", "version": 1, "nick": "alice"})
        assert err.wait_type("error")["code"] == "nick_taken"
        err.close()
        members = carol.call({"type": "who", "room": "#r"})["members"]
        assert sorted(members) == ["alice", "bob", "carol"]
        carol.close()
        alice.close()
        bob.close()
        lurker.close()
    finally:
        assert second.stop() == 0
    for pid in sessions:  # every session of the first parent has ended (we reap them)
        if pid in second.children():
            continue
        reap(pid, 30)
    assert not [p for p in sessions if os.path.exists(f"/proc/{p}")]


def test_a_readopted_session_in_a_quiet_room_gets_nothing_twice(
        tmp_path: Path, subreaper: None) -> None:
    """alice's session forwarded no `message` frame (she caught up with `join … after`
    the newest id, and nobody spoke since): after the crash she gets what is said next,
    and not the room's history again."""
    first = ServerProcess(tmp_path, CONFIG).start()
    bob = connect(first, "bob")
    bob.join("#r")
    said = [bob.say("#r", f"old {i}")["id"] for i in range(3)]
    alice = connect(first, "alice")
    _joined, history = alice.join("#r", after=said[-1])  # as a reconnecting client does
    assert history["messages"] == []
    alice.sync()
    os.kill(first.pid, signal.SIGKILL)
    first.wait_exit(10)
    second = ServerProcess(tmp_path, CONFIG).start()
    try:
        second.wait_for_log(r"adopted session \S+ \(pid \d+\) as alice")
        second.wait_for_log(r"adopted session \S+ \(pid \d+\) as bob")
        new = bob.say("#r", "new")["id"]
        alice.wait_type("message", id=new, timeout=30)
        alice.sync()
        assert [f["id"] for f in alice.backlog if f["type"] == "message"] == []
        alice.close()
        bob.close()
    finally:
        assert second.stop() == 0


def test_server_readopts_nothing_it_cannot_verify(tmp_path: Path, subreaper: None) -> None:
    """A session of a server with another key is refused, clearly, and ends."""
    first = ServerProcess(tmp_path, CONFIG).start()
    alice = connect(first, "alice")
    alice.join("#r")
    os.kill(first.pid, signal.SIGKILL)
    first.wait_exit(10)
    (tmp_path / "session.key").write_bytes(os.urandom(32))  # as if another server's
    second = ServerProcess(tmp_path, CONFIG).start()
    try:
        second.wait_for_log(r"session pid \d+ refused: its state is not signed")
        err = alice.wait_type("error", timeout=30)
        assert err["code"] == "server_gone" and "not signed" in err["message"], err
        alice.wait_closed(30)
    finally:
        assert second.stop() == 0


def test_server_upgrade_keeps_the_sessions_it_adopted(tmp_path: Path, subreaper: None) -> None:
    first = ServerProcess(tmp_path, CONFIG).start()
    alice, bob = connect(first, "alice"), connect(first, "bob")
    for c in (alice, bob):
        c.join("#r")
    os.kill(first.pid, signal.SIGKILL)
    first.wait_exit(10)
    second = ServerProcess(tmp_path, CONFIG).start()
    try:
        second.wait_for_log(r"adopted session \S+ \(pid \d+\) as bob")
        mark = second.mark()
        second.signal(signal.SIGUSR2)
        second.wait_for_log(r"upgraded: pid \d+ serves 2 sessions", start=mark, timeout=30)
        alice.say("#r", "after the upgrade")
        assert texts(bob, "#r", 1) == ["after the upgrade"]
        # its end is still seen (through the pidfd the new code inherited): not our child
        alice.close()
        second.wait_for_log(r"session \S+ \(pid \d+\) ended", start=mark)
        assert bob.wait_type("quit", nick="alice")["reason"] == "connection closed"
        bob.close()
    finally:
        assert second.stop() == 0


def test_server_readopt_catches_up_what_was_said_before_a_session_registered(
        tmp_path: Path, subreaper: None) -> None:
    """alice's session registers late (it is stopped meanwhile): what bob and carol said
    in her room in between reaches her by catch-up, each once, in order."""
    first = ServerProcess(tmp_path, CONFIG).start()
    mark = first.mark()
    alice = connect(first, "alice")
    alice_pid = newest_session(first, mark)[1]
    bob = connect(first, "bob")
    for c in (alice, bob):
        c.join("#r")
    alice.say("#r", "one")
    assert texts(bob, "#r", 1) == ["one"] and texts(alice, "#r", 1) == ["one"]
    os.kill(first.pid, signal.SIGKILL)
    first.wait_exit(10)
    os.kill(alice_pid, signal.SIGSTOP)  # (the session we started; it cannot register)
    second = ServerProcess(tmp_path, CONFIG).start()
    try:
        second.wait_for_log(r"adopted session \S+ \(pid \d+\) as bob")
        bob.say("#r", "two")
        carol = connect(second, "carol")  # (after HOLD: alice has not registered)
        carol.join("#r")
        carol.say("#r", "three")
        assert texts(bob, "#r", 2) == ["two", "three"]
        os.kill(alice_pid, signal.SIGCONT)
        second.wait_for_log(r"adopted session \S+ \(pid \d+\) as alice")
        assert texts(alice, "#r", 2) == ["two", "three"]  # no gap, no duplicate
        carol.say("#r", "four")  # and live again
        assert texts(alice, "#r", 1) == ["four"]
        for c in (alice, bob, carol):
            c.close()
    finally:
        os.kill(alice_pid, signal.SIGCONT)
        assert second.stop() == 0


def test_server_readopts_both_sessions_of_an_account(tmp_path: Path, subreaper: None) -> None:
    """Two sessions of one account outlive a kill -9 of the parent: the new parent adopts
    both (they share the account's nick) and routes the account's DMs to each."""
    config = {**CONFIG, **SETTINGS}
    first = ServerProcess(tmp_path, config).start()
    phone, laptop = Client(first.host, first.port), Client(first.host, first.port)
    phone.hello("nia")
    assert register(phone, "nia", "a long password")["type"] == "registered"
    logged_in(laptop, "nia", "a long password")
    phone.sync()
    laptop.sync()
    os.kill(first.pid, signal.SIGKILL)
    first.wait_exit(10)
    second = ServerProcess(tmp_path, config).start()
    try:
        wait_until(lambda: len([line for line in second.lines
                                if re.search(r"adopted session \S+ \(pid \d+\) as nia", line)])
                   == 2, timeout=30)
        bob = connect(second, "bob")
        bob.call({"type": "msg", "to": "nia", "text": "after the crash"})
        for device in (phone, laptop):
            assert device.wait_type("message", to="nia", timeout=30)["text"] == \
                "after the crash"
        third = Client(second.host, second.port)
        logged_in(third, "nia", "a long password")
        for c in (phone, laptop, bob, third):
            c.close()
    finally:
        assert second.stop() == 0


def test_an_adopted_session_can_still_be_taken_over(tmp_path: Path, subreaper: None) -> None:
    """The resume secret outlives the parent (it is in the session's signed state): after a
    kill -9 and a re-adoption, alice's link goes silent and her client takes the adopted
    session over at once, under her nick, with exactly what she missed."""
    first = ServerProcess(tmp_path, CONFIG).start()
    mark = first.mark()
    alice = connect(first)
    welcome = alice.call({"type": "hello", "version": 1, "nick": "alice"})
    alice_pid = newest_session(first, mark)[1]
    bob = connect(first, "bob")
    for c in (alice, bob):
        c.join("#r")
    seen = bob.say("#r", "seen")["id"]
    alice.wait_type("message", id=seen)
    os.kill(first.pid, signal.SIGKILL)
    first.wait_exit(10)
    second = ServerProcess(tmp_path, CONFIG).start()
    new: Client | None = None
    stopped: int | None = None
    try:
        second.wait_for_log(r"adopted session \S+ \(pid \d+\) as alice")
        second.wait_for_log(r"adopted session \S+ \(pid \d+\) as bob")
        bob.backlog.clear()
        os.kill(alice_pid, signal.SIGSTOP)  # her link goes silent; the server sees nothing
        stopped = alice_pid
        missed = bob.say("#r", "missed")["id"]
        new = connect(second)
        back = new.call({"type": "hello", "version": 1, "nick": "alice",
                         "session": welcome["session"], "resume": welcome["resume"]})
        assert (back["type"], back["nick"], back["resumed"]) == ("welcome", "alice", True)
        _joined, history = new.join("#r", after=seen)
        assert [m["id"] for m in history["messages"]] == [missed]
        bob.sync()
        assert [f for f in bob.backlog if f["type"] in ("join", "part", "quit")] == []
        reap(alice_pid, 30)  # killed at its deadline through its pidfd (not the parent's child)
        stopped = None
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        for c in (alice, bob, new):
            if c is not None:
                c.close()
        assert second.stop() == 0
