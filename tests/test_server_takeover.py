"""Takeover of a half-open session against the real server (protocol.md §2, "Taking over
a session"): a client whose link went silent reconnects and is at once back under its
nick, in its rooms, with exactly the messages it missed; a guessed secret takes nothing
over; the old connection is told why it ends."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from accountwire import SETTINGS, login, register
from serverproc import FAST, ServerProcess, kill_quietly, proc_stat, wait_until
from wire import Client, connect

PASSWORD = "correct horse battery"

# The default ping deadline is 90 s: every takeover below happens long before it.
CONFIG: dict[str, Any] = {**FAST, "queues": {"close_grace": 1.0},
                          "keepalive": {"stop_timeout": 0.5}}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path, CONFIG).start()
    yield srv
    srv.stop()


def pid_of(server: ServerProcess, session: str) -> int:
    line = server.wait_for_log(rf"session {session} from \S+: pid \d+")
    return int(line.rsplit("pid ", 1)[1].split()[0])


def resume(server: ServerProcess, old: dict[str, Any], nick: str = "alice",
           **extra: Any) -> tuple[Client, dict[str, Any]]:
    """A new connection whose hello claims `old` (a welcome); (client, its reply)."""
    client = connect(server)
    reply = client.call({"type": "hello", "version": 1, "nick": nick,
                         "session": old["session"], "resume": old["resume"], **extra})
    return client, reply


def no_membership_events(client: Client) -> None:
    client.sync()
    assert [f for f in client.backlog if f["type"] in ("join", "part", "quit")] == []


def test_a_stopped_session_is_taken_over_at_once_with_exact_catch_up(
        server: ServerProcess) -> None:
    bob = connect(server, "bob")
    bob.join("#r")
    alice = connect(server)
    welcome = alice.call({"type": "hello", "version": 1, "nick": "alice"})
    pid = pid_of(server, welcome["session"])
    alice.join("#r")
    alice.join("#s")
    seen = bob.say("#r", "seen")["id"]
    alice.wait_type("message", id=seen)
    bob.backlog.clear()  # alice's join
    os.kill(pid, signal.SIGSTOP)  # the link goes silent: the server notices nothing
    stopped: int | None = pid
    new: Client | None = None
    try:
        lost = [bob.say("#r", f"lost {i}")["id"] for i in range(3)]
        # A guessed secret takes nothing over.
        guess, refused = resume(server, {**welcome, "resume": "0" * 32})
        assert (refused["type"], refused["code"]) == ("error", "nick_taken")
        guess.close()
        new, back = resume(server, welcome)
        assert (back["type"], back["nick"], back["resumed"]) == ("welcome", "alice", True)
        assert back["session"] != welcome["session"] and back["resume"] != welcome["resume"]
        server.wait_for_log(rf"ending session {welcome['session']} .*taken over by session "
                            rf"{back['session']}")
        meanwhile = bob.say("#r", "meanwhile")["id"]
        _joined, history = new.join("#r", after=seen)
        assert [m["id"] for m in history["messages"]] == lost + [meanwhile]
        assert not history["more"]
        live = bob.say("#r", "live")["id"]
        assert new.wait_type("message", room="#r")["id"] == live
        joined, _history = new.join("#s")
        assert joined["members"] == ["alice"]
        no_membership_events(bob)
        # Nothing more for the stopped process: it is killed at its deadline (close_grace +
        # stop_timeout) and its slot freed.
        wait_until(lambda: pid not in server.children(), timeout=10,
                   message="the stopped session to be killed and reaped")
        stopped = None
        no_membership_events(bob)
        assert bob.call({"type": "who", "room": "#r"})["members"] == ["alice", "bob"]
    finally:
        if stopped is not None:
            kill_quietly(stopped, signal.SIGCONT)
        for client in (alice, bob, new):
            if client is not None:
                client.close()


def test_the_old_connection_gets_taken_over_as_its_last_frame(server: ServerProcess) -> None:
    """A connection that went quiet (it does not read) finds the reason when it reads."""
    bob = connect(server, "bob")
    bob.join("#r")
    old = connect(server)
    welcome = old.call({"type": "hello", "version": 1, "nick": "alice"})
    old.join("#r")
    said = bob.say("#r", "before")["id"]
    bob.backlog.clear()
    new, back = resume(server, welcome)
    try:
        assert back["resumed"] is True
        frames = old.wait_closed()
        assert frames[-1] == {"type": "error", "code": "taken_over", "fatal": True,
                              "message": "a new connection took over this session"}
        assert [f["id"] for f in frames if f["type"] == "message"] == [said]
        pid = pid_of(server, welcome["session"])
        wait_until(lambda: proc_stat(pid) is None, message="the old process to exit")
        # The old token is remembered as taken over; it proves nothing any more.
        late, reply = resume(server, welcome, nick="alice2")
        assert reply["resumed"] is False
        assert reply["previous"] == {"code": "taken_over",
                                     "message": "a new connection took over this session"}
        late.close()
        no_membership_events(bob)
    finally:
        for client in (old, new, bob):
            client.close()


def test_a_taken_over_session_can_be_taken_over_again(server: ServerProcess) -> None:
    first = connect(server)
    welcome = first.call({"type": "hello", "version": 1, "nick": "alice"})
    second, again = resume(server, welcome)
    third, stale = resume(server, welcome)  # the first secret was used
    assert stale["code"] == "nick_taken"
    fourth, latest = resume(server, again)
    try:
        assert latest["resumed"] is True and latest["nick"] == "alice"
        assert second.wait_closed()[-1]["code"] == "taken_over"
    finally:
        for client in (first, second, third, fourth):
            client.close()


def resume_as(server: ServerProcess, old: dict[str, Any],
              account: str) -> tuple[Client, dict[str, Any]]:
    """A new connection logged in to `account` whose hello then claims `old`."""
    client = Client(server.host, server.port)
    assert login(client, account, PASSWORD)["type"] == "logged_in"
    return client, client.call({"type": "hello", "version": 1, "nick": account,
                                "session": old["session"], "resume": old["resume"]})


def test_an_account_s_session_is_taken_over_by_that_account_only(start: Any) -> None:
    """protocol.md §2's rule with accounts: the secret alone does not move an account's
    session; the same account logged in before its hello does."""
    server = start({**CONFIG, **SETTINGS})
    dave = connect(server)
    welcome = dave.call({"type": "hello", "version": 1, "nick": "dave"})
    assert register(dave, "dave", PASSWORD)["type"] == "registered"
    dave.join("#r")
    made = [dave]
    try:
        guest, refused = resume(server, welcome, nick="dave")
        made.append(guest)
        assert refused["type"] == "error" and refused["code"] in ("nick_owned", "nick_taken")
        mallory = connect(server)
        made.append(mallory)
        assert register(mallory, "mallory", PASSWORD)["type"] == "registered"
        other, reply = resume_as(server, welcome, "mallory")
        made.append(other)
        assert (reply["type"], reply["nick"], reply["resumed"]) == ("welcome", "mallory", False)
        owner, back = resume_as(server, welcome, "dave")
        made.append(owner)
        assert (back["type"], back["nick"], back["resumed"]) == ("welcome", "dave", True)
        assert dave.wait_closed()[-1]["code"] == "taken_over"
        joined, _history = owner.join("#r")
        assert joined["members"] == ["dave"]
    finally:
        for client in made:
            client.close()


def test_the_secret_outlives_an_upgrade_in_place(server: ServerProcess) -> None:
    old = connect(server)
    welcome = old.call({"type": "hello", "version": 1, "nick": "alice"})
    old.join("#r")
    mark = server.mark()
    server.signal(signal.SIGUSR2)
    server.wait_for_log(r"upgraded: pid \d+ serves 1 sessions", start=mark, timeout=30)
    new, back = resume(server, welcome)
    try:
        assert (back["type"], back["nick"], back["resumed"]) == ("welcome", "alice", True)
        assert old.wait_closed()[-1]["code"] == "taken_over"
        joined, _history = new.join("#r")
        assert joined["members"] == ["alice"]
    finally:
        old.close()
        new.close()
