"""IRC clients for the soak (tests/soak.py, `--irc-clients N`): in the same rooms as the
native ones, chatting, reconnecting and catching up the IRCv3 way.

Each connects with `message-tags server-time echo-message batch labeled-response
draft/chathistory` (so JOIN brings no history: the client asks), answers PING, sends
`@label=N PRIVMSG` (the labelled echo is its acknowledgement, with the message id) and
reconnects with QUIT or an abrupt close. Its first JOIN of a room is followed by
`CHATHISTORY LATEST <room> * 1`: the newest id then is its baseline, as the native
clients' first join page is theirs. After a reconnect it JOINs and pages `CHATHISTORY
AFTER <room> msgid=<the last id it had before the JOIN>` until a page is not full.

What counts as lost or duplicated is the native clients' rule (soak.RoomLog), with the
one difference IRC makes: after a JOIN the room's messages arrive live at once, while the
CHATHISTORY pages still bring the missed ones, so the two may overlap until the catch-up
ends. An IRCv3 client drops the second copy by its msgid, and so does this one, counting
them (`irc_overlap`); a message twice in the live stream, twice in the pages, or twice
outside a catch-up is a duplicate.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import TYPE_CHECKING

from chatd.irc import Line, parse
from tests.soak import Disconnected, SoakClient

if TYPE_CHECKING:
    from tests.soak import Soak

CAPS = "message-tags server-time echo-message batch labeled-response draft/chathistory"


class IrcSoakClient(SoakClient):
    """A soak client speaking IRC: its life (run, close, leave) is SoakClient's."""

    def __init__(self, soak: Soak, index: int, rooms: list[str], stayer: bool) -> None:
        super().__init__(soak, index, rooms, stayer)
        self.nick = f"irc{index}"
        self.rng = random.Random(soak.args.seed * 1000 + 500 + index)
        self.pending: dict[str, asyncio.Future[list[Line]]] = {}  # type: ignore[assignment]
        # Labelled replies in a batch, being collected: reference -> (label, lines).
        self.batches: dict[str, tuple[str, list[Line]]] = {}
        self.catching_up: set[str] = set()  # rooms whose pages may overlap live messages
        self.page_ids: dict[str, set[int]] = {}  # ids the current catch-up's pages brought
        self.early: dict[str, list[int]] = {}  # live before the first baseline, by room
        self.registered: asyncio.Future[str] | None = None  # 001, or 433 (nick taken)
        self.page = 10  # CHATHISTORY limit (the ISUPPORT token says the server's)

    # -- wire --

    def send(self, line: str) -> None:  # type: ignore[override]
        assert self.writer is not None
        self.writer.write(line.encode() + b"\r\n")

    async def call(self, line: str, timeout: float = 30.0) -> list[Line]:  # type: ignore[override]
        """Send a labelled command; its reply: one line, or a labelled batch's lines."""
        label = str(next(self.labels))
        fut: asyncio.Future[list[Line]] = asyncio.get_running_loop().create_future()
        self.pending[label] = fut
        self.send(f"@label={label} {line}")
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        finally:
            self.pending.pop(label, None)

    async def read_loop(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                self.on_line(parse((await reader.readuntil(b"\r\n"))[:-2]))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            for fut in [*self.pending.values(), self.registered]:
                if fut is not None and not fut.done():
                    fut.set_exception(Disconnected("closed"))

    def on_line(self, line: Line) -> None:
        label, batch = line.tags.get("label"), line.tags.get("batch")
        opens = line.command == "BATCH" and line.params[0].startswith("+")
        if line.command == "PING":
            self.send(f"PONG :{line.params[-1]}")
            self.soak.stats.pings_answered += 1
        elif opens and label:  # a labelled reply in a batch: collect it whole
            self.batches[line.params[0][1:]] = (label, [line])
        elif line.command == "BATCH" and line.params[0][1:] in self.batches:
            self.resolve(*self.batches.pop(line.params[0][1:]))
        elif batch in self.batches:
            self.batches[batch][1].append(line)
        elif label:
            if line.command == "PRIVMSG" and line.params[0] in self.logs:  # an echo: ours,
                self.got(line.params[0], int(line.tags["msgid"]), "echo")  # in its place
            self.resolve(label, [line])
        elif line.command in ("001", "433") and self.registered and not self.registered.done():
            self.registered.set_result(line.command)
        elif line.command == "005":
            for token in line.params[1:-1]:
                if token.startswith("CHATHISTORY="):
                    self.page = int(token.split("=", 1)[1])
        elif line.command == "PRIVMSG" and line.params[0] in self.logs:
            self.got(line.params[0], int(line.tags["msgid"]), "live")
        elif line.command in ("FAIL", "ERROR") or (line.command.isdigit()
                                                   and line.command[0] in "45"):
            self.soak.stats.errors.append(f"{self.nick}: unexpected {line}")

    def resolve(self, label: str, lines: list[Line]) -> None:
        fut = self.pending.get(label)
        if fut is not None and not fut.done():
            fut.set_result(lines)

    def got(self, room: str, msg_id: int, how: str) -> None:
        """A message of `room`: live, the echo of ours, or from a page (see the module
        docstring for what may come twice)."""
        log = self.logs[room]
        if log.baseline is None:  # the first JOIN: kept until LATEST gives the baseline
            self.early.setdefault(room, []).append(msg_id)
            return
        if room not in self.catching_up:
            log.add(msg_id, how)
            return
        pages = self.page_ids[room]
        if how == "page":
            if msg_id in pages:
                log.problems.append(f"id {msg_id} twice in the pages")
                return
            pages.add(msg_id)
        if msg_id in log.seen:
            if how == "page" or msg_id in pages:  # the same message live and paged
                self.soak.stats.irc_overlap += 1
            else:
                log.problems.append(f"duplicate id {msg_id} ({how})")
            return
        # Pages and live messages interleave during a catch-up: no order to check.
        log.ids.append(msg_id)
        log.seen.add(msg_id)
        log.newest = max(log.newest, msg_id)

    # -- one connection --

    async def connect(self) -> None:
        args = self.soak.args
        for attempt in range(200):
            reader, writer = await asyncio.open_connection(args.host, args.irc_port)
            self.writer, self.batches, self.closing = writer, {}, False
            self.registered = asyncio.get_running_loop().create_future()
            self.reader_task = asyncio.create_task(self.read_loop(reader))
            self.send(f"CAP LS 302\r\nCAP REQ :{CAPS}\r\nNICK {self.nick}\r\n"
                      f"USER {self.nick} 0 * :{self.nick}\r\nCAP END")
            if await asyncio.wait_for(self.registered, 30) == "001":
                self.soak.stats.connects += 1
                return
            self.soak.stats.nick_retries += 1  # our old session is still leaving
            await self.close(abort=True)
            await asyncio.sleep(0.02 * (attempt + 1))
        raise AssertionError(f"{self.nick}: nick never became free")

    async def join_all(self) -> None:
        for room in self.rooms:
            log = self.logs[room]
            first = log.baseline is None
            # Where to catch up from: the newest id of the last connection, taken before
            # the JOIN. The room's messages come live from the JOIN on, the first of them
            # often in the same read as its reply, before this task resumes: taken after
            # the JOIN, it would skip what was said while this client was away.
            after = log.last
            if not first:
                self.catching_up.add(room)
                self.page_ids[room] = set()
                self.soak.stats.irc_catchups += 1
            await self.call(f"JOIN {room}")  # JOIN and names: no history (draft/chathistory)
            if first:
                # The newest id now. Live messages may have come before this reply, and
                # may be newer or older than it (it was read off the routing path): those
                # above it count, as every later one does.
                latest = await self.call(f"CHATHISTORY LATEST {room} * 1")
                log.baseline = max((int(x.tags["msgid"]) for x in latest
                                    if x.command == "PRIVMSG"), default=0)
                for msg_id in self.early.pop(room, []):
                    if msg_id > log.baseline:
                        log.add(msg_id, "live")
                continue
            while True:
                page = [x for x in await self.call(f"CHATHISTORY AFTER {room} msgid={after} "
                                                   f"{self.page}") if x.command == "PRIVMSG"]
                self.soak.stats.pages += 1
                for x in page:
                    self.got(room, int(x.tags["msgid"]), "page")
                if len(page) < self.page:
                    break
                after = int(page[-1].tags["msgid"])
            self.catching_up.discard(room)

    # -- behaviour --

    async def chat_for(self, seconds: float) -> None:
        args = self.soak.args
        end = min(time.monotonic() + seconds, self.soak.deadline)
        while time.monotonic() < end:
            if self.writer is None or self.reader_task is None or self.reader_task.done():
                raise Disconnected("closed")
            if self.rng.random() < args.idle_chance:
                self.soak.stats.idles += 1
                await asyncio.sleep(min(end - time.monotonic(), args.ping_interval * 3))
                continue
            room = self.rng.choice(self.rooms)
            (echo,) = await self.call(f"PRIVMSG {room} :{self.nick} says "
                                      f"{self.rng.random():.6f}")
            if echo.command != "PRIVMSG":
                raise AssertionError(f"{self.nick}: PRIVMSG refused: {echo}")
            msg_id = int(echo.tags["msgid"])
            self.soak.stats.sent += 1
            self.soak.stats.acked.setdefault(room, set()).add(msg_id)
            await asyncio.sleep(self.rng.expovariate(1.0 / args.msg_interval))

    def quit(self, reason: str) -> None:
        self.send(f"QUIT :{reason}")
