"""Protocol logic of the client (sans-I/O): commands and connection events in, requests out.

The connection calls `connected()`, feeds every decoded frame to `receive()` (checked by
inbound.py, then handled in events.py) and sends whatever `take_outbox()` returns. No
sockets and no clock: times are passed in, so all of it is unit-tested. The rules shared
with the server (nick alphabet, text, limits) come from chatd.protocol and from
welcome.limits, never from a copy. What a restart restores (store.ClientState) goes in
through the constructor and comes out of `snapshot()`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chatd.protocol import DEFAULT_LIMITS, MAX_NICK, VERSION, ProtocolError, check_text, nick_key

from . import accounts, events, localcmds, moderation, presence
from . import commands as cmd
from .buffer import SERVER, Buffer, Line
from .catchup import MAX_DM_POINTS, STALE, DmPoint, Points
from .clock import SYSTEM, Clock
from .lifecycle import ConnectionEnded
from .model import Model
from .requests import Frame, Requests
from .store import ClientState

if TYPE_CHECKING:
    from chatd.sasl import ClientScram


class Core:
    def __init__(self, nick: str, rooms: list[str], saved: ClientState | None = None,
                 scrollback: int = 5000, client_name: str = "chat-client",
                 clock: Clock = SYSTEM, focus: str | None = None, context: bool = True,
                 account: str | None = None, password: str | None = None) -> None:
        """`rooms` are joined besides the saved buffers; `focus` (`#room` or `@nick`) is the
        buffer to show once it is ready, else the saved current one, else the first room.
        `context`: after catching up a buffer that shows only what was missed, fetch a
        little older history too (on a screen; plain mode prints only what is new)."""
        self.model = Model(nick, scrollback, clock)
        self.want_nick = nick
        saved = saved or ClientState()
        self.points = Points(saved.rooms, saved.dms, saved.direct)
        # Accounts (accounts.py): the password stays in memory, for each login.
        self.account, self.password = account, password
        self.scram: ClientScram | None = None  # a login under way
        self.direct_history = False  # the server offers `history direct` (welcome.auth)
        self.iterations = 300_000  # for a /register verifier: welcome.auth.iterations
        self.wanted_rooms: list[str] = []
        for entry in [*saved.buffers, *rooms]:  # buffers in their saved (Alt+N) order
            if entry.startswith("@"):
                self.model.dm(entry[1:])
            elif entry not in self.wanted_rooms:
                self.wanted_rooms.append(entry)
                self.model.room(entry)
        focus = focus or saved.current or next(iter(self.wanted_rooms), None)
        self.focus = _key(focus) if focus else SERVER
        self.client_name = client_name
        self.requests = Requests()
        self.registered = False
        # The session to take over after a lost connection, and its secret (protocol.md §2,
        # "Taking over a session"): from the last welcome, or the state file. Never logged.
        self.session: str | None = saved.session
        self.resume: str | None = saved.resume
        # welcome.limits, checked on arrival (inbound.py): always complete and usable
        self.limits: dict[str, int | float] = dict(DEFAULT_LIMITS)
        self.reported: set[str] = set()  # kinds of bad frames already reported
        self.nick_attempt = 0
        self.refused: ConnectionEnded | None = None  # set when retrying cannot help
        self.quitting = False
        self.away = ""  # the away message asked for (presence.py): set again on reconnect
        self.failures = 0  # requests the server refused (plain mode's exit status)
        # Handlers that raised. inbound.check() keeps bad frames away from them, so each is
        # a bug in the client (shown, counted for the tests, and survived: see events.py).
        self.handler_errors = 0
        self.hello_nick = nick
        self.context = context

    def limit(self, name: str) -> int | float:
        """A limit as welcome.limits stated it, or the protocol's default."""
        return self.limits[name]

    def snapshot(self) -> ClientState:
        """What a restart should restore: the rooms we are in and the direct-message
        buffers (in Alt+N order), the current buffer, and every catch-up point."""
        buffers = []
        for buf in self.model.order():
            if buf.kind == "room" and buf.key in self.wanted_rooms:
                buffers.append(buf.key)
            elif buf.kind == "dm":
                buffers.append("@" + buf.name)
        buffers += [r for r in self.wanted_rooms if r not in buffers]
        cur = self.model.cur
        current = {"room": cur.key, "dm": "@" + cur.name}.get(cur.kind)
        rooms, dms = self.points.saved()
        return ClientState(buffers, current, rooms, dms, self.session, self.resume,
                           direct=self.points.saved_direct())

    def server_problem(self, what: str, text: str) -> None:
        """Something the server sent was bad (inbound.py): tell the user, once per kind
        and connection, so a hostile server cannot flood the screen with it."""
        if what in self.reported:
            return
        self.reported.add(what)
        self.model.note(self.model.buffers[SERVER], text, "error")

    # Outgoing
    def request(self, frame: Frame, kind: str, buffer: str | None = None, **extra: Any) -> int:
        return self.requests.send(frame, kind, buffer or self.model.current, **extra)

    def take_outbox(self) -> list[Frame]:
        return self.requests.take()

    def busy(self) -> bool:
        """Requests still waiting for their reply (plain mode waits for these)."""
        return self.requests.waiting()

    @property
    def ready(self) -> bool:
        """Registered and the initial joins answered: lines can be sent."""
        return self.registered and not self.requests.waiting("hello", "join")

    # Connection events
    def connected(self) -> None:
        """A new connection: say hello (joins follow the welcome)."""
        self.registered = False
        self.requests.reset()
        self.reported.clear()
        self.nick_attempt = 0
        if not accounts.start(self):  # logged in first, then hello (accounts.py)
            self.hello(self.want_nick)

    def hello(self, nick: str) -> None:
        self.hello_nick = nick
        frame: Frame = {"type": "hello", "version": VERSION, "nick": nick,
                        "client": self.client_name}
        if self.session:
            frame["session"] = self.session
            if self.resume:  # take the session over if it is still there
                frame["resume"] = self.resume
        self.request(frame, "hello", SERVER)

    def nick_variant(self) -> str | None:
        """The next nick to try after nick_taken at hello, or None after five tries."""
        if self.nick_attempt >= 5:
            return None
        self.nick_attempt += 1
        return self.want_nick[:MAX_NICK - 1 - self.nick_attempt] + "_" * self.nick_attempt

    def disconnected(self, reason: str) -> bool:
        """The connection ended. True when that was said in every buffer (it was up)."""
        was = self.registered
        self.registered = False
        self.requests.reset()
        self.points.stop_all()
        self.model.lag_ms = self.model.ping_since = None
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
                self.model.note(buf, f"disconnected: {reason}", "notice", activity=False)
            return True
        return False

    def receive(self, frame: Frame, now: float = 0.0) -> None:
        """Apply one server frame (see events.py)."""
        events.receive(self, frame, now)

    def ping(self, now: float) -> None:
        self.requests.ping(now)
        if self.model.ping_since is None:  # the status bar shows how long it has waited
            self.model.ping_since = now

    def ping_outstanding(self) -> bool:
        return self.requests.ping_outstanding()

    def tick(self) -> None:
        """Periodic work: try to get the wanted nick back after a nick_taken at hello."""
        if (self.registered and nick_key(self.model.nick) != nick_key(self.want_nick)
                and not self.requests.waiting("nick")):
            self.request({"type": "nick", "nick": self.want_nick}, "nick", SERVER, quiet=True)

    def quit(self, reason: str = "") -> None:
        self.quitting = True
        frame: Frame = {"type": "quit"}
        if reason:
            frame["reason"] = reason
        self.requests.send_unlabelled(frame)

    # Commands from the input line
    def execute_line(self, line: str) -> None:
        """Run one input line; usage errors become local error lines and send nothing."""
        action = self.parse_line(line)
        if action is not None:
            self.execute(action)

    def parse_line(self, line: str) -> cmd.Action | None:
        """The action of an input line, or None after reporting a usage error."""
        try:
            return cmd.parse(line)
        except cmd.UsageError as exc:
            self._local_error(str(exc))
            return None

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
            case cmd.Ignore() | cmd.Unignore() | cmd.Whois() | cmd.Clear() | cmd.Search():
                localcmds.execute(self, action)
            case cmd.Away(message):
                presence.request(self, message)
                if not self.registered:
                    m.note(None, "not connected: your away status is set when connected")
            case cmd.Close(target):
                self._close(target)
            case cmd.Register(password) if self.registered:
                accounts.register(self, password)
            case _ if not self.registered:
                self._local_error("not connected; nothing sent")
            case cmd.Join(room, key):
                buf = m.get(room)
                if buf is not None and buf.joined:
                    m.switch(room)
                else:
                    self.join(room, switch=True, key=key)
            case cmd.Moderate():
                moderation.execute(self, action)
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
                    self.older(m.cur, count, quiet=False)

    def _local_error(self, text: str) -> None:
        self.model.note(None, text, "error")
        self.failures += 1

    local_error = _local_error

    def _current_room(self) -> str | None:
        if self.model.cur.kind == "room":
            return self.model.current
        self._local_error("not in a room buffer: give a ROOM")
        return None

    current_room = _current_room

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

    def join(self, room: str, switch: bool = False, key: str | None = None) -> None:
        """Join, catching up after the room's catch-up point (this run's or a saved one)."""
        buf = self.model.get(room)
        point = self.points.room(room)
        frame: Frame = {"type": "join", "room": room}
        if key:
            frame["key"] = key
        if point.seen or point.known:  # (0: the room had no messages; fetch them all)
            frame["after"] = point.seen
        point.start()
        self.request(frame, "join", room if buf else None, room=room,
                     after=frame.get("after"), switch=switch, point=point)

    def catch_up_dms(self) -> None:
        """Fetch the direct messages missed in each conversation of the nick we now hold
        (at the welcome, and again whenever our nick changes: a nick taken back after a
        reconnect has its own conversations, which its stand-in `nick_` could not fetch)."""
        me = nick_key(self.model.nick)
        points = sorted(self.points.dms_of(me).values(), key=lambda p: p.seen, reverse=True)
        for point in points[:MAX_DM_POINTS]:
            self._catch_up_dm(point)
        accounts.catch_up(self)  # every direct message of ours, from any peer

    def _catch_up_dm(self, point: DmPoint) -> None:
        if point.state != STALE or not point.seen:
            return
        point.start()
        buf = self.model.get(nick_key(point.nick))
        self.request({"type": "history", "with": point.nick, "after": point.seen},
                     "catchup", buf.key if buf else SERVER, after=point.seen, point=point)

    def saw(self, f: Frame) -> None:
        """A live (checked) message arrived: move its conversation's catch-up point. A
        direct message in a conversation that is not caught up (its catch-up was refused,
        or it was not among those caught up on connecting) starts its catch-up now."""
        if "room" in f:
            self.points.room(f["room"]).got(f["id"])
            return
        sender, to = f["from"], f["to"]
        me, peer = (sender, to) if nick_key(sender) == nick_key(self.model.nick) else (to, sender)
        point = self.points.dm(nick_key(me), nick_key(peer), peer)
        point.got(f["id"])
        self._catch_up_dm(point)
        accounts.saw(self, f)

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

    def _close(self, target: str | None) -> None:
        """/close: a joined room is left (the buffer goes with the `parted`); any other
        buffer but the server's goes at once."""
        m = self.model
        buf = m.cur if target is None else m.find(target)
        if buf is None:
            return self._local_error(f"no buffer {target!r}")
        if buf.kind == "server":
            return self._local_error("the server buffer stays open (/quit to leave)")
        if buf.kind == "room" and buf.joined and self.registered:
            return self._part(buf.key, "")
        if buf.key in self.wanted_rooms:
            self.wanted_rooms.remove(buf.key)
        m.close(buf.key)
        return None

    def older(self, buf: Buffer, count: int, quiet: bool) -> None:
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


def _key(entry: str) -> str:
    """The buffer key of a saved buffer name (`#room` or `@nick`)."""
    return nick_key(entry[1:]) if entry.startswith("@") else entry
