"""Integration: `chatd upgrade` under chat, a refused upgrade, and the data dir lock.

The real `chatd serve` re-executes itself (same PID) while clients chat: no connection
drops, every message reaches every member exactly once, in order, and the sessions are
the same processes before and after.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from serverproc import FAST, ServerProcess, wait_until, write_config
from wire import Client, connect

from chatd import datadir
from chatd.admin import SOCKET_NAME


def start(tmp_path: Path, **sections: dict[str, Any]) -> ServerProcess:
    return ServerProcess(tmp_path, {**FAST, **sections}).start()


def upgrade(server: ServerProcess, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chatd", "upgrade", "--data-dir",
                           str(server.data_dir), "--timeout", str(timeout)],
                          capture_output=True, text=True, timeout=timeout + 10)


def still_serves(server: ServerProcess, speaker: Client, nick: str, room: str) -> None:
    """A new client gets in, joins `room` and hears `speaker` there; both then leave."""
    listener = connect(server, nick)
    listener.join(room)
    speaker.say(room, f"heard by {nick}")
    assert listener.messages(room, 1)[0]["text"] == f"heard by {nick}"
    listener.close()
    speaker.close()


def room_ids(client: Client, room: str, count: int) -> list[int]:
    return [f["id"] for f in client.messages(room, count, timeout=30)]


def test_server_upgrade_under_chat_drops_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    server = start(tmp_path)
    try:
        clients = [connect(server, f"u{i}") for i in range(4)]
        for c in clients:
            c.join("#up")
        for c in clients:  # each sees the others' joins before the count starts
            c.sync()
        sessions = sorted(server.children())
        per_sender = 60
        errors: list[BaseException] = []

        def chat(c: Client, n: int) -> None:
            try:
                labels = [c.request({"type": "msg", "room": "#up", "text": f"{n}-{k}"})
                          for k in range(per_sender)]
                for label in labels:
                    assert c.reply(label, timeout=30)["type"] == "ack"
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        senders = [threading.Thread(target=chat, args=(c, n)) for n, c in
                   enumerate(clients[:2])]
        mark = server.mark()
        for t in senders:
            t.start()
        result = upgrade(server)
        for t in senders:
            t.join(60)
        assert not errors, errors
        assert result.returncode == 0, result.stderr + server.log_tail()
        assert "upgraded" in result.stdout
        server.wait_for_log(r"took over \d+ sessions", start=mark)
        total = per_sender * 2
        for c in clients:
            got = room_ids(c, "#up", total)
            assert got == sorted(set(got)) and len(got) == total  # no gap, no duplicate
            assert c.call({"type": "ping"})["type"] == "pong"  # still connected
        # the same session processes, the same parent
        assert server.proc is not None and server.proc.poll() is None
        assert set(sessions) <= set(server.children())
        # and the new code serves new clients too
        still_serves(server, clients[0], "late", "#up")
        for c in clients[1:]:
            c.close()
    finally:
        assert server.stop() == 0


def test_server_upgrade_with_a_broken_config_is_refused(tmp_path: Path) -> None:
    server = start(tmp_path)
    try:
        alice = connect(server, "alice")
        alice.join("#r")
        write_config(server.config_path, {"limits": {"max_frame": "huge"}})
        mark = server.mark()
        result = upgrade(server)
        assert result.returncode == 1
        assert "max_frame" in result.stderr, result.stderr
        server.wait_for_log("upgrade refused, staying on the running code", start=mark)
        assert not any("took over" in line for line in server.lines[mark:])
        still_serves(server, alice, "bob", "#r")  # the old code serves on, alice still in
    finally:
        write_config(server.config_path, server.settings)
        assert server.stop() == 0


def test_server_upgrade_by_sigusr2_keeps_the_pid_and_sessions(tmp_path: Path) -> None:
    server = start(tmp_path, irc={"port": -1})
    try:
        irc_port = server.irc_port
        alice = connect(server, "alice")
        alice.join("#r")
        pid = server.pid
        mark = server.mark()
        server.signal(signal.SIGUSR2)
        server.wait_for_log(r"upgraded: pid \d+ serves 1 sessions", start=mark, timeout=30)
        server.wait_for_log("admin socket", start=mark)  # made afresh by the new code
        assert server.pid == pid
        assert server.irc_port == irc_port
        still_serves(server, alice, "bob", "#r")  # the listeners were handed over
    finally:
        assert server.stop() == 0


def admin(server: ServerProcess, *args: str) -> dict[str, Any]:
    """`chatd admin --json ...` as a user runs it; its answer (which must be ok)."""
    proc = subprocess.run([sys.executable, "-m", "chatd", "admin", "--data-dir",
                           str(server.data_dir), "--json", *args], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    answer = json.loads(proc.stdout)
    assert isinstance(answer, dict) and answer["ok"] is True
    return answer


def test_server_upgrade_hands_the_admin_socket_over(tmp_path: Path) -> None:
    server = start(tmp_path)
    try:
        alice = connect(server, "alice")
        alice.join("#r")
        path = server.data_dir / SOCKET_NAME
        before = os.stat(path)
        assert admin(server, "status")["sessions"]["total"] == 1
        mark = server.mark()
        result = upgrade(server)
        assert result.returncode == 0, result.stderr
        server.wait_for_log("admin socket .* handed over", start=mark)
        after = os.stat(path)  # the same socket, not one made afresh
        assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)
        status = admin(server, "status")
        assert status["pid"] == server.pid and status["sessions"]["total"] == 1
        listed = admin(server, "sessions")["sessions"]
        assert [(s["nick"], s["rooms"]) for s in listed] == [("alice", ["#r"])]
        assert admin(server, "kick", "alice", "after", "the", "upgrade")["kicked"]["nick"] \
            == "alice"
        assert alice.wait_closed()[-1]["message"] == \
            "kicked by the server administrator: after the upgrade"
    finally:
        assert server.stop() == 0
    assert not path.exists()  # still ours to remove at the stop


def test_server_refuses_a_data_dir_another_parent_serves(tmp_path: Path) -> None:
    server = start(tmp_path)
    try:
        assert datadir.holder(tmp_path) == server.pid
        second = subprocess.run([sys.executable, "-m", "chatd", "serve", "--port", "0",
                                 "--data-dir", str(tmp_path)], capture_output=True,
                                text=True, timeout=30)
        assert second.returncode == 2
        assert f"in use by pid {server.pid}" in second.stderr
    finally:
        assert server.stop() == 0
    # a parent killed with -9 leaves no lock behind
    again = start(tmp_path)
    try:
        assert again.proc is not None
        os.kill(again.pid, signal.SIGKILL)
        again.wait_exit()
        wait_until(lambda: datadir.holder(tmp_path) is None, message="the lock to go")
    finally:
        for pid in again.children():
            os.kill(pid, signal.SIGKILL)
    third = start(tmp_path)
    assert third.stop() == 0
