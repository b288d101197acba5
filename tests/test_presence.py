"""Away status in the broker (chatd/presence.py), through the real Session and Broker in
memory: the `away` request, who is told, and where an away member is listed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cores import Conn, Hub

from chatd.protocol import MAX_AWAY


@pytest.fixture
def hub(tmp_path: Path) -> Hub:
    return Hub(tmp_path)


def frames(conn: Conn) -> list[dict[str, Any]]:
    return [{k: v for k, v in f.items() if k != "ts"} for f in conn.frames()]


def test_away_is_answered_and_told_once_to_each_session_sharing_a_room(hub: Hub) -> None:
    alice, bob, carol, dave = (hub.native(n) for n in ("alice", "bob", "carol", "dave"))
    for conn, rooms in ((alice, ("#a", "#b")), (bob, ("#a", "#b")), (carol, ("#b",)),
                        (dave, ("#c",))):
        for room in rooms:
            conn.request(type="join", room=room)
    for conn in (alice, bob, carol, dave):
        conn.frames()

    alice.request(type="away", message="lunch", label=7)
    assert frames(alice) == [{"type": "away", "nick": "alice", "message": "lunch", "label": 7}]
    told = {"type": "away", "nick": "alice", "message": "lunch"}
    assert frames(bob) == [told]  # two shared rooms, one event
    assert frames(carol) == [told]
    assert frames(dave) == []  # no shared room

    alice.request(type="away", message="lunch")  # no change: only the answer
    assert [f["type"] for f in alice.frames()] == ["away"] and bob.frames() == []
    alice.request(type="away", label=8)  # back
    assert frames(alice) == [{"type": "away", "nick": "alice", "message": "", "label": 8}]
    assert frames(bob) == [{"type": "away", "nick": "alice", "message": ""}]


def test_away_members_are_listed_as_such(hub: Hub) -> None:
    alice, bob = hub.native("alice"), hub.native("bob")
    alice.request(type="away", message="  gone fishing ")
    alice.request(type="join", room="#a")
    alice.frames()
    bob.request(type="join", room="#a")
    (joined, _history) = bob.frames()
    assert joined["members"] == ["alice", "bob"]
    assert joined["away"] == {"alice": "  gone fishing "}
    assert frames(alice) == [{"type": "join", "room": "#a", "nick": "bob"}]  # bob is here
    bob.request(type="away", message="brb")
    alice.frames()
    alice.request(type="who", room="#a")
    (members,) = alice.frames()
    assert members["away"] == {"alice": "  gone fishing ", "bob": "brb"}
    bob.request(type="part", room="#a")
    bob.request(type="join", room="#a")  # the join event carries the joiner's message
    assert [f for f in frames(alice) if f["type"] == "join"] == [
        {"type": "join", "room": "#a", "nick": "bob", "away": "brb"}]
    alice.request(type="away", message=" ")  # only blanks: back
    bob.frames()
    bob.request(type="who", room="#a")
    assert frames(bob)[0]["away"] == {"bob": "brb"}


def test_a_direct_message_ack_names_the_recipients_away_message(hub: Hub) -> None:
    alice, bob = hub.native("alice"), hub.native("bob")
    bob.request(type="away", message="on holiday")
    alice.request(type="msg", to="bob", text="hi", label=1)
    ack = alice.frames()[0]
    assert (ack["type"], ack["to"], ack["away"]) == ("ack", "bob", "on holiday")
    bob.request(type="away")
    alice.request(type="msg", to="bob", text="back?", label=2)
    assert "away" not in alice.frames()[0]


def test_a_bad_away_message_is_refused(hub: Hub) -> None:
    alice, bob = hub.native("alice"), hub.native("bob")
    for conn in (alice, bob):
        conn.request(type="join", room="#a")
    alice.frames(), bob.frames()
    for message, code in (("x" * (MAX_AWAY + 1), "invalid_value"),
                          ("two\nlines", "invalid_value"), (5, "wrong_type")):
        alice.request(type="away", message=message, label=3)
        (error,) = alice.frames()
        assert (error["type"], error["code"], error["label"]) == ("error", code, 3)
    assert bob.frames() == []


def test_a_page_of_members_makes_room_for_their_away_messages(tmp_path: Path) -> None:
    hub = Hub(tmp_path, limits={"max_frame": 2048, "max_text": 1536},
              server={"motd": ""})
    nicks = [f"user{i:02d}" for i in range(40)]
    conns = [hub.native(n) for n in nicks]
    for conn in conns:
        conn.request(type="away", message="x" * MAX_AWAY)
        conn.request(type="join", room="#big")
    last = conns[-1]
    last.frames()
    got: dict[str, str] = {}
    listed: list[str] = []
    after: dict[str, Any] = {}
    while True:
        last.request(type="who", room="#big", **after)
        (page,) = last.frames()
        assert len(page["members"]) >= 1
        assert set(page["away"]) == set(page["members"])
        listed += page["members"]
        got.update(page["away"])
        if not page["more"]:
            break
        after = {"after": page["members"][-1]}
    assert listed == nicks and set(got) == set(nicks)
