"""An IRC client and a native client in the same rooms, in memory: IRC lines through the
front end, the real Session, the real Broker with a Store on a SQLite file, and back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cores import Conn, Hub

from chatd.irc import Line

CAPS = ("message-tags server-time echo-message labeled-response batch extended-join "
        "userhost-in-names")


@pytest.fixture
def hub(tmp_path: Path) -> Hub:
    return Hub(tmp_path)


def said(conn: Conn) -> list[tuple[str, ...]]:
    """(source nick, command, params...) of each line, tags and numerics' target dropped."""
    out = []
    for line in conn.lines():
        nick = (line.source or "").split("!")[0]
        params = line.params[1:] if line.command.isdigit() else line.params
        out.append((nick, line.command, *params))
    return out


def events(conn: Conn) -> list[dict[str, Any]]:
    return [{k: v for k, v in f.items() if k != "ts"} for f in conn.frames()]


def test_messages_and_actions_both_ways(hub: Hub) -> None:
    bob = hub.native("bob")
    bob.request(type="join", room="#general")
    bob.request(type="msg", room="#general", text="before you came\nsecond line")
    bob.frames()
    alice = hub.irc("alice", CAPS)
    alice.send("JOIN #general")
    lines = alice.lines()
    assert [x.command for x in lines] == ["JOIN", "353", "366", "BATCH", "PRIVMSG", "PRIVMSG",
                                          "BATCH"]
    assert lines[0].params == ["#general", "*", "alice"]  # extended-join: no account
    assert lines[1].params[-1] == "alice!~u@chatd bob!~u@chatd"  # userhost-in-names
    history = lines[4:6]
    assert [x.params[1] for x in history] == ["before you came", "second line"]
    assert history[0].tags["msgid"] == "1" and history[0].tags["time"].endswith("Z")
    assert history[0].tags["batch"] == lines[3].params[0][1:]
    assert events(bob) == [{"type": "join", "room": "#general", "nick": "alice"}]

    alice.send("@label=m1 PRIVMSG #general :\x02hi\x02 bob")
    (echo,) = alice.lines()
    assert (echo.tags["label"], echo.tags["msgid"], echo.params) == ("m1", "2",
                                                                     ["#general", "hi bob"])
    assert events(bob) == [{"type": "message", "id": 2, "room": "#general", "from": "alice",
                            "text": "hi bob", "action": False}]
    alice.send("PRIVMSG #general :\x01ACTION waves\x01")
    assert events(bob)[0]["action"] is True and alice.lines()[0].params[1] == "\x01ACTION waves\x01"
    bob.request(type="msg", room="#general", text="nods", action=True)
    assert said(alice) == [("bob", "PRIVMSG", "#general", "\x01ACTION nods\x01")]


def test_direct_messages_and_their_history(hub: Hub) -> None:
    bob = hub.native("bob")
    alice = hub.irc("alice", CAPS + " draft/chathistory")
    alice.send("PRIVMSG Bob :psst")  # nicks are found by key: any case
    assert said(alice) == [("alice", "PRIVMSG", "bob", "psst")]
    assert events(bob)[0]["to"] == "bob"
    bob.request(type="msg", to="alice", text="yes?")
    assert said(alice) == [("bob", "PRIVMSG", "alice", "yes?")]
    alice.send("CHATHISTORY LATEST bob * 10")
    lines = alice.lines()
    ref = lines[0].params[0][1:]
    assert [(x.command, *x.params) for x in lines] == [
        ("BATCH", f"+{ref}", "chathistory", "bob"), ("PRIVMSG", "bob", "psst"),
        ("PRIVMSG", "alice", "yes?"), ("BATCH", f"-{ref}")]
    assert [x.tags["batch"] for x in lines[1:3]] == [ref, ref]


