"""Rooms, nicks, routing and history requests (sans-I/O; lives in the parent).

The broker is fed requests that arrived on a session's channel, identified by
the channel (`sid`), never by anything inside the request. It writes its output
into `outbox`: per session, a list of either encoded client frames (`bytes`,
forwarded to the client untouched) or control maps (`dict`) for the session
process itself. A room message is encoded once and the same bytes object is
queued for every member.

History pages and catch-up live in `chatd.history`: a page the parent's memory
cannot serve becomes a read for the history reader process (`take_reads()`),
whose reply comes back through `read_done()`; the broker never reads history.
"""

from __future__ import annotations

import logging
from bisect import bisect_left, bisect_right, insort
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import msgpack

from chatd import channel, presence, takeover
from chatd import protocol as p
from chatd.channel import CATCHUP, DONE
from chatd.config import Config
from chatd.direct import Directory, account_of
from chatd.history import History
from chatd.logins import Logins
from chatd.moderation import RoomPolicy
from chatd.modrequests import handlers as moderation_handlers
from chatd.modrequests import who
from chatd.protocol import ProtocolError, pack
from chatd.store import StorageError, StoreUnusable
from chatd.stores import HistoryStore

log = logging.getLogger("chatd.broker")
Item = bytes | dict[str, Any]
REMEMBERED_ENDINGS = 4096
# Requests that never change who a member is: no `state` control after them.
STATELESS = frozenset({"msg", "ping", "pong", "history", "who", "rooms", "topic", "quit"})


@dataclass(slots=True, eq=False)
class Member:
    sid: int  # the session's number: its channel in the parent
    token: str  # the session's token: the client's name for it (welcome.session)
    nick: str | None = None
    rooms: set[str] = field(default_factory=set)
    gone: bool = False
    # The account the session has logged in to (its name as registered), None for a guest.
    # Who someone *is* (moderation, operators, IRC's account-tag) is this, never the nick.
    account: str | None = None
    resume: str = ""  # the secret that lets the client take this session over (takeover.py)
    tls: bool = False  # the client came over TLS (the parent knows: which listener)
    away: str = ""  # the away message, "" while here (chatd.presence)


@dataclass(slots=True, eq=False)
class Room:
    name: str
    topic: str
    topic_by: str | None
    topic_ts: int | None
    members: dict[int, Member] = field(default_factory=dict)
    policy: RoomPolicy = field(default_factory=RoomPolicy)  # operators, bans, modes (§14)


