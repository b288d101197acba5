"""IRC queries: NAMES, LIST and WHO #room page through the native `who` and `rooms`;
WHOIS, WHO nick, USERHOST, LUSERS and MOTD are answered here, from what chatd has (it has
no user modes: the replies say so with the numeric IRC has for it). MODE of a room, KICK
and INVITE are chatd's moderation (moderate.py); away status is away.py's.

WHOIS and WHO of a nick know the users who share a room with you (chatd has no request
that looks a user up); anyone else gets 401 ERR_NOSUCHNICK, which says so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from chatd import protocol as p
from chatd.irc import away, moderate, modlines, render, welcome
from chatd.irc.lines import Line

if TYPE_CHECKING:
    from chatd.irc.frontend import IrcFrontEnd, Reply

Frame = dict[str, Any]
ROOM_MODES = "n"  # every chatd room: only its members may send to it


def _members(fe: IrcFrontEnd, reply: Reply, name: str,
             done: Callable[[str, list[str]], list[Line]], failed: Callable[[], list[Line]],
             page: Callable[[list[str], Frame], None] | None = None) -> None:
    """Page through a room's members with native `who` (each page to `page`), then reply
    done(room, nicks)."""
    nicks: list[str] = []

    def ask(after: str | None) -> None:
        frame: Frame = {"type": "who", "room": name}
        if after is not None:
            frame["after"] = after
        fe.request(reply, frame, on_frame, name, on_error)

    def on_frame(frame: Frame) -> bool:
        if frame["type"] != "members":
            return False
        got = [str(n) for n in frame.get("members", [])]
        nicks.extend(got)
        if page is not None:
            page(got, frame)
        if frame.get("more") and got:
            ask(got[-1])
        else:
            reply.lines.extend(done(str(frame.get("room", name)), nicks))
        return True

    def on_error(frame: Frame) -> list[Line]:
        if frame.get("code") in ("no_such_room", "invalid_room"):
            return failed()  # IRC answers an empty or unknown channel with the end only
        return render.error(fe, frame, reply.command, name) + failed()

    ask(None)


def names(fe: IrcFrontEnd, line: Line, reply: Reply, now: float) -> None:
    if not line.params:
        reply.lines.append(fe.num("366", "*", "End of /NAMES list"))
        return
    for name in filter(None, line.params[0].split(",")):
        def end(name: str = name) -> list[Line]:
            return [fe.num("366", name, "End of /NAMES list")]

        _members(fe, reply, name, lambda room, nicks: render.names(fe, room, nicks), end)


def _who_line(fe: IrcFrontEnd, channel: str, nick: str) -> Line:
    # H (here) or G (gone: away); hop count 0 and the nick as real name.
    return fe.num("352", channel, "~u", fe.server, fe.server, nick, away.flag(fe, nick),
                  f"0 {nick}")


def who(fe: IrcFrontEnd, line: Line, reply: Reply, now: float) -> None:
    mask = line.param(0, "*") or "*"

    def end() -> list[Line]:
        return [fe.num("315", mask, "End of /WHO list")]

    if mask.startswith("#"):
        _members(fe, reply, mask, lambda room, nicks: [_who_line(fe, room, n)
                                                       for n in nicks] + end(), end,
                 lambda nicks, frame: away.listed(fe, nicks, frame))
        return
    if not fe.charge("WHO", now, reply):  # answered here, like the other local queries
        return
    known = find_nick(fe, mask)
    reply.lines += ([_who_line(fe, "*", known)] if known else []) + end()


def list_(fe: IrcFrontEnd, line: Line, reply: Reply, now: float) -> None:
    """Every room with members, from native `rooms` pages; LIST #a,#b keeps those only
    (other LIST conditions are not supported: ELIST is not advertised)."""
    wanted = {n.lower() for n in line.param(0).split(",") if n.startswith("#")} or None
    reply.lines.append(fe.num("321", "Channel", "Users  Name"))

    def ask(after: str | None) -> None:
        frame: Frame = {"type": "rooms"}
        if after is not None:
            frame["after"] = after
        fe.request(reply, frame, on_frame, "*",
                   lambda f: render.error(fe, f, "LIST", "*") + [end()])

    def on_frame(frame: Frame) -> bool:
        if frame["type"] != "rooms":
            return False
        rooms = [r for r in frame.get("rooms", []) if isinstance(r, dict)]
        for r in rooms:
            if wanted is None or r.get("room") in wanted:
                reply.lines.append(fe.num("322", str(r.get("room")), str(r.get("members", 0)),
                                          render.line_text(r.get("topic"))))
        if frame.get("more") and rooms:
            ask(str(rooms[-1].get("room")))
        else:
            reply.lines.append(end())
        return True

    def end() -> Line:
        return fe.num("323", "End of /LIST")

    ask(None)


def find_nick(fe: IrcFrontEnd, nick: str) -> str | None:
    """The spelling of `nick` (by chatd's key) if you or someone in your rooms has it."""
    if render.same_nick(nick, fe.nick):
        return fe.nick
    if not p.NICK_RE.match(nick):
        return None
    key = p.nick_key(nick)
    return next((m[key] for m in fe.rooms.values() if key in m), None)


def whois(fe: IrcFrontEnd, line: Line, reply: Reply, now: float) -> None:
    if not line.params:
        reply.lines.append(fe.num("431", "No nickname given"))
        return
    target = line.params[-1].split(",")[0]
    nick = find_nick(fe, target)
    if nick is None:
        reply.lines += [fe.num("401", target, "No such nick (WHOIS knows the users who share "
                                              "a room with you)"),
                        fe.num("318", target, "End of /WHOIS list")]
        return
    key = p.nick_key(nick)
    shared = sorted(room for room, members in fe.rooms.items() if key in members)
    reply.lines += [fe.num("311", nick, "~u", fe.server, "*", nick),
                    *render.packed(fe, "319", [nick], shared),
                    fe.num("312", nick, fe.server, "chatd"), *away.rpl_away(fe, nick),
                    *([fe.num("330", nick, fe.account, "is logged in as")]
                      if fe.account and nick == fe.nick else []),
                    fe.num("318", nick, "End of /WHOIS list")]


def userhost(fe: IrcFrontEnd, line: Line, reply: Reply, now: float) -> None:
    if not line.params:
        reply.lines.append(fe.num("461", "USERHOST", "Not enough parameters"))
        return
    found = [n for n in (find_nick(fe, t) for t in line.params[:5]) if n]
    reply.lines.append(fe.num("302", " ".join(f"{n}={'-' if away.flag(fe, n) == 'G' else '+'}"
                                              f"~u@{fe.server}" for n in found)))


def mode(fe: IrcFrontEnd, line: Line, reply: Reply, now: float) -> None:
    if not line.param(0):
        reply.lines.append(fe.num("461", "MODE", "Not enough parameters"))
        return
    target, change = line.params[0], line.param(1)
    if not target.startswith("#"):
        if not render.same_nick(target, fe.nick):
            reply.lines.append(fe.num("502", "Can't change or view modes of other users"))
        elif change:
            reply.lines.append(fe.num("501", "chatd has no user modes yet"))
        else:
            reply.lines.append(fe.num("221", "+"))
        return
    if moderate.mode(fe, target, change, line.params[2:], reply):
        return  # a room you are in: chatd's moderation (a room you are not in: below)
    unknown = [c for c in change if c not in modlines.ROOM_MODES + "oeI+-"]
    if unknown:
        reply.lines.append(fe.num("472", unknown[0], "is not a room mode chatd has"))
    elif change:  # a change or a list of a room you are not in
        reply.lines.append(fe.num("442", target, "You're not on that channel"))
    else:  # does the room exist? The native topic query says (no_such_room otherwise)
        def on_frame(frame: Frame) -> bool:
            if frame["type"] != "topic":
                return False
            reply.lines.append(fe.num("324", str(frame.get("room")), "+" + ROOM_MODES))
            return True

        fe.request(reply, {"type": "topic", "room": target}, on_frame, target)


def kick(fe: IrcFrontEnd, line: Line, reply: Reply, now: float) -> None:
    if len(line.params) < 2:
        reply.lines.append(fe.num("461", "KICK", "Not enough parameters"))
    else:
        moderate.kick(fe, line, reply)


def invite(fe: IrcFrontEnd, line: Line, reply: Reply, now: float) -> None:
    if len(line.params) < 2:
        reply.lines.append(fe.num("461", "INVITE", "Not enough parameters"))
    else:
        moderate.invite(fe, line, reply)


LOCAL = {
    "WHOIS": whois, "USERHOST": userhost, "MODE": mode,
    "LUSERS": lambda fe, line, reply, now: reply.lines.extend(welcome.lusers(fe)),
    "MOTD": lambda fe, line, reply, now: reply.lines.extend(welcome.motd(fe)),
}
