"""The history reader process, against the real server: routing never waits on it, it is
restarted when it dies, catch-up stays exact however late its replies come, and it goes
away with the server."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator

import pytest
from serverproc import ServerProcess, kill_quietly, proc_stat, wait_until
from test_server_catchup import room_ids
from wire import connect

# recent = 0: no page comes from the parent's memory, every one is read by the reader.
SETTINGS = {"history": {"recent": 0}, "rate": {"msg_burst": 100}}


@pytest.fixture
def server(start: Callable[..., ServerProcess]) -> ServerProcess:
    return start(SETTINGS)


@pytest.fixture
def stop_reader(server: ServerProcess) -> Iterator[Callable[[], int]]:
    """Stops (SIGSTOP) the reader when called; continues it after the test if needed."""
    stopped: list[int] = []

    def stop() -> int:
        stopped.append(server.reader())
        kill_quietly(stopped[-1], signal.SIGSTOP)
        return stopped[-1]

    yield stop
    for pid in stopped:
        kill_quietly(pid, signal.SIGCONT)


def test_routing_goes_on_while_a_history_read_waits(
        server: ServerProcess, stop_reader: Callable[[], int]) -> None:
    with connect(server, "alice") as alice, connect(server, "bob") as bob:
        alice.join("#r")
        ids = [alice.say("#r", f"m{i}")["id"] for i in range(3)]
        stopped_reader = stop_reader()
        asking = bob.request({"type": "history", "with": "alice"})  # needs the reader
        for i in range(20):  # the others' chat and broker round trips are not held up
            alice.say("#r", f"meanwhile {i}")
            alice.sync()
        assert bob.pending("history") == []
        kill_quietly(stopped_reader, signal.SIGCONT)
        assert bob.reply(asking)["type"] == "history"
        assert ids


def test_a_reader_that_dies_is_replaced_and_its_reads_answered(
        server: ServerProcess, stop_reader: Callable[[], int]) -> None:
    with connect(server, "alice") as alice, connect(server, "bob") as bob:
        alice.join("#r")
        ids = [alice.say("#r", f"m{i}")["id"] for i in range(3)]
        stopped_reader = stop_reader()
        mark = server.mark()
        label = bob.request({"type": "join", "room": "#r", "after": 0})
        assert bob.reply(label)["type"] == "joined"
        alice.sync()  # (bob's own requests wait behind his join: replies keep its order)
        kill_quietly(stopped_reader, signal.SIGKILL)
        page = bob.reply(label)
        assert [m["id"] for m in page["messages"]] == ids
        server.wait_for_log(r"history reader \(pid \d+\) ended: killed by SIGKILL",
                            start=mark)
        server.wait_for_log(r"history reader: pid \d+", start=mark)
        assert server.reader() != stopped_reader


def test_catch_up_stays_exact_when_the_page_comes_late(
        server: ServerProcess, stop_reader: Callable[[], int]) -> None:
    """Messages arrive while bob's page waits for the reader and while it is read (so
    its snapshot may or may not hold them): either way each id comes once, in order."""
    with connect(server, "alice") as alice, connect(server, "bob") as bob:
        alice.join("#r")
        acked = [alice.say("#r", f"old {i}")["id"] for i in range(10)]
        stopped_reader = stop_reader()
        label = bob.request({"type": "join", "room": "#r", "after": acked[3]})
        bob.reply(label)  # joined
        acked += [alice.say("#r", f"while waiting {i}")["id"] for i in range(5)]
        kill_quietly(stopped_reader, signal.SIGCONT)
        acked += [alice.say("#r", f"while reading {i}")["id"] for i in range(5)]
        page = bob.reply(label)
        while page["more"]:
            page = bob.call({"type": "history", "room": "#r",
                             "after": page["messages"][-1]["id"]})
        acked.append(alice.say("#r", "after")["id"])
        bob.wait_type("message", room="#r", text="after")
        assert room_ids(bob.received, "#r") == acked[4:]


def test_the_reader_ends_with_the_server(start: Callable[..., ServerProcess]) -> None:
    server = start(SETTINGS)
    pid = server.reader()
    assert proc_stat(pid) is not None
    server.signal(signal.SIGTERM)
    assert server.wait_exit(15) == 0
    wait_until(lambda: proc_stat(pid) is None, message="the reader to be gone")
