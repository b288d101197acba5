"""The history database's schema and its steps from older versions (chatd/store.py).

PRAGMA user_version says which steps a database has had; each step runs once, at the
parent's start-up, before anything else touches the database.
"""

from __future__ import annotations

import sqlite3

from chatd.protocol import nick_key

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    ts     INTEGER NOT NULL,
    room   TEXT,             -- '#name', or NULL for a direct message
    dm     TEXT,             -- dm_key(sender, target) for a direct message
    sender TEXT NOT NULL,
    target TEXT,             -- recipient nick of a direct message
    text   TEXT NOT NULL,         -- for a moderation event (action 2): its fields, JSON
    action INTEGER NOT NULL DEFAULT 0,  -- 0 a message, 1 an action (/me), 2 moderation
    src    TEXT,             -- a direct message's sender and recipient identities
    dst    TEXT,             -- (identity(): an account's, or a guest nick's key)
    account TEXT             -- the account the sender was logged in to (NULL: a guest)
);
CREATE INDEX IF NOT EXISTS messages_room ON messages (room, id) WHERE room IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_dm ON messages (dm, id) WHERE dm IS NOT NULL;
CREATE TABLE IF NOT EXISTS room_policies (  -- chatd.moderation.RoomPolicy.to_json()
    room   TEXT PRIMARY KEY,
    policy TEXT NOT NULL
);
-- The nicks that accounts own (protocol.md §12.1): the names, never anything of a
-- password (those are the auth helper's, in accounts.sqlite3).
CREATE TABLE IF NOT EXISTS owned (
    key  TEXT PRIMARY KEY,   -- nick_key(name)
    name TEXT NOT NULL       -- the account's name as registered
);
CREATE TABLE IF NOT EXISTS topics (
    room   TEXT PRIMARY KEY,
    topic  TEXT NOT NULL,
    by     TEXT,
    ts     INTEGER,
    active INTEGER NOT NULL DEFAULT 0  -- ms: topic set, room emptied, or its last message
);
"""
TOPICS_ACTIVE_INDEX = "CREATE INDEX IF NOT EXISTS topics_active ON topics (active)"
# "DMs to or from an identity after id N" (history direct: true) is two index range scans.
DIRECT_INDEXES = ("CREATE INDEX IF NOT EXISTS messages_src ON messages (src, id) "
                  "WHERE src IS NOT NULL; CREATE INDEX IF NOT EXISTS messages_dst ON "
                  "messages (dst, id) WHERE dst IS NOT NULL;")
# PRAGMA user_version: 1 = the dm column holds dm_key() of nick_key() skeletons (before:
# plain lower case). A change to nick_key needs a step here that re-keys the rows.
# 2 = topics.active holds the last use of the room (for retention).
# 3 = messages.src/dst: the identities of a direct message (older ones: guest nick keys).
# 4 = messages.account: the sender's account (older messages: NULL, as a guest's).
DM_KEYS_VERSION = 1
SCHEMA_VERSION = 4  # the newest step, written at every start-up (a real write, see Store)


def dm_key(nick_a: str, nick_b: str) -> str:
    """The conversation of two nicks, by their keys: look-alike nicks are the same nick."""
    return " ".join(sorted((nick_key(nick_a), nick_key(nick_b))))


def identity(nick: str, account: str | None) -> str:
    """Whose direct messages these are: an account's ('@' and its name's key: '@' is in
    no nick, so no guest nick can ever name an account's), else a guest nick's key."""
    return "@" + nick_key(account) if account is not None else nick_key(nick)


def dm_pair(ident_a: str, ident_b: str) -> str:
    """The conversation of two identities (for guests alone, the same as dm_key)."""
    return " ".join(sorted((ident_a, ident_b)))


def create(db: sqlite3.Connection) -> None:
    """The schema, and every step an older database still needs."""
    db.executescript(SCHEMA)
    _rekey_direct_messages(db)
    _add_topics_active(db)
    _add_direct_identities(db)
    _add_sender_accounts(db)


def _rekey_direct_messages(db: sqlite3.Connection) -> None:
    """Re-key direct messages stored under an older nick rule, so no history is lost."""
    (version,) = db.execute("PRAGMA user_version").fetchone()
    if version >= DM_KEYS_VERSION:
        return
    db.create_function("dm_key", 2, lambda a, b: dm_key(a or "", b or ""), deterministic=True)
    with db:  # one transaction: the rows and the version change together
        db.execute("BEGIN")
        db.execute("UPDATE messages SET dm = dm_key(sender, target) WHERE dm IS NOT NULL")
        db.execute(f"PRAGMA user_version = {DM_KEYS_VERSION}")


def _add_topics_active(db: sqlite3.Connection) -> None:
    """Version 2: topics.active, dated from the topic (retention counts from it)."""
    columns = [row[1] for row in db.execute("PRAGMA table_info(topics)")]
    if "active" not in columns:
        db.executescript("BEGIN; ALTER TABLE topics ADD COLUMN active INTEGER NOT NULL "
                         "DEFAULT 0; UPDATE topics SET active = coalesce(ts, 0); COMMIT;")
    db.execute(TOPICS_ACTIVE_INDEX)


def _add_direct_identities(db: sqlite3.Connection) -> None:
    """Version 3: messages.src/dst. Direct messages stored before were guests'."""
    columns = [row[1] for row in db.execute("PRAGMA table_info(messages)")]
    if "src" not in columns:
        db.create_function("nick_key", 1, lambda n: nick_key(n or ""), deterministic=True)
        db.executescript("BEGIN; ALTER TABLE messages ADD COLUMN src TEXT; ALTER TABLE "
                         "messages ADD COLUMN dst TEXT; UPDATE messages SET src = "
                         "nick_key(sender), dst = nick_key(target) WHERE dm IS NOT NULL; "
                         "COMMIT;")
    db.executescript(DIRECT_INDEXES)


def _add_sender_accounts(db: sqlite3.Connection) -> None:
    """Version 4: messages.account. Messages stored before name no account."""
    columns = [row[1] for row in db.execute("PRAGMA table_info(messages)")]
    if "account" not in columns:
        db.execute("ALTER TABLE messages ADD COLUMN account TEXT")
