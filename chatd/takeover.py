"""Takeover of a half-open session (protocol.md §2, "Taking over a session"; sans-I/O).

A client whose connection died without the server noticing (a laptop that slept, a NAT
that forgot the connection) would otherwise find its nick held by its own old session
until the ping deadline. Instead it reconnects with `hello.session` and `hello.resume`
from its previous `welcome`: its new session gets the old one's nick, rooms and direct
messages at once, nobody sees it leave or come back, and the old connection is closed
with the fatal `taken_over`.

Proof of ownership is the resume secret, not the session token: session tokens are
written in the server's logs and have only 64 bits. The secret has 128 random bits, was
sent to that client alone (never logged), is compared in constant time, and a new one
comes with each `welcome`, so a secret that was used once is worth nothing after. With
accounts, the new session must also be logged in to the account of the old one
(`same_owner`).

The parent trusts the new session with nothing but the secret: which session is taken
over is looked up by the token, and everything the new session gets is what the broker
held for the old one.
"""

from __future__ import annotations

import hmac
import secrets
from typing import TYPE_CHECKING, Any

from chatd import protocol as p
from chatd.moderation import Who

if TYPE_CHECKING:
    from chatd.broker import Broker, Member

SECRET_BYTES = 16  # 128 bits
REASON = "a new connection took over this session"


def new_secret() -> str:
    """A fresh resume secret (32 lower-case hex characters)."""
    return secrets.token_hex(SECRET_BYTES)


def proves(secret: str, claim: Any) -> bool:
    """Whether `claim` (hello.resume, any str) is `secret`, compared in constant time."""
    if not secret or not isinstance(claim, str):
        return False
    return hmac.compare_digest(secret.encode(), claim.encode())


def same_owner(old: Member, new: Member) -> bool:
    """A guest's session is taken over by a guest; an account's only by a session logged in
    to that account (before its hello): the secret alone does not move an account."""
    return old.account == new.account


def claimed(broker: Broker, new: Member, req: dict[str, Any]) -> Member | None:
    """The session `req` (a hello) may take over, or None: the hello names a live, welcomed
    session and proves it is its client."""
    token, claim = req.get("session"), req.get("resume")
    if not token or claim is None:
        return None
    # A scan, not an index kept beside `members`: a member counts however it got there
    # (attached, handed over by an upgrade, adopted). Only a hello that claims a session
    # pays for it, and each costs its connection a `cmd` token.
    old = next((m for m in broker.members.values() if m.token == token), None)
    if old is None or old is new or old.gone or old.nick is None:
        return None
    if not proves(old.resume, claim) or not same_owner(old, new):
        return None
    return old


def hand_over(broker: Broker, old: Member, new: Member) -> str:
    """Give `new` everything `old` held in the broker; `old` is gone (the parent closes its
    session: `broker.replaced`). Returns the nick. The rooms see nothing."""
    nick = old.nick
    assert nick is not None
    new.nick, new.rooms, old.rooms = nick, old.rooms, set()
    broker.nicks[p.nick_key(nick)] = new
    for name in new.rooms:
        members = broker.rooms[name].members
        del members[old.sid]
        members[new.sid] = new
    broker.history.handed_over(old.sid, new.sid, new.rooms)
    # A guest's room rights belong to its session (moderation.Who.principal): they move.
    # (Invitations may be to rooms it is not in, so every live room is asked.)
    if old.account is None:
        for room in broker.rooms.values():
            room.policy.moved(Who(nick, old.token), Who(nick, new.token))
    old.gone = True
    broker.directory.logged_out(old)  # (`new` is logged in to the same account, if any)
    old.resume = ""
    broker._remember(old.token, "taken_over", REASON)
    broker.outbox.pop(old.sid, None)  # it gets nothing more: the parent closes it
    broker.replaced.append((old.sid, new.token))
    return nick
