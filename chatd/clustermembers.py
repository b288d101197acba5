"""Other hosts' sessions in a cluster host's broker: *remote members* (sans-I/O).

They are Members with a negative session number (the router has no channel for them)
and a token of their own making (`~NODE~KEY`: a guest's rights are its session's, on its
own host), in the rooms they are in, so that `who`, `rooms`, member counts, nick look-ups
and the room notices are the Broker's own code. ClusterBroker (chatd/cluster.py) feeds
them what the stream says other hosts' sessions did: joins, parts, quits, nick changes,
a host's whole membership (after it came back), a host gone. A nick an account owns is
its sessions' on every host: such a member is that account's.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

from chatd import presence
from chatd import protocol as p
from chatd.broker import Broker, Member
from chatd.config import Config
from chatd.direct import account_of
from chatd.protocol import pack
from chatd.stores import HistoryStore

log = logging.getLogger("chatd.cluster")


class RemoteMembers(Broker):
    def __init__(self, store: HistoryStore, config: Config) -> None:
        super().__init__(store, config)
        self.remote: dict[str, dict[str, Member]] = {}  # node -> nick key -> member
        self.remote_sids = itertools.count(-1, -1)

    def _remote(self, node: str, nick: str) -> Member:
        members = self.remote.setdefault(node, {})
        key = p.nick_key(nick)
        member = members.get(key)
        if member is None:  # (only an account's sessions hold its nick: it is theirs)
            member = members[key] = Member(next(self.remote_sids), f"~{node}~{key}", nick,
                                           account=self.directory.owned.get(key))
        holder = self.nicks.get(key)
        if holder is None or holder.sid < 0:
            self.nicks[key] = member
        elif holder is not member and (holder.account is None
                                       or holder.account != member.account):
            log.warning("nick %s is held here and on node %s", nick, node)
        return member

    def _remote_event(self, kind: str, node: str, data: dict[str, Any], ts: int) -> None:
        if kind == "n":
            old, new = str(data["old"]), p.check_nick(str(data["new"]))
            renamed = self.remote.get(node, {}).get(p.nick_key(old))
            if renamed is not None:
                self._remote_rename(node, renamed, new, ts)
            return
        nick = p.check_nick(str(data["nick"]))
        if kind == "j":
            self._remote_join(self._remote(node, nick), p.check_room(data["room"]), ts)
        elif kind == "p":
            member = self.remote.get(node, {}).get(p.nick_key(nick))
            room = self.rooms.get(p.check_room(data["room"]))
            if member is not None and room is not None and member.sid in room.members:
                self._leave(member, room, {"type": "part", "room": room.name, "nick": nick,
                                           "reason": str(data.get("reason", "")), "ts": ts})
        elif kind == "q":
            member = self.remote.get(node, {}).get(p.nick_key(nick))
            if member is not None:
                self._remote_quit(member, str(data.get("reason", "")) or "quit", ts)

    def _remote_join(self, member: Member, name: str, ts: int) -> None:
        room = self.rooms.get(name) or self._open_room(name)
        if member.sid in room.members:
            return
        if not self.directory.present(room.members, member):  # (an account is one member)
            self._fanout(room, pack({"type": "join", "room": name, "nick": member.nick,
                                     "ts": ts, **account_of(member)}))
        room.members[member.sid] = member
        member.rooms.add(name)

    def _remote_rename(self, node: str, member: Member, new: str, ts: int) -> None:
        old = member.nick or ""
        members = self.remote[node]
        del members[p.nick_key(old)]
        if self.nicks.get(p.nick_key(old)) is member:
            del self.nicks[p.nick_key(old)]
        member.nick = new
        members[p.nick_key(new)] = member
        self._remote(node, new)
        for name in sorted(member.rooms):
            self._fanout(self.rooms[name], pack({"type": "nick", "room": name, "old": old,
                                                 "new": new, "ts": ts}))
        account = self.directory.owned.get(p.nick_key(new))
        if account is not None:  # it logged in
            self.remote_account(member, account, ts)

    def remote_account(self, member: Member, account: str, ts: int) -> None:
        """Another host's session is (now) logged in to `account`: the sessions here that
        share a room with it get an `account` event (protocol.md §12.6), once."""
        if member.account is not None:
            return
        member.account = account
        event = pack({"type": "account", "nick": member.nick, "account": account, "ts": ts})
        for sid in presence.sharing(self, member):
            if sid > 0:
                self.outbox[sid].append(event)

    def _remote_quit(self, member: Member, reason: str, ts: int) -> None:
        for node, members in self.remote.items():
            if members.get(p.nick_key(member.nick or "")) is member:
                del members[p.nick_key(member.nick or "")]
                if not members:
                    del self.remote[node]
                break
        self._leave_all(member, reason, ts)

    def _remote_gone(self, node: str, ts: int) -> None:
        for member in list(self.remote.get(node, {}).values()):
            self._remote_quit(member, "server lost", ts)

    def _remote_state(self, node: str, state: dict[str, list[str]], ts: int) -> None:
        """A host's whole membership: what differs from what we knew is a join, part,
        quit or nick change, as if we had seen each happen."""
        keys = {p.nick_key(nick): nick for nick in state}
        for member in list(self.remote.get(node, {}).values()):
            if p.nick_key(member.nick or "") not in keys:
                self._remote_quit(member, "quit", ts)
        for nick, rooms in state.items():
            member = self._remote(node, p.check_nick(nick))
            if member.nick != nick:
                self._remote_rename(node, member, nick, ts)
            for name in sorted(member.rooms - set(rooms)):
                self._leave(member, self.rooms[name], {"type": "part", "room": name,
                                                       "nick": nick, "reason": "", "ts": ts})
            for name in rooms:
                self._remote_join(member, p.check_room(name), ts)

    # ---- an upgrade: the next parent gets them as they are (chatd/handover.py) ----

    def remote_members(self) -> list[list[Any]]:
        return [[node, m.sid, m.token, m.nick, m.account, sorted(m.rooms)]
                for node, members in self.remote.items() for m in members.values()]

    def take_remote_members(self, handed: list[list[Any]]) -> None:
        low = -1
        for node, sid, token, nick, account, rooms in handed:
            member = Member(sid, token, nick, account=account)
            self.remote.setdefault(node, {})[p.nick_key(nick)] = member
            self.nicks.setdefault(p.nick_key(nick), member)
            for name in rooms:
                if name in self.rooms:  # (every room was handed over)
                    self.rooms[name].members[sid] = member
                    member.rooms.add(name)
            low = min(low, sid)
        self.remote_sids = itertools.count(low - 1, -1)
