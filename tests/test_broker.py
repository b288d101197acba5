"""Broker behaviour without processes: rooms, nicks, routing, history, identity."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from cores import decode_all

from chatd.broker import Broker
from chatd.config import BY_KEY, FRAME_OVERHEAD, WELCOME_OVERHEAD, Config, parse_settings
from chatd.protocol import FrameDecoder
from chatd.reader import answer
from chatd.store import Store


class Harness:
    def __init__(self, **settings: Any) -> None:
        config = Config().with_values(parse_settings(settings))
        self.broker = Broker(Store(":memory:"), config)
        self.now = 1_000
        self.frames: dict[int, list[dict[str, Any]]] = {}
        self.controls: dict[int, list[dict[str, Any]]] = {}
        self.largest = 0  # the largest frame payload the broker produced, in bytes
        # History reads are answered at once (as by an idle reader), unless held: then
        # they wait in `reads` until answer_reads().
        self.hold_reads = False
        self.reads: list[dict[str, Any]] = []

    def connect(self, sid: int, nick: str | None = None) -> None:
        self.broker.attach(sid, f"sess{sid}")
        if nick:
            self.send(sid, type="hello", version=1, nick=nick)
            assert self.take(sid)[-1]["type"] == "welcome"

    def send(self, sid: int, **req: Any) -> None:
        self.now += 1
        self.broker.receive(sid, msgpack.packb(req), self.now)
        self._collect()

    def _collect(self) -> None:
        self.broker.store.flush()  # as the parent does before it hands reads over
        self.reads += [read for _sid, read in self.broker.take_reads()]
        if not self.hold_reads:
            self.answer_reads()
            return
        self._deliver()

    def answer_reads(self, replies: list[dict[str, Any]] | None = None) -> None:
        """Answer the waiting reads now (or feed `replies` read earlier), in order."""
        while True:
            self.broker.store.flush()
            if replies is None:
                replies = [answer(self.broker.store, r) for r in self.reads]
                self.reads = []
            for reply in replies:
                self.broker.read_done(reply)
            replies = None
            self.reads += [read for _sid, read in self.broker.take_reads()]
            if self.hold_reads or not self.reads:
                break
        self._deliver()

    def read_now(self) -> list[dict[str, Any]]:
        """Answer the waiting reads from the database as it is now, but do not deliver
        the replies yet (a reader whose snapshot is older than what follows)."""
        self.broker.store.flush()
        replies = [answer(self.broker.store, r) for r in self.reads]
        self.reads = []
        return replies

    def _deliver(self) -> None:
        for sid, items in self.broker.drain().items():
            for item in items:
                if isinstance(item, dict):
                    self.controls.setdefault(sid, []).append(item)
                else:
                    self.largest = max(self.largest, largest_payload(item))
                    self.frames.setdefault(sid, []).extend(decode_all(item))

    def take(self, sid: int) -> list[dict[str, Any]]:
        return self.frames.pop(sid, [])

    def types(self, sid: int) -> list[str]:
        return [f["type"] for f in self.take(sid)]


def largest_payload(data: bytes) -> int:
    decoder = FrameDecoder(max_frame=1 << 24)
    decoder.receive_data(data)
    return max(len(payload) for payload in decoder.payloads())


@pytest.fixture
def h() -> Harness:
    return Harness()


def test_hello_welcome_and_nick_taken_case_insensitively(h: Harness) -> None:
    h.connect(1, "Alice")
    h.connect(2)
    h.send(2, type="hello", version=1, nick="alice", label=9)
    (err,) = h.take(2)
    assert (err["code"], err["label"], err["fatal"]) == ("nick_taken", 9, False)
    h.send(2, type="hello", version=1, nick="bob")
    (welcome,) = h.take(2)
    assert welcome["nick"] == "bob" and welcome["session"] == "sess2"
    assert welcome["limits"]["max_text"] == 4000
    assert h.controls[2] == [{"c": "welcome", "nick": "bob"}]


def test_unsupported_version_lists_supported(h: Harness) -> None:
    h.connect(1)
    h.send(1, type="hello", version=99, nick="a")
    (err,) = h.take(1)
    assert err["code"] == "unsupported_version" and err["supported"] == [1]


def test_requests_before_welcome_are_refused(h: Harness) -> None:
    h.connect(1)
    h.send(1, type="join", room="#a", label=1)
    assert h.take(1)[0]["code"] == "not_registered"


def test_room_fanout_same_order_and_ack_first(h: Harness) -> None:
    for sid, nick in ((1, "a"), (2, "b"), (3, "c")):
        h.connect(sid, nick)
        h.send(sid, type="join", room="#R", label="j")
    for sid in (1, 2, 3):
        h.take(sid)
    for i in range(30):
        h.send(1 + i % 3, type="msg", room="#r", text=f"m{i}", label=i)
    seqs = {}
    for sid in (1, 2, 3):
        frames = h.take(sid)
        seqs[sid] = [f["id"] for f in frames if f["type"] == "message"]
        acks = [f for f in frames if f["type"] == "ack"]
        assert len(acks) == 10
        for ack in acks:  # the sender's ack comes right before its own message
            i = frames.index(ack)
            assert frames[i + 1]["id"] == ack["id"]
    assert seqs[1] == seqs[2] == seqs[3] == sorted(seqs[1])
    assert len(set(seqs[1])) == 30


def test_join_notices_members_and_history(h: Harness) -> None:
    h.connect(1, "a")
    h.send(1, type="join", room="#r")
    h.send(1, type="msg", room="#r", text="before")
    h.take(1)
    h.connect(2, "b")
    h.send(2, type="join", room="#r", label=5)
    joined, history = h.take(2)
    assert joined == {"type": "joined", "room": "#r", "topic": "", "members": ["a", "b"],
                      "more": False, "label": 5}
    assert [m["text"] for m in history["messages"]] == ["before"]
    assert h.take(1)[0] == {"type": "join", "room": "#r", "nick": "b", "ts": h.now}
    h.send(2, type="join", room="#r")  # rejoin: replies again, nobody is told
    assert h.types(2) == ["joined", "history"] and h.take(1) == []


def test_join_after_catches_up_exactly(h: Harness) -> None:
    h.connect(1, "a")
    h.send(1, type="join", room="#r")
    for i in range(5):
        h.send(1, type="msg", room="#r", text=str(i))
    ids = [f["id"] for f in h.take(1) if f["type"] == "message"]
    h.send(1, type="join", room="#r", after=ids[1])
    history = h.take(1)[1]
    assert [m["id"] for m in history["messages"]] == ids[2:] and not history["more"]


def test_history_paging(h: Harness) -> None:
    h = Harness(history={"page": 3, "on_join": 2})
    h.connect(1, "a")
    h.send(1, type="join", room="#r")
    for i in range(7):
        h.send(1, type="msg", room="#r", text=str(i))
    ids = [f["id"] for f in h.take(1) if f["type"] == "message"]
    h.send(1, type="history", room="#r", label=1)
    (page,) = h.take(1)
    assert [m["id"] for m in page["messages"]] == ids[-3:] and page["more"]
    h.send(1, type="history", room="#r", before=ids[-3], limit=100)
    assert [m["id"] for m in h.take(1)[0]["messages"]] == ids[1:4]
    h.send(1, type="history", room="#r", after=ids[0], limit=2)
    page = h.take(1)[0]
    assert [m["id"] for m in page["messages"]] == ids[1:3] and page["more"]
    h.send(1, type="history", room="#r", limit=0)
    assert h.take(1)[0]["code"] == "invalid_value"
    h.connect(2, "b")
    h.send(2, type="history", room="#r")
    assert h.take(2)[0]["code"] == "not_in_room"


def test_direct_messages_and_their_history(h: Harness) -> None:
    h.connect(1, "a")
    h.connect(2, "B")
    h.connect(3, "c")
    h.send(1, type="msg", to="b", text="psst", label=1)
    ack, msg = h.take(1)
    assert ack["type"] == "ack" and ack["to"] == "B"
    assert h.take(2) == [msg] and h.take(3) == []
    assert (msg["from"], msg["to"]) == ("a", "B")
    h.send(2, type="history", **{"with": "A"})
    assert [m["text"] for m in h.take(2)[0]["messages"]] == ["psst"]
    h.send(3, type="history", **{"with": "a"})
    assert h.take(3)[0]["messages"] == []
    h.send(1, type="msg", to="nobody", text="x")
    assert h.take(1)[0]["code"] == "no_such_nick"


def test_nick_change_notifies_shared_rooms_once_each(h: Harness) -> None:
    h.connect(1, "a")
    h.connect(2, "b")
    for room in ("#x", "#y"):
        h.send(1, type="join", room=room)
        h.send(2, type="join", room=room)
    h.take(1)
    h.take(2)
    h.send(1, type="nick", nick="b")
    assert h.take(1)[0]["code"] == "nick_taken"
    h.send(1, type="nick", nick="A", label=3)  # a change of case only is allowed
    assert h.take(1) == [{"type": "nick", "old": "a", "new": "A", "ts": h.now, "label": 3}]
    assert [(f["room"], f["new"]) for f in h.take(2)] == [("#x", "A"), ("#y", "A")]
    h.send(1, type="nick", nick="zed")
    h.connect(3, "a")  # the old nick is free again


def test_topic_set_get_and_membership(h: Harness) -> None:
    h.connect(1, "a")
    h.connect(2, "b")
    h.send(1, type="join", room="#r")
    h.send(2, type="topic", room="#r", topic="nope")
    assert h.take(2)[0]["code"] == "not_in_room"
    h.send(2, type="topic", room="#none")
    assert h.take(2)[0]["code"] == "no_such_room"
    h.send(1, type="topic", room="#r", topic="Be nice", label=2)
    assert h.take(1)[-1]["label"] == 2
    h.send(2, type="topic", room="#r")
    topic = h.take(2)[0]
    assert (topic["topic"], topic["by"]) == ("Be nice", "a")
    h.send(1, type="topic", room="#r", topic="bad\x07")
    assert h.take(1)[0]["code"] == "invalid_value"


def test_rooms_and_who(h: Harness) -> None:
    h.connect(1, "a")
    h.connect(2, "b")
    h.send(1, type="join", room="#b")
    h.send(2, type="join", room="#b")
    h.send(2, type="join", room="#a")
    h.take(1)
    h.take(2)
    h.send(1, type="rooms")
    assert h.take(1)[0]["rooms"] == [{"room": "#a", "members": 1, "topic": ""},
                                     {"room": "#b", "members": 2, "topic": ""}]
    h.send(1, type="who", room="#A")
    assert h.take(1)[0]["members"] == ["b"]


def test_part_and_quit_and_lost_connection(h: Harness) -> None:
    for sid, nick in ((1, "a"), (2, "b"), (3, "c")):
        h.connect(sid, nick)
        h.send(sid, type="join", room="#r")
    for sid in (1, 2, 3):
        h.take(sid)
    h.send(2, type="part", room="#r", reason="bye")
    assert h.types(2) == ["parted"]
    part = h.take(1)[0]
    assert (part["type"], part["nick"], part["reason"]) == ("part", "b", "bye")
    h.send(3, type="quit", reason="gone fishing")
    assert h.take(1)[0]["reason"] == "gone fishing"
    h.broker.detach(3, "connection lost", h.now)  # its channel closes afterwards: no repeat
    h._collect()
    assert h.take(1) == []
    h.connect(4, "d")
    h.send(4, type="join", room="#r")
    h.broker.detach(4, "connection lost", h.now)
    h._collect()
    notices = [f for f in h.take(1) if f["type"] == "quit"]
    assert notices[0]["reason"] == "connection lost"
    h.connect(5, "c")  # nicks of ended sessions are free
    h.send(5, type="hello", version=1, nick="x", session="sess3")
    assert h.take(5)[0]["code"] == "already_registered"


def test_previous_session_reason_in_welcome(h: Harness) -> None:
    h.connect(1, "a")
    h.broker.detach(1, "slow consumer", h.now, code="slow_consumer")
    h.connect(2)
    h.send(2, type="hello", version=1, nick="a", session="sess1")
    assert h.take(2)[0]["previous"] == {"code": "slow_consumer", "message": "slow consumer"}


def test_too_many_rooms(h: Harness) -> None:
    h = Harness(limits={"max_rooms": 2})
    h.connect(1, "a")
    for room in ("#a", "#b", "#c"):
        h.send(1, type="join", room=room)
    err = h.take(1)[-1]
    assert (err["code"], err["limit"]) == ("too_many_rooms", "max_rooms")


def test_identity_comes_from_the_channel_not_the_request(h: Harness) -> None:
    h.connect(1, "alice")
    h.connect(2, "mallory")
    h.send(1, type="join", room="#r")
    h.send(2, type="join", room="#r")
    h.take(1)
    h.send(2, type="msg", room="#r", text="hi", **{"from": "alice", "nick": "alice"})
    msg = [f for f in h.take(1) if f["type"] == "message"][0]
    assert msg["from"] == "mallory"


def test_garbage_from_a_session_is_answered_not_fatal(h: Harness) -> None:
    h.connect(1, "a")
    h.broker.receive(1, b"\xc1\xc1", h.now)
    h.broker.receive(99, b"anything", h.now)  # unknown channel: ignored
    h._collect()
    assert h.take(1)[0]["code"] == "malformed"


def test_a_bug_costs_one_session(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    h.connect(1, "a")
    h.connect(2, "b")
    monkeypatch.setattr(h.broker, "_handlers", {**h.broker._handlers,
                                                "rooms": lambda *a: 1 / 0})
    h.send(1, type="rooms")
    assert h.take(1)[0]["code"] == "internal"
    assert {"c": "close", "code": "internal"} in h.controls[1]
    h.send(2, type="who", room="#x")
    assert h.take(2)[0]["code"] == "no_such_room"


def test_every_catch_up_request_is_marked_done_whatever_its_outcome(h: Harness) -> None:
    h.connect(1, "a")
    h.send(1, type="join", room="#r")
    h.send(1, type="join", room="bad name")
    h.send(1, type="history", room="#none")
    h.send(1, type="msg", room="#r", text="x")
    h.send(1, type="rooms")
    assert [c for c in h.controls[1] if c["c"] == "done"] == [{"c": "done"}] * 3


def page_through(h: Harness, sid: int, first: dict[str, Any], key: str,
                 cursor: Callable[[Any], str], **req: Any) -> list[Any]:
    """Follow `more` from `first` with `after` = the cursor of the last item."""
    items, frame = list(first[key]), first
    while frame["more"]:
        assert frame[key], "a page with more=true must make progress"
        h.send(sid, **req, after=cursor(items[-1]), label="next")
        (frame,) = h.take(sid)
        assert frame["label"] == "next"
        items += frame[key]
    return items


def test_rooms_are_paged_within_max_frame_in_name_order() -> None:
    h = Harness(limits={"max_frame": 2048, "max_text": 1000, "max_rooms": 300})
    h.connect(1, "a")
    names = [f"#room{i:03d}-" + "x" * 40 for i in range(150)]
    for i, name in enumerate(reversed(names)):
        h.send(1, type="join", room=name)
        if i % 3 == 0:
            h.send(1, type="topic", room=name, topic="\U0001f600" * 300)
    h.take(1)
    h.send(1, type="rooms", label=1)
    (first,) = h.take(1)
    assert first["more"] is True and first["label"] == 1
    listed = page_through(h, 1, first, "rooms", lambda r: r["room"], type="rooms")
    assert [r["room"] for r in listed] == names  # sorted by name, each once
    assert h.largest <= 2048
    h.send(1, type="rooms", after=names[-1])
    assert h.take(1)[0] == {"type": "rooms", "rooms": [], "more": False}
    h.send(1, type="rooms", after="#room074")  # a cursor need not be a room that exists
    assert h.take(1)[0]["rooms"][0]["room"] == names[74]
    h.send(1, type="rooms", after="nope", label=2)
    assert h.take(1)[0]["code"] == "invalid_room"


def test_members_are_paged_within_max_frame_in_nick_order() -> None:
    h = Harness(limits={"max_frame": 2048, "max_text": 1000})
    nicks = [f"{'AbCdEfGhIj'[i % 10]}{i:02d}" + "n" * 27 for i in range(60)]
    for sid, nick in enumerate(nicks, start=1):
        h.connect(sid, nick)
        if sid == 1:
            h.send(1, type="join", room="#crowd")
            h.send(1, type="topic", room="#crowd", topic="\U0001f600" * 300)
        else:
            h.send(sid, type="join", room="#crowd")
    order = sorted(nicks, key=str.lower)
    last = len(nicks)
    joined = h.take(last)[0]
    assert joined["type"] == "joined" and joined["more"] is True
    assert joined["topic"] == "\U0001f600" * 300
    members = page_through(h, last, joined, "members", lambda n: n, type="who",
                           room="#crowd")
    assert members == order
    h.take(1)  # join notices
    h.send(1, type="who", room="#crowd", label=3)
    (first,) = h.take(1)
    assert page_through(h, 1, first, "members", str.upper, type="who", room="#crowd") == order
    assert h.largest <= 2048
    h.send(1, type="who", room="#crowd", after="9lives", label=4)
    assert h.take(1)[0]["code"] == "invalid_nick"
    h.connect(99, "solo")
    h.send(99, type="join", room="#alone", label=5)
    assert h.take(99)[0] == {"type": "joined", "room": "#alone", "topic": "",
                             "members": ["solo"], "more": False, "label": 5}


def test_every_bounded_frame_fits_the_smallest_max_frame() -> None:
    """Frames that do not grow with the server (their fields have fixed bounds) fit in
    max_frame at its minimum, at the worst: the longest label, nick, room, topic and
    reason, each of 4-byte characters."""
    smallest = int(BY_KEY["limits.max_frame"].low or 0)
    h = Harness(limits={"max_frame": smallest, "max_text": smallest - FRAME_OVERHEAD})
    wide = "\U0001f600"
    label, topic, reason = wide * 64, wide * 300, wide * 200
    nick, nick2, room = "n" * 30, "m" * 30, "#" + "r" * 49
    h.connect(1)
    h.send(1, type="hello", version=1, nick=nick, label=label)
    h.connect(2, nick2)
    for sid in (1, 2):
        h.send(sid, type="join", room=room, label=label)
    h.send(1, type="topic", room=room, topic=topic, label=label)
    h.send(2, type="topic", room=room, label=label)
    h.send(2, type="rooms", label=label)
    h.send(2, type="who", room=room, label=label)
    h.send(2, type="msg", room=room, text="x" * (smallest - FRAME_OVERHEAD), label=label)
    h.send(2, type="nick", nick=nick2.upper(), label=label)
    h.send(2, type="part", room=room, reason=reason, label=label)
    h.send(2, type="join", room=room, label=label)
    h.send(2, type="history", room="#" + "q" * 49, label=label)  # an error with a label
    h.send(1, type="quit", reason=reason)
    h.connect(3)
    h.send(3, type="hello", version=1, nick=nick, session="sess1", label=label)
    welcome = h.take(3)[0]
    assert welcome["previous"]["message"] == reason
    assert [f["reason"] for f in h.take(2) if f["type"] == "quit"] == [reason]
    assert h.largest <= smallest, f"a {h.largest}-byte frame; max_frame={smallest}"


def test_a_quit_from_a_session_ends_it_whatever_its_fields(h: Harness) -> None:
    """The broker parses what a session sends with the session's own parser: a quit with
    a reason of the wrong type still ends the membership (with reason "quit")."""
    h.connect(1, "a")
    h.connect(2, "b")
    h.send(1, type="join", room="#r")
    h.send(2, type="join", room="#r")
    h.take(1), h.take(2)
    h.send(2, type="quit", reason=5, label=[1])
    assert h.take(2) == []
    assert [(f["nick"], f["reason"]) for f in h.take(1) if f["type"] == "quit"] == \
        [("b", "quit")]
    h.send(2, type="rooms")  # gone: nothing more is answered
    assert h.take(2) == []


def test_the_welcome_overhead_covers_the_worst_welcome() -> None:
    """config.WELCOME_OVERHEAD (what a welcome needs besides motd and name, which the
    configuration check reserves in max_frame) covers the longest label, nick and
    previous reason."""
    h = Harness(server={"motd": "", "name": ""})
    wide = "\U0001f600"
    h.connect(1, "a")
    h.send(1, type="quit", reason=wide * 200)
    h.connect(2)
    h.send(2, type="hello", version=1, nick="n" * 30, session="sess1", label=wide * 64)
    h.take(2)
    assert h.largest <= WELCOME_OVERHEAD


def test_a_new_session_is_a_guest_of_no_account() -> None:
    """Member.account names the account a session logged in to; a session starts a guest."""
    h = Harness()
    h.connect(1, "alice")
    member = h.broker.members[1]
    assert member.account is None and member.nick == "alice"


def test_a_server_ban_ends_the_session_at_hello_and_at_a_nick_change(h: Harness) -> None:
    """The broker asks `screen` (the parent's server bans) before a nick is taken; a ban
    ends the session with `server_banned` (a close control: the session tells its client)."""
    asked: list[tuple[str | None, str | None]] = []

    def screen(nick: str | None, account: str | None) -> str | None:
        asked.append((nick, account))
        return "banned from this server: spam" if (nick or "").startswith("troll") else None

    h.broker.screen = screen
    h.connect(1, "alice")
    h.send(1, type="join", room="#r")
    h.connect(2)
    h.send(2, type="hello", version=1, nick="trollface", label=1)
    assert h.take(2) == []  # no welcome
    assert h.controls[2] == [{"c": "close", "code": "server_banned",
                              "message": "banned from this server: spam"}]
    assert "trollface" not in h.broker.nicks
    h.connect(3, "bob")  # a guest: a logged-in session's nick is locked (§12.1)
    h.send(3, type="join", room="#r")
    h.take(1)
    h.send(3, type="nick", nick="troll2")
    assert h.controls[3][-1]["code"] == "server_banned"
    assert [(f["type"], f["nick"], f["reason"]) for f in h.take(1)] == [
        ("quit", "bob", "banned from the server")]
    assert asked[-1] == ("troll2", None)
    h.send(3, type="msg", room="#r", text="still here?")  # it is gone: nothing happens
    assert h.take(1) == []
    h.connect(4)
    h.send(4, type="hello", version=1, nick="carol", session="sess2")
    assert h.take(4)[0]["previous"] == {"code": "server_banned",
                                        "message": "banned from this server: spam"}
