"""Slash-command parsing: one input line -> an action, or a UsageError (nothing sent).

The /help text is generated from COMMANDS, so usage strings live in one place.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from chatd.protocol import (
    MAX_AWAY,
    MAX_REASON,
    MAX_TOPIC,
    ProtocolError,
    check_line,
    check_nick,
    check_room,
)

from . import moderation
from .moderation import Moderate as Moderate


class UsageError(Exception):
    """A local error: the line is not a valid command; nothing is sent."""


@dataclass(frozen=True)
class Say:
    """Text for the current buffer (a room or a direct-message buffer)."""

    text: str
    action: bool = False


@dataclass(frozen=True)
class Join:
    room: str
    key: str | None = None  # a keyed room's key (protocol §14)


@dataclass(frozen=True)
class Part:
    room: str | None  # None: the current buffer
    reason: str = ""


@dataclass(frozen=True)
class Msg:
    nick: str
    text: str | None  # None: only open/switch to the direct-message buffer


@dataclass(frozen=True)
class Nick:
    nick: str


@dataclass(frozen=True)
class Topic:
    room: str | None  # None: the current room
    text: str | None  # None: show the topic; "" clears it


@dataclass(frozen=True)
class Who:
    room: str | None


@dataclass(frozen=True)
class Rooms:
    pass


@dataclass(frozen=True)
class History:
    count: int


@dataclass(frozen=True)
class Quit:
    reason: str = ""


@dataclass(frozen=True)
class Help:
    command: str | None = None


@dataclass(frozen=True)
class Switch:
    target: str  # a room, a nick (direct-message buffer) or a buffer number


@dataclass(frozen=True)
class Ignore:
    nick: str | None  # None: list the ignored nicks


@dataclass(frozen=True)
class Unignore:
    nick: str


@dataclass(frozen=True)
class Whois:
    nick: str


@dataclass(frozen=True)
class Clear:
    pass


@dataclass(frozen=True)
class Close:
    target: str | None  # None: the current buffer


@dataclass(frozen=True)
class Register:
    password: str | None = field(default=None, repr=False)  # None: the start-up one


@dataclass(frozen=True)
class Search:
    text: str | None  # None: stop searching (the highlight goes)


@dataclass(frozen=True)
class Away:
    message: str  # "": back


Action = (Say | Join | Part | Msg | Nick | Topic | Who | Rooms | History | Quit | Help | Switch
          | Ignore | Unignore | Whois | Clear | Close | Search | Moderate
          | Register | Away)

DEFAULT_HISTORY = 50
# /history N: the upper bound is the server's history page (welcome.limits), checked by
# Core; here only the syntax, ASCII digits (int() would take "²" or 5,000 digits and fail).
_COUNT = re.compile(r"[0-9]{1,9}")


def room_arg(arg: str) -> str:
    """Canonical room name; a missing leading '#' is added for convenience."""
    name = arg if arg.startswith("#") else "#" + arg
    try:
        return check_room(name)
    except ProtocolError as exc:
        raise UsageError(f"bad room name {arg!r}: {exc.message}") from None


def nick_arg(arg: str) -> str:
    try:
        return check_nick(arg)
    except ProtocolError as exc:
        raise UsageError(f"bad nick {arg!r}: {exc.message}") from None


def line_arg(value: str, field: str, limit: int) -> str:
    try:
        return check_line(value, field, limit)
    except ProtocolError as exc:
        raise UsageError(exc.message) from None


def _split(rest: str, n: int) -> list[str]:
    """Split off at most n words; the remainder (if any) is the last element."""
    return rest.split(None, n) if rest else []


def _join(rest: str) -> Action:
    words = rest.split()
    if len(words) not in (1, 2):
        raise UsageError("usage")
    return Join(room_arg(words[0]), words[1] if len(words) == 2 else None)


def _moderate(kind: str) -> Callable[[str], Action]:
    """/KIND [ROOM] ARGS: a moderation request (chat_client.moderation)."""
    def parse_moderation(rest: str) -> Action:
        room = None
        words = _split(rest, 1)
        if kind != "kill" and words and words[0].startswith("#"):
            room = room_arg(words.pop(0))
            rest = words[0] if words else ""
        args = rest.split()
        after = rest.split(None, 1)[1] if len(args) > 1 else ""
        try:
            if kind == "kill":
                if not args:
                    raise moderation.Usage("usage")
                return Moderate("kill", None, (("nick", nick_arg(args[0])),
                                               ("reason", line_arg(after, "reason",
                                                                   MAX_REASON))))
            return moderation.parse(kind, room, args, after)
        except moderation.Usage:
            raise UsageError("usage") from None
    return parse_moderation


def _part(rest: str) -> Action:
    words = _split(rest, 1)
    room = None
    if words and words[0].startswith("#"):
        room = room_arg(words.pop(0))
        rest = words[0] if words else ""
    return Part(room, line_arg(rest, "reason", MAX_REASON))


def _msg(rest: str) -> Action:
    words = _split(rest, 1)
    if not words:
        raise UsageError("usage")
    text = words[1] if len(words) > 1 else None
    return Msg(nick_arg(words[0]), text)


def _me(rest: str) -> Action:
    if not rest.strip():
        raise UsageError("usage")
    return Say(rest, action=True)


def _nick(rest: str) -> Action:
    words = rest.split()
    if len(words) != 1:
        raise UsageError("usage")
    return Nick(nick_arg(words[0]))


def _topic(rest: str) -> Action:
    room = None
    words = _split(rest, 1)
    if words and words[0].startswith("#"):
        room = room_arg(words.pop(0))
        rest = words[0] if words else ""
    if not rest:
        return Topic(room, None)
    text = "" if rest == "-" else rest
    return Topic(room, line_arg(text, "topic", MAX_TOPIC))


def _who(rest: str) -> Action:
    words = rest.split()
    if len(words) > 1:
        raise UsageError("usage")
    return Who(room_arg(words[0]) if words else None)


def _rooms(rest: str) -> Action:
    if rest.strip():
        raise UsageError("usage")
    return Rooms()


def _history(rest: str) -> Action:
    words = rest.split()
    if not words:
        return History(DEFAULT_HISTORY)
    if len(words) != 1 or not _COUNT.fullmatch(words[0]) or int(words[0]) < 1:
        raise UsageError("usage")
    return History(int(words[0]))


def _quit(rest: str) -> Action:
    return Quit(line_arg(rest.strip(), "reason", MAX_REASON))


def _help(rest: str) -> Action:
    words = rest.split()
    if len(words) > 1:
        raise UsageError("usage")
    if words:
        name = words[0].lstrip("/").lower()
        if name not in COMMANDS and name not in ALIASES:
            raise UsageError(f"no such command: /{name}")
        return Help(ALIASES.get(name, name))
    return Help()


def _switch(rest: str) -> Action:
    words = rest.split()
    if len(words) != 1:
        raise UsageError("usage")
    return Switch(words[0])


def _one_nick(rest: str) -> str:
    words = rest.split()
    if len(words) != 1:
        raise UsageError("usage")
    return nick_arg(words[0])


def _ignore(rest: str) -> Action:
    return Ignore(_one_nick(rest) if rest.strip() else None)


def _unignore(rest: str) -> Action:
    return Unignore(_one_nick(rest))


def _whois(rest: str) -> Action:
    return Whois(_one_nick(rest))


def _clear(rest: str) -> Action:
    if rest.strip():
        raise UsageError("usage")
    return Clear()


def _close(rest: str) -> Action:
    words = rest.split()
    if len(words) > 1:
        raise UsageError("usage")
    return Close(words[0] if words else None)


def _register(rest: str) -> Action:
    return Register(rest or None)  # a password may hold spaces: all of the rest


def _search(rest: str) -> Action:
    return Search(rest.strip() or None)


def _away(rest: str) -> Action:
    message = rest.strip()
    try:
        check_line(message, "away message", MAX_AWAY)
    except ProtocolError as exc:
        raise UsageError(exc.message) from None
    return Away(message)


def _back(rest: str) -> Action:
    if rest.strip():
        raise UsageError("usage")
    return Away("")


@dataclass(frozen=True)
class Spec:
    usage: str
    summary: str
    parse: Callable[[str], Action]


COMMANDS: dict[str, Spec] = {
    "join": Spec("/join ROOM [KEY]", "join ROOM (the '#' is optional) and switch to it; "
                 "KEY for a room that has one", _join),
    "part": Spec("/part [ROOM] [REASON]",
                 "leave ROOM (default: the current one); in a direct-message buffer, close it",
                 _part),
    "msg": Spec("/msg NICK [TEXT]",
                "send a direct message; without TEXT, open the direct-message buffer", _msg),
    "me": Spec("/me ACTION", "send an action to the current buffer ('* you ACTION')", _me),
    "nick": Spec("/nick NICK", "change your nick", _nick),
    "topic": Spec("/topic [ROOM] [TEXT|-]",
                  "show the topic, or set it to TEXT; '-' clears it", _topic),
    "who": Spec("/who [ROOM]", "list the members of ROOM (default: the current one)", _who),
    "rooms": Spec("/rooms", "list the rooms that have members", _rooms),
    "history": Spec("/history [N]",
                    f"fetch N older messages into this buffer (default {DEFAULT_HISTORY}, "
                    "at most the server's history page)", _history),
    "switch": Spec("/switch ROOM|NICK|N", "switch to a buffer by name or number (Tab "
                   "completes the name)", _switch),
    "close": Spec("/close [BUFFER]", "close a buffer (default: the current one), leaving "
                  "its room", _close),
    "clear": Spec("/clear", "clear the current buffer's screen (nothing comes back on "
                  "reconnect; /history fetches older messages again)", _clear),
    "search": Spec("/search [TEXT]", "find the newest line on screen or above containing TEXT "
                   "(any case); again for the one before; no TEXT ends the search "
                   "(Ctrl+R: as you type)", _search),
    "ignore": Spec("/ignore [NICK]", "hide NICK's messages, in rooms and direct; kept across "
                   "restarts; no NICK lists them", _ignore),
    "unignore": Spec("/unignore NICK", "show NICK's messages again", _unignore),
    "whois": Spec("/whois NICK", "the rooms you share with NICK, and whether NICK is away",
                  _whois),
    "op": Spec("/op [ROOM] NICK", "make NICK an operator of the room (operators only)",
               _moderate("op")),
    "deop": Spec("/deop [ROOM] NICK", "take operator status from NICK", _moderate("deop")),
    "kick": Spec("/kick [ROOM] NICK [REASON]", "remove NICK from the room (it may come "
                 "back: /ban keeps it out)", _moderate("kick")),
    "ban": Spec("/ban [ROOM] PATTERN|account:NAME [30s|10m|2h|7d] [REASON]", "keep whoever "
                "matches out of the room and silent in it (* and ? in a nick pattern), for a "
                "while or for good", _moderate("ban")),
    "unban": Spec("/unban [ROOM] PATTERN|account:NAME", "lift a ban", _moderate("unban")),
    "mute": Spec("/mute [ROOM] PATTERN|account:NAME [DURATION] [REASON]", "keep whoever "
                 "matches silent in the room", _moderate("mute")),
    "unmute": Spec("/unmute [ROOM] PATTERN|account:NAME", "lift a mute", _moderate("unmute")),
    "invite": Spec("/invite [ROOM] NICK", "let NICK in once, past invite-only and the key",
                   _moderate("invite")),
    "mode": Spec("/mode [ROOM] [+i|-i] [+t|-t] [+k KEY|-k]", "show the room's modes, or set "
                 "them: invite-only, topic lock, key", _moderate("mode")),
    "bans": Spec("/bans [ROOM]", "list the room's bans and mutes", _moderate("bans")),
    "kill": Spec("/kill NICK [REASON]", "end NICK's session (server operators only)",
                 _moderate("kill")),
    "register": Spec("/register [PASSWORD]", "make your nick an account with PASSWORD "
                     "(default: the one given at start-up); later runs log in with "
                     "--account; the password never leaves the client", _register),
    "away": Spec("/away [MESSAGE]", "mark yourself away with MESSAGE, for everyone in "
                 "your rooms to see; no MESSAGE: back", _away),
    "back": Spec("/back", "no longer away (as /away without a message)", _back),
    "quit": Spec("/quit [REASON]", "disconnect and exit", _quit),
    "help": Spec("/help [COMMAND]", "show this help, or the usage of COMMAND", _help),
}
ALIASES = {"j": "join", "exit": "quit", "query": "msg", "leave": "part"}
# Commands other clients have that this one cannot honestly offer yet: typing one says why.
UNSUPPORTED: dict[str, str] = {}


def command_names() -> list[str]:
    return sorted(COMMANDS)


def parse(line: str) -> Action:
    """Parse one input line. Raises UsageError for unknown commands or bad usage.

    A line starting with '//' sends the rest, starting with '/', as plain text.
    """
    if not line.startswith("/") or line.startswith("//"):
        text = line[1:] if line.startswith("//") else line
        if not text.strip():
            raise UsageError("empty message")
        return Say(text)
    if "\n" in line:
        raise UsageError("a command must be a single line")
    name, _, rest = line[1:].partition(" ")
    key = ALIASES.get(name.lower(), name.lower())
    spec = COMMANDS.get(key)
    if spec is None and key in UNSUPPORTED:
        raise UsageError(f"/{key}: {UNSUPPORTED[key]}")
    if spec is None:
        raise UsageError(f"unknown command /{name} (try /help)")
    try:
        return spec.parse(rest.strip())
    except UsageError as exc:
        if str(exc) == "usage":
            raise UsageError(f"usage: {spec.usage}") from None
        raise


def help_lines(command: str | None = None) -> list[str]:
    if command is not None:
        spec = COMMANDS[command]
        return [f"{spec.usage}  -  {spec.summary}"]
    width = max(len(s.usage) for s in COMMANDS.values())
    lines = ["Commands (a line not starting with '/' is a message; '//' sends a literal '/'):"]
    lines += [f"  {s.usage:<{width}}  {s.summary}" for s in COMMANDS.values()]
    lines.append("Keys: PageUp/PageDown and the mouse wheel scroll, Ctrl+Home/Ctrl+End (Home/End")
    lines.append("      on an empty line) go to the top/bottom,")
    lines.append("      Alt+1..9 / Ctrl+N / Ctrl+P switch buffers, Alt+A goes to the buffer with")
    lines.append("      the most important activity (back where you were when none is left),")
    lines.append("      Ctrl+R searches the buffer as you type (again: older; Enter stays,")
    lines.append("      Ctrl+G goes back), Tab completes, Up/Down input history,")
    lines.append("      Alt+Enter inserts a newline, a pasted block is one multi-line message,")
    lines.append("      Ctrl-C / Ctrl-D exit (with a typed line, Ctrl-C asks first).")
    lines.append("      The config file can change the keys: see the README.")
    return lines
