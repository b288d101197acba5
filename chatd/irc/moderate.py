"""IRC's channel MODE, KICK and INVITE on chatd's moderation (protocol.md §14, §13.4).

Each change becomes the native request (`op`, `ban`, `mode`, `kick`, ...); its `ack`
names the room's `moderation` event that follows (the same id), and that event, as every
other member gets it (chatd.irc.modlines), is the command's reply: one source of truth,
in its place among the client's commands. The lists are `b` (bans) and `q` (mutes, as
Ergo and InspIRCd name them); the flags `i`, `t` and the key `k`; `n` every room has.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from chatd.irc import render
from chatd.irc.lines import Line
from chatd.irc.messaging import plain
from chatd.irc.modlines import ROOM_MODES, ban_mask

if TYPE_CHECKING:
    from chatd.irc.frontend import IrcFrontEnd, Reply

Frame = dict[str, Any]
_LIST_END = {"b": ("368", "End of channel ban list"), "q": ("729", "End of channel quiet list"),
             "e": ("349", "End of channel exception list"),
             "I": ("347", "End of channel invite list")}
_LIST_ITEM = {"b": "367", "q": "728"}
_FLAGS = {"i": "invite_only", "t": "topic_lock"}
_WITH_ARG = "bqo"  # always take an argument (k only when set)


def entry_fields(mask: str) -> Frame:
    """An IRC ban mask as a §14 entry: `~a:NAME` (or `$a:NAME`) an account, else the nick
    part of `nick!user@host` (chatd shows no user or host: they are not matched)."""
    if mask[:3].lower() in ("~a:", "$a:"):
        return {"account": mask[3:]}
    return {"nick": mask.split("!", 1)[0] or "*"}


def _request(fe: IrcFrontEnd, reply: Reply, frame: Frame, target: str,
             nick: str = "", on_ack: Callable[[Frame], None] | None = None) -> None:
    """A change. Its ack announces its event (the same id), which the front end brings
    here: the change's lines (what every member gets) are its reply, in its place among
    the client's commands. Errors as numerics."""
    def on_frame(answer: Frame) -> bool:
        if answer["type"] == "ack":
            if on_ack is not None:
                on_ack(answer)
            return False  # its event comes next
        if answer["type"] != "moderation":
            return False
        reply.lines.extend(render.event(fe, answer))
        return True

    def on_error(error: Frame) -> list[Line]:
        if error.get("code") == "no_such_nick" and nick and frame["type"] != "invite":
            return [fe.num("441", nick, target, "They aren't on that channel")]
        return render.error(fe, error, reply.command, target)

    fe.request(reply, frame, on_frame, target, on_error)


def mode(fe: IrcFrontEnd, room: str, change: str, args: list[str], reply: Reply) -> bool:
    """MODE #room [change [args]] for a room you are in; False to leave it to the caller
    (a room you are not in)."""
    if room.lower() not in fe.rooms:
        return False
    if not change:
        _show(fe, reply, room)
        return True
    sign, rest = "+", list(args)
    todo: list[tuple[Frame, str]] = []
    flags: Frame = {}
    for letter in change:
        if letter in "+-":
            sign = letter
            continue
        if letter not in ROOM_MODES + "oeI":
            reply.lines.append(fe.num("472", letter, "is not a room mode chatd has"))
            return True
        arg = rest.pop(0) if (letter in _WITH_ARG or (letter == "k" and sign == "+")) \
            and rest else None
        if letter in "eI" or (letter in "bq" and arg is None):
            if letter in "bq":
                _list(fe, reply, room, letter)
            else:
                code, text = _LIST_END[letter]
                reply.lines.append(fe.num(code, room, text))  # chatd has none of these
        elif letter == "o":
            if arg is None:
                reply.lines.append(fe.num("461", "MODE", "Not enough parameters"))
                return True
            todo.append(({"type": "op" if sign == "+" else "deop", "room": room,
                          "nick": arg}, arg))
        elif letter in "bq":
            kind = ("ban" if letter == "b" else "mute") if sign == "+" else \
                ("unban" if letter == "b" else "unmute")
            todo.append(({"type": kind, "room": room, **entry_fields(arg or "")}, ""))
        elif letter == "k":
            if sign == "+" and arg is None:
                reply.lines.append(fe.num("461", "MODE", "Not enough parameters"))
                return True
            flags["key"] = arg if sign == "+" else ""
        elif letter in _FLAGS:
            flags[_FLAGS[letter]] = sign == "+"
        # n: every room has it; nothing to change
    if flags:
        todo.append(({"type": "mode", "room": room, **flags}, ""))
    for frame, nick in todo:
        _request(fe, reply, frame, room, nick)
    return True


def _show(fe: IrcFrontEnd, reply: Reply, room: str) -> None:
    def on_frame(frame: Frame) -> bool:
        if frame["type"] != "mode":
            return False
        modes = "+" + "".join(sorted("n" + ("i" if frame.get("invite_only") else "")
                                     + ("k" if frame.get("keyed") else "")
                                     + ("t" if frame.get("topic_lock") else "")))
        key = [str(frame["key"])] if isinstance(frame.get("key"), str) else []
        reply.lines.append(fe.num("324", str(frame.get("room", room)), modes, *key))
        return True

    fe.request(reply, {"type": "mode", "room": room}, on_frame, room)


def _list(fe: IrcFrontEnd, reply: Reply, room: str, letter: str) -> None:
    """367/368 (bans) or 728/729 (mutes), from the native `bans` pages."""
    want = "ban" if letter == "b" else "mute"
    got: list[Frame] = []

    def ask() -> None:
        frame: Frame = {"type": "bans", "room": room}
        if got:
            frame["after"] = len(got)
        fe.request(reply, frame, on_frame, room)

    def on_frame(frame: Frame) -> bool:
        if frame["type"] != "bans":
            return False
        page = [e for e in frame.get("bans", []) if isinstance(e, dict)]
        got.extend(page)
        if frame.get("more") and page:
            ask()
            return True
        for e in got:
            if e.get("list") == want:
                params = [room, ban_mask(e)] if letter == "b" else [room, "q", ban_mask(e)]
                reply.lines.append(fe.num(_LIST_ITEM[letter], *params, str(e.get("by", "")),
                                          str(int(e.get("ts", 0)) // 1000)))
        code, text = _LIST_END[letter]
        reply.lines.append(fe.num(code, room, text) if letter == "b" else
                           fe.num(code, room, "q", text))
        return True

    ask()


def kick(fe: IrcFrontEnd, line: Line, reply: Reply) -> None:
    """KICK #room nick[,nick...] [:reason]"""
    room, reason = line.params[0], plain(line.param(2)) if line.param(2) else ""
    for nick in filter(None, line.params[1].split(",")):
        frame: Frame = {"type": "kick", "room": room, "nick": nick}
        if reason:
            frame["reason"] = reason
        _request(fe, reply, frame, room, nick)


def invite(fe: IrcFrontEnd, line: Line, reply: Reply) -> None:
    """INVITE nick #room: 341 once the native invite is acked."""
    nick, room = line.params[0], line.params[1]

    def on_ack(frame: Frame) -> None:
        reply.lines.append(fe.num("341", nick, str(frame.get("room", room)).lower()))

    _request(fe, reply, {"type": "invite", "room": room, "nick": nick}, room, on_ack=on_ack)
