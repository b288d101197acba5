"""Client model and protocol core: buffers, unread counts, pending/acked, catch-up, dedup."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chat_client import events
from chat_client.buffer import SERVER, Buffer, Line
from chat_client.core import Core
from chat_client.lifecycle import HelloRefused
from chat_client.model import Model
from chat_client.store import ClientState


def msg(mid: int, text: str = "x", room: str = "#a", sender: str = "bob",
        **extra: Any) -> dict[str, Any]:
    return {"type": "message", "id": mid, "ts": 1763719200000 + mid, "room": room,
            "from": sender, "text": text, "action": False, **extra}


def ids(buf: Buffer) -> list[int]:
    return [line.id for line in buf.lines if line.id is not None]


# Buffer ------------------------------------------------------------------------------

def test_buffer_orders_by_id_and_drops_duplicates() -> None:
    buf = Buffer("#a", "#a", "room")
    for mid in (5, 9, 7, 5, 9, 1):
        buf.add(Line("message", mid, "t", id=mid))
    assert ids(buf) == [1, 5, 7, 9]
    assert buf.last_id == 9


def test_buffer_scrollback_is_bounded() -> None:
    buf = Buffer("#a", "#a", "room", scrollback=10)
    for mid in range(1, 26):
        buf.add(Line("message", mid, "t", id=mid))
    assert ids(buf) == list(range(16, 26))
    assert buf.trimmed == 15 and buf.end == 25
    assert len(buf.ids) == 10  # the dedup set shrinks with the scrollback


def test_notice_is_not_moved_by_a_later_message() -> None:
    buf = Buffer("#a", "#a", "room")
    buf.add(Line("message", 1.0, "m1", id=1))
    buf.add(Line("notice", 2.0, "bob joined"))
    buf.add(Line("message", 3.0, "m3", id=3))
    assert [line.text for line in buf.lines] == ["m1", "bob joined", "m3"]


def test_pending_stays_at_the_bottom_until_acked() -> None:
    buf = Buffer("#a", "#a", "room")
    buf.add(Line("message", 1.0, "m1", id=1))
    mine = Line("message", 2.0, "mine", label=7, state="pending", own=True)
    buf.add(mine)
    buf.add(Line("message", 2.5, "m2", id=2))
    assert [line.text for line in buf.lines] == ["m1", "m2", "mine"]
    assert buf.find_label(7) is mine
    buf.acked(mine, 3, 3.0)
    assert mine.state == "ok" and mine.id == 3
    assert ids(buf) == [1, 2, 3]
    # The message frame for our own id arrives after the ack: no duplicate.
    assert not buf.add(Line("message", 3.0, "mine", id=3))


def test_scroll_anchor_keeps_view_and_counts_new_lines() -> None:
    buf = Buffer("#a", "#a", "room")
    for mid in range(1, 11):
        buf.add(Line("message", mid, "t", id=mid))
    assert buf.bottom() == 9
    buf.scroll_to(4)
    for mid in range(11, 14):
        buf.add(Line("message", mid, "t", id=mid))
    assert buf.bottom() == 4 and buf.new_below == 3
    buf.scroll_to(buf.end)  # back to the bottom: follow again
    assert buf.anchor is None and buf.new_below == 0
    buf.add(Line("message", 20, "t", id=20))
    assert buf.bottom() == buf.end - 1


def test_scroll_anchor_shifts_when_older_lines_are_inserted_above() -> None:
    buf = Buffer("#a", "#a", "room")
    for mid in (10, 20, 30):
        buf.add(Line("message", mid, "t", id=mid))
    buf.scroll_to(1)  # showing up to id 20
    buf.add(Line("message", 5, "older", id=5))
    assert buf.lines[buf.bottom() - buf.trimmed].id == 20
    assert buf.new_below == 0


# Model ------------------------------------------------------------------------------

def test_unread_and_mentions_only_for_other_buffers() -> None:
    m = Model("alice")
    a, b = m.room("#a"), m.room("#b")
    m.switch("#a")
    m.add(a, Line("message", 1, "hi", nick="bob", id=1))
    m.add(b, Line("message", 2, "hi all", nick="bob", id=2))
    m.add(b, Line("message", 3, "hey Alice: ping", nick="bob", id=3))
    m.add(b, Line("message", 4, "alicebob is not me", nick="bob", id=4))
    assert (a.unread, a.mentions) == (0, 0)
    assert (b.unread, b.mentions) == (3, 1)
    assert m.alerts == 1
    m.switch("#b")
    assert (b.unread, b.mentions) == (0, 0)


def test_own_messages_never_count_as_unread_or_mention() -> None:
    m = Model("alice")
    b = m.room("#b")
    m.add(b, Line("message", 1, "alice here", nick="alice", id=1, own=True))
    assert b.unread == 0 and m.alerts == 0


def test_direct_messages_alert() -> None:
    m = Model("alice")
    dm = m.dm("Bob")
    m.add(dm, Line("message", 1, "psst", nick="Bob", id=1))
    assert dm.key == "bob" and dm.name == "Bob"
    assert dm.mentions == 1 and m.alerts == 1


def test_switching_and_finding_buffers() -> None:
    m = Model("alice")
    m.room("#a")
    m.room("#b")
    m.dm("Bob")
    assert [b.key for b in m.order()] == [SERVER, "#a", "#b", "bob"]
    assert m.switch_index(2) and m.current == "#b"
    m.cycle(1)
    assert m.current == "bob"
    m.cycle(1)
    assert m.current == SERVER
    m.cycle(-1)
    assert m.current == "bob"
    assert m.find("2").key == "#a"  # type: ignore[union-attr]
    assert m.find("BOB").key == "bob"  # type: ignore[union-attr]
    assert m.find("#A").key == "#a"  # type: ignore[union-attr]
    assert m.find("9") is None
    m.close("bob")
    assert m.current == "#b"


# Core (protocol logic) ----------------------------------------------------------------

def welcome(core: Core, nick: str = "alice",
            limits: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    core.connected()
    hello = core.take_outbox()
    assert hello[0]["type"] == "hello" and hello[0]["version"] == 1
    core.receive({"type": "welcome", "version": 1, "nick": nick, "session": "s1",
                  "label": hello[0]["label"], "limits": limits or {"max_text": 100}})
    return core.take_outbox()


def join_reply(core: Core, frame: dict[str, Any], messages: list[dict[str, Any]],
               more: bool = False) -> None:
    room = frame["room"]
    core.receive({"type": "joined", "room": room, "topic": "T", "members": ["alice", "bob"],
                  "label": frame["label"]})
    core.receive({"type": "history", "room": room, "messages": messages, "more": more,
                  "label": frame["label"]})


def test_hello_then_join_and_history_on_join() -> None:
    core = Core("alice", ["#a"])
    out = welcome(core)
    assert [f["type"] for f in out] == ["join"] and "after" not in out[0]
    join_reply(core, out[0], [msg(1), msg(2)])
    buf = core.model.get("#a")
    assert buf is not None and buf.joined and buf.topic == "T"
    assert ids(buf) == [1, 2]
    assert core.model.current == "#a"
    assert core.ready and not core.take_outbox()


@pytest.mark.parametrize(("previous", "said"), [
    ({"code": "quit", "message": "quit"}, "previous session ended: quit"),
    ({"code": "quit", "message": ""}, "previous session ended: quit"),
    ({"code": "slow_consumer", "message": "too slow"},
     "previous session ended: slow_consumer (too slow)"),
])
def test_why_the_previous_session_ended_is_said_once(previous: dict[str, str],
                                                      said: str) -> None:
    core = Core("alice", [])
    core.connected()
    (hello,) = core.take_outbox()
    core.receive({"type": "welcome", "version": 1, "nick": "alice", "session": "s2",
                  "label": hello["label"], "previous": previous})
    texts = [ln.text for ln in core.model.buffers[SERVER].lines]
    assert said in texts


def test_send_is_pending_until_ack_and_echo_is_deduplicated() -> None:
    core = Core("alice", ["#a"])
    join_reply(core, welcome(core)[0], [])
    core.execute_line("hello world")
    (frame,) = core.take_outbox()
    assert frame == {"type": "msg", "room": "#a", "text": "hello world",
                     "label": frame["label"]}
    buf = core.model.cur
    assert buf.lines[-1].state == "pending"
    core.receive({"type": "ack", "label": frame["label"], "id": 10, "ts": 5000, "room": "#a"})
    core.receive(msg(10, "hello world", sender="alice"))
    own = [line for line in buf.lines if line.text == "hello world"]
    assert len(own) == 1 and own[0].state == "ok" and own[0].id == 10
    assert core.snapshot().rooms == {"#a": 10}


def test_server_error_marks_pending_failed() -> None:
    core = Core("alice", ["#a"])
    join_reply(core, welcome(core)[0], [])
    core.execute_line("spam")
    (frame,) = core.take_outbox()
    core.receive({"type": "error", "code": "rate_limited", "message": "slow down",
                  "fatal": False, "label": frame["label"], "retry_after": 0.5})
    lines = core.model.cur.lines
    assert any(line.state == "failed" for line in lines)
    assert "rate_limited" in lines[-1].text and lines[-1].kind == "error"
    assert core.failures == 1


@pytest.mark.parametrize("line", ["/nope", "/join", "/msg", "x" * 101, "   "])
def test_bad_input_sends_nothing(line: str) -> None:
    core = Core("alice", ["#a"])
    join_reply(core, welcome(core)[0], [])
    core.execute_line(line)
    assert core.take_outbox() == []
    assert core.model.cur.lines[-1].kind == "error"


def test_reconnect_catches_up_after_last_id_with_paging_no_dup() -> None:
    core = Core("alice", ["#a"])
    join_reply(core, welcome(core)[0], [msg(1), msg(3)])
    core.disconnected("connection lost")
    assert not core.model.get("#a").joined  # type: ignore[union-attr]
    out = welcome(core)
    assert out[0]["type"] == "join" and out[0]["after"] == 3
    # A live message arrives between the catch-up pages: order and dedup still hold.
    join_reply(core, out[0], [msg(4), msg(5)], more=True)
    core.receive(msg(9))
    (page,) = core.take_outbox()
    assert page == {"type": "history", "room": "#a", "after": 5, "label": page["label"]}
    core.receive({"type": "history", "room": "#a", "messages": [msg(5), msg(7), msg(9)],
                  "more": False, "label": page["label"]})
    assert ids(core.model.get("#a")) == [1, 3, 4, 5, 7, 9]  # type: ignore[arg-type]
    assert core.take_outbox() == []  # the buffer had lines: no extra context fetched


def test_restart_uses_saved_last_seen_and_fetches_context() -> None:
    core = Core("alice", ["#a"], ClientState(rooms={"#a": 40}))
    (join,) = welcome(core)
    assert join["after"] == 40
    join_reply(core, join, [msg(41)])
    (older,) = core.take_outbox()
    assert older["type"] == "history" and older["before"] == 41 and older["limit"] == 49
    core.receive({"type": "history", "room": "#a", "messages": [msg(30), msg(40)],
                  "more": False, "label": older["label"]})
    assert ids(core.model.get("#a")) == [30, 40, 41]  # type: ignore[arg-type]


def test_pending_messages_fail_on_disconnect() -> None:
    core = Core("alice", ["#a"])
    join_reply(core, welcome(core)[0], [])
    core.execute_line("lost?")
    core.disconnected("boom")
    assert [ln.state for ln in core.model.get("#a").lines if ln.own] == ["failed"]  # type: ignore[union-attr]


def test_nick_taken_at_hello_tries_variant_then_reclaims() -> None:
    core = Core("alice", [])
    core.connected()
    (hello,) = core.take_outbox()
    core.receive({"type": "error", "code": "nick_taken", "message": "in use", "fatal": False,
                  "label": hello["label"]})
    (hello2,) = core.take_outbox()
    assert hello2["nick"] == "alice_"
    core.receive({"type": "welcome", "version": 1, "nick": "alice_", "label": hello2["label"]})
    assert core.model.nick == "alice_"
    core.tick()
    (nick,) = core.take_outbox()
    assert nick["type"] == "nick" and nick["nick"] == "alice"
    core.receive({"type": "nick", "old": "alice_", "new": "alice", "label": nick["label"]})
    assert core.model.nick == "alice"
    core.tick()
    assert core.take_outbox() == []


def test_invalid_nick_at_hello_stops() -> None:
    core = Core("alice", [])
    core.connected()
    (hello,) = core.take_outbox()
    core.receive({"type": "error", "code": "unsupported_version", "message": "no",
                  "fatal": False, "label": hello["label"], "supported": [2]})
    assert isinstance(core.refused, HelloRefused) and not core.refused.retry
    assert core.refused.code == "unsupported_version"
    assert "unsupported_version" in str(core.refused)


def test_direct_messages_open_a_buffer_for_the_peer() -> None:
    core = Core("alice", [])
    welcome(core)
    core.receive({"type": "message", "id": 3, "ts": 1, "to": "alice", "from": "Bob",
                  "text": "psst", "action": False})
    buf = core.model.get("bob")
    assert buf is not None and buf.kind == "dm" and core.model.alerts == 1
    core.execute_line("/msg Bob hi back")
    (frame,) = core.take_outbox()
    assert frame["to"] == "Bob" and frame["text"] == "hi back"
    core.receive({"type": "ack", "label": frame["label"], "id": 4, "ts": 2, "to": "Bob"})
    core.receive({"type": "message", "id": 4, "ts": 2, "to": "Bob", "from": "alice",
                  "text": "hi back", "action": False})
    assert ids(buf) == [3, 4]


def test_membership_events_update_members_and_show_notices() -> None:
    core = Core("alice", ["#a"])
    join_reply(core, welcome(core)[0], [])
    buf = core.model.get("#a")
    assert buf is not None
    core.receive({"type": "join", "room": "#a", "nick": "carol", "ts": 1})
    core.receive({"type": "nick", "room": "#a", "old": "carol", "new": "caz", "ts": 2})
    core.receive({"type": "part", "room": "#a", "nick": "bob", "reason": "bye", "ts": 3})
    assert sorted(buf.members.values()) == ["alice", "caz"]
    texts = [line.text for line in buf.lines if line.kind == "notice"]
    assert "carol joined #a" in texts and "carol is now known as caz" in texts
    assert "bob left #a (bye)" in texts


@pytest.mark.parametrize("frame", [
    {"type": "message", "id": "x"},
    {"type": "message"},
    {"type": "joined"},
    {"type": "history", "room": "#a", "messages": "nope"},
    {"type": "nick", "old": 1},
    {"type": "ack", "label": 99},
    {"type": "error"},
    {"type": "welcome"},
    {"type": "what-is-this", "x": 1},
    {"type": "topic", "room": None},
    # Bad in parts the checks on arrival repair or drop: these reach their handlers.
    {"type": "welcome", "nick": 5, "limits": "x"},
    {"type": "error", "code": 5, "message": None, "fatal": "yes"},
    {"type": "message", "room": "#a", "id": 3, "ts": -1, "from": "bob", "text": "\x1b[2J"},
    {"type": "joined", "room": "#a", "members": "x", "topic": 3},
    {"type": "history", "room": "#a", "messages": [1, {"id": "x"}], "more": "maybe"},
    {"type": "parted", "room": "#a", "reason": 4},
    {"type": "rooms", "rooms": [1, {"room": 2}], "more": 1},
    {"type": "members", "room": "#a", "members": [1, None]},
    {"type": "topic", "room": "#a", "topic": 5, "by": []},
    {"type": "join", "room": "#a", "nick": "carol", "ts": "x"},
    {"type": "part", "room": "#a", "nick": "bob", "reason": 7},
    {"type": "quit", "room": "#a", "nick": "bob", "reason": {"x": 1}},
    {"type": "nick", "room": "#a", "old": "bob", "new": "rob", "ts": "x"},
    {"type": "ping", "token": {"x": 1}},
    {"type": "pong", "token": []},
])
def test_garbage_from_the_server_never_raises(frame: dict[str, Any]) -> None:
    core = Core("alice", ["#a"])
    join_reply(core, welcome(core)[0], [])
    core.receive(frame)
    # Refused by the checks on arrival, not caught after a handler threw.
    assert core.handler_errors == 0


def test_a_handler_that_throws_is_survived_counted_and_shown(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The last line of defence behind the checks on arrival: a bug in a handler does not
    take the client down, and does not hide either."""
    core = Core("alice", ["#a"])
    join_reply(core, welcome(core)[0], [])

    def broken(*_: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setitem(events.HANDLERS, "topic", broken)
    core.receive({"type": "topic", "room": "#a", "topic": "t", "by": "bob", "ts": 1})
    assert core.handler_errors == 1
    errors = [ln.text for ln in core.model.buffers[SERVER].lines if ln.kind == "error"]
    assert errors[-1] == "client bug: could not handle a 'topic' frame (RuntimeError: a bug)"
    core.receive(msg(2))  # and it keeps working
    assert 2 in core.model.get("#a").ids  # type: ignore[union-attr]


def test_ping_is_answered_and_pong_measures_lag() -> None:
    core = Core("alice", [])
    welcome(core)
    core.receive({"type": "ping", "token": "t1"})
    assert core.take_outbox() == [{"type": "pong", "token": "t1"}]
    core.ping(100.0)
    (ping,) = core.take_outbox()
    core.receive({"type": "pong", "token": ping["token"]}, now=100.025)
    assert core.model.lag_ms == pytest.approx(25.0)
    assert not core.ping_outstanding()


def test_history_command_fetches_older_messages_into_the_buffer() -> None:
    core = Core("alice", ["#a"])
    join_reply(core, welcome(core)[0], [msg(10), msg(20)])
    core.execute_line("/history 5")
    (frame,) = core.take_outbox()
    assert frame == {"type": "history", "room": "#a", "before": 10, "limit": 5,
                     "label": frame["label"]}
    core.receive({"type": "history", "room": "#a", "messages": [msg(3), msg(7)],
                  "more": False, "label": frame["label"]})
    assert ids(core.model.cur) == [3, 7, 10, 20]
    assert core.model.cur.lines[-1].text == "fetched 2 older message(s)"


def test_history_count_is_bounded_by_the_servers_page_from_welcome() -> None:
    core = Core("alice", ["#a"])
    join_reply(core, welcome(core)[0], [msg(10)])  # welcome.limits without history_page
    core.execute_line("/history 201")  # over the protocol's default page (200)
    assert core.take_outbox() == []
    assert core.model.cur.lines[-1].text.startswith("usage: /history")
    assert core.failures == 1
    core.execute_line("/history 200")
    assert core.take_outbox()[0]["limit"] == 200
    core.disconnected("restarted with a bigger page")
    join_reply(core, welcome(core, limits={"history_page": 500})[0], [])
    core.execute_line("/history 300")
    assert [(f["type"], f["limit"]) for f in core.take_outbox()] == [("history", 300)]


def test_part_closes_the_buffer_and_forgets_the_room() -> None:
    core = Core("alice", ["#a", "#b"])
    out = welcome(core)
    for frame in out:
        join_reply(core, frame, [])
    core.execute_line("/part #b bye")
    (frame,) = core.take_outbox()
    assert frame == {"type": "part", "room": "#b", "reason": "bye", "label": frame["label"]}
    core.receive({"type": "parted", "room": "#b", "label": frame["label"]})
    assert core.model.get("#b") is None and core.wanted_rooms == ["#a"]
    core.disconnected("x")
    assert [f["room"] for f in welcome(core)] == ["#a"]  # not rejoined after a reconnect


def test_plain_join_with_more_does_not_page_forward() -> None:
    # After a plain join, `more` means older messages exist: nothing to catch up.
    core = Core("alice", ["#a"])
    join_reply(core, welcome(core)[0], [msg(82), msg(97)], more=True)
    assert core.take_outbox() == []


# Whatever the server sends, Core.receive never raises (the UI must survive it).
_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.text(max_size=20)
    | st.binary(max_size=8) | st.floats(allow_nan=True),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=8)
