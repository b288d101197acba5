"""Moderation through the broker, without processes (protocol.md §14): who may do what,
the events the room sees, that they are stored in history, and what they enforce."""

from __future__ import annotations

from typing import Any

import pytest
from test_broker import Harness

from chatd.moderation import RoomPolicy

A, B, C = 1, 2, 3


@pytest.fixture
def h() -> Harness:
    h = Harness(server={"operators": ["root"]})
    h.connect(A, "alice")
    h.connect(B, "bob")
    h.send(A, type="join", room="#r")
    h.send(B, type="join", room="#r")
    h.take(A)
    h.take(B)
    return h


def error(h: Harness, sid: int) -> str:
    frames = h.take(sid)
    assert frames and frames[-1]["type"] == "error", frames
    return str(frames[-1]["code"])


def event(h: Harness, sid: int) -> dict[str, Any]:
    frames = [f for f in h.take(sid) if f["type"] == "moderation"]
    assert len(frames) == 1, frames
    return frames[0]


def test_the_creator_is_operator_and_others_are_refused(h: Harness) -> None:
    h.send(B, type="kick", room="#r", nick="alice", label=1)
    frames = h.take(B)
    assert frames[-1]["code"] == "not_operator" and frames[-1]["label"] == 1
    h.send(A, type="mode", room="#r", label=2)
    assert h.take(A)[-1] == {"type": "mode", "room": "#r", "invite_only": False,
                             "keyed": False, "topic_lock": False, "operator": True,
                             "label": 2}
    h.send(B, type="mode", room="#r")
    assert h.take(B)[-1]["operator"] is False


def test_a_kick_is_acked_told_to_all_and_removes(h: Harness) -> None:
    h.send(A, type="kick", room="#r", nick="BOB", reason="out", label=7)
    mine = h.take(A)
    assert [f["type"] for f in mine] == ["ack", "moderation"]
    assert mine[0]["label"] == 7 and mine[0]["id"] == mine[1]["id"]
    told = event(h, B)
    assert {k: told[k] for k in ("kind", "nick", "reason", "by", "room")} == \
        {"kind": "kick", "nick": "bob", "reason": "out", "by": "alice", "room": "#r"}
    h.send(B, type="msg", room="#r", text="hi")
    assert error(h, B) == "not_in_room"
    h.send(A, type="who", room="#r")
    assert h.take(A)[-1]["members"] == ["alice"]


def test_events_are_history_and_catch_up_replays_them(h: Harness) -> None:
    h.send(A, type="msg", room="#r", text="before")
    h.send(A, type="mode", room="#r", topic_lock=True)
    h.send(A, type="msg", room="#r", text="after")
    h.take(A)
    h.take(B)
    h.connect(C, "carol")
    h.send(C, type="join", room="#r", after=0)
    page = next(f for f in h.take(C) if f["type"] == "history")
    kinds = [(m["type"], m.get("text") or m.get("kind")) for m in page["messages"]]
    assert kinds == [("message", "before"), ("moderation", "mode"), ("message", "after")]
    assert page["messages"][1]["topic_lock"] is True
    assert page["messages"][1]["by"] == "alice"


def test_a_ban_keeps_out_until_it_expires(h: Harness) -> None:
    h.send(A, type="ban", room="#r", nick="b?b", duration=60, reason="spam")
    ev = event(h, B)
    assert ev["expires"] == ev["ts"] + 60_000 and ev["nick"] == "b?b"
    h.send(B, type="msg", room="#r", text="hi")
    assert error(h, B) == "banned"
    h.send(A, type="kick", room="#r", nick="bob")
    h.take(B)
    h.send(B, type="join", room="#r")
    assert error(h, B) == "banned"
    h.send(A, type="bans", room="#r")
    listed = h.take(A)[-1]["bans"]
    assert [(e["list"], e["nick"], e["reason"]) for e in listed] == [("ban", "b?b", "spam")]
    h.now += 60_000
    h.send(B, type="join", room="#r")
    assert h.take(B)[0]["type"] == "joined"


def test_mute_topic_lock_invite_only_key_and_invite(h: Harness) -> None:
    h.send(A, type="mute", room="#r", account="nobody")
    h.send(A, type="mute", room="#r", nick="bob")
    h.take(B)
    h.send(B, type="msg", room="#r", text="hi")
    assert error(h, B) == "muted"
    h.send(A, type="unmute", room="#r", nick="BOB")
    h.take(B)
    h.send(B, type="msg", room="#r", text="hi")
    assert h.take(B)[0]["type"] == "ack"
    h.send(A, type="mode", room="#r", topic_lock=True, invite_only=True, key="k1")
    ev = event(h, B)
    assert (ev["invite_only"], ev["keyed"], ev["topic_lock"]) == (True, True, True)
    h.send(B, type="topic", room="#r", topic="mine")
    assert error(h, B) == "not_operator"
    h.connect(C, "carol")
    h.send(C, type="join", room="#r", key="k1")
    assert error(h, C) == "invite_only"
    h.send(A, type="mode", room="#r", invite_only=False)
    h.send(C, type="join", room="#r", key="nope")
    assert error(h, C) == "bad_key"
    h.send(A, type="invite", room="#r", nick="carol")
    assert h.take(C)[-1]["type"] == "invited"
    h.send(C, type="join", room="#r")
    assert h.take(C)[0]["type"] == "joined"


