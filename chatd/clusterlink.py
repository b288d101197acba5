"""A cluster host's link to Redis (sans-I/O; the base of ClusterBroker, chatd/cluster.py).

What every part of a cluster host's broker stands on, kept apart from what it shares
(nicks: chatd/clusternicks.py; moderation: chatd/clustermoderation.py; messages, topics,
membership and the stream: chatd/cluster.py):

* **Writes**: a request that needs Redis becomes a numbered write for the uplink (one
  number sequence per parent, handed over in an upgrade); a write a session waits for is
  `Waiting` until its result or its stream entry answers it (`_tell`, `_ack`).
* **Where the stream was read to**: `cursor` (the last entry applied; entries `ID-0` are
  messages, so it is also a message id) and `point` (membership events up to it are in
  the snapshot the uplink sent when it came up).
* **This host's copy (SQLite)**: the messages applied since the last commit are
  *settling*; when a commit fails they are taken back from every queue and the stream is
  read again from the commit (`_unsend`, `drain`, `_read_again`), through a new uplink.
* **Telling the sessions** when Redis or the copy is away (`_status`), and telling the
  other hosts this host's membership (`_publish`, `_write_state`).
"""

from __future__ import annotations

import itertools
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from chatd import protocol as p
from chatd.broker import Item, Member
from chatd.clustermembers import RemoteMembers
from chatd.config import Config
from chatd.protocol import ProtocolError, pack
from chatd.store import StorageError
from chatd.stores import HistoryStore

log = logging.getLogger("chatd.cluster")
MAX_SEQ = (1 << 64) - 1
EntryId = tuple[int, int]
UNREACHABLE = "not stored: this server cannot reach the cluster's Redis; try again later"


@dataclass(slots=True)
class Waiting:
    """A write whose result a session waits for."""

    sid: int
    label: Any
    kind: str  # msg, hello, nick, topic, account
    req: dict[str, Any]
    now_ms: int


def entry_id(text: str) -> EntryId:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def body(data: dict[str, Any]) -> bytes:
    packed: bytes = msgpack.packb(data, use_bin_type=True)
    return packed