def test_topic_join_part_nick_and_quit_both_ways(hub: Hub) -> None:
    alice = hub.irc("alice", CAPS)
    alice.send("JOIN #r")
    alice.lines()
    bob = hub.native("bob")
    bob.request(type="join", room="#r")
    bob.frames()
    assert said(alice) == [("bob", "JOIN", "#r", "*", "bob")]
    alice.send("TOPIC #r :\x0304be\x03 nice")
    assert said(alice) == [("alice", "TOPIC", "#r", "be nice")]
    assert events(bob) == [{"type": "topic", "room": "#r", "topic": "be nice", "by": "alice"}]
    bob.request(type="topic", room="#r", topic="be kind")
    assert said(alice) == [("bob", "TOPIC", "#r", "be kind")]
    alice.send("TOPIC #r")
    topic, who_time = said(alice)
    assert topic == ("chatd", "332", "#r", "be kind") and who_time[:4] == ("chatd", "333", "#r",
                                                                            "bob")
    bob.request(type="nick", nick="robert")
    bob.request(type="part", room="#r", reason="later")
    assert said(alice) == [("bob", "NICK", "robert"), ("robert", "PART", "#r", "later")]
    bob.request(type="join", room="#r")
    alice.lines()
    alice.send("NICK alicia")
    assert said(alice) == [("alice", "NICK", "alicia")]
    assert events(bob)[-1] == {"type": "nick", "room": "#r", "old": "alice", "new": "alicia"}
    bob.request(type="quit", reason="gone fishing")
    assert said(alice) == [("robert", "QUIT", "gone fishing")]
    carol = hub.native("carol")
    carol.request(type="join", room="#r")
    carol.frames()
    alice.lines()
    alice.send("PART #r :bye all")
    assert said(alice) == [("alicia", "PART", "#r", "bye all")]
    assert events(carol) == [{"type": "part", "room": "#r", "nick": "alicia",
                              "reason": "bye all"}]
    alice.send("JOIN #r\r\nQUIT :see you")
    assert said(alice)[-1] == ("", "ERROR", "Closing link: chatd (Quit: see you)")
    assert events(carol)[-1] == {"type": "quit", "room": "#r", "nick": "alicia",
                                 "reason": "see you"}


def test_chathistory_pages_by_msgid(hub: Hub) -> None:
    bob = hub.native("bob")
    bob.request(type="join", room="#h")
    for i in range(1, 11):
        bob.request(type="msg", room="#h", text=f"m{i}")
    alice = hub.irc("alice", CAPS + " draft/chathistory")
    alice.send("JOIN #h")
    assert "PRIVMSG" not in [x.command for x in alice.lines()]  # it asks for what it wants

    def texts(command: str) -> list[str]:
        alice.send(command)
        return [x.params[1] for x in alice.lines() if x.command == "PRIVMSG"]

    assert texts("CHATHISTORY LATEST #h * 3") == ["m8", "m9", "m10"]
    assert texts("CHATHISTORY BEFORE #h msgid=8 3") == ["m5", "m6", "m7"]
    assert texts("CHATHISTORY AFTER #h msgid=8 5") == ["m9", "m10"]
    assert texts("CHATHISTORY LATEST #h msgid=8 5") == ["m9", "m10"]
    assert texts("CHATHISTORY AROUND #h msgid=5 3") == ["m4", "m5", "m6"]
    assert texts("CHATHISTORY BETWEEN #h msgid=2 msgid=6 10") == ["m3", "m4", "m5"]
    assert texts("CHATHISTORY BETWEEN #h msgid=6 msgid=2 2") == ["m4", "m5"]
    alice.send("@label=h CHATHISTORY LATEST #nope * 3")
    (fail,) = alice.lines()
    assert (fail.tags["label"], fail.command, fail.params[:3]) == (
        "h", "FAIL", ["CHATHISTORY", "INVALID_TARGET", "LATEST"])


def test_labeled_responses_through_the_real_session(hub: Hub) -> None:
    bob = hub.native("bob")
    bob.request(type="join", room="#l")
    alice = hub.irc("alice", CAPS)
    alice.send("@label=j JOIN #l\r\n@label=n NAMES #l\r\n@label=p PING :x\r\n@label=a AWAY")
    lines = alice.lines()
    assert lines[0].command == "BATCH" and lines[0].tags == {"label": "j"}
    names = [x for x in lines if x.tags.get("label") == "n"]
    assert names[0].command == "BATCH" and names[0].params[1] == "labeled-response"
    assert [(x.command, x.tags.get("label")) for x in lines[-2:]] == [("PONG", "p"),
                                                                      ("305", "a")]


