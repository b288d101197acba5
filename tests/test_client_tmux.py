"""End to end in tmux: two full-screen clients type to each other; screens are read back.

The test runs its own tmux server on a private socket (tests/tmuxpane.py), so it never
touches anyone else's tmux, and kills only that server.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from serverproc import ServerProcess
from tmuxpane import Tmux, chat_client_command
from wire import connect

# Skipped only on a developer's machine without tmux: in CI (.ci/run installs it) a
# missing tmux fails the test instead of hiding it.
pytestmark = pytest.mark.skipif(shutil.which("tmux") is None and not os.environ.get("CI"),
                                reason="tmux is not installed (.ci/run installs it)")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    data = tmp_path / "server"
    data.mkdir()
    srv = ServerProcess(data).start()
    yield srv
    srv.stop()


def client_command(srv: ServerProcess, nick: str, state: Path) -> list[str]:
    return chat_client_command(srv.host, srv.port, nick, state)


def test_two_clients_talk_in_tmux(tmux: Tmux, server: ServerProcess, tmp_path: Path) -> None:
    tmux.start("alice", client_command(server, "alice", tmp_path / "a"))
    tmux.wait_screen("alice", "you joined #general")
    tmux.start("bob", client_command(server, "bob", tmp_path / "b"))
    for name in ("alice", "bob"):
        screen = tmux.wait_screen(name, "you joined #general")
        assert "connected" in screen and "[#general]" in screen
    tmux.wait_screen("alice", "bob joined #general")

    tmux.type("alice", "hello bob, this is alice")
    screen = tmux.wait_screen("bob", "alice │ hello bob, this is alice")
    tmux.type("bob", "hi alice, bob here")
    tmux.wait_screen("alice", "bob │ hi alice, bob here")
    tmux.type("bob", "/me waves")
    tmux.wait_screen("alice", "* │ bob waves")
    # Each sees its own message acknowledged (no longer pending).
    assert "(sending…)" not in tmux.wait_screen("alice", "alice │ hello bob")

    # A room switch and a direct message, seen on the other screen.
    tmux.type("alice", "/join #side")
    tmux.wait_screen("alice", "[#side]")
    tmux.type("alice", "/msg bob psst")
    screen = tmux.wait_screen("bob", "3:alice(1!)")  # the unread DM, marked, in the status bar
    tmux.type("bob", "/switch alice")
    tmux.wait_screen("bob", "alice │ psst")

    tmux.type("bob", "/switch #general")
    tmux.type("alice", "/quit")
    tmux.wait_screen("bob", "alice quit #general")
    # The pane's shell prints the exit status once the client has restored the terminal;
    # tmux (remain-on-exit) reports it too, and sometimes its notice is all that is shown.
    tmux.wait_screen("alice", ("client exited with status 0", "Pane is dead (status 0,"))



def test_a_restarted_client_is_back_where_it_was(tmux: Tmux, server: ServerProcess,
                                                 tmp_path: Path) -> None:
    state = tmp_path / "a"
    bob = connect(server, "bob")
    try:
        bob.join("#side")
        tmux.start("alice", client_command(server, "alice", state))
        tmux.wait_screen("alice", "you joined #general")
        tmux.type("alice", "/join #side")
        tmux.wait_screen("alice", "[3:#side]")
        tmux.type("alice", "/join #ops")
        tmux.wait_screen("alice", "[4:#ops]")
        tmux.type("alice", "/msg bob psst")
        bob.wait_type("message", to="bob", text="psst")
        tmux.type("alice", "/switch #side")
        tmux.wait_screen("alice", "[3:#side]")
        tmux.type("alice", "/quit")
        tmux.wait_screen("alice", ("client exited with status 0", "Pane is dead (status 0,"))
        bob.say("#side", "said while alice was away")

        # The same command, no --room: the rooms, the direct-message buffer, their order
        # and the current buffer come back, and #side shows what was missed.
        tmux.start("again", client_command(server, "alice", state))
        screen = tmux.wait_screen("again", "bob │ said while alice was away")
        status = screen.splitlines()[-2]
        assert "[3:#side]" in status, screen
        for entry in ("2:#general", "4:#ops", "5:bob"):
            assert entry in status, screen
        tmux.type("again", "/switch #ops")
        tmux.wait_screen("again", "you joined #ops")
    finally:
        bob.close()
