"""Integration: chat semantics of the real `chatd serve` with several concurrent clients.

Every test starts its own server subprocess on an ephemeral loopback port with a fresh
data directory (tmp_path) and drives real TCP clients (tests/wire.py). Nothing sleeps:
each step waits for a frame, with a deadline.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from serverproc import FAST, ServerProcess
from wire import Client, Frame, connect

# Rate limits out of the way: these tests are about semantics, not about flood control.
SESSION_RE = re.compile(r"[0-9a-f]{16}\Z")
LIMIT_KEYS = {"max_frame", "max_text", "max_rooms", "history_page", "history_on_join",
              "ping_interval", "ping_timeout", "msg_rate", "msg_burst", "history_rate",
              "history_burst", "cmd_rate", "cmd_burst"}


def start(tmp_path: Any, **sections: dict[str, Any]) -> ServerProcess:
    return ServerProcess(tmp_path, {**FAST, **sections}).start()


@pytest.fixture
def server(tmp_path: Any) -> Iterator[ServerProcess]:
    srv = start(tmp_path)
    yield srv
    assert srv.stop() == 0


@pytest.fixture
def make(request: pytest.FixtureRequest) -> Iterator[Callable[..., Client]]:
    """Client factory bound to the test's `server` (or to an explicit one)."""
    made: list[Client] = []

    def make_client(nick: str | None = None, srv: ServerProcess | None = None) -> Client:
        client = connect(srv or request.getfixturevalue("server"), nick)
        made.append(client)
        return client

    yield make_client
    for client in made:
        client.close()


def ids(frames: list[Frame]) -> list[int]:
    return [f["id"] for f in frames]


def send_many(client: Client, room: str, texts: list[str]) -> list[Frame]:
    """Pipeline messages, then wait for every ack; returns the acks in send order."""
    labels = [client.request({"type": "msg", "room": room, "text": t}) for t in texts]
    acks = [client.reply(label) for label in labels]
    assert all(a["type"] == "ack" for a in acks), acks
    return acks


# ---- handshake ----

def test_welcome_carries_session_limits_and_motd(tmp_path: Any, make: Callable[..., Client]):
    srv = start(tmp_path, server={"motd": "hello there", "name": "testchat"},
                limits={"max_text": 1234})
    try:
        client = make(srv=srv)
        welcome = client.call({"type": "hello", "version": 1, "nick": "Alice",
                               "client": "pytest"})
        assert welcome["type"] == "welcome", welcome
        assert welcome["version"] == 1
        assert welcome["server"] == "testchat"
        assert welcome["nick"] == "Alice"  # the spelling the user chose
        assert welcome["motd"] == "hello there"
        assert SESSION_RE.match(welcome["session"]), welcome
        assert isinstance(welcome["time"], int) and welcome["time"] > 1_600_000_000_000
        assert set(welcome["limits"]) >= LIMIT_KEYS
        assert welcome["limits"]["max_text"] == 1234
        assert "previous" not in welcome
        other = make("bob", srv=srv)  # a second session gets its own id
        assert other.received[0]["session"] != welcome["session"]
    finally:
        assert srv.stop() == 0


def test_hello_errors_are_not_fatal_and_previous_session_is_reported(server, make):
    client = make()
    err = client.call({"type": "hello", "version": 99, "nick": "alice"})
    assert err["type"] == "error" and err["code"] == "unsupported_version", err
    assert err["fatal"] is False and err["supported"] == [1]
    err = client.call({"type": "hello", "version": 1, "nick": "1alice"})
    assert (err["code"], err["fatal"]) == ("invalid_nick", False), err
    err = client.call({"type": "hello", "version": 1, "nick": "x" * 31})
    assert err["code"] == "invalid_nick", err
    welcome = client.hello("alice")
    err = client.call({"type": "hello", "version": 1, "nick": "alice2"})
    assert err["code"] == "already_registered", err
    # A quit with a forged server-side `code` field: the server keeps only known fields.
    client.send({"type": "quit", "reason": "see you", "code": "slow_consumer"})
    client.wait_closed()
    again = make()
    welcome2 = again.call({"type": "hello", "version": 1, "nick": "alice",
                           "session": welcome["session"]})
    assert welcome2["type"] == "welcome", welcome2
    assert welcome2["session"] != welcome["session"]
    assert welcome2["previous"] == {"code": "quit", "message": "see you"}, welcome2


