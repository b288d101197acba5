"""Containment (issue 4): a session process that hits its resource limits or crashes
dies alone; its user leaves with a quit notice; the parent logs the exit status.
"""

from __future__ import annotations

import contextlib
import math
import re
import select
import signal
import socket
import time
from pathlib import Path
from typing import Any

from serverproc import ServerProcess, newest_session, proc_stat, wait_until, write_config
from wire import connect

from chatd.protocol import FrameDecoder, decode_payload, pack

PID_RE = re.compile(r"session (\S+) from \S+: pid (\d+)")


def hello_and_join(server: ServerProcess, nick: str, room: str) -> socket.socket:
    sock = socket.create_connection((server.host, server.port), timeout=10)
    sock.sendall(pack({"type": "hello", "version": 1, "nick": nick})
                 + pack({"type": "join", "room": room, "label": 1}))
    decoder = FrameDecoder(1 << 24)
    while True:
        decoder.receive_data(sock.recv(65536))
        if any(decode_payload(p).get("type") == "history" for p in decoder.payloads()):
            return sock


def pump(sock: socket.socket, burst: bytes, timeout: float) -> bytes:
    """Send `burst` over and over while reading, until the server closes; returns the
    bytes received in the last read calls (for inspection)."""
    sock.setblocking(False)
    out = memoryview(burst)
    tail = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        readable, writable, _ = select.select([sock], [sock], [], 0.5)
        if writable:
            with contextlib.suppress(OSError):
                out = out[sock.send(out):] or memoryview(burst)
        if readable:
            try:
                data = sock.recv(1 << 20)
            except OSError:
                data = b""
            if not data:
                return tail
            tail = (tail + data)[-4096:]
    raise AssertionError("the server never closed the connection")


def test_session_over_its_cpu_limit_dies_alone(start: Any) -> None:
    server = start({"resources": {"max_cpu_seconds": 1}})
    room = "#lab"
    watcher, other = connect(server, "watcher"), connect(server, "other")
    watcher.join(room)
    other.join(room)
    mark = len(server.lines)
    burner = hello_and_join(server, "burner", room)
    session, pid = newest_session(server, mark)
    watcher.wait_type("join", room=room, nick="burner")
    began = time.monotonic()
    # Pings are never rate limited: each costs the session process a little CPU.
    tail = pump(burner, pack({"type": "ping", "token": 7}) * 2000, timeout=45)
    burner.close()
    print(f"\nCPU-limited session died after {time.monotonic() - began:.1f} s of ping flood")
    # The client is told which limit ended it (the last frame), and the room too.
    assert b"resource_limit" in tail and b"max_cpu_seconds" in tail, tail[-300:]
    server.wait_for_log(rf"chatd\[{pid}\] {session} chatd\.session: session over its "
                        r"max_cpu_seconds")
    server.wait_for_log(rf"session {session} \(pid {pid}\) ended: exit status 1")
    assert watcher.wait_type("quit", room=room, nick="burner")["reason"] == "resource limit"
    # Nobody else noticed: the parent and the other sessions carry on.
    ack = other.say(room, "carrying on")
    assert watcher.wait_type("message", room=room)["id"] == ack["id"]
    assert server.proc is not None and server.proc.poll() is None
    assert proc_stat(pid) is None


def vm_size_mb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmSize:\s+(\d+) kB", status)
    assert match
    return math.ceil(int(match.group(1)) / 1024)


def test_session_over_its_memory_limit_ends_alone_and_is_logged(start: Any) -> None:
    server = start({"limits": {"max_frame": 16 << 20, "max_text": 60000},
                    "resources": {"max_memory_mb": 0}})
    room = "#lab"
    watcher, other = connect(server, "watcher"), connect(server, "other")
    watcher.join(room)
    other.join(room)
    # A session process's address space right after it started serving, on this machine:
    # give new sessions 40 MB on top of that, through a configuration reload.
    mark = len(server.lines)
    probe = connect(server, "probe")
    _probe_session, probe_pid = newest_session(server, mark)
    budget = vm_size_mb(probe_pid) + 40
    probe.close()
    write_config(server.config_path, {"limits": {"max_frame": 16 << 20, "max_text": 60000},
                                      "resources": {"max_memory_mb": budget}})
    mark = len(server.lines)
    server.signal(signal.SIGHUP)
    server.wait_for_log(r"SIGHUP: reloaded .*max_memory_mb", start=mark)

    mark = len(server.lines)
    victim = hello_and_join(server, "victim", room)
    session, pid = newest_session(server, mark)
    watcher.wait_type("join", room=room, nick="victim")
    limits = Path(f"/proc/{pid}/limits").read_text()
    assert re.search(rf"Max address space\s+{budget << 20}\s", limits), limits
    # One frame just under max_frame: buffering, copying and decoding it needs several
    # times its 15 MB, more than the session may have.
    victim.sendall(pack({"type": "msg", "room": room, "text": "m" * (15 << 20)}))
    victim.settimeout(10)
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while data := victim.recv(65536):  # until the session process is gone
            received += data
    victim.close()
    # The client is told which limit ended it, the log has the trace with pid and session.
    assert b"resource_limit" in received and b"max_memory_mb" in received, received[-300:]
    crash = server.wait_for_log(rf"chatd\[{pid}\] {session} chatd\.session: session over "
                                r"its max_memory_mb")
    trace = server.lines[server.lines.index(crash):]
    assert any("MemoryError" in line for line in trace[:60]), "\n".join(trace[:60])
    server.wait_for_log(rf"session {session} \(pid {pid}\) ended: exit status 1")
    assert watcher.wait_type("quit", room=room, nick="victim")["reason"] == "resource limit"
    ack = other.say(room, "unaffected")
    assert watcher.wait_type("message", room=room)["id"] == ack["id"]
    wait_until(lambda: proc_stat(pid) is None, message="the crashed process to be reaped")
    assert server.proc is not None and server.proc.poll() is None


def test_session_processes_apply_their_resource_limits(start: Any) -> None:
    server = start({"resources": {"max_memory_mb": 300, "max_files": 40,
                                  "max_cpu_seconds": 1234}})
    mark = len(server.lines)
    client = connect(server, "limited")
    _session, pid = newest_session(server, mark)
    limits = Path(f"/proc/{pid}/limits").read_text()
    soft = {}
    for row in limits.splitlines()[1:]:
        name, values = row[:26].strip(), row[26:].split()
        soft[name] = values[0]
    assert soft["Max address space"] == str(300 << 20), limits
    assert soft["Max open files"] == "40", limits
    assert soft["Max cpu time"] == "1234", limits
    # ... and they are the session's, not the parent's.
    parent = Path(f"/proc/{server.pid}/limits").read_text()
    assert "Max open files            40 " not in parent
    assert client.call({"type": "ping", "token": 1})["type"] == "pong"
