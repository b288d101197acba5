"""Takeover of a half-open session, sans I/O: the broker's side and the old session's end
(protocol.md §2, "Taking over a session")."""

from __future__ import annotations

from typing import Any

import pytest
from cores import decode_all
from test_broker import Harness

from chatd import channel, takeover
from chatd.broker import Member
from chatd.config import Config
from chatd.protocol import nick_key, pack
from chatd.session import Session, State


def hello(h: Harness, sid: int, nick: str, **extra: Any) -> dict[str, Any]:
    """Attach session `sid` and send its hello; returns the reply."""
    h.broker.attach(sid, f"sess{sid}")
    h.send(sid, type="hello", version=1, nick=nick, **extra)
    return h.take(sid)[-1]


def chat(h: Harness, sid: int, room: str, *texts: str) -> list[int]:
    ids = []
    for text in texts:
        h.send(sid, type="msg", room=room, text=text)
        ids += [f["id"] for f in h.take(sid) if f["type"] == "ack"]
    return ids


@pytest.fixture
def h() -> Harness:
    return Harness()


@pytest.fixture
def alice(h: Harness) -> dict[str, Any]:
    """alice (1) in #a and #b, bob (2) in #a; alice's welcome."""
    welcome = hello(h, 1, "alice")
    for room in ("#a", "#b"):
        h.send(1, type="join", room=room)
    hello(h, 2, "bob")
    h.send(2, type="join", room="#a")
    h.take(1), h.take(2)
    return welcome


def test_welcome_carries_a_fresh_128_bit_secret(h: Harness, alice: dict[str, Any]) -> None:
    assert alice["resumed"] is False
    secret = alice["resume"]
    assert len(secret) == 32 and int(secret, 16) >= 0
    assert secret != hello(h, 3, "carol")["resume"]


def test_takeover_gives_nick_and_rooms_and_the_rooms_see_nothing(
        h: Harness, alice: dict[str, Any]) -> None:
    welcome = hello(h, 3, "alice", session="sess1", resume=alice["resume"], label=5)
    assert welcome["type"] == "welcome" and welcome["label"] == 5
    assert (welcome["nick"], welcome["resumed"], welcome["session"]) == ("alice", True, "sess3")
    assert welcome["resume"] != alice["resume"] and "previous" not in welcome
    assert h.controls[3] == [{"c": "welcome", "nick": "alice"}]
    assert h.broker.take_replaced() == [(1, "sess3")]
    assert h.take(2) == [] and h.take(1) == []  # no quit, no join: alice never left
    assert h.broker.nicks[nick_key("alice")].sid == 3
    assert h.broker.members[3].rooms == {"#a", "#b"}
    assert set(h.broker.rooms["#a"].members) == {2, 3}
    # The old session is nobody: what it still sends is ignored, it gets nothing more.
    h.send(1, type="msg", room="#a", text="from the old one")
    assert h.take(1) == [] and h.take(2) == []
    h.broker.detach(1, "connection lost", h.now)
    h._collect()
    assert h.take(2) == [] and h.broker.nicks[nick_key("alice")].sid == 3
    # ... and the old token says why it ended.
    assert hello(h, 4, "zed", session="sess1")["previous"] == {
        "code": "taken_over", "message": takeover.REASON}
    # The new session is alice's: bob's direct message reaches it, it speaks in #a.
    h.send(2, type="msg", to="alice", text="psst")
    assert [f["text"] for f in h.take(3) if f["type"] == "message"] == ["psst"]
    h.send(3, type="join", room="#a")
    h.take(3)
    chat(h, 3, "#a", "back")
    assert [(f["from"], f["text"]) for f in h.take(2) if f["type"] == "message"] == [
        ("bob", "psst"), ("alice", "back")]


def test_a_guest_s_room_operator_status_goes_with_the_session(
        h: Harness, alice: dict[str, Any]) -> None:
    hello(h, 3, "alice", session="sess1", resume=alice["resume"])
    h.send(3, type="join", room="#a")
    h.take(3)
    h.send(3, type="kick", room="#a", nick="bob", label=1)  # it created #a: its operator
    assert [f for f in h.take(3) if f["type"] == "error"] == []
    assert 2 not in h.broker.rooms["#a"].members


def test_catch_up_after_takeover_is_exact(h: Harness, alice: dict[str, Any]) -> None:
    """Messages on their way to the old connection, and those sent between the takeover
    and the client's join, come in its catch-up pages, each once and in order."""
    seen = chat(h, 2, "#a", "seen")[-1]
    lost = chat(h, 2, "#a", "lost 1", "lost 2")  # queued for the dead connection
    hello(h, 3, "alice", session="sess1", resume=alice["resume"])
    meanwhile = chat(h, 2, "#a", "meanwhile")
    assert [f for f in h.take(3) if f["type"] == "message"] == []  # held, not live
    h.send(3, type="join", room="#a", after=seen, label=7)
    frames = h.take(3)
    assert [f["type"] for f in frames] == ["joined", "history"]
    assert [m["id"] for m in frames[1]["messages"]] == lost + meanwhile
    assert h.take(2) == []  # a join of a room it is in tells nobody
    live = chat(h, 2, "#a", "live")
    assert [f["id"] for f in h.take(3) if f["type"] == "message"] == live


def test_a_room_not_rejoined_stays_in_catch_up(h: Harness, alice: dict[str, Any]) -> None:
    hello(h, 3, "alice", session="sess1", resume=alice["resume"])
    chat(h, 2, "#a", "unseen")
    assert h.take(3) == []
    h.send(3, type="part", room="#a")
    assert [f["type"] for f in h.take(3)] == ["parted"]


