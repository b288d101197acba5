"""A session's first steps, rehearsed in the fork server before it forks anything.

CPython writes into memory it only reads from a Python programmer's point of view: the
specializing interpreter (3.11+) rewrites the bytecode of code it runs and counts in it,
gives a type a version tag the first time its attributes are looked up, and caches
lookups in the interpreter's method cache; 3.12+ also versions the keys of the module
dicts its global lookups specialize on. In a session forked from the fork server, each
such write copies a page the two shared (chatd/immortal.py keeps the reference counts
from doing so on 3.12+). Doing it here, once, before any fork, leaves those pages
written already: every session then finds its code specialized, its types versioned and
its lookups cached, and writes much less.

What runs is the sans-I/O core every session runs (chatd/session.py, the channel's parser
and controls, the protocol's frames and checks), on made-up input: a hello, its welcome,
a join and its catch-up, a message, a ping; and for IRC clients the front end's
(chatd/irc): CAP negotiation and registration, the welcome burst, a PRIVMSG and its echo,
a PING and room messages rendered with server-time and message tags.

Then the session loop itself (chatd/sessionloop.py), which a new session runs from its
hand-over to its welcome: a Loop serves a client on a loopback TCP connection and a
channel on a socket pair, natively and over IRC, with the same script written to both
ends beforehand, until the channel's close order ends it. Its connections are made
before the fork server's filter forbids connect() and accept() (`connections()`; whoever
else on the host connects to its listener meanwhile is closed unread: the fork server
never serves a stranger's bytes); no session's code takes a path here that it does not
take serving a client.

Nothing else touches a socket, a file or a signal; the log is quiet meanwhile (the
sessions' debug lines would be the fork server's); the rate limits are lifted (a
`cmd_burst` below a registration's lines would refuse them), and so are the waits a
session's end may make (a Loop must not be able to hold the fork server's start up:
`lifted()`); and what it makes is garbage by the time the fork server freezes its heap.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

from chatd import channel, orphan
from chatd import protocol as p
from chatd.channel import EnvelopeReader
from chatd.config import Config
from chatd.frontends import IrcCodec
from chatd.outbox import Outbox
from chatd.session import Session
from chatd.sessionloop import Loop

log = logging.getLogger("chatd.zygote")

BURSTS = ("cmd_burst", "msg_burst", "history_burst")
# Passes over the script: enough for the interpreter to specialize what it runs (it
# specializes an instruction after a few runs; 3.11's code is quickened after 8 calls).
ROUNDS = 20
NOW = 1_000_000  # milliseconds: any time will do; nothing here outlives the rehearsal
IRC_REGISTRATION = (b"CAP LS 302\r\nNICK rehearsal\r\nUSER rehearsal 0 * :rehearsal\r\n"
                    b"CAP REQ :server-time message-tags echo-message\r\nCAP END\r\n")
IRC_CHAT = b"PRIVMSG #rehearsal :hello\r\nPING :rehearsal\r\n"
# Loops served (half of them natively, half over IRC): each is a loopback connection the
# fork server holds from its start to the end of the rehearsal. A loop's code runs many
# times in one pass, so fewer passes than of the core do.
LOOP_ROUNDS = 8
LOOP_BUDGET = 2.0  # seconds all loops may take; a slower one stops the rest
Connection = tuple[socket.socket, socket.socket]  # (the server's end, the client's)


# A join's catch-up as the parent states it (chatd/channel.py): upto, the room's newest id.
STATE = {"c": channel.STATE, "nick": "rehearsal", "account": None, "rooms": ["#rehearsal"],
         "sig": "", "upto": 7}


def room_message(msg_id: int, sender: str) -> dict[str, Any]:
    """A message to the rehearsal's room, as chatd/broker.py writes it."""
    return {"type": "message", "id": msg_id, "room": "#rehearsal", "from": sender,
            "text": "hello", "ts": NOW, "action": False}


