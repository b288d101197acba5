"""Nicks in a cluster (sans-I/O; a part of ClusterBroker, chatd/cluster.py).

A nick is claimed in Redis (the NICK script, chatd/clusterscripts.py) before a session
is given it, by a hello or a nick request: Redis answers 1 (given), 0 (another host's
session has it) or 2 (an account owns it), and only then does the Broker's own code
carry the request out (`_claimed`). A rename Redis has not seen (a login: the account's
name) is told to it after the fact. A nick this host claimed for nothing (the session
went, or took another) is released.

While this host was cut off from Redis past its lease, another host may have given one
of its sessions' nicks away: the cluster's holder keeps it, and ours is renamed to a
spare (`_nick_lost`); an account's nick is never lost.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

from chatd import protocol as p
from chatd.broker import Member
from chatd.clusterlink import ClusterLink, Waiting, body
from chatd.config import Config
from chatd.protocol import ProtocolError, pack
from chatd.stores import HistoryStore

log = logging.getLogger("chatd.cluster")


class ClusterNicks(ClusterLink):
    def __init__(self, store: HistoryStore, config: Config) -> None:
        super().__init__(store, config)
        self.claiming: set[int] = set()  # sessions whose hello waits for Redis
        self._renaming: Member | None = None  # a rename Redis has agreed to already

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

