"""End to end in tmux: two full-screen clients type to each other; screens are read back.

The test runs its own tmux server on a private socket (`tmux -L <unique>`), so it never
touches anyone else's tmux, and kills only that server.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from serverproc import ServerProcess
from wire import connect

ROOT = Path(__file__).resolve().parent.parent
# Skipped only on a developer's machine without tmux: in CI (.ci/run installs it) a
# missing tmux fails the test instead of hiding it.
pytestmark = pytest.mark.skipif(shutil.which("tmux") is None and not os.environ.get("CI"),
                                reason="tmux is not installed (.ci/run installs it)")


class Tmux:
    def __init__(self) -> None:
        self.socket = f"chat-client-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.path = ""

    def __call__(self, *args: str) -> str:
        done = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True,
                              text=True, timeout=10)
        assert done.returncode == 0, f"tmux {args}: {done.stderr}"
        return done.stdout

    def start(self, name: str, command: list[str]) -> None:
        self("new-session", "-d", "-s", name, "-x", "100", "-y", "30", "-c", str(ROOT),
             shlex.join(command))
        self("set-option", "-t", name, "remain-on-exit", "on")
        self.path = self.path or self("display-message", "-p", "#{socket_path}").strip()

    def screen(self, name: str) -> str:
        return self("capture-pane", "-p", "-t", name)

    def type(self, name: str, text: str) -> None:
        self("send-keys", "-t", name, "-l", text)
        self("send-keys", "-t", name, "Enter")

    def wait_screen(self, name: str, needle: str | tuple[str, ...],
                    timeout: float = 15.0) -> str:
        needles = (needle,) if isinstance(needle, str) else needle
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen(name)
            if any(n in screen for n in needles):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} not on {name}'s screen:\n{screen}")
            time.sleep(0.1)

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True,
                       timeout=10)
        if self.path:  # tmux leaves the socket file behind
            Path(self.path).unlink(missing_ok=True)


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    t = Tmux()
    yield t
    t.kill()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    data = tmp_path / "server"
    data.mkdir()
    srv = ServerProcess(data).start()
    yield srv
    srv.stop()


def client_command(srv: ServerProcess, nick: str, state: Path) -> list[str]:
    client = ["env", f"CHAT_CLIENT_STATE_DIR={state}", "TERM=xterm-256color", sys.executable,
              "-m", "chat_client", f"{srv.host}:{srv.port}", "--nick", nick]
    return ["sh", "-c", shlex.join(client) + '; echo "client exited with status $?"']


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
