"""Handlers for what the server sends (sans-I/O): one function per frame type.

`receive()` finds the request a frame answers (by label), checks the frame (inbound.py:
handlers only see checked, inert values), then calls the handler from HANDLERS, which
updates the model and may queue follow-up requests (joins after the welcome, the next
catch-up page). Unknown types are ignored (protocol §1).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from chatd.protocol import nick_key

from . import accounts, inbound, moderation, presence
from .buffer import SERVER, Buffer, Line
from .lifecycle import HelloRefused, TakenOver
from .requests import Frame, Req

if TYPE_CHECKING:
    from .core import Core

Handler = Callable[["Core", Frame, "Req | None", float], None]
log = logging.getLogger(__name__)


def receive(core: Core, frame: Frame, now: float) -> None:
    """Apply one server frame. Anything malformed is reported (inbound.py), never a crash."""
    ftype = frame.get("type")
    handler = HANDLERS.get(ftype) if isinstance(ftype, str) else None
    req = core.requests.reply_to(frame)
    if handler is None:
        return
    checked = inbound.check(frame, core.server_problem)
    if checked is None:
        if req is not None:
            _unanswered(core, req, frame)
        return
    frame = checked
    try:
        handler(core, frame, req, now)
    except Exception as exc:
        # Not the server's fault (inbound.check turned bad frames away): a bug here. It
        # must not take the client down, nor hide: it is shown, and counted so that the
        # tests that throw garbage at the client fail on it.
        core.handler_errors += 1
        shown = {k: v for k, v in frame.items() if k != "resume"}  # a secret: never logged
        log.debug("the %r handler failed on %r", ftype, shown, exc_info=True)
        core.model.note(core.model.get(SERVER), f"client bug: could not handle a {ftype!r} "
                        f"frame ({type(exc).__name__}: {exc})", "error")


def _unanswered(core: Core, req: Req, frame: Frame) -> None:
    """The reply to a request was unusable (and reported): settle the request."""
    point = req.extra.get("point")
    if point is not None:
        point.stop()
    buf = core.model.get(req.buffer)
    line = buf.find_label(frame["label"]) if buf is not None and req.kind == "msg" else None
    if buf is not None and line is not None:
        line.state = "failed"
        core.model.updated(buf, line)


def _ts(f: Frame) -> float | None:
    ts = f.get("ts")
    return ts / 1000 if isinstance(ts, int) else None


def message_line(core: Core, f: Frame) -> Line:
    kind = "action" if f.get("action") is True else "message"
    sender = str(f["from"])
    return Line(kind, f["ts"] / 1000, str(f["text"]), nick=sender, id=int(f["id"]),
                own=nick_key(sender) == nick_key(core.model.nick))


def on_welcome(core: Core, f: Frame, req: Req | None, now: float) -> None:
    m = core.model
    core.registered = True
    m.degraded = False  # a new connection: a server that cannot store says so again
    m.nick = f.get("nick") or core.hello_nick
    core.session = f.get("session")
    core.resume = f.get("resume")
    core.limits = f["limits"]
    accounts.welcome(core, f)
    server = m.buffers[SERVER]
    if f.get("resumed"):  # a half-open old connection was ours: same nick, same rooms
        m.note(server, f"took over the previous session: back as {m.nick}", "notice",
               activity=False)
    else:
        m.note(server, f"connected as {m.nick}", "notice", activity=False)
    if f.get("motd"):
        m.note(server, str(f["motd"]))
    prev = f.get("previous")
    if isinstance(prev, dict) and prev.get("code"):
        code, why = prev["code"], prev.get("message", "")  # (a quit's reason may be "quit")
        m.note(server, f"previous session ended: {code}"
               + (f" ({why})" if why and why != code else ""), "notice")
    presence.on_welcome(core)
    for room in core.wanted_rooms:
        core.join(room, switch=room == core.focus and m.current == SERVER)
    core.catch_up_dms()
    focus = m.get(core.focus)
    if focus is not None and focus.kind == "dm" and m.current == SERVER:
        m.switch(focus.key)


def on_error(core: Core, f: Frame, req: Req | None, now: float) -> None:
    m = core.model
    code, text = str(f.get("code")), str(f.get("message", ""))
    if req is not None and req.kind == "hello":
        # Often our own previous session, not yet timed out: take a variant now and
        # reclaim the wanted nick later (see Core.tick()).
        # An account's nick (nick_owned) likewise: a guest takes a variant.
        alt = core.nick_variant() if code in ("nick_taken", "nick_owned") else None
        if alt is not None:
            why = "an account's" if code == "nick_owned" else "taken"
            m.note(m.buffers[SERVER], f"nick {core.hello_nick} is {why}, trying {alt}",
                   "notice", activity=False)
            core.hello(alt)
            return
        core.refused = HelloRefused(code, text)
    elif code == "server_banned" and f.get("fatal") is True:  # a server ban: retrying cannot help
        core.refused = HelloRefused(code, text)
    elif code == "taken_over" and f.get("fatal") is True:
        core.refused = TakenOver(text)
    if req is not None and req.kind == "login":  # before hello: nothing more to do
        accounts.failed(core, code, text)
    if req is not None and req.kind == "register":
        core.account = m.account  # (None: we are still the guest we were)
    buf = m.get(req.buffer) if req else None
    if req is not None and req.kind == "msg":
        line = buf.find_label(f["label"]) if buf else None
        if line is not None and buf is not None:
            line.state = "failed"
            m.updated(buf, line)
    if req is not None and req.extra.get("point") is not None:
        req.extra["point"].stop()  # a refused catch-up: the next one starts from here
    if req is not None and req.kind == "join":
        room = req.extra.get("room")
        if room in core.wanted_rooms and code in ("invalid_room", "too_many_rooms"):
            core.wanted_rooms.remove(room)
    if req is not None and req.kind == "nick" and req.extra.get("quiet"):
        return  # reclaiming our nick; it is still taken
    if req is not None:
        core.failures += 1
    fatal = " (the server closes the connection)" if f.get("fatal") is True else ""
    target = buf or (m.buffers[SERVER] if req is None else None)
    m.note(target, f"error {code}: {text}{fatal}", "error")
    if fatal and target is not m.cur:
        m.note(None, f"error {code}: {text}{fatal}", "error")


def on_ack(core: Core, f: Frame, req: Req | None, now: float) -> None:
    if req is None:
        return
    buf = core.model.get(req.buffer)
    line = buf.find_label(f["label"]) if buf else None
    if buf is None or line is None:
        return
    buf.acked(line, int(f["id"]), f["ts"] / 1000)
    core.model.updated(buf, line)
    presence.acked(core, f, req)


def on_message(core: Core, f: Frame, req: Req | None, now: float) -> None:
    m = core.model
    if "room" in f:
        buf = m.room(str(f["room"]))
    else:
        sender, to = str(f["from"]), str(f["to"])
        peer = to if nick_key(sender) == nick_key(m.nick) else sender
        buf = m.dm(peer)
    m.add(buf, message_line(core, f))
    core.saw(f)


def on_joined(core: Core, f: Frame, req: Req | None, now: float) -> None:
    m = core.model
    room = str(f["room"])
    buf = m.room(room)
    first = not buf.lines
    buf.joined = True
    buf.topic = str(f.get("topic") or "")
    buf.members = {nick_key(n): n for n in f.get("members", []) if isinstance(n, str)}
    presence.listed(m, list(buf.members.values()), f)
    if room not in core.wanted_rooms:
        core.wanted_rooms.append(room)
    if first:
        m.note(buf, f"you joined {room}" + (f"; topic: {buf.topic}" if buf.topic else ""),
               "notice", activity=False)
    else:
        m.note(buf, f"rejoined {room}", "notice", activity=False)
    if req is not None and req.extra.get("switch"):
        m.switch(room)
    if f.get("more") is True and buf.members:  # a big room: the rest come from `who`
        _next_page(core, {"type": "who", "room": room}, "who", room,
                   list(buf.members.values()), quiet=True)


def on_history(core: Core, f: Frame, req: Req | None, now: float) -> None:
    m = core.model
    msgs = f["messages"]
    buf: Buffer | None
    if f.get("direct"):  # every direct message of ours, from any peer
        accounts.on_direct(core, f, req)
        return
    if "room" in f:
        buf = m.room(f["room"])
    else:  # an empty reply does not reopen a direct-message buffer the user closed
        buf = m.dm(f["with"]) if msgs or m.get(nick_key(f["with"])) else None
    got = 0
    # Messages missed while away are news; backlog shown on a plain join is not.
    new = req is not None and (req.kind == "catchup" or req.extra.get("after") is not None)
    for msg in msgs:
        line = moderation.event_line(msg) if msg.get("type") == "moderation" else \
            message_line(core, msg)
        line.backlog = True  # replayed from history, not live (plain mode marks it)
        if buf is not None and m.add(buf, line, new):
            got += 1
    if req is None:
        return
    if req.kind in ("join", "catchup"):
        point = req.extra.get("point")
        last = max((msg["id"] for msg in msgs), default=0)
        if point is not None and last:
            point.page(last)
        # `more` after a join with `after` (or a catch-up page) means newer messages
        # wait; after a plain join it only says older ones exist (/history gets them).
        forward = req.kind == "catchup" or req.extra.get("after") is not None
        if forward and f["more"] and last:
            frame: Frame = {"type": "history", "after": last}
            if "room" in f:
                frame["room"] = f["room"]
            else:
                frame["with"] = f["with"]
            core.request(frame, "catchup", req.buffer, after=last, point=point)
            return
        if point is not None:
            point.finish()
        if core.context and buf is not None and not buf.context_fetched:
            buf.context_fetched = True
            # A caught-up buffer after a restart shows only what was missed: add a
            # little older context, like a plain join would.
            want = int(core.limit("history_on_join")) - buf.message_count()
            if req.extra.get("after") is not None and want > 0:
                core.older(buf, want, quiet=True)
    elif req.kind == "older" and not req.extra.get("quiet") and buf is not None:
        m.note(buf, f"fetched {got} older message(s)" + ("" if got else ": none left"),
               activity=False)


def on_parted(core: Core, f: Frame, req: Req | None, now: float) -> None:
    room = str(f["room"])
    if room in core.wanted_rooms:
        core.wanted_rooms.remove(room)
    core.points.forget_room(room)  # a later /join starts afresh, not from here
    core.model.close(room)
    core.model.note(core.model.get(SERVER), f"you left {room}", "notice", activity=False)


def _next_page(core: Core, frame: Frame, kind: str, buffer: str | None, got: list[Any],
               **extra: Any) -> None:
    """Ask for the page after `got` (a paged list: protocol §4), carrying it along."""
    last = got[-1]
    after = last.get("room") if isinstance(last, dict) else last
    core.request({**frame, "after": str(after)}, kind, buffer, got=got, **extra)


def on_rooms(core: Core, f: Frame, req: Req | None, now: float) -> None:
    m = core.model
    page = [r for r in f.get("rooms", []) if isinstance(r, dict)]
    rooms = (req.extra.get("got", []) if req else []) + page
    if f.get("more") is True and page and req is not None:
        _next_page(core, {"type": "rooms"}, "rooms", req.buffer, rooms)
        return
    m.known_rooms.update(str(r.get("room")) for r in rooms)
    m.note(None, f"{len(rooms)} room(s):")
    for r in rooms:
        topic = f" - {r.get('topic')}" if r.get("topic") else ""
        m.note(None, f"  {r.get('room')} ({r.get('members')}){topic}")


def on_members(core: Core, f: Frame, req: Req | None, now: float) -> None:
    room, page = str(f["room"]), [str(n) for n in f.get("members", [])]
    presence.listed(core.model, page, f)
    members = (req.extra.get("got", []) if req else []) + page
    quiet = req is not None and bool(req.extra.get("quiet"))
    buf = core.model.get(room)
    joined = buf is not None and buf.joined
    if quiet and buf is not None and joined:
        # The rest of a `joined` list: add to what join/part events changed meanwhile.
        buf.members.update((nick_key(n), n) for n in page)
    if f.get("more") is True and page and req is not None:
        _next_page(core, {"type": "who", "room": room}, "who", req.buffer, members,
                   quiet=quiet)
        return
    if quiet:
        return
    if buf is not None and joined:
        buf.members = {nick_key(n): n for n in members}
    core.model.note(None, f"{room}: {len(members)} member(s): {', '.join(members)}")


def on_topic(core: Core, f: Frame, req: Req | None, now: float) -> None:
    m = core.model
    room, topic = str(f["room"]), str(f.get("topic") or "")
    buf = m.get(room)
    if buf is not None:
        buf.topic = topic
    if req is not None and req.extra.get("query"):
        by = f" (set by {f['by']})" if f.get("by") else ""
        m.note(None, f"topic of {room}: {topic or '(none)'}{by}")
    elif buf is not None:
        who = f.get("by") or "someone"
        text = f"{who} set the topic: {topic}" if topic else f"{who} cleared the topic"
        m.note(buf, text, "notice", _ts(f))


def on_join(core: Core, f: Frame, req: Req | None, now: float) -> None:
    buf = core.model.get(str(f["room"]))
    if buf is not None:
        nick = str(f["nick"])
        buf.members[nick_key(nick)] = nick
        presence.note(core.model, nick, f.get("away"))
        core.model.note(buf, f"{nick} joined {buf.key}", "notice", _ts(f))


def _left(core: Core, f: Frame, verb: str) -> None:
    buf = core.model.get(str(f["room"]))
    if buf is not None:
        nick = str(f["nick"])
        buf.members.pop(nick_key(nick), None)
        reason = f" ({f['reason']})" if f.get("reason") else ""
        core.model.note(buf, f"{nick} {verb} {buf.key}{reason}", "notice", _ts(f))


def on_part(core: Core, f: Frame, req: Req | None, now: float) -> None:
    _left(core, f, "left")


def on_quit(core: Core, f: Frame, req: Req | None, now: float) -> None:
    core.model.away.pop(nick_key(str(f["nick"])), None)
    _left(core, f, "quit")


def on_nick(core: Core, f: Frame, req: Req | None, now: float) -> None:
    m = core.model
    old, new = str(f["old"]), str(f["new"])
    if "room" not in f:  # our own change
        m.nick = new
        if req is not None and req.kind == "nick":
            core.want_nick = new
        for buf in m.buffers.values():
            if buf.kind != "dm":
                m.note(buf, f"you are now known as {new}", "notice", _ts(f), activity=False)
        if nick_key(new) != nick_key(old):
            core.points.stop_dms(nick_key(old))  # its messages no longer come to us
            core.catch_up_dms()  # the direct messages sent to this nick while we lacked it
        return
    presence.renamed(m, old, new)
    room = m.get(str(f["room"]))
    if room is not None:
        room.members.pop(nick_key(old), None)
        room.members[nick_key(new)] = new
        m.note(room, f"{old} is now known as {new}", "notice", _ts(f))
    dm = m.rename_dm(old, new)  # one event per shared room: only the first renames
    if dm is not None:
        m.note(dm, f"{old} is now known as {new}", "notice", _ts(f))


def on_ping(core: Core, f: Frame, req: Req | None, now: float) -> None:
    frame: Frame = {"type": "pong"}
    if "token" in f:
        frame["token"] = f["token"]
    core.requests.send_unlabelled(frame)


def on_pong(core: Core, f: Frame, req: Req | None, now: float) -> None:
    lag = core.requests.pong(f.get("token"), now)
    if lag is not None:
        core.model.lag_ms, core.model.ping_since = lag, None


def on_status(core: Core, f: Frame, req: Req | None, now: float) -> None:
    """The server's link to its cluster (protocol §5 `status`): down, up, or a gap."""
    m = core.model
    state = str(f["cluster"])
    if state in ("down", "up"):
        m.degraded = state == "down"
    kind = "notice" if state == "up" else "error"
    m.note(m.buffers[SERVER], str(f.get("message") or f"cluster: {state}"), kind, _ts(f))


HANDLERS: dict[str, Handler] = {
    "welcome": on_welcome, "error": on_error, "ack": on_ack, "message": on_message,
    "joined": on_joined, "history": on_history, "parted": on_parted, "rooms": on_rooms,
    "members": on_members, "topic": on_topic, "join": on_join, "part": on_part,
    "quit": on_quit, "nick": on_nick, "ping": on_ping, "pong": on_pong,
    **moderation.HANDLERS,
    "auth": accounts.on_auth, "logged_in": accounts.on_logged_in,
    "registered": accounts.on_logged_in,
    "away": presence.on_away,
    "status": on_status,
}