class Broker:
    def __init__(self, store: HistoryStore, config: Config) -> None:
        self.store = store
        self._config = config
        self.members: dict[int, Member] = {}
        self.nicks: dict[str, Member] = {}
        self.rooms: dict[str, Room] = {}
        self.room_names: list[str] = []  # the keys of `rooms`, sorted: `rooms` pages by name
        self.outbox: defaultdict[int, list[Item]] = defaultdict(list)
        self.endings: OrderedDict[str, tuple[str, str]] = OrderedDict()
        # Sessions taken over, as (sid, the new session's token): the parent closes them.
        self.replaced: list[tuple[int, str]] = []
        # Messages stored but not committed yet: (label, ack bytes, message bytes, id), the
        # frames still in the outbox. drain() commits before it hands anything out.
        self._unsettled: list[tuple[Any, bytes, bytes, int]] = []
        store.on_rollback = self._unsend
        try:
            last_id = store.last_id()
            # Owned nicks, accounts' sessions, direct messages (chatd/direct.py).
            self.directory = Directory(store.owned())
        except StorageError as exc:
            raise StoreUnusable(f"cannot read the history database {store.path}: "
                                f"{exc.message}") from None
        # History pages and catch-up; its reads go to the history reader (see master).
        self.history = History(config, last_id, self._emit, store.flush)
        # Server bans (chatd/adminops.py): why a nick or account may not register, or None.
        self.screen: Callable[[str | None, str | None], str | None] | None = None
        # Signs a member's `state` control (chatd/orphan.py), sent after each step in which
        # who it is may have changed (`restate`); None: no state controls (unit tests).
        self.signer: Callable[[Member], dict[str, Any] | None] | None = None
        self.restate: set[int] = set()
        self.logins = Logins(self)  # register, login, auth (chatd/logins.py)
        self._handlers: dict[str, Callable[[Member, dict[str, Any], Any, int], Any]] = {
            "hello": self._hello, "quit": self._quit, "join": self._join,
            "part": self._part, "msg": self._msg, "nick": self._nick,
            "topic": self._topic, "rooms": self._rooms, "who": self._who,
            "history": self._history, "ping": self._ignore, "pong": self._ignore,
            **moderation_handlers(self),
            "register": self.logins.register, "login": self.logins.login,
            "auth": self.logins.auth,
            "away": partial(presence.set_away, self),
        }

    # ---- session lifetime (called by the parent's loop) ----

    def attach(self, sid: int, token: str, tls: bool = False) -> None:
        self.members[sid] = Member(sid, token, tls=tls)

    def detach(self, sid: int, reason: str, now_ms: int, code: str = "") -> None:
        """The session's channel is gone: leave everything, tell the rooms."""
        member = self.members.pop(sid, None)
        self.outbox.pop(sid, None)
        if member is not None and not member.gone:
            self._leave_all(member, reason, now_ms)
            self._remember(member.token, code or "closed", reason)
        self.logins.forget(sid)

    @property
    def config(self) -> Config:
        return self._config

    @config.setter
    def config(self, config: Config) -> None:
        self._config = config
        self.history.configure(config)

    def drain(self) -> defaultdict[int, list[Item]]:
        """What may be delivered now: the store has committed everything it acknowledges."""
        self.store.flush()  # a failure has already taken the acks back (_unsend)
        self._unsettled.clear()
        if self.restate:
            self._states()
        out, self.outbox = self.outbox, defaultdict(list)
        return out

    def take_replaced(self) -> list[tuple[int, str]]:
        """Sessions taken over since the last call, as (sid, the new session's token): the
        parent tells each to close with `taken_over` (takeover.py)."""
        replaced, self.replaced = self.replaced, []
        return replaced

    def _states(self) -> None:
        """A `state` control to each member who may have changed (Broker.signer)."""
        for sid in self.restate:
            member = self.members.get(sid)
            state = self.signer(member) if self.signer and member and not member.gone \
                else None
            if state is not None:
                self.outbox[sid].append(state)
        self.restate.clear()

    def take_reads(self) -> list[tuple[int, dict[str, Any]]]:
        """History reads for the reader, as (session, read); hand them over only after
        drain() has committed, so each read sees every message accepted before it."""
        reads, self.history.reads = self.history.reads, []
        return reads

    def read_done(self, reply: dict[str, Any]) -> None:
        """A reply of the history reader (checked by the parent)."""
        self.history.done(reply)

    def _emit(self, sid: int, items: list[Item]) -> None:
        member = self.members.get(sid)
        if member is not None and not member.gone:
            self.outbox[sid].extend(items)

    def _unsend(self, error: StorageError) -> None:
        """The store rolled back messages it had not committed: each ack becomes `error`
        and the message goes from every queue (nobody has it yet: drain commits first)."""
        errors = {id(ack): p.error_frame(error.code, error.message, label=label)
                  for label, ack, _data, _id in self._unsettled}
        dropped = {id(data) for _label, _ack, data, _id in self._unsettled}
        for sid, items in list(self.outbox.items()):
            self.outbox[sid] = [errors.get(id(x), x) for x in items if id(x) not in dropped]
        # Their ids were never stored (the next messages get them again): memory forgets.
        self.history.rolled_back({msg_id for _l, _a, _d, msg_id in self._unsettled})
        self._unsettled.clear()

    # ---- requests from a session ----

    def receive(self, sid: int, payload: bytes, now_ms: int) -> None:
        """Handle one request frame payload from session `sid`'s channel."""
        member = self.members.get(sid)
        if member is None or member.gone:
            return
        label = None
        rtype = None
        later = False
        try:
            # The session process has checked this request already; it is parsed again
            # (by the same parser) because the parent trusts no session.
            req, label = p.parse_request(payload)
            rtype = req["type"]
            p.check_registration(rtype, member.nick is not None)
            later = bool(self._handlers[rtype](member, req, label, now_ms))
        except ProtocolError as exc:
            self.outbox[sid].append(p.error_from(exc, label))
        except Exception:
            # A bug must cost one session, never the parent.
            log.exception("broker failed on a request from session %s", member.token)
            self.outbox[sid].append(p.error_frame("internal", label=label))
            self.outbox[sid].append(channel.close("internal"))
        if rtype in CATCHUP and not later:  # answered, whatever the outcome: the session
            self.outbox[sid].append(DONE)  # may send more (a read's reply brings its own)
        if rtype not in STATELESS:
            self.restate.add(sid)

    def _reply(self, member: Member, frame: dict[str, Any], label: Any) -> bytes:
        if label is not None:
            frame["label"] = label
        data = pack(frame)
        self.outbox[member.sid].append(data)
        return data

    def _fanout(self, room: Room, data: bytes, skip: int = -1) -> None:
        outbox = self.outbox
        for sid in room.members:
            if sid != skip:
                outbox[sid].append(data)

    def _post(self, room: Room, msg_id: int, data: bytes) -> None:
        """A room message: to every member but those still catching up (their pages, or
        the ring right after them, bring it)."""
        self.history.posted(msg_id, room.name, data)
        held = self.history.held.get(room.name)
        if not held:
            self._fanout(room, data)
            return
        outbox = self.outbox
        for sid in room.members:
            if sid not in held:
                outbox[sid].append(data)

    def _ignore(self, member: Member, req: dict[str, Any], label: Any, now_ms: int) -> None:
        pass

    def _hello(self, member: Member, req: dict[str, Any], label: Any, now_ms: int) -> None:
        if req["version"] not in p.SUPPORTED_VERSIONS:
            self.outbox[member.sid].append(p.error_frame(
                "unsupported_version", f"version {req['version']} is not supported",
                label=label, supported=list(p.SUPPORTED_VERSIONS)))
            return
        p.check_nick(req["nick"])
        old = takeover.claimed(self, member, req)
        nick = old.nick if old is not None else self._free_nick(member, req["nick"])
        assert nick is not None
        if self._banned(member, nick, now_ms):
            return
        if old is not None:
            takeover.hand_over(self, old, member)
            log.info("session %s takes over session %s (%s)", member.token, old.token, nick)
        else:
            member.nick = nick
            self.nicks.setdefault(p.nick_key(nick), member)
            self.history.took_nick(member.sid)
        member.resume = takeover.new_secret()
        cfg = self.config
        welcome: dict[str, Any] = {
            "type": "welcome", "version": p.VERSION, "server": cfg.server_name,
            "session": member.token, "nick": nick, "motd": cfg.motd, "time": now_ms,
            "limits": cfg.limits(), "resume": member.resume, "resumed": old is not None,
        }
        previous = None if old else self.endings.get(req.get("session", ""))
        if previous:
            welcome["previous"] = {"code": previous[0], "message": previous[1]}
        self.logins.welcome(member, welcome)
        self._reply(member, welcome, label)
        self.outbox[member.sid].append(channel.welcome(nick))

    def _free_nick(self, member: Member, nick: str) -> str:
        p.check_nick(nick)
        if member.account is not None:  # logged in (before hello): the account's name
            holder = self.nicks.get(p.nick_key(member.account))
            if holder is not None and holder.account != member.account:  # (a lost record)
                raise ProtocolError("nick_taken", f"a guest holds {member.account!r}")
            return member.account
        self.logins.free(member, nick)  # held, being registered, or owned: refused
        return nick

    def _banned(self, member: Member, nick: str, now_ms: int) -> bool:
        """A server ban matches `nick` (or the member's account): end the session."""
        why = self.screen(nick, member.account) if self.screen else None
        if why is None:
            return False
        log.info("session %s refused the nick %s: %s", member.token, nick, why)
        self._leave_all(member, "banned from the server", now_ms)
        self._remember(member.token, "server_banned", why)
        member.gone = True
        self.outbox[member.sid].append(channel.close("server_banned", message=why))
        return True

    def _quit(self, member: Member, req: dict[str, Any], label: Any, now_ms: int) -> None:
        try:
            reason = p.check_line(req.get("reason", ""), "reason", p.MAX_REASON) or "quit"
        except ProtocolError:  # the session ends anyway: a bad reason must not hide that
            reason = "quit"
        # The session process adds `code` when it ends the session itself.
        code = req.get("code")
        self._leave_all(member, reason, now_ms)
        # "closed": the client vanished without a quit (what detach() records too).
        known = isinstance(code, str) and (code in p.ERRORS or code == "closed")
        self._remember(member.token, str(code) if known else "quit", reason)
        member.gone = True

    def _room(self, name: str) -> Room:
        room = self.rooms.get(p.check_room(name))
        if room is None:
            raise ProtocolError("no_such_room", f"nobody is in {name.lower()}")
        return room

    def _my_room(self, member: Member, name: str) -> Room:
        canon = p.check_room(name)
        room = self.rooms.get(canon)
        if room is None or member.sid not in room.members:
            raise ProtocolError("not_in_room", f"you are not in {canon}")
        return room

    def _join(self, member: Member, req: dict[str, Any], label: Any, now_ms: int) -> bool:
        name = p.check_room(req["room"])
        room = self.rooms.get(name)
        if room is None or member.sid not in room.members:
            if len(member.rooms) >= self.config.max_rooms:
                raise ProtocolError("too_many_rooms", f"you are in max_rooms="
                                    f"{self.config.max_rooms} rooms", limit="max_rooms")
            policy = room.policy if room is not None else \
                RoomPolicy.from_json(self.store.policy(name), name)
            if policy.admit(who(self, member), req.get("key"), now_ms, name, room is None):
                self._granted(name, policy, member)
            if room is None:
                room = self._open_room(name, policy)
            log.debug("%s joins %s", member.nick, name)
            if not self.directory.present(room.members, member):  # (§12.1)
                self._fanout(room, pack({"type": "join", "room": name, "nick": member.nick,
                                         "ts": now_ms, **account_of(member),
                                         **presence.of(member)}))
            room.members[member.sid] = member
            member.rooms.add(name)
        self._reply_paged(member, {"type": "joined", "room": name, "topic": room.topic},
                          "members", self._members_after(room, None), label)
        return self.history.join(member.sid, name, req.get("after"), label)

    def _open_room(self, name: str, policy: RoomPolicy | None = None) -> Room:
        if policy is None:
            policy = RoomPolicy.from_json(self.store.policy(name), name)
        room = self.rooms[name] = Room(name, *self.store.topic(name), policy=policy)
        insort(self.room_names, name)
        self.history.room_created(name)
        return room

    def _part(self, member: Member, req: dict[str, Any], label: Any, now_ms: int) -> None:
        room = self._my_room(member, req["room"])
        reason = p.check_line(req.get("reason", ""), "reason", p.MAX_REASON)
        self._reply(member, {"type": "parted", "room": room.name}, label)
        self._leave(member, room, {"type": "part", "room": room.name, "nick": member.nick,
                                   "reason": reason, "ts": now_ms})

    def _msg(self, member: Member, req: dict[str, Any], label: Any, now_ms: int) -> None:
        text = p.check_text(req["text"], self.config.max_text)
        action = bool(req.get("action", False))
        nick = member.nick
        assert nick is not None
        if "room" in req:
            room = self._my_room(member, req["room"])
            if room.policy.bans or room.policy.mutes:  # most rooms have neither
                room.policy.check_speak(who(self, member), now_ms, room.name)
            msg_id = self.store.add_message(now_ms, nick, text, action, room=room.name,
                                            account=member.account)
            ack: dict[str, Any] = {"type": "ack", "id": msg_id, "ts": now_ms, "room": room.name}
            ack_data = self._reply(member, ack, label)
            data = pack({"type": "message", "id": msg_id, "ts": now_ms, "room": room.name,
                         "from": nick, "text": text, "action": action, **account_of(member)})
            self._post(room, msg_id, data)
            self._unsettled.append((label, ack_data, data, msg_id))
            return
        self.directory.send(self, member, req, text, action, label, now_ms)

    def _nick(self, member: Member, req: dict[str, Any], label: Any, now_ms: int) -> None:
        if member.account is not None:
            raise ProtocolError("nick_locked", f"your nick is its account's: {member.account}")
        new = self._free_nick(member, req["nick"])
        if not self._banned(member, new, now_ms):
            self.rename(member, new, label, now_ms)

    def rename(self, member: Member, new: str, label: Any, now_ms: int = 0) -> None:
        """Give `member` the nick `new` (checked by the caller), telling its rooms."""
        old = member.nick
        assert old is not None
        if new == old and label is None:  # (a login keeps the nick it had)
            return
        if new == old:  # nothing changes: answer, but do not tell the rooms
            self._reply(member, {"type": "nick", "old": old, "new": new, "ts": now_ms}, label)
            return
        self.directory.drop_nick(self.nicks, member)
        member.nick = new
        self.nicks.setdefault(p.nick_key(new), member)
        if p.nick_key(new) != p.nick_key(old):  # a new direct-message history
            self.history.took_nick(member.sid)
        self._reply(member, {"type": "nick", "old": old, "new": new, "ts": now_ms}, label)
        for name in sorted(member.rooms):
            self._fanout(self.rooms[name], pack({"type": "nick", "room": name, "old": old,
                                                 "new": new, "ts": now_ms}), skip=member.sid)

    def _topic(self, member: Member, req: dict[str, Any], label: Any, now_ms: int) -> None:
        if "topic" not in req:
            room = self._room(req["room"])
            self._reply(member, {"type": "topic", "room": room.name, "topic": room.topic,
                                 "by": room.topic_by, "ts": room.topic_ts}, label)
            return
        room = self._my_room(member, req["room"])
        topic = p.check_line(req["topic"], "topic", p.MAX_TOPIC)
        if room.policy.topic_lock:
            room.policy.require_operator(who(self, member), room.name)
        self.store.set_topic(room.name, topic, member.nick or "", now_ms)
        room.topic, room.topic_by, room.topic_ts = topic, member.nick, now_ms
        frame = {"type": "topic", "room": room.name, "topic": topic, "by": member.nick,
                 "ts": now_ms}
        self._fanout(room, pack(frame), skip=member.sid)
        self._reply(member, frame, label)

    def _rooms(self, member: Member, req: dict[str, Any], label: Any, now_ms: int) -> None:
        names = self.room_names
        start = bisect_right(names, p.check_room(req["after"])) if "after" in req else 0
        listing = ({"room": room.name, "members": len(room.members), "topic": room.topic}
                   for room in (self.rooms[names[i]] for i in range(start, len(names))))
        self._reply_paged(member, {"type": "rooms"}, "rooms", listing, label)

    def _who(self, member: Member, req: dict[str, Any], label: Any, now_ms: int) -> None:
        room = self._room(req["room"])
        after = p.check_nick(req["after"]) if "after" in req else None
        self._reply_paged(member, {"type": "members", "room": room.name}, "members",
                          self._members_after(room, after), label)

    @staticmethod
    def _members_after(room: Room, after: str | None) -> Iterator[str]:
        """The room's nicks in their documented order (lower-cased, which is unique among
        connected sessions; an account's sessions are one), those after `after` only."""
        key = after.lower() if after is not None else ""
        nicks = sorted({m.nick or "" for m in room.members.values()}, key=str.lower)
        return (nick for nick in nicks if nick.lower() > key)

    def _reply_paged(self, member: Member, frame: dict[str, Any], key: str,
                     items: Iterable[Any], label: Any) -> None:
        """Reply with as many of `items`, in order, as fit in max_frame under `key`, and
        `more`: whether any were left out (the client goes on with `after` = the last one
        it got). At least one goes when there is one, so paging always advances; every
        item that grows with the server is far below max_frame's minimum."""
        frame.update({key: [], "more": True})
        if label is not None:
            frame["label"] = label
        # the empty reply's payload, plus room for the array header to grow (1 -> 5 bytes)
        budget = self.config.max_frame - (len(pack(frame)) - p.HEADER.size) - 4
        # A member list also names its away members (chatd.presence), within the budget.
        away = presence.Notes(self.nicks) if key == "members" else None
        kept: list[Any] = []
        more = False
        for item in items:
            budget -= len(msgpack.packb(item, use_bin_type=True))
            if away is not None:
                budget = away.cost(item, budget)
            if budget < 0 and kept:
                more = True
                break
            kept.append(item)
        frame.update({key: kept, "more": more})
        if away is not None:
            away.add_to(frame, kept)
        self.outbox[member.sid].append(pack(frame))

    def _history(self, member: Member, req: dict[str, Any], label: Any, now_ms: int) -> bool:
        page = self.config.history_page
        limit = req.get("limit", page)
        if limit < 1:
            raise ProtocolError("invalid_value", "history: limit must be at least 1")
        limit = min(limit, page)
        where: dict[str, Any]
        if "room" in req:
            room = self._my_room(member, req["room"])
            where, reply = {"room": room.name}, {"room": room.name}
        else:
            where, reply = self.directory.where(member, req)
        return self.history.request(member.sid, where, reply, req.get("before"),
                                    req.get("after"), limit, label)

    # ---- what a cluster host does otherwise (chatd/cluster.py) ----

    def need_cluster(self) -> None:
        """Refuse (storage_unavailable) what needs a cluster that is out of reach."""

    def share_account(self, member: Member, record: str, pending: Any, now_ms: int) -> None:
        """A registration the auth helper made, for the cluster to accept or refuse:
        it answers through `logins.registered`. (One host: never called.)"""
        self.logins.registered(member, record.split(" ", 1)[0], pending, None, now_ms)

    def share_moderation(self, member: Member, room: Room, now_ms: int, label: Any,
                         req: dict[str, Any], change: Callable[[RoomPolicy], Any]) -> bool:
        """Whether the cluster carries out this checked change of a room's policy (then
        every host does, as it comes back); False: this host alone, at once."""
        return False

    def share_server_ban(self, change: dict[str, Any]) -> bool:
        """Tell the other hosts of a cluster an administrator's server ban or unban
        (chatd/adminops.py); whether it went (one host: there is nobody to tell)."""
        return False

    def end_remote(self, target: Member, why: str, now_ms: int) -> None:
        """A server operator ends another host's session (a cluster; never on one host)."""

    def _granted(self, name: str, policy: RoomPolicy, member: Member) -> None:
        """A join made `member` the room's operator (it opened the room): an account's
        right is stored (a guest's is its session's, never stored)."""
        if member.account:
            self._keep_policy(name, policy)

    # ---- helpers ----

    def _keep_policy(self, room: str, policy: RoomPolicy) -> None:
        """Store a policy changed without an event (a join); a failure is only logged, and
        the next change stores it again."""
        try:
            self.store.save_policy(room, policy.to_json() if policy.stored_anything() else None)
        except StorageError as exc:
            log.warning("room %s: moderation policy not stored: %s", room, exc.message)

    def _leave(self, member: Member, room: Room, notice: dict[str, Any] | None,
               now_ms: int = 0) -> None:
        """`member` leaves `room`; the others get `notice` (None: they have been told)."""
        self.restate.add(member.sid)  # (kicked, too)
        del room.members[member.sid]
        member.rooms.discard(room.name)
        self.history.left(member.sid, room.name)
        room.policy.left(who(self, member))
        if room.members:
            # (an account's sessions are one member: its last one says it left)
            if notice is not None and not self.directory.present(room.members, member):
                self._fanout(room, pack(notice))
        else:
            del self.rooms[room.name]
            self.history.room_gone(room.name)
            del self.room_names[bisect_left(self.room_names, room.name)]
            # retention counts from here
            self.store.touch_room(room.name, notice["ts"] if notice else now_ms)

    def _leave_all(self, member: Member, reason: str, now_ms: int) -> None:
        for name in sorted(member.rooms):
            self._leave(member, self.rooms[name], {"type": "quit", "room": name,
                                                   "nick": member.nick, "reason": reason,
                                                   "ts": now_ms})
        self.directory.drop_nick(self.nicks, member)
        self.directory.logged_out(member)
        self.history.forget(member.sid)

    def _remember(self, token: str, code: str, reason: str) -> None:
        """Why session `token` ended, for a later hello.session (welcome.previous)."""
        self.endings[token] = (code, reason)
        while len(self.endings) > REMEMBERED_ENDINGS:
            self.endings.popitem(last=False)
