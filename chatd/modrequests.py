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
from collections.abc import Callable
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

    def _apply(self, member: Member, room: Room, now: int, label: Any,
               req: dict[str, Any]) -> None:
        """Carry out a checked request (the actor is an operator): change the policy,
        store it with its event, tell the room. On a storage failure nothing changed and
        nobody is told. A cluster host hands it to the cluster instead (chatd/cluster.py),
        and every host carries it out (`replay`) as it comes back."""
        event, change, after = self._plan(room, req, now, member.nick or "")
        if self.b.share_moderation(member, room, now, label, req, change):
            return
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
        after(data)

    def replay(self, room: Room, req: dict[str, Any], now: int, by: str, msg_id: int,
               ts: int) -> None:
        """A change the cluster carries out (another host checked it): as _apply, on
        this host's view of the room (a target that is not in it here is left out)."""
        policy = room.policy.copy()
        try:
            event, change, after = self._plan(room, req, now, by)
            change(policy)
        except ProtocolError as exc:  # (changed meanwhile: the event is kept all the same)
            log.warning("room %s: %s from the cluster not carried out here: %s", room.name,
                        req.get("type"), exc.message)
            policy, event, after = room.policy, {"kind": str(req.get("type"))}, _nothing
        self.b.store.moderate(ts, room.name, by, event, policy.to_json()
                              if policy.stored_anything() else None, msg_id=msg_id)
        room.policy = policy  # (once stored: a failure leaves it as it was, read again)
        data = pack({"type": "moderation", "id": msg_id, "ts": ts, "room": room.name,
                     "by": by, **event})
        if room.name in self.b.rooms:
            self.b._post(room, msg_id, data)
        else:
            self.b.history.posted(msg_id)
        after(data)

    def _plan(self, room: Room, req: dict[str, Any], now: int, by: str
              ) -> tuple[dict[str, Any], Callable[[RoomPolicy], Any], Callable[[bytes], None]]:
        """A request's event, its change of the policy, and what follows the event (a
        kick's leaving, an invitation): the same on every host that carries it out."""
        rtype = req["type"]
        if rtype in ("op", "deop"):
            target = self._targets(room, req["nick"])[0]  # an account's sessions share it
            subject = who(self.b, target)
            grant = rtype == "op"
            return ({"kind": rtype, "nick": target.nick},
                    lambda pol: pol.grant(subject) if grant else pol.revoke(subject), _nothing)
        if rtype == "kick":
            targets = self._targets(room, req["nick"])
            reason = p.check_line(req.get("reason", ""), "reason", p.MAX_REASON)

            def leave(pol: RoomPolicy) -> None:
                for target in targets:
                    pol.left(who(self.b, target))

            def kicked(data: bytes) -> None:
                held = self.b.history.held.get(room.name, ())
                for target in targets:
                    if target.sid in held:
                        self.b.outbox[target.sid].append(data)  # catching up: hear it now
                    if target.sid in room.members:
                        self.b._leave(target, room, None, now)

            return {"kind": "kick", "nick": targets[0].nick, "reason": reason}, leave, kicked
        if rtype == "invite":
            guest = self.b.nicks.get(p.nick_key(p.check_nick(req["nick"])))
            if guest is None or guest.nick is None:
                raise ProtocolError("no_such_nick", f"nobody is called {req['nick']!r}")
            invitee, subject = guest, who(self.b, guest)

            def invited(data: bytes) -> None:
                if invitee.sid > 0 and invitee.sid not in room.members:
                    self.b.outbox[invitee.sid].append(pack({
                        "type": "invited", "room": room.name, "by": by, "ts": now}))

            return ({"kind": "invite", "nick": guest.nick},
                    lambda pol: pol.invite(subject, now), invited)
        kind = "nick" if "nick" in req else "account"
        if rtype in ("ban", "mute"):
            entry = make_entry(kind, req[kind], by, now, check_duration(req.get("duration")),
                               req.get("reason", ""))
            which = "bans" if rtype == "ban" else "mutes"
            told = {k: v for k, v in entry.wire().items() if k not in ("by", "ts")}
            return {"kind": rtype, **told}, lambda pol: pol.add(which, entry, now), _nothing
        if rtype in ("unban", "unmute"):
            check_mask(kind, req[kind])
            which = "bans" if rtype == "unban" else "mutes"
            return ({"kind": rtype, kind: req[kind]},
                    lambda pol: pol.remove(which, kind, req[kind], now, room.name), _nothing)
        if rtype == "mode":
            key = check_key(req["key"]) if "key" in req else None
            modes = (req.get("invite_only"), key, req.get("topic_lock"))
            return ({"kind": "mode", **RoomPolicy().set_modes(*modes)},
                    lambda pol: pol.set_modes(*modes), _nothing)
        raise ProtocolError("invalid_value", f"{rtype} is not a change of a room's policy")

    # ---- requests ----

    def op(self, member: Member, req: dict[str, Any], label: Any, now: int) -> None:
        room = self.b._my_room(member, req["room"])
        p.check_nick(req["nick"])
        self._operate(member, room)
        self._apply(member, room, now, label, req)

    def kick(self, member: Member, req: dict[str, Any], label: Any, now: int) -> None:
        room = self.b._my_room(member, req["room"])
        p.check_nick(req["nick"])
        p.check_line(req.get("reason", ""), "reason", p.MAX_REASON)
        self._operate(member, room)
        self._apply(member, room, now, label, req)

    def invite(self, member: Member, req: dict[str, Any], label: Any, now: int) -> None:
        room = self.b._my_room(member, req["room"])
        p.check_nick(req["nick"])
        self._operate(member, room)
        self._apply(member, room, now, label, req)

    def entry(self, member: Member, req: dict[str, Any], label: Any, now: int) -> None:
        """ban, mute"""
        room = self.b._my_room(member, req["room"])
        kind = "nick" if "nick" in req else "account"
        make_entry(kind, req[kind], member.nick or "", now,
                   check_duration(req.get("duration")), req.get("reason", ""))
        self._operate(member, room)
        self._apply(member, room, now, label, req)

    def unentry(self, member: Member, req: dict[str, Any], label: Any, now: int) -> None:
        """unban, unmute"""
        room = self.b._my_room(member, req["room"])
        kind = "nick" if "nick" in req else "account"
        check_mask(kind, req[kind])
        self._operate(member, room)
        self._apply(member, room, now, label, req)

    def mode(self, member: Member, req: dict[str, Any], label: Any, now: int) -> None:
        room = self.b._my_room(member, req["room"])
        if "key" in req:
            check_key(req["key"])
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
        self._apply(member, room, now, label, req)

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
            if session.sid > 0 and not session.gone:
                end_session(self.b, session, why, now)
        if target.sid < 0 or target.account is not None:  # a cluster: those of other hosts
            self.b.end_remote(target, why, now)  # (their hosts end them)


def _nothing(data: bytes) -> None:
    pass


def end_session(broker: Broker, target: Member, why: str, now: int) -> None:
    """End a session for a server operator (here, or the admin socket): it leaves its
    rooms (they get `quit` with `why`) and gets the fatal `killed`."""
    log.warning("ending session %s (%s): %s", target.token, target.nick, why)
    broker._leave_all(target, why, now)
    broker._remember(target.token, "killed", why)
    target.gone = True
    broker.outbox[target.sid].append(channel.close("killed", message=why))
