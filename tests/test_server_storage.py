"""Integration: storage faults never take the server down (issue 8, section 3).

A real full filesystem (a small tmpfs; needs root, which CI has), a garbage or read-only
database at start-up, a page damaged while the server runs, and retention keeping
abandoned rooms from growing the database.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from serverproc import ServerProcess, wait_until
from storefaults import count, damage_page_holding, fill, query, remount, tmpfs
from wire import connect

from chatd.store import Store

DAY = 86_400_000


def serve_once(data_dir: Path) -> subprocess.CompletedProcess[str]:
    """Run `chatd serve` on a data dir that should stop it at start-up."""
    cmd = [sys.executable, "-m", "chatd", "serve", "--port", "0", "--data-dir", str(data_dir)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=20)


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    return line


def test_a_full_disk_refuses_messages_keeps_sessions_and_heals_by_itself() -> None:
    with tmpfs("4m") as fs:
        data = fs / "data"
        data.mkdir()
        server = ServerProcess(data).start()
        try:
            alice, bob = connect(server, "alice"), connect(server, "bob")
            alice.join("#general")
            bob.join("#general")
            acked = [alice.say("#general", f"before {i}")["id"] for i in range(3)]
            bob.messages("#general", 3)
            fill(fs / "filler")
            mark = server.mark()
            for i in range(5):
                err = alice.error({"type": "msg", "room": "#general", "text": f"lost {i}"})
                assert (err["code"], err["fatal"]) == ("storage_unavailable", False)
                assert "disk is full" in err["message"]
            topic = alice.error({"type": "topic", "room": "#general", "topic": "lost"})
            assert topic["code"] == "storage_unavailable"
            hist = bob.call({"type": "history", "room": "#general"})  # reads go on
            assert [m["id"] for m in hist["messages"]] == acked
            bob.sync()
            assert not bob.pending("message") and not bob.pending("topic")
            failing = [line for line in server.lines[mark:] if "history database" in line]
            assert len(failing) == 1 and "disk is full" in failing[0], failing
            os.remove(fs / "filler")  # space returns: service resumes by itself
            after = alice.say("#general", "after")
            assert after["id"] == acked[-1] + 1
            assert bob.messages("#general", 1)[0]["text"] == "after"
            server.wait_for_log("writes work again", start=mark)
            assert server.proc is not None and server.proc.poll() is None
        finally:
            assert server.stop() == 0
        stored = query(data / "history.sqlite3", "SELECT text FROM messages ORDER BY id")
        assert stored == [("before 0",), ("before 1",), ("before 2",), ("after",)]


def test_garbage_database_stops_start_up_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "history.sqlite3").write_bytes(os.urandom(16384))
    line = one_line(serve_once(tmp_path))
    assert "history.sqlite3" in line and "not a database" in line and "backup" in line


def test_read_only_database_stops_start_up_with_one_line(tmp_path: Path) -> None:
    if os.geteuid() != 0:  # a read-only file is enough for anyone but root
        Store(tmp_path / "history.sqlite3").close()
        (tmp_path / "history.sqlite3").chmod(0o444)
        line = one_line(serve_once(tmp_path))
    else:  # root writes read-only files: make the filesystem read-only instead
        with tmpfs("2m") as fs:
            Store(fs / "history.sqlite3").close()
            remount(fs, "ro")
            line = one_line(serve_once(fs))
    assert "history.sqlite3" in line and "read-only" in line


def test_a_damaged_page_costs_the_request_not_the_session(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    store = Store(data / "history.sqlite3")
    for i in range(200):
        store.add_message(1000 + i, "a", f"OLD-{i:04d} " + "o" * 900, False, room="#old")
    for i in range(200):
        store.add_message(2000 + i, "a", f"NEW-{i:04d} " + "n" * 900, False, room="#new")
    store.close()
    server = ServerProcess(data).start()
    try:
        damage_page_holding(data / "history.sqlite3", b"OLD-0190")  # while it runs
        bob = connect(server, "bob")
        label = bob.request({"type": "join", "room": "#old"})
        assert bob.reply(label)["type"] == "joined"
        err = bob.reply(label)
        assert err["type"] == "error", (err, server.lines)
        assert (err["type"], err["code"], err["fatal"]) == ("error", "storage_unavailable",
                                                            False)
        assert "damaged" in err["message"]
        again = bob.error({"type": "history", "room": "#old"})
        assert again["code"] == "storage_unavailable"
        _joined, hist = bob.join("#new")  # the session stays; the rest of the data works
        assert len(hist["messages"]) == 50
        assert bob.say("#new", "still here")["id"] == 401
        advice = [line for line in server.lines if "integrity_check" in line]
        assert len(advice) == 1 and "backup" in advice[0]
    finally:
        assert server.stop() == 0


def test_retention_deletes_old_history_and_the_topics_of_abandoned_rooms(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    now = time.time_ns() // 1_000_000
    store = Store(data / "history.sqlite3")
    for i in range(1200):
        store.add_message(now - 40 * DAY + i, "a", f"old {i}", False, room="#old")
    store.add_message(now - DAY, "a", "recent", False, room="#kept")
    store.set_topic("#old", "abandoned", "a", now - 40 * DAY)
    store.set_topic("#kept", "in use", "a", now - 40 * DAY)
    store.close()
    server = ServerProcess(data, {"retention": {"max_age_days": 30.0, "room_idle_days": 30.0,
                                                "interval": 0.2}}).start()
    try:
        server.wait_for_log(r"retention: deleted 1200 messages and 1 topics in \d+ steps")
        db = data / "history.sqlite3"
        assert count(db, "SELECT count(*) FROM messages") == 1
        assert count(db, "SELECT count(*) FROM topics WHERE room = '#kept'") == 1
        bob = connect(server, "bob")
        joined, hist = bob.join("#old")
        assert joined["topic"] == "" and hist["messages"] == []
        assert bob.join("#kept")[0]["topic"] == "in use"
    finally:
        server.stop()


def test_throw_away_rooms_cannot_grow_the_topics_without_bound(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, {
        "retention": {"max_topics": 20, "interval": 0.1},
        "rate": {"cmd_rate": 1000.0, "cmd_burst": 1000, "history_rate": 1000.0,
                 "history_burst": 1000}}).start()
    try:
        alice = connect(server, "alice")
        alice.join("#home")
        assert alice.call({"type": "topic", "room": "#home", "topic": "stays"})["type"] == \
            "topic"
        for i in range(60):
            room = f"#throwaway{i}"
            alice.join(room)
            alice.call({"type": "topic", "room": room, "topic": "x" * 300})
            alice.call({"type": "part", "room": room})
        db = tmp_path / "history.sqlite3"
        wait_until(lambda: count(db, "SELECT count(*) FROM topics") <= 20, timeout=20,
                   message="the topics to shrink to max_topics")
        # #home is the oldest topic but has a member: it is never dropped.
        assert count(db, "SELECT count(*) FROM topics WHERE room = '#home'") == 1
        # The newest throw-away topics are the ones kept.
        assert count(db, "SELECT count(*) FROM topics WHERE room = '#throwaway59'") == 1
    finally:
        server.stop()

