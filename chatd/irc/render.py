"""Native frames as IRC lines: the server side of the translation.

Text from the native side is shown by chatd's own rule (protocol.md §3, `safe_text`): what
a native client would see as U+FFFD is U+FFFD here too, so no stored text can put a CR, LF
or formatting code on an IRC line. Every line fits MAX_LINE bytes: messages are split on
UTF-8 boundaries (or sent as one draft/multiline batch), lists are packed into several
numerics, and a last parameter that still cannot fit (a long topic in a numeric) is cut.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from chatd import protocol as p
from chatd.irc import away, modlines
from chatd.irc.lines import MAX_LINE, Line, plain_line, serialise, split_utf8

if TYPE_CHECKING:
    from chatd.irc.frontend import IrcFrontEnd

Frame = dict[str, Any]
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-]{0,62}\Z")
_MESSAGE_COMMANDS = ("PRIVMSG", "NOTICE", "BATCH")


def host_name(name: str) -> str:
    """The server's name as an IRC source and host: a host name, else "chatd"."""
    return name if _HOST.match(name) else "chatd"


def time_tag(ms: int) -> str:
    """server-time's format, in UTC whatever the local zone: 2025-01-02T03:04:05.678Z."""
    seconds, millis = divmod(int(ms), 1000)
    return f"{_second(seconds)}.{millis:03d}Z"


@lru_cache(maxsize=64)  # a burst's messages share their second: strftime once for them all
def _second(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def parse_time(value: str) -> int | None:
    """A server-time timestamp as milliseconds since the epoch, or None."""
    match = re.fullmatch(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,3}))?Z", value)
    if not match:
        return None
    year, month, day, hour, minute, second = map(int, match.groups()[:6])
    try:
        when = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        return None
    return int(when.timestamp()) * 1000 + int((match.group(7) or "0").ljust(3, "0"))


def _tags(fe: IrcFrontEnd, ts: Any = None, msgid: Any = None, account: Any = None
          ) -> dict[str, str]:
    tags: dict[str, str] = {}
    caps = fe.caps
    if isinstance(ts, int) and "server-time" in caps:
        tags["time"] = time_tag(ts)
    if msgid is not None and "message-tags" in caps:
        tags["msgid"] = str(msgid)
    if isinstance(account, str) and account and "account-tag" in caps:
        tags["account"] = account
    return tags


def batch_line(source: str, ref: str, *params: str, tags: dict[str, str] | None = None
               ) -> Line:
    """BATCH +ref type params / BATCH -ref."""
    return Line("BATCH", [ref, *params], source, tags or {}, colon=False)


def line_text(text: Any) -> str:
    """A one-line field (topic, reason, motd line) as it may be shown."""
    return p.safe_text(text, multiline=False) if isinstance(text, str) else ""


