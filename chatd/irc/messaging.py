"""PRIVMSG and NOTICE to rooms and nicks, and client draft/multiline batches.

Text goes to chatd as chatd's text: IRC formatting codes (bold, colours, ...) are removed,
since chatd text is plain and refuses control characters. A CTCP ACTION is a native action;
other CTCP requests are not relayed, and the sender is told so. chatd has no notices: a
NOTICE arrives as a message. A multiline batch is one native message whose lines are
joined with newlines (or without, for lines tagged draft/multiline-concat).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from chatd.irc import away, render, welcome
from chatd.irc.lines import Line

if TYPE_CHECKING:
    from chatd.irc.frontend import IrcFrontEnd, Reply

Frame = dict[str, Any]
_FORMATTING = re.compile(r"\x03(?:\d{1,2}(?:,\d{1,2})?)?"
                         r"|\x04(?:[0-9A-Fa-f]{6}(?:,[0-9A-Fa-f]{6})?)?"
                         r"|[\x02\x0f\x11\x16\x1d\x1e\x1f]")


def plain(text: str) -> str:
    """IRC text as chatd text: without IRC formatting codes."""
    return _FORMATTING.sub("", text)


def irc_text(text: str) -> tuple[str, bool, str | None]:
    """(chatd text, is an action, the CTCP command when it is another CTCP request)."""
    if text.startswith("\x01"):
        inner = text[1:-1] if text.endswith("\x01") and len(text) > 1 else text[1:]
        verb, _, arg = inner.partition(" ")
        if verb.upper() == "ACTION":
            return plain(arg), True, None
        return "", False, verb.upper() or "CTCP"
    return plain(text), False, None


# ---- messages ----

def privmsg(fe: IrcFrontEnd, line: Line, reply: Reply, now: float) -> None:
    """PRIVMSG, and NOTICE (chatd has no notices: a NOTICE arrives as a message)."""
    if not line.param(0):
        reply.lines.append(fe.num("411", f"No recipient given ({line.command})"))
        return
    if not line.param(1):
        reply.lines.append(fe.num("412", "No text to send"))
        return
    targets = [t for t in line.params[0].split(",") if t]
    if len(targets) > welcome.MAX_TARGETS:
        reply.lines.append(fe.num("407", line.params[0], f"Too many targets (at most "
                                  f"{welcome.MAX_TARGETS}); nothing was sent"))
        return
    text, action, ctcp = irc_text(line.params[1])
    if ctcp is not None:
        if line.command == "PRIVMSG":  # a NOTICE (a CTCP reply) gets no answer
            reply.lines.append(Line("NOTICE", [fe.me, f"CTCP {ctcp} was not sent: chatd "
                                               "carries text and ACTION only"], fe.server))
        return
    for target in targets:
        send_message(fe, reply, target, text, action)


def send_message(fe: IrcFrontEnd, reply: Reply, target: str, text: str, action: bool) -> None:
    """A native msg. Its ack is followed by the message itself, the echo: shown with
    echo-message (and labelled), dropped without, unless it is a message to yourself,
    which is then what you receive (unlabelled, after the reply)."""
    frame: Frame = {"type": "msg", "room" if target.startswith("#") else "to": target,
                    "text": text}
    if action:
        frame["action"] = True

    def on_frame(frame: Frame) -> bool:
        if frame["type"] != "message":  # the ack: the front end now waits for the echo
            away.acked(fe, reply, frame)  # of its id; a recipient who is away: 301
            return False
        lines = render.message(fe, frame)
        if fe.has("echo-message"):
            reply.lines += lines
        elif "to" in frame and render.same_nick(str(frame.get("to")), fe.nick):
            for out in lines:
                fe.event(out)
        return True

    fe.request(reply, frame, on_frame, target)


def tagmsg(fe: IrcFrontEnd, line: Line, reply: Reply, now: float) -> None:
    """TAGMSG carries only client tags, and chatd relays none (CLIENTTAGDENY=*)."""


# ---- client batches (draft/multiline) ----

@dataclass(slots=True)
class Multiline:
    ref: str
    target: str
    tags: dict[str, str]  # of the opening BATCH (its label labels the whole message)
    parts: list[str] = field(default_factory=list)
    size: int = 0  # bytes of the joined text so far
    failed: bool = False  # refused: its remaining lines are dropped until its end


def batch_line(fe: IrcFrontEnd, line: Line, now: float) -> bool:
    """A BATCH command or a line tagged with a batch: True when taken here (before
    registration they go on, to get 451 ERR_NOTREGISTERED)."""
    if not fe.nick:
        return False
    ml: Multiline | None = fe.multiline
    if line.command == "BATCH" and line.param(0).startswith("+"):
        _open(fe, line, now)
        return True
    ending = line.command == "BATCH"
    ref = line.param(0)[1:] if ending else line.tags.get("batch")
    if ref is not None and ref == fe.dropped_batch:  # one replaced by another: its rest
        fe.dropped_batch = None if ending else ref
        return True
    if ml is None or ref != ml.ref or (ending and not line.param(0).startswith("-")):
        if fe.charge("BATCH", now, tags=line.tags):
            fe.begin("BATCH", line.tags).lines.append(
                _fail(fe, "MULTILINE_INVALID", text="no such batch is open"))
        return True
    if line.command == "BATCH":  # BATCH -ref: the end
        fe.multiline = None
        if not ml.failed:
            _finish(fe, ml)
        return True
    if ml.failed:
        return True
    if line.command != "PRIVMSG":
        return _refuse(fe, ml, "MULTILINE_INVALID", text="a multiline batch holds PRIVMSG "
                                                         "lines only")
    if line.param(0) != ml.target:
        return _refuse(fe, ml, "MULTILINE_INVALID_TARGET", ml.target, line.param(0),
                       text="every line must go to the batch's target")
    concat = "draft/multiline-concat" in line.tags
    text = ("" if concat or not ml.parts else "\n") + plain(line.param(1))
    max_bytes = int(fe.limits["max_text"])
    if len(ml.parts) >= welcome.MULTILINE_LINES:
        return _refuse(fe, ml, "MULTILINE_MAX_LINES", str(welcome.MULTILINE_LINES),
                       text="too many lines in the batch")
    ml.size += len(text.encode())
    if ml.size > max_bytes:
        return _refuse(fe, ml, "MULTILINE_MAX_BYTES", str(max_bytes),
                       text="the batch is over max-bytes")
    ml.parts.append(text)
    return True


def _open(fe: IrcFrontEnd, line: Line, now: float) -> None:
    ref, kind, target = line.param(0), line.param(1), line.param(2)
    if fe.multiline is not None:  # one batch at a time: the first one is lost
        if not fe.multiline.failed:
            reply = fe.begin("BATCH", fe.multiline.tags)
            reply.lines.append(_fail(fe, "MULTILINE_INVALID", text="another batch was opened"))
        fe.dropped_batch = fe.multiline.ref
    ml = fe.multiline = Multiline(ref[1:], target, dict(line.tags))
    problem = ("chatd takes only draft/multiline batches from clients"
               if kind != "draft/multiline" or not target or len(ref) < 2 else
               "negotiate draft/multiline and batch first"
               if not (fe.has("draft/multiline") and fe.has("batch")) else "")
    if problem:
        _refuse(fe, ml, "MULTILINE_INVALID", text=problem)
    elif not fe.charge("BATCH", now, tags=line.tags):
        ml.failed = True


def _fail(fe: IrcFrontEnd, code: str, *context: str, text: str) -> Line:
    return fe.fail("BATCH", code, *context, text=text)


def _refuse(fe: IrcFrontEnd, ml: Multiline, code: str, *context: str, text: str) -> bool:
    ml.failed = True
    fe.begin("BATCH", ml.tags).lines.append(_fail(fe, code, *context, text=text))
    return True


def _finish(fe: IrcFrontEnd, ml: Multiline) -> None:
    text = "".join(ml.parts)
    reply = fe.begin("BATCH", ml.tags)
    if not text.strip():
        reply.lines.append(_fail(fe, "MULTILINE_INVALID", text="the batch has no text"))
    else:
        send_message(fe, reply, ml.target, text, False)
