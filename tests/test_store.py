"""The store and the broker when storage fails: no crash, no ack for what is not stored,
reads go on, one log line, service back by itself; start-up checks; retention."""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path
from typing import Any

import msgpack
import pytest
from cores import answer_reads, decode_all
from storefaults import damage_page_holding

from chatd.broker import Broker
from chatd.config import Config, parse_settings
from chatd.retention import MESSAGE_BATCH, Retention
from chatd.store import StorageError, Store, StoreUnusable, identity, message_map

DAY = 86_400_000


def full(store: Store) -> None:
    """Let the database grow no more (SQLite's own limit: a deterministic full disk), and
    fill the room left in its pages with messages of a room nobody is in."""
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count = {pages}")
    for size in (1000, 100, 10):
        try:
            while True:
                store.db.execute("INSERT INTO messages (ts, room, sender, text) VALUES "
                                 "(0, '#pad', 'pad', ?)", ("p" * size,))
        except sqlite3.OperationalError as exc:
            assert "full" in str(exc)


def roomy(store: Store) -> None:
    store.db.execute("PRAGMA max_page_count = 1073741823")


class CommitFails:
    """A connection whose COMMIT fails the way a full disk makes it fail (SQLite rolls back
    itself): the case max_page_count cannot produce, since it fails at INSERT."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.real = db
        self.broken = True

    @property
    def in_transaction(self) -> bool:
        return self.real.in_transaction

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if self.broken and sql == "COMMIT":
            self.real.execute("ROLLBACK")
            exc = sqlite3.OperationalError("database or disk is full")
            exc.sqlite_errorcode = 13  # type: ignore[attr-defined]
            raise exc
        return self.real.execute(sql, *args)


class Room:
    """A broker on a file database with alice (sid 1) and bob (sid 2) in #r."""

    def __init__(self, path: Path) -> None:
        self.store = Store(path)
        self.broker = Broker(self.store, Config().with_values(parse_settings({})))
        self.reader = Store(path, readonly=True)  # answers history reads, as the reader
        self.now = 10_000
        for sid, nick in ((1, "alice"), (2, "bob")):
            self.broker.attach(sid, f"s{sid}")
            self.send(sid, type="hello", version=1, nick=nick)
            self.send(sid, type="join", room="#r")
        self.frames()

    def send(self, sid: int, **req: Any) -> None:
        self.now += 1
        self.broker.receive(sid, msgpack.packb(req), self.now)

    def frames(self) -> dict[int, list[dict[str, Any]]]:
        out: dict[int, list[dict[str, Any]]] = {}
        while True:
            for sid, items in self.broker.drain().items():  # commits, then reads go out
                for item in items:
                    if isinstance(item, dict):
                        assert item.get("c") != "close", item  # a storage fault ends none
                    else:
                        out.setdefault(sid, []).extend(decode_all(item))
            if not self.broker.history.reads:
                return out
            answer_reads(self.broker, self.reader)


