"""The history reader: a helper process that answers history reads off the routing loop.

The parent starts it at start-up and supervises it like a session (a new one if it dies).
It holds its own read-only connection to the database, which the parent keeps in WAL
mode, so reading never blocks the parent's writes. Over a socketpair it gets reads from
`chatd.history` (msgpack maps in protocol frames) and answers each with ready-packed
client frames, the snapshot's newest id (`snap`) and where the page ended.

`ReaderLink` is the parent's end: reads wait in one queue per session, taken round-robin,
with only a few in the reader at a time, so a session that asks for much waits behind
itself, not others do, and the parent never blocks on the reader.
"""

from __future__ import annotations

import logging
import os
import resource
import socket
import sys
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any

import msgpack

from chatd import helperproc, outbox
from chatd.history import page_frame
from chatd.protocol import HEADER, FrameDecoder, ProtocolError, pack
from chatd.store import StorageError, StoreUnusable, message_map
from chatd.stores import HistoryReads, open_reads

log = logging.getLogger("chatd.reader")
NAME = "chatd-reader"  # its process name (/proc/PID/comm), to tell it from the sessions
NICE = 19  # reading history takes the CPU that routing and the sessions leave
IN_READER = 4  # reads handed to the reader at once: enough to keep it busy, few to wait on
RESTART_PAUSE = 1.0  # seconds between restarts of a reader that keeps dying
TRIES = 2  # a read the reader died on this often is answered with an error


# ---- the reader process ----


def answer(store: HistoryReads, req: dict[str, Any]) -> dict[str, Any]:
    """Run one read. With `head` the reply is one `history` frame; without, it is the
    messages as `message` frames (a catch-up's last gap). Both stay within `max`."""
    where = {k: req[k] for k in ("room", "dm", "ident") if k in req}
    forward = "after" in req
    with store.snapshot():
        rows, more = store.history(**where, before=req.get("before"),
                                   after=req.get("after"), limit=req["limit"])
        snap = store.last_id()
    payloads = [msgpack.packb(message_map(r), use_bin_type=True) for r in rows]
    if "head" in req:
        data, kept, more = page_frame(req["head"], payloads, more, forward, req["max"])
        rows = rows[:kept] if forward else rows[len(rows) - kept:]
    else:
        frames: list[bytes] = []
        budget = req["max"]
        for payload in payloads:
            budget -= HEADER.size + len(payload)
            if budget < 0 and frames:
                more = True
                break
            frames.append(HEADER.pack(len(payload)) + payload)
        data, rows = b"".join(frames), rows[:len(frames)]
    return {"t": req["t"], "data": data, "more": more, "snap": snap,
            "last": rows[-1][0] if rows else req.get("after", 0)}


def spawn(path: Path | str, log_level: str, max_memory_mb: int) -> tuple[int, socket.socket]:
    """Start a reader; returns (its pid, our end of its channel). A fresh interpreter
    (chatd/helperproc.py): SQLite keeps per-process state about open database files (locks,
    the WAL index mapping) that a forked copy of the parent would share with the parent's
    own connection."""
    return helperproc.spawn("chatd.reader", [str(path), log_level, str(max_memory_mb)])


