"""The broker's moderation requests (protocol.md §14; sans-I/O, lives in the parent).

Room policy itself (who is operator, bans, mutes, modes, invitations) is
`chatd.moderation`; this module carries out the requests against it for the broker:
it checks them, stores each change with its event (one commit, so a change nobody was
told of is never stored, nor an event for a change that was not), and tells the room.
An event is a history entry with a message id: it reaches the members as messages do,
and a catch-up replays it in its place.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from chatd import channel
from chatd import protocol as p
from chatd.moderation import RoomPolicy, Who, check_duration, check_key, check_mask, make_entry
from chatd.protocol import ProtocolError, pack
from chatd.store import StorageError

if TYPE_CHECKING:
    from chatd.broker import Broker, Member, Room

log = logging.getLogger("chatd.moderation")
Handler = Any


def who(broker: Broker, member: Member) -> Who:
    """The member as moderation sees it (server operators by the config's account list)."""
    account = member.account
    ops = broker.config.operators
    server_op = account is not None and p.nick_key(account) in {p.nick_key(a) for a in ops}
    return Who(member.nick or "", member.token, account, server_op)


def handlers(broker: Broker) -> dict[str, Handler]:
    mod = Moderation(broker)
    return {"op": mod.op, "deop": mod.op, "kick": mod.kick, "invite": mod.invite,
            "ban": mod.entry, "unban": mod.unentry, "mute": mod.entry, "unmute": mod.unentry,
            "mode": mod.mode, "bans": mod.bans, "kill": mod.kill}


class Moderation:
    def __init__(self, broker: Broker) -> None:
        self.b = broker

    # ---- helpers ----

    def _operate(self, member: Member, room: Room) -> None:
        """The member must be an operator of the room (else not_operator)."""
        room.policy.require_operator(who(self.b, member), room.name)

    def _targets(self, room: Room, nick: str) -> list[Member]:
        """The sessions in `room` with this nick: one, or each session of an account
        (§12.1: one member). no_such_nick when none is in it."""
        key = p.nick_key(p.check_nick(nick))
        found = [m for m in room.members.values()
                 if m.nick is not None and p.nick_key(m.nick) == key]
        if not found:
            raise ProtocolError("no_such_nick", f"nobody called {nick!r} is in {room.name}")
        return found

    def _apply(self, member: Member, room: Room, now: int, label: Any, event: dict[str, Any],
               change: Any) -> bytes:
        """Change the policy (`change(policy)`), store it with its event, tell the room;
        the event frame. On a storage failure nothing changed and nobody is told."""
        before = room.policy.copy()
        policy = room.policy
        try:
            change(policy)
            msg_id = self.b.store.moderate(now, room.name, member.nick or "", event,
                                           policy.to_json() if policy.stored_anything()
                                           else None)
        except (ProtocolError, StorageError):
            room.policy = before
            raise
        self.b._reply(member, {"type": "ack", "id": msg_id, "ts": now, "room": room.name},
                      label)
        data = pack({"type": "moderation", "id": msg_id, "ts": now, "room": room.name,
                     "by": member.nick, **event})
        self.b._post(room, msg_id, data)
        return data

    # ---- requests ----

    def op(self, member: Member, req: dict[str, Any], label: Any, now: int) -> None:
        room = self.b._my_room(member, req["room"])
        p.check_nick(req["nick"])
        self._operate(member, room)
        target = self._targets(room, req["nick"])[0]  # an account's sessions share it
        grant = req["type"] == "op"
        subject = who(self.b, target)
        self._apply(member, room, now, label, {"kind": req["type"], "nick": target.nick},
                    lambda pol: pol.grant(subject) if grant else pol.revoke(subject))

    def kick(self, member: Member, req: dict[str, Any], label: Any, now: int) -> None:
        room = self.b._my_room(member, req["room"])
        p.check_nick(req["nick"])
        reason = p.check_line(req.get("reason", ""), "reason", p.MAX_REASON)
        self._operate(member, room)
        targets = self._targets(room, req["nick"])

        def change(pol: RoomPolicy) -> None:
            for target in targets:
                pol.left(who(self.b, target))

        data = self._apply(member, room, now, label,
                           {"kind": "kick", "nick": targets[0].nick, "reason": reason}, change)
        held = self.b.history.held.get(room.name, ())
        for target in targets:
            if target.sid in held:
                self.b.outbox[target.sid].append(data)  # catching up: it must hear it now
            self.b._leave(target, room, None, now)

    def invite(self, member: Member, req: dict[str, Any], label: Any, now: int) -> None:
        room = self.b._my_room(member, req["room"])
        key = p.nick_key(p.check_nick(req["nick"]))
        self._operate(member, room)
        guest = self.b.nicks.get(key)
        if guest is None or guest.nick is None:
            raise ProtocolError("no_such_nick", f"nobody is called {req['nick']!r}")
        subject = who(self.b, guest)
        self._apply(member, room, now, label, {"kind": "invite", "nick": guest.nick},
                    lambda pol: pol.invite(subject, now))
        if guest.sid not in room.members:
            self.b.outbox[guest.sid].append(pack({"type": "invited", "room": room.name,
                                                  "by": member.nick, "ts": now}))

    def entry(self, member: Member, req: dict[str, Any], label: Any, now: int) -> None:
        """ban, mute"""
        room = self.b._my_room(member, req["room"])
        kind = "nick" if "nick" in req else "account"
        entry = make_entry(kind, req[kind], member.nick or "", now,
                           check_duration(req.get("duration")), req.get("reason", ""))
        self._operate(member, room)
        which = "bans" if req["type"] == "ban" else "mutes"
        told = {k: v for k, v in entry.wire().items() if k not in ("by", "ts")}
        self._apply(member, room, now, label, {"kind": req["type"], **told},
                    lambda pol: pol.add(which, entry, now))

    def unentry(self, member: Member, req: dict[str, Any], label: Any, now: int) -> None:
        """unban, unmute"""
        room = self.b._my_room(member, req["room"])
        kind = "nick" if "nick" in req else "account"
        check_mask(kind, req[kind])
        self._operate(member, room)
        which = "bans" if req["type"] == "unban" else "mutes"
        self._apply(member, room, now, label, {"kind": req["type"], kind: req[kind]},
                    lambda pol: pol.remove(which, kind, req[kind], now, room.name))

    def mode(self, member: Member, req: dict[str, Any], label: Any, now: int) -> None:
        room = self.b._my_room(member, req["room"])
        key = check_key(req["key"]) if "key" in req else None
        asked = [f for f in ("invite_only", "key", "topic_lock") if f in req]
        actor = who(self.b, member)
        policy = room.policy
        if not asked:
            reply: dict[str, Any] = {
                "type": "mode", "room": room.name, "invite_only": policy.invite_only,
                "keyed": bool(policy.key), "topic_lock": policy.topic_lock,
                "operator": policy.is_operator(actor)}
            if policy.key and policy.is_operator(actor):
                reply["key"] = policy.key
            self.b._reply(member, reply, label)
            return
        policy.require_operator(actor, room.name)
        change = RoomPolicy().set_modes(req.get("invite_only"), key, req.get("topic_lock"))
        self._apply(member, room, now, label, {"kind": "mode", **change},
                    lambda pol: pol.set_modes(req.get("invite_only"), key,
                                              req.get("topic_lock")))

    def bans(self, member: Member, req: dict[str, Any], label: Any, now: int) -> None:
        room = self.b._my_room(member, req["room"])
        skip = req.get("after", 0)
        if skip < 0:
            raise ProtocolError("invalid_value", "bans: after must be at least 0")
        entries = room.policy.entries(now)[skip:]
        self.b._reply_paged(member, {"type": "bans", "room": room.name}, "bans", entries,
                            label)

    def kill(self, member: Member, req: dict[str, Any], label: Any, now: int) -> None:
        actor = who(self.b, member)
        reason = p.check_line(req.get("reason", ""), "reason", p.MAX_REASON)
        if not actor.server_op:
            raise ProtocolError("not_operator", "only a server operator may end a session")
        target = self.b.nicks.get(p.nick_key(p.check_nick(req["nick"])))
        if target is None or target.nick is None:
            raise ProtocolError("no_such_nick", f"nobody is called {req['nick']!r}")
        self.b._reply(member, {"type": "killed", "nick": target.nick}, label)
        why = f"killed by {member.nick}" + (f": {reason}" if reason else "")
        # A logged-in user: every session of its account (phone and laptop share the nick)
        for session in list(self.b.directory.of_account(target)):
            if not session.gone:
                end_session(self.b, session, why, now)


def end_session(broker: Broker, target: Member, why: str, now: int) -> None:
    """End a session for a server operator (here, or the admin socket): it leaves its
    rooms (they get `quit` with `why`) and gets the fatal `killed`."""
    log.warning("ending session %s (%s): %s", target.token, target.nick, why)
    broker._leave_all(target, why, now)
    broker._remember(target.token, "killed", why)
    target.gone = True
    broker.outbox[target.sid].append(channel.close("killed", message=why))
