"""Live fuzz (issue 4): a few hundred random, garbage and oversized frames against a
running server over several connections; afterwards a well-behaved client still
chats normally, the parent is alive and its child count is right.
"""

from __future__ import annotations

import contextlib
import random
import select
import socket
import struct
import time
from pathlib import Path
from typing import Any

import msgpack
from serverproc import ServerProcess, wait_until
from test_fuzz import server_frames
from wire import connect

from chatd import protocol as p
from chatd.protocol import HEADER, pack

SEED = 20261121
CONNECTIONS = 8
FRAMES_PER_CONNECTION = 60
CONFIG = {
    "limits": {"max_frame": 8192, "max_text": 500, "max_rooms": 5},
    # Generous rates so most frames reach the session and broker logic instead of
    # being refused at the door; a few connections still flood (see below).
    "rate": {"cmd_rate": 500.0, "cmd_burst": 500, "msg_rate": 500.0, "msg_burst": 500,
             "history_rate": 500.0, "history_burst": 500, "flood_strikes": 40},
    "keepalive": {"handshake_timeout": 5.0},
    "server": {"spare_children": 0},
}
WEIRD = ["", " ", "#", "#a", "#A", "#" + "z" * 60, "a\x00b", "\u202e", "é" * 40, "\x1b[2J",
         "alice", "Alice", "-1", "x" * 300, "\ud7ff", "🙂"]


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(10 if depth < 3 else 7)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 2**31, 2**63 - 1, 2**63, 2**64 - 1, -(2**63),
                           rng.randrange(-1000, 1000)])
    if kind == 3:
        return rng.choice([0.5, float("nan"), float("inf"), -0.0])
    if kind in (4, 5):
        return rng.choice(WEIRD)
    if kind == 6:
        return rng.randbytes(rng.randrange(0, 20))
    if kind == 7:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["type", "room", "x", "text"]): random_value(rng, depth + 1)
            for _ in range(rng.randrange(4))}


def random_request(rng: random.Random) -> dict[str, Any]:
    # Not quit: it would end the connection before the rest of its frames are tried.
    rtype = rng.choice([*(t for t in p.SCHEMAS if t != "quit"), "bogus", "welcome", ""])
    req: dict[str, Any] = {"type": rtype}
    for field in p.SCHEMAS.get(rtype, {}):
        if rng.random() < 0.8:
            req[field] = random_value(rng) if rng.random() < 0.3 else rng.choice(
                {"room": ["#fz", "#fz2", "#FZ", rng.choice(WEIRD)],
                 "text": ["hello", rng.choice(WEIRD)], "version": [1, 2]}.get(
                    field, [rng.choice(WEIRD), rng.randrange(-5, 500)]))
    if rng.random() < 0.5:
        req["label"] = random_value(rng)
    return req


def random_frame(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.45:
        with contextlib.suppress(Exception):  # values msgpack cannot encode: try again
            return pack(random_request(rng))
        return pack({"type": "ping"})
    if roll < 0.6:
        payload = msgpack.packb(random_value(rng), use_bin_type=True)
        return HEADER.pack(len(payload)) + payload
    if roll < 0.75:  # random bytes with a truthful length
        payload = rng.randbytes(rng.randrange(0, 300))
        return HEADER.pack(len(payload)) + payload
    if roll < 0.85:  # invalid UTF-8 or truncated msgpack inside a proper frame
        payload = rng.choice([b"\x81\xa4type\xa4\xff\xfe\xfd\xfc", b"\x82\xa4type",
                              b"\xdd\xff\xff\xff\xff", b"\xc1", b"\x91" * 2000])
        return HEADER.pack(len(payload)) + payload
    # a big text, just over or under the limits
    return pack({"type": "msg", "room": "#fz", "text": "y" * rng.choice([499, 501, 7000])})


def oversized() -> bytes:
    """A declared length over max_frame: the one fatal framing error."""
    return struct.pack(">I", 1 << 30) + b"\x81"


def fuzz_connection(server: ServerProcess, rng: random.Random, index: int) -> bytes:
    """Run one connection's fuzz; returns everything the server sent on it."""
    sock = socket.create_connection((server.host, server.port), timeout=10)
    frames = []
    if index % 2 == 0:  # half of them registered, so requests reach the broker
        frames.append(pack({"type": "hello", "version": 1, "nick": f"fz{index}"}))
        frames.append(pack({"type": "join", "room": "#fz"}))
    frames += [random_frame(rng) for _ in range(FRAMES_PER_CONNECTION)]
    if index % 4 == 3:
        frames.append(oversized())
    elif index % 4 == 1:  # raw garbage, framing included: usually a bad length too
        frames.append(rng.randbytes(rng.randrange(1, 40)))
    stream = b"".join(frames)
    received = bytearray()
    sock.setblocking(False)
    view = memoryview(stream)
    deadline = time.monotonic() + 20
    closed = False
    while time.monotonic() < deadline and not closed:
        readable, writable, _ = select.select([sock], [sock] if view else [], [], 0.3)
        if writable:
            try:
                view = view[sock.send(view):]
            except OSError:
                view = view[:0]
        if readable:
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            closed = not data
            received += data
        if not view and not readable and not writable:
            break  # all sent, and the server has been quiet for a moment
    sock.close()
    return bytes(received)


def test_live_fuzz_leaves_a_healthy_server(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, CONFIG).start()
    try:
        rng = random.Random(SEED)
        bystander = connect(server, "bystander")
        bystander.join("#fz")
        outputs = [fuzz_connection(server, rng, i) for i in range(CONNECTIONS)]
        codes: dict[str, int] = {}
        for out in outputs:
            # Whatever garbage came in, what went out is well-formed frames (a trailing
            # partial frame only if the connection was cut while it was being sent).
            for frame in server_frames(out[:complete_prefix(out)], 1 << 24):
                if frame["type"] == "error":
                    codes[frame["code"]] = codes.get(frame["code"], 0) + 1
        assert "internal" not in codes, codes
        assert codes.get("frame_too_large", 0) >= CONNECTIONS // 4, codes
        assert {"malformed", "not_a_map", "unknown_type"} <= set(codes), codes
        print(f"\nlive fuzz: {CONNECTIONS * FRAMES_PER_CONNECTION} frames; errors {codes}")

        # The fuzzers' sessions all end (closed, or ended by the server), and are reaped.
        wait_until(lambda: len(server.children()) == 1, timeout=15,
                   message="only the bystander's session process left")
        assert not [line for line in server.lines if "Traceback" in line
                    or "crashed" in line or "broker failed" in line]
        # A well-behaved client chats normally with the bystander.
        newcomer = connect(server, "newcomer")
        joined, _history = newcomer.join("#fz")
        assert "bystander" in joined["members"]
        ack = newcomer.say("#fz", "is everyone alright?")
        got = bystander.wait(lambda f: f.get("type") == "message" and f["id"] == ack["id"])
        assert got["text"] == "is everyone alright?" and got["from"] == "newcomer"
        assert len(server.children()) == 2
        assert server.proc is not None and server.proc.poll() is None
    finally:
        server.stop()


def complete_prefix(data: bytes) -> int:
    """Length of the longest prefix of `data` made of whole frames."""
    pos = 0
    while len(data) - pos >= 4:
        (size,) = HEADER.unpack_from(data, pos)
        if pos + 4 + size > len(data):
            break
        pos += 4 + size
    return pos
