"""Routing in a cluster: the Broker, with Redis (through the uplink) deciding what is
shared (sans-I/O; lives in the parent of a host with `cluster.redis_url` set).

* **Messages** are not stored here first: a `msg` becomes a write for the uplink; Redis
  gives it the next id (one sequence for the whole cluster) and appends it to the stream.
  Every host, this one included, delivers and stores (its SQLite, a replica that serves
  history and catch-up) what it reads from the stream, in id order, so every host has the
  same messages with the same ids. The sender's `ack` goes when Redis has it: at the
  write's reply or at the stream entry, whichever comes first, and always before the
  message itself.
* **Nicks** are claimed in Redis (hello, nick) before they are given; a DM's target is
  looked up there, so a DM reaches its target on any host.
* **Accounts** are the cluster's (chatd/clusteraccounts.py): an account's sessions on
  several hosts share its nick, and a direct message to it is stored between identities
  (chatd/direct.py) and reaches its sessions on every host.
* **Moderation**: a change of a room's policy (op, kick, ban, mode, ...) is checked on
  the actor's host, then goes through Redis like a message (it has a message id) and
  every host carries it out on its copy of the policy (modrequests.Moderation.replay):
  a kick removes the target from the room on every host, a ban holds on every host. An
  account that opens a room is its operator on every host (a `P` event); a guest's
  rights are its session's, on its own host. A server operator's `kill` of another
  host's session is carried out there (a `K` event).
* **Membership and topics** of other hosts' sessions are kept here as *remote members*
  (chatd/clustermembers.py): joins, parts, quits and nick changes of this host's
  sessions go to the stream, and those of other hosts come from it, so `who`, `rooms`
  and the room notices are cluster-wide, a stream's delay (about a millisecond) behind.
* **This host's SQLite fails** (a full disk): what it had applied since its last commit
  is taken back (nobody here gets those messages yet), and it reads the stream again
  from its last commit through a new uplink (once a second while it fails): its copy
  gets every message, and its sessions each one once. Meanwhile its sessions are told
  (a `status` event) and messages are refused; acknowledgements stay true (Redis has
  every message acknowledged).
* **Redis lost**: sessions are told (a `status` event), writes are refused
  (`storage_unavailable`), joins and parts go on locally; on return this host's whole
  membership is written again and the stream is read from where it stopped.
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
from chatd.broker import Item, Member, Room
from chatd.channel import DONE
from chatd.clusteraccounts import SharedAccounts
from chatd.clustermembers import RemoteMembers
from chatd.config import Config
from chatd.direct import account_of
from chatd.moderation import RoomPolicy, Who
from chatd.modrequests import Moderation, end_session, who
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


class ClusterBroker(RemoteMembers):
    def __init__(self, store: HistoryStore, config: Config) -> None:
        super().__init__(store, config)
        self.node = config.node
        self.uplink: Callable[[dict[str, Any]], None] = lambda msg: None  # set by master
        self.up = False
        self.why = "not connected yet"
        self.numbers = itertools.count(1)
        self.waiting: dict[int, Waiting] = {}
        self.claiming: set[int] = set()  # sessions whose hello waits for Redis
        self.point: EntryId = (0, 0)  # membership events up to here are in the snapshot
        self.cursor: EntryId = (self.history.last_id, MAX_SEQ)  # the last entry applied
        self.accounts = self.logins.cluster = SharedAccounts(self)
        self.committed: EntryId = self.cursor  # entries up to here are in SQLite
        self.settling: list[int] = []  # ids of the messages applied since
        self.settling_frames: list[bytes] = []  # and their frames, in outboxes
        self.rewind = False  # SQLite took them back: read them again (drain)
        self.store_trouble: EntryId | None = None  # failing since (the cursor then)
        self.restart_uplink: Callable[[str], None] = lambda why: None  # set by master
        self.now_ms = 0  # the time the uplink last said something (for drain's events)
        # Another host's server ban or unban, for this host's bans (chatd/adminops.py).
        self.server_ban: Callable[[dict[str, Any]], None] | None = None
        self.moderation = Moderation(self)
        self._renaming: Member | None = None  # a rename Redis has agreed to already

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

    def share_account(self, member: Member | None, record: str, pending: Any,
                      now_ms: int) -> None:
        """An account for Redis: a registration here (answered through `accounts`), or
        (no member) one Redis lacks (clusteraccounts.SharedAccounts.offer)."""
        name = record.split(" ", 1)[0]
        self._write("account", [p.nick_key(name), record],
                    Waiting(member.sid if member else 0, None, "account",
                            {"record": record, "pending": pending}, now_ms))

    def share_moderation(self, member: Member, room: Room, now_ms: int, label: Any,
                         req: dict[str, Any], change: Callable[[RoomPolicy], Any]) -> bool:
        change(room.policy.copy())  # what it would refuse (a full list, no such ban) first
        self._need_redis()
        data = {"room": room.name, "by": member.nick or "", "now": now_ms,
                "req": {k: v for k, v in req.items() if k != "label"}}
        self._write("msg", ["o", body(data), ""],
                    Waiting(member.sid, label, "msg", {"room": room.name}, now_ms))
        return True

    def _granted(self, name: str, policy: RoomPolicy, member: Member) -> None:
        super()._granted(name, policy, member)
        if member.account and self.up:
            self._write("event", ["P", body({"room": name, "account": member.account}),
                                  member.nick or "", "", ""])

    def share_server_ban(self, change: dict[str, Any]) -> bool:
        if not self.up:
            return False
        self._write("event", ["S", body(change), "", "", ""])
        return True

    def end_remote(self, target: Member, why: str, now_ms: int) -> None:
        if not self.up:
            log.warning("%s: not ended on the other hosts (Redis out of reach)", target.nick)
            return
        self._write("event", ["K", body({"nick": target.nick, "why": why}),
                              target.nick or "", "", ""])

    def _account_flag(self, member: Member, nick: str) -> str:
        """'1' when `nick` is the name of the account `member` is logged in to."""
        account = member.account
        return "1" if account is not None and p.nick_key(account) == p.nick_key(nick) \
            else ""

    def _hello(self, member: Member, req: dict[str, Any], label: Any, now_ms: int) -> None:
        if req["version"] not in p.SUPPORTED_VERSIONS:
            super()._hello(member, req, label, now_ms)
            return
        if member.sid in self.claiming:  # (the session passes on what follows a hello)
            raise ProtocolError("already_registered", "a hello is already on its way")
        nick = self._free_nick(member, req["nick"])
        if self._banned(member, nick, now_ms):  # (before it is claimed for nothing)
            return
        self._need_redis()
        self.claiming.add(member.sid)
        self._write("nick", [p.nick_key(nick), nick, "", "", "", b"",
                             self._account_flag(member, nick)],
                    Waiting(member.sid, label, "hello", req, now_ms))

    def _nick(self, member: Member, req: dict[str, Any], label: Any, now_ms: int) -> None:
        old = member.nick or ""
        new = self._free_nick(member, req["nick"])
        if new == old or self._banned(member, new, now_ms):
            super()._nick(member, req, label, now_ms)
            return
        self._need_redis()
        self._write("nick", [p.nick_key(new), new, p.nick_key(old), old, self._rooms_here(member),
                             body({"old": old, "new": new}), self._account_flag(member, new)],
                    Waiting(member.sid, label, "nick", req, now_ms))

    def rename(self, member: Member, new: str, label: Any, now_ms: int = 0) -> None:
        """A rename Redis has not seen (a login: the account's name) is told to it."""
        old = member.nick or ""
        super().rename(member, new, label, now_ms)
        if member is self._renaming or member.sid < 0 or new == old or not self.up:
            return  # (while Redis is away, the state written on return tells it)
        self._write("nick", [p.nick_key(new), new, p.nick_key(old), old, self._rooms_here(member),
                             body({"old": old, "new": new}), self._account_flag(member, new)])

    def _msg(self, member: Member, req: dict[str, Any], label: Any, now_ms: int) -> None:
        text = p.check_text(req["text"], self.config.max_text)
        data: dict[str, Any] = {"from": member.nick, "text": text,
                                "action": bool(req.get("action", False)), **account_of(member)}
        if "room" in req:
            room = self._my_room(member, req["room"])
            if room.policy.bans or room.policy.mutes:  # (the cluster's, as it reached here)
                room.policy.check_speak(who(self, member), now_ms, room.name)
            data["room"] = room.name
            args = ["m", body(data), ""]
        else:
            data["src"] = self.directory.ident(member)  # (an account's: all its sessions)
            args = ["d", body(data), p.nick_key(p.check_nick(req["to"]))]
        self._need_redis()
        self._write("msg", args, Waiting(member.sid, label, "msg", req, now_ms))

    def _topic(self, member: Member, req: dict[str, Any], label: Any, now_ms: int) -> None:
        if "topic" not in req:
            super()._topic(member, req, label, now_ms)
            return
        room = self._my_room(member, req["room"])
        topic = p.check_line(req["topic"], "topic", p.MAX_TOPIC)
        if room.policy.topic_lock:
            room.policy.require_operator(who(self, member), room.name)
        self._need_redis()
        data = {"room": room.name, "topic": topic, "by": member.nick, "ts": now_ms}
        self._write("event", ["t", body(data), member.nick, "", room.name,
                              body({"topic": topic, "by": member.nick, "ts": now_ms})],
                    Waiting(member.sid, label, "topic", req, now_ms))

    # ---- membership: applied here at once, told to the others ----

    def _join(self, member: Member, req: dict[str, Any], label: Any, now_ms: int) -> bool:
        name = p.check_room(req["room"])
        was = name in member.rooms
        later = super()._join(member, req, label, now_ms)
        if not was and name in member.rooms:
            self._publish("j", member, {"nick": member.nick, "room": name})
        return later

    def _part(self, member: Member, req: dict[str, Any], label: Any, now_ms: int) -> None:
        name = p.check_room(req["room"])
        super()._part(member, req, label, now_ms)
        room = self.rooms.get(name)
        if room is None or not self.directory.present(room.members, member):
            self._publish("p", member, {"nick": member.nick, "room": name,  # (the last
                                        "reason": req.get("reason", "")})  # of an account)

    def _leave_all(self, member: Member, reason: str, now_ms: int) -> None:
        if member.sid < 0 or member.nick is None:
            super()._leave_all(member, reason, now_ms)
            return
        rooms = set(member.rooms)
        staying = [m for m in self.directory.of_account(member) if m is not member]
        if not staying:  # (another session of its account here keeps the account here)
            self._publish("q", member, {"nick": member.nick, "reason": reason})
        super()._leave_all(member, reason, now_ms)
        for name in sorted(rooms - set().union(*(m.rooms for m in staying))):
            if staying:
                self._publish("p", staying[0], {"nick": member.nick, "room": name,
                                                "reason": reason})

    def _publish(self, kind: str, member: Member, data: dict[str, Any]) -> None:
        """Tell the other hosts; while Redis is away the state written on return does."""
        if self.up and member.nick is not None:
            self._write("event", [kind, body(data), member.nick, p.nick_key(member.nick),
                                  self._rooms_here(member)])

    def _rooms_here(self, member: Member) -> str:
        """The rooms of `member`'s nick on this host: an account's, all its sessions'."""
        sessions = [m for m in self.directory.of_account(member) if not m.gone] or [member]
        return " ".join(sorted(set().union(*(m.rooms for m in sessions))))

    # ---- what the uplink says (the parent's helper checked the framing) ----

    def uplink_said(self, msg: dict[str, Any], now_ms: int) -> None:
        self.now_ms = now_ms
        if msg.get("c") == "x":
            for eid, fields in msg["x"]:
                self._checked(self._entry, entry_id(eid), fields)
        else:
            self._checked(self._said, msg, now_ms)

    def _checked(self, handler: Callable[..., None], *args: Any) -> None:
        """A bad entry (another host's bug, or a hand-made one) costs that entry only."""
        try:
            handler(*args)
        except (KeyError, TypeError, ValueError, AttributeError, ProtocolError,
                msgpack.UnpackException) as exc:
            log.error("a bad message from the cluster uplink (%r): %s", exc, str(args)[:300])

    def _said(self, msg: dict[str, Any], now_ms: int) -> None:
        kind = msg["c"]
        if kind == "r":
            self._result(msg["w"], msg)
        elif kind == "up":
            self._came_up(msg, now_ms)
        elif kind == "down":
            self._went_down(str(msg["e"]), now_ms)
        elif kind == "lost":
            for nick in msg["nicks"]:
                self._nick_lost(p.check_nick(str(nick)), now_ms)

    def _result(self, number: int, msg: dict[str, Any]) -> None:
        w = self.waiting.get(number)
        if w is None:
            return
        if w.kind == "hello":
            self.claiming.discard(w.sid)
        if w.kind == "account":
            del self.waiting[number]
            self.accounts.shared(self.members.get(w.sid), w.req["record"],
                                 w.req["pending"], msg, w.now_ms)
            return
        if "e" in msg:
            del self.waiting[number]
            log.warning("a write to Redis failed: %s", msg["e"])
            self._tell(w, p.error_frame("storage_unavailable", UNREACHABLE, label=w.label))
            return
        value = msg["v"]
        if w.kind == "msg":
            del self.waiting[number]
            msg_id, ts, target = int(value[0]), int(value[1]), str(value[2])
            if msg_id == 0:
                self._tell(w, p.error_frame("no_such_nick", f"nobody is called "
                                            f"{w.req['to']!r}", label=w.label))
            else:
                self._ack(w, msg_id, ts, w.req.get("room") and p.check_room(w.req["room"]),
                          target)
            return
        if w.kind in ("hello", "nick"):
            del self.waiting[number]
            self._claimed(w, int(value[0]))
        # topic: its stream entry answers it

    def _claimed(self, w: Waiting, ok: int) -> None:
        """Redis's answer to a nick claim: 1 given, 0 another host's session has it,
        2 an account owns it."""
        member = self.members.get(w.sid)
        nick = w.req["nick"]
        if member is None or member.gone:
            if ok == 1:  # nobody has it after all
                self._release(nick)
            return
        if ok == 0:
            self._tell(w, p.error_frame("nick_taken", f"nick {nick!r} is in use",
                                        label=w.label))
            return
        if ok == 2:
            self._tell(w, p.error_frame("nick_owned", f"an account owns the nick {nick!r}: "
                                        "log in to use it", label=w.label))
            return
        holder = self.nicks.get(p.nick_key(nick))
        if holder is not None and holder.sid < 0 and holder.account is None:
            self._remote_quit(holder, "nick taken over", w.now_ms)  # Redis says: stale
        self._renaming, old = member, p.nick_key(member.nick or "")
        try:
            if w.kind == "hello":
                super()._hello(member, w.req, w.label, w.now_ms)
            else:
                super()._nick(member, w.req, w.label, w.now_ms)
        except ProtocolError as exc:
            self.outbox[member.sid].append(p.error_from(exc, w.label))
        finally:
            self._renaming = None
        for members in self.remote.values():  # a nick given up to another host's session
            if old in members and old not in self.nicks:
                self.nicks[old] = members[old]
        if w.req.get("lost") and member.nick == nick:  # the others never saw it in its
            self._write_state()  # rooms (Redis gave the nick away): now they do
        if member.gone or member.nick != nick:  # banned meanwhile, or taken here after all
            self._release(nick)

    def _release(self, nick: str) -> None:
        holder = self.nicks.get(p.nick_key(nick))
        if holder is None or holder.sid < 0:
            self._write("event", ["q", body({"nick": nick, "reason": "quit"}), nick,
                                  p.nick_key(nick), ""])

    def _nick_lost(self, nick: str, now_ms: int) -> None:
        """While this host was cut off from Redis (past its lease), another host gave a
        session of its own the nick of one of ours: the cluster's holder keeps it, and
        ours is renamed (told why with a `status` event `renamed`)."""
        member = self.nicks.get(p.nick_key(nick))
        if member is None or member.sid < 0 or member.account is not None:
            return  # (an account's nick is its sessions' on every host: never lost)
        new = self._spare_nick(nick)
        log.warning("while this host was cut off from the cluster, another host gave the "
                    "nick %s to one of its sessions: session %s is renamed %s", nick,
                    member.token, new)
        self.outbox[member.sid].append(pack({
            "type": "status", "cluster": "renamed", "ts": now_ms,
            "message": f"while this server was cut off from the cluster, another server "
                       f"gave the nick {nick} to someone else: you are now {new}"}))
        self._write("nick", [p.nick_key(new), new, p.nick_key(nick), nick, self._rooms_here(member),
                             body({"old": nick, "new": new}), ""],
                    Waiting(member.sid, None, "nick", {"type": "nick", "nick": new,
                                                       "lost": True}, now_ms))

    def _spare_nick(self, nick: str) -> str:
        """A variant of `nick` that nobody here holds and no account owns."""
        for n in itertools.count(1):
            suffix = "_" if n == 1 else f"_{n}"
            spare = nick[:p.MAX_NICK - len(suffix)] + suffix
            if p.nick_key(spare) not in self.nicks and \
                    p.nick_key(spare) not in self.directory.owned:
                return spare
        raise AssertionError("unreachable")

    def _tell(self, w: Waiting, frame: bytes) -> None:
        if w.sid in self.members:
            self.outbox[w.sid].append(frame)

    def _ack(self, w: Waiting, msg_id: int, ts: int, room: str | None, target: str) -> None:
        where = {"room": room} if room else {"to": target}
        self._tell(w, pack({"type": "ack", "id": msg_id, "ts": ts, **where,
                            **({"label": w.label} if w.label is not None else {})}))

    # ---- the stream ----

    def _entry(self, eid: EntryId, fields: dict[str, bytes]) -> None:
        if eid <= self.cursor or self.rewind:
            return  # applied already (a new uplink reads again from where we were), or
        previous, self.cursor = self.cursor, eid  # to be read again after a failure
        try:
            self._apply(eid, fields)
        except StorageError:  # (the store has called _unsend: read again from the commit)
            self.cursor = previous
            self.rewind = True

    def _apply(self, eid: EntryId, fields: dict[str, bytes]) -> None:
        kind, node = fields["k"].decode(), fields["n"].decode()
        ts, data = int(fields["ts"]), fields["d"]
        if kind in ("m", "d"):
            self._message(eid[0], node, int(fields["r"]), ts, msgpack.unpackb(data),
                          fields.get("t", b"").decode(), fields.get("o") == b"1")
        elif kind in ("t", "o"):  # stored and committed at once, with what came before
            if kind == "t":
                self._topic_set(node, int(fields["r"]), msgpack.unpackb(data))
            else:
                self._moderation(eid[0], node, int(fields["r"]), ts, msgpack.unpackb(data))
            self._committed()
        elif kind == "a":
            self.accounts.known(data.decode())
        elif kind in ("P", "K"):
            if node != self.node:
                (self._operator if kind == "P" else self._kill)(msgpack.unpackb(data), ts)
        elif kind == "S":
            if node != self.node and self.server_ban is not None:
                self.server_ban({**msgpack.unpackb(data), "node": node})
        elif node == self.node or eid <= self.point:
            return  # our own (applied when it happened), or in the snapshot already
        elif kind == "g":
            self._remote_gone(node, ts)
        elif kind == "s":
            state = msgpack.unpackb(data) or {}  # (Lua packs an empty table as [])
            self._remote_state(node, {str(k): str(v).split() for k, v in state.items()}, ts)
        else:
            self._remote_event(kind, node, msgpack.unpackb(data), ts)

    def _message(self, msg_id: int, node: str, number: int, ts: int, data: dict[str, Any],
                 target: str, owned: bool = False) -> None:
        if not self._fresh(msg_id, ts):
            return
        sender, text, action = str(data["from"]), str(data["text"]), bool(data["action"])
        room_name = p.check_room(data["room"]) if "room" in data else None
        account = data["account"] if isinstance(data.get("account"), str) else None
        src = dst = None
        if room_name is None:  # between identities (chatd/direct.py): a guest's, or "@"
            src = str(data.get("src") or p.nick_key(sender))  # and an account's key
            dst = ("@" if owned else "") + p.nick_key(target)
        self.store.add_message(ts, sender, text, action, room=room_name,
                               target=target or None, src=src, dst=dst, msg_id=msg_id,
                               account=account)
        w = self.waiting.pop(number, None) if node == self.node else None
        if w is not None:
            self._ack(w, msg_id, ts, room_name, target)
        packed = pack({"type": "message", "id": msg_id, "ts": ts, "from": sender,
                       "text": text, "action": action,
                       **({"account": account} if account else {}),
                       **({"room": room_name} if room_name else {"to": target})})
        self._settling(msg_id, packed)
        if room_name is not None:
            room = self.rooms.get(room_name)
            if room is None:
                self.history.posted(msg_id)
            else:
                self._post(room, msg_id, packed)
            return
        self.history.posted(msg_id)
        assert src is not None and dst is not None
        for sid in dict.fromkeys(m.sid for m in (*self._of(src), *self._of(dst))):
            self.outbox[sid].append(packed)

    def _fresh(self, msg_id: int, ts: int) -> bool:
        """Whether message id `msg_id` is new here (a gap before it is told)."""
        last = self.history.last_id
        if msg_id <= last:
            return False
        if last and msg_id != last + 1:
            self._status("gap", f"messages {last + 1} to {msg_id - 1} never reached this "
                         "server (the cluster's Redis no longer had them)", ts)
        return True

    def _moderation(self, msg_id: int, node: str, number: int, ts: int,
                    data: dict[str, Any]) -> None:
        """A change of a room's policy, carried out here as on every host."""
        if not self._fresh(msg_id, ts):
            return
        name = p.check_room(data["room"])
        req: dict[str, Any] = dict(data["req"])
        room = self.rooms.get(name) or Room(name, "", None, None, policy=RoomPolicy.from_json(
            self.store.policy(name), name))
        w = self.waiting.pop(number, None) if node == self.node else None
        if w is not None:
            self._ack(w, msg_id, ts, name, "")
        kicked = [m for m in room.members.values() if m.sid > 0 and req["type"] == "kick"
                  and p.nick_key(m.nick or "") == p.nick_key(str(req["nick"]))]
        self.moderation.replay(room, req, int(data["now"]), str(data["by"]), msg_id, ts)
        for member in kicked:  # (the other hosts have taken it out already)
            if name not in member.rooms:
                self._publish("p", member, {"nick": member.nick, "room": name,
                                            "reason": "kicked"})

    def _operator(self, data: dict[str, Any], ts: int) -> None:
        """An account opened a room on another host: it is its operator here too."""
        name, account = p.check_room(data["room"]), p.check_nick(data["account"])
        room = self.rooms.get(name)
        policy = room.policy if room else RoomPolicy.from_json(self.store.policy(name), name)
        if policy.grant(Who(account, "", account)):
            self._keep_policy(name, policy)

    def _kill(self, data: dict[str, Any], ts: int) -> None:
        """A server operator on another host ends this host's sessions of a nick (every
        session of an account)."""
        target = self.nicks.get(p.nick_key(p.check_nick(data["nick"])))
        for session in list(self.directory.of_account(target)) if target else []:
            if session.sid > 0 and not session.gone:
                end_session(self, session, str(data["why"]), ts)

    def _of(self, ident: str) -> list[Member]:
        """This host's sessions of an identity (chatd.store.identity)."""
        if ident.startswith("@"):
            return list(self.directory.sessions.get(ident[1:], ()))
        holder = self.nicks.get(ident)
        return [holder] if holder is not None and holder.sid > 0 and \
            holder.account is None else []

    def _topic_set(self, node: str, number: int, data: dict[str, Any]) -> None:
        name = p.check_room(data["room"])
        topic, by, ts = str(data["topic"]), str(data["by"]), int(data["ts"])
        self.store.set_topic(name, topic, by, ts)
        w = self.waiting.pop(number, None) if node == self.node else None
        room = self.rooms.get(name)
        frame = {"type": "topic", "room": name, "topic": topic, "by": by, "ts": ts}
        skip = -1
        if w is not None and w.sid in self.members:
            skip = w.sid
            self.outbox[w.sid].append(pack({**frame, **({"label": w.label} if w.label
                                                          is not None else {})}))
        if room is not None:
            room.topic, room.topic_by, room.topic_ts = topic, by, ts
            self._fanout(room, pack(frame), skip=skip)

    # ---- the link ----

    def _came_up(self, msg: dict[str, Any], now_ms: int) -> None:
        self.point = entry_id(msg["point"])
        if msg["lost"]:
            self.cursor = (0, 0)
        self.cursor = min(self.cursor, self.point)  # as the uplink reads on (see there)
        self.accounts.came_up(msg["accounts"])  # (before the members: whose nicks)
        hosts: dict[str, dict[str, str]] = msg["hosts"]
        for node in list(self.remote):
            if node not in hosts:
                self._remote_gone(node, now_ms)
        for node, members in hosts.items():
            if node != self.node:
                self._remote_state(node, {k: v.split() for k, v in members.items()}, now_ms)
        for name, packed in msg["topics"].items():  # set while this host was away
            topic = msgpack.unpackb(packed)
            if self.store.topic(p.check_room(name))[2] != topic["ts"]:
                self._topic_set("", 0, {"room": name, **topic})
        self._write_state()
        was_down, self.up = not self.up, True
        if msg["lost"]:
            self._status("gap", "the cluster's Redis lost its data: messages acknowledged "
                         "in the last moments before may be missing", now_ms)
        elif was_down and self.why != "not connected yet" and self.store_trouble is None:
            self._status("up", "the server reaches the cluster again", now_ms)
        self.why = ""
        log.info("in the cluster as node %s (epoch %s)", self.node, msg["epoch"])

    # ---- this host's copy (SQLite) ----

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

    # ---- an upgrade (chatd/handover.py) ----

    def hand_over(self) -> dict[str, Any]:
        """What the next parent of an upgrade needs to go on as this one, so that the
        other hosts see nothing happen: where the stream was read to, the writes waiting
        for Redis and the other hosts' members (with the uplink's incarnation, see
        uplinkhelper.hand_over). Called drained and committed."""
        return {"cursor": list(self.cursor), "point": list(self.point), "up": self.up,
                "why": self.why, "number": next(self.numbers),
                "waiting": [[n, w.sid, w.label, w.kind, w.req, w.now_ms]
                            for n, w in self.waiting.items() if w.kind != "account"],
                "claiming": sorted(self.claiming), "remote": self.remote_members(),
                "puts": self.accounts.puts,
                # registrations Redis has not answered yet: told to try again (their
                # Logins state stays here); the account is the cluster's if Redis took it
                "unregistered": [[w.sid, w.req["pending"][0].label]
                                 for w in self.waiting.values()
                                 if w.kind == "account" and w.sid > 0]}

    def take_over(self, state: dict[str, Any]) -> None:
        """The predecessor's hand_over(), after handover.restore() rebuilt the rest."""
        self.cursor = self.committed = (int(state["cursor"][0]), int(state["cursor"][1]))
        self.point = (int(state["point"][0]), int(state["point"][1]))
        self.up, self.why = bool(state["up"]), str(state["why"])
        self.numbers = itertools.count(int(state["number"]))
        for number, sid, label, kind, req, now in state["waiting"]:
            if sid in self.members:
                self.waiting[number] = Waiting(sid, label, kind, req, now)
        self.claiming = {sid for sid in state["claiming"] if sid in self.members}
        self.take_remote_members(state["remote"])
        self.accounts.puts.update(state.get("puts", {}))
        for sid, label in state.get("unregistered", []):
            if sid in self.members:
                self.outbox[sid] += [p.error_frame(
                    "auth_unavailable", "the server was upgraded while your account was "
                    "being registered: log in to it, or register again", label=label), DONE]

    def _write_state(self) -> None:
        """This host's sessions, nicks and rooms, written again whole (the uplink's STATE:
        the other hosts see what differs as joins, parts and nick changes)."""
        state: list[str] = []
        for member in self.members.values():
            if member.nick is not None and not member.gone:
                state += [p.nick_key(member.nick), member.nick, self._rooms_here(member)]
        self.uplink({"c": "state", "a": state})

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

