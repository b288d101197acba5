"""The fork server (chatd/zygote.py) against the real `chatd serve`.

Sessions are forked by the fork server, not by the parent, yet they are the parent's
children (PR_SET_CHILD_SUBREAPER): reaped by it when they end. A fork server that dies
is replaced, and clients are served meanwhile; the adaptive pool (the default
`server.spare_children = -1`) grows with a burst of clients up to `server.spare_max`.
The fork server forks with fork(2) alone, without CPython's after-fork hooks, unless a
module whose hook sessions need is imported: then the hooks run in each session.
Only processes this test started are signalled, always by PID.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from serverproc import (
    FORK_SERVER_RE,
    kill_quietly,
    newest_session,
    proc_stat,
    wait_until,
    write_config,
)
from wire import connect

from chatd import rehearsal, zygote
from chatd.sparepool import AUTO_MIN


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def parent_of(pid: int) -> int | None:
    stat = proc_stat(pid)
    return stat.ppid if stat is not None else None


def tcp_sockets(pid: int) -> set[str]:
    """The inodes of the TCP sockets process `pid` holds."""
    held = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            held.add(os.readlink(fd).removeprefix("socket:[").removesuffix("]"))
    tcp = {line.split()[9] for name in ("tcp", "tcp6")
           for line in Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]}
    return held & tcp


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
    # without CPython's after-fork hooks, whose writes cost each session pages
    assert server.wait_for_log(r"the fork server forks with fork\(2\) alone")
    # having served a session's loop on loopback connections it no longer holds
    assert server.wait_for_log(r"rehearsed a session's first steps: \d+ times its core, "
                               rf"{rehearsal.LOOP_ROUNDS} times its loop")
    assert not tcp_sockets(zygote) and tcp_sockets(server.pid)  # (the parent's listener)
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


def test_a_stuck_fork_server_leaves_clients_to_the_parent_and_is_told_of_once(
        start: Any) -> None:
    """A fork server that stops answering (here: SIGSTOP) is not asked again for the
    spares it owes; the parent forks the waiting clients itself after WAIT_LIMIT, says so
    once for the whole stall, and takes the owed spares when the server goes on."""
    server = start({"server": {"spare_children": 2}})
    zygote_pid = fork_server(server)
    wait_until(lambda: len(server.children()) == 2, message="two spares")
    os.kill(zygote_pid, signal.SIGSTOP)
    clients = []
    try:
        for i in range(5):  # two take the spares; the others wait, then are forked here
            clients.append(connect(server, f"s{i}"))
            assert clients[-1].call({"type": "ping", "token": i})["token"] == i
        stuck = [line for line in server.lines if "forking here" in line]
        assert len(stuck) == 1, stuck
    finally:
        os.kill(zygote_pid, signal.SIGCONT)
    # What it owed comes now, and the pool is two spares again, no more.
    wait_until(lambda: len(server.children()) == len(clients) + 2, timeout=30.0,
               message="the owed spares")
    late = connect(server, "late")
    assert late.call({"type": "ping", "token": 9})["token"] == 9
    assert len([line for line in server.lines if "forking here" in line]) == 1
    for client in [*clients, late]:
        client.close()


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


def test_the_fork_server_forks_bare_only_without_hooks_sessions_need() -> None:
    assert zygote.why_not_bare(True, {"threading": None, "logging": None}) is None
    assert zygote.why_not_bare(False, {}) == "it could not be seen to have one thread"
    for name in zygote.HOOKED:
        reason = zygote.why_not_bare(True, {"threading": None, name: None})
        assert reason is not None and name in reason
    # what this test runs in has them imported: each one a real module
    for name in zygote.HOOKED:
        __import__(name)
    assert all(name in sys.modules for name in zygote.HOOKED)


# Imported first by each chatd process (sitecustomize is Python's own start-up hook):
# random, and an after-fork hook that says what the child draws from it.
SITECUSTOMIZE = """
import os, random

def said():
    os.write(2, f"after fork: pid {os.getpid()} draws {random.getrandbits(64)}\\n".encode())

os.register_at_fork(after_in_child=said)
"""
DRAWS_RE = re.compile(r"after fork: pid (\d+) draws (\d+)")


def test_sessions_of_a_fork_server_with_random_imported_draw_apart(
        start: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    paths = [str(site), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    server = start({})
    assert server.wait_for_log(r"WARNING .* forks with os\.fork\(\).*: random imported")
    pids, clients = [], []
    for name in ("alice", "bob"):
        mark = server.mark()
        clients.append(connect(server, name))
        pids.append(newest_session(server, mark)[1])

    def draws() -> dict[int, int] | None:
        found = {int(m.group(1)): int(m.group(2))
                 for m in map(DRAWS_RE.search, server.lines) if m}
        return found if all(pid in found for pid in pids) else None
    found = wait_until(draws, message="each session's hooks run")
    assert found[pids[0]] != found[pids[1]]
    for client in clients:
        client.close()