def test_a_full_disk_refuses_the_message_not_the_session_and_heals(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    r = Room(tmp_path / "h.sqlite3")
    r.send(1, type="msg", room="#r", text="stored", label=1)
    first = r.frames()
    assert [f["type"] for f in first[1]] == ["ack", "message"]
    full(r.store)
    ((top,),) = r.store.db.execute("SELECT max(id) FROM messages")
    with caplog.at_level(logging.INFO, "chatd.store"):
        for n in range(2, 6):
            r.send(1, type="msg", room="#r", text="x" * 3000, label=n)
            out = r.frames()
            (err,) = out[1]
            assert (err["type"], err["code"], err["fatal"], err["label"]) == \
                ("error", "storage_unavailable", False, n)
            assert "disk is full" in err["message"]
            assert 2 not in out  # bob hears nothing of it
        r.send(2, type="history", room="#r", label=9)  # reads go on
        (hist,) = r.frames()[2]
        assert [m["text"] for m in hist["messages"]] == ["stored"]
        errors = [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
        assert len(errors) == 1 and "disk is full" in errors[0].getMessage()
        roomy(r.store)  # space comes back: nothing to do but send again
        r.send(1, type="msg", room="#r", text="again", label=10)
        out = r.frames()
    assert [f["type"] for f in out[1]] == ["ack", "message"]
    assert out[1][0]["id"] == top + 1  # refused messages used up no id
    assert [f["text"] for f in out[2]] == ["again"]
    assert any("writes work again" in rec.getMessage() for rec in caplog.records)


def test_a_failed_commit_takes_back_every_ack_and_delivery_of_the_batch(
        tmp_path: Path) -> None:
    r = Room(tmp_path / "h.sqlite3")
    real = r.store.db
    r.store.db = CommitFails(real)  # type: ignore[assignment]
    r.send(1, type="msg", room="#r", text="one", label="a")
    r.send(2, type="msg", to="alice", text="two", label="b")
    r.send(2, type="who", room="#r", label="c")  # not a write: its reply stays
    r.send(1, type="msg", room="#r", text="three", label="d")
    out = r.frames()
    assert [(f["type"], f.get("code"), f["label"]) for f in out[1]] == \
        [("error", "storage_unavailable", "a"), ("error", "storage_unavailable", "d")]
    assert [(f["type"], f.get("code"), f["label"]) for f in out[2]] == \
        [("error", "storage_unavailable", "b"), ("members", None, "c")]
    assert r.store.db.execute("SELECT count(*) FROM messages").fetchone()[0] == 0
    r.store.db.broken = False  # type: ignore[attr-defined]
    r.send(1, type="msg", room="#r", text="four", label="e")
    out = r.frames()
    assert [f["type"] for f in out[1]] == ["ack", "message"] and out[1][0]["id"] == 1


def test_a_read_never_shows_a_message_that_is_then_rolled_back(tmp_path: Path) -> None:
    r = Room(tmp_path / "h.sqlite3")
    r.store.db = CommitFails(r.store.db)  # type: ignore[assignment]
    r.send(1, type="msg", room="#r", text="doomed", label=1)
    r.send(2, type="history", room="#r", label=2)
    out = r.frames()
    assert out[1][0]["code"] == "storage_unavailable"
    (hist,) = out[2]
    assert hist["type"] == "history" and hist["messages"] == []


def test_a_topic_that_cannot_be_stored_changes_nothing(tmp_path: Path) -> None:
    r = Room(tmp_path / "h.sqlite3")
    r.store.db = CommitFails(r.store.db)  # type: ignore[assignment]
    r.send(1, type="topic", room="#r", topic="new", label=1)
    out = r.frames()
    assert [(f["type"], f.get("code")) for f in out[1]] == [("error", "storage_unavailable")]
    assert 2 not in out
    r.send(2, type="topic", room="#r", label=2)
    assert r.frames()[2][0]["topic"] == ""


def test_a_database_that_turns_read_only_ends_no_session(tmp_path: Path) -> None:
    r = Room(tmp_path / "h.sqlite3")
    r.store.db.execute("PRAGMA query_only = 1")  # SQLite refuses writes: SQLITE_READONLY
    r.send(1, type="msg", room="#r", text="hi", label=1)
    r.send(1, type="topic", room="#r", topic="t", label=2)
    out = r.frames()  # (a session-ending 'close' control would fail the helper)
    assert [(f["code"], f["fatal"], f["label"]) for f in out[1]] == \
        [("storage_unavailable", False, 1), ("storage_unavailable", False, 2)]
    assert "read-only" in out[1][0]["message"] and 2 not in out
    r.store.db.execute("PRAGMA query_only = 0")
    r.send(1, type="msg", room="#r", text="hi", label=3)
    assert [f["type"] for f in r.frames()[1]] == ["ack", "message"]


def test_a_damaged_page_fails_only_the_reads_that_touch_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "h.sqlite3"
    store = Store(path)
    for i in range(200):
        store.add_message(1000 + i, "a", f"OLD-{i:04d} " + "o" * 900, False, room="#old")
    for i in range(200):
        store.add_message(2000 + i, "a", f"NEW-{i:04d} " + "n" * 900, False, room="#new")
    store.close()
    damage_page_holding(path, b"OLD-0190")
    store = Store(path)
    with caplog.at_level(logging.INFO, "chatd.store"):
        for _ in range(3):
            with pytest.raises(StorageError) as caught:
                store.history(room="#old")
            assert caught.value.code == "storage_unavailable"
            assert "damaged" in caught.value.message
        assert len(store.history(room="#new")[0]) == 50
        assert store.add_message(3000, "b", "still", False, room="#new") == 401
        assert store.flush()
    (line,) = [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert "PRAGMA integrity_check" in line and "backup" in line


def test_start_up_refuses_garbage_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    path.write_bytes(os.urandom(8192))
    with pytest.raises(StoreUnusable) as caught:
        Store(path)
    text = str(caught.value)
    assert "\n" not in text and str(path) in text and "not a database" in text


def test_start_up_refuses_a_read_only_file(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes read-only files; the server test covers a read-only mount")
    path = tmp_path / "h.sqlite3"
    Store(path).close()
    path.chmod(0o444)
    with pytest.raises(StoreUnusable, match="read-only"):
        Store(path)


def test_a_version_1_database_gets_the_active_column(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite3"
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE topics (room TEXT PRIMARY KEY, topic TEXT NOT NULL, by TEXT,"
                     " ts INTEGER); INSERT INTO topics VALUES ('#a', 'hi', 'x', 1234);")
    db.commit()
    db.close()
    store = Store(path)
    assert store.db.execute("SELECT active FROM topics").fetchall() == [(1234,)]
    assert store.topic("#a") == ("hi", "x", 1234)


# ---- retention ----

def test_prune_messages_by_age_and_count_in_batches(tmp_path: Path) -> None:
    store = Store(tmp_path / "h.sqlite3")
    now = 100 * DAY
    for i in range(30):  # ids 1..30, one a day: ids 1..20 are older than 10 days
        store.add_message(now - (30 - i) * DAY, "a", f"m{i}", False, room="#r")
    store.flush()
    assert store.prune_messages(now - 10 * DAY, 0, batch=8) == 8
    assert store.prune_messages(now - 10 * DAY, 0, batch=8) == 8
    assert store.prune_messages(now - 10 * DAY, 0, batch=8) == 4
    assert store.prune_messages(now - 10 * DAY, 0, batch=8) == 0
    assert store.prune_messages(None, 3, batch=100) == 7
    rows, _ = store.history(room="#r")
    assert [r[0] for r in rows] == [28, 29, 30]
    store.add_message(now, "a", "next", False, room="#r")
    assert store.prune_messages(None, 3, batch=100) == 1
    assert store.prune_messages(now + DAY, 0, batch=100) == 3  # all of them may go...
    assert store.add_message(now, "a", "after", False, room="#r") == 32  # ...ids go on


def test_prune_topics_idle_live_and_cap(tmp_path: Path) -> None:
    store = Store(tmp_path / "h.sqlite3")
    now = 100 * DAY
    store.set_topic("#old", "t", "a", now - 50 * DAY)
    store.set_topic("#chatty", "t", "a", now - 50 * DAY)
    store.add_message(now - DAY, "a", "recent", False, room="#chatty")
    store.set_topic("#live", "t", "a", now - 50 * DAY)
    store.set_topic("#fresh", "t", "a", now - DAY)
    store.set_topic("#emptied", "t", "a", now - 50 * DAY)
    store.touch_room("#emptied", now - 2 * DAY)  # its last member left two days ago
    store.flush()
    assert store.prune_topics(now - 10 * DAY, 0, {"#live"}, now, batch=10) == (1, 1)
    assert store.prune_topics(now - 10 * DAY, 0, {"#live"}, now, batch=10) == (0, 0)
    left = {r[0] for r in store.db.execute("SELECT room FROM topics")}
    assert left == {"#chatty", "#live", "#fresh", "#emptied"}
    # A cap: the empty rooms used longest ago go first, the live one stays.
    assert store.prune_topics(None, 2, {"#live"}, now, batch=10) == (2, 0)
    left = {r[0] for r in store.db.execute("SELECT room FROM topics")}
    assert left == {"#live", "#fresh"}


def test_retention_runs_in_batches_then_waits_for_the_interval(tmp_path: Path) -> None:
    store = Store(tmp_path / "h.sqlite3")
    for i in range(1200):
        store.add_message(i, "a", "old", False, room="#r")
    store.flush()
    config = Config().with_values(parse_settings({"retention": {
        "max_age_days": 1.0, "interval": 30.0}}))
    retention = Retention()
    assert retention.timeout(config, 5.0) == 0.0
    steps = 0
    while True:
        retention.step(config, store, 5.0, 10 * DAY, set())
        steps += 1
        if not retention.running:
            break
        assert retention.timeout(config, 5.0) == 0.0  # one batch per loop turn, no waiting
    assert steps == 1200 // MESSAGE_BATCH + 1  # full batches, then a step that finds none
    assert store.db.execute("SELECT count(*) FROM messages").fetchone()[0] == 0
    assert retention.timeout(config, 5.0) == 30.0
    off = Config().with_values(parse_settings({"retention": {"max_topics": 0}}))
    assert retention.timeout(off, 5.0) is None


def test_a_room_that_empties_is_dated_for_retention(tmp_path: Path) -> None:
    r = Room(tmp_path / "h.sqlite3")
    r.send(1, type="topic", room="#r", topic="hello")
    r.send(1, type="part", room="#r")
    r.send(2, type="part", room="#r")
    r.frames()
    ((active,),) = r.store.db.execute("SELECT active FROM topics WHERE room = '#r'")
    assert active == r.now


def test_direct_messages_of_an_identity_by_id_both_ways(tmp_path: Path) -> None:
    """history(ident=...): sent and received, a message to oneself once, paged by id."""
    store = Store(tmp_path / "h.sqlite3")
    ids = [store.add_message(i, "ann", f"t{i}", False, target=peer, src="@ann", dst=dst)
           for i, (peer, dst) in enumerate([("bob", "bob"), ("ann", "@ann"),
                                            ("cy", "@cy")])]
    ids.append(store.add_message(9, "bob", "back", False, target="ann", src="bob",
                                 dst="@ann"))
    store.add_message(10, "bob", "not hers", False, target="cy", src="bob", dst="@cy")
    store.add_message(11, "ann", "a guest ann", False, target="bob")  # nick keys: ann, bob
    store.flush()
    rows, more = store.history(ident="@ann", after=0, limit=10)
    assert [r[0] for r in rows] == ids and not more
    rows, more = store.history(ident="@ann", after=ids[0], limit=2)
    assert [r[0] for r in rows] == ids[1:3] and more
    rows, more = store.history(ident="@ann", limit=2)
    assert [r[0] for r in rows] == ids[2:] and more
    rows, more = store.history(ident="@ann", after=0, before=ids[3], limit=10)
    assert [r[0] for r in rows] == ids[:3] and not more
    # The conversation of two identities, and a guest's by its nick key, as before.
    assert [r[5] for r in store.history(dm="@ann bob")[0]] == ["t0", "back"]
    assert [r[5] for r in store.history(dm="ann bob")[0]] == ["a guest ann"]


def test_a_version_2_database_gets_direct_identities(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, ts INTEGER "
                     "NOT NULL, room TEXT, dm TEXT, sender TEXT NOT NULL, target TEXT, text "
                     "TEXT NOT NULL, action INTEGER NOT NULL DEFAULT 0); INSERT INTO messages "
                     "(ts, dm, sender, target, text) VALUES (1, 'alice bob', 'Alice', 'bob', "
                     "'old'); PRAGMA user_version = 2;")
    db.close()
    store = Store(path)
    (row,), _more = store.history(ident=identity("Alice", None), after=0)
    assert row[5] == "old"
    assert store.history(ident=identity("Alice", "Alice"), after=0)[0] == []  # not the nick
    assert "account" not in message_map(row)  # (version 4: stored before, a guest's)
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == 4


def test_a_message_keeps_its_senders_account(tmp_path: Path) -> None:
    store = Store(tmp_path / "h.sqlite3")
    store.add_message(1, "Ann", "mine", False, room="#r", account="Ann")
    store.add_message(2, "bob", "a guest's", False, room="#r")
    store.flush()
    rows, _more = store.history(room="#r", after=0)
    assert [message_map(r).get("account") for r in rows] == ["Ann", None]