# ---- rooms: fan-out and ordering ----

def test_room_fanout_same_order_for_every_member(server, make):
    members = [make(nick) for nick in ("alice", "bob", "carol", "dave")]
    for client in members:
        client.join("#fan")
    senders = members[:3]
    per_sender = 40
    labels: dict[str, list[int]] = {s.nick: [] for s in senders}
    for i in range(per_sender):  # interleave the senders frame by frame
        for s in senders:
            labels[s.nick].append(s.request({"type": "msg", "room": "#fan",
                                             "text": f"{s.nick} says {i}",
                                             "action": i % 10 == 0}))
    total = per_sender * len(senders)
    seqs = [c.messages("#fan", total) for c in members]
    first = seqs[0]
    for c, seq in zip(members, seqs, strict=True):
        assert ids(seq) == ids(first), f"{c.nick} saw another order"
        assert seq == first, f"{c.nick} saw different frames"
    assert all(a < b for a, b in zip(ids(first), ids(first)[1:], strict=False)), ids(first)
    for s in senders:
        mine = [m for m in first if m["from"] == s.nick]
        assert [m["text"] for m in mine] == [f"{s.nick} says {i}" for i in range(per_sender)]
        assert [m["action"] for m in mine] == [i % 10 == 0 for i in range(per_sender)]
        acks = [s.reply(label) for label in labels[s.nick]]
        assert [a["type"] for a in acks] == ["ack"] * per_sender, acks
        assert ids(acks) == ids(mine)
        assert [a["ts"] for a in acks] == [m["ts"] for m in mine]
        assert all(a["room"] == "#fan" for a in acks)
        # The sender gets each ack before the message itself.
        order = {id(f): n for n, f in enumerate(s.received)}
        for ack in acks:
            echo = next(f for f in s.received
                        if f.get("type") == "message" and f["id"] == ack["id"])
            assert order[id(ack)] < order[id(echo)]
    tss = [m["ts"] for m in first]
    assert tss == sorted(tss)
    for c in members:  # nothing extra, no duplicates
        c.sync()
        assert not c.pending("message"), c.pending("message")


ROOM_EVENTS = {"message", "join", "part", "quit", "nick", "topic"}


def room_stream(client: Client, room: str, start_id: int, end_id: int) -> list[Frame]:
    """Room frames between two marker messages, in arrival order, labels stripped."""
    out: list[Frame] = []
    inside = False
    for f in client.received:
        if f.get("room") != room or f.get("type") not in ROOM_EVENTS:
            continue
        if f.get("type") == "message" and f["id"] == start_id:
            inside = True
        if inside:
            out.append({k: v for k, v in f.items() if k != "label"})
        if f.get("type") == "message" and f["id"] == end_id:
            return out
    raise AssertionError(f"{client.nick}: end marker {end_id} not seen")


def test_room_events_and_messages_in_one_order_for_all(server, make):
    a, b, c = make("alice"), make("bob"), make("carol")
    d, e = make("dave"), make("erin")
    for x in (a, b, c, e):
        x.join("#ev")
    start = a.say("#ev", "START")
    for x in (a, b, c):
        x.wait_type("message", id=start["id"])
    pending: list[tuple[Client, int]] = []
    for i in range(15):  # messages, joins, parts, topics and nick changes, all pipelined
        for x in (a, b, c):
            pending.append((x, x.request({"type": "msg", "room": "#ev", "text": f"{i}"})))
        pending.append((d, d.request({"type": "join", "room": "#ev"})))
        pending.append((d, d.request({"type": "topic", "room": "#ev", "topic": f"t{i}"})))
        pending.append((d, d.request({"type": "part", "room": "#ev", "reason": f"r{i}"})))
        pending.append((e, e.request({"type": "nick", "nick": f"erin{i}"})))
    for x, label in pending:
        assert x.reply(label)["type"] != "error"
    end = a.say("#ev", "END")
    for x in (a, b, c):
        x.wait_type("message", id=end["id"])
    streams = [room_stream(x, "#ev", start["id"], end["id"]) for x in (a, b, c)]
    assert streams[0] == streams[1] == streams[2]
    kinds = [f["type"] for f in streams[0]]
    assert kinds.count("message") == 15 * 3 + 2
    assert kinds.count("join") == kinds.count("part") == kinds.count("topic") == 15
    assert kinds.count("nick") == 15
    got = [f["id"] for f in streams[0] if f["type"] == "message"]
    assert got == sorted(got)


