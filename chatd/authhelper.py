"""The auth helper process, like OpenSSH's monitor: it alone opens the accounts database,
and it does the expensive password work, so that neither the parent's routing loop (a
100 ms hash would stall every session) nor a session process (its memory limit, and
its exposure to the client) pays for it or ever holds a verifier.

Channel: a socketpair to the parent. Both directions carry frames of the client
protocol's framing (chatd.protocol: a 4-byte big-endian length, then one msgpack map);
the requests and replies are those of chatd.authservice. The helper works through its
requests one at a time, in order, reading between them: requests beyond `max_queue`
waiting are answered at once with `auth_unavailable` (the parent should keep fewer in
flight; HelperClient bounds them), so a flood of logins costs a bounded queue and quick
refusals, never unbounded memory.

Life cycle (the parent's side, see HelperClient and RestartPolicy):
- `spawn()` forks it with signals blocked, like a session: it closes every inherited fd
  but its channel and stderr, resets signal handlers and applies its limits before it
  opens the database (an SQLite connection must never cross a fork).
- It exits by itself when the parent closes the channel (end of stream), and on SIGTERM.
- When it dies, the parent reaps it, fails every request in flight with
  `auth_unavailable` (sessions tell their clients, who may try again; open SCRAM
  exchanges are lost and get `no_exchange` if continued), and starts a new one after
  RestartPolicy's delay: at once the first time, then doubling up to a cap while it
  keeps dying soon after each start. Meanwhile logins and registrations get
  `auth_unavailable`; guests, and sessions already logged in, carry on untouched.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import resource
import select
import signal
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from chatd import logsetup
from chatd.authservice import AuthService, AuthSettings, error
from chatd.protocol import FrameDecoder, ProtocolError, pack

log = logging.getLogger("chatd.auth")
MAX_REQUEST = 8192  # bytes of one request frame (its SASL message is at most 2048)
MAX_REPLY = 8192
MAX_QUEUE = 256  # requests waiting in the helper before it refuses more
MAX_MEMORY_MB = 256  # address-space limit of the helper process
SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
NAME = "chatd-auth"  # its process name (/proc/PID/comm), to tell it from the sessions


def serve(chan: socket.socket, service: AuthService, *, max_queue: int = MAX_QUEUE,
          monotonic: Callable[[], float] = time.monotonic,
          wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000) -> int:
    """Answer the parent's requests until it closes the channel; returns the exit status."""
    chan.setblocking(False)
    decoder = FrameDecoder(MAX_REQUEST)
    queue: deque[Any] = deque()
    out = bytearray()
    poller = select.poll()
    poller.register(chan, select.POLLIN)
    while True:
        poller.modify(chan, select.POLLIN | (select.POLLOUT if out else 0))
        deadline = service.next_deadline()
        timeout = (0 if queue else None if deadline is None
                   else max(0.0, deadline - monotonic()) * 1000)
        for _fd, ev in poller.poll(timeout):
            if ev & ~select.POLLOUT:
                data = receive(chan)
                if data == b"":
                    log.info("the parent closed the channel: exiting")
                    return 0
                if data:
                    decoder.receive_data(data)
                    try:
                        _take(decoder, queue, out, max_queue)
                    except ProtocolError as exc:  # only a frame over MAX_REQUEST
                        log.error("the parent broke the framing (%s): exiting", exc)
                        return 2
        if queue:  # one request per turn, so reading and refusing go on between hashes
            out += pack(service.handle(queue.popleft(), monotonic(), wall_ms()))
        else:
            service.expire(monotonic())
        if out:
            try:
                del out[:chan.send(out)]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                return 0  # the parent is gone


def receive(chan: socket.socket) -> bytes | None:
    """What a non-blocking channel has (b"": it is closed or broken; None: nothing yet)."""
    try:
        return chan.recv(65536)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""


def _take(decoder: FrameDecoder, queue: deque[Any], out: bytearray, max_queue: int) -> None:
    for payload in decoder.payloads():
        try:
            request = msgpack.unpackb(payload, raw=False)
        except Exception:  # msgpack raises several unrelated types
            out += pack(error(None, "bad_request", "undecodable request"))
            continue
        if len(queue) >= max_queue:
            rid = request.get("id") if isinstance(request, dict) else None
            out += pack(error(rid, "auth_unavailable", "the auth service is busy, try again"))
        else:
            queue.append(request)