_fields = ["room", "to", "from", "text", "id", "ts", "label", "nick", "old", "new", "topic",
           "members", "messages", "more", "code", "message", "fatal", "token", "rooms",
           "limits", "session", "with", "action", "reason", "by", "previous"]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["welcome", "error", "ack", "message", "joined", "history", "parted",
                        "rooms", "members", "topic", "join", "part", "quit", "nick", "ping",
                        "pong", "bogus"]),
       st.dictionaries(st.sampled_from(_fields), _values, max_size=8),
       st.booleans())
def test_fuzzed_server_frames_never_raise(ftype: str, fields: dict[str, Any],
                                          use_label: bool) -> None:
    core = Core("alice", ["#a"])
    join_reply(core, welcome(core)[0], [msg(1)])
    core.execute_line("pending")
    frame = {**fields, "type": ftype}
    if use_label:
        frame["label"] = core.take_outbox()[0]["label"]
    core.receive(frame)
    assert core.handler_errors == 0  # refused on arrival, not caught after a handler threw
    core.receive(msg(2))  # and it keeps working afterwards
    assert 2 in core.model.get("#a").ids  # type: ignore[union-attr]


def test_reconnect_catches_up_direct_messages_too() -> None:
    core = Core("alice", [])
    welcome(core)
    core.receive({"type": "message", "id": 5, "ts": 1, "to": "alice", "from": "Bob",
                  "text": "one", "action": False})
    core.disconnected("lost")
    out = welcome(core)
    assert out == [{"type": "history", "with": "Bob", "after": 5, "label": out[0]["label"]}]
    core.receive({"type": "history", "with": "Bob", "more": False, "label": out[0]["label"],
                  "messages": [{"type": "message", "id": 8, "ts": 2, "to": "alice",
                                "from": "Bob", "text": "two", "action": False}]})
    assert ids(core.model.get("bob")) == [5, 8]  # type: ignore[arg-type]


