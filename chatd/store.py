"""SQLite history and room topics, owned by the parent process only.

Messages go into one open transaction that the broker commits (flush) before it
hands any delivery out, so nothing is delivered that is not stored, and an id is
never handed out twice. A topic is committed at once (topics are rare).

Faults are handled here, in one place: no sqlite3.Error leaves this class. A
failed call becomes a StorageError (a non-fatal `storage_unavailable` for that
one request); a failed write also rolls back whatever was pending and tells the
owner (`on_rollback`) so that no ack or delivery of it goes out. Each kind of
trouble is logged once, with what to do, and again only as a reminder; writes
are simply tried again, so service resumes by itself when, say, space returns.
A database that cannot be used at all at start-up raises StoreUnusable.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatd import storeschema
from chatd.protocol import ProtocolError, nick_key
from chatd.storeschema import SCHEMA_VERSION, dm_key, dm_pair, identity

__all__ = ["SCHEMA_VERSION", "StorageError", "Store", "StoreUnusable", "dm_key", "dm_pair",
           "identity", "message_map"]

log = logging.getLogger("chatd.store")
MODERATION = 2  # messages.action of a moderation event (protocol.md §14)
BUSY_TIMEOUT = 0.25  # seconds a write waits for another program's lock: the loop waits too
REMIND_EVERY = 600.0  # seconds between log lines about the same ongoing trouble

Row = tuple[int, int, str | None, str, str | None, str, int, str | None]
_COLUMNS = "id, ts, room, sender, target, text, action, account"

# SQLite primary result codes -> kind of trouble (sqlite_errorcode holds the extended code).
_KINDS = {13: "full", 8: "readonly", 14: "readonly", 3: "readonly", 23: "readonly",
          11: "damaged", 26: "damaged", 5: "locked", 6: "locked"}
# kind -> (what a client is told, what the operator is told to do)
_TEXTS = {
    "full": ("the server's disk is full, try again later",
             "the disk is full. Messages and topics are refused with storage_unavailable "
             "until space is freed on that filesystem; reads go on, and writes resume by "
             "themselves ([retention] settings keep history from growing without end)"),
    "readonly": ("the server's database is read-only",
                 "it cannot be written. Check the permissions of the file and its directory "
                 "and whether the filesystem went read-only; writes resume by themselves "
                 "once it is writable"),
    "damaged": ("the server's database is damaged",
                "it is damaged; requests that touch the damaged part get storage_unavailable. "
                "Stop chatd, check the file with sqlite3 FILE 'PRAGMA integrity_check' and "
                "restore it from a backup (sqlite3's .recover can save what is readable)"),
    "locked": ("the server's database is busy, try again",
               "another program holds a lock on it (an open sqlite3 shell?); writes resume "
               "when it lets go"),
    "failed": ("the server's storage failed",
               "check the disk and the system log; writes are tried again with each request"),
}


class StorageError(ProtocolError):
    """The database failed (not the peer): the request was not carried out."""

    def __init__(self, kind: str, op: str) -> None:
        what = "not stored" if op == "write" else "not read"
        super().__init__("storage_unavailable", f"{what}: {_TEXTS[kind][0]}")
        self.kind = kind


class StoreUnusable(Exception):
    """The database cannot be opened and written at start-up (one line for the operator)."""


@dataclass
class _Trouble:
    since: float
    logged: float
    failures: int = 1


def message_map(row: Row) -> dict[str, Any]:
    """A stored row as the protocol's `message` map."""
    msg_id, ts, room, sender, target, text, action, account = row
    if action == MODERATION:
        return event_map(row)
    out: dict[str, Any] = {"type": "message", "id": msg_id, "ts": ts}
    if room is not None:
        out["room"] = room
    else:
        out["to"] = target
    out.update({"from": sender, "text": text, "action": bool(action)})
    if account is not None:
        out["account"] = account
    return out


