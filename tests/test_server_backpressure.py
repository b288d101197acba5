"""Slow readers and backpressure (issue 4), against the real server.

A client that stops reading must not stall the broker, its room or anyone
else; the parent's loop never blocks on one session process. The documented
policy: a session whose bounded send queue (`queues.client_queue` in its own
process, `queues.child_queue` in the parent) overflows is ended with the fatal
`slow_consumer` error, its rooms get a quit notice ("slow consumer"), and its
client learns why on reconnect (`welcome.previous`).
"""

from __future__ import annotations

import re
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from serverproc import ServerProcess, kill_quietly, proc_stat, wait_until
from wire import Client, connect

from chatd.protocol import FrameDecoder, decode_payload, pack

PAD = "x" * 3000
SMALL_QUEUES = {"queues": {"child_queue": 4096, "client_queue": 4096},
                "rate": {"msg_rate": 10000.0, "msg_burst": 10000}}


def session_pid(server: ServerProcess, session: str) -> int:
    line = server.wait_for_log(rf"session {session} from \S+: pid (\d+)")
    match = re.search(r"pid (\d+)", line)
    assert match
    return int(match.group(1))


def raw_slow_reader(server: ServerProcess, nick: str, room: str) -> tuple[socket.socket, str]:
    """A client with a tiny receive buffer that says hello, joins, and never reads again."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect((server.host, server.port))
    sock.sendall(pack({"type": "hello", "version": 1, "nick": nick, "label": 1}))
    welcome = read_until(sock, lambda f: f.get("label") == 1)
    assert welcome["type"] == "welcome", welcome
    sock.sendall(pack({"type": "join", "room": room, "label": 2}))
    read_until(sock, lambda f: f.get("type") == "history" and f.get("label") == 2)
    return sock, welcome["session"]


def read_until(sock: socket.socket, pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    decoder = FrameDecoder(1 << 24)
    while True:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed")
        decoder.receive_data(data)
        for payload in decoder.payloads():
            frame = decode_payload(payload)
            if pred(frame):
                return frame


def talk(talkers: list[Client], room: str, rounds: int) -> list[int]:
    """Every talker says `rounds` messages; returns the acknowledged ids."""
    ids = []
    for i in range(rounds):
        for talker in talkers:
            ids.append(talker.say(room, f"{talker.nick} {i} {PAD}")["id"])
    return ids


def received_ids(client: Client, room: str, want: set[int]) -> list[int]:
    """Wait until `client` has every id in `want`; returns the ids in arrival order."""
    got: list[int] = []
    while not want <= set(got):
        frame = client.wait_type("message", room=room)
        got.append(frame["id"])
    return got


def test_slow_reader_is_ended_and_others_keep_receiving_everything(start: Any) -> None:
    server = start({**SMALL_QUEUES, "keepalive": {"ping_interval": 600.0}})
    room = "#busy"
    talkers = [connect(server, f"talker{i}") for i in range(3)]
    for talker in talkers:
        talker.join(room)
    slow, slow_session = raw_slow_reader(server, "slowpoke", room)
    slow_pid = session_pid(server, slow_session)
    for talker in talkers:
        talker.wait_type("join", room=room, nick="slowpoke")

    ids = talk(talkers, room, rounds=120)  # ~1 MB of messages the slow reader never reads
    assert ids == sorted(ids)
    for talker in talkers:
        got = received_ids(talker, room, set(ids))
        assert got == sorted(got), "room order broken"
        assert len(got) == len(set(got)), "duplicate delivery"
        assert set(got) == set(ids)
        quit_ = talker.wait_type("quit", room=room, nick="slowpoke")
        assert quit_["reason"] == "slow consumer"

    # Whichever bound tripped first (the session's own client_queue, or the parent's
    # child_queue for it), the session was ended as a slow consumer.
    server.wait_for_log(rf"chatd\[{slow_pid}\] .*session ended: slow_consumer"
                        rf"|ending session {slow_session} \(pid {slow_pid}\): queue_limit")
    # The session process does not linger waiting for a client that will never read.
    wait_until(lambda: proc_stat(slow_pid) is None, timeout=10,
               message="the slow session's process to end and be reaped")
    slow.close()

    again = Client(server.host, server.port)
    label = again.request({"type": "hello", "version": 1, "nick": "slowpoke",
                           "session": slow_session})
    welcome = again.reply(label)
    assert welcome["type"] == "welcome", welcome
    assert welcome["previous"]["code"] == "slow_consumer", welcome
    # And the room still works for everyone, the returning client included (it catches up
    # after the last id it saw; a plain join's 50 x 3 KB history would not fit these
    # deliberately tiny queues).
    _joined, history = again.join(room, after=ids[-1])
    assert history["messages"] == [] and history["more"] is False
    ack = talkers[0].say(room, "still here")
    assert again.wait_type("message", room=room)["id"] == ack["id"]
    assert server.proc is not None and server.proc.poll() is None


def test_parent_never_blocks_on_a_stopped_session_process(start: Any) -> None:
    """SIGSTOP one session *process*: the parent sheds it and everyone else carries on."""
    server = start({**SMALL_QUEUES, "keepalive": {"ping_interval": 600.0}})
    room = "#busy"
    talkers = [connect(server, f"talker{i}") for i in range(3)]
    for talker in talkers:
        talker.join(room)
    victim = connect(server, "frozen")
    victim.join(room)
    session = server.wait_for_log(r"session \S+ from \S+: pid \d+ \(4 sessions\)")
    match = re.search(r"session (\S+) from \S+: pid (\d+)", session)
    assert match
    sid, pid = match.group(1), int(match.group(2))
    for talker in talkers:
        talker.wait_type("join", room=room, nick="frozen")
    kill_quietly(pid, signal.SIGSTOP)
    try:
        wait_until(lambda: (proc_stat(pid) or ("?",))[0] == "T", timeout=5,
                   message="the session process to stop")
        ids = talk(talkers, room, rounds=80)
        for talker in talkers:
            got = received_ids(talker, room, set(ids))
            assert got == sorted(got) and set(got) == set(ids) and len(got) == len(ids)
            assert talker.wait_type("quit", room=room, nick="frozen")["reason"] == \
                "slow consumer"
        server.wait_for_log(rf"ending session {sid} \(pid {pid}\): queue_limit")
    finally:
        kill_quietly(pid, signal.SIGCONT)
    # Resumed, the process reads its close order and ends by itself.
    wait_until(lambda: proc_stat(pid) is None, timeout=10, message="the resumed process to end")
    frames = victim.wait_closed(timeout=10)
    assert any(f.get("code") == "slow_consumer" and f.get("fatal") for f in frames), frames[-3:]


def test_reconnect_catch_up_into_many_busy_rooms_is_not_a_slow_consumer(start: Any) -> None:
    """A client re-joining 20 rooms with `after` at once gets every history page, even
    though together they are many times the queue bounds: the session keeps only a few
    catch-up requests in flight, so only a client that does not read is a slow consumer."""
    server = start({"limits": {"max_frame": 16384, "max_text": 2000},
                    "queues": {"child_queue": 65536, "client_queue": 65536},
                    "rate": {"msg_rate": 1000.0, "msg_burst": 1000}})
    rooms = [f"#busy{i}" for i in range(20)]
    writer = connect(server, "writer")
    for room in rooms:
        writer.join(room)
        for n in range(12):
            writer.say(room, f"{room} {n} " + "x" * 1500)
    reader = Client(server.host, server.port)
    reader.hello("reader")
    labels = [reader.request({"type": "join", "room": room, "after": 0}) for room in rooms]
    total = 0
    for label in labels:
        assert reader.reply(label)["type"] == "joined"
        page = reader.reply(label)
        assert page["type"] == "history", page
        total += len(page["messages"])
    assert total > 20  # pages cut to max_frame: the rest is fetched with history after
    while page["more"]:  # caught up in the last room (protocol.md §8): live from here
        page = reader.call({"type": "history", "room": rooms[-1],
                            "after": page["messages"][-1]["id"]})
    ack = writer.say(rooms[-1], "still here?")
    assert reader.wait_type("message", id=ack["id"])["text"] == "still here?"
    assert not [f for f in reader.backlog if f.get("type") == "error"]


def read_to_end(sock: socket.socket, timeout: float = 20.0) -> tuple[list[dict[str, Any]],
                                                                       int, str]:
    """Read until the connection ends: (frames, bytes of a partial frame left over, and
    "eof" or "reset")."""
    decoder = FrameDecoder(1 << 24)
    frames: list[dict[str, Any]] = []
    sock.settimeout(timeout)
    how = "eof"
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            how = "reset"
            break
        if not data:
            break
        decoder.receive_data(data)
        frames += [decode_payload(payload) for payload in decoder.payloads()]
    return frames, decoder.buffered, how


def overrun(server: ServerProcess, room: str) -> tuple[socket.socket, str]:
    """A slow reader in `room`, and a talker who says big messages until the server gives
    up on the reader as a slow consumer (the talker sees it quit)."""
    talker = connect(server, "talker")
    talker.join(room)
    slow, session = raw_slow_reader(server, "slowpoke", room)
    talker.wait_type("join", room=room, nick="slowpoke")
    for _ in range(2000):
        talker.say(room, PAD)
        if talker.pending("quit", room=room, nick="slowpoke"):
            break
    assert talker.wait_type("quit", room=room, nick="slowpoke")["reason"] == "slow consumer"
    return slow, session


OVERRUN = {"rate": SMALL_QUEUES["rate"], "keepalive": {"ping_interval": 600.0}}


def test_a_slow_consumer_that_reads_again_gets_whole_frames_and_the_error_last(
        start: Any) -> None:
    """protocol.md §7: the connection never ends in the middle of a frame, and a client
    that resumes reading within `close_grace` gets the fatal error as its last frame."""
    server = start({**OVERRUN, "queues": {"client_queue": 65536, "close_grace": 30.0}})
    slow, _session = overrun(server, "#busy")
    time.sleep(3.0)  # the client stays away for a while (the server used to wait 2 s)
    frames, partial, how = read_to_end(slow)
    assert (how, partial) == ("eof", 0), f"ended by {how} with {partial} bytes of a frame"
    last = frames[-1]
    assert (last["type"], last.get("code"), last.get("fatal")) == \
        ("error", "slow_consumer", True), last
    assert all(f["type"] != "error" for f in frames[:-1])
    slow.close()


def test_a_slow_consumer_that_never_reads_is_reset_not_ended_mid_frame(start: Any) -> None:
    """After `close_grace` the server gives up; if the last frames are not through by then
    it resets the connection: a clean end of stream always follows a whole frame."""
    server = start({**OVERRUN, "queues": {"client_queue": 65536, "close_grace": 0.5}})
    slow, session = overrun(server, "#busy")
    pid = session_pid(server, session)
    wait_until(lambda: proc_stat(pid) is None, timeout=10,
               message="the slow session's process to give up and end")
    frames, partial, how = read_to_end(slow)
    assert how == "reset" or partial == 0, f"clean end of stream {partial} bytes into a frame"
    assert frames and all(f["type"] != "error" or f["code"] == "slow_consumer"
                          for f in frames)
    slow.close()
