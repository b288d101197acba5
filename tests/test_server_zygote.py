"""The fork server (chatd/zygote.py) against the real `chatd serve`.

Sessions are forked by the fork server, not by the parent, yet they are the parent's
children (PR_SET_CHILD_SUBREAPER): reaped by it when they end. A fork server that dies
is replaced, and clients are served meanwhile; the adaptive pool (the default
`server.spare_children = -1`) grows with a burst of clients up to `server.spare_max`.
Only processes this test started are signalled, always by PID.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Any

from serverproc import kill_quietly, newest_session, proc_stat, wait_until, write_config
from wire import connect

from chatd.sparepool import AUTO_MIN

FORK_SERVER_RE = re.compile(r"fork server: pid (\d+)")


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def parent_of(pid: int) -> int | None:
    stat = proc_stat(pid)
    return stat.ppid if stat is not None else None


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
    # handed up by the kernel once the middle process that forked it has exited
    wait_until(lambda: parent_of(pid) == server.pid, message="the session the parent's child")
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
    wait_until(lambda: parent_of(pid) == server.pid, message="the session the parent's child")
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


def test_retired_spares_exit_on_their_own(start: Any, tmp_path: Path) -> None:
    """A reload retires the spares (they have the old settings) by closing their
    channels: each exits then, none lingers until it is killed. (A spare's channel that
    came from the fork server must not leak into the next fork server we start.)"""
    server = start({"server": {"spare_children": 2}})
    old = set(wait_until(lambda: len(server.children()) == 2 and server.children(),
                         message="two spares"))
    mark = server.mark()
    settings = server.settings
    write_config(server.config_path, {**settings, "server": {**settings["server"],
                                                             "motd": "reloaded"}})
    server.signal(signal.SIGHUP)
    server.wait_for_log(FORK_SERVER_RE, start=mark)  # a new one, with the new settings
    wait_until(lambda: not old & set(server.children()), timeout=5.0,
               message="the old spares gone")
    assert not any("did not stop" in line for line in server.lines[mark:])
