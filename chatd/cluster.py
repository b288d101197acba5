"""Routing in a cluster: the Broker, with Redis (through the uplink) deciding what is
shared (sans-I/O; lives in the parent of a host with `cluster.redis_url` set).

* **Messages** are not stored here first: a `msg` becomes a write for the uplink; Redis
  gives it the next id (one sequence for the whole cluster) and appends it to the stream.
  Every host, this one included, delivers and stores (its SQLite, a replica that serves
  history and catch-up) what it reads from the stream, in id order, so every host has the
  same messages with the same ids. The sender's `ack` goes when Redis has it: at the
  write's reply or at the stream entry, whichever comes first, and always before the
  message itself.
* **Nicks** are claimed in Redis (hello, nick) before they are given
  (chatd/clusternicks.py); a DM's target is looked up there, so a DM reaches its target
  on any host.
* **Accounts** are the cluster's (chatd/clusteraccounts.py): an account's sessions on
  several hosts share its nick, and a direct message to it is stored between identities
  (chatd/direct.py) and reaches its sessions on every host.
* **Moderation**: a change of a room's policy (op, kick, ban, mode, ...) is checked on
  the actor's host, then goes through Redis like a message (it has a message id) and
  every host carries it out on its copy of the policy (chatd/clustermoderation.py):
  a kick removes the target from the room on every host, a ban holds on every host. An
  account that opens a room is its operator on every host (a `P` event); a guest's
  rights are its session's, on its own host. A server operator's `kill` of another
  host's session is carried out there (a `K` event).
* **Membership and topics** of other hosts' sessions are kept here as *remote members*
  (chatd/clustermembers.py): joins, parts, quits and nick changes of this host's
  sessions go to the stream, and those of other hosts come from it, so `who`, `rooms`
  and the room notices are cluster-wide, a stream's delay (about a millisecond) behind.
* **This host's SQLite fails** (a full disk; chatd/clusterlink.py, with the writes and
  the stream cursor): what it had applied since its last commit is taken back (nobody
  here gets those messages yet), and it reads the stream again
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
from collections.abc import Callable
from typing import Any

import msgpack

from chatd import protocol as p
from chatd.broker import Member
from chatd.channel import DONE
from chatd.clusteraccounts import SharedAccounts
from chatd.clusterlink import UNREACHABLE, EntryId, Waiting, body, entry_id
from chatd.clustermoderation import ClusterModeration
from chatd.clusternicks import ClusterNicks
from chatd.config import Config
from chatd.direct import account_of
from chatd.modrequests import who
from chatd.protocol import ProtocolError, pack
from chatd.store import StorageError
from chatd.stores import HistoryStore

log = logging.getLogger("chatd.cluster")


class ClusterBroker(ClusterNicks, ClusterModeration):
    """The writes, the stream and this host's copy are ClusterLink's; the nick claims
    ClusterNicks'; the moderation relays ClusterModeration's. Here: what a session's
    messages, topics and membership become, and what the uplink says back."""

    def __init__(self, store: HistoryStore, config: Config) -> None:
        super().__init__(store, config)
        self.accounts = self.logins.cluster = SharedAccounts(self)

    def share_account(self, member: Member | None, record: str, pending: Any,
                      now_ms: int) -> None:
        """An account for Redis: a registration here (answered through `accounts`), or
        (no member) one Redis lacks (clusteraccounts.SharedAccounts.offer)."""
        name = record.split(" ", 1)[0]
        self._write("account", [p.nick_key(name), record],
                    Waiting(member.sid if member else 0, None, "account",
                            {"record": record, "pending": pending}, now_ms))

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
