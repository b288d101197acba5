"""The everyday commands: /ignore, /unignore, /whois, /clear, /close, /search, /away,
highlight words and completing buffer names (unit tests over Core and the model)."""

from __future__ import annotations

from typing import Any

import pytest
from prompt_toolkit.buffer import Buffer as InputBuffer
from prompt_toolkit.document import Document

from chat_client import commands as c
from chat_client.buffer import SERVER, Line
from chat_client.core import Core
from chat_client.inputline import Completion
from chat_client.model import Model
from chat_client.render import rows_for


def msg(mid: int, text: str = "x", room: str | None = "#a", sender: str = "bob",
        to: str | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "message", "id": mid, "ts": 1763719200000 + mid,
                             "from": sender, "text": text, "action": False}
    frame.update({"room": room} if to is None else {"to": to})
    return frame


def ready(rooms: tuple[str, ...] = ("#a",)) -> Core:
    core = Core("alice", list(rooms))
    core.connected()
    hello = core.take_outbox()[0]
    core.receive({"type": "welcome", "version": 1, "nick": "alice", "label": hello["label"]})
    for frame in core.take_outbox():
        core.receive({"type": "joined", "room": frame["room"], "topic": "",
                      "members": ["alice", "bob", "Carol"], "label": frame["label"]})
        core.receive({"type": "history", "room": frame["room"], "messages": [],
                      "more": False, "label": frame["label"]})
    core.take_outbox()
    return core


def notes(core: Core) -> list[str]:
    return [ln.text for ln in core.model.cur.lines if ln.kind in ("info", "error")]


@pytest.mark.parametrize(
    ("line", "action"),
    [
        ("/ignore", c.Ignore(None)),
        ("/ignore bob", c.Ignore("bob")),
        ("/unignore Bob", c.Unignore("Bob")),
        ("/whois carol", c.Whois("carol")),
        ("/clear", c.Clear()),
        ("/close", c.Close(None)),
        ("/close #a", c.Close("#a")),
        ("/search deploy failed", c.Search("deploy failed")),
        ("/search", c.Search(None)),
        ("/away gone for lunch ", c.Away("gone for lunch")),
        ("/away", c.Away("")),
        ("/back", c.Away("")),
    ],
)
def test_parse_the_new_commands(line: str, action: c.Action) -> None:
    assert c.parse(line) == action


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("/ignore 9lives", "bad nick"),
        ("/ignore a b", "usage: /ignore"),
        ("/unignore", "usage: /unignore NICK"),
        ("/whois", "usage: /whois NICK"),
        ("/clear now", "usage: /clear"),
        ("/close a b", "usage: /close"),
        ("/away " + "x" * 201, "longer than 200"),
        ("/back now", "usage: /back"),
    ],
)
def test_usage_errors_of_the_new_commands(line: str, message: str) -> None:
    with pytest.raises(c.UsageError, match=message):
        c.parse(line)


def test_away_is_asked_of_the_server_shown_and_set_again_after_a_reconnect() -> None:
    core = ready()
    m = core.model
    core.execute_line("/away lunch")
    (req,) = core.take_outbox()
    assert (req["type"], req["message"]) == ("away", "lunch")
    core.receive({"type": "away", "nick": "alice", "message": "lunch", "label": req["label"]})
    assert m.my_away == "lunch" and "you are marked as away: lunch" in notes(core)[-1]
    core.execute_line("/whois alice")
    assert notes(core)[-1] == "  away: lunch"

    # Others: from member lists, events, a join and a direct message's ack.
    core.receive({"type": "away", "nick": "bob", "message": "brb", "ts": 1})
    core.execute_line("/whois BOB")
    assert notes(core)[-2:] == ["bob is online, in #a", "  away: brb"]
    core.receive({"type": "away", "nick": "bob", "message": "", "ts": 2})
    core.receive({"type": "join", "room": "#a", "nick": "dave", "away": "asleep", "ts": 3})
    core.receive({"type": "nick", "room": "#a", "old": "dave", "new": "dave2", "ts": 4})
    assert m.away == {"dave2": "asleep"}
    core.execute_line("/msg carol hi")
    (msg_req,) = core.take_outbox()
    core.receive({"type": "ack", "id": 9, "ts": 5, "to": "carol", "away": "on holiday",
                  "label": msg_req["label"]})
    assert "carol is away: on holiday" in [ln.text for ln in m.get("carol").lines]  # type: ignore[union-attr]

    # A new session: the away status is asked for again, quietly.
    core.disconnected("lost")
    core.connected()
    hello = core.take_outbox()[0]
    core.receive({"type": "welcome", "version": 1, "nick": "alice", "label": hello["label"]})
    again = [f for f in core.take_outbox() if f["type"] == "away"]
    assert [f["message"] for f in again] == ["lunch"] and m.away == {}
    core.execute_line("/back")
    (back,) = [f for f in core.take_outbox() if f["type"] == "away"]
    assert "message" not in back
    core.receive({"type": "away", "nick": "alice", "message": "", "label": back["label"]})
    assert m.my_away == "" and "no longer marked as away" in notes(core)[-1]