def event_map(row: Row) -> dict[str, Any]:
    """A stored moderation event as the protocol's `moderation` map (its fields were
    written by chatd.modrequests; a row that is not a JSON map keeps only its kind)."""
    msg_id, ts, room, sender, _target, text, _action, _account = row
    out: dict[str, Any] = {"type": "moderation", "id": msg_id, "ts": ts, "room": room,
                           "by": sender}
    try:
        fields = json.loads(text)
    except ValueError:
        fields = None
    if not isinstance(fields, dict) or not isinstance(fields.get("kind"), str):
        fields = {"kind": "unknown"}
    out.update({k: v for k, v in fields.items() if k not in out})
    return out


def _kind(exc: sqlite3.Error, path: str) -> str:
    code = getattr(exc, "sqlite_errorcode", None)
    kind = _KINDS.get(code & 0xFF, "failed") if isinstance(code, int) else "failed"
    if kind == "failed" and path != ":memory:":  # an I/O error is often a full disk too
        try:
            if os.statvfs(os.path.dirname(os.path.abspath(path))).f_bavail == 0:
                kind = "full"
        except OSError:
            pass
    return kind


class Store:
    def __init__(self, path: Path | str, *, readonly: bool = False) -> None:
        """The parent's store, or (readonly) a history reader's connection to the same
        file: the parent keeps it in WAL mode, so reading never blocks its writes."""
        self.path = str(path)
        # Called with the error when writes that were not committed yet are rolled back.
        self.on_rollback: Callable[[StorageError], None] | None = None
        self._dirty = False  # the open transaction holds writes
        self._trouble: dict[str, _Trouble] = {}
        self._last_error: tuple[float, str] | None = None  # (wall clock, what) for the admin
        self._snapshot = False  # inside snapshot(): one read transaction
        self.pruned_through = 0  # prune_messages() has deleted every id up to this
        if readonly:
            try:
                uri = Path(self.path).absolute().as_uri() + "?mode=ro"
                self.db = sqlite3.connect(uri, uri=True, isolation_level=None)
            except sqlite3.Error as exc:
                raise self._unusable(exc) from None
            return
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None,
                                      check_same_thread=False, timeout=BUSY_TIMEOUT)
            self.db.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL survives a crash of the process (not of the machine) without an
            # fsync per message; the broker commits once per loop iteration.
            self.db.execute("PRAGMA synchronous=NORMAL")
            storeschema.create(self.db)
            (version,) = self.db.execute("PRAGMA user_version").fetchone()
        except sqlite3.Error as exc:
            raise self._unusable(exc) from None
        try:  # a real write: a read-only file opens without complaint, then refuses
            self.db.execute(f"PRAGMA user_version = {max(version, SCHEMA_VERSION)}")
        except sqlite3.Error as exc:
            if _kind(exc, self.path) != "full":
                raise self._unusable(exc) from None
            self._fail(exc, "write")  # a full disk may pass: start, refuse writes, say so

    def _unusable(self, exc: sqlite3.Error) -> StoreUnusable:
        with_hint = {"full": "the disk is full", "readonly": "is it (or its directory) "
                     "read-only?", "damaged": "it is damaged or not a chatd database: restore "
                     "it from a backup or move it away to start with empty history",
                     "locked": "another program holds a lock on it"}
        hint = with_hint.get(_kind(exc, self.path), "check the file and the disk")
        return StoreUnusable(f"cannot use the history database {self.path}: {exc} ({hint})")

    # ---- faults ----

    def _fail(self, exc: sqlite3.Error, op: str) -> StorageError:
        """Roll back what is pending, tell the owner, log once; returns the error to raise."""
        lost = self._dirty
        self._dirty = False
        if self.db.in_transaction:  # SQLite may have rolled back already (disk full, I/O)
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
        error = StorageError(_kind(exc, self.path), op)
        self._report(error.kind, exc)
        if lost and self.on_rollback is not None:
            self.on_rollback(error)
        return error

    def _report(self, kind: str, exc: sqlite3.Error) -> None:
        now = time.monotonic()
        self._last_error = (time.time(), f"{exc}: {_TEXTS[kind][1]}")
        trouble = self._trouble.get(kind)
        if trouble is None:
            self._trouble[kind] = _Trouble(now, now)
            log.error("history database %s: %s: %s", self.path, exc, _TEXTS[kind][1])
            return
        trouble.failures += 1
        if now - trouble.logged >= REMIND_EVERY:
            trouble.logged = now
            log.error("history database %s still failing (%s): %d failed attempts in %.0f s",
                      self.path, exc, trouble.failures, now - trouble.since)

    def trouble(self) -> dict[str, Any]:
        """For `chatd admin status`: the kinds of failure going on, and the last error."""
        last = self._last_error
        return {"failing": sorted(self._trouble),
                "last_error": None if last is None else {"time": last[0], "error": last[1]}}

    def _recovered(self) -> None:
        """A commit went through: write trouble is over (damage is not healed by that)."""
        for kind in [k for k in self._trouble if k != "damaged"]:
            trouble = self._trouble.pop(kind)
            log.warning("history database %s: writes work again (%s for %.0f s, %d failed "
                        "attempts)", self.path, kind, time.monotonic() - trouble.since,
                        trouble.failures)

    def _write(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        try:
            if not self.db.in_transaction:
                self.db.execute("BEGIN")
            cur = self.db.execute(sql, args)
        except sqlite3.Error as exc:
            raise self._fail(exc, "write") from None
        self._dirty = True
        return cur

    def _read(self, sql: str, args: list[Any] | tuple[Any, ...]) -> list[Any]:
        if not self._snapshot:
            self.flush()  # a reply must never show a write that could still be rolled back
        try:
            return self.db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise self._fail(exc, "read") from None

    def commit(self) -> None:
        """Commit pending writes, or raise StorageError (after rolling them back)."""
        if not self.db.in_transaction:
            return
        try:
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self._fail(exc, "write") from None
        self._dirty = False
        if self._trouble:
            self._recovered()

    def flush(self) -> bool:
        """Commit pending writes; False if they were lost (on_rollback has been told)."""
        try:
            self.commit()
        except StorageError:
            return False
        return True

    # ---- messages and topics ----

    def add_message(self, ts: int, sender: str, text: str, action: bool, room: str | None = None,
                    target: str | None = None, src: str | None = None,
                    dst: str | None = None, msg_id: int | None = None,
                    account: str | None = None) -> int:
        """A room message, or a direct one from identity `src` to `dst` (by default the
        guest identities of the nicks `sender` and `target`); `account`: the sender's,
        when it is logged in. In a cluster the id comes with it (Redis gave it), and a
        message stored already is left as it is."""
        dm = None
        if room is None:
            src = src or nick_key(sender)
            dst = dst or nick_key(target or "")
            dm = dm_pair(src, dst)
        cur = self._write(
            f"INSERT {'' if msg_id is None else 'OR IGNORE '}INTO messages "
            "(id, ts, room, dm, sender, target, text, action, src, dst, account) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (msg_id, ts, room, dm, sender, target, text, int(action), src, dst, account))
        assert cur.lastrowid is not None
        return msg_id if msg_id is not None else cur.lastrowid

    def history(self, *, room: str | None = None, dm: str | None = None,
                ident: str | None = None, before: int | None = None,
                after: int | None = None, limit: int = 50) -> tuple[list[Row], bool]:
        """Up to `limit` rows oldest first, and whether more lie beyond them: of a room,
        a conversation (`dm`), or every direct message to or from identity `ident`.

        With `after`, the oldest rows above it (below `before` too, when given) and
        whether more follow; otherwise the newest rows (below `before`) and whether
        older ones exist."""
        if ident is not None:
            return self._direct(ident, before, after, limit)
        where = "room = ?" if room is not None else "dm = ?"
        args: list[Any] = [room if room is not None else dm]
        if before is not None:
            where += " AND id < ?"
            args.append(before)
        if after is not None:
            sql = f"SELECT {_COLUMNS} FROM messages WHERE {where} AND id > ? ORDER BY id LIMIT ?"
            rows = self._read(sql, [*args, after, limit + 1])
            return rows[:limit], len(rows) > limit
        sql = f"SELECT {_COLUMNS} FROM messages WHERE {where} ORDER BY id DESC LIMIT ?"
        rows = self._read(sql, [*args, limit + 1])
        more = len(rows) > limit
        return rows[:limit][::-1], more

    def _direct(self, ident: str, before: int | None, after: int | None,
                limit: int) -> tuple[list[Row], bool]:
        """history(ident=...): a range scan of each index (sent, received), merged; a
        message to oneself is in both and counted once (UNION)."""
        bounds, args = "", []
        if after is not None:
            bounds, args = " AND id > ?", [after]
        if before is not None:
            bounds, args = bounds + " AND id < ?", [*args, before]
        order = "id" if after is not None else "id DESC"
        one = (f"SELECT * FROM (SELECT {_COLUMNS} FROM messages WHERE {{}} = ?{bounds} "
               f"ORDER BY {order} LIMIT ?)")
        sql = f"{one.format('src')} UNION {one.format('dst')} ORDER BY {order} LIMIT ?"
        rows = self._read(sql, [ident, *args, limit + 1, ident, *args, limit + 1, limit + 1])
        more = len(rows) > limit
        rows = rows[:limit]
        return (rows if after is not None else rows[::-1]), more

    # ---- the nicks accounts own ----

    def owned(self) -> dict[str, str]:
        """nick key -> account name, for every account (read once, at start-up)."""
        return {key: name for key, name in self._read("SELECT key, name FROM owned", ())}

    def own(self, name: str) -> None:
        """Record that account `name` owns its nick (committed at once, like a topic)."""
        self._write("INSERT OR REPLACE INTO owned (key, name) VALUES (?, ?)",
                    (nick_key(name), name))
        self.commit()

    def last_id(self) -> int:
        """The newest message id (0 when there is none), or raise StorageError."""
        ((newest,),) = self._read("SELECT max(id) FROM messages", ())
        return int(newest or 0)

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads inside see one state of the database (a read transaction): a history
        reader asks for a page and the newest id in the same snapshot. Read-only use."""
        try:
            self.db.execute("BEGIN")
        except sqlite3.Error as exc:
            raise self._fail(exc, "read") from None
        self._snapshot = True
        try:
            yield
        finally:
            self._snapshot = False
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("COMMIT")

    def set_topic(self, room: str, topic: str, by: str, ts: int) -> None:
        """Store and commit a topic (with any pending messages), or raise StorageError."""
        self._write("INSERT OR REPLACE INTO topics (room, topic, by, ts, active) "
                    "VALUES (?, ?, ?, ?, ?)", (room, topic, by, ts, ts))
        self.commit()

    def moderate(self, ts: int, room: str, by: str, event: dict[str, Any],
                 policy: str | None, msg_id: int | None = None) -> int:
        """Store a moderation event and the room's policy after it (`policy` None: nothing
        left to keep), and commit both with any pending messages; the event's id (in a
        cluster it comes with it, as for add_message). Raises StorageError with nothing
        stored."""
        cur = self._write(
            f"INSERT {'' if msg_id is None else 'OR IGNORE '}INTO messages "
            "(id, ts, room, dm, sender, target, text, action) "
            "VALUES (?, ?, ?, NULL, ?, NULL, ?, ?)",
            (msg_id, ts, room, by, json.dumps(event, separators=(",", ":")), MODERATION))
        self.save_policy(room, policy)
        assert cur.lastrowid is not None
        return msg_id if msg_id is not None else cur.lastrowid

    def save_policy(self, room: str, policy: str | None) -> None:
        """Store (and commit) a room's policy, or forget it (None); raises StorageError."""
        if policy is None:
            self._write("DELETE FROM room_policies WHERE room = ?", (room,))
        else:
            self._write("INSERT OR REPLACE INTO room_policies (room, policy) VALUES (?, ?)",
                        (room, policy))
        self.commit()

    def policy(self, room: str) -> str | None:
        """The room's stored policy (JSON), or None."""
        rows = self._read("SELECT policy FROM room_policies WHERE room = ?", (room,))
        return str(rows[0][0]) if rows else None

    def topic(self, room: str) -> tuple[str, str | None, int | None]:
        rows = self._read("SELECT topic, by, ts FROM topics WHERE room = ?", (room,))
        return (rows[0][0], rows[0][1], rows[0][2]) if rows else ("", None, None)

    def touch_room(self, room: str, ts: int) -> None:
        """The room has just lost its last member (for retention; best effort, never raises:
        it rides with the pending messages)."""
        with contextlib.suppress(StorageError):
            self._write("UPDATE topics SET active = ? WHERE room = ? AND active < ?",
                        (ts, room, ts))

    # ---- retention (each call is one small transaction) ----

    def prune_messages(self, before_ts: int | None, keep: int, batch: int) -> int:
        """Delete up to `batch` of the oldest messages that are older than `before_ts`
        (oldest first by id, up to the first one that is not) or beyond the newest `keep`
        (0: no count limit). Returns how many were deleted."""
        if (before_ts is None and not keep) or not self.flush():
            return 0
        try:  # two queries: min() and max() together would scan the whole table
            ((first,),) = self.db.execute("SELECT min(id) FROM messages")
            ((last,),) = self.db.execute("SELECT max(id) FROM messages")
            if first is None:
                return 0
            window = first + batch - 1  # ids are dense: at most `batch` rows
            upto = min(last - keep, window) if keep else first - 1
            if before_ts is not None:
                for msg_id, ts in self.db.execute("SELECT id, ts FROM messages WHERE id <= ? "
                                                  "ORDER BY id", (window,)).fetchall():
                    if ts >= before_ts:
                        break
                    upto = max(upto, msg_id)
            if upto < first:
                return 0
            self.db.execute("BEGIN")
            deleted = self.db.execute("DELETE FROM messages WHERE id <= ?", (upto,)).rowcount
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._fail(exc, "write")
            return 0
        self.pruned_through = max(self.pruned_through, upto)
        return deleted

    def prune_topics(self, idle_before: int | None, cap: int, live: Container[str], now: int,
                     batch: int) -> tuple[int, int]:
        """One batch over the topics of the rooms used longest ago: drop a topic when its
        room has no member (not in `live`) and was last used (topic set, room emptied, last
        message) before `idle_before`, or while more than `cap` topics are stored (0: no
        cap). Returns (topics dropped, topics re-dated from a newer message): (0, 0) when
        there is nothing more to do."""
        if not self.flush():
            return 0, 0
        dropped = redated = 0
        try:
            excess = self.db.execute("SELECT count(*) FROM topics").fetchone()[0] - cap \
                if cap else 0
            if excess <= 0 and idle_before is None:
                return 0, 0
            if excess > 0:
                rows = self.db.execute("SELECT room, active FROM topics ORDER BY active "
                                       "LIMIT ?", (batch,)).fetchall()
            else:
                rows = self.db.execute("SELECT room, active FROM topics WHERE active < ? "
                                       "ORDER BY active LIMIT ?", (idle_before, batch)).fetchall()
            self.db.execute("BEGIN")
            for room, active in rows:
                if room in live:  # in use: never dropped, and checked again much later
                    self.db.execute("UPDATE topics SET active = ? WHERE room = ?", (now, room))
                    continue
                newest = self.db.execute("SELECT ts FROM messages WHERE room = ? ORDER BY id "
                                         "DESC LIMIT 1", (room,)).fetchone()
                used = max(active, newest[0] if newest else 0)
                if (idle_before is not None and used < idle_before) or \
                        (excess > 0 and used == active):
                    self.db.execute("DELETE FROM topics WHERE room = ?", (room,))
                    excess -= 1
                    dropped += 1
                elif used > active:
                    self.db.execute("UPDATE topics SET active = ? WHERE room = ?", (used, room))
                    redated += 1
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._fail(exc, "write")
            return 0, 0
        return dropped, redated

    def close(self) -> None:
        self.flush()
        with contextlib.suppress(sqlite3.Error):  # the final checkpoint may fail: WAL keeps it
            self.db.close()
