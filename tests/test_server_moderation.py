"""Integration: moderation on the real `chatd serve` (protocol.md §14): operators, the
events the room sees, bans with expiry, mutes, invite-only and keys, what survives a
restart, and how an IRC client sees a kick. No sleeps: each step waits with a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ircwire import irc_connect
from serverproc import FAST, ServerProcess
from wire import Client, Frame, connect


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path, {**FAST, "irc": {"port": -1}}).start()
    yield srv
    assert srv.stop() == 0


@pytest.fixture
def make(server: ServerProcess) -> Iterator[Callable[..., Client]]:
    made: list[Client] = []

    def make_client(nick: str, srv: ServerProcess | None = None) -> Client:
        client = connect(srv or server, nick)
        made.append(client)
        return client

    yield make_client
    for client in made:
        client.close()


def moderation(client: Client, kind: str) -> Frame:
    return client.wait_type("moderation", kind=kind)


def changed(client: Client, req: dict[str, Any]) -> Frame:
    """Send a change as an operator: its ack, then its event (with the ack's id)."""
    label = client.request(req)
    ack = client.reply(label)
    assert ack["type"] == "ack", ack
    event = moderation(client, req["type"])
    assert event["id"] == ack["id"]
    return event


def test_the_creator_is_operator_and_a_kick_is_seen_by_the_room(
        make: Callable[..., Client]) -> None:
    alice, bob, carol = make("alice"), make("bob"), make("carol")
    for c in (alice, bob, carol):
        c.join("#r")
    assert bob.error({"type": "kick", "room": "#r", "nick": "carol"})["code"] == \
        "not_operator"
    assert alice.call({"type": "mode", "room": "#r"})["operator"] is True
    changed(alice, {"type": "kick", "room": "#r", "nick": "carol", "reason": "bye"})
    for c in (bob, carol):
        event = moderation(c, "kick")
        assert (event["nick"], event["by"], event["reason"]) == ("carol", "alice", "bye")
    assert carol.error({"type": "msg", "room": "#r", "text": "x"})["code"] == "not_in_room"
    assert bob.call({"type": "who", "room": "#r"})["members"] == ["alice", "bob"]


def test_a_ban_keeps_out_until_it_expires(make: Callable[..., Client]) -> None:
    alice, bob = make("alice"), make("bob")
    alice.join("#r")
    bob.join("#r")
    event = changed(alice, {"type": "ban", "room": "#r", "nick": "b*", "duration": 1})
    assert event["expires"] == event["ts"] + 1000
    assert moderation(bob, "ban")["nick"] == "b*"
    assert bob.error({"type": "msg", "room": "#r", "text": "x"})["code"] == "banned"
    changed(alice, {"type": "kick", "room": "#r", "nick": "bob"})
    assert bob.error({"type": "join", "room": "#r"})["code"] == "banned"
    deadline = time.monotonic() + 10
    while True:  # the ban lapses a second after it was set: joins succeed from then on
        reply = bob.call({"type": "join", "room": "#r"})
        if reply["type"] == "joined":
            bob.wait_type("history")
            break
        assert reply["code"] == "banned" and time.monotonic() < deadline, reply
    assert bob.say("#r", "back")["type"] == "ack"


def test_mute_key_invite_only_and_invite(make: Callable[..., Client]) -> None:
    alice, bob = make("alice"), make("bob")
    alice.join("#r")
    bob.join("#r")
    changed(alice, {"type": "mute", "room": "#r", "nick": "bob"})
    assert moderation(bob, "mute")["nick"] == "bob"
    assert bob.error({"type": "msg", "room": "#r", "text": "x"})["code"] == "muted"
    event = changed(alice, {"type": "mode", "room": "#r", "invite_only": True, "key": "k",
                            "topic_lock": True})
    assert (event["invite_only"], event["keyed"], event["topic_lock"]) == (True, True, True)
    assert "key" not in moderation(bob, "mode")
    assert bob.error({"type": "topic", "room": "#r", "topic": "t"})["code"] == "not_operator"
    carol = make("carol")
    assert carol.error({"type": "join", "room": "#r", "key": "k"})["code"] == "invite_only"
    changed(alice, {"type": "mode", "room": "#r", "invite_only": False})
    assert carol.error({"type": "join", "room": "#r"})["code"] == "bad_key"
    carol.join("#r", key="k")
    carol.call({"type": "part", "room": "#r"})
    changed(alice, {"type": "mode", "room": "#r", "invite_only": True})
    changed(alice, {"type": "invite", "room": "#r", "nick": "carol"})
    assert carol.wait_type("invited")["by"] == "alice"
    carol.join("#r")
    assert moderation(bob, "invite")["nick"] == "carol"


def test_catch_up_replays_the_events_in_their_place(make: Callable[..., Client]) -> None:
    alice, bob = make("alice"), make("bob")
    alice.join("#r")
    first = alice.say("#r", "one")["id"]
    changed(alice, {"type": "mode", "room": "#r", "topic_lock": True})
    alice.say("#r", "two")
    _joined, history = bob.join("#r", after=first - 1)
    assert [(m["type"], m.get("text", m.get("kind"))) for m in history["messages"]] == \
        [("message", "one"), ("moderation", "mode"), ("message", "two")]


def test_the_policy_survives_a_restart(tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path, FAST).start()
    try:
        with connect(srv, "alice") as alice:
            alice.join("#r")
            changed(alice, {"type": "ban", "room": "#r", "nick": "bob"})
            changed(alice, {"type": "mode", "room": "#r", "key": "k", "topic_lock": True})
    finally:
        assert srv.stop() == 0
    srv = ServerProcess(tmp_path, FAST).start()
    try:
        with connect(srv, "bob") as bob, connect(srv, "dave") as dave:
            assert bob.error({"type": "join", "room": "#r"})["code"] == "banned"
            # nobody operates it any more (alice was a guest): dave's join claims it
            _joined, history = dave.join("#r")
            kinds = [m.get("kind") for m in history["messages"]]
            assert kinds == ["ban", "mode"]
            mode = dave.call({"type": "mode", "room": "#r"})
            assert (mode["keyed"], mode["topic_lock"], mode["operator"]) == (True, True, True)
            with connect(srv, "erin") as erin:
                assert erin.error({"type": "join", "room": "#r"})["code"] == "bad_key"
    finally:
        assert srv.stop() == 0


def test_an_irc_client_sees_the_kick_and_modes(server: ServerProcess,
                                               make: Callable[..., Client]) -> None:
    alice = make("alice")
    alice.join("#r")
    irc = irc_connect(server, "ircbob")
    try:
        irc.send("JOIN #r")
        irc.wait_command("JOIN")
        changed(alice, {"type": "mode", "room": "#r", "invite_only": True})
        mode = irc.wait_command("MODE")
        assert mode.params == ["#r", "+i"]
        changed(alice, {"type": "kick", "room": "#r", "nick": "ircbob", "reason": "out"})
        kick = irc.wait_command("KICK")
        assert kick.params == ["#r", "ircbob", "out"]
    finally:
        irc.close()


def test_an_irc_operator_moderates_with_mode_kick_and_invite(
        server: ServerProcess, make: Callable[..., Client]) -> None:
    """protocol.md §13.4: MODE, KICK and INVITE from IRC are §14's requests; refusals are
    the numerics IRC clients know."""
    irc = irc_connect(server, "ircop")
    try:
        irc.send("JOIN #r")
        irc.wait_command("JOIN")
        bob = make("bob")
        bob.join("#r")
        assert bob.error({"type": "kick", "room": "#r", "nick": "ircop"})["code"] == \
            "not_operator"
        irc.send("MODE #r +b bo?!*@*")
        assert moderation(bob, "ban")["nick"] == "bo?"
        assert irc.wait_command("MODE").params == ["#r", "+b", "bo?!*@*"]
        irc.send("MODE #r +b")
        assert irc.wait_command("367").params[1:3] == ["#r", "bo?!*@*"]
        irc.send("KICK #r bob :spam")
        assert moderation(bob, "kick")["reason"] == "spam"
        assert irc.wait_command("KICK").params == ["#r", "bob", "spam"]
        irc.send("MODE #r -b bo?!*@*", "MODE #r +ik sesame")
        assert irc.wait_command("MODE").params == ["#r", "-b", "bo?!*@*"]
        assert irc.wait_command("MODE").params == ["#r", "+i+k", "*"]
        assert bob.error({"type": "join", "room": "#r", "key": "sesame"})["code"] == \
            "invite_only"
        irc.send("INVITE bob #r")
        assert irc.wait_command("341").params[1:] == ["bob", "#r"]
        assert bob.wait_type("invited")["by"] == "ircop"
        bob.join("#r")
        other = irc_connect(server, "other")
        try:
            other.send("JOIN #r")
            assert other.wait_command("473").params[1] == "#r"
            other.send("KICK #r bob")
            assert other.wait_command("442").params[1] == "#r"
        finally:
            other.close()
    finally:
        irc.close()


def test_a_server_operator_from_the_config_acts_in_any_room(tmp_path: Path) -> None:
    """server.operators (protocol.md §14.1): an account listed there operates every room,
    past its invite-only, key and bans, and may end any session."""
    from accountwire import SETTINGS, logged_in, register

    srv = ServerProcess(tmp_path, {**FAST, **SETTINGS, "server": {"operators": ["root"]}})
    srv.start()
    try:
        with connect(srv) as first:
            assert register(first, "root", "correct horse")["type"] == "registered"
        with connect(srv, "alice") as alice, connect(srv, "bob") as bob, \
                connect(srv) as root:
            alice.join("#r")
            bob.join("#r")
            changed(alice, {"type": "mode", "room": "#r", "invite_only": True, "key": "k"})
            changed(alice, {"type": "ban", "room": "#r", "nick": "r*"})
            logged_in(root, "root", "correct horse")
            root.join("#r")
            assert root.call({"type": "mode", "room": "#r"})["operator"] is True
            changed(root, {"type": "kick", "room": "#r", "nick": "alice", "reason": "x"})
            assert moderation(bob, "kick")["by"] == "root"
            assert bob.error({"type": "kill", "nick": "alice"})["code"] == "not_operator"
            killed = root.call({"type": "kill", "nick": "bob", "reason": "spam"})
            assert (killed["type"], killed["nick"]) == ("killed", "bob")
            assert root.wait_type("quit", nick="bob")["reason"] == "killed by root: spam"
            errors = [f for f in bob.wait_closed() if f.get("type") == "error"]
            assert (errors[-1]["code"], errors[-1]["fatal"]) == ("killed", True)
    finally:
        assert srv.stop() == 0


def test_a_server_operators_kill_ends_every_session_of_the_account(tmp_path: Path) -> None:
    """`kill` of a logged-in user ends all its sessions (§14.4): phone and laptop share the
    nick, and ending one would leave the other chatting under it."""
    from accountwire import SETTINGS, logged_in, register

    srv = ServerProcess(tmp_path, {**FAST, **SETTINGS, "server": {"operators": ["root"]}})
    srv.start()
    try:
        with connect(srv) as first:
            assert register(first, "root", "correct horse")["type"] == "registered"
        with connect(srv) as first:
            assert register(first, "mal", "battery staple")["type"] == "registered"
        with connect(srv) as phone, connect(srv) as laptop, connect(srv) as root, \
                connect(srv, "bob") as bob:
            for device in (phone, laptop):
                logged_in(device, "mal", "battery staple")
                device.join("#r")
            logged_in(root, "root", "correct horse")
            bob.join("#r")
            killed = root.call({"type": "kill", "nick": "MAL", "reason": "abuse"})
            assert (killed["type"], killed["nick"]) == ("killed", "mal")
            for device in (phone, laptop):
                errors = [f for f in device.wait_closed() if f.get("type") == "error"]
                assert errors[-1] == {"type": "error", "code": "killed", "fatal": True,
                                      "message": "killed by root: abuse"}
            assert bob.wait_type("quit", nick="mal")["reason"] == "killed by root: abuse"
            assert root.error({"type": "kill", "nick": "mal"})["code"] == "no_such_nick"
            assert bob.say("#r", "still here")
    finally:
        assert srv.stop() == 0


def test_a_room_created_by_an_account_stays_its_own_across_a_restart(tmp_path: Path) -> None:
    """protocol.md §14.1: a logged-in creator's operator status is stored with the room."""
    from accountwire import SETTINGS, logged_in, register

    config = {**FAST, **SETTINGS}
    srv = ServerProcess(tmp_path, config).start()
    try:
        with connect(srv) as owner:
            assert register(owner, "owner", "correct horse")["type"] == "registered"
            owner.call({"type": "hello", "version": 1, "nick": "owner"})
            owner.join("#own")
            changed(owner, {"type": "mode", "room": "#own", "key": "k"})
    finally:
        assert srv.stop() == 0
    srv = ServerProcess(tmp_path, config).start()
    try:
        with connect(srv, "dave") as dave, connect(srv) as owner:
            assert dave.error({"type": "join", "room": "#own"})["code"] == "bad_key"
            dave.join("#own", key="k")
            assert dave.call({"type": "mode", "room": "#own"})["operator"] is False
            logged_in(owner, "owner", "correct horse")
            owner.join("#own")  # an operator: no key needed
            changed(owner, {"type": "kick", "room": "#own", "nick": "dave"})
            assert moderation(dave, "kick")["by"] == "owner"
    finally:
        assert srv.stop() == 0
