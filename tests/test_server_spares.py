"""Pre-forked spare session processes (`server.spare_children`).

A spare is forked ahead of time and handed the accepted socket over its channel
(SCM_RIGHTS); each client still gets its own long-lived process. Only processes this
test started are signalled, always by PID.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from serverproc import ServerProcess, kill_quietly, wait_until, write_config
from wire import Client, connect

SPARE = 3
CONFIG = {"server": {"spare_children": SPARE}}
# The pool fills, and a dead spare is replaced, by the fork server: at start-up only once
# it has started (a fresh interpreter that imports the server and rehearses a session's
# first steps: 1.2-1.3 s at a load average of 12 here), then by a fork of a middle
# process and one of the spare, then the parent's reaping and handing over: several
# processes that must each get the CPU. On a loaded machine they may not for seconds on
# end, longer than the usual 10 s altogether; the counts are exact either way. Stopping
# is the same: the server's own deadline is close_grace + stop_timeout (8 s).
POOL_DEADLINE = 30.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path, CONFIG).start()
    yield srv
    assert srv.stop(POOL_DEADLINE) == 0
    assert srv.children() == []


def pool_full(server: ServerProcess, sessions: int) -> list[int]:
    return wait_until(lambda: len(server.children()) == sessions + SPARE
                      and server.children(), POOL_DEADLINE,
                      message=f"{sessions} sessions + {SPARE} spares")


def test_clients_are_served_by_spares_and_the_pool_refills(server: ServerProcess) -> None:
    spares = set(pool_full(server, 0))
    clients: list[Client] = []
    try:
        for i in range(SPARE + 2):  # more than the pool: the rest fork on accept
            clients.append(connect(server, f"u{i}"))
        clients[0].join("#s")
        clients[1].join("#s")
        clients[0].say("#s", "hello")
        assert clients[1].wait_type("message", text="hello")["from"] == "u0"
        kids = set(pool_full(server, len(clients)))
        assert spares <= kids  # the pre-forked processes now serve clients
    finally:
        for c in clients:
            c.close()
    pool_full(server, 0)


def test_a_killed_spare_is_replaced(server: ServerProcess) -> None:
    victim = pool_full(server, 0)[0]
    kill_quietly(victim)
    wait_until(lambda: victim not in server.children()
               and len(server.children()) == SPARE, POOL_DEADLINE, message="a new spare")
    c = connect(server, "alice")
    try:
        assert c.call({"type": "rooms"})["type"] == "rooms"
    finally:
        c.close()


def test_reload_retires_spares(server: ServerProcess) -> None:
    before = set(pool_full(server, 0))
    write_config(server.config_path, {"server": {"spare_children": 3, "motd": "reloaded"}})
    server.signal(signal.SIGHUP)
    wait_until(lambda: not before & set(server.children())
               and len(server.children()) == SPARE, POOL_DEADLINE, message="fresh spares")
    c = connect(server)
    try:
        assert c.hello("bob")["motd"] == "reloaded"  # served by a process forked after it
    finally:
        c.close()