def test_rejoin_after_part_is_a_plain_join() -> None:
    core = Core("alice", ["#a"], ClientState(rooms={"#a": 7}))
    (join,) = welcome(core)
    assert join["after"] == 7
    join_reply(core, join, [])
    core.take_outbox()
    core.execute_line("/part")
    (part,) = core.take_outbox()
    core.receive({"type": "parted", "room": "#a", "label": part["label"]})
    core.execute_line("/join #a")
    (again,) = core.take_outbox()
    assert "after" not in again


def test_backlog_is_not_unread_but_missed_messages_are() -> None:
    core = Core("alice", ["#a", "#b"])
    join_a, join_b = welcome(core)
    join_reply(core, join_a, [msg(1, "alice: old mention")])
    join_reply(core, join_b, [msg(2, "backlog", room="#b")])
    b = core.model.get("#b")
    assert b is not None and b.unread == 0 and core.model.alerts == 0
    assert core.model.get("#a").lines[0].mention  # type: ignore[union-attr]
    core.disconnected("lost")
    out = welcome(core)
    rejoin_b = next(f for f in out if f["room"] == "#b")
    join_reply(core, rejoin_b, [msg(3, "missed, alice", room="#b")])
    assert (b.unread, b.mentions, core.model.alerts) == (1, 1, 1)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 60), max_size=120), st.integers(10, 40))