class ClusterLink(RemoteMembers):
    def __init__(self, store: HistoryStore, config: Config) -> None:
        super().__init__(store, config)
        self.node = config.node
        self.uplink: Callable[[dict[str, Any]], None] = lambda msg: None  # set by master
        self.up = False
        self.why = "not connected yet"
        self.numbers = itertools.count(1)
        self.waiting: dict[int, Waiting] = {}
        self.point: EntryId = (0, 0)  # membership events up to here are in the snapshot
        self.cursor: EntryId = (self.history.last_id, MAX_SEQ)  # the last entry applied
        self.committed: EntryId = self.cursor  # entries up to here are in SQLite
        self.settling: list[int] = []  # ids of the messages applied since
        self.settling_frames: list[bytes] = []  # and their frames, in outboxes
        self.rewind = False  # SQLite took them back: read them again (drain)
        self.store_trouble: EntryId | None = None  # failing since (the cursor then)
        self.restart_uplink: Callable[[str], None] = lambda why: None  # set by master
        self.now_ms = 0  # the time the uplink last said something (for drain's events)

    def resume_at(self) -> tuple[str, int]:
        """Where a new uplink starts reading the stream, and the newest id here."""
        return f"{self.cursor[0]}-{self.cursor[1]}", self.history.last_id

    # ---- requests that need Redis ----

    def _write(self, script: str, args: list[Any], waiting: Waiting | None = None) -> None:
        number = next(self.numbers)
        if waiting is not None:
            self.waiting[number] = waiting
        self.uplink({"c": "w", "w": number, "s": script, "a": args})

    def _need_redis(self) -> None:
        if not self.up:
            raise ProtocolError("storage_unavailable", UNREACHABLE)
        if self.store_trouble is not None:
            raise ProtocolError("storage_unavailable", "not stored: this server cannot store "
                                "messages now (its history database fails); try again later")

    def need_cluster(self) -> None:
        self._need_redis()

    # ---- answers to the sessions that wait ----

    def _tell(self, w: Waiting, frame: bytes) -> None:
        if w.sid in self.members:
            self.outbox[w.sid].append(frame)

    def _ack(self, w: Waiting, msg_id: int, ts: int, room: str | None, target: str) -> None:
        where = {"room": room} if room else {"to": target}
        self._tell(w, pack({"type": "ack", "id": msg_id, "ts": ts, **where,
                            **({"label": w.label} if w.label is not None else {})}))

    # ---- telling the other hosts ----

    def _publish(self, kind: str, member: Member, data: dict[str, Any]) -> None:
        """Tell the other hosts; while Redis is away the state written on return does."""
        if self.up and member.nick is not None:
            self._write("event", [kind, body(data), member.nick, p.nick_key(member.nick),
                                  self._rooms_here(member)])

    def _rooms_here(self, member: Member) -> str:
        """The rooms of `member`'s nick on this host: an account's, all its sessions'."""
        sessions = [m for m in self.directory.of_account(member) if not m.gone] or [member]
        return " ".join(sorted(set().union(*(m.rooms for m in sessions))))

    def _write_state(self) -> None:
        """This host's sessions, nicks and rooms, written again whole (the uplink's STATE:
        the other hosts see what differs as joins, parts and nick changes)."""
        state: list[str] = []
        for member in self.members.values():
            if member.nick is not None and not member.gone:
                state += [p.nick_key(member.nick), member.nick, self._rooms_here(member)]
        self.uplink({"c": "state", "a": state})

    # ---- this host's copy (SQLite) ----

    def _fresh(self, msg_id: int, ts: int) -> bool:
        """Whether message id `msg_id` is new here (a gap before it is told)."""
        last = self.history.last_id
        if msg_id <= last:
            return False
        if last and msg_id != last + 1:
            self._status("gap", f"messages {last + 1} to {msg_id - 1} never reached this "
                         "server (the cluster's Redis no longer had them)", ts)
        return True

    def _settling(self, msg_id: int, frame: bytes) -> None:
        """A message applied here: in SQLite once the next commit has gone through."""
        self.settling.append(msg_id)
        self.settling_frames.append(frame)

    def _committed(self) -> None:
        self.committed = self.cursor
        self.settling.clear()
        self.settling_frames.clear()

    def _unsend(self, error: StorageError) -> None:
        """SQLite rolled back what was pending: the messages applied since the last
        commit go from every queue (nobody here has them yet) and are read again."""
        if not self.settling:
            return  # (nothing of the stream's: nothing to read again)
        dropped = {id(frame) for frame in self.settling_frames}
        for sid, items in list(self.outbox.items()):
            self.outbox[sid] = [x for x in items if id(x) not in dropped]
        self.history.rolled_back(set(self.settling))
        self.settling.clear()
        self.settling_frames.clear()
        self.rewind = True

    def drain(self) -> defaultdict[int, list[Item]]:
        out = super().drain()  # (its commit may fail: _unsend)
        if self.rewind:
            self._read_again()
        elif self.cursor > self.committed:
            self._committed()
            if self.store_trouble is not None and self.cursor > self.store_trouble:
                log.warning("history database: this host stores the cluster's messages "
                            "again")
                self.store_trouble = None
                self._status("up", "the server stores messages again", self.now_ms)
        return out

    def _read_again(self) -> None:
        self.rewind = False
        self.cursor = self.committed
        if self.store_trouble is None:
            log.error("history database failed: this host reads the cluster's stream again "
                      "from its last commit until it can store it")
            self._status("down", "the server cannot store messages: new messages are "
                         "refused until it can", self.now_ms)
        self.store_trouble = self.cursor
        self.up = False
        self.restart_uplink("this host's history database failed: reading again")

    # ---- the link ----

    def _went_down(self, why: str, now_ms: int) -> None:
        if self.up and self.store_trouble is None:
            log.error("lost the cluster's Redis: %s; messages are refused until it is back",
                      why)
            self._status("down", "the server cannot reach the cluster's Redis: new "
                         "messages are refused until it is back", now_ms)
        self.up, self.why = False, why

    def _status(self, state: str, message: str, now_ms: int) -> None:
        frame = pack({"type": "status", "cluster": state, "message": message, "ts": now_ms})
        for member in self.members.values():
            if member.nick is not None and not member.gone:
                self.outbox[member.sid].append(frame)

