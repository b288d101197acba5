"""AWAY and away-notify (chatd/irc/away.py): IRC and native clients in memory, through
the real Session and Broker."""

from __future__ import annotations

from pathlib import Path

import pytest
from cores import Conn, Hub

CAPS = "away-notify extended-join"


@pytest.fixture
def hub(tmp_path: Path) -> Hub:
    return Hub(tmp_path)


def said(conn: Conn) -> list[tuple[str, ...]]:
    """(source nick, command, params...) of each line, numerics' target dropped."""
    return [((line.source or "").split("!")[0], line.command,
             *(line.params[1:] if line.command.isdigit() else line.params))
            for line in conn.lines()]


def test_away_and_back_with_the_numerics_and_away_notify(hub: Hub) -> None:
    alice, carol = hub.irc("alice", CAPS), hub.irc("carol")  # carol: no away-notify
    bob = hub.native("bob")
    for conn in (alice, carol):
        conn.send("JOIN #a")
    bob.request(type="join", room="#a")
    alice.lines(), carol.lines(), bob.frames()

    bob.request(type="away", message="lunch")
    bob.frames()
    assert said(alice) == [("bob", "AWAY", "lunch")]
    assert said(carol) == []  # told, but shows nothing without the cap
    carol.send("AWAY :in a meeting")
    assert said(carol) == [("chatd", "306", "You have been marked as being away")]
    assert said(alice) == [("carol", "AWAY", "in a meeting")]
    assert [(f["type"], f["nick"], f["message"]) for f in bob.frames()] == [
        ("away", "carol", "in a meeting")]

    alice.send("WHO #a\r\nWHOIS carol\r\nUSERHOST bob carol alice")
    lines = said(alice)
    who = {x[6]: x[7] for x in lines if x[1] == "352"}
    assert who == {"alice": "H", "bob": "G", "carol": "G"}
    assert ("chatd", "301", "carol", "in a meeting") in lines
    (userhost,) = [x for x in lines if x[1] == "302"]
    assert userhost[2] == "bob=-~u@chatd carol=-~u@chatd alice=+~u@chatd"

    carol.send("AWAY")
    assert said(carol) == [("chatd", "305", "You are no longer marked as being away")]
    assert said(alice) == [("carol", "AWAY")]
    alice.send("WHOIS carol")
    assert not any(x[1] == "301" for x in said(alice))


def test_a_privmsg_to_an_away_nick_gets_rpl_away(hub: Hub) -> None:
    alice, bob = hub.irc("alice"), hub.native("bob")
    bob.request(type="away", message="on holiday")
    alice.send("PRIVMSG bob :are you there?")
    assert said(alice) == [("chatd", "301", "bob", "on holiday")]
    assert bob.frames()[-1]["text"] == "are you there?"
    bob.request(type="away")
    alice.send("PRIVMSG bob :welcome back")
    assert said(alice) == []


def test_who_joins_while_away_and_who_was_away_before_you_came(hub: Hub) -> None:
    alice = hub.irc("alice", CAPS)
    bob = hub.native("bob")
    bob.request(type="away", message="brb")
    bob.request(type="join", room="#a")
    alice.send("JOIN #a")
    alice.lines()
    alice.send("WHO #a")
    assert {x[6]: x[7] for x in said(alice) if x[1] == "352"} == {"alice": "H", "bob": "G"}

    carol = hub.native("carol")
    carol.request(type="away", message="asleep")
    carol.request(type="join", room="#a")
    assert said(alice) == [("carol", "JOIN", "#a", "*", "carol"), ("carol", "AWAY", "asleep")]
    carol.request(type="nick", nick="carol2")
    alice.lines()
    alice.send("WHOIS carol2")
    assert ("chatd", "301", "carol2", "asleep") in said(alice)
    alice.send("PART #a")  # the users it no longer shares a room with are forgotten
    alice.lines()
    assert alice.front is not None and alice.front.away == {}
