"""Moderation events (protocol.md §14) as IRC lines: KICK, MODE, INVITE (§13.4)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chatd import protocol as p
from chatd.irc.lines import Line

if TYPE_CHECKING:
    from chatd.irc.frontend import IrcFrontEnd

Frame = dict[str, Any]
CHANMODES = "bq,k,,int"  # ISUPPORT: list modes, the key, (none set with an argument), flags
ROOM_MODES = "bkinqt"  # for 004 (o is a privilege: PREFIX=(o)@)
# kind -> (IRC mode letter, sign) for the events that are a list change
LIST_MODES = {"op": ("o", "+"), "deop": ("o", "-"), "ban": ("b", "+"), "unban": ("b", "-"),
              "mute": ("q", "+"), "unmute": ("q", "-")}


def ban_mask(frame: Frame) -> str:
    """A ban or mute entry as an IRC mask: `pattern!*@*`, or `~a:account` (the extban
    Ergo and InspIRCd use for accounts)."""
    if "account" in frame:
        return f"~a:{frame['account']}"
    return f"{frame.get('nick', '*')}!*@*"


def lines(fe: IrcFrontEnd, frame: Frame, tags: dict[str, str], text: Any) -> list[Line]:
    """The lines of one `moderation` event; `text` makes a reason safe for a line."""
    room, kind = str(frame.get("room", "")), frame.get("kind")
    by = str(frame.get("by") or "")
    source = fe.mask(by) if by else fe.server
    nick = str(frame.get("nick", ""))
    if kind == "kick":
        members = fe.rooms.get(room)
        if members is not None:
            members.pop(p.nick_key(nick), None)
        if fe.nick is not None and p.nick_key(nick) == p.nick_key(fe.nick):
            fe.rooms.pop(room, None)
        return [Line("KICK", [room, nick, text(frame.get("reason")) or by], source, tags)]
    if kind in LIST_MODES:
        letter, sign = LIST_MODES[str(kind)]
        arg = nick if letter == "o" else ban_mask(frame)
        return [Line("MODE", [room, sign + letter, arg], source, tags, colon=False)]
    if kind == "mode":
        flags, args = "", []
        for field, letter in (("invite_only", "i"), ("keyed", "k"), ("topic_lock", "t")):
            if field in frame:
                flags += ("+" if frame[field] else "-") + letter
                if letter == "k":
                    args.append("*")  # the key itself is not told (§14.4)
        return [Line("MODE", [room, flags, *args], source, tags, colon=False)] if flags else []
    if kind == "invite":
        return [Line("NOTICE", [room, f"{by} invited {nick} to {room}"], fe.server, tags)]
    return []