def test_messages_of_other_rooms_do_not_leak(server, make):
    a, b, c = make("alice"), make("bob"), make("carol")
    a.join("#one")
    b.join("#one")
    b.join("#two")
    c.join("#two")
    ack1 = a.say("#one", "in one")
    ack2 = c.say("#TWO", "in two")  # room names are case-insensitive
    assert ack2["room"] == "#two"
    assert b.wait_type("message", id=ack1["id"])["room"] == "#one"
    assert b.wait_type("message", id=ack2["id"])["room"] == "#two"
    a.sync()
    c.sync()
    assert [m["id"] for m in a.received if m.get("type") == "message"] == [ack1["id"]]
    assert [m["id"] for m in c.received if m.get("type") == "message"] == [ack2["id"]]
    err = a.error({"type": "msg", "room": "#two", "text": "sneaky"})
    assert err["code"] == "not_in_room", err
    err = a.error({"type": "msg", "room": "#nowhere", "text": "x"})
    assert err["code"] == "not_in_room", err
    err = a.error({"type": "join", "room": "general"})
    assert err["code"] == "invalid_room", err


# ---- direct messages ----

def test_direct_messages_reach_both_parties_only(server, make):
    a, b, c = make("alice"), make("bob"), make("carol")
    ack = a.call({"type": "msg", "to": "BOB", "text": "psst"})
    assert ack["type"] == "ack" and ack["to"] == "bob" and "room" not in ack, ack
    expected = {"type": "message", "id": ack["id"], "ts": ack["ts"], "to": "bob",
                "from": "alice", "text": "psst", "action": False}
    assert a.wait_type("message", id=ack["id"]) == expected
    assert b.wait_type("message", id=ack["id"]) == expected
    back = b.call({"type": "msg", "to": "alice", "text": "waves", "action": True})
    assert back["id"] > ack["id"]
    assert a.wait_type("message", id=back["id"])["action"] is True
    assert b.wait_type("message", id=back["id"])["to"] == "alice"
    # Carol heard nothing: her broker round trip comes after both deliveries.
    c.sync()
    assert not c.pending("message"), c.pending("message")
    # To oneself: one ack, one message.
    selfack = c.call({"type": "msg", "to": "carol", "text": "note to self"})
    assert selfack["type"] == "ack", selfack
    assert c.wait_type("message", id=selfack["id"])["to"] == "carol"
    c.sync()
    assert not c.pending("message")
    err = a.error({"type": "msg", "to": "nobody", "text": "hello?"})
    assert err["code"] == "no_such_nick", err
    err = a.error({"type": "msg", "to": "bad nick!", "text": "hello?"})
    assert err["code"] == "invalid_nick", err

    # DM history: both parties see both messages, oldest first; a third party sees none.
    for client, other in ((a, "bob"), (b, "ALICE")):
        hist = client.call({"type": "history", "with": other})
        assert hist["type"] == "history" and hist["with"] == other, hist
        assert ids(hist["messages"]) == [ack["id"], back["id"]]
        assert hist["messages"][0] == expected
        assert hist["more"] is False
    for other in ("alice", "bob"):
        hist = c.call({"type": "history", "with": other})
        assert hist["messages"] == [], hist
    hist = c.call({"type": "history", "with": "carol"})
    assert ids(hist["messages"]) == [selfack["id"]]
    hist = a.call({"type": "history", "with": "bob", "before": back["id"]})
    assert ids(hist["messages"]) == [ack["id"]]


# ---- nicks ----