def test_direct_messages_in_flight_are_caught_up(h: Harness, alice: dict[str, Any]) -> None:
    h.send(2, type="msg", to="alice", text="lost")
    lost = [f["id"] for f in h.take(1) if f["type"] == "message"]
    hello(h, 3, "alice", session="sess1", resume=alice["resume"])
    h.send(2, type="msg", to="alice", text="live")
    assert [f["text"] for f in h.take(3) if f["type"] == "message"] == ["live"]
    h.send(3, type="history", after=lost[0] - 1, **{"with": "bob"})
    (page,) = h.take(3)
    assert [m["text"] for m in page["messages"]] == ["lost"]  # the live one is not repeated


@pytest.mark.parametrize("claim", [
    {"session": "sess1"},  # no secret: only welcome.previous, as before
    {"session": "sess1", "resume": ""},
    {"session": "sess1", "resume": "0" * 32},  # a guess of the right shape
    {"session": "sess9", "resume": "SECRET"},  # the right secret for another session
    {"resume": "SECRET"},
])
def test_no_takeover_without_the_secret_of_that_session(
        h: Harness, alice: dict[str, Any], claim: dict[str, Any]) -> None:
    claim = {k: alice["resume"] if v == "SECRET" else v for k, v in claim.items()}
    err = hello(h, 3, "alice", **claim)
    assert (err["type"], err["code"]) == ("error", "nick_taken")
    assert h.broker.take_replaced() == [] and h.broker.nicks[nick_key("alice")].sid == 1
    welcome = hello(h, 4, "alice_", **claim)
    assert welcome["resumed"] is False and welcome["nick"] == "alice_"


def test_a_used_secret_is_worth_nothing(h: Harness, alice: dict[str, Any]) -> None:
    first = hello(h, 3, "alice", session="sess1", resume=alice["resume"])
    h.broker.take_replaced()
    again = hello(h, 4, "alice", session="sess1", resume=alice["resume"])
    assert again["code"] == "nick_taken"
    again = hello(h, 5, "alice", session="sess3", resume=alice["resume"])
    assert again["code"] == "nick_taken"
    # The newest secret of the newest session does it again.
    third = hello(h, 6, "alice", session="sess3", resume=first["resume"])
    assert third["resumed"] is True and h.broker.take_replaced() == [(3, "sess6")]


def test_an_ended_session_is_not_taken_over(h: Harness, alice: dict[str, Any]) -> None:
    h.send(1, type="quit", reason="bye")
    welcome = hello(h, 3, "alice", session="sess1", resume=alice["resume"])
    assert welcome["resumed"] is False and welcome["previous"]["code"] == "quit"
    assert h.broker.members[3].rooms == set()


def test_takeover_keeps_the_old_nick_and_needs_a_valid_one(
        h: Harness, alice: dict[str, Any]) -> None:
    err = hello(h, 3, "9bad", session="sess1", resume=alice["resume"])
    assert err["code"] == "invalid_nick" and h.broker.take_replaced() == []
    h.send(3, type="hello", version=1, nick="carol", session="sess1", resume=alice["resume"])
    (welcome,) = h.take(3)
    assert welcome["nick"] == "alice" and welcome["resumed"] is True


@pytest.mark.parametrize(("old", "new", "taken"), [
    ("alice", None, False),  # a guest with the secret does not get an account's session
    ("alice", "mallory", False),
    (None, "alice", False),  # nor an account a guest's
    ("alice", "alice", True),
])
def test_an_account_s_session_is_taken_over_by_that_account_only(
        h: Harness, alice: dict[str, Any], old: str | None, new: str | None,
        taken: bool) -> None:
    h.broker.members[1].account = old
    h.broker.attach(3, "sess3")
    h.broker.members[3].account = new  # logged in before its hello
    h.send(3, type="hello", version=1, nick="alice", session="sess1", resume=alice["resume"])
    (reply,) = h.take(3)
    assert reply.get("resumed", False) is taken
    # A session logged in to another account is welcomed as that account (its nick is
    # its account's, protocol.md §12.1), never with alice's session.
    other = new is not None and new != "alice"
    assert reply["type"] == ("welcome" if taken or other else "error")
    assert reply.get("nick") == ("alice" if taken else new if other else None)
    assert h.broker.take_replaced() == ([(1, "sess3")] if taken else [])


def test_a_member_that_was_never_attached_here_is_found(h: Harness) -> None:
    """A member handed over by an upgrade (or adopted) was built directly, not attached:
    a takeover finds it all the same, secret and all."""
    h.broker.members[7] = Member(7, "sess7", "dora", resume="ab" * 16)
    h.broker.nicks[nick_key("dora")] = h.broker.members[7]
    welcome = hello(h, 8, "dora", session="sess7", resume="ab" * 16)
    assert welcome["resumed"] is True and h.broker.take_replaced() == [(7, "sess8")]


def test_the_old_session_ends_with_taken_over() -> None:
    session = Session(Config(), 0)
    session.receive_data(pack({"type": "hello", "version": 1, "nick": "a"}), 1)
    session.control(channel.welcome("a"))
    session.to_client.clear()
    session.to_broker.clear()
    session.control(channel.close("taken_over", message=takeover.REASON))
    (frame,) = decode_all(b"".join(session.to_client))
    assert frame == {"type": "error", "code": "taken_over", "message": takeover.REASON,
                     "fatal": True}
    assert session.ended == "taken_over" and session.state is State.CLOSING
    assert session.to_broker == []  # the broker gave its place away already


def test_the_secret_is_compared_whole() -> None:
    assert takeover.proves("ab" * 16, "ab" * 16)
    assert not takeover.proves("ab" * 16, "ab" * 15)
    assert not takeover.proves("ab" * 16, "ab" * 16 + "x")
    assert not takeover.proves("", "")
    assert not takeover.proves("ab" * 16, "é" * 32)
