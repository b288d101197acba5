"""The fork server (chatd/zygote.py) against the real `chatd serve`.

Sessions are forked by the fork server, not by the parent, yet they are the parent's
children (PR_SET_CHILD_SUBREAPER): reaped by it when they end. A fork server that dies
is replaced, and clients are served meanwhile; the adaptive pool (the default
`server.spare_children = -1`) grows with a burst of clients up to `server.spare_max`.
Only processes this test started are signalled, always by PID.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from serverproc import kill_quietly, newest_session, proc_stat, wait_until
from wire import connect

from chatd.sparepool import AUTO_MIN

FORK_SERVER_RE = re.compile(r"fork server: pid (\d+)")


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def fork_server(server: Any, start: int = 0) -> int:
    match = FORK_SERVER_RE.search(server.wait_for_log(FORK_SERVER_RE, start=start))
    assert match
    return int(match.group(1))


def test_a_session_forked_by_the_fork_server_is_the_parents_child(start: Any) -> None:
    server = start({})
    zygote = fork_server(server)
    assert wait_until(lambda: comm(zygote) == "chatd-zygote", message="the fork server")
    mark = server.mark()
    alice = connect(server, "alice")
    _token, pid = newest_session(server, mark)
    stat = proc_stat(pid)
    assert stat is not None and stat.ppid == server.pid  # handed up by the kernel
    assert comm(pid) == "chatd-session"
    assert alice.call({"type": "ping", "token": 3})["token"] == 3
    alice.close()
    wait_until(lambda: proc_stat(pid) is None, message="the session reaped by the parent")
    assert not any("forking here" in line for line in server.lines)


def test_a_killed_fork_server_is_replaced_and_clients_are_served_meanwhile(start: Any) -> None:
    server = start({})
    old = fork_server(server)
    mark = server.mark()
    kill_quietly(old)
    wait_until(lambda: proc_stat(old) is None, message="the old fork server reaped")
    bob = connect(server, "bob")  # by the new one, or by the parent while there is none
    assert bob.call({"type": "ping", "token": 5})["token"] == 5
    new = fork_server(server, mark)
    assert new != old
    mark = server.mark()
    carol = connect(server, "carol")
    _token, pid = newest_session(server, mark)
    stat = proc_stat(pid)
    assert stat is not None and stat.ppid == server.pid
    bob.close()
    carol.close()


def test_the_adaptive_pool_grows_with_a_burst_up_to_spare_max(start: Any) -> None:
    server = start({"server": {"spare_children": -1, "spare_max": 4}})
    wait_until(lambda: len(server.children()) == AUTO_MIN, message="the idle pool")
    clients = [connect(server, f"u{i}") for i in range(30)]
    try:
        # 30 clients in a few seconds want more than 4 spares: the pool stops at 4
        wait_until(lambda: len(server.children()) == len(clients) + 4,
                   message="30 sessions and 4 spares")
    finally:
        for c in clients:
            c.close()
    assert not any("forking here" in line for line in server.lines)
