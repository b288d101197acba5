"""Load shedding and limits (issue 4), against the real server.

Connection caps are answered before a process is forked; rate limits answer
`rate_limited` first and end only sustained abuse with `flood`; the parent
raises its open-file limit for the session cap or refuses to start.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from serverproc import ServerProcess, kill_quietly, wait_until, write_config
from wire import Client, connect


def refused(server: ServerProcess, source: str) -> dict[str, Any]:
    """Connect from `source`; the only frame must be a fatal error, then EOF."""
    client = Client(server.host, server.port, source=source)
    frames = client.wait_closed(timeout=5)
    assert len(frames) == 1, frames
    assert frames[0]["type"] == "error" and frames[0]["fatal"] is True, frames
    return frames[0]


def forks_after(server: ServerProcess, mark: int) -> list[str]:
    return [line for line in server.lines[mark:] if re.search(r"session \S+ from .*: pid", line)]


def test_per_ip_cap_refuses_with_an_error_frame_and_no_process(start: Any) -> None:
    server = start({"limits": {"max_sessions_per_ip": 2, "max_sessions": 100},
                    "server": {"spare_children": 0}})
    first, second = connect(server, "a1"), connect(server, "a2")
    wait_until(lambda: len(server.sessions()) == 2, message="two session processes")
    # (the log line of a fork may come in after its process shows: count from after it)
    server.wait_for_log(r"from 127\.0\.0\.1: pid \d+ \(2 sessions\)")
    mark = len(server.lines)
    error = refused(server, "127.0.0.1")
    assert error["code"] == "too_many_connections"
    assert error["limit"] == "max_sessions_per_ip"
    server.wait_for_log(r"refused 127\.0\.0\.1: at a session cap", start=mark)
    assert forks_after(server, mark) == [] and len(server.sessions()) == 2
    # Another address is not affected by 127.0.0.1's cap.
    other = Client(server.host, server.port, source="127.0.0.2")
    other.hello("b1")
    # When one of the two leaves (and is reaped), 127.0.0.1 may connect again.
    first.send({"type": "quit"})
    first.wait_closed()
    wait_until(lambda: len(server.sessions()) == 2, message="the quitter to be reaped")
    again = connect(server, "a3")
    assert again.call({"type": "ping", "token": 5})["token"] == 5
    second.close()


def test_total_cap_refuses_with_server_full_and_no_process(start: Any) -> None:
    server = start({"limits": {"max_sessions_per_ip": 2, "max_sessions": 3},
                    "server": {"spare_children": 0}})
    clients = [connect(server, "a1"), connect(server, "a2")]
    third = Client(server.host, server.port, source="127.0.0.2")
    third.hello("b1")
    wait_until(lambda: len(server.sessions()) == 3, message="three session processes")
    server.wait_for_log(r": pid \d+ \(3 sessions\)")  # (see above)
    mark = len(server.lines)
    for source in ("127.0.0.3", "127.0.0.1"):  # a new address, and one at its own cap
        error = refused(server, source)
        assert error["code"] == "server_full" and error["limit"] == "max_sessions", error
    assert forks_after(server, mark) == [] and len(server.sessions()) == 3
    # The sessions already admitted are untouched by the refusals.
    clients[0].join("#ok")
    third.join("#ok")
    ack = clients[0].say("#ok", "still fine")
    assert third.wait_type("message", room="#ok")["id"] == ack["id"]


# A flooder process we own: connects, floods as fast as it can while reading, and
# reports what it got for each round as one JSON line.
FLOODER = textwrap.dedent("""
    import json, select, socket, sys, time
    from chatd.protocol import HEADER, FrameDecoder, decode_payload, pack
    host, port, duration = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    end = time.monotonic() + duration
    rnd = 0
    while time.monotonic() < end or rnd < 2:
        kind = "msg" if rnd % 2 == 0 else "garbage"
        sock = socket.create_connection((host, port))
        nick = f"flooder{rnd}"
        sock.sendall(pack({"type": "hello", "version": 1, "nick": nick, "label": "h"})
                     + pack({"type": "join", "room": "#crowd", "label": "j"}))
        decoder = FrameDecoder(1 << 24)
        frames = []
        while not any(f.get("type") == "history" for f in frames):
            decoder.receive_data(sock.recv(65536))
            frames += [decode_payload(p) for p in decoder.payloads()]
        if kind == "msg":
            one = pack({"type": "msg", "room": "#crowd", "text": "spam " * 20})
        else:
            junk = b"\\x93\\x01\\x02"  # msgpack, but not a map
            one = HEADER.pack(len(junk)) + junk
        burst = one * 200
        sock.setblocking(False)
        out, got, closed = memoryview(burst), [], False
        started = time.monotonic()
        while not closed and time.monotonic() - started < 20:
            r, w, _ = select.select([sock], [sock], [], 1.0)
            if w:
                try:
                    sent = sock.send(out)
                    out = out[sent:] or memoryview(burst)
                except OSError:
                    pass
            if r:
                try:
                    data = sock.recv(262144)
                except OSError:
                    data = b""
                if not data:
                    closed = True
                decoder.receive_data(data)
                got += [decode_payload(p) for p in decoder.payloads()]
        sock.close()
        errors = [f for f in got if f["type"] == "error"]
        limited = [e for e in errors if e["code"] == "rate_limited"]
        print(json.dumps({"round": rnd, "kind": kind, "nick": nick, "closed": closed,
                          "limited": len(limited),
                          "limits": sorted({e["limit"] for e in limited}),
                          "retry_after_ok": all(e["retry_after"] > 0 for e in limited),
                          "last": errors[-1] if errors else None,
                          "seconds": time.monotonic() - started}), flush=True)
        rnd += 1
