"""SASL for IRC clients (IRCv3 `sasl` 3.2) on chatd's native `login` and `auth`
(protocol.md §12.3), so an IRC client logs in to a chatd account as a native one does.

`AUTHENTICATE <mechanism>` starts an exchange: the server prompts `AUTHENTICATE +`; the
client's response comes base64-encoded in pieces of 400 characters (a piece of exactly
400 means more follow; `+` is an empty one), and each whole response is one native
request: the first a `login` with the mechanism and the response as `data`, the next
(SCRAM-SHA-256's client-final-message) an `auth`. A native `auth` (SCRAM's challenge)
goes back as `AUTHENTICATE` pieces, and so does the server-final-message of `logged_in`,
which the client acknowledges with `AUTHENTICATE +`. Then `900 RPL_LOGGEDIN` and `903
RPL_SASLSUCCESS`; any native error is `904 ERR_SASLFAIL` with its message (a wrong
password and an unknown account alike, as §12.3 says); `AUTHENTICATE *` aborts (`906`),
another exchange after a login gets `907`, an unknown mechanism `908` (the list) and
`904`, a response over MAX_RESPONSE bytes `905`.

PLAIN is offered only on a connection that came over TLS (the native server refuses it
elsewhere, §12.2); SCRAM-SHA-256 everywhere.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from chatd.irc import render
from chatd.irc.lines import Line

if TYPE_CHECKING:
    from chatd.irc.frontend import IrcFrontEnd, Reply

Frame = dict[str, Any]
PIECE = 400  # base64 characters per AUTHENTICATE line (the IRCv3 sasl spec)
MAX_RESPONSE = 4096  # decoded bytes of one client response: SCRAM's are ~100-200


@dataclass(slots=True)
class Exchange:
    mechanism: str
    pieces: list[str] = field(default_factory=list)
    size: int = 0
    step: str = "login"  # the native request the next response becomes; "done": only "+"


def mechanisms(fe: IrcFrontEnd) -> list[str]:
    return ["PLAIN", "SCRAM-SHA-256"] if fe.tls else ["SCRAM-SHA-256"]


def authenticate(fe: IrcFrontEnd, line: Line, reply: Reply, now: float) -> None:
    arg = line.param(0)
    if not arg:
        reply.lines.append(fe.num("461", "AUTHENTICATE", "Not enough parameters"))
        return
    ex = fe.sasl
    if fe.account is not None and ex is None:
        reply.lines.append(fe.num("907", "You have already authenticated using SASL"))
        return
    if arg == "*":
        fe.sasl = None
        reply.lines.append(fe.num("906", "SASL authentication aborted"))
        return
    if ex is None:
        if arg.upper() not in mechanisms(fe):
            reply.lines += [fe.num("908", ",".join(mechanisms(fe)), "are available SASL "
                                   "mechanisms"),
                            fe.num("904", "SASL authentication failed")]
            return
        fe.sasl = Exchange(arg.upper())
        reply.lines.append(Line("AUTHENTICATE", ["+"], fe.server, colon=False))
        return
    if arg != "+":
        ex.pieces.append(arg)
        ex.size += len(arg)
    if ex.size > MAX_RESPONSE * 4 // 3 + 4:
        fe.sasl = None
        reply.lines.append(fe.num("905", "SASL message too long"))
        return
    if len(arg) == PIECE:
        return  # more of this response follows
    _respond(fe, ex, reply)


def _respond(fe: IrcFrontEnd, ex: Exchange, reply: Reply) -> None:
    encoded, ex.pieces, ex.size = "".join(ex.pieces), [], 0
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        fe.sasl = None
        reply.lines.append(fe.num("904", "SASL authentication failed: not base64"))
        return
    if ex.step == "done":  # the client took the server-final-message
        fe.sasl = None
        reply.lines += _success(fe)
        return
    frame: Frame = ({"type": "login", "mechanism": ex.mechanism, "data": data}
                    if ex.step == "login" else {"type": "auth", "data": data})

    def on_frame(frame: Frame) -> bool:
        if frame["type"] == "auth":  # SCRAM's challenge: the client answers it
            ex.step = "auth"
            reply.lines += _pieces(fe, frame.get("data"))
            return True
        if frame["type"] != "logged_in":
            return False
        fe.account = str(frame.get("account", ""))
        if isinstance(frame.get("data"), bytes):  # SCRAM's server-final-message
            ex.step = "done"
            reply.lines += _pieces(fe, frame["data"])
        else:
            fe.sasl = None
            reply.lines += _success(fe)
        return True

    def on_error(frame: Frame) -> list[Line]:
        fe.sasl = None
        text = render.line_text(frame.get("message")) or "SASL authentication failed"
        return [fe.num("904", f"SASL authentication failed: {text}")]

    fe.request(reply, frame, on_frame, "*", on_error)


def _pieces(fe: IrcFrontEnd, data: Any) -> list[Line]:
    """Server data as AUTHENTICATE lines of PIECE characters (and "+" after a full one)."""
    encoded = base64.b64encode(data if isinstance(data, bytes) else b"").decode()
    pieces = [encoded[i:i + PIECE] for i in range(0, len(encoded), PIECE)]
    if not pieces or len(pieces[-1]) == PIECE:
        pieces.append("+")
    return [Line("AUTHENTICATE", [piece], fe.server, colon=False) for piece in pieces]


def _success(fe: IrcFrontEnd) -> list[Line]:
    account = fe.account or "*"  # the nick it will have (§12.1)
    return [fe.num("900", fe.mask(account), account, f"You are now logged in as {account}"),
            fe.num("903", "SASL authentication successful")]
