"""A whole chat through sandboxed session processes (issue 10 §3).

Everything a session process does after `sandbox.apply()` must still work with no file
system, no new sockets and (as root) another user: a lazily imported module or a file
opened on some rare path would fail here. So this drives every request type, the error
paths, a reconnect's catch-up (`done` controls), a SIGHUP reload (`config` control), a
fatal error, a quit and the shutdown, with fork-on-accept sessions and with spares that
get their client over the channel, and then reads the log for any crash.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
from pathlib import Path
from typing import Any

import pytest
from serverproc import ServerProcess, newest_session, wait_until, write_config
from wire import Client, connect

from chatd import protocol, seccomp

FAST = {"msg_rate": 100000.0, "msg_burst": 100000, "history_rate": 100000.0,
        "history_burst": 100000, "cmd_rate": 100000.0, "cmd_burst": 100000}


def settings(spares: int, rate: dict[str, Any]) -> dict[str, Any]:
    server: dict[str, Any] = {"spare_children": spares, "sandbox": True}
    if os.geteuid() == 0:
        with contextlib.suppress(KeyError):
            server["user"] = pwd.getpwnam("nobody").pw_name
    return {"server": server, "rate": rate}


def sandboxed(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    return "\nSeccomp:\t2\n" in status and "\nNoNewPrivs:\t1\n" in status


@pytest.mark.timeout(120)
@pytest.mark.parametrize("spares", [0, 2], ids=["fork-on-accept", "spares"])
def test_every_request_and_control_through_sandboxed_sessions(tmp_path: Path,
                                                              spares: int) -> None:
    if seccomp.program() is None:
        pytest.skip("no seccomp filter for this CPU architecture")
    server = ServerProcess(tmp_path, settings(spares, FAST)).start()
    clients: list[Client] = []
    try:
        server.wait_for_log("sessions are sandboxed")
        mark = server.mark()
        alice = connect(server, "alice")
        clients.append(alice)
        _sid, alice_pid = newest_session(server, mark)
        assert sandboxed(alice_pid)
        mark = server.mark()
        bob = connect(server)
        clients.append(bob)
        _sid, bob_pid = newest_session(server, mark)
        # before welcome: ping, pong; then hello with an error first
        assert bob.call({"type": "ping", "token": b"\x01"})["token"] == b"\x01"
        bob.send({"type": "pong", "token": 7})
        assert bob.error({"type": "join", "room": "#s"})["code"] == "not_registered"
        assert bob.error({"type": "hello", "version": 1, "nick": "alice"})["code"] \
            == "nick_taken"
        welcome = bob.hello("bob")
        assert sandboxed(bob_pid)

        alice.join("#s")
        bob.join("#s")
        first = alice.say("#s", "hello from a sandbox")
        assert bob.messages("#s", 1)[0]["text"] == "hello from a sandbox"
        alice.call({"type": "msg", "room": "#s", "text": "waves", "action": True})
        assert bob.messages("#s", 1)[0].get("action") is True
        assert alice.call({"type": "topic", "room": "#s", "topic": "locked down"})["topic"] \
            == "locked down"
        assert bob.call({"type": "topic", "room": "#s"})["topic"] == "locked down"
        assert [r["room"] for r in bob.call({"type": "rooms"})["rooms"]] == ["#s"]
        assert {m["nick"] if isinstance(m, dict) else m
                for m in bob.call({"type": "who", "room": "#s"})["members"]} >= {"alice", "bob"}
        assert alice.call({"type": "nick", "nick": "alice2"})["type"] == "nick"
        dm = alice.call({"type": "msg", "to": "bob", "text": "psst"})
        assert dm["type"] == "ack"
        assert bob.wait_type("message", to="bob")["text"] == "psst"
        assert [m["text"] for m in bob.call({"type": "history", "with": "alice2"})
                ["messages"]] == ["psst"]
        page = bob.call({"type": "history", "room": "#s", "before": first["id"] + 2,
                         "limit": 1})
        assert [m["id"] for m in page["messages"]] == [first["id"] + 1]
        # errors the session itself answers, and ones the broker answers
        assert bob.error({"type": "frobnicate"})["code"] == "unknown_type"
        assert bob.error({"type": "msg", "room": "#s"})["code"] == "missing_field"
        assert bob.error({"type": "join", "room": "no hash"})["code"] == "invalid_room"
        assert bob.error({"type": "msg", "room": "#s", "text": "x" * 4001})["code"] \
            == "text_too_long"
        assert bob.error({"type": "msg", "room": "#nowhere", "text": "x"})["code"] \
            == "not_in_room"
        assert bob.call({"type": "part", "room": "#s"})["type"] == "parted"

        # bob drops and comes back: catch-up by id, through the catch-up window
        last = bob.call({"type": "history", "with": "alice2"})["messages"][-1]["id"]
        bob.close()
        for i in range(12):
            alice.say("#s", f"missed {i}")
        bob = connect(server)
        clients.append(bob)
        again = bob.call({"type": "hello", "version": 1, "nick": "bob",
                          "session": welcome["session"]})
        assert again["type"] == "welcome"
        labels = [bob.request({"type": "join", "room": f"#r{i}"}) for i in range(6)]
        for label in labels:
            assert bob.reply(label)["type"] == "joined"
            assert bob.reply(label)["type"] == "history"
        joined, history = bob.join("#s", after=last)
        assert [m["text"] for m in history["messages"]] == [f"missed {i}" for i in range(12)]

        # SIGHUP: the new rate reaches the running sessions (a `config` control)
        mark = server.mark()
        write_config(server.config_path, {**settings(spares, {**FAST, "msg_burst": 2,
                                                               "msg_rate": 0.01}),
                                          "limits": {"conn_rate_per_ip": 1000.0,
                                                     "conn_burst_per_ip": 1000}})
        server.signal(signal.SIGHUP)
        server.wait_for_log("SIGHUP: reloaded", start=mark)
        bob.sync()  # its reply follows the control on bob's channel: the control is in
        replies = [bob.call({"type": "msg", "room": "#s", "text": f"r{i}"}) for i in range(3)]
        assert [r["type"] for r in replies] == ["ack", "ack", "error"]
        assert replies[-1]["code"] == "rate_limited"

        # a fatal error in one session (its client's frame is too large)
        mark = server.mark()
        carol = connect(server, "carol")
        clients.append(carol)
        _sid, carol_pid = newest_session(server, mark)
        carol.send_raw(protocol.HEADER.pack(1 << 24))
        assert carol.wait_type("error")["code"] == "frame_too_large"
        carol.wait_closed()
        # a quit
        alice.send({"type": "quit", "reason": "bye"})
        assert bob.wait_type("quit", nick="alice2")["reason"] == "bye"
        wait_until(lambda: f"pid {carol_pid}) ended" in "\n".join(server.lines),
                   message="carol's session to end")
    finally:
        for client in clients:
            client.close()
        code = server.stop()
    # the shutdown: every session told, every process ended well, no crash anywhere
    assert code == 0
    ended = [line for line in server.lines if ") ended:" in line]
    assert ended and all(line.endswith("exit status 0") for line in ended), ended
    bad = [line for line in server.lines if "Traceback" in line or "crashed" in line
           or "Error" in line or "not sandboxed" in line]
    assert not bad, bad
