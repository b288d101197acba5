"""Away status the IRC way (protocol.md §13.4, §13.7), on chatd's native `away`.

`AWAY :message` sets it (306 RPL_NOWAWAY), `AWAY` clears it (305 RPL_UNAWAY). The front
end keeps the away messages it has been told of (`fe.away`, by nick key): from member
lists (`joined`, `members`: their `away` map), `join` events, `away` events and the `ack`
of a direct message. From them come the `G` (gone) flag of WHO, 301 RPL_AWAY in WHOIS and
after a PRIVMSG to an away user, and, with `away-notify`, `AWAY` lines when someone in a
shared room goes away or comes back, or joins while away.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chatd import protocol as p
from chatd.irc.lines import Line

if TYPE_CHECKING:
    from chatd.irc.frontend import IrcFrontEnd, Reply

Frame = dict[str, Any]


def command(fe: IrcFrontEnd, line: Line, reply: Reply, now: float) -> None:
    message = line.param(0)

    def on_frame(frame: Frame) -> bool:
        if frame["type"] != "away":
            return False
        if frame.get("message"):
            reply.lines.append(fe.num("306", "You have been marked as being away"))
        else:
            reply.lines.append(fe.num("305", "You are no longer marked as being away"))
        return True

    fe.request(reply, {"type": "away", "message": message} if message else {"type": "away"},
               on_frame)


def _note(fe: IrcFrontEnd, nick: str, message: Any) -> None:
    if isinstance(message, str) and message:
        fe.away[p.nick_key(nick)] = message
    else:
        fe.away.pop(p.nick_key(nick), None)


def _line(fe: IrcFrontEnd, nick: str, message: str, tags: dict[str, str]) -> Line:
    text = p.safe_text(message, multiline=False)
    return Line("AWAY", [text] if text else [], fe.mask(nick), tags)


def changed(fe: IrcFrontEnd, nick: str, frame: Frame, tags: dict[str, str]) -> list[Line]:
    """An `away` event: someone in a shared room went away or came back."""
    _note(fe, nick, frame.get("message"))
    return [_line(fe, nick, fe.away.get(p.nick_key(nick), ""), tags)
            ] if fe.has("away-notify") else []


def joined(fe: IrcFrontEnd, nick: str, frame: Frame, tags: dict[str, str]) -> list[Line]:
    """A `join` event: the joiner's away message, if any, follows its JOIN (away-notify)."""
    _note(fe, nick, frame.get("away"))
    message = fe.away.get(p.nick_key(nick))
    return [_line(fe, nick, message, tags)] if message and fe.has("away-notify") else []


def listed(fe: IrcFrontEnd, nicks: list[str], frame: Frame) -> None:
    """A page of a member list: its nicks are away as its `away` map says, or here."""
    away = frame.get("away")
    away = away if isinstance(away, dict) else {}
    for nick in nicks:
        _note(fe, nick, away.get(nick))


def renamed(fe: IrcFrontEnd, old: str, new: str) -> None:
    message = fe.away.pop(p.nick_key(old), None)
    if message is not None:
        fe.away[p.nick_key(new)] = message


def flag(fe: IrcFrontEnd, nick: str) -> str:
    """WHO's H (here) or G (gone)."""
    return "G" if p.nick_key(nick) in fe.away else "H"


def rpl_away(fe: IrcFrontEnd, nick: str) -> list[Line]:
    """WHOIS's 301 RPL_AWAY, when `nick` is away."""
    message = fe.away.get(p.nick_key(nick))
    return [fe.num("301", nick, p.safe_text(message, multiline=False))] if message else []


def acked(fe: IrcFrontEnd, reply: Reply, frame: Frame) -> None:
    """The `ack` of a direct message names the recipient's away message: 301 RPL_AWAY
    (not kept: the recipient need not share a room with us)."""
    to, message = frame.get("to"), frame.get("away")
    if isinstance(to, str) and isinstance(message, str) and message:
        reply.lines.append(fe.num("301", to, p.safe_text(message, multiline=False)))


def forget_unshared(fe: IrcFrontEnd) -> None:
    """After leaving a room: only users who share a room with us are kept."""
    shared = set().union(*fe.rooms.values())
    for key in [k for k in fe.away if k not in shared]:
        del fe.away[key]