def test_nick_collision_is_case_insensitive_and_changes_are_announced(server, make):
    a, b, c = make("alice"), make("bob"), make("carol")
    for client in (a, b, c):
        client.join("#n")
    d = make()
    err = d.call({"type": "hello", "version": 1, "nick": "ALICE"})
    assert (err["type"], err["code"], err["fatal"]) == ("error", "nick_taken", False), err
    d.hello("dave")  # the same connection may try again
    assert d.nick == "dave"

    change = b.call({"type": "nick", "nick": "Bobby"})
    assert change["type"] == "nick" and "room" not in change, change
    assert (change["old"], change["new"]) == ("bob", "Bobby")
    for other in (a, c):
        note = other.wait_type("nick", room="#n")
        assert (note["old"], note["new"]) == ("bob", "Bobby"), note
    d.sync()
    assert not d.pending("nick"), d.pending("nick")  # shares no room with bob
    b.sync()
    assert not b.pending("nick", room="#n")  # no room copy for the changer

    err = b.error({"type": "nick", "nick": "CAROL"})
    assert err["code"] == "nick_taken", err
    err = b.error({"type": "nick", "nick": "-dash"})
    assert err["code"] == "invalid_nick", err
    recase = b.call({"type": "nick", "nick": "bobby"})  # only the case of one's own nick
    assert recase["type"] == "nick" and recase["new"] == "bobby", recase
    assert a.wait_type("nick", room="#n")["new"] == "bobby"

    # The old nick is free again; the new one is what others see and address.
    e = make("BOB")
    assert e.nick == "BOB"
    who = a.call({"type": "who", "room": "#n"})
    assert sorted(who["members"]) == ["alice", "bobby", "carol"], who
    ack = b.say("#n", "renamed")
    assert a.wait_type("message", id=ack["id"])["from"] == "bobby"
    dm = a.call({"type": "msg", "to": "BOBBY", "text": "hi"})
    assert b.wait_type("message", id=dm["id"])["to"] == "bobby"


# ---- topics, members, rooms ----

def test_topic_set_get_and_kept_when_room_empties(server, make):
    a, b, c = make("alice"), make("bob"), make("carol")
    a.join("#t")
    b.join("#t")
    got = c.call({"type": "topic", "room": "#t"})
    assert got == {"type": "topic", "room": "#t", "topic": "", "by": None, "ts": None,
                   "label": got["label"]}
    setr = a.call({"type": "topic", "room": "#T", "topic": "Be nice"})
    assert setr["type"] == "topic" and setr["room"] == "#t", setr
    assert (setr["topic"], setr["by"]) == ("Be nice", "alice")
    assert isinstance(setr["ts"], int)
    event = b.wait_type("topic", room="#t")
    assert event == {k: v for k, v in setr.items() if k != "label"}
    got = c.call({"type": "topic", "room": "#t"})  # querying needs no membership
    assert (got["topic"], got["by"], got["ts"]) == ("Be nice", "alice", setr["ts"])
    assert c.error({"type": "topic", "room": "#t", "topic": "mine"})["code"] == "not_in_room"
    assert c.error({"type": "topic", "room": "#empty"})["code"] == "no_such_room"
    assert a.error({"type": "topic", "room": "#t", "topic": "x" * 301})["code"] == \
        "invalid_value"
    assert a.error({"type": "topic", "room": "#t", "topic": "bell\x07"})["code"] == \
        "invalid_value"
    joined, _ = c.join("#t")
    assert joined["topic"] == "Be nice"
    listing = a.call({"type": "rooms"})
    assert listing["rooms"] == [{"room": "#t", "members": 3, "topic": "Be nice"}]
    # Everyone leaves; the room is gone, the topic is not.
    for client in (a, b, c):
        assert client.call({"type": "part", "room": "#t"})["type"] == "parted"
    assert a.call({"type": "rooms"})["rooms"] == []
    joined, _ = b.join("#t")
    assert joined["topic"] == "Be nice" and joined["members"] == ["bob"]
    cleared = b.call({"type": "topic", "room": "#t", "topic": ""})
    assert cleared["topic"] == "" and cleared["by"] == "bob"


