"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from serverproc import ServerProcess
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