def same_nick(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and p.nick_key(a) == p.nick_key(b)


# ---- messages ----

def message(fe: IrcFrontEnd, msg: Frame, batch: str | None = None) -> list[Line]:
    """A native `message` as PRIVMSG lines: one per line of text, each cut to fit; or one
    draft/multiline batch where negotiated. An action is a CTCP ACTION on every line."""
    source, target, text = _parts(fe, msg)
    action = msg.get("action") is True
    tags = _tags(fe, msg.get("ts"), msg.get("id"), msg.get("account"))
    outer = {"batch": batch} if batch else {}
    budget = MAX_LINE - len(f":{source} PRIVMSG {target} :\r\n".encode()) - (9 if action else 0)
    rows = text.split("\n")
    if (not action and fe.has("draft/multiline") and fe.has("batch")
            and (len(rows) > 1 or len(text.encode()) > budget)):
        ref = fe.new_batch()
        out = [batch_line(source, "+" + ref, "draft/multiline", target, tags={**tags, **outer})]
        for row in rows:
            for i, piece in enumerate(split_utf8(row, budget)):
                concat = {"draft/multiline-concat": ""} if i else {}
                out.append(Line("PRIVMSG", [target, piece], source, {"batch": ref, **concat}))
        out.append(batch_line(fe.server, "-" + ref, tags=dict(outer)))
        return out
    out = []
    for row in rows:
        if not row.strip():  # blank lines only go to multiline clients (the spec says so)
            continue
        for piece in split_utf8(row, budget):
            body = f"\x01ACTION {piece}\x01" if action else piece
            out.append(Line("PRIVMSG", [target, body], source, {**tags, **outer}))
            tags.pop("msgid", None)  # a message id names the first line only
    return out


def _parts(fe: IrcFrontEnd, msg: Frame) -> tuple[str, str, str]:
    """A message's source mask, target (the room, else the peer of our own message, else
    us) and text as it may be shown (several lines maybe)."""
    sender = str(msg.get("from", ""))
    if "room" in msg:
        target = str(msg["room"])
    elif same_nick(sender, fe.nick):
        target = str(msg.get("to", ""))
    else:
        target = fe.me
    return fe.mask(sender), target, p.safe_text(str(msg.get("text", "")), multiline=True)


def message_line(fe: IrcFrontEnd, msg: Frame) -> bytes | None:
    """message()'s common case already on the wire, for the per-delivery path: not an
    action, one line of text that fits one PRIVMSG. None when it is not that case (the
    caller renders message() then); else the same bytes as serialising its one line."""
    if msg.get("action") is True:
        return None
    source, target, text = _parts(fe, msg)
    if "\n" in text or not text.strip():
        return None
    budget = MAX_LINE - len(f":{source} PRIVMSG {target} :\r\n".encode())
    if len(text.encode()) > budget or budget < 4:  # split_utf8's cases
        return None
    tags = _tags(fe, msg.get("ts"), msg.get("id"), msg.get("account"))
    return plain_line("PRIVMSG", source, target, text, tags)


# ---- events: frames that answer no request ----

def event(fe: IrcFrontEnd, frame: Frame) -> list[Line]:
    """An unsolicited native frame as lines, keeping fe.rooms current."""
    kind = frame.get("type")
    if kind == "message":
        return message(fe, frame)
    tags = _tags(fe, frame.get("ts"))
    room, nick = str(frame.get("room", "")), str(frame.get("nick", ""))
    members = fe.rooms.get(room)
    if kind == "join":
        if members is not None:
            members[p.nick_key(nick)] = nick
        return [join_line(fe, room, nick, frame.get("account"), tags),
                *away.joined(fe, nick, frame, tags)]
    if kind == "account":  # someone in a room with us logged in (account-notify)
        account = line_text(frame.get("account")) or "*"
        return [Line("ACCOUNT", [account], fe.mask(nick), tags, colon=False)] \
            if fe.has("account-notify") else []
    if kind == "away":
        return away.changed(fe, nick, frame, tags)
    if kind == "part":
        if members is not None:
            members.pop(p.nick_key(nick), None)
        reason = line_text(frame.get("reason"))
        return [Line("PART", [room, reason] if reason else [room], fe.mask(nick), tags)]
    if kind == "quit":
        if members is not None:
            members.pop(p.nick_key(nick), None)
        fe.away.pop(p.nick_key(nick), None)
        # One native event per shared room, one IRC QUIT: sent once it has left them all.
        if any(p.nick_key(nick) in m for m in fe.rooms.values()):
            return []
        if not fe.once(("quit", nick, frame.get("ts"))):
            return []
        return [Line("QUIT", [line_text(frame.get("reason")) or "quit"], fe.mask(nick), tags)]
    if kind == "nick" and "room" not in frame:  # ours, unasked: a login after the welcome
        return [own_nick(fe, str(frame.get("old", fe.me)), str(frame.get("new", "")), tags)]
    if kind == "nick":
        old, new = str(frame.get("old", "")), str(frame.get("new", ""))
        if members is not None and members.get(p.nick_key(old)) == old:
            del members[p.nick_key(old)]
            members[p.nick_key(new)] = new
        away.renamed(fe, old, new)
        if any(m.get(p.nick_key(old)) == old for m in fe.rooms.values()):
            return []  # a shared room still has the old spelling: its event comes next
        if not fe.once(("nick", old, new, frame.get("ts"))):
            return []
        return [Line("NICK", [new], fe.mask(old), tags)]
    if kind == "topic":
        by = str(frame.get("by") or fe.server)
        return [Line("TOPIC", [room, line_text(frame.get("topic"))],
                     fe.mask(by) if frame.get("by") else fe.server, tags)]
    if kind == "moderation":
        return modlines.lines(fe, frame, tags, line_text)
    if kind == "invited":
        by = str(frame.get("by") or "")
        return [Line("INVITE", [fe.nick or "*", room], fe.mask(by) if by else fe.server, tags,
                     colon=False)]
    if kind == "ping":
        return [Line("PING", [str(frame.get("token", ""))], fe.server)]
    if kind == "status":  # a cluster host's link to Redis (protocol.md §5 `status`)
        return [Line("NOTICE", [fe.me, line_text(frame.get("message"))], fe.server, tags)]
    if kind == "error":  # never unlabelled in practice: say it rather than lose it
        return [fe.fail("*", str(frame.get("code", "internal")).upper(),
                        text=line_text(frame.get("message")))]
    return []


def join_line(fe: IrcFrontEnd, room: str, nick: str, account: Any,
              tags: dict[str, str] | None = None) -> Line:
    """`nick` joins `room`; with extended-join, `JOIN #room <account or *> :<real name>`
    (the real name is the nick: chatd has no other); with account-tag, the account's."""
    tags = {**(tags or {}), **_tags(fe, account=account)}
    if not fe.has("extended-join"):
        return Line("JOIN", [room], fe.mask(nick), tags, colon=False)
    name = account if isinstance(account, str) and account else "*"
    return Line("JOIN", [room, name, nick], fe.mask(nick), tags)


def own_nick(fe: IrcFrontEnd, old: str, new: str, tags: dict[str, str] | None = None) -> Line:
    """Our own nick changed: fe.nick and our entry in the member lists follow."""
    fe.nick = new
    for members in fe.rooms.values():
        if members.pop(p.nick_key(old), None) is not None:
            members[p.nick_key(new)] = new
    return Line("NICK", [new], fe.mask(old), tags or {})


# ---- errors ----

def error(fe: IrcFrontEnd, frame: Frame, command: str, target: str) -> list[Line]:
    """A native error as the numeric an IRC client expects for `command` on `target`;
    FAIL (IRCv3 standard replies) where IRC has no numeric for it."""
    code = str(frame.get("code", "internal"))
    text = line_text(frame.get("message")) or code
    if code == "rate_limited":
        return [fe.num("263", command, text)]
    if code == "not_registered":
        return [fe.num("451", text)]
    if code == "already_registered":
        return [fe.num("462", text)]
    if code == "text_empty":
        return [fe.num("412", text)]
    messaging = command in _MESSAGE_COMMANDS
    numeric = {
        "nick_taken": "433",
        "nick_owned": "433",  # protocol.md §12: an account's nick
        "nick_locked": "902",  # ERR_NICKLOCKED: a logged-in session keeps its account's
        "invalid_nick": "401" if messaging else "432",
        "no_such_nick": "401",
        "invalid_room": "403",
        "no_such_room": "403",
        "not_in_room": "404" if messaging else "442",
        "too_many_rooms": "405",
        "text_too_long": "404",
        "invalid_value": "404" if messaging else "",
        # moderation (protocol.md §14)
        "not_operator": "482",  # ERR_CHANOPRIVSNEEDED
        "banned": "404" if messaging else "474",  # ERR_CANNOTSENDTOCHAN, ERR_BANNEDFROMCHAN
        "muted": "404",
        "invite_only": "473",  # ERR_INVITEONLYCHAN
        "bad_key": "475",  # ERR_BADCHANNELKEY
        "list_full": "478",  # ERR_BANLISTFULL
    }.get(code)
    if numeric:
        return [fe.num(numeric, target, text)]
    context = [target] if target != "*" else []
    return [fe.fail(command or "*", code.upper(), *context, text=text)]


# ---- labeled-response ----

def labelled(fe: IrcFrontEnd, label: str | None, lines: list[Line]) -> list[Line]:
    """A command's lines as one labelled response: the label on its only line or batch,
    ACK when there is nothing, else a labeled-response batch around them all."""
    if label is None:
        return lines
    if not lines:
        return [Line("ACK", [], fe.server, {"label": label})]
    first, last = lines[0], lines[-1]
    one_batch = (len(lines) > 1 and first.command == "BATCH" and "batch" not in first.tags
                 and first.param(0).startswith("+") and last.command == "BATCH"
                 and last.params == ["-" + first.params[0][1:]]
                 and all("batch" in line.tags for line in lines[1:-1]))
    if len(lines) == 1 or one_batch or not fe.has("batch"):
        first.tags = {"label": label, **first.tags}
        return lines
    ref = fe.new_batch()
    for line in lines:
        if "batch" not in line.tags:
            line.tags = {**line.tags, "batch": ref}
    return [batch_line(fe.server, "+" + ref, "labeled-response", tags={"label": label}),
            *lines, batch_line(fe.server, "-" + ref)]


# ---- sizes ----

def packed(fe: IrcFrontEnd, code: str, params: list[str], items: list[str]) -> list[Line]:
    """Numerics `code` with `items` space-separated in the last parameter, as many per line
    as fit in MAX_LINE (none when there are no items)."""
    base = len(serialise(fe.num(code, *params, "x"))) - 1
    out: list[Line] = []
    chunk: list[str] = []
    size = base
    for item in items:
        extra = len(item.encode()) + (1 if chunk else 0)
        if chunk and size + extra > MAX_LINE:
            out.append(fe.num(code, *params, " ".join(chunk)))
            chunk, size, extra = [], base, len(item.encode())
        chunk.append(item)
        size += extra
    if chunk:
        out.append(fe.num(code, *params, " ".join(chunk)))
    return out


def fit(line: Line, data: bytes) -> bytes:
    """`data` (the serialised line) with its last parameter cut, on a character boundary,
    until the line without its tags is within MAX_LINE."""
    while True:
        body = len(serialise(Line(line.command, line.params, line.source, colon=line.colon)))
        if body <= MAX_LINE:
            return data
        last = line.params[-1].encode()
        keep = max(0, len(last) - (body - MAX_LINE))
        while keep and last[keep] & 0xC0 == 0x80:
            keep -= 1
        line.params[-1] = last[:keep].decode()
        data = serialise(line)
        if not last[:keep]:
            return data


# ---- lists ----

def names(fe: IrcFrontEnd, room: str, nicks: list[str]) -> list[Line]:
    """353 RPL_NAMREPLY lines (nick!user@host with userhost-in-names) and 366."""
    items = [fe.mask(n) if fe.has("userhost-in-names") else n for n in nicks]
    return [*packed(fe, "353", ["=", room], items), fe.num("366", room, "End of /NAMES list")]


def history(fe: IrcFrontEnd, target: str, frame: Frame) -> list[Line]:
    """A native `history` reply as a `chathistory` batch (plain lines without `batch`)."""
    messages = [m for m in frame.get("messages", [])
                if isinstance(m, dict) and m.get("type") == "message"]
    if not fe.has("batch"):
        return [line for msg in messages for line in message(fe, msg)]
    ref = fe.new_batch()
    body = [line for msg in messages for line in message(fe, msg, ref)]
    return [batch_line(fe.server, "+" + ref, "chathistory", target), *body,
            batch_line(fe.server, "-" + ref)]