def test_members_and_room_listing(server, make):
    a, b, c = make("alice"), make("bob"), make("carol")
    joined, history = a.join("#Beta")
    assert joined["room"] == "#beta" and joined["members"] == ["alice"]
    assert history["room"] == "#beta" and history["messages"] == []
    joined, _ = b.join("#beta")
    assert sorted(joined["members"]) == ["alice", "bob"]
    assert a.wait_type("join", room="#beta")["nick"] == "bob"
    c.join("#alpha")
    a.join("#alpha")
    assert c.wait_type("join", room="#alpha")["nick"] == "alice"
    listing = b.call({"type": "rooms"})
    assert listing["type"] == "rooms", listing
    assert listing["rooms"] == [{"room": "#alpha", "members": 2, "topic": ""},
                                {"room": "#beta", "members": 2, "topic": ""}]
    assert listing["more"] is False
    who = c.call({"type": "who", "room": "#BETA"})  # need not be a member
    assert who["type"] == "members" and who["room"] == "#beta", who
    assert sorted(who["members"]) == ["alice", "bob"]
    assert c.error({"type": "who", "room": "#gamma"})["code"] == "no_such_room"
    assert c.error({"type": "who", "room": "beta"})["code"] == "invalid_room"
    # Joining again is not an error and tells nobody.
    joined, history = b.join("#beta")
    assert sorted(joined["members"]) == ["alice", "bob"] and history["type"] == "history"
    a.sync()
    assert not a.pending("join"), a.pending("join")
    assert b.call({"type": "part", "room": "#beta"})["type"] == "parted"
    listing = c.call({"type": "rooms"})
    assert listing["rooms"] == [{"room": "#alpha", "members": 2, "topic": ""},
                                {"room": "#beta", "members": 1, "topic": ""}]


def test_max_rooms(tmp_path: Any, make: Callable[..., Client]):
    srv = start(tmp_path, limits={"max_rooms": 2})
    try:
        a = make("alice", srv=srv)
        a.join("#r1")
        a.join("#r2")
        err = a.error({"type": "join", "room": "#r3"})
        assert (err["code"], err.get("limit")) == ("too_many_rooms", "max_rooms"), err
        a.join("#r2")  # rejoining one's own room does not count
        a.call({"type": "part", "room": "#r1"})
        a.join("#r3")
    finally:
        assert srv.stop() == 0


def test_part_and_quit_notices(server, make):
    a, b, c, d = make("alice"), make("bob"), make("carol"), make("dave")
    for client in (a, b, c, d):
        client.join("#p")
    d.join("#q")
    a.join("#q")
    parted = b.call({"type": "part", "room": "#P", "reason": "later"})
    assert parted["type"] == "parted" and parted["room"] == "#p", parted
    for other in (a, c, d):
        note = other.wait_type("part", nick="bob")
        assert (note["room"], note["reason"]) == ("#p", "later"), note
        assert isinstance(note["ts"], int)
    assert b.error({"type": "msg", "room": "#p", "text": "x"})["code"] == "not_in_room"
    assert b.error({"type": "part", "room": "#p"})["code"] == "not_in_room"
    assert b.error({"type": "history", "room": "#p"})["code"] == "not_in_room"

    c.send({"type": "quit", "reason": "bye"})
    c.wait_closed()
    for other in (a, d):
        note = other.wait_type("quit", nick="carol")
        assert (note["room"], note["reason"]) == ("#p", "bye"), note

    d.close()  # no quit: the connection just goes away
    notes = a.collect(lambda f: f.get("type") == "quit" and f.get("nick") == "dave", 2)
    assert sorted(n["room"] for n in notes) == ["#p", "#q"]  # one per shared room
    assert all(n["reason"] for n in notes), notes
    assert a.call({"type": "who", "room": "#p"})["members"] == ["alice"]
    assert a.call({"type": "who", "room": "#q"})["members"] == ["alice"]
    b.sync()
    assert not b.pending("quit"), "bob had left #p and shares no room with them"
    # Their nicks are free again.
    make("carol")
    make("dave")


# ---- history ----

