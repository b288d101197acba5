"""The server's `status` event (a cluster host that lost its Redis): the status bar says
messages are not being stored, the server buffer says why, and a reconnect starts afresh."""

from __future__ import annotations

from test_client_model import welcome

from chat_client.buffer import SERVER
from chat_client.core import Core
from chat_client.lifecycle import ConnState
from chat_client.statusbar import status


def bar(core: Core) -> str:
    return "".join(text for _style, text in status(core.model, 120))


def test_status_down_and_up_show_in_the_status_bar_and_server_buffer() -> None:
    core = Core("alice", ["#a"])
    welcome(core)
    core.model.conn_state = ConnState.CONNECTED
    assert "not storing" not in bar(core)
    core.receive({"type": "status", "cluster": "down", "ts": 1000,
                  "message": "the server cannot reach the cluster's Redis"})
    assert "connected · not storing" in bar(core)
    server = core.model.buffers[SERVER]
    assert server.lines[-1].text == "the server cannot reach the cluster's Redis"
    assert server.lines[-1].kind == "error"
    core.receive({"type": "status", "cluster": "gap", "message": "messages 5 to 9 lost"})
    assert "not storing" in bar(core) and server.lines[-1].text == "messages 5 to 9 lost"
    core.receive({"type": "status", "cluster": "up", "message": "back"})
    assert "not storing" not in bar(core) and server.lines[-1].kind == "notice"


def test_a_new_connection_forgets_a_status_of_the_last_one() -> None:
    core = Core("alice", ["#a"])
    welcome(core)
    core.receive({"type": "status", "cluster": "down", "message": "x"})
    assert core.model.degraded
    welcome(core)
    assert not core.model.degraded


def test_a_status_frame_with_bad_fields_is_reported_not_applied() -> None:
    core = Core("alice", ["#a"])
    welcome(core)
    core.receive({"type": "status", "message": "no state"})
    assert not core.model.degraded and core.handler_errors == 0