def test_op_deop_and_a_guest_operator_leaving(h: Harness) -> None:
    h.send(A, type="op", room="#r", nick="bob")
    assert event(h, B)["kind"] == "op"
    h.send(B, type="deop", room="#r", nick="alice")
    h.send(A, type="kick", room="#r", nick="bob")
    assert error(h, A) == "not_operator"
    h.send(B, type="part", room="#r")
    h.send(B, type="join", room="#r")
    h.take(B)
    h.send(B, type="kick", room="#r", nick="alice")
    assert error(h, B) == "not_operator"  # its operator status went with its part


def test_the_order_of_the_checks(h: Harness) -> None:
    h.send(B, type="kick", room="#nope", nick="x")
    assert error(h, B) == "not_in_room"
    h.send(B, type="kick", room="#r", nick="1bad")
    assert error(h, B) == "invalid_nick"
    h.send(B, type="ban", room="#r", nick="a b")
    assert error(h, B) == "invalid_value"
    h.send(A, type="kick", room="#r", nick="zed")
    assert error(h, A) == "no_such_nick"
    h.send(A, type="unban", room="#r", nick="zed")
    assert error(h, A) == "invalid_value"
    h.send(A, type="ban", room="#r", nick="x", account="y")
    assert error(h, A) == "invalid_value"
    h.send(A, type="kill", nick="bob")
    assert error(h, A) == "not_operator"


def test_a_server_operator_acts_anywhere_and_ends_sessions(h: Harness) -> None:
    h.connect(C, "root")
    h.broker.members[C].account = "root"  # what logging in sets
    h.send(A, type="mode", room="#r", invite_only=True, key="k")
    h.send(A, type="ban", room="#r", nick="r*")
    h.take(A)
    h.send(C, type="join", room="#r")
    assert h.take(C)[0]["type"] == "joined"
    h.send(C, type="kick", room="#r", nick="alice")
    assert event(h, A)["kind"] == "kick"
    h.take(B)
    h.send(C, type="kill", nick="bob", reason="go", label=3)
    got = h.take(C)
    assert {"type": "killed", "nick": "bob", "label": 3} in got
    assert got[-1]["type"] == "quit" and got[-1]["reason"] == "killed by root: go"
    assert h.controls[B][-1] == {"c": "close", "code": "killed",
                                 "message": "killed by root: go"}
    h.send(C, type="who", room="#r")
    assert h.take(C)[-1]["members"] == ["root"]


def test_policy_is_stored_and_read_back_by_a_new_broker(h: Harness) -> None:
    h.send(A, type="ban", room="#r", nick="bob")
    h.send(A, type="mode", room="#r", key="k")
    stored = h.broker.store.policy("#r")
    policy = RoomPolicy.from_json(stored)
    assert policy.key == "k" and list(policy.bans) == [("nick", "bob")]
    assert policy.operators == set()  # a guest operator is never stored


def test_a_storage_failure_changes_nothing(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    from chatd.store import StorageError

    def fail(*_a: Any, **_k: Any) -> int:
        raise StorageError("full", "write")

    monkeypatch.setattr(h.broker.store, "moderate", fail)
    h.send(A, type="mode", room="#r", invite_only=True)
    assert error(h, A) == "storage_unavailable"
    assert h.take(B) == []
    assert not h.broker.rooms["#r"].policy.invite_only


def test_an_account_creator_stays_operator_across_a_restart(tmp_path: Any) -> None:
    """protocol.md §14.1: an account's operator status is stored with the room's policy;
    a guest who recreates the empty room after a restart does not take it over."""
    from chatd.broker import Broker
    from chatd.store import Store

    h = Harness()
    h.broker = Broker(Store(tmp_path / "h.sqlite3"), h.broker.config)
    h.connect(A, "alice")
    h.broker.members[A].account = "alice"  # what logging in sets
    h.send(A, type="join", room="#r")
    h.send(A, type="mode", room="#r", key="k")
    h.send(A, type="quit")
    h.broker.store.close()
    h.broker = Broker(Store(tmp_path / "h.sqlite3"), h.broker.config)  # a restart
    h.connect(B, "bob")
    h.send(B, type="join", room="#r")
    assert error(h, B) == "bad_key"
    h.send(B, type="join", room="#r", key="k")
    h.send(B, type="mode", room="#r", topic_lock=True)
    assert error(h, B) == "not_operator"
    h.connect(C, "Alice2")
    h.broker.members[C].account = "ALICE"
    h.send(C, type="join", room="#r")
    h.send(C, type="mode", room="#r", topic_lock=True)
    assert event(h, C)["topic_lock"] is True