""")


def test_flood_is_throttled_then_disconnected_and_others_carry_on(start: Any) -> None:
    # The documented request rates (msg 5/s burst 20, cmd 5/s burst 30, 50 strikes); the
    # flooder reconnects as fast as it can, which the per-address connection rate would
    # refuse (tests/test_server_admission.py), so that one is lifted.
    server = start({"limits": {"conn_rate_per_ip": 1000.0, "conn_burst_per_ip": 1000}})
    room = "#crowd"
    speaker, *listeners = [connect(server, f"calm{i}") for i in range(3)]
    for client in (speaker, *listeners):
        client.join(room)

    def rtt() -> float:
        began = time.perf_counter()
        assert speaker.call({"type": "ping", "token": "t"})["type"] == "pong"
        return time.perf_counter() - began

    quiet = [rtt() for _ in range(50)]
    report = server.data_dir / "flooder.jsonl"
    flooder = subprocess.Popen([sys.executable, "-c", FLOODER, server.host, str(server.port),
                                "3.0"], stdout=report.open("w"))
    try:
        loud: list[float] = []
        said: list[int] = []
        last_said = 0.0
        while flooder.poll() is None:
            loud.append(rtt())
            if time.monotonic() - last_said > 0.3:  # a calm pace, well under msg_rate
                said.append(speaker.say(room, f"calm message {len(said)}")["id"])
                last_said = time.monotonic()
    finally:
        kill_quietly(flooder.pid)
        flooder.wait(5)
    rounds = [json.loads(line) for line in report.read_text().splitlines()]
    assert len(rounds) >= 2 and flooder.returncode == 0, rounds[-1:]
    for rnd in rounds:
        bucket = "msg_rate" if rnd["kind"] == "msg" else "cmd_rate"
        # First refusals (non-fatal, naming the bucket, with retry_after) ...
        assert rnd["limited"] == 50 and rnd["limits"] == [bucket], rnd
        assert rnd["retry_after_ok"], rnd
        # ... then, for sustained abuse, the fatal flood error and the connection closed.
        assert rnd["last"]["code"] == "flood" and rnd["last"]["fatal"], rnd
        assert rnd["last"]["limit"] == "flood_strikes" and rnd["closed"], rnd
    # The calm clients kept receiving everything, in order: the calm speaker's messages
    # and each message flooder's burst (msg_burst = 20, plus what refilled meanwhile).
    last = rounds[-1]["nick"]
    streams = []
    for listener in listeners:
        got: list[dict[str, Any]] = []
        last_gone = False  # the last flooder's quit notice comes after all its messages
        while not last_gone or not set(said) <= {m["id"] for m in got}:
            frame = listener.wait(lambda f: f.get("type") in ("message", "quit"))
            if frame["type"] == "message":
                got.append(frame)
            elif frame["nick"] == last:
                assert frame["reason"] == "flooding", frame
                last_gone = True
        ids = [m["id"] for m in got]
        assert ids == sorted(ids) and len(ids) == len(set(ids)), "order or duplicates"
        assert set(said) <= set(ids)
        per_flooder: dict[str, int] = {}
        for m in got:
            if m["from"].startswith("flooder"):
                per_flooder[m["from"]] = per_flooder.get(m["from"], 0) + 1
        msg_rounds = {r["nick"] for r in rounds if r["kind"] == "msg"}
        assert set(per_flooder) == msg_rounds, (per_flooder, msg_rounds)
        assert all(20 <= n <= 40 for n in per_flooder.values()), per_flooder
        streams.append(ids)
    assert streams[0] == streams[1], "two members of one room saw different streams"
    print(f"\nping RTT before flood: median {statistics.median(quiet) * 1e3:.2f} ms, "
          f"max {max(quiet) * 1e3:.2f} ms; during {len(rounds)} flood rounds: median "
          f"{statistics.median(loud) * 1e3:.2f} ms, max {max(loud) * 1e3:.2f} ms "
          f"({len(loud)} pings)")
    assert server.proc is not None and server.proc.poll() is None


# ---- the parent's own open-file limit ----


def serve_cmd(data: Path, config: Path) -> list[str]:
    return [sys.executable, "-m", "chatd", "serve", "--host", "127.0.0.1", "--port", "0",
            "--data-dir", str(data), "--config", str(config)]


def with_nofile(soft: int, hard: int) -> Callable[[], None]:
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_refuses_to_start_when_the_session_cap_needs_more_files_than_allowed(
        tmp_path: Path) -> None:
    config = write_config(tmp_path / "chatd.toml", {"limits": {"max_sessions": 5000}})
    done = subprocess.run(serve_cmd(tmp_path, config), preexec_fn=with_nofile(256, 256),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert "max_sessions=5000 needs" in done.stderr and "hard limit is 256" in done.stderr, \
        done.stderr
    assert "lower limits.max_sessions" in done.stderr
    assert "Traceback" not in done.stderr, done.stderr


def test_raises_its_open_file_limit_to_what_the_session_cap_needs(tmp_path: Path) -> None:
    config = write_config(tmp_path / "chatd.toml", {"limits": {"max_sessions": 1000},
                                                    "irc": {"port": 0}})
    proc = subprocess.Popen(serve_cmd(tmp_path, config), preexec_fn=with_nofile(128, 4096),
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "ready" in line:
                break
        assert any("raised the open-file limit from 128 to 1192" in x for x in lines), lines
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        row = next(x for x in limits.splitlines() if x.startswith("Max open files"))
        assert row.split()[3:5] == ["1192", "4096"], row
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=15)