def test_buffer_ids_stay_sorted_unique_and_bounded(arrivals: list[int], size: int) -> None:
    # Any arrival order with any duplicates (live, catch-up pages, older history).
    buf = Buffer("#a", "#a", "room", scrollback=size)
    for mid in arrivals:
        buf.add(Line("message", float(mid), "t", id=mid))
    got = ids(buf)
    assert got == sorted(set(got)) and len(buf.lines) <= size
    assert buf.last_id == max(arrivals, default=0)
    assert set(got) <= set(arrivals)


def test_a_peers_nick_change_renames_its_dm_buffer_in_place() -> None:
    core = Core("alice", ["#a"])
    join_reply(core, welcome(core)[0], [])
    core.receive({"type": "message", "id": 5, "ts": 1000, "to": "alice", "from": "bob",
                  "text": "psst", "action": False})
    order = [b.key for b in core.model.order()]
    for room in ("#a", "#b"):  # one event per shared room: renamed once, noted once
        core.receive({"type": "nick", "room": room, "old": "bob", "new": "Bobby", "ts": 2000})
    assert core.model.get("bob") is None
    dm = core.model.get("bobby")
    assert dm is not None and dm.name == "Bobby" and ids(dm) == [5]
    assert [line.text for line in dm.lines].count("bob is now known as Bobby") == 1
    assert [b.key for b in core.model.order()] == [k if k != "bob" else "bobby" for k in order]
    core.execute_line("/switch Bobby")
    core.execute_line("again")
    assert core.take_outbox()[-1]["to"] == "Bobby"


