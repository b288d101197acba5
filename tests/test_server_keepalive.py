"""Keepalive, dead peers and the handshake deadline (issue 4), against the real server.

Intervals are shortened through the configuration file: the server pings after
`ping_interval` of silence and ends the session `ping_timeout` later.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from typing import Any

import pytest
from serverproc import ServerProcess, kill_quietly, newest_session, proc_stat, wait_until
from wire import Client, connect

PING = {"keepalive": {"ping_interval": 0.3, "ping_timeout": 0.3}}
PID_RE = re.compile(r"session (\S+) from \S+: pid (\d+)")


def session_of(server: ServerProcess, session: str) -> int:
    match = PID_RE.search(server.wait_for_log(rf"session {session} from \S+: pid \d+"))
    assert match
    return int(match.group(2))


# A client process we own: hello, join, then answer pings forever (until SIGSTOPped).
PONGER = textwrap.dedent("""
    import socket, sys
    from chatd.protocol import FrameDecoder, decode_payload, pack
    sock = socket.create_connection((sys.argv[1], int(sys.argv[2])))
    sock.sendall(pack({"type": "hello", "version": 1, "nick": sys.argv[3]}))
    sock.sendall(pack({"type": "join", "room": sys.argv[4]}))
    decoder = FrameDecoder(1 << 24)
    while True:
        data = sock.recv(65536)
        if not data:
            sys.exit(0)
        decoder.receive_data(data)
        for payload in decoder.payloads():
            frame = decode_payload(payload)
            if frame["type"] == "welcome":
                print("session", frame["session"], flush=True)
            elif frame["type"] == "ping":
                sock.sendall(pack({"type": "pong", "token": frame["token"]}))
                print("pong", flush=True)
""")


def test_sigstopped_client_is_dropped_at_the_ping_deadline(start: Any) -> None:
    server = start(PING)
    proc = subprocess.Popen([sys.executable, "-c", PONGER, server.host, str(server.port),
                             "sleepy", "#k"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().split()
        assert first[0] == "session", first
        pid = session_of(server, first[1])
        # While it runs it answers pings and is kept over several intervals.
        for _ in range(3):
            assert proc.stdout.readline().strip() == "pong"
        watcher = connect(server, "watcher")
        joined, _history = watcher.join("#k")
        assert "sleepy" in joined["members"]
        os.kill(proc.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        quit_ = answer_pings(watcher, 10.0,
                             lambda f: f.get("type") == "quit" and f["nick"] == "sleepy")
        elapsed = time.monotonic() - stopped
        assert quit_["reason"] == "ping timeout"
        # Not before one silent interval plus the answer time, and not much after.
        assert 0.3 <= elapsed < 0.6 + 5.0, elapsed
        server.wait_for_log(rf"chatd\[{pid}\] .*session ended: ping_timeout")
        wait_until(lambda: proc_stat(pid) is None, timeout=5,
                   message="the dropped session's process to be reaped")
        assert pid not in server.children()
    finally:
        kill_quietly(proc.pid, signal.SIGCONT)
        kill_quietly(proc.pid)
        proc.wait(5)


def answer_pings(client: Client, duration: float,
                 want: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Read, answering pings, until a frame matches `want` (within `duration` seconds)."""
    deadline = time.monotonic() + duration
    while True:
        for i, frame in enumerate(client.backlog):
            if frame.get("type") == "ping":
                client.backlog.pop(i)
                client.send({"type": "pong", "token": frame.get("token")})
                break
            if want(frame):
                return client.backlog.pop(i)
        else:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no matching frame; backlog {client.backlog[-5:]}")
            assert not client.closed, f"connection closed: {client.backlog[-5:]}"
            client._read_more(time.monotonic() + min(remaining, 0.1))


def test_idle_client_that_answers_pings_is_kept(start: Any) -> None:
    # The server pings again only after it has heard from the client, so each ping after
    # the first proves the pong before it was taken. The deadline for a pong is generous:
    # what is proved is that answering keeps an idle client, not how fast this test
    # answers (on a loaded machine it may not run for longer than 0.3 s).
    server = start({"keepalive": {"ping_interval": 0.3, "ping_timeout": 10.0}})
    mark = len(server.lines)
    idle = connect(server, "idler")
    _session, pid = newest_session(server, mark)
    tokens = []
    for _ in range(10):  # ten ping intervals of saying nothing else
        ping = idle.wait_type("ping", timeout=15.0)
        idle.send({"type": "pong", "token": ping["token"]})
        tokens.append(ping["token"])
    assert len(set(tokens)) == 10, tokens
    assert not idle.closed and proc_stat(pid) is not None
    idle.join("#still")
    assert idle.say("#still", "awake")["id"] >= 1


