"""Away status (sans-I/O, in the parent): who is away, with what message, and who is told.

A session's away message lives on its broker `Member` (`away`, "" while it is here). The
`away` request sets or clears it (protocol.md §4): the setter gets an `away` frame with
its label, and every other session that shares a room with it gets one `away` event,
however many rooms they share, only when the status changed. Whoever meets an away user
later learns it where the user is listed: member lists (`joined`, `members`) carry an
`away` map of the members they list, a `join` event the joiner's message, and the `ack`
of a direct message the recipient's (IRC's RPL_AWAY).

The broker's hooks are one call each; everything about away is here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgpack

from chatd import protocol as p

if TYPE_CHECKING:
    from chatd.broker import Broker, Member

Frame = dict[str, Any]
# What an `away` map costs a member-list page beyond its entries: the key "away" and the
# map's header (at most 5 bytes).
MAP_RESERVE = len(msgpack.packb("away")) + 5


def set_away(broker: Broker, member: Member, req: Frame, label: Any, now_ms: int) -> None:
    message = p.check_line(req.get("message", ""), "message", p.MAX_AWAY)
    if not message.strip():
        message = ""  # no message, or only blanks: back
    frame: Frame = {"type": "away", "nick": member.nick, "message": message, "ts": now_ms}
    if message != member.away:
        member.away = message
        data = p.pack(frame)
        for sid in sharing(broker, member):
            broker.outbox[sid].append(data)
    if label is not None:
        frame["label"] = label
    broker.outbox[member.sid].append(p.pack(frame))


def sharing(broker: Broker, member: Member) -> set[int]:
    """The other sessions in a room with `member`."""
    sids: set[int] = set()
    for name in member.rooms:
        sids.update(broker.rooms[name].members)
    sids.discard(member.sid)
    return sids


def of(member: Member) -> Frame:
    """`{"away": message}` for an away member (to add to a frame about it), else {}."""
    return {"away": member.away} if member.away else {}


def of_all(sessions: list[Member]) -> Frame:
    """The same for a recipient with several sessions (an account's): away when every
    session online is."""
    if sessions and all(m.away for m in sessions):
        return of(sessions[0])
    return {}


class Notes:
    """The `away` map of one member-list page: `cost()` each nick as the page takes it
    (what its entry in the map adds to the page), then `add_to()` the frame for the nicks
    the page kept."""

    def __init__(self, nicks: dict[str, Member]) -> None:
        self._nicks = nicks
        self._away: dict[str, str] = {}

    def cost(self, nick: str, budget: int) -> int:
        """The page's budget left once `nick`'s entry (if it is away) is paid for; the
        first entry also pays for the map's key and header."""
        holder = self._nicks.get(p.nick_key(nick))
        if holder is None or not holder.away:
            return budget
        if not self._away:
            budget -= MAP_RESERVE
        self._away[nick] = holder.away
        return budget - len(msgpack.packb(nick)) - len(msgpack.packb(holder.away))

    def add_to(self, frame: Frame, kept: list[str]) -> None:
        away = {nick: self._away[nick] for nick in kept if nick in self._away}
        if away:
            frame["away"] = away