def echoed(label: object) -> bytes:
    """The broker's answer to the rehearsal's own message (id 8) with echo-message: its
    ack, then the message."""
    return p.pack({"type": "ack", "label": label, "id": 8, "ts": NOW, "room": "#rehearsal"}) \
        + p.pack(room_message(8, "rehearsal"))


def client_frames() -> bytes:
    """What a client says first: hello, join, a message, a ping."""
    return b"".join(p.pack(frame) for frame in (
        {"type": "hello", "version": p.VERSION, "nick": "rehearsal", "client": "chatd",
         "label": 1},
        {"type": "join", "room": "#rehearsal", "label": 2},
        {"type": "msg", "room": "#rehearsal", "text": "hello", "label": 3},
        {"type": "ping", "token": 4},
    ))


def parent_stream() -> bytes:
    """What a parent sends a new session: its client, the welcome, a join's catch-up (a
    state control and a RAW frame) and its DONE."""
    return channel.encode_items([
        channel.client("0" * 16, "127.0.0.1"), channel.welcome("rehearsal"), STATE,
        p.pack(room_message(7, "rehearsal")), channel.DONE])


def welcome_frame(config: Config, label: object) -> dict[str, Any]:
    """The welcome a session forwards to its client (as chatd/broker.py writes it)."""
    return {"type": "welcome", "version": p.VERSION, "server": config.server_name,
            "session": "0" * 16, "nick": "rehearsal", "motd": config.motd, "time": NOW,
            "limits": config.limits(), "resume": "", "resumed": False, "label": label}


def rehearse(config: Config, rounds: int = ROUNDS,
             loops: list[Connection] | None = None) -> int:
    """Run a session's core through its first steps `rounds` times, then serve a Loop
    on each of `loops` (see connections(); each is closed by the time this returns).
    Returns the number of Loops served."""
    config = lifted(config)
    frames, stream = client_frames(), parent_stream()
    quiet = logging.root.manager.disable
    logging.disable(logging.INFO)
    try:
        for _ in range(rounds):
            once(config, frames, stream)
            irc_once(config)
        return serve_loops(config, loops or [])
    finally:
        logging.disable(quiet)
        for server, client in loops or []:
            server.close()
            client.close()


def lifted(config: Config) -> Config:
    """`config` for a rehearsal: no rate limit in the way, and no wait at a session's end;
    and should a Loop's script ever fail to end it, its Session does so by itself within
    a few seconds (a client here never answers a ping)."""
    return config.with_values({**config.values,
                               **{k: max(int(config.values[k]), 100) for k in BURSTS},
                               "close_grace": 0.0, "broker_grace": 0.0,
                               "handshake_timeout": 1.0, "ping_interval": 1.0,
                               "ping_timeout": 1.0})


def connections(count: int = LOOP_ROUNDS) -> list[Connection]:
    """`count` loopback TCP connections for the Loops rehearse() serves, made while this
    process may still connect and accept; [] where it cannot (no IPv4 loopback)."""
    clients: dict[Any, socket.socket] = {}
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(count)
            for _ in range(count):
                client = socket.create_connection(listener.getsockname(), timeout=1.0)
                clients[client.getsockname()] = client
            return pair_up(listener, clients)
    except OSError as exc:
        log.debug("no loopback connections to rehearse a session's loop on: %s", exc)
        for client in clients.values():
            client.close()
        return []


def pair_up(listener: socket.socket, clients: dict[Any, socket.socket]) -> list[Connection]:
    """Accept a connection from each of `clients` (by address). Anyone else on this host
    may have connected to the listener meanwhile: its connection is closed unread (the
    fork server must never serve a stranger's bytes), and a listener kept busy by such
    connections raises OSError (the loops then go unrehearsed)."""
    made: list[Connection] = []
    waiting = dict(clients)
    listener.settimeout(1.0)
    for _ in range(4 * len(clients)):
        if not waiting:
            return made
        conn, peer = listener.accept()
        client = waiting.pop(peer, None)
        if client is None:
            conn.close()
        else:
            made.append((conn, client))
    for conn, _client in made:
        conn.close()
    raise OSError("the listener was kept busy by connections not ours")