def test_history_on_join_and_paging(tmp_path: Any, make: Callable[..., Client]):
    srv = start(tmp_path, history={"on_join": 5, "page": 10})
    try:
        a, b, c = make("alice", srv=srv), make("bob", srv=srv), make("carol", srv=srv)
        a.join("#h")
        b.join("#other")
        room_ids: list[int] = []
        for i in range(25):  # another room's messages share the id sequence
            room_ids.append(a.say("#h", f"m{i}")["id"])
            if i % 3 == 0:
                b.say("#other", f"noise {i}")
        live = a.messages("#h", 25)
        assert ids(live) == room_ids
        assert room_ids[-1] - room_ids[0] > 24  # not consecutive
        joined, hist = c.join("#h")
        assert ids(hist["messages"]) == room_ids[-5:]
        assert hist["messages"] == live[-5:]  # exactly the message maps

        def page(**kw: Any) -> tuple[list[int], bool]:
            h = c.call({"type": "history", "room": "#h", **kw})
            assert h["type"] == "history" and h["room"] == "#h", h
            return ids(h["messages"]), h["more"]

        assert page(before=room_ids[10], limit=3) == (room_ids[7:10], True)
        assert page(before=room_ids[3]) == (room_ids[:3], False)
        assert page(before=room_ids[0]) == ([], False)
        assert page(after=room_ids[20]) == (room_ids[21:], False)
        assert page(after=0) == (room_ids[:10], True)  # capped at history.page
        assert page(after=room_ids[9], limit=1000) == (room_ids[10:20], True)
        assert page(after=room_ids[-1]) == ([], False)
        assert page(after=room_ids[14]) == (room_ids[15:], False)  # exactly one page left
        assert page(before=room_ids[10]) == (room_ids[:10], False)
        assert page(after=room_ids[13]) == (room_ids[14:24], True)  # one more than a page
        assert page() == (room_ids[15:], True)  # the newest
        assert page(limit=2) == (room_ids[23:], True)
        for bad in ({"limit": 0}, {"before": 5, "after": 1}, {"with": "bob"}):
            err = c.error({"type": "history", "room": "#h", **bad})
            assert err["code"] == "invalid_value", (bad, err)
        err = c.error({"type": "history", "room": "#h", "limit": "3"})
        assert err["code"] == "wrong_type", err
        assert b.error({"type": "history", "room": "#h"})["code"] == "not_in_room"
    finally:
        assert srv.stop() == 0


def test_join_after_catches_up_exactly_what_was_missed(tmp_path: Any,
                                                       make: Callable[..., Client]):
    srv = start(tmp_path, history={"page": 10})
    try:
        a, b = make("alice", srv=srv), make("bob", srv=srv)
        a.join("#c")
        b.join("#c")
        send_many(a, "#c", [f"seen {i}" for i in range(5)])
        seen = b.messages("#c", 5)
        last = seen[-1]["id"]
        b.send({"type": "quit", "reason": "train tunnel"})
        b.wait_closed()
        a.wait_type("quit", nick="bob")
        missed = ids(send_many(a, "#c", [f"missed {i}" for i in range(23)]))
        a.join("#elsewhere")
        a.say("#elsewhere", "not for #c")

        b2 = make("bob", srv=srv)
        _, hist = b2.join("#c", after=last)
        got, more = ids(hist["messages"]), hist["more"]
        assert more is True and got == missed[:10]
        while more:
            h = b2.call({"type": "history", "room": "#c", "after": got[-1]})
            got, more = got + ids(h["messages"]), h["more"]
        assert got == missed  # no gap, no duplicate
        assert all(m["room"] == "#c" for m in hist["messages"])
        # And live traffic continues right after.
        ack = a.say("#c", "welcome back")
        assert b2.wait_type("message", room="#c")["id"] == ack["id"] > missed[-1]
        _, hist = b2.join("#c", after=ack["id"])  # already up to date
        assert hist["messages"] == [] and hist["more"] is False
    finally:
        assert srv.stop() == 0


def test_history_topic_and_ids_survive_a_restart(tmp_path: Any):
    srv = start(tmp_path)
    try:
        a, b = connect(srv, "alice"), connect(srv, "bob")
        a.join("#keep")
        b.join("#keep")
        a.call({"type": "topic", "room": "#keep", "topic": "persistent"})
        before = send_many(a, "#keep", [f"old {i}" for i in range(6)])
        dm = b.call({"type": "msg", "to": "alice", "text": "private"})
        old = a.messages("#keep", 6)
    finally:
        assert srv.stop() == 0
    a.wait_closed()

    srv2 = start(tmp_path)  # same data dir, new process
    try:
        a, b, c = connect(srv2, "alice"), connect(srv2, "bob"), connect(srv2, "carol")
        joined, hist = a.join("#keep")
        assert joined["topic"] == "persistent"
        assert hist["messages"] == old
        assert ids(old) == ids(before)
        got = c.call({"type": "topic", "room": "#keep"})
        assert (got["topic"], got["by"]) == ("persistent", "alice")
        b.join("#keep")
        ack = b.say("#keep", "new era")
        assert ack["id"] > dm["id"] > before[-1]["id"]
        assert a.wait_type("message", id=ack["id"])["text"] == "new era"
        hist = a.call({"type": "history", "with": "bob"})
        assert [(m["id"], m["text"]) for m in hist["messages"]] == [(dm["id"], "private")]
        c.join("#keep")
        h = c.call({"type": "history", "room": "#keep", "after": 0})
        assert ids(h["messages"]) == [*ids(before), ack["id"]]
    finally:
        assert srv2.stop() == 0