def main(argv: list[str]) -> int:
    """`python -m chatd.reader FD DATABASE LOG_LEVEL MAX_MEMORY_MB` (started by spawn)."""
    fd, path, level, memory_mb = int(argv[0]), Path(argv[1]), argv[2], int(argv[3])
    helperproc.begin(NAME, "reader", level)
    os.nice(NICE)
    if memory_mb:
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = memory_mb << 20 if hard == resource.RLIM_INFINITY else min(memory_mb << 20,
                                                                          hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    chan = socket.socket(fileno=fd)
    try:
        store = open_reads(str(path))
    except StoreUnusable as exc:  # the parent starts another one a second later
        log.error("%s", exc)
        return 1
    return serve(chan, store)


def serve(chan: socket.socket, store: HistoryReads) -> int:
    """The reader's loop: answer reads until the parent closes the channel."""
    chan.setblocking(True)
    decoder = FrameDecoder(max_frame=1 << 20)
    log.debug("history reader ready")
    while True:
        try:
            data = chan.recv(65536)
        except InterruptedError:
            continue
        except OSError:
            data = b""
        if not data:
            return 0
        decoder.receive_data(data)
        out = []
        for payload in decoder.payloads():
            req = msgpack.unpackb(payload, raw=False)
            try:
                reply = answer(store, req)
            except StorageError as exc:  # the Store has logged what to do about it
                reply = {"t": req["t"], "error": exc.message}
            out.append(pack(reply))
        try:
            chan.sendall(b"".join(out))
        except OSError:
            return 0


# ---- the parent's end ----


class ReaderLink:
    def __init__(self, max_frame: int) -> None:
        self.chan: socket.socket | None = None
        self.pid: int | None = None
        self.started = 0.0  # monotonic time of the last start
        self.waiting: OrderedDict[int, deque[dict[str, Any]]] = OrderedDict()
        self.inside: dict[int, dict[str, Any]] = {}  # token -> read, in the reader
        self.sids: dict[int, int] = {}  # token -> session, for what waits or is inside
        self.tries: dict[int, int] = {}  # token -> times the reader died holding it
        self.out = outbox.Outbox()
        self.max_frame = max_frame
        self.decoder = FrameDecoder(self._reply_limit())

    def _reply_limit(self) -> int:
        return 2 * self.max_frame + 4096  # a page of max_frame, in a small map

    def configure(self, max_frame: int) -> None:
        self.max_frame = max(self.max_frame, max_frame)  # reads of the old size may be inside
        self.decoder.max_frame = self._reply_limit()

    def attach(self, pid: int, chan: socket.socket, now: float) -> None:
        chan.setblocking(False)
        self.pid, self.chan, self.started = pid, chan, now
        self.decoder = FrameDecoder(self._reply_limit())

    @property
    def busy(self) -> bool:
        """Whether reads wait or are being read."""
        return bool(self.waiting or self.inside)

    def submit(self, sid: int, read: dict[str, Any]) -> None:
        self.sids[read["t"]] = sid
        queue = self.waiting.get(sid)
        if queue is None:
            queue = self.waiting[sid] = deque()
        queue.append(read)

    def drop(self, sid: int) -> None:
        """A session is gone: what it still waits for is never read."""
        for read in self.waiting.pop(sid, ()):
            self._forget(read["t"])

    def _forget(self, token: int) -> None:
        self.sids.pop(token, None)
        self.tries.pop(token, None)

    def pump(self) -> None:
        """Hand waiting reads to the reader, one session after the other."""
        if self.chan is None:
            return
        while self.waiting and len(self.inside) < IN_READER:
            sid, queue = next(iter(self.waiting.items()))
            read = queue.popleft()
            if queue:
                self.waiting.move_to_end(sid)
            else:
                del self.waiting[sid]
            self.inside[read["t"]] = read
            self.out.add(pack(read))
        self.flush()

    def flush(self) -> None:
        if self.chan is None or not self.out.chunks:
            return
        try:
            self.out.send(self.chan)
        except OSError:  # it died; SIGCHLD or the channel's EOF tells the parent
            self.out.clear()

    @property
    def writing(self) -> bool:
        return bool(self.out.chunks)

    def receive(self) -> list[dict[str, Any]] | None:
        """Replies that arrived, checked; None when the reader is gone or broke the
        channel's rules (the caller then ends it and calls lost())."""
        assert self.chan is not None
        try:
            data = self.chan.recv(262144)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            data = b""
        if not data:
            return None
        self.decoder.receive_data(data)
        replies = []
        try:
            for payload in self.decoder.payloads():
                reply = msgpack.unpackb(payload, raw=False)
                if not self._valid(reply):
                    log.error("the history reader sent a bad reply; restarting it")
                    return None
                del self.inside[reply["t"]]
                self._forget(reply["t"])
                replies.append(reply)
        except (ProtocolError, ValueError, msgpack.UnpackException):
            log.error("the history reader broke the channel's framing; restarting it")
            return None
        return replies

    def _valid(self, reply: Any) -> bool:
        """The parent trusts no child: a reply must answer a read it holds, and its data
        must be whole client frames within max_frame (they go to a client untouched)."""
        if not isinstance(reply, dict) or reply.get("t") not in self.inside:
            return False
        if "error" in reply:
            return isinstance(reply["error"], str)
        data = reply.get("data")
        if not (isinstance(data, bytes) and isinstance(reply.get("more"), bool)
                and type(reply.get("snap")) is int and type(reply.get("last")) is int):
            return False
        pos = 0
        while pos < len(data):
            if len(data) - pos < HEADER.size:
                return False
            (size,) = HEADER.unpack_from(data, pos)
            if size > self.max_frame:
                return False
            pos += HEADER.size + size
        return pos == len(data)

    def lost(self) -> list[dict[str, Any]]:
        """The reader is gone: what it held is read again by the next one, first in line,
        except reads it has now died on TRIES times, which come back as failures."""
        if self.chan is not None:
            self.chan.close()
        self.chan, self.pid = None, None
        self.out.clear()
        failed = []
        for token, read in reversed(list(self.inside.items())):
            self.tries[token] = self.tries.get(token, 0) + 1
            sid = self.sids[token]
            if self.tries[token] >= TRIES:
                self._forget(token)
                failed.append({"t": token, "error": "the history reader failed on it"})
                continue
            queue = self.waiting.get(sid)
            if queue is None:
                queue = self.waiting[sid] = deque()
                self.waiting.move_to_end(sid, last=False)
            queue.appendleft(read)
        self.inside.clear()
        return failed

    def close(self) -> None:
        """Stop feeding the reader: it exits when it sees the channel close."""
        if self.chan is not None:
            self.chan.close()
        self.chan = None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