def serve_loops(config: Config, loops: list[Connection]) -> int:
    """Serve a Loop on each connection, alternately natively and over IRC, within
    LOOP_BUDGET seconds; returns how many were served."""
    start = time.monotonic()
    for i, (server, client) in enumerate(loops):
        if time.monotonic() - start > LOOP_BUDGET:
            log.warning("the rehearsal of a session's loop took over %.0fs: stopped after "
                        "%d of %d loops", LOOP_BUDGET, i, len(loops))
            return i
        loop_once(config, server, client, irc=i % 2 == 1)
    return len(loops)


def loop_once(config: Config, server: socket.socket, client: socket.socket,
              irc: bool) -> bytes:
    """One Loop served on `server` until the parent's close order; returns what the
    client got (as much as one read takes). The client's lines and the parent's stream
    are written first: a Loop blocks until the session ends."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs, client:
        client.sendall(IRC_REGISTRATION + IRC_CHAT if irc else client_frames())
        ours.sendall(loop_stream(config, irc))
        Loop(server, theirs, config, "127.0.0.1", EnvelopeReader(), [], time.monotonic(),
             irc).serve()
        client.settimeout(0.0)
        try:
            return client.recv(1 << 20)
        except OSError:
            return b""


def loop_stream(config: Config, irc: bool) -> bytes:
    """What a parent sends a Loop after its client: the welcome (its control and the
    client's frame for the hello, label 1 for an IRC client's as for chatd's own), a
    join's catch-up, room messages (for IRC, first the ack and echo of its PRIVMSG,
    label 2), then an order to close."""
    message = p.pack(room_message(9, "someone"))
    return channel.encode_items([
        channel.welcome("rehearsal"), p.pack(welcome_frame(config, 1)), STATE,
        *([echoed(2)] if irc else []), message, message, channel.DONE,
        channel.close("shutting_down")])


def once(config: Config, frames: bytes, stream: bytes) -> tuple[Session, orphan.Delivered]:
    """One pass: the client's frames into a new Session, then the parent's stream into it
    as the session loop would hand it over (chatd/sessionloop.py)."""
    session = Session(config, NOW)
    session.receive_data(frames, NOW)
    delivered = orphan.Delivered()
    for kind, body in EnvelopeReader().feed(stream):
        if kind == channel.RAW:
            delivered.feed(body)
            continue
        ctrl = channel.decode_control(body)
        if ctrl.get("c") == channel.STATE:
            delivered.upto(ctrl.get("upto"))
        else:
            session.control(ctrl)
    session.tick(NOW)
    session.next_deadline()
    return session, delivered


def sent(session: Session, rtype: str) -> dict[str, Any] | None:
    """The last request of type `rtype` the Session has for the broker, taken off."""
    for i in range(len(session.to_broker) - 1, -1, -1):
        request = p.decode_payload(session.to_broker[i][p.HEADER.size:])
        if request.get("type") == rtype:
            del session.to_broker[i]
            return request
    return None


def irc_once(config: Config) -> tuple[Session, Outbox]:
    """One pass of an IRC client's session (chatd/frontends.py's IrcCodec): registration
    and the welcome burst, a PRIVMSG and its echo (the broker's ack, then the message),
    a PING, then room messages to render."""
    session, out = Session(config, NOW), Outbox()
    codec = IrcCodec(session, out, NOW)
    codec.client_data(IRC_REGISTRATION, NOW)
    hello = sent(session, "hello")
    if hello is None:  # (refused: nothing more to rehearse)
        return session, out
    session.control(channel.welcome("rehearsal"))
    codec.raw(memoryview(p.pack(welcome_frame(config, hello.get("label")))), NOW)
    codec.client_data(IRC_CHAT, NOW)
    msg = sent(session, "msg")
    if msg is not None:  # answered as chatd/broker.py answers it (echo-message)
        codec.raw(memoryview(echoed(msg.get("label"))), NOW)
    codec.raw(memoryview(p.pack(room_message(9, "someone")) * 3), NOW)
    codec.drain(NOW)
    return session, out