def prepare(keep: Iterable[int], max_memory_mb: int = MAX_MEMORY_MB) -> None:
    """Fork hygiene, first thing in the helper (as SessionWorker.init_process for a session)."""
    from chatd.child import close_inherited  # the parent has it loaded already

    gc.freeze()  # the parent's objects are only read here: keep the collector off them
    close_inherited(set(keep) | {0, 1, 2})
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    for sig in (signal.SIGINT, signal.SIGHUP):  # for the parent, which orchestrates
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    logsetup.set_session("auth")
    with contextlib.suppress(OSError), open("/proc/self/comm", "w") as fh:
        fh.write(NAME)
    limits = [(resource.RLIMIT_NOFILE, 32)]
    if max_memory_mb:
        limits.append((resource.RLIMIT_AS, max_memory_mb << 20))
    for which, value in limits:
        _soft, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(which, (value, hard))


@dataclass
class Helper:
    pid: int
    chan: socket.socket  # the parent's end


def spawn(path: Path, settings: AuthSettings | None = None, *, keep: Iterable[int] = (),
          max_queue: int = MAX_QUEUE, max_memory_mb: int = MAX_MEMORY_MB) -> Helper:
    """Fork the helper for the accounts database at `path`. `keep`: fds the helper must
    not close (none in the server; a test's log pipe, say)."""
    settings = settings or AuthSettings()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        pid = os.fork()
    except OSError:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        ours.close()
        theirs.close()
        raise
    if pid == 0:  # the helper; never returns
        status = 1
        try:
            prepare({theirs.fileno(), *keep}, max_memory_mb)
            status = _main(theirs, path, settings, max_queue)
        except BaseException:
            log.exception("auth helper crashed")
        finally:
            logging.shutdown()
            os._exit(status)
    signal.pthread_sigmask(signal.SIG_SETMASK, old)
    theirs.close()
    log.info("auth helper started (pid %d)", pid)
    return Helper(pid, ours)


def _main(chan: socket.socket, path: Path, settings: AuthSettings, max_queue: int) -> int:
    from chatd.accounts import AccountStore

    store = AccountStore(path, settings.iterations)
    try:
        return serve(chan, AuthService(store, settings), max_queue=max_queue)
    finally:
        store.close()


class HelperBroken(Exception):
    """The helper sent what no helper would (bad framing or msgpack): the parent kills
    it and starts another, as after a death. A child is never trusted, this one neither."""


class HelperBusy(Exception):
    """Too many requests in flight to the helper: answer `auth_unavailable` at once."""


class HelperClient:
    """The parent's side of the channel (sans-I/O): numbers requests, bounds how many
    are in flight, matches replies to the caller's tokens (a session id, say)."""

    def __init__(self, max_pending: int = MAX_QUEUE) -> None:
        self.max_pending = max_pending
        self.pending: dict[int, Any] = {}
        self.next_id = 1
        self.decoder = FrameDecoder(MAX_REPLY)
        self.out = bytearray()

    def request(self, op: str, token: Any, **fields: Any) -> int:
        if len(self.pending) >= self.max_pending:
            raise HelperBusy(op)
        rid, self.next_id = self.next_id, self.next_id + 1
        self.pending[rid] = token
        self.out += pack({"id": rid, "op": op, **fields})
        return rid

    def receive_data(self, data: bytes) -> list[tuple[Any, dict[str, Any]]]:
        """(token, reply) for each whole reply in `data`; a reply to no request in
        flight (not ours, or already failed by lost()) is dropped. The caller still
        checks each reply's fields before it acts on them. Raises HelperBroken."""
        self.decoder.receive_data(data)
        done = []
        try:
            for payload in self.decoder.payloads():
                reply = msgpack.unpackb(payload, raw=False)
                rid = reply.get("id") if isinstance(reply, dict) else None
                if type(rid) is int and rid in self.pending:
                    done.append((self.pending.pop(rid), reply))
        except Exception as exc:  # ProtocolError (an oversize frame), msgpack's own
            raise HelperBroken(f"undecodable reply from the auth helper: {exc!r}"[:200]
                               ) from None
        return done

    def lost(self) -> list[Any]:
        """The helper died: the tokens of every request in flight (each gets
        `auth_unavailable`), and a clean slate for the next helper."""
        tokens = list(self.pending.values())
        self.pending.clear()
        self.decoder.clear()
        self.out.clear()
        return tokens


class RestartPolicy:
    """When to start a new helper after one died (times from the caller's clock)."""

    def __init__(self, first: float = 0.1, cap: float = 30.0, stable: float = 60.0) -> None:
        self.first, self.cap, self.stable = first, cap, stable
        self.delay = 0.0
        self.started_at: float | None = None

    def started(self, now: float) -> None:
        self.started_at = now

    def died(self, now: float) -> float:
        """The time at which to spawn the next one."""
        if self.started_at is not None and now - self.started_at >= self.stable:
            self.delay = 0.0  # it had worked for a while: this is news, not a crash loop
        delay = self.delay
        self.delay = min(self.cap, max(self.first, self.delay * 2))
        return now + delay
