"""Protocol logic of the client (sans-I/O): server frames in, model updates and requests out.

The connection feeds every decoded frame to `Core.receive()` and sends whatever lands in
`Core.outbox`. No sockets and no clock: times are passed in, so all of it is unit-tested.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from chatd.protocol import DEFAULT_LIMITS, MAX_NICK, VERSION, ProtocolError, check_text, nick_key

from . import commands as cmd
from .clock import SYSTEM, Clock
from .lifecycle import HelloRefused
from .model import SERVER, Buffer, Line, Model

Frame = dict[str, Any]


@dataclass
class Req:
    """What an outstanding labelled request was for."""

    kind: str  # hello | join | catchup | older | msg | nick | part | topic | who | rooms
    buffer: str  # buffer to report errors in
    extra: dict[str, Any] = field(default_factory=dict)


class Core:
    def __init__(self, nick: str, rooms: list[str], last_seen: dict[str, int] | None = None,
                 scrollback: int = 5000, client_name: str = "chat-client",
                 clock: Clock = SYSTEM) -> None:
        self.model = Model(nick, scrollback, clock)
        self.want_nick = nick
        self.wanted_rooms: list[str] = list(dict.fromkeys(rooms))
        self.saved_last: dict[str, int] = dict(last_seen or {})  # from the state file
        self.client_name = client_name
        self.outbox: list[Frame] = []
        self.reqs: dict[int, Req] = {}
        self._labels = itertools.count(1)
        self._pings: dict[int, float] = {}
        self.registered = False
        self.session: str | None = None
        self.limits: dict[str, Any] = {}  # welcome.limits as the server last stated them
        self.nick_attempt = 0
        self.refused: HelloRefused | None = None  # set when retrying cannot help
        self.quitting = False
        self.failures = 0  # requests the server refused (plain mode's exit status)
        self.dirty = False  # last-seen ids changed since the last save
        self.first_room = self.wanted_rooms[0] if self.wanted_rooms else None
        self.hello_nick = nick

    def limit(self, name: str) -> int | float:
        """A limit from welcome.limits, or the protocol's default when the server did not
        state it (or stated nonsense)."""
        value = self.limits.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return value
        return DEFAULT_LIMITS[name]

    # Outgoing
    def request(self, frame: Frame, kind: str, buffer: str | None = None, **extra: Any) -> int:
        label = next(self._labels)
        self.reqs[label] = Req(kind, buffer or self.model.current, extra)
        self.outbox.append({**frame, "label": label})
        return label

    def take_outbox(self) -> list[Frame]:
        out, self.outbox = self.outbox, []
        return out

    def busy(self) -> bool:
        """Requests still waiting for their reply (plain mode waits for these)."""
        return bool(self.reqs)

    @property
    def ready(self) -> bool:
        """Registered and the initial joins answered: lines can be sent."""
        return self.registered and not any(r.kind in ("hello", "join") for r in self.reqs.values())

    def connected(self) -> None:
        """A new TCP connection: say hello (joins follow the welcome)."""
        self.registered = False
        self.reqs.clear()
        self._pings.clear()
        self.nick_attempt = 0
        self._hello(self.want_nick)

    def _hello(self, nick: str) -> None:
        self.hello_nick = nick
        frame: Frame = {"type": "hello", "version": VERSION, "nick": nick,
                        "client": self.client_name}
        if self.session:
            frame["session"] = self.session
        self.request(frame, "hello", SERVER)

    def disconnected(self, reason: str) -> None:
        was = self.registered
        self.registered = False
        self.reqs.clear()
        self._pings.clear()
        self.model.lag_ms = None
        for buf, line in self.model.pending_lines():
            self.failures += 1
            line.state = "failed"
            self.model.updated(buf, line)
            self.model.note(buf, "message not acknowledged before the connection was lost; "
                            "it may or may not have been delivered", "error")
        for buf in self.model.buffers.values():
            if buf.kind == "room" and buf.joined:
                buf.joined = False
        if was and not self.quitting:
            for buf in self.model.buffers.values():
                self.model.note(buf, f"disconnected: {reason}", "notice")

    def ping(self, now: float) -> None:
        token = next(self._labels)
        self._pings[token] = now
        self.outbox.append({"type": "ping", "token": token})

    def ping_outstanding(self) -> bool:
        return bool(self._pings)

    def tick(self) -> None:
        """Periodic work: try to get the wanted nick back after a nick_taken at hello."""
        if (self.registered and nick_key(self.model.nick) != nick_key(self.want_nick)
                and not any(r.kind == "nick" for r in self.reqs.values())):
            self.request({"type": "nick", "nick": self.want_nick}, "nick", SERVER, quiet=True)

    def quit(self, reason: str = "") -> None:
        self.quitting = True
        frame: Frame = {"type": "quit"}
        if reason:
            frame["reason"] = reason
        self.outbox.append(frame)

    # Commands from the input line
    def execute_line(self, line: str) -> None:
        """Run one input line; usage errors become local error lines and send nothing."""
        try:
            action = cmd.parse(line)
        except cmd.UsageError as exc:
            self.model.note(None, str(exc), "error")
            self.failures += 1
            return
        self.execute(action)

    def execute(self, action: cmd.Action) -> None:
        m = self.model
        match action:
            case cmd.Say(text, is_action):
                self.say(m.cur, text, is_action)
            case cmd.Help(name):
                for text in cmd.help_lines(name):
                    m.note(None, text)
            case cmd.Switch(target):
                buf = m.find(target)
                if buf is None:
                    self._local_error(f"no buffer {target!r}")
                else:
                    m.switch(buf.key)
            case cmd.Quit(reason):
                self.quit(reason)
            case _ if not self.registered:
                self._local_error("not connected; nothing sent")
            case cmd.Join(room):
                buf = m.get(room)
                if buf is not None and buf.joined:
                    m.switch(room)
                else:
                    self._join(room, switch=True)
            case cmd.Part(room, reason):
                self._part(room, reason)
            case cmd.Msg(nick, text):
                buf = m.dm(nick)
                if text is None:
                    m.switch(buf.key)
                else:
                    self.say(buf, text, False, echo=m.cur is not buf)
            case cmd.Nick(nick):
                self.want_nick = nick
                self.request({"type": "nick", "nick": nick}, "nick")
            case cmd.Topic(room, text):
                room = room or self._current_room()
                if room:
                    frame: Frame = {"type": "topic", "room": room}
                    if text is not None:
                        frame["topic"] = text
                    self.request(frame, "topic", query=text is None)
            case cmd.Who(room):
                room = room or self._current_room()
                if room:
                    self.request({"type": "who", "room": room}, "who")
            case cmd.Rooms():
                self.request({"type": "rooms"}, "rooms")
            case cmd.History(count):
                page = int(self.limit("history_page"))
                if count > page:  # the server would cap it silently
                    self._local_error(f"usage: {cmd.COMMANDS['history'].usage} "
                                      f"(N at most {page}, the server's history page)")
                else:
                    self._older(m.cur, count, quiet=False)

    def _local_error(self, text: str) -> None:
        self.model.note(None, text, "error")
        self.failures += 1

    def _current_room(self) -> str | None:
        if self.model.cur.kind == "room":
            return self.model.current
        self._local_error("not in a room buffer: give a ROOM")
        return None

    def say(self, buf: Buffer, text: str, action: bool = False, echo: bool = False) -> None:
        if not self.registered:
            return self._local_error("not connected; message not sent")
        if buf.kind == "server":
            return self._local_error("this is the server buffer: /join a room or /msg a nick")
        if buf.kind == "room" and not buf.joined:
            return self._local_error(f"not in {buf.key} (/join {buf.key})")
        try:
            check_text(text, int(self.limit("max_text")))
        except ProtocolError as exc:
            return self._local_error(f"message not sent: {exc.message}")
        frame: Frame = {"type": "msg", "text": text}
        frame["room" if buf.kind == "room" else "to"] = buf.name
        if action:
            frame["action"] = True
        label = self.request(frame, "msg", buf.key)
        line = Line("action" if action else "message", self.model.clock.now(), text,
                    nick=self.model.nick, label=label, state="pending", own=True)
        self.model.add(buf, line)
        if echo:
            self.model.note(None, f"-> {buf.name}: {text}")
        return None

    def _join(self, room: str, switch: bool = False) -> None:
        buf = self.model.get(room)
        last = max(buf.last_id if buf else 0, self.saved_last.get(room, 0))
        frame: Frame = {"type": "join", "room": room}
        if last:
            frame["after"] = last
        self.request(frame, "join", room if buf else None, room=room, after=last, switch=switch)

    def _part(self, room: str | None, reason: str) -> None:
        m = self.model
        if room is None and m.cur.kind == "dm":
            m.close(m.current)
            return
        room = room or self._current_room()
        if room is None:
            return
        frame: Frame = {"type": "part", "room": room}
        if reason:
            frame["reason"] = reason
        self.request(frame, "part", room=room)

    def _older(self, buf: Buffer, count: int, quiet: bool) -> None:
        """Fetch up to count messages older than the oldest in buf."""
        if buf.kind == "server":
            return self._local_error("no history in the server buffer")
        oldest = buf.oldest_id()
        frame: Frame = {"type": "history", "limit": count}
        if buf.kind == "room":
            frame["room"] = buf.key
        else:
            frame["with"] = buf.name
        if oldest is not None:
            frame["before"] = oldest
        elif buf.last_id:
            frame["before"] = buf.last_id + 1
        self.request(frame, "older", buf.key, quiet=quiet)
        return None

    # Incoming
    def receive(self, frame: Frame, now: float = 0.0) -> None:
        """Apply one server frame. Anything malformed becomes an error line, never a crash."""
        ftype = frame.get("type")
        handler = getattr(self, f"_on_{ftype}", None) if isinstance(ftype, str) else None
        label = frame.get("label")
        req = self.reqs.pop(label, None) if isinstance(label, int) else None
        if req is not None and req.kind in ("join", "catchup", "older") and ftype == "joined":
            self.reqs[label] = req  # the history reply with the same label follows
        if handler is None:
            return  # unknown event types are ignored (protocol §1)
        try:
            if ftype == "pong":
                handler(frame, req, now)
            else:
                handler(frame, req)
        except Exception as exc:  # a bad frame must never take the client down
            self.model.note(self.model.get(SERVER), f"ignored a bad {ftype!r} frame from the "
                            f"server ({type(exc).__name__}: {exc})", "error")

    def _on_welcome(self, f: Frame, req: Req | None) -> None:
        m = self.model
        self.registered = True
        m.nick = str(f["nick"])
        self.session = f.get("session") if isinstance(f.get("session"), str) else None
        if isinstance(f.get("limits"), dict):
            self.limits.update(f["limits"])
        server = m.buffers[SERVER]
        m.note(server, f"connected as {m.nick}", "notice")
        if f.get("motd"):
            m.note(server, str(f["motd"]))
        prev = f.get("previous")
        if isinstance(prev, dict) and prev.get("code"):
            m.note(server, f"previous session ended: {prev.get('code')} "
                   f"{prev.get('message', '')}", "notice")
        for room in self.wanted_rooms:
            self._join(room, switch=room == self.first_room and m.current == SERVER)
        for buf in list(m.buffers.values()):
            if buf.kind == "dm" and buf.last_id:
                self.request({"type": "history", "with": buf.name, "after": buf.last_id},
                             "catchup", buf.key)

    def _on_error(self, f: Frame, req: Req | None) -> None:
        m = self.model
        code, text = str(f.get("code")), str(f.get("message", ""))
        if req is not None and req.kind == "hello":
            if code == "nick_taken" and self.nick_attempt < 5:
                # Often our own previous session, not yet timed out: take a variant now
                # and reclaim the wanted nick later (see tick()).
                self.nick_attempt += 1
                alt = self.want_nick[:MAX_NICK - 1 - self.nick_attempt] + "_" * self.nick_attempt
                m.note(m.buffers[SERVER], f"nick {self.hello_nick} is taken, trying {alt}",
                       "notice")
                self._hello(alt)
                return
            self.refused = HelloRefused(code, text)
        buf = m.get(req.buffer) if req else None
        if req is not None and req.kind == "msg":
            line = buf.find_label(f["label"]) if buf else None
            if line is not None and buf is not None:
                line.state = "failed"
                m.updated(buf, line)
        if req is not None and req.kind == "join":
            room = req.extra.get("room")
            if room in self.wanted_rooms and code in ("invalid_room", "too_many_rooms"):
                self.wanted_rooms.remove(room)
        if req is not None and req.kind == "nick" and req.extra.get("quiet"):
            return  # reclaiming our nick; it is still taken
        if req is not None:
            self.failures += 1
        fatal = " (the server closes the connection)" if f.get("fatal") is True else ""
        target = buf or (m.buffers[SERVER] if req is None else None)
        m.note(target, f"error {code}: {text}{fatal}", "error")
        if fatal and target is not m.cur:
            m.note(None, f"error {code}: {text}{fatal}", "error")

    def _on_ack(self, f: Frame, req: Req | None) -> None:
        if req is None:
            return
        buf = self.model.get(req.buffer)
        line = buf.find_label(f["label"]) if buf else None
        if buf is None or line is None:
            return
        buf.acked(line, int(f["id"]), f["ts"] / 1000)
        if buf.kind == "room":
            self.dirty = True
        self.model.updated(buf, line)

    def _message_line(self, f: Frame) -> Line:
        kind = "action" if f.get("action") is True else "message"
        sender = str(f["from"])
        return Line(kind, f["ts"] / 1000, str(f["text"]), nick=sender, id=int(f["id"]),
                    own=nick_key(sender) == nick_key(self.model.nick))

    def _on_message(self, f: Frame, req: Req | None = None) -> None:
        m = self.model
        if "room" in f:
            buf = m.room(str(f["room"]))
        else:
            sender, to = str(f["from"]), str(f["to"])
            peer = to if nick_key(sender) == nick_key(m.nick) else sender
            buf = m.dm(peer)
        if m.add(buf, self._message_line(f)) and buf.kind == "room":
            self.dirty = True

    def _on_joined(self, f: Frame, req: Req | None) -> None:
        m = self.model
        room = str(f["room"])
        buf = m.room(room)
        first = not buf.lines
        buf.joined = True
        buf.topic = str(f.get("topic") or "")
        buf.members = {nick_key(n): n for n in f.get("members", []) if isinstance(n, str)}
        if room not in self.wanted_rooms:
            self.wanted_rooms.append(room)
        if first:
            m.note(buf, f"you joined {room}" + (f"; topic: {buf.topic}" if buf.topic else ""),
                   "notice")
        else:
            m.note(buf, f"rejoined {room}", "notice")
        if req is not None and req.extra.get("switch"):
            m.switch(room)

    def _on_history(self, f: Frame, req: Req | None) -> None:
        m = self.model
        buf = m.room(str(f["room"])) if "room" in f else m.dm(str(f["with"]))
        got = 0
        # Messages missed while away are news; backlog shown on a plain join is not.
        new = req is not None and (req.kind == "catchup" or bool(req.extra.get("after")))
        for msg in f.get("messages", []):
            if isinstance(msg, dict) and m.add(buf, self._message_line(msg), new):
                got += 1
        if got and buf.kind == "room":
            self.dirty = True
        if req is None:
            return
        if req.kind in ("join", "catchup"):
            # `more` after a join with `after` (or a catch-up page) means newer messages
            # wait; after a plain join it only says older ones exist (/history gets them).
            forward = req.kind == "catchup" or bool(req.extra.get("after"))
            if forward and f.get("more") is True and f.get("messages"):
                frame: Frame = {"type": "history", "after": int(f["messages"][-1]["id"])}
                frame["room" if buf.kind == "room" else "with"] = \
                    buf.key if buf.kind == "room" else buf.name
                self.request(frame, "catchup", buf.key)
            elif buf.kind == "room" and not buf.context_fetched:
                buf.context_fetched = True
                # A caught-up buffer after a restart shows only what was missed: add a
                # little older context, like a plain join would.
                want = int(self.limit("history_on_join")) - buf.message_count()
                if req.extra.get("after") and want > 0:
                    self._older(buf, want, quiet=True)
        elif req.kind == "older" and not req.extra.get("quiet"):
            m.note(buf, f"fetched {got} older message(s)" + ("" if got else ": none left"))

    def _on_parted(self, f: Frame, req: Req | None) -> None:
        room = str(f["room"])
        if room in self.wanted_rooms:
            self.wanted_rooms.remove(room)
        self.saved_last.pop(room, None)  # a later /join starts afresh, not from here
        self.model.close(room)
        self.model.note(self.model.get(SERVER), f"you left {room}", "notice")

    def _on_rooms(self, f: Frame, req: Req | None) -> None:
        m = self.model
        rooms = [r for r in f.get("rooms", []) if isinstance(r, dict)]
        m.known_rooms.update(str(r.get("room")) for r in rooms)
        m.note(None, f"{len(rooms)} room(s):")
        for r in rooms:
            topic = f" - {r.get('topic')}" if r.get("topic") else ""
            m.note(None, f"  {r.get('room')} ({r.get('members')}){topic}")

    def _on_members(self, f: Frame, req: Req | None) -> None:
        room, members = str(f["room"]), [str(n) for n in f.get("members", [])]
        buf = self.model.get(room)
        if buf is not None and buf.joined:
            buf.members = {nick_key(n): n for n in members}
        self.model.note(None, f"{room}: {len(members)} member(s): {', '.join(members)}")

    def _on_topic(self, f: Frame, req: Req | None) -> None:
        m = self.model
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
            m.note(buf, text, "notice", self._ts(f))

    def _ts(self, f: Frame) -> float | None:
        ts = f.get("ts")
        return ts / 1000 if isinstance(ts, int) else None

    def _on_join(self, f: Frame, req: Req | None) -> None:
        buf = self.model.get(str(f["room"]))
        if buf is not None:
            nick = str(f["nick"])
            buf.members[nick_key(nick)] = nick
            self.model.note(buf, f"{nick} joined {buf.key}", "notice", self._ts(f))

    def _on_part(self, f: Frame, req: Req | None, verb: str = "left") -> None:
        buf = self.model.get(str(f["room"]))
        if buf is not None:
            nick = str(f["nick"])
            buf.members.pop(nick_key(nick), None)
            reason = f" ({f['reason']})" if f.get("reason") else ""
            self.model.note(buf, f"{nick} {verb} {buf.key}{reason}", "notice", self._ts(f))

    def _on_quit(self, f: Frame, req: Req | None) -> None:
        self._on_part(f, req, verb="quit")

    def _on_nick(self, f: Frame, req: Req | None) -> None:
        m = self.model
        old, new = str(f["old"]), str(f["new"])
        if "room" not in f:  # our own change
            m.nick = new
            if req is not None and req.kind == "nick":
                self.want_nick = new
            for buf in m.buffers.values():
                if buf.kind != "dm":
                    m.note(buf, f"you are now known as {new}", "notice", self._ts(f))
            return
        buf = m.get(str(f["room"]))
        if buf is not None:
            buf.members.pop(nick_key(old), None)
            buf.members[nick_key(new)] = new
            m.note(buf, f"{old} is now known as {new}", "notice", self._ts(f))
        dm = m.rename_dm(old, new)  # one event per shared room: only the first renames
        if dm is not None:
            m.note(dm, f"{old} is now known as {new}", "notice", self._ts(f))

    def _on_ping(self, f: Frame, req: Req | None) -> None:
        frame: Frame = {"type": "pong"}
        if "token" in f:
            frame["token"] = f["token"]
        self.outbox.append(frame)

    def _on_pong(self, f: Frame, req: Req | None, now: float) -> None:
        sent = self._pings.pop(f.get("token"), None) if isinstance(f.get("token"), int) \
            else None
        if sent is not None:
            self.model.lag_ms = max(0.0, (now - sent) * 1000)
            self._pings.clear()  # older unanswered pings are moot now
