"""A session process that will not end (issue 8, section 6), against the real server.

One told to end that does not exit (here: SIGSTOPped) is killed after
queues.close_grace + keepalive.stop_timeout, and its slot is free again.
"""

from __future__ import annotations

import re
import signal
from typing import Any

from serverproc import kill_quietly, proc_stat, wait_until
from wire import connect

ONE_BY_ONE = {"server": {"spare_children": 0}}  # one fork per admitted client, counted


def test_a_session_that_will_not_end_is_killed_and_its_slot_freed(start: Any) -> None:
    """SIGSTOP a session process, get it kicked (its channel queue overflows): after
    close_grace + stop_timeout the parent kills it, and its address may connect again."""
    server = start({**ONE_BY_ONE, "keepalive": {"stop_timeout": 1.0},
                    "queues": {"child_queue": 65536, "close_grace": 0.5},
                    "limits": {"max_text": 60000, "max_sessions_per_ip": 2},
                    "rate": {"msg_rate": 1000.0, "msg_burst": 1000}})
    alice = connect(server, "alice")
    stuck = connect(server, "stuck")
    alice.join("#q")
    stuck.join("#q")
    match = re.search(r"pid (\d+)", server.wait_for_log(r"session \S+ from \S+: pid \d+ "
                                                         r"\(2 sessions\)"))
    assert match
    pid = int(match.group(1))
    kill_quietly(pid, signal.SIGSTOP)
    try:
        wait_until(lambda: (proc_stat(pid) or ("?",))[0] == "T", 10,
                   message="the session process to stop")
        mark = server.mark()
        kicked = rf"ending session \S+ \(pid {pid}\): queue_limit"
        for i in range(100):  # until its channel's socket buffer, then child_queue, overflow
            alice.say("#q", f"{i} " + "p" * 50000)
            if any(re.search(kicked, line) for line in server.lines[mark:]):
                break
        server.wait_for_log(kicked, timeout=5, start=mark)
        server.wait_for_log(rf"pid {pid} did not stop; killing it \(session \S+, "
                            r"queues\.close_grace=0\.5s \+ keepalive\.stop_timeout=1s\)",
                            timeout=10, start=mark)
        wait_until(lambda: proc_stat(pid) is None, 10, message="the stopped session reaped")
    finally:
        kill_quietly(pid, signal.SIGCONT)  # only if the test failed: let it go
    # Its slot is free: 127.0.0.1 has max_sessions_per_ip = 2 and alice holds one.
    again = connect(server, "again")
    assert again.call({"type": "ping", "token": 7})["token"] == 7
    wait_until(lambda: len(server.children()) == 2, 10, message="alice's and again's only")
    quit_ = alice.wait_type("quit", nick="stuck")
    assert quit_["reason"] == "slow consumer"
