"""The seam between chatd and where its history lives.

The broker and the parent's loop reach history only through `HistoryStore`; the history
reader only through `HistoryReads`. SQLite (chatd/store.py) is the one implementation
today. Another one (a Redis-backed store for a cluster) is a new module whose classes have
these methods, plus one entry in BACKENDS: no loop or core changes.

Both contracts share the SQLite store's rules: no backend error leaves an implementation
but StorageError (one request fails, non-fatal) or, at start-up, StoreUnusable; writes
accepted by add_message() are visible to nobody until flush() has made them durable, and
a flush that fails calls `on_rollback` so no ack or delivery of them goes out.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from chatd.store import Row, StorageError, Store, StoreUnusable

__all__ = ["BACKENDS", "HistoryReads", "HistoryStore", "Row", "StorageError",
           "StoreUnusable", "open_history", "open_reads"]


class HistoryReads(Protocol):
    """What the history reader (a helper process, off the routing loop) asks."""

    def snapshot(self) -> AbstractContextManager[None]:
        """Reads inside see one state of the history."""
        ...

    def history(self, *, room: str | None = None, dm: str | None = None,
                ident: str | None = None, before: int | None = None,
                after: int | None = None, limit: int = 50) -> tuple[list[Row], bool]:
        """Up to `limit` rows oldest first, and whether more lie beyond them: of a room,
        a conversation, or every direct message to or from an identity."""
        ...

    def last_id(self) -> int:
        """The newest message id (0 when there is none)."""
        ...

    def close(self) -> None: ...


class HistoryStore(Protocol):
    """What the broker, retention and the parent's loop do with history and topics."""

    path: str  # where it is, for messages that say what is wrong
    on_rollback: Callable[[StorageError], None] | None
    pruned_through: int  # every id up to this has been deleted by retention

    def flush(self) -> bool:
        """Make accepted writes durable; False if they were lost (on_rollback was told)."""
        ...

    def add_message(self, ts: int, sender: str, text: str, action: bool,
                    room: str | None = None, target: str | None = None,
                    src: str | None = None, dst: str | None = None,
                    msg_id: int | None = None, account: str | None = None) -> int:
        """Accept a message (durable at the next flush); its id. A direct message is
        between identities `src` and `dst` (chatd.store.identity); `account` is the
        sender's when it is logged in. `msg_id` when given: a
        cluster's, assigned by Redis (one stored already is kept as it is)."""
        ...

    def owned(self) -> dict[str, str]:
        """The nicks accounts own: nick key -> account name."""
        ...

    def own(self, name: str) -> None:
        """Account `name` owns its nick from now on (durable when it returns)."""
        ...

    def last_id(self) -> int: ...

    def topic(self, room: str) -> tuple[str, str | None, int | None]: ...

    def set_topic(self, room: str, topic: str, by: str, ts: int) -> None: ...

    def touch_room(self, room: str, ts: int) -> None: ...

    def moderate(self, ts: int, room: str, by: str, event: dict[str, Any],
                 policy: str | None, msg_id: int | None = None) -> int:
        """Store a moderation event (a history entry with its id, returned) and the room's
        policy after it, committed together; raises StorageError with nothing stored."""
        ...

    def save_policy(self, room: str, policy: str | None) -> None:
        """Store and commit a room's policy (chatd.moderation), or forget it (None)."""
        ...

    def policy(self, room: str) -> str | None: ...

    def prune_messages(self, before_ts: int | None, keep: int, batch: int) -> int: ...

    def prune_topics(self, idle_before: int | None, cap: int, live: Container[str], now: int,
                     batch: int) -> tuple[int, int]: ...

    def close(self) -> None: ...


# name -> (opens the parent's store at a location, opens a reader's view of it)
BACKENDS: dict[str, tuple[Callable[[str], HistoryStore], Callable[[str], HistoryReads]]] = {
    "sqlite": (lambda where: Store(where), lambda where: Store(where, readonly=True)),
}


def history_location(data_dir: Path) -> str:
    """Where the embedded default keeps history (the history reader opens it too)."""
    return str(data_dir / "history.sqlite3")


def open_history(where: str, backend: str = "sqlite") -> HistoryStore:
    """The parent's store (raises StoreUnusable)."""
    return BACKENDS[backend][0](where)


def open_reads(where: str, backend: str = "sqlite") -> HistoryReads:
    """A history reader's read-only view of the same history (raises StoreUnusable)."""
    return BACKENDS[backend][1](where)
