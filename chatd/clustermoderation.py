"""Moderation in a cluster (sans-I/O; a part of ClusterBroker, chatd/cluster.py).

A change of a room's policy (op, kick, ban, mode, ...) is checked on the actor's host
against its copy of the policy, then goes through Redis like a message (an `o` entry,
with a message id) and every host carries it out on its copy
(modrequests.Moderation.replay): a kick removes the target from the room on every host,
a ban holds on every host. The other relays are events without an id: an account that
opens a room is its operator on every host (`P`); a guest's rights are its session's,
on its own host. A server operator's `kill` of another host's session is carried out
there (`K`), and a server ban or unban reaches every host's bans (`S`,
chatd/adminops.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from chatd import protocol as p
from chatd.broker import Member, Room
from chatd.clusterlink import ClusterLink, Waiting, body
from chatd.config import Config
from chatd.moderation import RoomPolicy, Who
from chatd.modrequests import Moderation, end_session
from chatd.stores import HistoryStore

log = logging.getLogger("chatd.cluster")


class ClusterModeration(ClusterLink):
    def __init__(self, store: HistoryStore, config: Config) -> None:
        super().__init__(store, config)
        # Another host's server ban or unban, for this host's bans (chatd/adminops.py).
        self.server_ban: Callable[[dict[str, Any]], None] | None = None
        self.moderation = Moderation(self)

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

