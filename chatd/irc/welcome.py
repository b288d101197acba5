"""Registration: CAP negotiation, PASS/NICK/USER, the native hello, and the IRC welcome
burst (001-005, LUSERS, MOTD) built from the native `welcome` and its `limits`.

Capabilities are offered only where chatd has the concept behind them. chatd has no host
names or client-only tags, so `chghost` and `setname` are not offered, and
CLIENTTAGDENY=* says that client tags are not relayed. `sasl` is sasl.py's, on the native
`login` and `auth` (protocol.md §12); `account-tag`, `account-notify` and `extended-join`
render the accounts that native messages, joins and `account` events name (render.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chatd import protocol as p
from chatd.irc import modlines, render, sasl
from chatd.irc.lines import MAX_LINE, Line, split_utf8

if TYPE_CHECKING:
    from chatd.irc.frontend import IrcFrontEnd, Reply

VERSION = f"chatd-{p.VERSION}"
MAX_TARGETS = 4  # PRIVMSG/NOTICE targets per command (each is a native msg)
MULTILINE_LINES = 100  # lines in one client multiline batch (its bytes: max_text)
CHANNEL_LEN = 50  # '#' and 1-49 characters (protocol.md §3)
ISUPPORT_PER_LINE = 13


def cap_values(fe: IrcFrontEnd) -> dict[str, str]:
    """The capabilities offered, with their CAP LS 302 values."""
    return {
        "batch": "", "draft/chathistory": "",
        "draft/multiline": f"max-bytes={fe.limits['max_text']},max-lines={MULTILINE_LINES}",
        "account-notify": "", "account-tag": "", "away-notify": "", "echo-message": "",
        "extended-join": "", "labeled-response": "",
        "message-tags": "", "sasl": ",".join(sasl.mechanisms(fe)),
        "multi-prefix": "", "server-time": "", "userhost-in-names": "",
    }


def isupport(fe: IrcFrontEnd) -> list[str]:
    limits = fe.limits
    return [
        "CASEMAPPING=ascii", f"CHANLIMIT=#:{limits['max_rooms']}",
        f"CHANMODES={modlines.CHANMODES}",
        f"CHANNELLEN={CHANNEL_LEN}", "CHANTYPES=#", f"CHATHISTORY={limits['history_page']}",
        "CLIENTTAGDENY=*", "LINELEN=512", f"MAXTARGETS={MAX_TARGETS}", "MSGREFTYPES=msgid",
        f"NETWORK={fe.server}", f"NICKLEN={p.MAX_NICK}", "PREFIX=(o)@",
        f"TARGMAX=JOIN:,PART:,PRIVMSG:{MAX_TARGETS},NOTICE:{MAX_TARGETS},NAMES:,LIST:,"
        "WHO:1,WHOIS:1,KICK:1",
        f"TOPICLEN={p.MAX_TOPIC}", "UTF8ONLY",
    ]


# ---- CAP ----

def cap(fe: IrcFrontEnd, line: Line, reply: Reply) -> None:
    sub = line.param(0).upper()
    offered = cap_values(fe)
    if sub == "LS":
        if not fe.nick:
            fe.negotiating = True
        if line.param(1).isdigit() and int(line.param(1)) >= 302:
            fe.cap_302 = True
        # Values are for CAP LS 302 only; draft/multiline needs its value, sasl does not.
        items = [k + ("=" + v if v and fe.cap_302 else "") for k, v in offered.items()
                 if fe.cap_302 or not v or k == "sasl"]
        reply.lines += _cap_lines(fe, "LS", items)
    elif sub == "LIST":
        reply.lines += _cap_lines(fe, "LIST", sorted(fe.caps))
    elif sub == "REQ":
        if not fe.nick:
            fe.negotiating = True
        wanted = line.param(1).split()
        names = [w.removeprefix("-") for w in wanted]
        if all(name in offered for name in names) and wanted:
            for item in wanted:
                if item.startswith("-"):
                    fe.caps.discard(item[1:])
                else:
                    fe.caps.add(item)
            reply.lines.append(Line("CAP", [fe.me, "ACK", " ".join(wanted)], fe.server))
        else:
            reply.lines.append(Line("CAP", [fe.me, "NAK", line.param(1)], fe.server))
    elif sub == "END":
        fe.negotiating = False
        try_register(fe, reply)
    else:
        reply.lines.append(fe.num("410", sub or "*", "Invalid CAP command"))


def _cap_lines(fe: IrcFrontEnd, sub: str, items: list[str]) -> list[Line]:
    """CAP LS/LIST in as many lines as needed; a 302 client is told more follow ('*')."""
    budget = MAX_LINE - len(f":{fe.server} CAP {fe.me} {sub} * :\r\n")
    chunks: list[list[str]] = [[]]
    for item in items:
        if chunks[-1] and len(" ".join([*chunks[-1], item]).encode()) > budget:
            chunks.append([])
        chunks[-1].append(item)
    out = []
    for i, chunk in enumerate(chunks):
        more = ["*"] if fe.cap_302 and i < len(chunks) - 1 else []
        out.append(Line("CAP", [fe.me, sub, *more, " ".join(chunk)], fe.server))
    return out


# ---- PASS / NICK / USER ----

def pass_(fe: IrcFrontEnd, line: Line, reply: Reply) -> None:
    """chatd has no server password: PASS is accepted and changes nothing."""
    if fe.nick:
        reply.lines.append(fe.num("462", "You may not reregister"))
    elif not line.params:
        reply.lines.append(fe.num("461", "PASS", "Not enough parameters"))


def user(fe: IrcFrontEnd, line: Line, reply: Reply) -> None:
    """The user name and real name are not kept: chatd has neither (every user shows as
    nick!~u@server with the nick as real name, the same to IRC and native clients)."""
    if fe.nick:
        reply.lines.append(fe.num("462", "You may not reregister"))
    elif len(line.params) < 4:
        reply.lines.append(fe.num("461", "USER", "Not enough parameters"))
    else:
        fe.user_given = True
        try_register(fe, reply)


def nick_before_welcome(fe: IrcFrontEnd, nick: str, reply: Reply) -> None:
    fe.want_nick = nick
    try_register(fe, reply)


def try_register(fe: IrcFrontEnd, reply: Reply) -> None:
    """Send the native hello once NICK and USER are in and CAP negotiation has ended."""
    nick = fe.want_nick
    if fe.nick or fe.hello_pending or fe.negotiating or not fe.user_given or not nick:
        return
    fe.hello_pending = True

    def on_frame(frame: dict[str, Any]) -> bool:
        if frame["type"] != "welcome":
            return False
        fe.hello_pending = False
        fe.nick = str(frame.get("nick", nick))
        fe.motd = str(frame.get("motd", ""))
        if isinstance(frame.get("limits"), dict):
            fe.set_limits(frame["limits"])
        reply.lines.extend(burst(fe))
        return True

    def on_error(frame: dict[str, Any]) -> list[Line]:
        fe.hello_pending = False
        lines = render.error(fe, frame, "NICK", nick)
        if fe.want_nick != nick:  # the client already asked for another nick: try it
            try_register(fe, reply)
        return lines

    fe.request(reply, {"type": "hello", "version": p.VERSION, "nick": nick, "client": "irc"},
               on_frame, nick, on_error)


# ---- the welcome burst ----

def burst(fe: IrcFrontEnd) -> list[Line]:
    tokens = isupport(fe)
    lines = [
        fe.num("001", f"Welcome to the {fe.server} chat server, {fe.nick}"),
        fe.num("002", f"Your host is {fe.server}, running {VERSION} (IRC through chatd's "
                      f"native protocol, version {p.VERSION})"),
        fe.num("003", "This server does not tell when it was started"),
        # No user modes: '*' stands for the empty list (a middle parameter cannot be empty).
        fe.num("004", fe.server, VERSION, "*", modlines.ROOM_MODES),
    ]
    for i in range(0, len(tokens), ISUPPORT_PER_LINE):
        lines.append(fe.num("005", *tokens[i : i + ISUPPORT_PER_LINE],
                            "are supported by this server"))
    return lines + lusers(fe) + motd(fe)


def lusers(fe: IrcFrontEnd) -> list[Line]:
    return [fe.num("251", "chatd does not count its users for IRC clients: LIST shows each "
                          "room with the number of its members")]


def motd(fe: IrcFrontEnd) -> list[Line]:
    text = p.safe_text(fe.motd, multiline=True).strip("\n")
    if not text.strip():
        return [fe.num("422", "There is no message of the day")]
    budget = MAX_LINE - len(f":{fe.server} 372 {fe.me} :- \r\n".encode())
    rows = [piece for row in text.split("\n") for piece in split_utf8(row, budget)]
    return [fe.num("375", f"- {fe.server} Message of the day - "),
            *(fe.num("372", f"- {row}") for row in rows),
            fe.num("376", "End of /MOTD command")]
