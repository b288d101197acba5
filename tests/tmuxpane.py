"""tmux on a private socket for the end-to-end tests: start programs in panes, type into
them, read their screens back with a deadline.

Each `Tmux` runs its own tmux server (`tmux -L <unique>`), so a test never touches anyone
else's tmux, and `kill()` ends only that server.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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


def chat_client_command(host: str, port: int, nick: str, state: Path) -> list[str]:
    """chat-client full-screen in a pane, its state in `state`; the pane's shell prints
    the exit status once the client has restored the terminal."""
    client = ["env", f"CHAT_CLIENT_STATE_DIR={state}", "TERM=xterm-256color", sys.executable,
              "-m", "chat_client", f"{host}:{port}", "--nick", nick]
    return ["sh", "-c", shlex.join(client) + '; echo "client exited with status $?"']