def test_ignore_hides_a_nick_in_rooms_and_direct_messages() -> None:
    core = ready(("#a", "#b"))
    m = core.model
    m.switch("#a")
    core.execute_line("/ignore BOB")
    assert "ignoring BOB" in notes(core)[-1]
    core.receive(msg(1, "spam"))
    core.receive(msg(2, "alice: spam", room="#b"))
    core.receive(msg(3, "psst", room=None, to="alice"))
    core.receive(msg(4, "hello", sender="carol"))
    assert [ln.text for ln in m.get("#a").lines if ln.id] == ["hello"]  # type: ignore[union-attr]
    assert m.get("bob") is None  # no direct-message buffer left behind
    assert (m.get("#b").unread, m.alerts) == (0, 0)  # type: ignore[union-attr]
    assert m.get("#b").last_id == 2  # type: ignore[union-attr]  # seen: not fetched again
    core.execute_line("/ignore")
    assert notes(core)[-1] == "ignored: BOB"
    core.execute_line("/unignore bob")
    core.receive(msg(5, "back"))
    assert [ln.text for ln in m.get("#a").lines if ln.id] == ["hello", "back"]  # type: ignore[union-attr]
    core.execute_line("/unignore bob")
    assert "not ignored" in notes(core)[-1]
    core.execute_line("/ignore alice")
    assert "cannot ignore yourself" in notes(core)[-1] and not m.ignored
    assert core.take_outbox() == []  # all of it local


def test_whois_tells_what_the_member_lists_know() -> None:
    core = ready(("#a", "#b"))
    m = core.model
    core.receive({"type": "part", "room": "#b", "nick": "Carol", "reason": "", "ts": 1})
    core.execute_line("/whois carol")
    assert "Carol is online, in #a" in notes(core)
    core.execute_line("/whois zed")
    assert "zed is in none of your rooms" in notes(core)[-1]
    m.add(m.dm("zed"), Line("message", 1, "hi", nick="zed", id=9))
    core.execute_line("/ignore zed")
    core.execute_line("/whois zed")
    assert notes(core)[-2:] == ["  direct messages: buffer 4",
                                "  ignored (/unignore to see their messages)"]
    core.execute_line("/whois ALICE")
    assert notes(core)[-1] == "alice is you"
    assert core.take_outbox() == []


def test_close_leaves_a_room_and_closes_other_buffers() -> None:
    core = ready(("#a", "#b"))
    m = core.model
    core.execute_line("/close #b")
    (part,) = core.take_outbox()
    assert part == {"type": "part", "room": "#b", "label": part["label"]}
    core.receive({"type": "parted", "room": "#b", "label": part["label"]})
    assert m.get("#b") is None and core.wanted_rooms == ["#a"]
    m.dm("bob")
    m.switch("bob")
    core.execute_line("/close")
    assert m.get("bob") is None and m.current == "#a"
    m.room("#gone")  # a room buffer we are not in (a join refused, say)
    core.execute_line("/close #gone")
    assert m.get("#gone") is None
    m.switch(SERVER)
    core.execute_line("/close")
    assert "stays open" in notes(core)[-1]
    core.execute_line("/close #nowhere")
    assert "no buffer" in notes(core)[-1]
    assert core.take_outbox() == []


def test_search_walks_back_through_matches_and_highlights_each() -> None:
    core = ready()
    m = core.model
    for i in range(1, 101):
        core.receive(msg(i, "deploy FAILED" if i in (20, 70) else f"line {i}"))
    core.execute_line("/search failed")
    buf = m.cur
    assert buf.found is not None and buf.found.id == 70 and buf.bottom() == buf.index_of(
        buf.found) + buf.trimmed
    rows = rows_for(buf, buf.bottom(), 80, "alice", m.clock)
    assert all("class:found" in style for row in rows for style, _ in row)
    core.execute_line("/search failed")
    assert buf.found.id == 20
    core.execute_line("/search failed")
    assert buf.found.id == 20 and "no line above the last match" in notes(core)[-1]
    core.execute_line("/search line 9")  # another text: from the view down
    assert buf.found.id == 9
    core.execute_line("/search")
    assert buf.found is None
    core.execute_line("/search no such thing")
    assert "no line on screen or above contains 'no such thing'" in notes(core)[-1]
    buf.scroll_to(None)
    core.execute_line("/search nothing like it")
    assert "no line contains 'nothing like it'" in notes(core)[-1]
    assert core.take_outbox() == []


def test_clear_empties_the_current_buffer_only() -> None:
    core = ready(("#a", "#b"))
    m = core.model
    core.receive(msg(1, "one", room="#a"))
    core.receive(msg(2, "two", room="#b"))
    m.switch("#a")
    core.execute_line("/clear")
    assert m.get("#a").lines == [] and len(m.get("#b").lines) > 0  # type: ignore[union-attr]


def test_highlight_words_count_as_mentions_as_whole_words() -> None:
    m = Model("alice")
    m.set_highlights(["deploy", "on-call", "c++"])
    buf = m.room("#ops")
    for i, text in enumerate(["Deploy done", "deployment done", "who is ON-CALL?",
                              "i like c++.", "redeploy", "alice!"], 1):
        m.add(buf, Line("message", i, text, nick="bob", id=i))
    assert [ln.mention for ln in buf.lines] == [True, False, True, True, False, True]
    assert buf.mentions == 4 and m.alerts == 4
    m.set_highlights([])
    assert not m.mentions_me("deploy")


def test_tab_completes_buffer_names_after_switch_and_close() -> None:
    m = Model("alice")
    for room in ("#general", "#golang", "#rust"):
        m.room(room)
    m.dm("Gordon")
    comp = Completion(m)
    field = InputBuffer()
    field.document = Document("/switch #g", 10)
    comp.complete(field)
    assert field.text == "/switch #general "
    comp.complete(field)
    assert field.text == "/switch #golang "
    field.document = Document("/close go", 9)
    comp.complete(field)
    assert field.text == "/close Gordon "
    field.document = Document("/switch ser", 11)
    comp.complete(field)
    assert field.text == "/switch server "
    assert m.find("server").key == SERVER  # type: ignore[union-attr]