def test_rooms_and_who_follow_every_page() -> None:
    """protocol.md §4: `rooms` and `who` replies are paged; the client asks for the next
    page with `after` = the last entry while `more` is true, and shows the whole list."""
    core = Core("alice", ["#a"])
    join_reply(core, welcome(core)[0], [])
    core.execute_line("/rooms")
    (req,) = core.take_outbox()
    core.receive({"type": "rooms", "rooms": [{"room": "#a", "members": 2, "topic": ""}],
                  "more": True, "label": req["label"]})
    (nxt,) = core.take_outbox()
    assert nxt == {"type": "rooms", "after": "#a", "label": nxt["label"]}
    core.receive({"type": "rooms", "rooms": [{"room": "#b", "members": 1, "topic": "B"}],
                  "more": False, "label": nxt["label"]})
    assert not core.take_outbox() and not core.busy()
    texts = [line.text for line in core.model.cur.lines]
    assert "2 room(s):" in texts and "  #b (1) - B" in texts
    assert {"#a", "#b"} <= core.model.known_rooms
    core.execute_line("/who")
    (req,) = core.take_outbox()
    assert req == {"type": "who", "room": "#a", "label": req["label"]}
    core.receive({"type": "members", "room": "#a", "members": ["alice", "bob"], "more": True,
                  "label": req["label"]})
    (nxt,) = core.take_outbox()
    assert nxt == {"type": "who", "room": "#a", "after": "bob", "label": nxt["label"]}
    core.receive({"type": "members", "room": "#a", "members": ["carol"], "more": False,
                  "label": nxt["label"]})
    assert "#a: 3 member(s): alice, bob, carol" in [line.text for line in core.model.cur.lines]
    assert sorted(core.model.cur.members.values()) == ["alice", "bob", "carol"]


def test_a_joined_with_more_members_fetches_the_rest_quietly() -> None:
    core = Core("alice", ["#a"])
    (join,) = welcome(core)
    core.receive({"type": "joined", "room": "#a", "topic": "", "members": ["alice", "bob"],
                  "more": True, "label": join["label"]})
    core.receive({"type": "history", "room": "#a", "messages": [], "more": False,
                  "label": join["label"]})
    (who,) = core.take_outbox()
    assert who == {"type": "who", "room": "#a", "after": "bob", "label": who["label"]}
    core.receive({"type": "members", "room": "#a", "members": ["carol"], "more": True,
                  "label": who["label"]})
    (who,) = core.take_outbox()
    assert who == {"type": "who", "room": "#a", "after": "carol", "label": who["label"]}
    core.receive({"type": "members", "room": "#a", "members": ["dave"], "more": False,
                  "label": who["label"]})
    buf = core.model.get("#a")
    assert buf is not None and sorted(buf.members.values()) == ["alice", "bob", "carol", "dave"]
    assert not [line for line in buf.lines if "member(s)" in line.text]
    assert not core.take_outbox() and not core.busy()
