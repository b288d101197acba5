"""Who a session is, and the direct messages that belong to it (sans-I/O; in the parent).

Direct messages belong to identities (chatd.store.identity), not to nicks:

* a session logged in to an account is the account ("@" and the key of its name): every
  session of the account gets the account's direct messages, its own sent ones included
  (phone and laptop), and a message to an account is accepted while none is online: it
  waits in the history for `history direct` (protocol.md §12.5);
* a guest is the nick it holds, while it holds it (as before accounts): so a guest's
  direct messages are only as private as its nick. Owned nicks are what make a name
  private: no guest can ever hold one (the broker refuses it up front, `nick_owned`).

The directory also keeps which nicks accounts own (a copy of the store's `owned` table,
itself following the registrations the auth helper reports) and which sessions are
logged in to each account.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from chatd import presence
from chatd import protocol as p
from chatd.protocol import ProtocolError, pack
from chatd.store import dm_pair, identity

if TYPE_CHECKING:
    from chatd.broker import Broker, Member


def account_of(member: Member) -> dict[str, Any]:
    """`{"account": name}` for a logged-in member (to add to a frame about it: a message,
    a join), else {}."""
    return {"account": member.account} if member.account is not None else {}


class Directory:
    def __init__(self, owned: dict[str, str]) -> None:
        self.owned = owned  # nick key -> the name of the account that owns it
        self.sessions: dict[str, list[Member]] = {}  # account key -> its sessions online

    def owner(self, nick: str) -> str | None:
        return self.owned.get(p.nick_key(nick))

    def ident(self, member: Member) -> str:
        return identity(member.nick or "", member.account)

    def peer(self, nick: str) -> str:
        """The identity that direct messages to `nick` go to: its owner's, or the guest's."""
        key = p.nick_key(nick)
        return "@" + key if key in self.owned else key

    def logged_in(self, member: Member, name: str) -> None:
        member.account = name
        self.owned[p.nick_key(name)] = name
        self.sessions.setdefault(p.nick_key(name), []).append(member)

    def logged_out(self, member: Member) -> None:
        """The session is gone."""
        if member.account is None:
            return
        key = p.nick_key(member.account)
        others = [m for m in self.sessions.get(key, ()) if m is not member]
        if others:
            self.sessions[key] = others
        else:
            self.sessions.pop(key, None)

    def of_account(self, member: Member) -> list[Member]:
        """The sessions of `member`'s account (just `member` for a guest)."""
        if member.account is None:
            return [member]
        return self.sessions.get(p.nick_key(member.account), [member])

    def other_session(self, member: Member) -> Member | None:
        """Another session of `member`'s account, if one is online."""
        return next((m for m in self.of_account(member) if m is not member), None)

    @staticmethod
    def present(members: dict[int, Member], member: Member) -> bool:
        """Whether another session of `member`'s account is among `members` (a room
        shows an account as one member: one join, one part)."""
        return member.account is not None and any(
            m is not member and m.account == member.account for m in members.values())

    def drop_nick(self, nicks: dict[str, Member], member: Member) -> None:
        """`member` no longer holds its nick; another session of its account takes it on."""
        key = p.nick_key(member.nick or "")
        if nicks.get(key) is member:
            other = self.other_session(member)
            if other is not None and other.nick == member.nick:
                nicks[key] = other
            else:
                del nicks[key]

    # ---- direct messages ----

    def send(self, b: Broker, member: Member, req: dict[str, Any], text: str, action: bool,
             label: Any, now_ms: int) -> None:
        """A `msg` with `to`: stored between the two identities, then delivered to every
        session of each (the sender's own sessions see what it sent)."""
        nick = member.nick
        assert nick is not None
        key = p.nick_key(p.check_nick(req["to"]))
        account = self.owned.get(key)
        targets: list[Member]
        if account is not None:
            dst, shown = "@" + key, account
            targets = self.sessions.get(key, [])
        else:
            target = b.nicks.get(key)
            if target is None or target.nick is None:
                raise ProtocolError("no_such_nick", f"nobody is called {req['to']!r}")
            dst, shown, targets = key, target.nick, [target]
        msg_id = b.store.add_message(now_ms, nick, text, action, target=shown,
                                     src=self.ident(member), dst=dst, account=member.account)
        b.history.posted(msg_id)
        ack_data = b._reply(member, {"type": "ack", "id": msg_id, "ts": now_ms,
                                     "to": shown, **presence.of_all(targets)}, label)
        data = pack({"type": "message", "id": msg_id, "ts": now_ms, "to": shown,
                     "from": nick, "text": text, "action": action, **account_of(member)})
        for sid in _unique(m.sid for m in (member, *self.of_account(member), *targets)):
            b.outbox[sid].append(data)
        b._unsettled.append((label, ack_data, data, msg_id))

    def where(self, member: Member, req: dict[str, Any]) -> tuple[dict[str, Any],
                                                                  dict[str, Any]]:
        """A `history` request's direct-message query and the fields of its reply."""
        me = self.ident(member)
        if req.get("direct"):
            return {"ident": me}, {"direct": True}
        other = p.check_nick(req["with"])
        return {"dm": dm_pair(me, self.peer(other))}, {"with": other}


def _unique(sids: Iterator[int]) -> list[int]:
    return list(dict.fromkeys(sids))
