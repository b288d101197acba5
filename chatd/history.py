"""History requests and catch-up for the broker (sans-I/O; lives in the parent).

Two promises are kept here:

* **Routing never waits on a history read.** A page comes from a room's ring of recent
  messages in memory when the ring covers it; otherwise it becomes a *read* (a plain map in
  `reads`) that the parent hands to the history reader process, and the reply is fed back
  to `done()`. Replies are ready-packed client frames.
* **Catch-up is exact.** From a `join` until that member has the room's newest messages,
  it is *catching up* in that room: the room's live messages are not sent to it (its pages
  hold them). When a page reaches the newest message of the snapshot it was read from (id
  S), the messages accepted since (id > S) follow from the ring, or, when the ring no
  longer reaches back to S, from further reads; then the member is live, all in the same
  broker step. So after `join … after=N` it gets every id > N once, in id order.

Direct messages have no join: they reach an online session live, so a `history … with …
after` page stops at the newest id of when the session took its nick (its *mark*).
"""

from __future__ import annotations

import itertools
import logging
from collections import OrderedDict, defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from chatd.channel import DONE
from chatd.config import Config
from chatd.protocol import HEADER, error_frame
from chatd.session import CATCHUP_WINDOW

log = logging.getLogger("chatd.history")
Item = bytes | dict[str, Any]
Emit = Callable[[int, list[Item]], None]
Settle = Callable[[], object]
ENTRY_OVERHEAD = 100  # bytes a ring entry costs besides its frame (tuple, deque slot)
# A read the reader could not answer (the database failed it, or the reader died on it
# twice) is answered with this error; the session stays.
READ_FAILED = "storage_unavailable"
_MORE = msgpack.packb("more")
_MESSAGES = msgpack.packb("messages")


def _map_header(n: int) -> bytes:
    return bytes([0x80 | n]) if n < 16 else b"\xde" + n.to_bytes(2, "big")


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x90 | n])
    return b"\xdc" + n.to_bytes(2, "big") if n < 65536 else b"\xdd" + n.to_bytes(4, "big")


def page_frame(head: dict[str, Any], payloads: Sequence[bytes | memoryview], more: bool,
               keep_oldest: bool, max_frame: int) -> tuple[bytes, int, bool]:
    """A `history` frame around packed `message` maps, never over `max_frame`.

    When the page would not fit, messages are dropped from its far end (the newest when
    paging forward, `keep_oldest`, else the oldest) and `more` is set; at least one stays,
    so paging always advances. Returns (the frame, how many messages it holds, more).
    """
    fixed = b"".join(msgpack.packb(k) + msgpack.packb(v) for k, v in head.items()) + _MESSAGES
    overhead = 1 + len(fixed) + len(_MORE) + 1
    size = overhead + 5 + sum(map(len, payloads))
    if size > max_frame:
        budget = max_frame - overhead - 5
        order = payloads if keep_oldest else payloads[::-1]
        kept = 0
        for payload in order:
            budget -= len(payload)
            if budget < 0 and kept:
                break
            kept += 1
        if kept < len(payloads):
            payloads = payloads[:kept] if keep_oldest else payloads[len(payloads) - kept:]
            more = True
    body = b"".join((_map_header(len(head) + 2), fixed, _array_header(len(payloads)),
                     *payloads, _MORE, b"\xc3" if more else b"\xc2"))
    return HEADER.pack(len(body)) + body, len(payloads), more


@dataclass(eq=False, slots=True)
class Ring:
    """A room's recent messages: every one with an id above `floor`, as sent live."""

    room: str
    floor: int
    entries: deque[tuple[int, bytes]]
    size: int = 0


@dataclass(eq=False, slots=True)
class Catchup:
    """A member catching up in a room; replaced by a new one on each join."""

    sid: int
    room: str
    filling: bool = False  # the server is reading the last gap itself


@dataclass(eq=False, slots=True)
class Pending:
    sid: int
    label: Any
    client: bool  # answers a request (ends with DONE); else the server fills a gap
    forward: bool  # pages forward (`after`): `more` means newer messages exist
    catchup: Catchup | None
    where: str  # for an error reply


