"""Admission against the real server (issue 8, section 4).

A connection that resets before saying anything never reaches the parent; connections
over a per-source rate, or over the rate of new sessions from everyone, are refused with
an error frame before anything is forked.
"""

from __future__ import annotations

import re
import socket
import struct
from typing import Any

from serverproc import ServerProcess
from wire import Client, connect

ONE_BY_ONE = {"server": {"spare_children": 0}}  # one fork per admitted client, counted


def refusal(server: ServerProcess, source: str) -> dict[str, Any]:
    """Connect from `source` and say hello; the only frame must be a fatal error, then EOF."""
    client = Client(server.host, server.port, source=source)
    client.send({"type": "hello", "version": 1, "nick": "refused"})
    frames = client.wait_closed(timeout=10)
    assert len(frames) == 1, frames
    assert frames[0]["type"] == "error" and frames[0]["fatal"] is True, frames
    return frames[0]


def forks_from(server: ServerProcess, mark: int, source: str) -> int:
    pattern = re.compile(rf"session \S+ from {re.escape(source)}: pid")
    return sum(1 for line in server.lines[mark:] if pattern.search(line))


def connect_and_reset(host: str, port: int, source: str, say: bytes = b"") -> None:
    sock = socket.create_connection((host, port), source_address=(source, 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    if say:
        sock.sendall(say)
    sock.close()  # RST, no TIME_WAIT: the cheapest way to make the server fork


def test_connect_and_reset_without_a_word_never_reaches_the_parent(start: Any) -> None:
    server = start(ONE_BY_ONE)  # the default connection rate: a burst of 50
    mark = server.mark()
    for _ in range(100):
        connect_and_reset(server.host, server.port, "127.0.0.1")
    # Connections are taken in order: once this one is answered, the others were seen.
    client = connect(server, "after")
    assert client.call({"type": "ping", "token": 1})["token"] == 1
    assert forks_from(server, mark, "127.0.0.1") == 1  # only `after`'s
    assert not [line for line in server.lines[mark:] if "refus" in line]


def test_connection_churn_from_one_address_is_refused_before_any_fork(start: Any) -> None:
    server = start({**ONE_BY_ONE, "limits": {"conn_rate_per_ip": 0.5,
                                             "conn_burst_per_ip": 5}})
    mark = server.mark()
    for _ in range(60):  # a byte first, so that the kernel hands each one to the parent
        connect_and_reset(server.host, server.port, "127.0.0.1", say=b"\x00")
    # Connections are taken in order: once this one is refused, all 60 were handled.
    error = refusal(server, "127.0.0.1")
    assert (error["code"], error["limit"]) == ("too_many_connections", "conn_rate_per_ip")
    # Refusals cost tokens too: it is in debt, at most (burst + 1) / rate seconds' worth.
    assert 0 < error["retry_after"] <= (5 + 1) / 0.5, error
    assert "conn_rate_per_ip" in error["message"]
    # The burst was forked (those sessions end at once); nothing after it.
    assert forks_from(server, mark, "127.0.0.1") <= 5
    server.wait_for_log(r"refusing new connections from 127\.0\.0\.1: over conn_rate_per_ip",
                        start=mark)
    # One warning for the whole run of refusals, not one line per connection.
    assert sum("refusing new connections" in line for line in server.lines[mark:]) == 1
    # Another address is untouched by 127.0.0.1's churn.
    other = Client(server.host, server.port, source="127.0.0.2")
    other.hello("bystander")
    other.join("#calm")
    assert other.say("#calm", "fine here")["type"] == "ack"
    other.close()


def test_the_rate_of_new_sessions_from_everyone_is_bounded(start: Any) -> None:
    server = start({**ONE_BY_ONE, "limits": {"session_rate": 0.01, "session_burst": 2}})
    first = connect(server, "first")
    second = Client(server.host, server.port, source="127.0.0.2")
    second.hello("second")
    mark = server.mark()
    error = refusal(server, "127.0.0.3")  # a new address, but no new session now
    assert (error["code"], error["limit"]) == ("server_busy", "session_rate"), error
    assert error["retry_after"] > 0
    assert forks_from(server, mark, "127.0.0.3") == 0
    server.wait_for_log(r"refused 1 new connections over session_rate", start=mark)
    # The sessions already in are untouched.
    first.join("#x")
    second.join("#x")
    ack = first.say("#x", "still here")
    assert second.wait_type("message", room="#x")["id"] == ack["id"]