def test_history_replies_fit_in_max_frame(tmp_path: Any, make: Callable[..., Client]):
    """protocol.md: max_frame is the largest payload "both directions". A history page of
    big messages must be cut short (with more=true) rather than exceed it."""
    srv = start(tmp_path, limits={"max_frame": 16384, "max_text": 4000},
                history={"on_join": 50, "page": 200})
    try:
        a, b = make("alice", srv=srv), make("bob", srv=srv)
        max_frame = a.received[0]["limits"]["max_frame"]
        a.join("#big")
        sent = ids(send_many(a, "#big", [f"{i:03d} " + "x" * 2996 for i in range(30)]))
        assert a.largest <= max_frame
        _, hist = b.join("#big")
        assert b.largest <= max_frame, f"a {b.largest}-byte frame; max_frame={max_frame}"
        got = ids(hist["messages"])
        assert got and got == sent[-len(got):] and hist["more"] is True
        while True:  # page backwards to the beginning
            h = b.call({"type": "history", "room": "#big", "before": got[0]})
            assert b.largest <= max_frame
            got = ids(h["messages"]) + got
            if not h["more"]:
                break
        assert got == sent
        got, more = [], True
        while more:  # and forwards from the beginning
            h = b.call({"type": "history", "room": "#big", "after": got[-1] if got else 0})
            assert b.largest <= max_frame
            got, more = got + ids(h["messages"]), h["more"]
        assert got == sent
        _, hist = b.join("#big", after=sent[3])
        assert b.largest <= max_frame and ids(hist["messages"]) == \
            sent[4:4 + len(hist["messages"])] and hist["more"] is True
    finally:
        assert srv.stop() == 0


def test_room_and_member_lists_are_paged_within_max_frame(tmp_path: Any,
                                                          make: Callable[..., Client]):
    """protocol.md §4: every frame is within max_frame, lists that grow with the server
    included: `rooms`, `who` and `joined` come in pages, followed with `after`."""
    srv = start(tmp_path, limits={"max_frame": 2048, "max_text": 1000, "max_rooms": 200})
    try:
        owner = make("owner", srv=srv)
        rooms = [f"#r{i:03d}" + "-" * 40 for i in range(120)]
        for room in rooms:
            owner.request({"type": "join", "room": room})
        owner.call({"type": "topic", "room": rooms[0], "topic": "\U0001f600" * 300})
        nicks = [f"{'ZyXwV'[i % 5]}{i:02d}" + "n" * 27 for i in range(30)]
        crowd = [make(nick, srv=srv) for nick in nicks]
        for c in crowd:
            c.join(rooms[0])
        last = crowd[-1]
        last.sync()
        label = last.request({"type": "join", "room": rooms[0]})  # a rejoin: the full list
        joined = last.reply(label)
        assert joined["type"] == "joined" and joined["more"] is True, joined
        assert last.reply(label)["type"] == "history"
        members = list(joined["members"])
        while joined["more"]:
            joined = last.call({"type": "who", "room": rooms[0], "after": members[-1]})
            members += joined["members"]
        assert members == sorted(["owner", *nicks], key=str.lower)
        listing: list[Frame] = []
        page = last.call({"type": "rooms"})
        listing += page["rooms"]
        while page["more"]:
            page = last.call({"type": "rooms", "after": listing[-1]["room"]})
            assert page["rooms"], page
            listing += page["rooms"]
        assert [r["room"] for r in listing] == rooms
        assert listing[0]["members"] == 31 and listing[1]["members"] == 1
        for client in (owner, *crowd):
            client.sync()
            assert client.largest <= 2048, f"a {client.largest}-byte frame"
    finally:
        assert srv.stop() == 0
