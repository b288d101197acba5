"""Unit tests of the upgrade's handover: the state a parent hands its successor, restored
into a second parent in this process (no execve, no session process: channels are
socketpairs, pids are made up), and the versions the new code refuses."""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from chatd import channel, handover
from chatd.broker import Member
from chatd.config import Config, parse_settings
from chatd.master import Master
from chatd.protocol import HEADER, pack


def config(data_dir: Path) -> Config:
    return Config(data_dir=data_dir).with_values(parse_settings({}))


@pytest.fixture
def parents(tmp_path: Path) -> Iterator[list[Master]]:
    made: list[Master] = []
    yield made
    for m in made:
        m.store.close()
        m.sel.close()
        for kid in m.table.by_sid.values():
            kid.chan.close()


def session(master: Master, pid: int, nick: str, *rooms: str) -> socket.socket:
    """A made-up session process `pid` with `nick` in `rooms`; its end of the channel."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    master.register(pid, ours, f"tok{pid}", "10.0.0.1")
    sid = master.table.children[pid].sid
    request(master, sid, {"type": "hello", "version": 1, "nick": nick}, 1)
    for room in rooms:
        request(master, sid, {"type": "join", "room": room}, 2)
    answer_reads(master)
    return theirs


def answer_reads(master: Master) -> None:
    """Be the history reader: every read in flight gets an empty page (no reader runs)."""
    master.router.route()
    history = master.broker.history
    for token in list(history.pending):
        master.broker.read_done({"t": token, "data": b"", "snap": history.last_id,
                                 "more": False, "last": None})
    master.router.route()


def request(master: Master, sid: int, frame: dict[str, Any], now: int) -> None:
    master.broker.receive(sid, pack(frame)[HEADER.size:], now)


def fields_of(member: Member) -> dict[str, Any]:
    return {f.name: getattr(member, f.name) for f in dataclasses.fields(member)}


def hand_over(old: Master) -> dict[str, Any]:
    """The snapshot as the successor reads it, with fds of its own (dups)."""
    state = handover.snapshot(old, 0.0)
    state = msgpack.unpackb(msgpack.packb(state, use_bin_type=True), raw=False,
                            strict_map_key=False)
    state["lock"] = os.dup(state["lock"])
    state["listeners"] = []
    for kid in state["children"]:
        kid["fd"] = os.dup(kid["fd"])
    return state


def test_handover_restores_who_is_who_nicks_rooms_and_queued_bytes(
        tmp_path: Path, parents: list[Master]) -> None:
    old = Master(config(tmp_path / "data"))
    parents.append(old)
    theirs = [session(old, 501, "alice", "#a", "#b"), session(old, 502, "bob", "#a")]
    alice = old.table.children[501]
    old.broker.members[alice.sid].account = "alice"  # (logged in)
    rules = old.broker.rooms["#a"].policy
    rules.operators.add("n:guestop")  # a guest's operator status: not in the store
    rules.topic_lock = True
    alice.out.add(b"queued")  # not yet written to its channel
    alice.decoder.receive_data(b"\x00\x00")  # half a frame header read from it
    state = hand_over(old)
    new = Master(config(tmp_path / "data"), state)
    parents.append(new)
    assert {m.nick for m in new.broker.members.values()} == {"alice", "bob"}
    for member in old.broker.members.values():  # every field, whatever fields there are
        assert fields_of(new.broker.members[member.sid]) == fields_of(member)
    assert set(new.broker.rooms["#a"].members) == {alice.sid, old.table.children[502].sid}
    assert new.broker.room_names == ["#a", "#b"]
    moved = new.broker.rooms["#a"].policy
    assert moved.operators == rules.operators and moved.topic_lock
    assert new.table.children[501].decoder.buffered == 2
    assert new.table.next_sid == old.table.next_sid
    # what was queued reaches the session through the inherited channel
    theirs[0].setblocking(False)
    assert theirs[0].recv(65536).endswith(b"queued")
    # and the new parent routes: bob's message reaches alice in #a
    request(new, new.table.children[502].sid, {"type": "msg", "room": "#a", "text": "hi"}, 3)
    new.router.route()
    assert b"hi" in theirs[0].recv(65536)
    for sock in theirs:
        sock.close()


def test_a_session_of_an_unsupported_channel_version_is_refused_clearly(
        tmp_path: Path, parents: list[Master], caplog: pytest.LogCaptureFixture) -> None:
    old = Master(config(tmp_path / "data"))
    parents.append(old)
    theirs = session(old, 601, "carol", "#c")
    state = hand_over(old)
    state["children"][0]["cv"] = 99
    with caplog.at_level(logging.ERROR, "chatd.master"):
        new = Master(config(tmp_path / "data"), state)
    parents.append(new)
    assert "speaks channel version 99" in caplog.text
    assert not new.table.children and 601 in new.table.retiring  # killed if it lingers
    assert not new.broker.members and not new.broker.nicks
    old.table.children[601].chan.close()
    theirs.settimeout(5)
    data = theirs.recv(65536)
    while data:  # the old parent's frames, then EOF: the channel is closed
        data = theirs.recv(65536)
    theirs.close()


def test_the_probe_refuses_versions_it_cannot_take_over() -> None:
    assert handover.check(str(handover.VERSION), str(channel.VERSION)) == []
    problems = handover.check("7", f"{channel.VERSION},42")
    assert any("format 7" in p for p in problems)
    assert any("channel version 42" in p for p in problems)


def test_no_upgrade_while_sessions_of_a_dead_parent_are_being_adopted(
        tmp_path: Path, parents: list[Master]) -> None:
    from chatd.protocol import FrameDecoder
    from chatd.upgrade import read_status

    m = Master(config(tmp_path / "data"))
    parents.append(m)
    ours, theirs = socket.socketpair()
    m.adopter.waiting[ours] = (4242, FrameDecoder(1024))  # found, not yet registered
    m.upgrade.begin(0.0)
    assert m.upgrade.probe is None  # no probe started
    status = read_status(tmp_path / "data")
    assert status is not None and status["ok"] is False
    assert "still being adopted" in str(status["message"])
    ours.close()
    theirs.close()