class History:
    def __init__(self, config: Config, last_id: int, emit: Emit, settle: Settle) -> None:
        self.config = config
        self.last_id = last_id  # the newest message id accepted so far
        self.emit = emit  # output for a session (dropped by the broker if it is gone)
        # Commits what is pending (a failure rolls it back, see rolled_back()): a page
        # must not show a message that could still be taken back.
        self.settle = settle
        self.rings: dict[str, Ring] = {}
        self.lru: OrderedDict[str, Ring] = OrderedDict()  # non-empty rings, oldest append first
        self.ring_bytes = 0
        self.catching: dict[tuple[int, str], Catchup] = {}
        self.held: defaultdict[str, set[int]] = defaultdict(set)  # room -> sids catching up
        self.marks: dict[int, int] = {}  # sid -> newest id when it took its nick
        self.pending: dict[int, Pending] = {}
        self.outstanding: defaultdict[int, int] = defaultdict(int)  # client reads per sid
        self.reads: list[tuple[int, dict[str, Any]]] = []  # (sid, read) for the reader
        self.pruned_through = 0
        self._tokens = itertools.count(1)

    def configure(self, config: Config) -> None:
        self.config = config
        self._trim()

    # ---- what the broker tells us ----

    def room_created(self, room: str) -> None:
        # Every message of the room from now on gets an id above the newest so far.
        self.rings[room] = Ring(room, self.last_id, deque())

    def room_gone(self, room: str) -> None:
        ring = self.rings.pop(room, None)
        if ring is not None and self.lru.pop(room, None) is not None:
            self.ring_bytes -= ring.size
        self.held.pop(room, None)

    def posted(self, msg_id: int, room: str | None = None, data: bytes = b"") -> None:
        """A message was accepted (a room's: `data` is its frame as sent live)."""
        self.last_id = msg_id
        ring = self.rings.get(room) if room is not None else None
        if ring is None:
            return
        ring.entries.append((msg_id, data))
        cost = len(data) + ENTRY_OVERHEAD
        ring.size += cost
        self.ring_bytes += cost
        self.lru[ring.room] = ring
        self.lru.move_to_end(ring.room)
        self._trim(ring)

    def _trim(self, ring: Ring | None = None) -> None:
        """Bound each ring to history.recent messages, and all of them to recent_mb."""
        keep = self.config.history_recent
        rings = [ring] if ring is not None else list(self.lru.values())
        for r in rings:
            while len(r.entries) > keep:
                self._evict(r)
        budget = self.config.history_recent_mb << 20
        while self.ring_bytes > budget and self.lru:
            self._evict(next(iter(self.lru.values())))

    def _evict(self, ring: Ring) -> None:
        entry = ring.entries.popleft()
        ring.floor = entry[0]
        self.ring_bytes -= self._drop(ring, entry)
        if not ring.entries:
            self.lru.pop(ring.room, None)

    @staticmethod
    def _drop(ring: Ring, entry: tuple[int, bytes]) -> int:
        cost = len(entry[1]) + ENTRY_OVERHEAD
        ring.size -= cost
        return cost

    def rolled_back(self, ids: set[int]) -> None:
        """Messages accepted but never stored: the rings forget them, and since the next
        messages get their ids again, so does everything that counted them."""
        if not ids:
            return
        for ring in list(self.lru.values()):
            while ring.entries and ring.entries[-1][0] in ids:
                self.ring_bytes -= self._drop(ring, ring.entries.pop())
            if not ring.entries:
                self.lru.pop(ring.room, None)
        self.last_id = min(self.last_id, min(ids) - 1)
        for sid, mark in self.marks.items():
            self.marks[sid] = min(mark, self.last_id)

    def pruned(self, through: int) -> None:
        """Retention deleted every message up to id `through`: so do the rings."""
        if through <= self.pruned_through:
            return
        self.pruned_through = through
        for ring in list(self.lru.values()):
            while ring.entries and ring.entries[0][0] <= through:
                self._evict(ring)

    def took_nick(self, sid: int) -> None:
        """Direct messages to or from this nick reach the session live from now on."""
        self.marks[sid] = self.last_id

    def left(self, sid: int, room: str) -> None:
        if self.catching.pop((sid, room), None) is not None:
            self.held[room].discard(sid)

    def forget(self, sid: int) -> None:
        """The session is gone (after it left its rooms): its reads are dropped."""
        self.marks.pop(sid, None)
        self.outstanding.pop(sid, None)
        for token in [t for t, p in self.pending.items() if p.sid == sid]:
            del self.pending[token]

    def handed_over(self, old: int, new: int, rooms: set[str]) -> None:
        """Session `new` took over `old` (takeover.py), rooms and nick. It is catching up in
        each room until its client's `join … after` does so: what was on its way to the old
        connection, and what comes meanwhile, arrives in its pages, once and in order.
        Direct messages reach it live from now on; the earlier ones by `history … after`."""
        for room in rooms:
            self.left(old, room)
            self.catching[(new, room)] = Catchup(new, room)
            self.held[room].add(new)
        self.forget(old)
        self.took_nick(new)

    # ---- requests ----

    def join(self, sid: int, room: str, after: int | None, label: Any) -> bool:
        """The history part of a join; the member catches up from now. True when the
        answer comes later (from the reader)."""
        # A rejoin starts afresh: whatever an older catch-up still reads no longer counts.
        cu = self.catching[(sid, room)] = Catchup(sid, room)
        self.held[room].add(sid)
        cfg = self.config
        limit = cfg.history_page if after is not None else cfg.history_on_join
        head = _head({"type": "history", "room": room}, label)
        return self._serve(sid, label, {"room": room}, head, after, None, limit, cu)

    def resume(self, sid: int, room: str, after: int) -> None:
        """A re-adopted member (chatd/adopt.py) that delivered every message up to id
        `after`: the room's newer ones follow as `message` frames (it asked for no page),
        from the ring or from reads, then it is live."""
        cu = self.catching[(sid, room)] = Catchup(sid, room)
        self.held[room].add(sid)
        self._fill(cu, after)

    def request(self, sid: int, where: dict[str, Any], reply: dict[str, Any],
                before: int | None, after: int | None, limit: int, label: Any) -> bool:
        """A `history` request (membership already checked); True when answered later."""
        cu = None
        if "room" in where:
            cu = self.catching.get((sid, where["room"])) if after is not None else None
            if cu is not None and cu.filling:
                cu = None
        elif after is not None:
            before = self.marks.get(sid, self.last_id) + 1  # later ones came live
        head = _head({"type": "history", **reply}, label)
        return self._serve(sid, label, where, head, after, before, limit, cu)

    def _serve(self, sid: int, label: Any, where: dict[str, Any], head: dict[str, Any],
               after: int | None, before: int | None, limit: int, cu: Catchup | None) -> bool:
        room = where.get("room")
        if room:
            self.settle()
        page = self._from_ring(room, head, after, before, limit) if room else None
        if page is not None:
            frame, end = page
            self.emit(sid, [frame])
            if cu is not None and end:
                self._live(cu)  # the ring holds everything up to now: nothing is missing
            return False
        if self.outstanding[sid] >= CATCHUP_WINDOW:
            # A session keeps at most this many in flight (session.py): it is broken.
            raise RuntimeError(f"session {sid} sent more than {CATCHUP_WINDOW} catch-up "
                               "requests at once")
        self.outstanding[sid] += 1
        query: dict[str, Any] = {**where, "limit": limit, "head": head}
        if after is not None:
            query["after"] = after
        if before is not None:
            query["before"] = before
        self._read(Pending(sid, label, True, after is not None, cu,
                           where.get("room") or head.get("with", "")), query)
        return True

    def _from_ring(self, room: str, head: dict[str, Any], after: int | None,
                   before: int | None, limit: int) -> tuple[bytes, bool] | None:
        """A page served from memory, with whether it reaches the room's newest message;
        None when the ring does not hold all the page needs."""
        ring = self.rings.get(room)
        if ring is None:
            return None
        max_frame = self.config.max_frame
        if after is not None:
            if ring.floor > after:
                return None
            newer = [data for msg_id, data in ring.entries if msg_id > after]
            frame, _n, more = page_frame(head, [memoryview(d)[HEADER.size:] for d in
                                                newer[:limit]],
                                         len(newer) > limit, True, max_frame)
            return frame, not more
        older = [data for msg_id, data in ring.entries if before is None or msg_id < before]
        if len(older) <= limit:  # whether older ones exist is on disk only
            return None
        frame, _n, _more = page_frame(head, [memoryview(d)[HEADER.size:] for d in
                                             older[len(older) - limit:]],
                                      True, False, max_frame)
        return frame, before is None

    def _read(self, pending: Pending, query: dict[str, Any]) -> None:
        token = next(self._tokens)
        self.pending[token] = pending
        self.reads.append((pending.sid, {"t": token, "max": self.config.max_frame, **query}))

    # ---- the end of a catch-up ----

    def _fill(self, cu: Catchup, snap: int) -> None:
        """The member has the room's messages up to `snap`: send what came since, then go
        live; or read it first when the ring no longer reaches back that far."""
        ring = self.rings.get(cu.room)
        if ring is None:  # the room is gone, and so is the member's place in it
            return
        if ring.floor <= snap:
            newer: list[bytes | dict[str, Any]] = [
                data for msg_id, data in ring.entries if msg_id > snap]
            if newer:
                self.emit(cu.sid, newer)
            self._live(cu)
            return
        cu.filling = True
        self._read(Pending(cu.sid, None, False, True, cu, cu.room),
                   {"room": cu.room, "after": snap, "limit": self.config.history_page})

    def _live(self, cu: Catchup) -> None:
        if self.catching.get((cu.sid, cu.room)) is cu:
            del self.catching[(cu.sid, cu.room)]
            self.held[cu.room].discard(cu.sid)

    # ---- replies from the reader ----

    def done(self, reply: dict[str, Any]) -> None:
        """A read's reply (validated by the parent): deliver it, and advance catch-up."""
        p = self.pending.pop(reply["t"], None)
        if p is None:
            return
        if p.client and self.outstanding.get(p.sid):
            self.outstanding[p.sid] -= 1
        cu = p.catchup
        current = cu is not None and self.catching.get((cu.sid, cu.room)) is cu
        if "error" in reply:
            self._failed(p, reply["error"], current)
            return
        if p.client:  # a request's answer, whatever became of its catch-up
            self.emit(p.sid, [reply["data"], DONE])
        if not current or cu is None:
            return
        if not p.client and reply["data"]:
            self.emit(p.sid, [reply["data"]])
        if p.client:
            if not cu.filling and (not p.forward or not reply["more"]):
                self._fill(cu, reply["snap"])
        elif reply["more"]:
            self._read(Pending(cu.sid, None, False, True, cu, cu.room),
                       {"room": cu.room, "after": reply["last"],
                        "limit": self.config.history_page})
        else:
            self._fill(cu, reply["snap"])

    def _failed(self, p: Pending, why: str, current: bool) -> None:
        """A read failed: the client hears why (without a label when it was the server's
        read of the messages right after a page); a catch-up ends (live from now on), since
        waiting for a history that cannot be read would silence the room for good."""
        if not p.client and not current:
            return  # a read for a catch-up that is over: nobody waits for it
        log.warning("history read of %s for session %d failed: %s", p.where, p.sid, why)
        out: list[Item] = [error_frame(READ_FAILED, f"history of {p.where} not read: {why}",
                                       label=p.label)]
        if p.client:
            out.append(DONE)
        self.emit(p.sid, out)
        if current and p.catchup is not None:
            self._live(p.catchup)


def _head(head: dict[str, Any], label: Any) -> dict[str, Any]:
    if label is not None:
        head["label"] = label
    return head
