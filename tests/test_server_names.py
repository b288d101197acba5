"""Integration: names and text that cannot fool a reader (issue 8, section 5; protocol.md
§3), against the real server: look-alike nicks are one nick, and text, topics and reasons
that could reorder or hide what a reader sees are refused (or, for a line separator in
message text, made the newline it means).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from serverproc import FAST, ServerProcess
from wire import Client, connect


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("names"), FAST).start()
    yield srv
    assert srv.stop() == 0
    assert "Traceback" not in "\n".join(srv.lines)


def test_look_alike_nicks_are_refused_and_reach_the_holder(server: ServerProcess,
                                                          clients: list[Client]) -> None:
    alice = connect(server, "alice")
    bob = connect(server, "bob")
    clients += [alice, bob]
    for twin in ("aIice", "a1ice", "a|ice", "ALICE", "b0b", "B0B"):
        c = connect(server)
        clients.append(c)
        err = c.call({"type": "hello", "version": 1, "nick": twin})
        assert (err["type"], err["code"], err["fatal"]) == ("error", "nick_taken", False), err
        assert c.call({"type": "hello", "version": 1,
                       "nick": f"x{len(clients)}"})["type"] == "welcome"  # still usable
    assert bob.error({"type": "nick", "nick": "a1ice"})["code"] == "nick_taken"
    # A direct message to a look-alike spelling reaches the one holder, by her spelling.
    ack = bob.call({"type": "msg", "to": "aIice", "text": "is it you?"})
    assert (ack["type"], ack["to"]) == ("ack", "alice"), ack
    got = alice.wait_type("message", id=ack["id"])
    assert (got["from"], got["to"], got["text"]) == ("bob", "alice", "is it you?")
    hist = bob.call({"type": "history", "with": "A1ICE"})
    assert [m["id"] for m in hist["messages"]] == [ack["id"]], hist


def test_text_that_could_fool_a_reader_is_refused(server: ServerProcess,
                                                 clients: list[Client]) -> None:
    a = connect(server, "writer")
    b = connect(server, "reader")
    clients += [a, b]
    a.join("#safe")
    b.join("#safe")
    for bad in ("pay \u202etxt.exe", "ad\u200bmin", "\ufeffhi", "\u2066x\u2069",
                "x\U000e0041\U000e0042"):
        err = a.error({"type": "msg", "room": "#safe", "text": bad})
        assert (err["code"], err["fatal"]) == ("invalid_value", False), err
        assert "U+" in err["message"], err
        for req in ({"type": "topic", "room": "#safe", "topic": bad},
                    {"type": "part", "room": "#safe", "reason": bad}):
            assert a.error(req)["code"] == "invalid_value", req
    # Emoji sequences and scripts that need zero-width joiners still go through.
    family = "👩\u200d💻 می\u200cخواهم"
    ack = a.say("#safe", family)
    assert b.wait_type("message", id=ack["id"])["text"] == family
    # A line separator is a newline: in text it arrives as one, in a topic it is refused.
    ack = a.say("#safe", "one\u2028two")
    assert b.wait_type("message", id=ack["id"])["text"] == "one\ntwo"
    assert a.error({"type": "topic", "room": "#safe", "topic": "one\u2028two"})["code"] == \
        "invalid_value"
    b.sync()
    assert not b.pending("topic") and not b.pending("part"), "a refused request took effect"


def test_one_rule_for_tab(server: ServerProcess, clients: list[Client]) -> None:
    """Tab is layout for message text only: a topic or reason with one is refused, a quit
    with one still ends the session, with the reason "quit"."""
    a = connect(server, "tabber")
    b = connect(server, "watcher")
    clients += [a, b]
    a.join("#tab")
    b.join("#tab")
    ack = a.say("#tab", "col1\tcol2")
    assert b.wait_type("message", id=ack["id"])["text"] == "col1\tcol2"
    for req in ({"type": "topic", "room": "#tab", "topic": "a\tb"},
                {"type": "part", "room": "#tab", "reason": "a\tb"}):
        err = a.error(req)
        assert (err["code"], err["fatal"]) == ("invalid_value", False), err
        assert "tab" in err["message"], err
    a.send({"type": "quit", "reason": "bye\tnow"})
    a.wait_closed()
    assert b.wait_type("quit", room="#tab")["reason"] == "quit"
