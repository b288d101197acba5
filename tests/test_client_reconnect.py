"""Reconnect and catch-up: the client sees every message exactly once, checked by id.

Paging is forced with a tiny history page, so catch-up needs several `history after`
requests; and messages keep arriving live while it runs.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from serverproc import FAST, ServerProcess, kill_quietly
from tuirunner import TUI
from wire import Client, connect

from chat_client.lifecycle import ConnState

CONFIG: dict[str, Any] = {**FAST, "history": {"page": 4, "on_join": 3}}
FAST_RETRY = {"backoff_base": 0.6, "backoff_cap": 1.0}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def send(client: Client, room: str, texts: list[str]) -> list[int]:
    """Pipeline messages and wait for all acks; returns their ids."""
    labels = [client.request({"type": "msg", "room": room, "text": t}) for t in texts]
    return [client.reply(label)["id"] for label in labels]


def room_ids(app: TUI, room: str = "#general") -> list[int]:
    def get() -> list[int]:
        buf = app.core.model.get(room)
        return [ln.id for ln in buf.lines if ln.id is not None] if buf else []

    return list(app.call(get))


def wait_ids(app: TUI, expected: list[int], room: str = "#general") -> None:
    try:
        app.wait(lambda: room_ids(app, room)[-len(expected):] == expected, "ids")
    except AssertionError:
        assert room_ids(app, room) == expected  # shows the difference
    got = room_ids(app, room)
    assert len(got) == len(set(got)), f"duplicate ids: {got}"
    assert got == sorted(got)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "server"
    path.mkdir()
    return path


@pytest.fixture
def server(data_dir: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(data_dir, CONFIG).start()
    yield srv
    srv.stop()


def test_killed_session_catches_up_without_gap_or_duplicate(server: ServerProcess,
                                                             tmp_path: Path) -> None:
    bob = connect(server, "bob")
    bob.join("#general")
    before = set(server.children())
    app = TUI(server.host, server.port, "alice", state_dir=tmp_path / "state", **FAST_RETRY)
    try:
        app.ready()
        first = send(bob, "#general", [f"before {i}" for i in range(5)])
        wait_ids(app, first)
        app.type("mine before" + "\r")
        mine = bob.wait_type("message", text="mine before")["id"]
        (alice_child,) = set(server.children()) - before
        kill_quietly(alice_child, signal.SIGKILL)  # the connection dies with its process
        app.wait(lambda: app.core.model.conn_state is not ConnState.CONNECTED, "noticed the loss")
        gap = send(bob, "#general", [f"during {i}" for i in range(11)])
        app.wait(lambda: app.core.model.conn_state is ConnState.CONNECTED and app.core.ready,
                 "reconnected", timeout=20)
        after = send(bob, "#general", [f"after {i}" for i in range(3)])
        wait_ids(app, first + [mine] + gap + after)
        assert app.core.model.nick == "alice"
        screen = app.screen()
        assert "after 2" in screen and "rejoined #general" in screen
    finally:
        app.close()
        bob.close()


def test_server_restart_mid_conversation(data_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    srv = ServerProcess(data_dir, CONFIG, extra_args=["--port", str(port)]).start()
    assert srv.port == port
    app = TUI(srv.host, port, "alice", state_dir=tmp_path / "state", rooms=("#general", "#b"),
                    **FAST_RETRY)
    bob: Client | None = None
    try:
        app.ready()
        bob = connect(srv, "bob")
        bob.join("#general")
        bob.join("#b")
        first = send(bob, "#general", [f"one {i}" for i in range(4)])
        first_b = send(bob, "#b", ["b one"])
        wait_ids(app, first)
        wait_ids(app, first_b, "#b")
        bob.close()
        assert srv.stop() == 0
        app.wait(lambda: app.core.model.conn_state in (ConnState.RECONNECTING,
                                                      ConnState.CONNECTING),
                 "disconnected")
        srv = ServerProcess(data_dir, CONFIG, extra_args=["--port", str(port)]).start()
        bob = connect(srv, "bob")
        bob.join("#general")
        bob.join("#b")
        # These may land before or after alice is back: either way exactly once.
        gap = send(bob, "#general", [f"two {i}" for i in range(9)])
        gap_b = send(bob, "#b", ["b two", "b three"])
        app.wait(lambda: app.core.model.conn_state is ConnState.CONNECTED, "reconnected", 20)
        after = send(bob, "#general", ["three"])
        wait_ids(app, first + gap + after)
        wait_ids(app, first_b + gap_b, "#b")
        assert min(gap) > max(first)  # ids keep growing across the restart
    finally:
        app.close()
        if bob is not None:
            bob.close()
        srv.stop()


def test_restarted_client_catches_up_from_its_state_dir(server: ServerProcess,
                                                        tmp_path: Path) -> None:
    state = tmp_path / "state"
    bob = connect(server, "bob")
    bob.join("#general")
    first = send(bob, "#general", [f"seen {i}" for i in range(3)])
    app = TUI(server.host, server.port, "alice", state_dir=state)
    app.ready()
    wait_ids(app, first)
    assert app.close() == 0
    saved = [p for p in state.glob("*.json") if not p.name.endswith(".local.json")]
    assert len(saved) == 1 and f'"#general": {first[-1]}' in saved[0].read_text()
    missed = send(bob, "#general", [f"missed {i}" for i in range(10)])
    again = TUI(server.host, server.port, "alice", state_dir=state)
    try:
        again.ready()
        # All ten missed ones, over several pages; enough that no older context is added
        # (history.on_join is 3).
        wait_ids(again, missed)
        assert room_ids(again) == missed
        assert "missed 9" in again.screen()
    finally:
        again.close()
        bob.close()


def test_lag_is_shown_and_a_dead_server_is_detected(server: ServerProcess,
                                                    tmp_path: Path) -> None:
    before = set(server.children())
    app = TUI(server.host, server.port, "alice", state_dir=tmp_path / "state",
                    keepalive=0.4, dead_after=1.0, **FAST_RETRY)
    stopped: int | None = None
    try:
        app.ready()
        app.wait(lambda: app.core.model.lag_ms is not None, "lag measured")
        assert " ms" in app.status() and "lag" in app.status()
        (child,) = set(server.children()) - before
        os.kill(child, signal.SIGSTOP)  # alive but silent: only a ping notices
        stopped = child
        app.wait(lambda: "no answer from the server" in app.screen(), "dead server noticed")
        kill_quietly(child)
        stopped = None
        app.wait(lambda: app.core.model.conn_state is ConnState.CONNECTED and app.core.ready,
                 "reconnected", timeout=20)
    finally:
        if stopped is not None:
            kill_quietly(stopped)
        app.close()
