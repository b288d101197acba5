"""How a session process speaks to its client: one codec object per front end.

The session loop (chatd/sessionloop.py) moves bytes; a codec decides what they mean on
the client's side of the Session:

- `NativeCodec`: the native msgpack protocol. Client bytes are the Session's as they
  are, and a RAW envelope from the parent (a frame the broker encoded once for every
  member of a room) goes to the client untouched: the loop hands it to the outbox
  itself (`forwards_raw`), so the common wakeup costs no call of ours and no copy.
- `IrcCodec`: the IRC front end (chatd/irc). Client lines go through `IrcFrontEnd`,
  which hands the Session native requests; every native frame for the client (the
  Session's own and the RAW ones) is turned into IRC lines on the way out.

The parent never learns which codec a session uses beyond the listener its connection
came from (the `irc` flag of the `client` control, or of the fork).

`now` is the Session's clock (monotonic, integer milliseconds); the IRC front end counts
in seconds, and is given them.
"""

from __future__ import annotations

from chatd.irc import IrcFrontEnd, Line, render, serialise
from chatd.outbox import Outbox
from chatd.session import Session


class NativeCodec:
    """The native protocol: nothing to translate."""

    paused = False  # the Session reads every byte it is given
    forwards_raw = True  # RAW frames go to the client as they are (the loop's fast path)

    def __init__(self, session: Session, out: Outbox) -> None:
        self.session, self.out = session, out

    def raw(self, body: memoryview, now: int) -> None:
        self.out.add(body)

    def client_data(self, data: bytes, now: int) -> bool:
        """Client bytes (never empty); True if the Session was fed."""
        self.session.receive_data(data, now)
        return True

    def drain(self, now: int) -> None:
        """The Session's own frames for the client."""
        session = self.session
        if session.to_client:
            self.out.add(b"".join(session.to_client))
            session.to_client.clear()

    def take_fed(self) -> bool:
        return False


class IrcCodec:
    """IRC lines on the client's side, native frames on the Session's (see chatd/irc's
    notes for whoever wires it)."""

    forwards_raw = False

    def __init__(self, session: Session, out: Outbox, now: int, tls: bool = False) -> None:
        self.session, self.out = session, out
        self.front = IrcFrontEnd(session.config, now / 1000, tls)
        self.fed = False  # the Session got requests outside client_data: tick it

    @property
    def paused(self) -> bool:
        """Commands wait for answers: stop reading the client until they come."""
        return self.front.paused and not self.front.ended

    def client_data(self, data: bytes, now: int) -> bool:
        front = self.front
        front.receive_data(data, now / 1000)
        # Even b"": a read is the client's sign of life for the keepalive.
        self._to_session(now, liveness=True)
        self._take_lines()
        return True

    def raw(self, body: memoryview, now: int) -> None:
        """A frame the broker encoded for the client: after what the Session said
        before it, through the front end."""
        self.drain(now)
        self.front.receive_frames(bytes(body), now / 1000)
        self._to_session(now, liveness=False)
        self._take_lines()

    def drain(self, now: int) -> None:
        session = self.session
        if session.to_client:
            data = b"".join(session.to_client)
            session.to_client.clear()
            self.front.receive_frames(data, now / 1000)
            self._to_session(now, liveness=False)
        self._take_lines()

    def take_fed(self) -> bool:
        fed, self.fed = self.fed, False
        return fed

    def _to_session(self, now: int, liveness: bool) -> None:
        front, session = self.front, self.session
        if front.to_session or liveness:
            data = b"".join(front.to_session)
            front.to_session.clear()
            session.receive_data(data, now)
            self.fed = True
        if front.ended and not session.ended:
            # The front end wrote its ERROR line: nothing more reaches the client, so the
            # Session ends too. (Today every such ending also sent the Session a quit or
            # came from its fatal error; this keeps it so for whatever ends it next.)
            session.client_closed()
            self.fed = True

    def _take_lines(self) -> None:
        front = self.front
        if front.to_client:
            self.out.add(b"".join(front.to_client))
            front.to_client.clear()


Codec = NativeCodec | IrcCodec  # what the session loop holds


def irc_refusal(server_name: str, message: str) -> bytes:
    """The one line the parent writes to a connection of the IRC listener it refuses
    (over a cap or a rate) instead of the native error frame: it formats this fixed
    line and parses nothing."""
    reason = render.line_text(message)
    return serialise(Line("ERROR", [f"Closing link: {render.host_name(server_name)} "
                                    f"({reason})"]))
