"""Integration: names that cannot fool a reader (issue 8, section 5; protocol.md §3),
against the real server: look-alike nicks are one nick.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from serverproc import ServerProcess
from wire import Client, connect

FAST: dict[str, Any] = {"rate": {
    "msg_rate": 100000.0, "msg_burst": 100000, "history_rate": 100000.0,
    "history_burst": 100000, "cmd_rate": 100000.0, "cmd_burst": 100000}}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("names"), FAST).start()
    yield srv
    assert srv.stop() == 0
    assert "Traceback" not in "\n".join(srv.lines)


@pytest.fixture
def clients(server: ServerProcess) -> Iterator[list[Client]]:
    made: list[Client] = []
    yield made
    for c in made:
        c.close()


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

