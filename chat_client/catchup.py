"""Catch-up points: for each conversation, the id up to which every message has arrived.

A room's conversation is the room. A direct-message conversation is the pair of nick keys
(mine, the peer's), because that is how the server keeps direct-message history (protocol.md
§9): what was sent to `dave` is fetched as `dave`, never as the `dave_` a reconnect may
have had to use meanwhile, and `dave_`'s messages do not move `dave`'s point.

A point only moves over messages known to be contiguous: a live message while the
conversation is caught up (`LIVE`), or the end of a catch-up page. While a catch-up is
under way (`FETCHING`) or due (`STALE`: after the connection was lost, a catch-up was
refused, or while another nick of ours receives the conversation's messages), live
messages are only remembered in `top`: the pages still to come are older. The point then
stays where the pages got to, so the next catch-up fetches the rest and nothing is skipped.

A point is `known` once a catch-up reached the live stream (or it was saved): from then on
a catch-up asks for what came `after` it even when it is 0, a room that had no messages
when it was joined, so what was said there meanwhile is fetched whole, as news.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# Direct-message conversations kept per nick (the most recent ones): each costs one
# `history` request per reconnect, and the server's history bucket is 100 deep by default,
# shared with up to 50 room joins.
MAX_DM_POINTS = 40


class State(enum.Enum):
    LIVE = "live"  # caught up: live messages follow on without a gap
    FETCHING = "fetching"  # catch-up pages are coming
    STALE = "stale"  # a catch-up is due


LIVE, FETCHING, STALE = State.LIVE, State.FETCHING, State.STALE


@dataclass
class Point:
    seen: int = 0  # every message up to this id has arrived: saved, and where catch-up starts
    top: int = 0  # the highest id that arrived
    state: State = LIVE  # a point nothing is known about yet starts live (its first message)
    known: bool = False  # followed from `seen` on: a catch-up asks `after` it, 0 included

    def got(self, msg_id: int) -> None:
        """A live message."""
        self.top = max(self.top, msg_id)
        if self.state == LIVE:
            self.seen = max(self.seen, msg_id)

    def start(self) -> None:
        self.state = FETCHING

    def page(self, last_id: int) -> None:
        """A catch-up page arrived; everything up to its last message is here."""
        self.top = max(self.top, last_id)
        self.seen = max(self.seen, last_id)

    def finish(self) -> None:
        """The catch-up reached the live stream."""
        self.state = LIVE
        self.seen = max(self.seen, self.top)
        self.known = True

    def stop(self) -> None:
        """Live messages may follow a gap until the next catch-up."""
        self.state = STALE


@dataclass
class DmPoint(Point):
    nick: str = ""  # the peer as last spelt: what a catch-up sends in `history.with`


class Points:
    def __init__(self, rooms: dict[str, int] | None = None,
                 dms: dict[str, dict[str, tuple[str, int]]] | None = None,
                 direct: dict[str, int] | None = None) -> None:
        self.rooms = {room: Point(seen, seen, STALE, known=True)
                      for room, seen in (rooms or {}).items()}
        # identity (an account's "@key", a guest nick's key) -> its point for `history
        # direct` (every direct message of the identity: accounts.py)
        self.direct = {me: Point(seen, seen, STALE) for me, seen in (direct or {}).items()}
        self.dms: dict[str, dict[str, DmPoint]] = {
            me: {peer: DmPoint(seen, seen, STALE, nick=nick)
                 for peer, (nick, seen) in peers.items()}
            for me, peers in (dms or {}).items()}

    def room(self, room: str) -> Point:
        return self.rooms.setdefault(room, Point())

    def dm(self, me: str, peer: str, nick: str) -> DmPoint:
        """The point of the conversation between nick keys `me` and `peer` (`nick` is the
        peer's spelling, remembered for the next catch-up)."""
        peers = self.dms.setdefault(me, {})
        point = peers.get(peer)
        if point is None:
            point = peers[peer] = DmPoint(nick=nick)
        else:
            point.nick = nick
        return point

    def known_dm(self, me: str, peer: str) -> bool:
        return peer in self.dms.get(me, {})

    def dms_of(self, me: str) -> dict[str, DmPoint]:
        return self.dms.get(me, {})

    def forget_room(self, room: str) -> None:
        self.rooms.pop(room, None)

    def stop_all(self) -> None:
        """The connection ended: every conversation needs a catch-up."""
        for point in [*self.rooms.values(), *self.direct.values()]:
            point.stop()
        for me in self.dms:
            self.stop_dms(me)

    def stop_dms(self, me: str) -> None:
        """We no longer hold nick key `me`: its direct messages go elsewhere until we do."""
        for point in self.dms.get(me, {}).values():
            point.stop()

    def saved_direct(self) -> dict[str, int]:
        """The `history direct` point of each identity, for the state file."""
        return {me: p.seen for me, p in self.direct.items() if p.seen}

    def saved(self) -> tuple[dict[str, int], dict[str, dict[str, tuple[str, int]]]]:
        """What to write to the state file: the `seen` of each conversation (the most
        recent MAX_DM_POINTS per nick)."""
        rooms = {room: p.seen for room, p in self.rooms.items() if p.seen or p.known}
        dms: dict[str, dict[str, tuple[str, int]]] = {}
        for me, peers in self.dms.items():
            recent = sorted(((p.seen, peer, p.nick) for peer, p in peers.items() if p.seen),
                            reverse=True)[:MAX_DM_POINTS]
            if recent:
                dms[me] = {peer: (nick, seen) for seen, peer, nick in recent}
        return rooms, dms
