"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.serverproc import ServerProcess


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