def test_keepalive_and_handshake_deadline_apply_to_irc(hub: Hub) -> None:
    alice = hub.irc("alice")
    hub.advance(61.0)  # ping_interval
    ping = alice.lines()[-1]
    assert ping.command == "PING"
    alice.send(f"PONG :{ping.params[0]}")
    hub.advance(31.0)  # ping_timeout: answered, so still here
    assert not alice.session.ended
    hub.advance(61.0)
    alice.lines()
    hub.advance(31.0)
    assert said(alice)[-1] == ("", "ERROR", "Closing link: chatd (no frame within "
                               "ping_timeout after a ping)")
    lurker = hub.irc()
    lurker.send("CAP LS 302\r\nNICK x\r\nUSER x 0 * :x")  # never ends CAP: never registers
    hub.advance(11.0)
    assert said(lurker)[-1][1] == "ERROR" and lurker.session.ended == "handshake_timeout"


def test_look_alike_nicks_are_taken_and_floods_end_the_link(tmp_path: Path) -> None:
    hub = Hub(tmp_path, rate={"msg_burst": 2, "msg_rate": 0.01, "flood_strikes": 2})
    hub.native("bob")
    alice = hub.irc()
    alice.send("NICK b0b\r\nUSER a 0 * :a")
    assert said(alice) == [("chatd", "433", "b0b", "nick 'b0b' is in use")]
    alice.send("NICK alice")
    assert said(alice)[0][1] == "001"
    alice.send("JOIN #f")
    alice.lines()
    alice.send("\r\n".join(["PRIVMSG #f :spam"] * 6))
    lines: list[Line] = alice.lines()
    assert [x.command for x in lines] == ["263", "263", "ERROR"]
    assert lines[-1].params == ["Closing link: chatd (rate limits exceeded for too long)"]


def test_multiline_both_ways_and_for_a_plain_client(hub: Hub) -> None:
    bob = hub.native("bob")
    bob.request(type="join", room="#m")
    modern = hub.irc("alice", CAPS + " draft/multiline")
    plain = hub.irc("carol")
    modern.send("JOIN #m")
    plain.send("JOIN #m")
    modern.lines(), plain.lines(), bob.frames()
    long_line = "ü" * 400  # 800 bytes: more than one IRC line
    modern.send("BATCH +x draft/multiline #m\r\n@batch=x PRIVMSG #m :one\r\n"
                "@batch=x PRIVMSG #m :\r\n@batch=x PRIVMSG #m :" + "ü" * 200 + "\r\n"
                "@batch=x;draft/multiline-concat PRIVMSG #m :" + "ü" * 200 + "\r\nBATCH -x")
    (msg,) = bob.frames()
    assert msg["text"] == "one\n\n" + long_line
    echo = modern.lines()
    assert echo[0].params[1:] == ["draft/multiline", "#m"] and echo[0].tags["msgid"]
    seen = [x.params[1] for x in plain.lines()]
    assert seen[0] == "one" and "".join(seen[1:]) == long_line  # no blank line, cut to fit
    bob.request(type="msg", room="#m", text="a\nb")
    assert [x.params[1] for x in plain.lines()] == ["a", "b"]
    batch = modern.lines()
    assert [x.command for x in batch] == ["BATCH", "PRIVMSG", "PRIVMSG", "BATCH"]


def test_a_join_right_behind_a_part_of_the_room_is_carried_out(hub: Hub) -> None:
    """A client's /cycle sends PART and JOIN at once: the JOIN comes while the room is
    still the client's, and is not 'a JOIN of a room you are in' (it was ignored)."""
    bob = hub.native("bob")
    bob.request(type="join", room="#general")
    alice = hub.irc("alice")
    alice.send("JOIN #general")
    alice.lines()
    bob.frames()
    alice.send("PART #general :brb\r\nJOIN #general")
    assert [x.command for x in alice.lines()] == ["PART", "JOIN", "353", "366"]
    assert [(f["type"], f["nick"]) for f in events(bob)] == [("part", "alice"),
                                                             ("join", "alice")]
    alice.send("PART #nowhere\r\nJOIN #general")  # a failed PART leaves no trace
    assert [x.command for x in alice.lines()] == ["442"]
