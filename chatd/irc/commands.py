"""IRC commands from the client: each becomes native requests, sent exactly as a native
client would send them (so the Session's checks, rate limits and deadlines apply), or an
answer given here when chatd has nothing to ask (CAP, MODE, WHOIS, ...).

PRIVMSG, NOTICE and client batches are in messaging.py, CHATHISTORY in chathistory.py,
the queries in queries.py, registration in welcome.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chatd import protocol as p
from chatd.irc import away, chathistory, messaging, queries, render, sasl, welcome
from chatd.irc.lines import Line
from chatd.irc.messaging import plain

if TYPE_CHECKING:
    from chatd.irc.frontend import IrcFrontEnd, Reply

Frame = dict[str, Any]
Handler = Callable[["IrcFrontEnd", Line, "Reply", float], None]


@dataclass(frozen=True, slots=True)
class Command:
    handler: Handler
    before_welcome: bool = False  # allowed before registration
    local: bool = False  # answered here: costs a token of the front end's own cmd bucket


# Commands whose answers change what the front end knows of the client's rooms and nick,
# and the commands answered from that knowledge: one of the latter sent behind one of the
# former (a bot's JOIN #a then MODE #a +k key, in one write) waits for its answers, so it
# is answered as if the client had waited too. The rest of the input waits behind it.
# So does every command that needs registration, sent while the native hello is out.
_CHANGING = frozenset({"JOIN", "PART", "NICK"})
_READING = frozenset({"MODE", "WHOIS", "WHO", "USERHOST", "CHATHISTORY"})


def must_wait(fe: IrcFrontEnd, line: Line) -> bool:
    """Whether `line` must wait for the answers to commands before it: the welcome, for a
    command sent right behind NICK and USER (a bot's NICK, USER, JOIN in one write), or
    the answers that change what it reads."""
    if fe.hello_pending and not fe.nick:
        command = COMMANDS.get(line.command)
        return command is None or not command.before_welcome
    reads = line.command in _READING or (line.command == "JOIN" and line.param(0) == "0")
    return reads and fe.changing(_CHANGING)


def dispatch(fe: IrcFrontEnd, line: Line, now: float) -> None:
    batch = "batch" in line.tags or line.command == "BATCH"  # client draft/multiline batches
    if batch and messaging.batch_line(fe, line, now):
        return
    command = COMMANDS.get(line.command)
    reply = fe.begin(line.command, line.tags)
    if command is None or (not command.before_welcome and not fe.nick):
        if fe.charge(line.command, now, reply):
            reply.lines.append(fe.num("451", "You have not registered") if not fe.nick
                               else fe.num("421", line.command, "Unknown command"))
        return
    if command.local and not fe.charge(line.command, now, reply):
        return
    command.handler(fe, line, reply, now)


def _need(fe: IrcFrontEnd, line: Line, reply: Reply, count: int) -> bool:
    if len(line.params) >= count and all(line.params[:count]):
        return True
    reply.lines.append(fe.num("461", line.command, "Not enough parameters"))
    return False


# ---- connection ----

def nick(fe: IrcFrontEnd, line: Line, reply: Reply, now: float) -> None:
    new = line.param(0)
    if not new:
        reply.lines.append(fe.num("431", "No nickname given"))
        return
    if not fe.nick:
        welcome.nick_before_welcome(fe, new, reply)
        return
    if new == fe.nick:  # IRC ignores a change to the same nick
        return

    def on_frame(frame: Frame) -> bool:
        if frame["type"] != "nick":
            return False
        reply.lines.append(render.own_nick(fe, str(frame.get("old", fe.me)),
                                           str(frame.get("new", new))))
        return True

    fe.request(reply, {"type": "nick", "nick": new}, on_frame, new)


def ping(fe: IrcFrontEnd, line: Line, reply: Reply, now: float) -> None:
    """Answered by the native ping, whose pong finds this command's place in the reply
    order: so PONG follows everything the client sent before the PING."""
    if not line.params:
        reply.lines.append(fe.num("409", "No origin specified"))
        return
    token = line.params[0]

    def on_frame(frame: Frame) -> bool:
        if frame["type"] != "pong":
            return False
        reply.lines.append(Line("PONG", [fe.server, token], fe.server))
        return True

    fe.request(reply, {"type": "ping", "token": token}, on_frame)


def pong(fe: IrcFrontEnd, line: Line, reply: Reply, now: float) -> None:
    token = line.params[-1] if line.params else ""  # PONG [server] :token
    frame: Frame = {"type": "pong"}
    if token:
        frame["token"] = int(token) if token.isdigit() and int(token) < 2**63 else token
    fe.send(frame)


def quit_(fe: IrcFrontEnd, line: Line, reply: Reply, now: float) -> None:
    reason = plain(line.param(0))
    fe.send({"type": "quit", "reason": reason} if reason else {"type": "quit"})
    fe.close(f"Quit: {render.line_text(reason)}" if reason else "Quit")


# ---- rooms ----

class _Join:
    """One room of a JOIN: the JOIN line and topic, the member list (paged with `who`
    when it does not fit one frame) and the join's history, written out in that order
    once the member list and the history have both come."""

    def __init__(self, fe: IrcFrontEnd, reply: Reply, name: str, key: str = "") -> None:
        self.fe, self.reply, self.name = fe, reply, name
        self.room: str | None = None
        self.head: list[Line] = []
        self.names: list[str] = []
        self.tail: list[Line] = []
        self.waiting = 2  # the member list and the history
        frame: Frame = {"type": "join", "room": name}
        if key:
            frame["key"] = key
        fe.request(reply, frame, self.on_join, name, self.on_error)

    def on_join(self, frame: Frame) -> bool:
        fe = self.fe
        if frame["type"] == "joined":
            room = self.room = str(frame.get("room", self.name))
            members = [str(n) for n in frame.get("members", [])]
            fe.rooms[room] = {p.nick_key(n): n for n in members}
            away.listed(fe, members, frame)
            self.head.append(render.join_line(fe, room, fe.me, fe.account))
            topic = render.line_text(frame.get("topic"))
            if topic:
                self.head.append(fe.num("332", room, topic))
            self._members(members, bool(frame.get("more")))
            return False
        if frame["type"] == "history":
            if frame.get("messages") and not fe.has("draft/chathistory"):  # else it asks
                self.tail += render.history(fe, self.room or self.name, frame)
            self._got()
            return True
        return False

    def on_error(self, frame: Frame) -> list[Line]:
        if self.room is None:  # not joined
            return render.error(self.fe, frame, "JOIN", self.name)
        self.tail.append(self.fe.fail("JOIN", str(frame.get("code", "")).upper(), self.room,
                                      text=render.line_text(frame.get("message"))))
        self._got()  # joined, without history (storage_unavailable)
        return []

    def _members(self, members: list[str], more: bool) -> None:
        self.names += members
        if not (more and members):
            self._got()
            return
        room = self.room or self.name

        def on_frame(frame: Frame) -> bool:
            if frame["type"] != "members":
                return False
            page = [str(n) for n in frame.get("members", [])]
            self.fe.rooms.setdefault(room, {}).update({p.nick_key(n): n for n in page})
            away.listed(self.fe, page, frame)
            self._members(page, bool(frame.get("more")))
            return True

        def on_error(frame: Frame) -> list[Line]:
            self.tail += render.error(self.fe, frame, "NAMES", room)
            self._got()
            return []

        self.fe.request(self.reply, {"type": "who", "room": room, "after": members[-1]},
                        on_frame, room, on_error)

    def _got(self) -> None:
        self.waiting -= 1
        if not self.waiting:
            room = self.room or self.name
            self.reply.lines += self.head + render.names(self.fe, room, self.names) + self.tail


def join(fe: IrcFrontEnd, line: Line, reply: Reply, now: float) -> None:
    if not _need(fe, line, reply, 1):
        return
    if line.params[0] == "0":  # JOIN 0: leave every room
        for room in sorted(fe.rooms):
            _part(fe, reply, room, "")
        return
    keys = line.param(1).split(",")
    for i, name in enumerate(line.params[0].split(",")):
        canon = name.lower()
        if name and (canon not in fe.rooms or canon in fe.parting):  # IRC ignores a JOIN of
            _Join(fe, reply, name, keys[i] if i < len(keys) else "")  # a room you are in


def part(fe: IrcFrontEnd, line: Line, reply: Reply, now: float) -> None:
    if _need(fe, line, reply, 1):
        for name in filter(None, line.params[0].split(",")):
            _part(fe, reply, name, plain(line.param(1)))


def _part(fe: IrcFrontEnd, reply: Reply, name: str, reason: str) -> None:
    key = name.lower()
    fe.parting[key] = fe.parting.get(key, 0) + 1

    def answered() -> None:
        left = fe.parting.pop(key, 1) - 1
        if left:
            fe.parting[key] = left

    def on_frame(frame: Frame) -> bool:
        if frame["type"] != "parted":
            return False
        answered()
        room = str(frame.get("room", name))
        fe.rooms.pop(room, None)
        away.forget_unshared(fe)
        reply.lines.append(Line("PART", [room, reason] if reason else [room], fe.mask(fe.me)))
        return True

    def on_error(frame: Frame) -> list[Line]:
        answered()
        return render.error(fe, frame, reply.command, name)

    frame: Frame = {"type": "part", "room": name}
    if reason:
        frame["reason"] = reason
    fe.request(reply, frame, on_frame, name, on_error)


def topic(fe: IrcFrontEnd, line: Line, reply: Reply, now: float) -> None:
    if not _need(fe, line, reply, 1):
        return
    name = line.params[0]
    setting = len(line.params) > 1

    def on_frame(frame: Frame) -> bool:
        if frame["type"] != "topic":
            return False
        room, text = str(frame.get("room", name)), render.line_text(frame.get("topic"))
        if setting:
            reply.lines.append(Line("TOPIC", [room, text], fe.mask(fe.me)))
        elif not text:
            reply.lines.append(fe.num("331", room, "No topic is set"))
        else:
            reply.lines.append(fe.num("332", room, text))
            by, ts = frame.get("by"), frame.get("ts")
            if isinstance(by, str) and isinstance(ts, int):
                reply.lines.append(fe.num("333", room, by, str(ts // 1000)))
        return True

    frame: Frame = {"type": "topic", "room": name}
    if setting:
        frame["topic"] = plain(line.params[1])
    fe.request(reply, frame, on_frame, name)


def _table() -> dict[str, Command]:
    early = {"CAP": Command(lambda fe, li, r, n: welcome.cap(fe, li, r), True, True),
             "PASS": Command(lambda fe, li, r, n: welcome.pass_(fe, li, r), True, True),
             "USER": Command(lambda fe, li, r, n: welcome.user(fe, li, r), True, True),
             "NICK": Command(nick, True), "PING": Command(ping, True),
             "PONG": Command(pong, True), "QUIT": Command(quit_, True),
             "AUTHENTICATE": Command(sasl.authenticate, True, True)}
    native = {"JOIN": join, "PART": part, "TOPIC": topic, "PRIVMSG": messaging.privmsg,
              "NOTICE": messaging.privmsg, "NAMES": queries.names, "LIST": queries.list_,
              "WHO": queries.who, "CHATHISTORY": chathistory.chathistory,
              "KICK": queries.kick, "INVITE": queries.invite,
              "AWAY": away.command}
    return {**early, **{k: Command(v) for k, v in native.items()},
            **{k: Command(v, local=True) for k, v in queries.LOCAL.items()},
            "TAGMSG": Command(messaging.tagmsg, local=True)}


COMMANDS = _table()