def test_a_pong_that_came_in_time_counts_when_the_session_wakes_late(start: Any) -> None:
    """The session process may run again only after its ping deadline (a loaded machine:
    here it is stopped): a pong that reached its socket before the deadline is read
    before the deadline is judged, and the client is kept."""
    server = start({"keepalive": {"ping_interval": 0.3, "ping_timeout": 2.0}})
    mark = len(server.lines)
    client = connect(server, "late")
    _session, pid = newest_session(server, mark)
    ping = client.wait_type("ping", timeout=10)
    pinged = time.monotonic()  # the server's deadline is at most 2 s after this
    os.kill(pid, signal.SIGSTOP)  # (the session we started, by its pid)
    try:
        wait_until(lambda: (st := proc_stat(pid)) is not None and st.state == "T",
                   message="the session process to stop")
        client.send({"type": "pong", "token": ping["token"]})
        while time.monotonic() < pinged + 2.5:  # past the deadline, pong unread
            time.sleep(pinged + 2.5 - time.monotonic())
    finally:
        os.kill(pid, signal.SIGCONT)
    # Kept: pinged again (only after hearing from us), and still serving.
    ping = client.wait_type("ping", timeout=10)
    client.send({"type": "pong", "token": ping["token"]})
    assert client.call({"type": "ping", "token": "alive"})["token"] == "alive"
    assert not client.pending("error"), client.pending("error")


def test_client_that_never_answers_pings_gets_ping_timeout(start: Any) -> None:
    server = start(PING)
    mark = len(server.lines)
    mute = connect(server, "mute")
    _session, pid = newest_session(server, mark)
    began = time.monotonic()
    ping = mute.wait_type("ping", timeout=5)
    assert isinstance(ping["token"], int)
    frames = mute.wait_closed(timeout=5)
    elapsed = time.monotonic() - began
    fatal = frames[-1]
    assert (fatal["type"], fatal["code"], fatal["fatal"], fatal["limit"]) == \
        ("error", "ping_timeout", True, "ping_timeout"), frames
    assert 0.5 <= elapsed < 5.0, elapsed
    wait_until(lambda: proc_stat(pid) is None, timeout=5, message="the process to be reaped")


def test_connection_that_never_says_hello_is_closed_at_the_handshake_deadline(
        start: Any) -> None:
    server = start({"keepalive": {"handshake_timeout": 0.5, "ping_interval": 0.2,
                                  "ping_timeout": 5.0}})
    mark = len(server.lines)
    stalled = Client(server.host, server.port)
    _session, pid = newest_session(server, mark)
    began = time.monotonic()
    # Signs of life that are not a successful hello do not extend the deadline.
    stalled.send({"type": "ping", "token": 1})
    assert stalled.wait_type("pong")["token"] == 1
    stalled.send({"type": "hello", "version": 1, "nick": "9 bad nick"})
    assert stalled.wait_type("error")["code"] == "invalid_nick"
    frames = stalled.wait_closed(timeout=5)
    elapsed = time.monotonic() - began
    assert frames[-1]["code"] == "handshake_timeout" and frames[-1]["fatal"], frames
    assert frames[-1]["limit"] == "handshake_timeout"
    assert 0.4 <= elapsed < 3.0, elapsed
    # The stalled connection costs no process beyond the deadline (plus reaping slack).
    wait_until(lambda: proc_stat(pid) is None, timeout=2.0,
               message="the stalled connection's process to be gone")
    server.wait_for_log(rf"session \S+ \(pid {pid}\) ended: exit status 0")


# ---- TCP keepalive on the server's end of a client connection ----

_SYS_PIDFD_GETFD = 438  # the same number on every Linux architecture (unified table)


def steal_fd(pid: int, target: int) -> int:
    """Duplicate fd `target` of process `pid` into this process (pidfd_getfd(2))."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        fd = libc.syscall(_SYS_PIDFD_GETFD, pidfd, target, 0)
        if fd < 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        return fd
    finally:
        os.close(pidfd)


def server_end(pid: int, client: Client) -> socket.socket:
    """The session process's socket for `client`'s connection."""
    want = client.sock.getsockname()
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=steal_fd(pid, int(name)))
            with contextlib.suppress(OSError):
                if sock.family == socket.AF_INET and sock.getpeername() == want:
                    return sock
            sock.close()
    raise AssertionError(f"no socket of pid {pid} is connected to {want}")


def test_tcp_keepalive_is_enabled_on_client_sockets(start: Any) -> None:
    server = start({"keepalive": {"tcp_keepalive": 45.0}})
    mark = len(server.lines)
    client = connect(server, "kept")
    _session, pid = newest_session(server, mark)
    try:
        sock = server_end(pid, client)
    except PermissionError as exc:  # pidfd_getfd needs ptrace rights over the process
        pytest.skip(f"cannot inspect another process's socket here: {exc}")
    with sock:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 45
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 15
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
