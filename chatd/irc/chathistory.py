"""IRCv3 draft/chathistory on chatd's history.

A message reference is `msgid=ID`, chatd's message id (MSGREFTYPES=msgid): the native
`history` request pages by id, never by time, so `timestamp=` references are refused with
INVALID_MSGREFTYPE. Each subcommand is one or two native `history` requests:

    LATEST t * n          history limit=n
    LATEST t msgid=X n    history limit=n, keeping ids > X (the newest n after X)
    BEFORE t msgid=X n    history before=X limit=n
    AFTER t msgid=X n     history after=X limit=n
    AROUND t msgid=X n    history before=X+1 (X included) and after=X, half of n each
    BETWEEN t msgid=A msgid=B n   history after=A (or before=A when B < A), keeping the
                          ids strictly between A and B
    TARGETS timestamp=A timestamp=B n   history limit=1 of each room you are in: the rooms
                          whose newest message is between A and B (not direct messages:
                          chatd keeps no list of the conversations of a nick)

The reply is one `chathistory` batch, oldest first (plain lines without `batch`). A native
page may hold fewer messages than asked (max_frame); the client pages on from what it got.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chatd.irc import render
from chatd.irc.lines import Line

if TYPE_CHECKING:
    from chatd.irc.frontend import IrcFrontEnd, Reply

Frame = dict[str, Any]
SUBCOMMANDS = ("LATEST", "BEFORE", "AFTER", "AROUND", "BETWEEN", "TARGETS")


@dataclass(slots=True)
class _Progress:
    open: int  # native requests still unanswered
    target: str
    failed: bool = False


class _Bad(Exception):
    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code, self.text = code, text


def _limit(value: str, page: int) -> int:
    if not value.isdigit() or int(value) < 1:
        raise _Bad("INVALID_PARAMS", "the limit must be a number of at least 1")
    return min(int(value), page)


def _msgid(ref: str) -> int:
    kind, _, value = ref.partition("=")
    if kind == "timestamp":
        raise _Bad("INVALID_MSGREFTYPE", "chatd finds messages by msgid only (MSGREFTYPES)")
    if kind != "msgid" or not value.isdigit() or int(value) >= 2**63:
        raise _Bad("INVALID_PARAMS", f"{ref!r} is not a message reference (msgid=ID)")
    return int(value)


def chathistory(fe: IrcFrontEnd, line: Line, reply: Reply, now: float) -> None:
    sub = line.param(0).upper()
    params = line.params[1:]
    try:
        if not sub:
            raise _Bad("NEED_MORE_PARAMS", "not enough parameters")
        if sub not in SUBCOMMANDS:
            raise _Bad("INVALID_PARAMS", f"unknown subcommand; chatd has {', '.join(SUBCOMMANDS)}")
        if len(params) < (4 if sub == "BETWEEN" else 3):
            raise _Bad("NEED_MORE_PARAMS", "not enough parameters")
        limit = _limit(params[-1], int(fe.limits["history_page"]))
        if sub == "TARGETS":
            _targets(fe, reply, params[0], params[1], limit)
        else:
            _messages(fe, reply, sub, params[0], params[1:-1], limit)
    except _Bad as bad:
        context = [sub or "*"] + ([params[0]] if params and sub != "TARGETS" else [])
        reply.lines.append(fe.fail("CHATHISTORY", bad.code, *context, text=bad.text))


def _messages(fe: IrcFrontEnd, reply: Reply, sub: str, target: str, refs: list[str],
              limit: int) -> None:
    where: Frame = {"room": target} if target.startswith("#") else {"with": target}
    lo, hi = 0, 2**63  # keep the ids strictly between these
    if sub == "LATEST":
        if refs[0] != "*":
            lo = _msgid(refs[0])
        asks = [{"limit": limit}]
    elif sub == "BEFORE":
        asks = [{"before": _msgid(refs[0]), "limit": limit}]
    elif sub == "AFTER":
        asks = [{"after": _msgid(refs[0]), "limit": limit}]
    elif sub == "AROUND":
        mid = _msgid(refs[0])
        asks = [{"before": mid + 1, "limit": limit - limit // 2}]
        if limit // 2:
            asks.append({"after": mid, "limit": limit // 2})
    else:  # BETWEEN: from the first reference towards the second
        first, second = _msgid(refs[0]), _msgid(refs[1])
        lo, hi = sorted((first, second))
        asks = [{"after": first, "limit": limit} if first < second else
                {"before": first, "limit": limit}]
    oldest_first = sub in ("AFTER",) or (sub == "BETWEEN" and "after" in asks[0])
    found: dict[int, Frame] = {}
    state = _Progress(len(asks), target)

    def on_frame(frame: Frame) -> bool:
        if frame["type"] != "history":
            return False
        state.target = str(frame.get("room", frame.get("with", target)))
        for msg in frame.get("messages", []):
            if isinstance(msg, dict) and isinstance(msg.get("id"), int) and \
                    msg.get("type") == "message":  # moderation events are not messages
                found[msg["id"]] = msg
        _answered()
        return True

    def on_error(frame: Frame) -> list[Line]:
        code = str(frame.get("code"))
        text = render.line_text(frame.get("message"))
        lines: list[Line] = []
        if not state.failed:
            state.failed = True
            if code == "rate_limited":
                lines = render.error(fe, frame, "CHATHISTORY", target)
            else:
                kind = ("INVALID_TARGET" if code in ("not_in_room", "invalid_room",
                                                     "invalid_nick") else "MESSAGE_ERROR")
                lines = [fe.fail("CHATHISTORY", kind, sub, target, text=text)]
        _answered()
        return lines

    def _answered() -> None:
        state.open -= 1
        if state.open or state.failed:
            return
        ids = sorted(i for i in found if lo < i < hi)
        ids = ids[:limit] if oldest_first else ids[-limit:] if sub != "AROUND" else ids
        reply.lines.extend(render.history(fe, state.target,
                                          {"messages": [found[i] for i in ids]}))

    for ask in asks:
        fe.request(reply, {"type": "history", **where, **ask}, on_frame, target, on_error)


def _targets(fe: IrcFrontEnd, reply: Reply, first: str, second: str, limit: int) -> None:
    stamps = []
    for ref in (first, second):
        kind, _, value = ref.partition("=")
        ms = render.parse_time(value) if kind == "timestamp" else None
        if ms is None:
            raise _Bad("INVALID_PARAMS", "TARGETS takes two timestamp=YYYY-MM-DDThh:mm:ss.sssZ")
        stamps.append(ms)
    lo, hi = sorted(stamps)
    rooms = sorted(fe.rooms)
    latest: dict[str, int] = {}
    state = _Progress(len(rooms) or 1, "")

    def done() -> None:
        state.open -= 1
        if state.open > 0:
            return
        ranked = sorted(latest.items(), key=lambda item: item[1])[:limit]
        lines = [Line("CHATHISTORY", ["TARGETS", room, "timestamp=" + render.time_tag(ts)],
                      fe.server, colon=False) for room, ts in ranked]
        if fe.has("batch"):
            ref = fe.new_batch()
            for out in lines:
                out.tags["batch"] = ref
            lines = [render.batch_line(fe.server, "+" + ref, "draft/chathistory-targets"),
                     *lines, render.batch_line(fe.server, "-" + ref)]
        reply.lines.extend(lines)

    def ask(room: str) -> None:
        def on_frame(frame: Frame) -> bool:
            if frame["type"] != "history":
                return False
            for msg in frame.get("messages", [])[-1:]:
                ts = msg.get("ts") if isinstance(msg, dict) else None
                if isinstance(ts, int) and lo <= ts <= hi:
                    latest[room] = ts
            done()
            return True

        def on_error(frame: Frame) -> list[Line]:
            done()  # a room left meanwhile (not listed), or the request was refused:
            if frame.get("code") == "not_in_room":
                return []
            return render.error(fe, frame, "CHATHISTORY", room)

        fe.request(reply, {"type": "history", "room": room, "limit": 1}, on_frame, room,
                   on_error)

    if not rooms:
        done()
    for room in rooms:
        ask(room)
