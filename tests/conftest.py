"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from serverproc import FAST, ServerProcess
from tmuxpane import Tmux
from tuirunner import TUI
from wire import Client, connect


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    servers: list[ServerProcess] = []

    def start_server(config: dict[str, Any]) -> ServerProcess:
        data = tmp_path / f"srv{len(servers)}"
        data.mkdir()
        servers.append(ServerProcess(data, config).start())
        return servers[-1]

    yield start_server
    for server in servers:
        server.stop()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A fresh server with the rate limits lifted, for a module that defines no other."""
    data = tmp_path / "server"
    data.mkdir()
    srv = ServerProcess(data, FAST).start()
    yield srv
    srv.stop()


@pytest.fixture
def app(server: ServerProcess, tmp_path: Path) -> Iterator[TUI]:
    """The full-screen client as alice in #general (state in tmp_path), ready."""
    runner = TUI(server.host, server.port, "alice", state_dir=tmp_path / "state")
    runner.ready()
    yield runner
    runner.close()


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    """Clients a test makes; closed after it."""
    made: list[Client] = []
    yield made
    for c in made:
        c.close()


@pytest.fixture
def bob(server: ServerProcess) -> Iterator[Client]:
    """A plain protocol client in #general, on the module's `server`."""
    client = connect(server, "bob")
    client.join("#general")
    yield client
    client.close()


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    """A tmux server on a private socket, killed after the test (tests/tmuxpane.py)."""
    t = Tmux()
    yield t
    t.kill()
