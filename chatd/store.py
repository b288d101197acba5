"""SQLite history and room topics, owned by the parent process only.

Writes happen inside one open transaction that the parent's loop commits
(flush) before it hands any delivery to a child, so nothing is delivered
that is not stored, and an id is never handed out twice.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from chatd.protocol import nick_key

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    ts     INTEGER NOT NULL,
    room   TEXT,             -- '#name', or NULL for a direct message
    dm     TEXT,             -- dm_key(sender, target) for a direct message
    sender TEXT NOT NULL,
    target TEXT,             -- recipient nick of a direct message
    text   TEXT NOT NULL,
    action INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS messages_room ON messages (room, id) WHERE room IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_dm ON messages (dm, id) WHERE dm IS NOT NULL;
CREATE TABLE IF NOT EXISTS topics (
    room  TEXT PRIMARY KEY,
    topic TEXT NOT NULL,
    by    TEXT,
    ts    INTEGER
);
"""

Row = tuple[int, int, str | None, str, str | None, str, int]
_COLUMNS = "id, ts, room, sender, target, text, action"


# PRAGMA user_version: 1 = the dm column holds dm_key() of nick_key() skeletons (before:
# plain lower case). A change to nick_key needs a step here that re-keys the rows.
DM_KEYS_VERSION = 1


def dm_key(nick_a: str, nick_b: str) -> str:
    """The conversation of two nicks, by their keys: look-alike nicks are the same nick."""
    return " ".join(sorted((nick_key(nick_a), nick_key(nick_b))))


def message_map(row: Row) -> dict[str, Any]:
    """A stored row as the protocol's `message` map."""
    msg_id, ts, room, sender, target, text, action = row
    out: dict[str, Any] = {"type": "message", "id": msg_id, "ts": ts}
    if room is not None:
        out["room"] = room
    else:
        out["to"] = target
    out.update({"from": sender, "text": text, "action": bool(action)})
    return out


class Store:
    def __init__(self, path: Path | str) -> None:
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL survives a crash of the process (not of the machine) without an
        # fsync per message; the parent commits once per loop iteration.
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self._rekey_direct_messages()
        self._in_tx = False

    def _rekey_direct_messages(self) -> None:
        """Re-key direct messages stored under an older nick rule, so no history is lost."""
        (version,) = self.db.execute("PRAGMA user_version").fetchone()
        if version >= DM_KEYS_VERSION:
            return
        self.db.create_function("dm_key", 2, lambda a, b: dm_key(a or "", b or ""),
                                deterministic=True)
        with self.db:  # one transaction: the rows and the version change together
            self.db.execute("BEGIN")
            self.db.execute("UPDATE messages SET dm = dm_key(sender, target) "
                            "WHERE dm IS NOT NULL")
            self.db.execute(f"PRAGMA user_version = {DM_KEYS_VERSION}")

    def _begin(self) -> None:
        if not self._in_tx:
            self.db.execute("BEGIN")
            self._in_tx = True

    def flush(self) -> None:
        if self._in_tx:
            self.db.execute("COMMIT")
            self._in_tx = False

    def add_message(self, ts: int, sender: str, text: str, action: bool, room: str | None = None,
                    target: str | None = None) -> int:
        self._begin()
        dm = None if room is not None else dm_key(sender, target or "")
        cur = self.db.execute(
            "INSERT INTO messages (ts, room, dm, sender, target, text, action) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)", (ts, room, dm, sender, target, text, int(action)))
        assert cur.lastrowid is not None
        return cur.lastrowid

    def history(self, *, room: str | None = None, dm: str | None = None,
                before: int | None = None, after: int | None = None,
                limit: int = 50) -> tuple[list[Row], bool]:
        """Up to `limit` rows oldest first, and whether more lie beyond them."""
        where, args = ("room = ?", [room]) if room is not None else ("dm = ?", [dm])
        if after is not None:
            sql = f"SELECT {_COLUMNS} FROM messages WHERE {where} AND id > ? ORDER BY id LIMIT ?"
            rows = self.db.execute(sql, [*args, after, limit + 1]).fetchall()
            return rows[:limit], len(rows) > limit
        if before is not None:
            where += " AND id < ?"
            args.append(before)
        sql = f"SELECT {_COLUMNS} FROM messages WHERE {where} ORDER BY id DESC LIMIT ?"
        rows = self.db.execute(sql, [*args, limit + 1]).fetchall()
        more = len(rows) > limit
        return rows[:limit][::-1], more

    def set_topic(self, room: str, topic: str, by: str, ts: int) -> None:
        self._begin()
        self.db.execute("INSERT OR REPLACE INTO topics VALUES (?, ?, ?, ?)", (room, topic, by, ts))

    def topic(self, room: str) -> tuple[str, str | None, int | None]:
        row = self.db.execute("SELECT topic, by, ts FROM topics WHERE room = ?",
                              (room,)).fetchone()
        return (row[0], row[1], row[2]) if row else ("", None, None)

    def close(self) -> None:
        self.flush()
        self.db.close()
